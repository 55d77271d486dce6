//! The embedded API server as kube-rs (what our own controllers use) sees it: typed CRUD,
//! watchers that survive a server crash, finalizers, ownerReference garbage collection, and
//! durability of acknowledged writes across `kill -9`.

mod common;
use common::*;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kubevirt_api::{VirtualMachine, VirtualMachineInstance};
use serde_json::json;
use std::time::Duration;

fn vmi(name: &str) -> VirtualMachineInstance {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}
    }))
    .expect("vmi")
}

fn vm(name: &str) -> VirtualMachine {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}
    }))
    .expect("vm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_crud_and_conflicts() {
    let s = Server::start();
    let api: Api<VirtualMachineInstance> = Api::namespaced(s.client().await, "default");
    let created = api
        .create(&PostParams::default(), &vmi("a"))
        .await
        .expect("create");
    let rv = created.metadata.resource_version.clone().expect("rv");
    assert_eq!(
        created
            .spec
            .domain
            .machine
            .as_ref()
            .and_then(|m| m.r#type.as_deref()),
        Some("q35")
    );
    let err = api
        .create(&PostParams::default(), &vmi("a"))
        .await
        .expect_err("duplicate");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );

    let mut stale = created.clone();
    stale.metadata.labels = Some([("x".to_string(), "1".to_string())].into());
    api.replace("a", &PostParams::default(), &stale)
        .await
        .expect("replace");
    let err = api
        .replace("a", &PostParams::default(), &stale)
        .await
        .expect_err("stale rv");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );

    // A write that changes nothing keeps the resourceVersion.
    let now = api.get("a").await.expect("get");
    let same = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .expect("noop patch");
    assert_eq!(
        same.metadata.resource_version,
        now.metadata.resource_version
    );
    assert_ne!(now.metadata.resource_version.as_deref(), Some(rv.as_str()));

    let list = api
        .list(&ListParams::default().labels("x=1"))
        .await
        .expect("list");
    assert_eq!(list.items.len(), 1);
    let page = api
        .list(&ListParams::default().limit(1))
        .await
        .expect("page");
    assert_eq!(page.items.len(), 1);

    // Server-side apply through kube-rs.
    let applied = api
        .patch(
            "b",
            &PatchParams::apply("test-controller"),
            &Patch::Apply(vmi("b")),
        )
        .await
        .expect("apply create");
    assert_eq!(applied.metadata.name.as_deref(), Some("b"));
    let fields = applied.metadata.managed_fields.unwrap_or_default();
    assert!(fields
        .iter()
        .any(|f| f.manager.as_deref() == Some("test-controller")
            && f.operation.as_deref() == Some("Apply")));
}

async fn recv_name(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    name: &str,
) -> Result<bool, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match rx.recv().await {
                Some(n) if n == name => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_survives_a_server_crash() {
    let mut s = Server::start();
    let api: Api<VirtualMachineInstance> = Api::namespaced(s.client().await, "default");
    api.create(&PostParams::default(), &vmi("before"))
        .await
        .expect("create");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let w = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let task = tokio::spawn(async move {
        let mut w = std::pin::pin!(w);
        while let Some(ev) = w.next().await {
            if let Ok(o) = ev {
                let _ = tx.send(o.metadata.name.unwrap_or_default());
            }
        }
    });
    assert!(
        recv_name(&mut rx, "before").await.unwrap_or(false),
        "initial list"
    );
    api.create(&PostParams::default(), &vmi("during"))
        .await
        .expect("create");
    assert!(
        recv_name(&mut rx, "during").await.unwrap_or(false),
        "watch event"
    );

    s.kill9();
    s.spawn();
    let api2: Api<VirtualMachineInstance> = Api::namespaced(s.client().await, "default");
    api2.create(&PostParams::default(), &vmi("after"))
        .await
        .expect("create after restart");
    assert!(
        recv_name(&mut rx, "after").await.unwrap_or(false),
        "the watcher resumed after the restart"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_deletion_until_removed() {
    let s = Server::start();
    let api: Api<VirtualMachine> = Api::namespaced(s.client().await, "default");
    api.create(&PostParams::default(), &vm("f"))
        .await
        .expect("create");
    // What kube::runtime::finalizer sends.
    let add = json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                     {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/cleanup"]}]);
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(add).expect("patch")),
    )
    .await
    .expect("add finalizer");
    api.delete("f", &DeleteParams::default())
        .await
        .expect("delete");
    let held = api.get("f").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    let remove = json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "example.com/cleanup"},
                        {"op": "remove", "path": "/metadata/finalizers/0"}]);
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(remove).expect("patch")),
    )
    .await
    .expect("remove finalizer");
    let gone = api.get_opt("f").await.expect("get");
    assert!(
        gone.is_none(),
        "the object goes when its last finalizer does"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_references_are_garbage_collected() {
    let s = Server::start();
    let client = s.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client, "default");
    let owned = |owner: &VirtualMachine, name: &str| {
        let mut i = vmi(name);
        i.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "kubevirt.io/v1".into(),
                kind: "VirtualMachine".into(),
                name: owner.metadata.name.clone().unwrap_or_default(),
                uid: owner.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        ]);
        i
    };
    let wait_gone = |name: &'static str| {
        let vmis = vmis.clone();
        async move {
            for _ in 0..100 {
                if vmis.get_opt(name).await.expect("get").is_none() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };

    // Background: the owner goes at once, the dependent after it.
    let a = vms
        .create(&PostParams::default(), &vm("a"))
        .await
        .expect("vm");
    vmis.create(&PostParams::default(), &owned(&a, "a"))
        .await
        .expect("vmi");
    vms.delete("a", &DeleteParams::background())
        .await
        .expect("delete");
    assert!(
        wait_gone("a").await,
        "background deletion removes the dependent"
    );

    // Foreground: the owner waits for its dependents.
    let b = vms
        .create(&PostParams::default(), &vm("b"))
        .await
        .expect("vm");
    vmis.create(&PostParams::default(), &owned(&b, "b"))
        .await
        .expect("vmi");
    vms.delete("b", &DeleteParams::foreground())
        .await
        .expect("delete");
    assert!(
        wait_gone("b").await,
        "foreground deletion removes the dependent"
    );
    for _ in 0..100 {
        if vms.get_opt("b").await.expect("get").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        vms.get_opt("b").await.expect("get").is_none(),
        "then the owner"
    );

    // Orphan: the dependent stays, without the reference.
    let c = vms
        .create(&PostParams::default(), &vm("c"))
        .await
        .expect("vm");
    vmis.create(&PostParams::default(), &owned(&c, "c"))
        .await
        .expect("vmi");
    vms.delete("c", &DeleteParams::orphan())
        .await
        .expect("delete");
    for _ in 0..100 {
        if vms.get_opt("c").await.expect("get").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let orphan = vmis.get("c").await.expect("orphan kept");
    assert!(orphan
        .metadata
        .owner_references
        .unwrap_or_default()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    const N: usize = 300;
    let mut s = Server::start();
    let api: Api<VirtualMachineInstance> = Api::namespaced(s.client().await, "default");
    let created: Vec<u64> = futures::stream::iter(0..N)
        .map(|i| {
            let api = api.clone();
            async move {
                let o = api
                    .create(&PostParams::default(), &vmi(&format!("vmi-{i}")))
                    .await?;
                Ok::<u64, kube::Error>(
                    o.metadata
                        .resource_version
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(0),
                )
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await
        .expect("all creates acknowledged");
    let max_rv = created.iter().copied().max().unwrap_or(0);
    s.kill9();
    s.spawn();
    let api: Api<VirtualMachineInstance> = Api::namespaced(s.client().await, "default");
    let list = api.list(&ListParams::default()).await.expect("list");
    assert_eq!(
        list.items.len(),
        N,
        "every acknowledged write is there after kill -9"
    );
    let next = api
        .create(&PostParams::default(), &vmi("next"))
        .await
        .expect("create");
    let rv: u64 = next
        .metadata
        .resource_version
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    assert!(
        rv > max_rv,
        "resourceVersions keep increasing: {rv} after {max_rv}"
    );
}

/// Malformed bodies, patches and parameters: always a 4xx Status, never a 5xx, never a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_never_5xx() {
    let s = Server::start();
    let client = s.client().await;
    let api: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &vm("target"))
        .await
        .expect("create");
    let base = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
    let mut cases: Vec<(&str, String, &str, Vec<u8>)> = vec![
        ("POST", base.to_string(), "application/json", b"{".to_vec()),
        ("POST", base.to_string(), "application/json", b"[]".to_vec()),
        (
            "POST",
            base.to_string(),
            "application/json",
            b"\"str\"".to_vec(),
        ),
        (
            "POST",
            base.to_string(),
            "application/json",
            br#"{"metadata":{"name":"x"},"spec":{"running":"yes"}}"#.to_vec(),
        ),
        (
            "POST",
            base.to_string(),
            "application/json",
            br#"{"metadata":{"name":"UPPER"},"spec":{}}"#.to_vec(),
        ),
        (
            "POST",
            base.to_string(),
            "application/json",
            br#"{"metadata":5}"#.to_vec(),
        ),
        (
            "POST",
            base.to_string(),
            "application/yaml",
            b"a: [".to_vec(),
        ),
        (
            "POST",
            base.to_string(),
            "application/json",
            vec![b'x'; 4 * 1024 * 1024],
        ),
        (
            "POST",
            base.to_string(),
            "application/vnd.kubernetes.protobuf",
            b"k8s\0garbage".to_vec(),
        ),
        (
            "PATCH",
            format!("{base}/target"),
            "application/json-patch+json",
            b"{}".to_vec(),
        ),
        (
            "PATCH",
            format!("{base}/target"),
            "application/json-patch+json",
            br#"[{"op":"move"}]"#.to_vec(),
        ),
        (
            "PATCH",
            format!("{base}/target"),
            "application/json-patch+json",
            br#"[{"op":"remove","path":"/nope/x"}]"#.to_vec(),
        ),
        (
            "PATCH",
            format!("{base}/target"),
            "application/merge-patch+json",
            b"not json".to_vec(),
        ),
        (
            "PATCH",
            format!("{base}/target"),
            "application/merge-patch+json",
            br#"{"spec":{"template":null}}"#.to_vec(),
        ),
        (
            "PATCH",
            format!("{base}/target"),
            "application/merge-patch+json",
            br#"{"metadata":{"resourceVersion":"1"}}"#.to_vec(),
        ),
        (
            "PATCH",
            format!("{base}/target"),
            "application/strategic-merge-patch+json",
            b"{}".to_vec(),
        ),
        (
            "PATCH",
            format!("{base}/target"),
            "application/apply-patch+yaml",
            b"spec: {}".to_vec(),
        ),
        (
            "PATCH",
            format!("{base}/target"),
            "text/plain",
            b"x".to_vec(),
        ),
        (
            "PUT",
            format!("{base}/target"),
            "application/json",
            br#"{"metadata":{"name":"other"}}"#.to_vec(),
        ),
        (
            "GET",
            format!("{base}?labelSelector=a%20in%20b"),
            "",
            Vec::new(),
        ),
        (
            "GET",
            format!("{base}?fieldSelector=spec.x%3Dy"),
            "",
            Vec::new(),
        ),
        ("GET", format!("{base}?limit=abc"), "", Vec::new()),
        ("GET", format!("{base}?continue=%%%"), "", Vec::new()),
        (
            "GET",
            format!("{base}?watch=1&resourceVersion=abc"),
            "",
            Vec::new(),
        ),
        (
            "GET",
            format!("{base}?fieldValidation=Bogus"),
            "",
            Vec::new(),
        ),
        (
            "DELETE",
            format!("{base}/target"),
            "application/json",
            b"{bad".to_vec(),
        ),
        (
            "GET",
            "/apis/kubevirt.io/v1/namespaces/default/nosuchthings".to_string(),
            "",
            Vec::new(),
        ),
        ("GET", "/apis/nosuch.group/v1".to_string(), "", Vec::new()),
    ];
    // Random bytes, as a crude fuzzer over the JSON decoder and patch engines (fixed seed).
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..60 {
        let len = 1 + (i * 7) % 200;
        let body: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b"{}[]\":,0123abcnull truefalse-.eE"[(seed % 32) as usize]
            })
            .collect();
        let (method, ct) = match i % 4 {
            0 => ("POST", "application/json"),
            1 => ("PATCH", "application/merge-patch+json"),
            2 => ("PATCH", "application/json-patch+json"),
            _ => ("PATCH", "application/apply-patch+yaml"),
        };
        let uri = if method == "POST" {
            base.to_string()
        } else {
            format!("{base}/target?fieldManager=fuzz")
        };
        cases.push((method, uri, ct, body));
    }
    for (method, uri, ct, body) in cases {
        let mut req = http::Request::builder().method(method).uri(&uri);
        if !ct.is_empty() {
            req = req.header("content-type", ct);
        }
        let req = req.body(body.clone()).expect("request");
        let resp = client
            .send(req.map(kube::client::Body::from))
            .await
            .expect("a response");
        let code = resp.status().as_u16();
        assert!(
            (400..500).contains(&code) || code == 200 || code == 201,
            "{method} {uri} ({ct}) {:?} -> {code}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
    }
    // Still serving, and the target is intact.
    let t = api
        .get("target")
        .await
        .expect("server alive and object intact");
    assert_eq!(t.spec.run_strategy.as_deref(), Some("Halted"));
}

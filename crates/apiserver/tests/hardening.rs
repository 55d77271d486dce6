//! The server's limits against hostile or broken input, on the real server over TLS: deep and
//! slow bodies, objects past the depth limit, a corrupt store, a lost store, connections that
//! never finish the TLS handshake, and the watch window's byte cap.

mod common;
use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use redb::ReadableDatabase;
use serde_json::{json, Value};
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A request through kube-rs's client; `Err((code, reason, message))` for a `Status`.
async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<String, (u16, String, String)> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(body)
        .expect("request");
    client.request_text(req).await.map_err(|e| match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => (0, String::new(), other.to_string()),
    })
}

fn nested_json(depth: usize) -> Value {
    let mut v = json!("x");
    for _ in 0..depth {
        v = json!({ "a": v });
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_bodies_are_refused_at_once_and_healthz_stays_responsive() {
    let s = Server::start();
    let client = s.client().await;
    let deep = vec![b'['; 1 << 20];
    let cases = [
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/yaml",
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/x?fieldManager=t",
            "application/apply-patch+yaml",
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/x",
            "application/merge-patch+json",
        ),
    ];
    for (method, path, ct) in cases {
        let started = Instant::now();
        let err = raw(&client, method, path, ct, deep.clone())
            .await
            .expect_err("a deep body is refused");
        assert_eq!(err.0, 400, "{method} {ct}: {err:?}");
        assert!(err.2.contains("nested deeper than 64"), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{method} {ct} took {:?}",
            started.elapsed()
        );
    }
    // Block nesting in YAML: `- - - - ...` on one line.
    let dashes = "- ".repeat(1 << 19).into_bytes();
    let err = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/yaml",
        dashes,
    )
    .await
    .expect_err("refused");
    assert_eq!(err.0, 400, "{err:?}");

    // Two deep bodies in flight: /healthz answers within a second all along.
    let mut in_flight = Vec::new();
    for ct in ["application/yaml", "application/json"] {
        let client = client.clone();
        let body = deep.clone();
        in_flight.push(tokio::spawn(async move {
            for _ in 0..20 {
                let r = raw(
                    &client,
                    "POST",
                    "/api/v1/namespaces/default/configmaps",
                    ct,
                    body.clone(),
                )
                .await;
                assert_eq!(r.expect_err("refused").0, 400);
            }
        }));
    }
    let mut worst = Duration::ZERO;
    while in_flight.iter().any(|t| !t.is_finished()) {
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            raw(&client, "GET", "/healthz", "application/json", Vec::new()),
        )
        .await
        .expect("/healthz answers within 1 s");
        assert_eq!(r.as_deref(), Ok("ok"));
        worst = worst.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in in_flight {
        t.await.expect("deep requests");
    }
    eprintln!("slowest /healthz while deep bodies were in flight: {worst:?}");

    // A large body of ordinary depth still works, in YAML and JSON (just under
    // kube-apiserver's 1 MiB limit on a ConfigMap's data).
    let big = "x".repeat((1 << 20) - 64);
    let yaml = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  a: \"{big}\"\n  b: |\n    [[[[{{{{\n"
    );
    raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/yaml",
        yaml.into_bytes(),
    )
    .await
    .expect("a big, flat YAML body is accepted");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big2"}, "data": {"a": big}});
    raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        serde_json::to_vec(&cm).expect("json"),
    )
    .await
    .expect("a big, flat JSON body is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_depth_limit_are_invalid_and_status_writes_are_admitted() {
    let mut s = Server::start();
    let client = s.client().await;
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object"}}}]}
    });
    raw(
        &client,
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "application/json",
        serde_json::to_vec(&crd).expect("json"),
    )
    .await
    .expect("create CRD");
    // The patch is 62 levels deep; the object it would make is deeper than 64.
    let patch = json!([{"op": "add", "path": "/spec/versions/0/schema/openAPIV3Schema/example",
                        "value": nested_json(60)}]);
    let path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com";
    for _ in 0..3 {
        let err = raw(
            &client,
            "PATCH",
            path,
            "application/json-patch+json",
            serde_json::to_vec(&patch).expect("json"),
        )
        .await
        .expect_err("too deep");
        assert_eq!((err.0, err.1.as_str()), (422, "Invalid"), "{err:?}");
        assert!(
            err.2.contains("nesting depth exceeds the limit of 64"),
            "{err:?}"
        );
    }
    // A dry run is refused the same way.
    let err = raw(
        &client,
        "PATCH",
        &format!("{path}?dryRun=All"),
        "application/json-patch+json",
        serde_json::to_vec(&patch).expect("json"),
    )
    .await
    .expect_err("too deep");
    assert_eq!(err.0, 422, "{err:?}");

    // A status write goes through admission: a wrongly typed status field is refused, as on
    // the main resource.
    let vm = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "vm1"},
        "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}
    });
    raw(
        &client,
        "POST",
        "/apis/kubevirt.io/v1/namespaces/default/virtualmachines",
        "application/json",
        serde_json::to_vec(&vm).expect("json"),
    )
    .await
    .expect("create VM");
    let status_path = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm1/status";
    let err = raw(
        &client,
        "PATCH",
        status_path,
        "application/merge-patch+json",
        br#"{"status": {"printableStatus": {"not": "a string"}}}"#.to_vec(),
    )
    .await
    .expect_err("a wrongly typed status is refused");
    assert_eq!(err.0, 422, "{err:?}");
    // Deep unknown fields in status: the patch body is within the limit, the result is not
    // stored as it came (unknown fields are pruned, as for any write) or is refused; either
    // way, what is stored reloads.
    for _ in 0..3 {
        let patch = json!({"status": {"x": nested_json(58)}});
        let r = raw(
            &client,
            "PATCH",
            status_path,
            "application/merge-patch+json",
            serde_json::to_vec(&patch).expect("json"),
        )
        .await;
        if let Err(e) = r {
            assert!(matches!(e.0, 400 | 422), "{e:?}");
        }
    }
    raw(
        &client,
        "PATCH",
        status_path,
        "application/merge-patch+json",
        br#"{"status": {"printableStatus": "Stopped"}}"#.to_vec(),
    )
    .await
    .expect("a valid status write");

    // Everything stored reloads.
    s.kill9();
    s.spawn();
    let client = s.client().await;
    let vm = raw(
        &client,
        "GET",
        "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm1",
        "application/json",
        Vec::new(),
    )
    .await
    .expect("VM after restart");
    let vm: Value = serde_json::from_str(&vm).expect("json");
    assert_eq!(vm["status"]["printableStatus"], "Stopped");
    assert!(vm["status"]["x"].is_null(), "{}", vm["status"]);
}

const OBJECTS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("objects");
const QUARANTINE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("quarantine");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_does_not_parse_is_quarantined_and_the_server_starts() {
    let mut s = Server::start();
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    for name in ["a", "b"] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": name}}))
                .expect("cm");
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    s.kill9();

    // While the server is down: one object that is not JSON, one nested past serde_json's
    // recursion limit.
    let store = s.dir.path().join("store.redb");
    let deep = format!(
        "{{\"metadata\":{{\"name\":\"deep\",\"namespace\":\"default\"}},\"data\":{}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    {
        let db = redb::Database::create(&store).expect("open the store");
        let txn = db.begin_write().expect("txn");
        {
            let mut t = txn.open_table(OBJECTS).expect("objects");
            t.insert("/configmaps/default/broken", &b"{\"metadata\": {"[..])
                .expect("insert");
            t.insert("/configmaps/default/deep", deep.as_bytes())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }

    let log_path = s.dir.path().join("../quarantine-test.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    s.try_spawn(&[], Stdio::from(log))
        .expect("the server starts despite the corrupt objects");
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    let names: Vec<String> = cms
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    let b = cms.get("b").await.expect("get b");
    assert_eq!(
        b.data.and_then(|d| d.get("k").cloned()).as_deref(),
        Some("b")
    );
    // Writes still work.
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "a2"}})),
    )
    .await
    .expect("patch a");

    let mut text = String::new();
    let found = wait_until(Duration::from_secs(5), || {
        text.clear();
        std::fs::File::open(&log_path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .is_ok()
            && text.contains("/configmaps/default/broken")
            && text.contains("/configmaps/default/deep")
    });
    assert!(found, "the log names the quarantined keys:\n{text}");
    assert!(text.contains("quarantine"), "{text}");
    assert!(text.contains("ERROR"), "{text}");
    let _ = std::fs::remove_file(&log_path);

    // They are kept aside, not lost; the next start is clean.
    s.kill9();
    {
        let db = redb::Database::create(&store).expect("open the store");
        let txn = db.begin_read().expect("txn");
        let q = txn.open_table(QUARANTINE).expect("quarantine table");
        assert!(q.get("/configmaps/default/broken").expect("get").is_some());
        assert_eq!(
            q.get("/configmaps/default/deep")
                .expect("get")
                .map(|v| v.value().to_vec()),
            Some(deep.into_bytes())
        );
        let o = txn.open_table(OBJECTS).expect("objects");
        assert!(o.get("/configmaps/default/broken").expect("get").is_none());
    }
    s.spawn();
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    assert_eq!(
        cms.get("a")
            .await
            .expect("a")
            .data
            .and_then(|d| d.get("k").cloned())
            .as_deref(),
        Some("a2")
    );
}

#[test]
fn a_data_directory_that_lost_its_store_needs_init() {
    let mut s = Server::start();
    s.kill9();
    let store = s.dir.path().join("store.redb");
    let log_path = s.dir.path().join("../init-test.log");
    let start_err = |s: &mut Server, args: &[&str]| -> String {
        let log = std::fs::File::create(&log_path).expect("log file");
        let r = s.try_spawn(args, Stdio::from(log));
        assert!(r.is_err(), "the server must refuse to start");
        std::fs::read_to_string(&log_path).unwrap_or_default()
    };

    // Missing.
    std::fs::remove_file(&store).expect("remove the store");
    let err = start_err(&mut s, &[]);
    assert!(err.contains("is missing"), "{err}");
    assert!(
        err.contains("pass --init to start with an empty store"),
        "{err}"
    );
    assert!(
        err.contains("kubeconfig"),
        "names what the directory holds: {err}"
    );
    assert!(!store.exists(), "a refused start leaves no store behind");

    // 0 bytes.
    std::fs::write(&store, b"").expect("empty store");
    let err = start_err(&mut s, &[]);
    assert!(err.contains("is empty"), "{err}");
    assert!(err.contains("pass --init"), "{err}");
    assert_eq!(std::fs::metadata(&store).map(|m| m.len()).ok(), Some(0));

    // --init starts empty, and the next start needs nothing.
    s.try_spawn(&["--init"], Stdio::inherit())
        .expect("--init starts");
    assert!(s
        .ok(&["get", "namespace", "kube-system", "-o", "name"])
        .contains("kube-system"));
    s.kill9();
    s.spawn();
    let _ = std::fs::remove_file(&log_path);

    // A data directory that does not exist yet, or is empty, is a first start.
    let parent = tempfile::tempdir().expect("tempdir");
    let mut fresh = Server {
        dir: tempfile::tempdir_in(parent.path()).expect("tempdir"),
        port: free_port(),
        child: None,
    };
    fresh.spawn();
    fresh.kill9();
    // (and a nested directory that is missing altogether)
    let missing = fresh.dir.path().join("not/yet");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubevirt-apiserver"))
        .arg("--data-dir")
        .arg(&missing)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let mut child = out;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("banner");
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("listening on"), "{line:?}");
}

/// A server in this process, with `limits`.
async fn in_process(
    dir: &std::path::Path,
    limits: kubevirt_apiserver::Limits,
) -> (kubevirt_apiserver::Running, kube::Client) {
    let running = kubevirt_apiserver::start(kubevirt_apiserver::Config {
        limits,
        ..kubevirt_apiserver::Config::new(dir, ([127, 0, 0, 1], 0).into())
    })
    .await
    .expect("start");
    let client = running.client().await.expect("client");
    (running, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_the_handshake_are_closed() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let timeout = Duration::from_secs(2);
    let (running, client) = in_process(
        dir.path(),
        kubevirt_apiserver::Limits {
            tls_handshake_timeout: timeout,
            ..Default::default()
        },
    )
    .await;
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(
            tokio::net::TcpStream::connect(running.addr)
                .await
                .expect("connect"),
        );
    }
    // Meanwhile, a normal client is served.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.list(&Default::default())
        .await
        .expect("list while 50 connections idle");
    let mut reads = Vec::new();
    for mut c in idle {
        reads.push(tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let r = tokio::time::timeout(Duration::from_secs(15), c.read(&mut buf)).await;
            (r.map(|r| r.map_err(|e| e.kind())), Instant::now())
        }));
    }
    for r in reads {
        let (r, at) = r.await.expect("reader");
        match r {
            Ok(Ok(0)) | Ok(Err(std::io::ErrorKind::ConnectionReset)) => {}
            other => panic!("the server did not close an idle connection: {other:?}"),
        }
        let after = at.duration_since(opened);
        assert!(
            after >= timeout - Duration::from_millis(200) && after < timeout * 4,
            "closed after {after:?}"
        );
    }
    cms.list(&Default::default()).await.expect("list after");

    // Connections beyond the cap are closed at once.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let (capped, _) = in_process(
        dir2.path(),
        kubevirt_apiserver::Limits {
            max_connections: 5,
            ..Default::default()
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(
            tokio::net::TcpStream::connect(capped.addr)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = tokio::net::TcpStream::connect(capped.addr)
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
        .await
        .expect("the sixth connection is closed at once");
    assert!(
        matches!(r, Ok(0)) || r.is_err(),
        "the sixth connection is closed: {r:?}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_window_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cap = 4 * 1024 * 1024;
    let (running, client) = in_process(
        dir.path(),
        kubevirt_apiserver::Limits {
            watch_window_bytes: cap,
            ..Default::default()
        },
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let big = |i: usize| -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": "big"},
            // Just under kube-apiserver's 1 MiB limit on a ConfigMap's data.
            "data": {"a": format!("{i}{}", "x".repeat((1 << 20) - 512))}
        }))
        .expect("cm")
    };
    let first = cms
        .create(&PostParams::default(), &big(0))
        .await
        .expect("create");
    let first_rv = first.metadata.resource_version.clone().expect("rv");
    for i in 1..30 {
        cms.replace("big", &PostParams::default(), &big(i))
            .await
            .expect("replace");
        let (_, bytes, _) = running.api.store.window_usage();
        assert!(bytes <= cap, "window holds {bytes} bytes, cap {cap}");
    }
    let (events, bytes, start) = running.api.store.window_usage();
    assert!(
        bytes <= cap && events <= 4,
        "{events} events, {bytes} bytes"
    );
    assert!(start > first_rv.parse::<u64>().expect("rv"));

    // A watch from the first revision is told to relist.
    let mut stream = cms
        .watch(&WatchParams::default(), &first_rv)
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
        Ok(Some(Ok(WatchEvent::Error(e)))) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"), "{e:?}")
        }
        Ok(Some(Err(kube::Error::Api(e)))) => assert_eq!(e.code, 410, "{e:?}"),
        other => panic!("expected 410 Expired, got {other:?}"),
    }

    // A deleted object's versions leave the window as later events come in.
    cms.delete("big", &Default::default())
        .await
        .expect("delete");
    for i in 0..40 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("small{i}")}})).expect("cm");
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    let (_, bytes, _) = running.api.store.window_usage();
    assert!(bytes <= cap, "{bytes}");
    // The window keeps the small events and at most the latest big versions that still fit.
    let (events, _, _) = running.api.store.window_usage();
    assert!(events >= 40, "{events}");
}

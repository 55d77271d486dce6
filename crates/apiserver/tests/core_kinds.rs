//! Core kinds get what kube-apiserver always gives them, driven by the real kubectl:
//! Services get cluster IPs and node ports (and `kubectl create service`, which sends
//! protobuf, works), Secrets default to `Opaque` and refuse keys that are not file names,
//! Nodes have a `spec`, and a default StorageClass exists.

mod common;
use common::*;
use serde_json::Value;

fn json(s: &Server, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&s.ok(&a)).expect("json")
}

#[test]
fn services_get_addresses_and_ports() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    let k = json(&s, &["svc", "kubernetes", "-n", "default"]);
    assert_eq!(k["spec"]["clusterIP"], "10.96.0.1");

    s.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let web = json(&s, &["svc", "web"]);
    let ip: std::net::Ipv4Addr = web["spec"]["clusterIP"]
        .as_str()
        .and_then(|i| i.parse().ok())
        .expect("clusterIP");
    assert!(
        ip.octets()[0] == 10
            && (96..112).contains(&ip.octets()[1])
            && ip.to_string() != "10.96.0.1",
        "{ip}"
    );
    assert_eq!(web["spec"]["clusterIPs"][0], web["spec"]["clusterIP"]);
    assert_eq!(web["spec"]["type"], "ClusterIP");
    assert_eq!(web["spec"]["sessionAffinity"], "None");
    assert_eq!(web["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(web["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(web["spec"]["selector"]["app"], "web");

    // Node ports: the one asked for, or the first free one; never twice.
    s.ok(&[
        "create",
        "service",
        "nodeport",
        "np1",
        "--tcp=80:8080",
        "--node-port=30080",
    ]);
    assert_eq!(
        json(&s, &["svc", "np1"])["spec"]["ports"][0]["nodePort"],
        30080
    );
    let out = s.kubectl(&[
        "create",
        "service",
        "nodeport",
        "np2",
        "--tcp=80:8080",
        "--node-port=30080",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        ),
        "{}",
        stderr(&out)
    );
    s.ok(&["create", "service", "nodeport", "np3", "--tcp=443"]);
    let np3 = json(&s, &["svc", "np3"]);
    assert_eq!(np3["spec"]["ports"][0]["nodePort"], 30000);
    assert_eq!(np3["spec"]["externalTrafficPolicy"], "Cluster");
    let out = s.kubectl(&[
        "create",
        "service",
        "nodeport",
        "np4",
        "--tcp=80",
        "--node-port=80",
    ]);
    assert!(
        stderr(&out).contains("not in the valid range"),
        "{}",
        stderr(&out)
    );

    // Addresses are kept across updates and cannot be changed.
    s.ok(&["label", "svc", "web", "tier=front"]);
    assert_eq!(
        json(&s, &["svc", "web"])["spec"]["clusterIP"],
        ip.to_string()
    );
    let out = s.kubectl(&[
        "patch",
        "svc",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"clusterIP":"10.96.9.9","clusterIPs":["10.96.9.9"]}}"#,
    ]);
    assert!(
        stderr(&out).contains("may not change once set"),
        "{}",
        stderr(&out)
    );
    // A requested address that is taken, or outside the range, is refused.
    for (addr, want) in [
        (ip.to_string(), "provided IP is already allocated"),
        ("192.168.1.1".to_string(), "is not in the valid range"),
    ] {
        let manifest = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: fixed}}\nspec:\n  clusterIP: {addr}\n  ports: [{{port: 80}}]\n"
        );
        let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(&manifest));
        assert!(stderr(&out).contains(want), "{addr}: {}", stderr(&out));
    }
    s.ok(&["delete", "svc", "web"]);
    // A freed address can be asked for again.
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: fixed}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n"
    );
    let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(&manifest));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn secrets_nodes_and_storage_classes_get_kube_defaults() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    s.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=user=admin",
    ]);
    assert_eq!(json(&s, &["secret", "creds"])["type"], "Opaque");
    for key in ["../escape", "a/b", ".."] {
        let manifest = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: bad}}\nstringData: {{\"{key}\": x}}\n"
        );
        let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(&manifest));
        assert!(!out.status.success(), "{key} accepted");
        assert!(
            stderr(&out).contains(&format!("data[{key}]")),
            "{key}: {}",
            stderr(&out)
        );
    }
    let out = s.kubectl_with(
        "kubectl",
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Secret\nmetadata: {name: tls}\ntype: kubernetes.io/tls\nstringData: {tls.crt: x}\n"),
    );
    assert!(
        stderr(&out).contains("data[tls.key]: Required value"),
        "{}",
        stderr(&out)
    );

    // `stringData` (how KubeVirt's examples write cloud-init user data) is write-only: merged
    // into `data`, base64-encoded, over a `data` key of the same name; a second apply that
    // changes it changes `data`, and a JSON patch of `stringData` does too.
    let userdata = "apiVersion: v1\nkind: Secret\nmetadata: {name: userdata}\ndata: {keep: a2VlcA==, userdata: b2xk}\nstringData:\n  userdata: |\n    #cloud-config\n    password: fedora\n";
    let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(userdata));
    assert!(out.status.success(), "{}", stderr(&out));
    let got = json(&s, &["secret", "userdata"]);
    assert_eq!(got.get("stringData"), None, "{got}");
    assert_eq!(
        got["data"],
        serde_json::json!({"keep": "a2VlcA==", "userdata": "I2Nsb3VkLWNvbmZpZwpwYXNzd29yZDogZmVkb3JhCg=="})
    );
    let out = s.kubectl_with(
        "kubectl",
        &["apply", "-f", "-"],
        Some(&userdata.replace("fedora", "rocky")),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json(&s, &["secret", "userdata"])["data"]["userdata"],
        "I2Nsb3VkLWNvbmZpZwpwYXNzd29yZDogcm9ja3kK"
    );
    s.ok(&[
        "patch",
        "secret",
        "userdata",
        "--type=merge",
        "-p",
        r#"{"stringData":{"added":"x"}}"#,
    ]);
    let got = json(&s, &["secret", "userdata"]);
    assert_eq!(
        (got["data"]["added"].as_str(), got.get("stringData")),
        (Some("eA=="), None)
    );

    let out = s.kubectl_with(
        "kubectl",
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Node\nmetadata: {name: extra-node}\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json(&s, &["node", "extra-node"])["spec"],
        serde_json::json!({})
    );

    // Every namespace carries its name as a label, and a user cannot change it.
    s.ok(&["create", "namespace", "team-a"]);
    let ns = json(&s, &["namespace", "team-a"]);
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team-a"
    );
    s.ok(&[
        "label",
        "--overwrite",
        "namespace",
        "team-a",
        "kubernetes.io/metadata.name=team-b",
    ]);
    let ns = json(&s, &["namespace", "team-a"]);
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team-a"
    );
    let selected = s.ok(&[
        "get",
        "ns",
        "-l",
        "kubernetes.io/metadata.name=team-a",
        "-o",
        "name",
    ]);
    assert_eq!(selected.trim(), "namespace/team-a");

    let sc = json(&s, &["storageclass", "local-path"]);
    assert_eq!(
        sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"],
        "true"
    );
    assert_eq!(sc["provisioner"], "kubevirt-rs.io/local-path");
    let table = s.ok(&["get", "sc"]);
    assert!(
        table.contains("PROVISIONER") && table.contains("local-path"),
        "{table}"
    );
    let out = s.kubectl_with(
        "kubectl",
        &["apply", "-f", "-"],
        Some("apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: keep}\nprovisioner: kubevirt-rs.io/local-path\nreclaimPolicy: Recycle\n"),
    );
    assert!(
        stderr(&out).contains("reclaimPolicy: Unsupported value: \"Recycle\""),
        "{}",
        stderr(&out)
    );
}

/// Pods are served as records, `kubectl get pods -o wide` shows their node, `kubectl drain`
/// finds a node's Pods by `spec.nodeName` and evicts them through `pods/eviction` (without
/// virt-api, the API server alone: an eviction deletes its Pod), and evictions naming another
/// Pod, another namespace or no Pod are refused as kube-apiserver refuses them.
#[test]
fn pods_are_listed_by_node_and_evicted_by_drain() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, v: Value| {
        let p = dir.path().join(name);
        std::fs::write(&p, v.to_string()).expect("write");
        p.to_string_lossy().into_owned()
    };
    let node = |name: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name,
            "labels": {"kubernetes.io/hostname": name}}})
    };
    let pod = |name: &str, node: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "compute", "image": "x"}]}})
    };
    s.ok(&["create", "-f", &write("n1.json", node("node-a"))]);
    s.ok(&["create", "-f", &write("n2.json", node("node-b"))]);
    s.ok(&["create", "-f", &write("p1.json", pod("on-a", "node-a"))]);
    s.ok(&["create", "-f", &write("p2.json", pod("on-b", "node-b"))]);
    let wide = s.ok(&["get", "pods", "-o", "wide"]);
    assert!(
        wide.lines()
            .any(|l| l.starts_with("on-a ") && l.contains("node-a")),
        "{wide}"
    );
    let on_a = s.ok(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        "spec.nodeName=node-a",
        "-o",
        "name",
    ]);
    assert_eq!(on_a.trim(), "pod/on-a");
    let evict = |pod: &str, body_name: &str, body_ns: &str| {
        let body = serde_json::json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": body_name, "namespace": body_ns}});
        let f = write("eviction.json", body);
        let out = s.kubectl(&[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/default/pods/{pod}/eviction"),
            "-f",
            &f,
        ]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out))
    };
    let out = evict("on-b", "on-a", "default");
    assert!(
        out.contains("name in URL does not match name in Eviction object"),
        "{out}"
    );
    let out = evict("on-b", "on-b", "kube-system");
    assert!(
        out.contains(
            "the namespace of the provided object does not match the namespace sent on the request"
        ),
        "{out}"
    );
    let out = evict("nothing", "nothing", "default");
    assert!(out.contains("pods \"nothing\" not found"), "{out}");
    // Refused evictions deleted nothing.
    assert!(s.kubectl(&["get", "pod", "on-b"]).status.success());
    let out = evict("on-b", "on-b", "default");
    assert!(out.contains("\"status\":\"Success\""), "{out}");
    assert!(!s.kubectl(&["get", "pod", "on-b"]).status.success());

    let out = s.kubectl(&[
        "drain",
        "node-a",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        // The Pod has no controller (a launcher Pod's is its VMI).
        "--force",
        "--timeout=60s",
    ]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("node/node-a cordoned") && text.contains("node/node-a drained"),
        "{text}"
    );
    assert!(!s.kubectl(&["get", "pod", "on-a"]).status.success());
    assert_eq!(
        s.ok(&[
            "get",
            "node",
            "node-a",
            "-o",
            "jsonpath={.spec.unschedulable}"
        ]),
        "true"
    );
    // Who may evict: `edit` may, `view` may not. (A new user's token is picked up within a
    // second.)
    let viewer = s.add_user("viewer", "default", "view").expect("viewer");
    let editor = s.add_user("editor", "default", "edit").expect("editor");
    let can_evict = |who: &std::path::Path| {
        let mut answer = String::new();
        wait_until(std::time::Duration::from_secs(10), || {
            let out = s.kubectl_as(
                "kubectl",
                who,
                &["auth", "can-i", "create", "pods/eviction"],
                None,
            );
            answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
            !answer.is_empty()
        });
        answer
    };
    assert_eq!(can_evict(&viewer), "no");
    assert_eq!(can_evict(&editor), "yes");
}

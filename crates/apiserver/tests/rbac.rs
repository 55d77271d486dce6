//! Several users and RBAC, driven by the real kubectl: a user who may run VMs in namespace
//! `a` (added as `kubevirt-rs user add` adds one) is refused in `b` and on Nodes with
//! kube-apiserver's Forbidden message, `kubectl auth can-i` agrees, ServiceAccount tokens
//! from `kubectl create token` carry their bindings and die with the ServiceAccount, and
//! every write is in the audit log.

mod common;
use common::*;
use std::path::Path;
use std::process::Output;

const VM: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: testvm
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        devices: {}
        resources: {requests: {memory: 128Mi}}
"#;

fn kubectl_as(s: &Server, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    s.kubectl_as("kubectl", kubeconfig, args, stdin)
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_namespaced_user_is_confined_to_their_namespace() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    s.ok(&["create", "namespace", "a"]);
    s.ok(&["create", "namespace", "b"]);
    let alice = s.add_user("alice", "a", "edit").expect("user add");
    // A second user of the same name, a bad role and a bad name are refused.
    assert!(s.add_user("alice", "a", "edit").is_err());
    assert!(s.add_user("bob", "a", "root").is_err());
    assert!(s.add_user("eve,x", "a", "view").is_err());

    // Allowed in a.
    let o = kubectl_as(&s, &alice, &["apply", "-f", "-"], Some(VM));
    assert!(o.status.success(), "{}", out(&o));
    let o = kubectl_as(&s, &alice, &["get", "vm", "testvm", "-o", "name"], None);
    assert_eq!(out(&o).trim(), "virtualmachine.kubevirt.io/testvm");
    let o = kubectl_as(
        &s,
        &alice,
        &["create", "secret", "generic", "key", "--from-literal=k=v"],
        None,
    );
    assert!(o.status.success(), "{}", out(&o));

    // Refused in b, on Nodes and on RBAC itself, with kube-apiserver's message.
    let o = kubectl_as(&s, &alice, &["get", "vms", "-n", "b"], None);
    assert!(!o.status.success());
    assert!(
        out(&o).contains(r#"virtualmachines.kubevirt.io is forbidden: User "alice" cannot list resource "virtualmachines" in API group "kubevirt.io" in the namespace "b""#),
        "{}",
        out(&o)
    );
    let o = kubectl_as(&s, &alice, &["apply", "-n", "b", "-f", "-"], Some(VM));
    assert!(out(&o).contains("forbidden"), "{}", out(&o));
    let o = kubectl_as(&s, &alice, &["get", "nodes"], None);
    assert!(
        out(&o).contains(
            r#"User "alice" cannot list resource "nodes" in API group "" at the cluster scope"#
        ),
        "{}",
        out(&o)
    );
    let o = kubectl_as(
        &s,
        &alice,
        &[
            "create",
            "clusterrolebinding",
            "me",
            "--clusterrole=cluster-admin",
            "--user=alice",
        ],
        None,
    );
    assert!(!o.status.success(), "alice made herself cluster-admin");
    let o = kubectl_as(&s, &alice, &["delete", "namespace", "b"], None);
    assert!(out(&o).contains("forbidden"), "{}", out(&o));

    // kubectl auth can-i agrees.
    for (args, want) in [
        (vec!["auth", "can-i", "create", "vm", "-n", "a"], "yes"),
        (vec!["auth", "can-i", "create", "vm", "-n", "b"], "no"),
        (vec!["auth", "can-i", "list", "nodes"], "no"),
        (vec!["auth", "can-i", "delete", "secrets", "-n", "a"], "yes"),
        (
            vec![
                "auth",
                "can-i",
                "update",
                "virtualmachines/start",
                "--subresource=",
                "-n",
                "a",
            ],
            "yes",
        ),
    ] {
        let o = kubectl_as(&s, &alice, &args, None);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            want,
            "{args:?}: {}",
            out(&o)
        );
    }
    assert_eq!(s.ok(&["auth", "can-i", "*", "*"]).trim(), "yes");
    // The admin may act as alice (`--as`); alice may not act as anyone.
    let o = s.kubectl(&["auth", "can-i", "list", "vms", "-n", "b", "--as=alice"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "no",
        "{}",
        out(&o)
    );
    let o = s.kubectl(&["get", "vms", "-n", "a", "--as=alice", "-o", "name"]);
    assert_eq!(out(&o).trim(), "virtualmachine.kubevirt.io/testvm");
    let o = kubectl_as(
        &s,
        &alice,
        &["get", "nodes", "--as=admin", "--as-group=system:masters"],
        None,
    );
    assert!(
        out(&o).contains("cannot impersonate resource \"users\""),
        "{}",
        out(&o)
    );
    let list = out(&kubectl_as(
        &s,
        &alice,
        &["auth", "can-i", "--list", "-n", "a"],
        None,
    ));
    assert!(list.contains("virtualmachines.kubevirt.io"), "{list}");

    // A request with a token nobody issued is 401.
    let o = s.kubectl(&["--token=not-a-real-token-at-all", "get", "vms"]);
    assert!(
        out(&o).contains("Unauthorized") || out(&o).contains("provide credentials"),
        "{}",
        out(&o)
    );

    // ServiceAccount tokens: bound to view in a, valid while the ServiceAccount lives.
    s.ok(&["create", "serviceaccount", "robot", "-n", "a"]);
    s.ok(&[
        "create",
        "rolebinding",
        "robot-view",
        "--clusterrole=view",
        "--serviceaccount=a:robot",
        "-n",
        "a",
    ]);
    let token = s
        .ok(&["create", "token", "robot", "-n", "a"])
        .trim()
        .to_string();
    assert_eq!(token.matches('.').count(), 2, "a JWT: {token}");
    let t = format!("--token={token}");
    let o = s.kubectl(&[&t, "get", "vms", "-n", "a", "-o", "name"]);
    assert!(o.status.success(), "{}", out(&o));
    let o = s.kubectl(&[&t, "delete", "vm", "testvm", "-n", "a"]);
    assert!(
        out(&o).contains(
            r#"User "system:serviceaccount:a:robot" cannot delete resource "virtualmachines""#
        ),
        "{}",
        out(&o)
    );
    // A forged token (payload changed, signature kept) is refused.
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("--token={}.{}x.{}", parts[0], parts[1], parts[2]);
    assert!(!s
        .kubectl(&[&forged, "get", "vms", "-n", "a"])
        .status
        .success());
    // TokenReview (authentication.k8s.io/v1), as a node agent's `/metrics` or
    // kube-rbac-proxy asks: who a token is, for a caller allowed to ask.
    let review = |kubeconfig: &Path, token: &str| {
        let manifest = format!(
            "{{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\",\"spec\":{{\"token\":{token:?}}}}}"
        );
        kubectl_as(
            &s,
            kubeconfig,
            &["create", "-f", "-", "-o", "json"],
            Some(&manifest),
        )
    };
    let status = |o: &Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", out(o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("a TokenReview")["status"]
            .clone()
    };
    let st = status(&review(&s.kubeconfig(), &token));
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(
        st["user"]["username"], "system:serviceaccount:a:robot",
        "{st}"
    );
    assert!(
        st["user"]["groups"]
            .to_string()
            .contains("system:serviceaccounts:a"),
        "{st}"
    );
    let st = status(&review(&s.kubeconfig(), &forged[8..]));
    assert_eq!(st["authenticated"], false, "{st}");
    assert!(st["user"].is_null(), "{st}");
    // Asking is itself authorized: alice (edit in a) may not.
    let o = review(&alice, &token);
    assert!(
        out(&o).contains(
            r#"cannot create resource "tokenreviews" in API group "authentication.k8s.io""#
        ),
        "{}",
        out(&o)
    );
    s.ok(&["delete", "serviceaccount", "robot", "-n", "a"]);
    let o = s.kubectl(&[&t, "get", "vms", "-n", "a"]);
    assert!(!o.status.success(), "a token outlived its ServiceAccount");
    let st = status(&review(&s.kubeconfig(), &token));
    assert_eq!(st["authenticated"], false, "{st}");

    // The audit log has alice's writes, allowed and refused.
    let audit = std::fs::read_to_string(s.dir.path().join("audit.log")).expect("audit.log");
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let by_alice = |resource: &str, code: u64| {
        lines.iter().any(|l| {
            l["user"]["username"] == "alice"
                && l["objectRef"]["resource"] == resource
                && l["responseStatus"]["code"] == code
        })
    };
    assert!(by_alice("virtualmachines", 201), "{audit}");
    assert!(by_alice("clusterrolebindings", 403), "{audit}");
    assert!(by_alice("namespaces", 403), "{audit}");
}

/// The roles KubeVirt and CDI install are served from their one definition in
/// `kubevirt_api::rbac` (the same `kubevirt-rs crds --with-rbac` prints for a cluster), and
/// Kubernetes' `view` aggregates them.
#[test]
fn kubevirts_roles_are_served_as_defined_and_aggregated() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    for role in kubevirt_api::rbac::cluster_roles() {
        let name = role.metadata.name.clone().expect("name");
        let served: serde_json::Value =
            serde_json::from_str(&s.ok(&["get", "clusterrole", &name, "-o", "json"]))
                .expect("json");
        let want = serde_json::to_value(&role).expect("role");
        assert_eq!(served["rules"], want["rules"], "{name}");
        for (k, v) in want["metadata"]["labels"].as_object().expect("labels") {
            assert_eq!(&served["metadata"]["labels"][k], v, "{name}: label {k}");
        }
    }
    let view: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "clusterrole", "kubevirt.io:view", "-o", "json"]))
            .expect("json");
    assert_eq!(
        view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    for binding in kubevirt_api::rbac::cluster_role_bindings() {
        let name = binding.metadata.name.clone().expect("name");
        let served: serde_json::Value =
            serde_json::from_str(&s.ok(&["get", "clusterrolebinding", &name, "-o", "json"]))
                .expect("json");
        let want = serde_json::to_value(&binding).expect("binding");
        assert_eq!(served["subjects"], want["subjects"], "{name}");
        assert_eq!(served["roleRef"], want["roleRef"], "{name}");
    }
    // Aggregated into view: a viewer may watch VMIs and list DataVolumes, not create VMIs.
    s.ok(&[
        "create",
        "rolebinding",
        "viewers",
        "--clusterrole=view",
        "--group=viewers",
        "-n",
        "default",
    ]);
    for (verb, resource, sub, want) in [
        ("watch", "virtualmachineinstances.kubevirt.io", "", "yes"),
        ("create", "virtualmachineinstances.kubevirt.io", "", "no"),
        ("list", "datavolumes.cdi.kubevirt.io", "", "yes"),
    ] {
        let mut args = vec![
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            "default",
            "--as=viewer",
            "--as-group=viewers",
        ];
        let flag = format!("--subresource={sub}");
        if !sub.is_empty() {
            args.push(&flag);
        }
        let o = s.kubectl(&args);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            want,
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

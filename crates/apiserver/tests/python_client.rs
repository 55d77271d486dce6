//! The official Python `kubernetes` client lists and watches VMIs (`.ci/run` installs it).

mod common;
use common::*;
use std::process::Command;

const SCRIPT: &str = r#"
import sys, threading, time
from kubernetes import client, config, watch
config.load_kube_config(config_file=sys.argv[1])
api = client.CustomObjectsApi()
items = api.list_namespaced_custom_object("kubevirt.io", "v1", "default", "virtualmachineinstances")["items"]
print("listed", sorted(i["metadata"]["name"] for i in items))
rv = api.list_namespaced_custom_object("kubevirt.io", "v1", "default", "virtualmachineinstances")["metadata"]["resourceVersion"]
def create():
    time.sleep(1)
    api.create_namespaced_custom_object("kubevirt.io", "v1", "default", "virtualmachineinstances", {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "from-python"},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}})
threading.Thread(target=create).start()
w = watch.Watch()
for ev in w.stream(api.list_namespaced_custom_object, "kubevirt.io", "v1", "default",
                   "virtualmachineinstances", resource_version=rv, timeout_seconds=10):
    print("event", ev["type"], ev["object"]["metadata"]["name"])
    if ev["object"]["metadata"]["name"] == "from-python":
        w.stop()
core = client.CoreV1Api()
print("namespaces", sorted(n.metadata.name for n in core.list_namespace().items))
"#;

#[test]
fn python_client_lists_and_watches_vmis() {
    let has_client = Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_client {
        eprintln!(
            "SKIPPED: the Python kubernetes client is not installed (pip install kubernetes)"
        );
        return;
    }
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    s.kubectl_with(
        "kubectl",
        &["create", "-f", "-"],
        Some("apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: first}\nspec: {domain: {devices: {}, memory: {guest: 64Mi}}}\n"),
    );
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(s.kubeconfig())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("listed ['first']"), "{stdout}");
    assert!(stdout.contains("event ADDED from-python"), "{stdout}");
    assert!(
        stdout.contains("'default'") && stdout.contains("'kube-system'"),
        "{stdout}"
    );
}

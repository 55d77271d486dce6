//! Update admission through the real server and the real kubectl: a plain user editing a
//! VMI's spec or its reserved `kubevirt.io/` labels is refused with KubeVirt's message (as
//! KubeVirt's vmi-update-admitter refuses everyone but its own service accounts), while the
//! cluster admin (`system:masters`, as our in-process controllers are) may change the spec
//! as KubeVirt's virt-controller does for hotplug, within the same limits.

mod common;
use common::*;
use std::process::Output;

const VMI: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: t
  namespace: a
spec:
  domain:
    cpu: {sockets: 1, maxSockets: 4}
    devices: {}
    resources: {requests: {memory: 128Mi}}
"#;

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn only_kubevirt_components_may_change_a_vmi_spec() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    s.ok(&["create", "namespace", "a"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let alice = rt
        .block_on(kubevirt_apiserver::users::add(
            s.dir.path(),
            "alice",
            "a",
            "edit",
        ))
        .expect("user add");
    let as_alice = |args: &[&str]| s.kubectl_as("kubectl", &alice, args, None);
    let o = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(VMI));
    assert!(o.status.success(), "{}", out(&o));

    // Alice may create and label her VMIs, but not edit their spec.
    let o = as_alice(&[
        "patch",
        "vmi",
        "t",
        "-n",
        "a",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"domain":{"cpu":{"sockets":2}}}}"#,
    ]);
    assert!(!o.status.success(), "alice changed a VMI spec: {}", out(&o));
    assert!(
        out(&o).contains("update of VMI object is restricted"),
        "{}",
        out(&o)
    );
    let o = as_alice(&["label", "vmi", "t", "-n", "a", "team=blue"]);
    assert!(o.status.success(), "{}", out(&o));
    let o = as_alice(&[
        "label",
        "vmi",
        "t",
        "-n",
        "a",
        "kubevirt.io/nodeName=node01",
    ]);
    assert!(
        !o.status.success(),
        "alice set a reserved label: {}",
        out(&o)
    );
    assert!(
        out(&o).contains(
            "modification of the following reserved kubevirt.io/ labels on a VMI object is prohibited"
        ),
        "{}",
        out(&o)
    );
    let o = s.kubectl(&[
        "get",
        "vmi",
        "t",
        "-n",
        "a",
        "-o",
        "jsonpath={.spec.domain.cpu.sockets}",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "1");

    // The admin (system:masters, like our controllers) may hotplug a socket, but not move
    // the ceiling the domain started with.
    let o = s.kubectl(&[
        "patch",
        "vmi",
        "t",
        "-n",
        "a",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"domain":{"cpu":{"sockets":2}}}}"#,
    ]);
    assert!(o.status.success(), "{}", out(&o));
    let o = s.kubectl(&[
        "get",
        "vmi",
        "t",
        "-n",
        "a",
        "-o",
        "jsonpath={.spec.domain.cpu.sockets}",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "2");
    let o = s.kubectl(&[
        "patch",
        "vmi",
        "t",
        "-n",
        "a",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"domain":{"cpu":{"maxSockets":8}}}}"#,
    ]);
    assert!(!o.status.success(), "maxSockets changed: {}", out(&o));
    assert!(
        out(&o).contains("CPU topology maxSockets changed"),
        "{}",
        out(&o)
    );

    // The admin impersonating alice (kubectl --as) is judged as alice.
    let o = s.kubectl(&[
        "--as",
        "alice",
        "patch",
        "vmi",
        "t",
        "-n",
        "a",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"domain":{"cpu":{"sockets":3}}}}"#,
    ]);
    assert!(!o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains("update of VMI object is restricted"),
        "{}",
        out(&o)
    );
}

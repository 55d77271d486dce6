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
    let alice = s.add_user("alice", "a", "edit").expect("user add");
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

/// VirtualMachineClone and VirtualMachineExport are served under KubeVirt's short names, and
/// their admitters run behind the real server: a plain user's reserved VMI label is refused
/// on create too, a bad clone filter and an export of an unknown kind get KubeVirt's messages.
#[test]
fn clone_export_and_reserved_labels_through_kubectl() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    s.ok(&["create", "namespace", "a"]);
    let alice = s.add_user("alice", "a", "edit").expect("user add");
    let as_alice = |args: &[&str], stdin: &str| s.kubectl_as("kubectl", &alice, args, Some(stdin));

    let labelled = VMI.replace(
        "  namespace: a\n",
        "  namespace: a\n  labels: {kubevirt.io/created-by: someone-elses-vm}\n",
    );
    let o = as_alice(&["create", "-f", "-"], &labelled);
    assert!(!o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains(
            "creation of the following reserved kubevirt.io/ labels on a VMI object is prohibited"
        ),
        "{}",
        out(&o)
    );
    // The admin (as our controller) may.
    let o = s.kubectl_with("kubectl", &["create", "-f", "-"], Some(&labelled));
    assert!(o.status.success(), "{}", out(&o));

    let clone = r#"
apiVersion: clone.kubevirt.io/v1beta1
kind: VirtualMachineClone
metadata: {name: c, namespace: a}
spec:
  source: {apiGroup: kubevirt.io, kind: VirtualMachine, name: vm}
  target: {apiGroup: kubevirt.io, kind: VirtualMachine, name: vm2}
  labelFilters: ["mykey/!something"]
"#;
    let o = as_alice(&["create", "-f", "-"], clone);
    assert!(
        out(&o).contains("cannot contain a negation character (!)"),
        "{}",
        out(&o)
    );
    let o = as_alice(
        &["create", "-f", "-"],
        &clone.replace("  labelFilters: [\"mykey/!something\"]\n", ""),
    );
    assert!(o.status.success(), "{}", out(&o));

    let export = r#"
apiVersion: export.kubevirt.io/v1
kind: VirtualMachineExport
metadata: {name: e, namespace: a}
spec:
  source: {apiGroup: "", kind: Pod, name: p}
"#;
    let o = as_alice(&["create", "-f", "-"], export);
    assert!(out(&o).contains("invalid kind"), "{}", out(&o));
    let o = as_alice(
        &["create", "-f", "-"],
        &export.replace(
            "{apiGroup: \"\", kind: Pod, name: p}",
            "{apiGroup: kubevirt.io, kind: VirtualMachine, name: vm}",
        ),
    );
    assert!(o.status.success(), "{}", out(&o));

    let got = s.ok(&["get", "vmclone,vmexport", "-n", "a", "-o", "name"]);
    assert!(
        got.contains("virtualmachineclone.clone.kubevirt.io/c"),
        "{got}"
    );
    assert!(
        got.contains("virtualmachineexport.export.kubevirt.io/e"),
        "{got}"
    );
}

const VM: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: v
  namespace: a
spec:
  running: false
  template:
    spec:
      domain:
        devices: {}
"#;

/// The VM admitter behind the real server: the VM's instancetype is looked up in the store and
/// applied before validation (a template that sets what the instancetype provides is refused
/// with KubeVirt's message), a plain user may not put KubeVirt's reserved labels on a VM's
/// template, and KubeVirt's admission warnings reach kubectl as `Warning:` lines.
#[test]
fn vm_admission_instancetypes_template_labels_and_warnings_through_kubectl() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    s.ok(&["create", "namespace", "a"]);
    let alice = s.add_user("alice", "a", "edit").expect("user add");
    let as_alice = |args: &[&str], stdin: &str| s.kubectl_as("kubectl", &alice, args, Some(stdin));

    // An instancetype with launchSecurity is accepted with KubeVirt's deprecation warning.
    let it = r#"
apiVersion: instancetype.kubevirt.io/v1beta1
kind: VirtualMachineClusterInstancetype
metadata: {name: small}
spec:
  cpu: {guest: 2}
  memory: {guest: 128Mi}
  launchSecurity: {sev: {}}
"#;
    let o = s.kubectl_with("kubectl", &["create", "-f", "-"], Some(it));
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains("Warning: launchSecurity is deprecated and will be removed in a future release. Use preference instead."),
        "{}",
        out(&o)
    );

    // The template's sockets conflict with the instancetype's vCPUs.
    let sized = VM
        .replace(
            "  running: false\n",
            "  running: false\n  instancetype: {name: small}\n",
        )
        .replace(
            "        devices: {}\n",
            "        devices: {}\n        cpu: {sockets: 2}\n",
        );
    let o = as_alice(&["create", "-f", "-"], &sized);
    assert!(!o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains(
            "VM field(s) spec.template.spec.domain.cpu.sockets conflicts with selected instance type"
        ),
        "{}",
        out(&o)
    );

    // A reserved label on the template.
    let labelled = VM.replace(
        "  template:\n",
        "  template:\n    metadata: {labels: {kubevirt.io/nodeName: node01}}\n",
    );
    let o = as_alice(&["create", "-f", "-"], &labelled);
    assert!(!o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains(
            "creation of the following reserved kubevirt.io/ labels on a VMI object is prohibited"
        ),
        "{}",
        out(&o)
    );

    // `spec.running` is accepted, with KubeVirt's warning.
    let o = as_alice(&["create", "-f", "-"], VM);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o)
            .contains("Warning: spec.running is deprecated, please use spec.runStrategy instead."),
        "{}",
        out(&o)
    );
}

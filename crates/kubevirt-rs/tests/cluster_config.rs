//! The `KubeVirt` resource configures the running server: `kubectl patch` takes effect without
//! a restart. No VM is booted here (server-side dry runs show what admission does).

use kubevirt_testsupport::{have_kubectl, wait_for, Server};
use std::time::Duration;

const HOST_DISK_VMI: &str = r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: hd
spec:
  domain:
    devices:
      disks:
      - name: data
        disk: {bus: virtio}
    resources:
      requests:
        memory: 64Mi
  volumes:
  - name: data
    hostDisk:
      path: /var/tmp/kubevirt-rs-test-hd.img
      type: DiskOrCreate
      capacity: 1Mi
"#;

#[test]
fn feature_gates_and_the_default_binding_follow_kubectl_patch() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::new(
        env!("CARGO_BIN_EXE_kubevirt-rs"),
        dir.path().join("data"),
        dir.path().join("images"),
    );
    s.start();
    let file = dir.path().join("hd.yaml");
    std::fs::write(&file, HOST_DISK_VMI).expect("write");
    let f = file.to_str().expect("utf8");

    // Created at first start with the single-node defaults.
    assert!(
        wait_for(Duration::from_secs(20), || s.kubectl(&[
            "get",
            "kubevirt",
            "-n",
            "kubevirt",
            "kubevirt",
            "-o",
            "jsonpath={.status.phase}"
        ]) == "Deployed"),
        "{}",
        s.kubectl(&["get", "kubevirt", "-A", "-o", "yaml"])
    );
    // A fresh server has KubeVirt's default configuration: no feature gates, so a hostDisk
    // volume is refused with KubeVirt's message.
    let gates = |s: &Server| {
        s.kubectl(&[
            "get",
            "kubevirt",
            "-n",
            "kubevirt",
            "kubevirt",
            "-o",
            "jsonpath={.spec.configuration.developerConfiguration.featureGates}",
        ])
    };
    assert!(!gates(&s).contains("HostDisk"), "{}", gates(&s));
    let out = s.kubectl(&["create", "--dry-run=server", "-f", f]);
    assert!(
        out.contains("spec.volumes[0]: HostDisk feature gate is not enabled"),
        "HostDisk off by default: {out}"
    );

    // Gate on: admitted at once.
    let patch =
        r#"{"spec":{"configuration":{"developerConfiguration":{"featureGates":["HostDisk"]}}}}"#;
    let out = s.kubectl(&[
        "patch", "kubevirt", "kubevirt", "-n", "kubevirt", "--type", "merge", "-p", patch,
    ]);
    assert!(out.contains("patched"), "{out}");
    assert!(
        wait_for(Duration::from_secs(10), || s
            .kubectl(&["create", "--dry-run=server", "-f", f])
            .contains("created (server dry run)")),
        "the gate change did not reach admission: {}",
        s.kubectl(&["create", "--dry-run=server", "-f", f])
    );

    // The default interface binding follows network.defaultNetworkInterface.
    let vmi = r#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance","metadata":{"name":"net"},
        "spec":{"domain":{"devices":{},"resources":{"requests":{"memory":"64Mi"}}}}}"#;
    let vmi_file = dir.path().join("net.json");
    std::fs::write(&vmi_file, vmi).expect("write");
    let v = vmi_file.to_str().expect("utf8");
    let binding = || {
        s.kubectl(&[
            "create",
            "--dry-run=server",
            "-f",
            v,
            "-o",
            "jsonpath={.spec.domain.devices.interfaces[0]}",
        ])
    };
    assert!(binding().contains("masquerade"), "{}", binding());
    let patch = r#"{"spec":{"configuration":{"network":{"defaultNetworkInterface":"bridge"}}}}"#;
    s.kubectl(&[
        "patch", "kubevirt", "kubevirt", "-n", "kubevirt", "--type", "merge", "-p", patch,
    ]);
    assert!(
        wait_for(Duration::from_secs(10), || binding().contains("bridge")),
        "{}",
        binding()
    );
    // ...and so does virt-controller: the VMI it creates for a VM gets the new default, not
    // the one the controller started with (it reads the same configuration channel).
    let vm = r#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachine","metadata":{"name":"netvm"},
        "spec":{"runStrategy":"Always","template":{"spec":{"domain":{"devices":{},
        "resources":{"requests":{"memory":"64Mi"}}}}}}}"#;
    let vm_file = dir.path().join("netvm.json");
    std::fs::write(&vm_file, vm).expect("write");
    let out = s.kubectl(&["create", "-f", vm_file.to_str().expect("utf8")]);
    assert!(out.contains("created"), "{out}");
    let vmi_binding = || s.jsonpath("vmi", "netvm", "{.spec.domain.devices.interfaces[0]}");
    assert!(
        wait_for(Duration::from_secs(20), || vmi_binding().contains("bridge")),
        "the controller did not follow the configuration: {}",
        vmi_binding()
    );
    s.kubectl(&["delete", "vm", "netvm", "--wait=false"]);

    // A restart keeps the edited configuration (it is an object like any other).
    s.kill9();
    s.start();
    assert!(
        wait_for(Duration::from_secs(20), || s
            .kubectl(&["create", "--dry-run=server", "-f", f])
            .contains("created (server dry run)")),
        "the configuration did not survive a restart: {}",
        s.kubectl(&["create", "--dry-run=server", "-f", f])
    );
    assert!(gates(&s).contains("HostDisk"), "{}", gates(&s));
}

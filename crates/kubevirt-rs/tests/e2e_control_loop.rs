//! The main job, end to end, with real parts: `kubevirt-rs server` (API server, controller,
//! handler), unmodified kubectl as the user, real QEMU (TCG here) booting the demo guest.
//!
//! User story: apply a VirtualMachine → it runs, with its address in its status and its
//! cloud-init output on the console → the server is killed with SIGKILL and restarted → the VM
//! is still running, same QEMU process → deleting the VM stops the guest and removes its VMI.

use kubevirt_testsupport::{alive, have_kubectl, wait_for, Server};
use std::path::Path;
use std::time::Duration;

#[test]
fn apply_a_vm_it_runs_survives_a_server_crash_and_delete_stops_it() {
    if !have_kubectl() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/vm-demo.yaml");
    let out = s.kubectl(&["apply", "-f", manifest.to_str().expect("utf8")]);
    assert!(
        out.contains("virtualmachine.kubevirt.io/demo created"),
        "{out}"
    );

    // The address: the pod's on a node with a pod network, user networking's guest address
    // (10.0.2.2) without one.
    let running = wait_for(Duration::from_secs(180), || {
        let out = s.kubectl(&[
            "get",
            "vmi",
            "demo",
            "-o",
            "jsonpath={.status.phase} {.status.interfaces[0].ipAddress}",
        ]);
        out.strip_prefix("Running ")
            .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok())
            .is_some()
    });
    assert!(
        running,
        "VMI never ran with its IP: {}",
        s.kubectl(&["get", "vmi", "demo", "-o", "yaml"])
    );
    assert!(wait_for(Duration::from_secs(30), || s
        .kubectl(&["get", "vm", "demo"])
        .contains("Running")));
    let serial = s.vmi_dir("default", "demo").serial_log();
    assert!(
        wait_for(Duration::from_secs(60), || std::fs::read_to_string(&serial)
            .is_ok_and(|l| l.contains("hello from cloud-init on demo"))),
        "cloud-init output never reached the console"
    );
    let emulation = s.kubectl(&[
        "get",
        "vmi",
        "demo",
        "-o",
        "jsonpath={.status.conditions[?(@.type=='SoftwareEmulation')].status}",
    ]);
    assert_eq!(
        emulation, "True",
        "TCG is reported as KubeVirt's SoftwareEmulation condition"
    );
    let pid = s.qemu_pid("default", "demo").expect("QEMU pid");

    // A crash of the whole server does not touch the VM, and the restarted server adopts it.
    s.kill9();
    s.start();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        s.kubectl(&["get", "vmi", "demo", "-o", "jsonpath={.status.phase}"]),
        "Running",
        "after the restart"
    );
    assert_eq!(
        s.qemu_pid("default", "demo"),
        Some(pid),
        "the same QEMU process"
    );
    assert!(alive(pid), "QEMU kept running");

    s.kubectl(&["delete", "vm", "demo", "--wait=false"]);
    assert!(
        wait_for(Duration::from_secs(90), || s
            .kubectl(&["get", "vmi", "-o", "name"])
            .trim()
            .is_empty()),
        "the VMI was not removed: {}",
        s.kubectl(&["get", "vmi", "-o", "yaml"])
    );
    assert!(
        wait_for(Duration::from_secs(30), || !alive(pid)),
        "QEMU still runs after the VM was deleted"
    );
}

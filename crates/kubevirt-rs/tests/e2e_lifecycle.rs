//! VM lifecycle end to end, as a KubeVirt user drives it: unmodified kubectl and our virtctl
//! (the multi-call binary through a link named `virtctl`) against `kubevirt-rs server`, real
//! QEMU (TCG here) booting the demo guest.
//!
//! - `virtctl pause/unpause/stop/start` move the VM through Paused, Stopped and Running, and a
//!   VM whose guest powers itself off is started again under runStrategy Always.
//! - Faults: `kill -9` of one VM's QEMU, then of its launcher, then of the whole server: each
//!   has its documented outcome (docs/lifecycle.md) and the other VM is never touched.
//! - Deletion ordering: a VM carries KubeVirt's controller finalizer, so `kubectl delete vm`
//!   (which waits by default) returns only once the VMI and its QEMU are gone.

use kubevirt_api::status::finalizer;
use kubevirt_testsupport::{alive, have_kubectl, wait_for, Server};
use std::path::Path;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);

struct Env {
    server: Server,
    _dir: tempfile::TempDir,
}

fn env() -> Option<Env> {
    if !have_kubectl() {
        return None;
    }
    let guest = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR"))?;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);
    Some(Env { server, _dir: dir })
}

impl Env {
    fn virtctl(&self, args: &[&str]) -> String {
        self.server.virtctl(args)
    }

    /// A VM of the demo guest; `user_data` is its cloud-init script.
    fn apply_vm(&self, name: &str, run_strategy: &str, user_data: &str) {
        let manifest = format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: {run_strategy}
  template:
    spec:
      domain:
        devices:
          disks:
          - name: rootdisk
            disk: {{bus: virtio}}
          - name: cloudinit
            disk: {{bus: virtio}}
        resources:
          requests:
            memory: 128Mi
      terminationGracePeriodSeconds: 5
      volumes:
      - name: rootdisk
        containerDisk:
          image: kubevirt-rs/demo-guest:latest
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
            #!/bin/sh
            {user_data}
"#
        );
        let file = self.server.data.join(format!("{name}.yaml"));
        std::fs::write(&file, manifest).expect("write manifest");
        let out = self
            .server
            .kubectl(&["apply", "-f", file.to_str().expect("utf8")]);
        assert!(out.contains("created"), "{out}");
    }

    fn vm_status(&self, name: &str) -> String {
        self.server
            .jsonpath("vm", name, "{.status.printableStatus}")
    }

    fn vmi_uid_phase(&self, name: &str) -> (String, String) {
        let s = self
            .server
            .jsonpath("vmi", name, "{.metadata.uid} {.status.phase}");
        let mut it = s.split_whitespace();
        (
            it.next().unwrap_or("").to_string(),
            it.next().unwrap_or("").to_string(),
        )
    }

    #[track_caller]
    fn wait_vm(&self, name: &str, want: &str, timeout: Duration) {
        assert!(
            wait_for(timeout, || self.vm_status(name) == want),
            "VM {name} never reached {want}: {}\n{}",
            self.vm_status(name),
            self.server.kubectl(&["get", "vm,vmi", "-o", "yaml"])
        );
    }

    /// Waits for a Running VMI of `name` whose uid is not `old`; returns its uid.
    #[track_caller]
    fn wait_new_running_vmi(&self, name: &str, old: &str) -> String {
        let mut uid = String::new();
        let ok = wait_for(BOOT, || {
            let (u, p) = self.vmi_uid_phase(name);
            uid = u;
            !uid.is_empty() && uid != old && p == "Running"
        });
        assert!(
            ok,
            "no new Running VMI for {name}: {}",
            self.server.kubectl(&["get", "vmi", name, "-o", "yaml"])
        );
        uid
    }

    fn serial(&self, name: &str) -> String {
        std::fs::read_to_string(self.server.vmi_dir("default", name).serial_log())
            .unwrap_or_default()
    }
}

/// The processes whose command line names `needle` (a /proc scan: QEMU is given the VMI's
/// QMP socket path).
fn pids_mentioning(needle: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

#[test]
fn virtctl_pause_stop_start_and_always_restarts_a_guest_that_powers_off() {
    let Some(e) = env() else { return };
    e.apply_vm("demo", "Always", "echo lifecycle-ready");
    e.wait_vm("demo", "Running", BOOT);
    assert!(
        wait_for(Duration::from_secs(120), || e
            .serial("demo")
            .contains("lifecycle-ready")),
        "cloud-init output never reached the console"
    );

    // KubeVirt's rules: a VM under Always cannot be started by hand.
    let out = e.virtctl(&["start", "demo"]);
    assert!(
        out.contains("VM is already running") || out.contains("does not support manual start"),
        "{out}"
    );

    let out = e.virtctl(&["pause", "vm", "demo"]);
    assert!(!out.contains("rror"), "virtctl pause: {out}");
    e.wait_vm("demo", "Paused", Duration::from_secs(30));
    assert_eq!(
        e.server.jsonpath(
            "vmi",
            "demo",
            "{.status.conditions[?(@.type=='Paused')].status}"
        ),
        "True"
    );
    let out = e.virtctl(&["pause", "vm", "demo"]);
    assert!(out.contains("VMI is already paused"), "{out}");
    e.virtctl(&["unpause", "vm", "demo"]);
    e.wait_vm("demo", "Running", Duration::from_secs(30));

    let pid = e.server.qemu_pid("default", "demo").expect("QEMU pid");
    let out = e.virtctl(&["stop", "demo"]);
    assert!(!out.contains("rror"), "virtctl stop: {out}");
    e.wait_vm("demo", "Stopped", Duration::from_secs(90));
    assert!(e
        .server
        .kubectl(&["get", "vmi", "-o", "name"])
        .trim()
        .is_empty());
    assert!(
        wait_for(Duration::from_secs(30), || !alive(pid)),
        "QEMU still runs after stop"
    );
    assert_eq!(
        e.server.jsonpath("vm", "demo", "{.spec.runStrategy}"),
        "Halted"
    );
    let out = e.virtctl(&["stop", "demo"]);
    assert!(
        out.contains("VM is not running") || out.contains("Halted only supports"),
        "{out}"
    );

    e.virtctl(&["start", "demo"]);
    e.wait_vm("demo", "Running", BOOT);
    assert_eq!(
        e.server.jsonpath("vm", "demo", "{.spec.runStrategy}"),
        "Always"
    );

    // A guest that powers itself off is started again (a new VMI) under Always.
    e.apply_vm("blinker", "Always", "sleep 2; poweroff -f");
    e.wait_vm("blinker", "Running", BOOT);
    let (first, _) = e.vmi_uid_phase("blinker");
    let second = e.wait_new_running_vmi("blinker", &first);
    assert_ne!(first, second);
    e.server
        .kubectl(&["delete", "vm", "blinker", "--wait=false"]);

    // Deleting the VM removes its VMI and stops its launcher.
    let pid = e.server.qemu_pid("default", "demo").expect("QEMU pid");
    e.server.kubectl(&["delete", "vm", "demo", "--wait=false"]);
    assert!(
        wait_for(Duration::from_secs(90), || !alive(pid)
            && !e
                .server
                .kubectl(&["get", "vmi", "-o", "name"])
                .contains("demo")),
        "the VM's VMI or QEMU outlived the VM"
    );
}

#[test]
fn kill9_of_qemu_launcher_or_server_has_its_documented_outcome_and_spares_the_other_vm() {
    let Some(mut e) = env() else { return };
    e.apply_vm("victim", "Always", "echo victim-ready");
    e.apply_vm("bystander", "Always", "echo bystander-ready");
    e.wait_vm("victim", "Running", BOOT);
    e.wait_vm("bystander", "Running", BOOT);
    let bystander = e.server.qemu_pid("default", "bystander").expect("pid");
    let bystander_uid = e.vmi_uid_phase("bystander").0;

    // 1. QEMU killed: the launcher reports the crash, the VMI fails, Always starts a new one.
    let (uid1, _) = e.vmi_uid_phase("victim");
    let qemu = e.server.qemu_pid("default", "victim").expect("pid");
    assert!(Path::new(&format!("/proc/{qemu}")).exists());
    let _ = std::process::Command::new("kill")
        .args(["-9", &qemu.to_string()])
        .status();
    let uid2 = e.wait_new_running_vmi("victim", &uid1);

    // 2. Launcher killed: its QEMU goes with it; the handler reports the VMI Failed
    //    (LauncherExited) and Always starts a new one.
    let launcher = e
        .server
        .launcher_pid("default", "victim")
        .expect("launcher pid");
    let qemu = e.server.qemu_pid("default", "victim").expect("pid");
    let _ = std::process::Command::new("kill")
        .args(["-9", &launcher.to_string()])
        .status();
    assert!(
        wait_for(Duration::from_secs(10), || !alive(qemu)),
        "QEMU outlived its launcher"
    );
    let uid3 = e.wait_new_running_vmi("victim", &uid2);

    // 3. Server killed: both VMs keep running; the restarted server adopts them.
    let victim = e.server.qemu_pid("default", "victim").expect("pid");
    e.server.kill9();
    e.server.start();
    std::thread::sleep(Duration::from_secs(3));
    for (name, pid) in [("victim", victim), ("bystander", bystander)] {
        assert_eq!(e.server.qemu_pid("default", name), Some(pid), "{name}");
        assert!(alive(pid), "{name}'s QEMU stopped");
        e.wait_vm(name, "Running", Duration::from_secs(30));
    }
    assert_eq!(
        e.vmi_uid_phase("victim").0,
        uid3,
        "no restart after a server crash"
    );

    // The bystander was never touched: same VMI, same QEMU, all along.
    assert_eq!(e.vmi_uid_phase("bystander").0, bystander_uid);
    assert!(alive(bystander));
}

#[test]
fn kubectl_delete_vm_waits_until_the_vmi_and_its_qemu_are_gone() {
    let Some(e) = env() else { return };
    e.apply_vm("doomed", "Always", "echo doomed-ready");
    e.wait_vm("doomed", "Running", BOOT);
    let (uid, phase) = e.vmi_uid_phase("doomed");
    assert_eq!(phase, "Running");
    assert!(!uid.is_empty());
    let fins = e.server.jsonpath("vm", "doomed", "{.metadata.finalizers}");
    assert!(
        fins.contains(finalizer::VM_CONTROLLER),
        "the running VM lacks {}: {fins}",
        finalizer::VM_CONTROLLER
    );
    let vmi_fins = e.server.jsonpath("vmi", "doomed", "{.metadata.finalizers}");
    assert!(vmi_fins.contains(finalizer::VMI), "{vmi_fins}");
    let pid = e.server.qemu_pid("default", "doomed").expect("QEMU pid");
    let qmp = e.server.vmi_dir("default", "doomed").qmp_socket();
    let qmp = qmp.to_str().expect("utf8");
    assert!(alive(pid));
    assert!(
        pids_mentioning(qmp).contains(&pid),
        "the /proc scan does not find QEMU {pid} by {qmp}"
    );

    // kubectl's default: --wait=true, background cascade.
    let started = Instant::now();
    let out = e.server.kubectl(&["delete", "vm", "doomed"]);
    let took = started.elapsed();
    eprintln!("kubectl delete vm took {took:?}: {out}");
    assert!(out.contains("deleted"), "{out}");
    // No waiting from here on: all of it must already be true when kubectl returns.
    let vmi = e
        .server
        .kubectl(&["get", "vmi", "doomed", "--ignore-not-found", "-o", "name"]);
    assert!(
        vmi.trim().is_empty(),
        "the VMI outlived kubectl delete: {vmi}"
    );
    assert!(!alive(pid), "QEMU {pid} outlived kubectl delete");
    let left = pids_mentioning(qmp);
    assert!(left.is_empty(), "QEMU of VMI {uid} still runs: {left:?}");
    let vm = e
        .server
        .kubectl(&["get", "vm", "doomed", "--ignore-not-found", "-o", "name"]);
    assert!(vm.trim().is_empty(), "{vm}");
}

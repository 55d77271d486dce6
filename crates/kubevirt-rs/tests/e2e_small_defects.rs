//! Small user-visible defects (issue 13, part 4), end to end with unmodified kubectl against
//! `kubevirt-rs server` and real QEMU (TCG) booting the demo guest:
//!
//! - any valid name runs: a VM whose name and namespace are both 63 characters (the longest
//!   Kubernetes allows for a namespace and KubeVirt for a VM) boots to its console banner,
//!   although its directory path would not fit a unix socket address if it were named after
//!   them;
//! - the Ready condition's `lastTransitionTime` (VMI and VM) changes only when Ready's status
//!   changes, not on every status update;
//! - nothing of a deleted VM stays on disk: a crash-looping VM's directory is gone after
//!   `kubectl delete vm`, and a restarted server sweeps directories whose VMI no longer
//!   exists.

use kubevirt_testsupport::{have_kubectl, wait_for, Server};
use std::path::Path;
use std::time::Duration;

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
    fn apply(&self, file: &str, manifest: &str) -> String {
        let file = self.server.data.join(file);
        std::fs::write(&file, manifest).expect("write manifest");
        self.server
            .kubectl(&["apply", "-f", file.to_str().expect("utf8")])
    }

    fn get(&self, ns: &str, kind: &str, name: &str, path: &str) -> String {
        self.server.kubectl(&[
            "-n",
            ns,
            "get",
            kind,
            name,
            "-o",
            &format!("jsonpath={path}"),
        ])
    }

    fn ready_since(&self, ns: &str, kind: &str, name: &str) -> String {
        self.get(
            ns,
            kind,
            name,
            "{.status.conditions[?(@.type=='Ready')].lastTransitionTime}",
        )
    }
}

fn vm_manifest(ns: &str, name: &str, image: &str, user_data: &str) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
  namespace: {ns}
spec:
  runStrategy: Always
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
          image: {image}
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
            #!/bin/sh
            {user_data}
"#
    )
}

#[test]
fn the_longest_names_run_and_ready_keeps_its_transition_time() {
    let Some(e) = env() else { return };
    let ns = format!("ns-{}", "n".repeat(60));
    let name = format!("vm-{}", "v".repeat(60));
    assert_eq!((ns.len(), name.len()), (63, 63));
    let out = e.server.kubectl(&["create", "namespace", &ns]);
    assert!(out.contains("created"), "{out}");
    let out = e.apply(
        "long.yaml",
        &vm_manifest(
            &ns,
            &name,
            "kubevirt-rs/demo-guest:latest",
            "echo long-names-ready",
        ),
    );
    assert!(out.contains("created"), "{out}");
    let running = wait_for(BOOT, || {
        e.get(&ns, "vm", &name, "{.status.printableStatus}") == "Running"
    });
    assert!(
        running,
        "the VM with 63-character names never ran: {}",
        e.server
            .kubectl(&["-n", &ns, "get", "vm,vmi", "-o", "yaml"])
    );
    // Ready's lastTransitionTime as soon as it runs, before the guest agent connects (which
    // adds AgentConnected and guestOSInfo: more status updates). Ready stays True throughout,
    // so its time must not move.
    let vmi_since = e.ready_since(&ns, "vmi", &name);
    let vm_since = e.ready_since(&ns, "vm", &name);
    assert!(!vmi_since.is_empty() && !vm_since.is_empty());
    let vmi_rv = e.get(&ns, "vmi", &name, "{.metadata.resourceVersion}");
    let vm_rv = e.get(&ns, "vm", &name, "{.metadata.resourceVersion}");
    let serial =
        || std::fs::read_to_string(e.server.vmi_dir(&ns, &name).serial_log()).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(120), || serial()
            .contains("kubevirt-rs demo guest: booted")
            && serial().contains("long-names-ready")),
        "no console banner: {}",
        serial()
    );
    // Timestamps have a resolution of a second: let at least two pass.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        wait_for(Duration::from_secs(120), || e.get(
            &ns,
            "vmi",
            &name,
            "{.status.conditions[?(@.type=='AgentConnected')].status}"
        ) == "True"),
        "the guest agent never connected"
    );
    // Something else writes the VM's status too.
    e.server.kubectl(&[
        "-n",
        &ns,
        "annotate",
        "vm",
        &name,
        "touched=yes",
        "--overwrite",
    ]);
    std::thread::sleep(Duration::from_secs(3));
    assert_ne!(
        e.get(&ns, "vmi", &name, "{.metadata.resourceVersion}"),
        vmi_rv,
        "the VMI's status was not updated meanwhile"
    );
    assert_ne!(
        e.get(&ns, "vm", &name, "{.metadata.resourceVersion}"),
        vm_rv,
        "the VM was not updated meanwhile"
    );
    assert_eq!(
        e.get(
            &ns,
            "vmi",
            &name,
            "{.status.conditions[?(@.type=='Ready')].status}"
        ),
        "True"
    );
    assert_eq!(
        e.ready_since(&ns, "vmi", &name),
        vmi_since,
        "the VMI's Ready lastTransitionTime moved without a transition"
    );
    assert_eq!(
        e.ready_since(&ns, "vm", &name),
        vm_since,
        "the VM's Ready lastTransitionTime moved without a transition"
    );

    // Deleting it leaves nothing behind.
    let dir = e.server.vmi_dir(&ns, &name);
    let out = e.server.kubectl(&["-n", &ns, "delete", "vm", &name]);
    assert!(out.contains("deleted"), "{out}");
    assert!(
        wait_for(Duration::from_secs(30), || !dir.path().exists()),
        "{} stayed",
        dir.path().display()
    );
}

#[test]
fn a_crash_looping_vm_leaves_nothing_on_disk_and_a_restart_sweeps_orphans() {
    let Some(mut e) = env() else { return };
    // Names Kubernetes refuses are refused at admission, in its words, and never reach the
    // node (they would have no directory there).
    for (bad, why) in [
        ("a..b", "a lowercase RFC 1123 subdomain must consist of"),
        ("a.-b", "a lowercase RFC 1123 subdomain must consist of"),
        (&*"a".repeat(254), "must be no more than 253 characters"),
    ] {
        let out = e.apply(
            "bad.yaml",
            &vm_manifest("default", bad, "kubevirt-rs/demo-guest:latest", "true"),
        );
        assert!(
            out.contains("metadata.name: Invalid value") && out.contains(why),
            "{bad}: {out}"
        );
    }
    // The launcher accepts the spec and fails on every start: its image tag is not in the
    // store. Each start's directory lives only while that start fails (a fraction of a second,
    // then seconds of backoff), so it is watched for from before the apply.
    let dir = e.server.vmi_dir("default", "crasher");
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (path, seen) = (dir.path().to_path_buf(), seen.clone());
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + Duration::from_secs(120);
            while std::time::Instant::now() < until {
                if path.exists() {
                    seen.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let out = e.apply(
        "crash.yaml",
        &vm_manifest(
            "default",
            "crasher",
            "kubevirt-rs/demo-guest:no-such-tag",
            "true",
        ),
    );
    assert!(out.contains("created"), "{out}");
    let looped = wait_for(Duration::from_secs(90), || {
        e.get(
            "default",
            "vm",
            "crasher",
            "{.status.startFailure.consecutiveFailCount}",
        )
        .parse::<u32>()
        .is_ok_and(|n| n >= 1)
    });
    assert!(
        looped,
        "the VM never crash-looped: {}",
        e.server.kubectl(&["get", "vm,vmi", "-o", "yaml"])
    );
    let _ = watcher.join();
    assert!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        "a start never made a VMI directory"
    );

    // An orphan: the directory of a VMI that no longer exists (deleted while no handler ran).
    e.server.kill9();
    let ghost = e.server.vmi_dir("default", "ghost");
    std::fs::create_dir_all(ghost.disks_dir()).expect("mkdir");
    std::fs::write(ghost.disks_dir().join("rootdisk.qcow2"), b"x").expect("write");
    std::fs::write(
        ghost.vmi_file(),
        r#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance",
            "metadata":{"name":"ghost","namespace":"default","uid":"0000-ghost"},"spec":{"domain":{"devices":{}}}}"#,
    )
    .expect("write");
    e.server.start();
    assert!(
        wait_for(Duration::from_secs(30), || !ghost.path().exists()),
        "the restarted server kept the orphan {}",
        ghost.path().display()
    );

    let out = e.server.kubectl(&["delete", "vm", "crasher"]);
    assert!(out.contains("deleted"), "{out}");
    assert!(
        wait_for(Duration::from_secs(30), || !dir.path().exists()),
        "the deleted VM's directory stayed: {:?}",
        std::fs::read_dir(dir.path())
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            .unwrap_or_default()
    );
    // And no new one appears.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!dir.path().exists());
    let vms = kubevirt_launcher::api::VmiDir::root(&e.server.data).expect("root");
    let left: Vec<_> = std::fs::read_dir(&vms)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|p| !Path::new(p).join("vmi.json").exists()),
        "VMI directories stayed: {left:?}"
    );
}

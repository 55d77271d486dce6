//! DataVolumes end to end, with real parts: `kubevirt-rs server` (API server, controller,
//! handler, CDI), unmodified kubectl, a real HTTP server, real QEMU.
//!
//! User story: apply a VirtualMachine whose root disk is a `dataVolumeTemplates` http import
//! of the demo guest's bootable raw disk → the VM waits for its DataVolume (Provisioning, then
//! `DataVolumesReady`) → the DataVolume succeeds into a local-path PVC → the VM boots from that
//! volume and the guest shows up on its serial console.

use kubevirt_testsupport::{have_kubectl, wait_for, Server};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct HttpServer(Child);

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `python3 -m http.server` over `dir` on a free loopback port.
fn http_server(dir: &std::path::Path) -> Option<(HttpServer, u16)> {
    if !kubevirt_testsupport::have("python3", &["--version"], "apt-get install python3") {
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
            "--directory",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let up = wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "python3 -m http.server did not come up");
    Some((HttpServer(child), port))
}

#[test]
fn vm_with_a_datavolume_template_imports_its_disk_and_boots_from_it() {
    if !have_kubectl() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let Some((_http, port)) = http_server(&guest) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);
    let manifest = format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: fromdv
spec:
  runStrategy: Always
  dataVolumeTemplates:
  - metadata:
      name: fromdv-root
    spec:
      source:
        http:
          url: http://127.0.0.1:{port}/disk.raw
      storage:
        accessModes: [ReadWriteOnce]
        resources:
          requests:
            storage: 100Mi
  template:
    spec:
      domain:
        devices:
          disks:
          - name: rootdisk
            disk:
              bus: virtio
          - name: cloudinit
            disk:
              bus: virtio
        resources:
          requests:
            memory: 256Mi
      volumes:
      - name: rootdisk
        dataVolume:
          name: fromdv-root
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
            #!/bin/sh
            echo "hello from a DataVolume on $(hostname)"
"#
    );
    let file = dir.path().join("vm.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    let out = s.kubectl(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(
        out.contains("virtualmachine.kubevirt.io/fromdv created"),
        "{out}"
    );

    // The DataVolume is created for (and owned by) the VM, and imports.
    assert!(
        wait_for(Duration::from_secs(30), || s.jsonpath(
            "dv",
            "fromdv-root",
            "{.metadata.ownerReferences[0].kind}"
        ) == "VirtualMachine"),
        "DataVolume not created: {}",
        s.kubectl(&["get", "dv", "-o", "yaml"])
    );
    let succeeded = wait_for(Duration::from_secs(120), || {
        s.jsonpath("dv", "fromdv-root", "{.status.phase}") == "Succeeded"
    });
    assert!(
        succeeded,
        "import failed: {}",
        s.kubectl(&["get", "dv", "fromdv-root", "-o", "yaml"])
    );
    assert_eq!(
        s.jsonpath("dv", "fromdv-root", "{.status.progress}"),
        "100.0%"
    );
    assert_eq!(s.jsonpath("pvc", "fromdv-root", "{.status.phase}"), "Bound");

    let running = wait_for(Duration::from_secs(180), || {
        s.jsonpath("vmi", "fromdv", "{.status.phase}") == "Running"
    });
    assert!(
        running,
        "VMI never ran: {}\n{}",
        s.kubectl(&["get", "vm,vmi", "fromdv", "-o", "yaml"]),
        std::fs::read_to_string(s.vmi_dir("default", "fromdv").launcher_log()).unwrap_or_default()
    );
    assert_eq!(
        s.jsonpath(
            "vm",
            "fromdv",
            "{.status.conditions[?(@.type=='DataVolumesReady')].status}"
        ),
        "True"
    );
    let serial = s.vmi_dir("default", "fromdv").serial_log();
    let booted = wait_for(Duration::from_secs(120), || {
        std::fs::read_to_string(&serial).is_ok_and(|l| {
            l.contains("kubevirt-rs demo guest: booted")
                && l.contains("hello from a DataVolume on fromdv")
        })
    });
    assert!(
        booted,
        "the guest never booted from the DataVolume: {}",
        std::fs::read_to_string(&serial).unwrap_or_default()
    );
    // QEMU opened the imported volume: the PV's disk.img.
    let pv_path = s.kubectl(&["get", "pv", "-o", "jsonpath={.items[0].spec.local.path}"]);
    assert!(
        pv_path.starts_with(s.data.join("volumes").to_str().expect("utf8")),
        "{pv_path}"
    );
    let pid = s.qemu_pid("default", "fromdv").expect("QEMU pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(&format!("{pv_path}/disk.img")),
        "{cmdline}"
    );

    let out = s.kubectl(&["delete", "vm", "fromdv", "--wait=false"]);
    assert!(out.contains("deleted"), "{out}");
}

/// Reads the first `n` bytes of the `disk.img` of the PersistentVolume bound to `claim`.
fn claim_disk_head(s: &Server, claim: &str, n: usize) -> Vec<u8> {
    let pv = s.jsonpath("pvc", claim, "{.spec.volumeName}");
    assert!(!pv.is_empty(), "{claim} is not bound");
    let path = s.jsonpath("pv", &pv, "{.spec.local.path}");
    let mut head = vec![0u8; n];
    let mut f = std::fs::File::open(std::path::Path::new(&path).join("disk.img"))
        .unwrap_or_else(|e| panic!("{path}/disk.img: {e}"));
    std::io::Read::read_exact(&mut f, &mut head).expect("read disk.img");
    head
}

fn write_claim_disk_head(s: &Server, claim: &str, bytes: &[u8]) {
    let pv = s.jsonpath("pvc", claim, "{.spec.volumeName}");
    let path = s.jsonpath("pv", &pv, "{.spec.local.path}");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(std::path::Path::new(&path).join("disk.img"))
        .expect("open disk.img");
    std::io::Write::write_all(&mut f, bytes).expect("write disk.img");
    f.sync_all().expect("fsync disk.img");
}

/// A stopped VM's VirtualMachineSnapshot keeps its disk as it was (through the local
/// snapshotter's VolumeSnapshots), and a VirtualMachineRestore brings it back into new claims
/// the VM then uses; a restore onto another existing VM is refused with KubeVirt's message.
/// No guest boots: the disk is written from the host while the VM is stopped.
#[test]
fn a_vm_snapshot_keeps_the_disk_and_a_restore_brings_it_back() {
    if !have_kubectl() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);
    let manifest = r#"apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: keep-data
spec:
  source:
    blank: {}
  storage:
    resources:
      requests:
        storage: 16Mi
---
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: keep
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        devices:
          disks:
          - name: rootdisk
            disk: {bus: virtio}
          - name: data
            disk: {bus: virtio}
        resources:
          requests:
            memory: 128Mi
      volumes:
      - name: rootdisk
        containerDisk:
          image: kubevirt-rs/demo-guest:latest
      - name: data
        dataVolume:
          name: keep-data
---
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: bystander
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        devices: {}
        resources:
          requests:
            memory: 128Mi
"#;
    let file = dir.path().join("vm.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    let out = s.kubectl(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(
        out.contains("virtualmachine.kubevirt.io/keep created"),
        "{out}"
    );
    assert!(
        wait_for(Duration::from_secs(60), || s.jsonpath(
            "dv",
            "keep-data",
            "{.status.phase}"
        ) == "Succeeded"),
        "{}",
        s.kubectl(&["get", "dv", "keep-data", "-o", "yaml"])
    );
    write_claim_disk_head(&s, "keep-data", b"before-snapshot");

    let snap = r#"apiVersion: snapshot.kubevirt.io/v1beta1
kind: VirtualMachineSnapshot
metadata:
  name: snap1
spec:
  source:
    apiGroup: kubevirt.io
    kind: VirtualMachine
    name: keep
"#;
    let file = dir.path().join("snap.yaml");
    std::fs::write(&file, snap).expect("write snapshot");
    let out = s.kubectl(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(out.contains("snap1 created"), "{out}");
    assert!(
        wait_for(Duration::from_secs(60), || s.jsonpath(
            "vmsnapshot",
            "snap1",
            "{.status.phase} {.status.readyToUse}"
        ) == "Succeeded true"),
        "{}\n{}",
        s.kubectl(&["get", "vmsnapshot", "snap1", "-o", "yaml"]),
        s.kubectl(&["get", "volumesnapshot,volumesnapshotcontent", "-o", "yaml"])
    );
    assert_eq!(
        s.jsonpath(
            "vmsnapshot",
            "snap1",
            "{.status.snapshotVolumes.includedVolumes} {.status.snapshotVolumes.excludedVolumes}"
        ),
        r#"["data"] ["rootdisk"]"#
    );
    // The VM is unlocked again, and the disk changes after the snapshot.
    assert_eq!(s.jsonpath("vm", "keep", "{.status.snapshotInProgress}"), "");
    write_claim_disk_head(&s, "keep-data", b"after--snapshot");

    // Onto another VM that exists: KubeVirt's refusal.
    let restore = |name: &str, target: &str| {
        let manifest = format!(
            r#"apiVersion: snapshot.kubevirt.io/v1beta1
kind: VirtualMachineRestore
metadata:
  name: {name}
spec:
  target:
    apiGroup: kubevirt.io
    kind: VirtualMachine
    name: {target}
  virtualMachineSnapshotName: snap1
"#
        );
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, manifest).expect("write restore");
        s.kubectl(&["apply", "-f", file.to_str().expect("utf8")])
    };
    let out = restore("wrong", "bystander");
    // KubeVirt puts the error in the conditions' reason.
    let refused = out.contains("restore source and restore target are different")
        || wait_for(Duration::from_secs(30), || {
            s.jsonpath(
                "vmrestore",
                "wrong",
                "{.status.conditions[?(@.type=='Ready')].reason}",
            ) == "restore source and restore target are different but restore target already exists"
        });
    assert!(
        refused,
        "{out}\n{}",
        s.kubectl(&["get", "vmrestore", "wrong", "-o", "yaml"])
    );
    assert_eq!(
        s.jsonpath("vm", "bystander", "{.spec.template.spec.volumes}"),
        ""
    );

    let out = restore("back", "keep");
    assert!(out.contains("back created"), "{out}");
    assert!(
        wait_for(Duration::from_secs(60), || s.jsonpath(
            "vmrestore",
            "back",
            "{.status.complete}"
        ) == "true"),
        "{}",
        s.kubectl(&["get", "vmrestore", "back", "-o", "yaml"])
    );
    let uid = s.jsonpath("vmrestore", "back", "{.metadata.uid}");
    let claim = format!("restore-{uid}-data");
    assert_eq!(
        s.jsonpath(
            "vm",
            "keep",
            "{.spec.template.spec.volumes[?(@.name=='data')].persistentVolumeClaim.claimName}"
        ),
        claim
    );
    assert!(
        wait_for(Duration::from_secs(60), || s.jsonpath(
            "pvc",
            &claim,
            "{.status.phase}"
        ) == "Bound"),
        "{}",
        s.kubectl(&["get", "pvc", &claim, "-o", "yaml"])
    );
    assert_eq!(claim_disk_head(&s, &claim, 15), b"before-snapshot");
    // The source's own claim keeps what was written after the snapshot.
    assert_eq!(claim_disk_head(&s, "keep-data", 15), b"after--snapshot");
}

/// Online snapshots of a running VM, as a KubeVirt user takes them: a file written in the
/// guest (an ext2 filesystem on a DataVolume disk) before a VirtualMachineSnapshot of the
/// running VM is there after a VirtualMachineRestore, one written after is gone. The first
/// snapshot freezes the guest's filesystems through its agent (`Online`, `GuestAgent`); the
/// second, with the agent gone, stops the guest while its volume is copied (`Online`,
/// `NoGuestAgent`); the guest runs on after both. virt-api's `freeze` refuses hostile
/// `unfreezeTimeout`s naming the field. Two guest boots.
#[test]
fn an_online_snapshot_of_a_running_vm_keeps_the_guests_file_and_a_restore_brings_it_back() {
    if !have_kubectl() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);
    let apply = |name: &str, manifest: &str| {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, manifest).expect("write manifest");
        s.kubectl(&["apply", "-f", file.to_str().expect("utf8")])
    };
    let out = apply(
        "vm",
        r#"apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: live-data
spec:
  source:
    blank: {}
  storage:
    resources:
      requests:
        storage: 16Mi
---
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: live
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        devices:
          disks:
          - name: rootdisk
            disk: {bus: virtio}
          - name: data
            serial: livedata
            disk: {bus: virtio}
          - name: cloudinit
            disk: {bus: virtio}
        resources:
          requests:
            memory: 128Mi
      terminationGracePeriodSeconds: 0
      volumes:
      - name: rootdisk
        containerDisk:
          image: kubevirt-rs/demo-guest:latest
      - name: data
        dataVolume:
          name: live-data
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
            #!/bin/sh
            echo "online snapshot guest up"
"#,
    );
    assert!(
        out.contains("virtualmachine.kubevirt.io/live created"),
        "{out}"
    );
    let booted = |what: &str| {
        let serial = s.vmi_dir("default", "live").serial_log();
        let up = wait_for(Duration::from_secs(180), || {
            s.jsonpath("vmi", "live", "{.status.phase}") == "Running"
                && std::fs::read_to_string(&serial)
                    .is_ok_and(|l| l.contains("online snapshot guest up"))
        });
        assert!(
            up,
            "the guest never booted ({what}): {}\n{}",
            s.kubectl(&["get", "vm,vmi,dv,pvc", "-o", "yaml"]),
            std::fs::read_to_string(&serial).unwrap_or_default()
        );
    };
    booted("first boot");
    // The data disk, found by its serial; mounted (made an ext2 filesystem the first time).
    let mount = "D=$(grep -l livedata /sys/block/vd*/serial | cut -d/ -f4); mkdir -p /mnt/d; \
                 grep -q ' /mnt/d ' /proc/mounts || mount /dev/$D /mnt/d || \
                 { mke2fs -q /dev/$D && mount /dev/$D /mnt/d; }";
    s.on_console(
        "live",
        &format!("{mount}; echo file-A > /mnt/d/a && sync && echo wrote-$((40+2))A"),
        "wrote-42A",
        false,
    );

    // Hostile freeze bodies: refused, naming the field, before anything reaches the guest.
    let freeze_url =
        "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/live/freeze";
    for body in [
        r#"{}"#,
        r#"{"unfreezeTimeout":"-5m"}"#,
        r#"{"unfreezeTimeout":"99999h"}"#,
        r#"{"unfreezeTimeout":"soon"}"#,
    ] {
        let file = dir.path().join("freeze.json");
        std::fs::write(&file, body).expect("write body");
        let out = s.kubectl(&[
            "replace",
            "--raw",
            freeze_url,
            "-f",
            file.to_str().expect("utf8"),
        ]);
        assert!(out.contains("unfreezeTimeout"), "{body}: {out}");
    }
    assert_eq!(
        s.jsonpath(
            "vmi",
            "live",
            "{.status.conditions[?(@.type=='Paused')].status}"
        ),
        ""
    );

    let snapshot = |name: &str, indications: &str| {
        let out = apply(
            name,
            &format!(
                r#"apiVersion: snapshot.kubevirt.io/v1beta1
kind: VirtualMachineSnapshot
metadata:
  name: {name}
spec:
  source:
    apiGroup: kubevirt.io
    kind: VirtualMachine
    name: live
"#
            ),
        );
        assert!(out.contains(&format!("{name} created")), "{out}");
        assert!(
            wait_for(Duration::from_secs(60), || s.jsonpath(
                "vmsnapshot",
                name,
                "{.status.phase} {.status.readyToUse}"
            ) == "Succeeded true"),
            "{}\n{}",
            s.kubectl(&["get", "vmsnapshot", name, "-o", "yaml"]),
            s.kubectl(&["get", "vmi", "live", "-o", "yaml"])
        );
        assert_eq!(
            s.jsonpath("vmsnapshot", name, "{.status.indications}"),
            indications
        );
        assert_eq!(s.jsonpath("vm", "live", "{.status.snapshotInProgress}"), "");
        // The guest runs on: unfrozen, not paused.
        assert!(
            wait_for(Duration::from_secs(10), || s.jsonpath(
                "vmi",
                "live",
                "{.status.phase}/{.status.conditions[?(@.type=='Paused')].status}"
            ) == "Running/"),
            "{}",
            s.kubectl(&["get", "vmi", "live", "-o", "yaml"])
        );
    };
    let agent = wait_for(Duration::from_secs(60), || {
        s.jsonpath(
            "vmi",
            "live",
            "{.status.conditions[?(@.type=='AgentConnected')].status}",
        ) == "True"
    });
    assert!(
        agent,
        "{}",
        s.kubectl(&["get", "vmi", "live", "-o", "yaml"])
    );
    snapshot("with-agent", r#"["Online","GuestAgent"]"#);

    // Without the agent: the guest is stopped (its I/O drained) while the volume is copied.
    s.on_console(
        "live",
        "kill $(cat /run/qemu-ga.pid); sleep 1; pidof qemu-ga || echo agent-$((40+2))-gone",
        "agent-42-gone",
        false,
    );
    let gone = wait_for(Duration::from_secs(60), || {
        s.jsonpath(
            "vmi",
            "live",
            "{.status.conditions[?(@.type=='AgentConnected')].status}",
        ) != "True"
    });
    assert!(gone, "{}", s.kubectl(&["get", "vmi", "live", "-o", "yaml"]));
    snapshot("no-agent", r#"["Online","NoGuestAgent"]"#);
    assert!(
        std::fs::read_to_string(s.vmi_dir("default", "live").launcher_log())
            .unwrap_or_default()
            .contains("Frozen"),
        "the launcher never stopped the guest for the snapshot"
    );

    s.on_console(
        "live",
        "echo file-B > /mnt/d/b && sync && echo wrote-$((40+2))B",
        "wrote-42B",
        false,
    );
    s.set_run_strategy("live", "Halted");
    assert!(
        wait_for(Duration::from_secs(60), || s
            .kubectl(&["get", "vmi", "live", "-o", "name"])
            .contains("NotFound")),
        "{}",
        s.kubectl(&["get", "vmi", "live", "-o", "yaml"])
    );
    let out = apply(
        "restore",
        r#"apiVersion: snapshot.kubevirt.io/v1beta1
kind: VirtualMachineRestore
metadata:
  name: back
spec:
  target:
    apiGroup: kubevirt.io
    kind: VirtualMachine
    name: live
  virtualMachineSnapshotName: no-agent
"#,
    );
    assert!(out.contains("back created"), "{out}");
    assert!(
        wait_for(Duration::from_secs(60), || s.jsonpath(
            "vmrestore",
            "back",
            "{.status.complete}"
        ) == "true"),
        "{}",
        s.kubectl(&["get", "vmrestore", "back", "-o", "yaml"])
    );
    let _ = std::fs::remove_file(s.vmi_dir("default", "live").serial_log());
    s.set_run_strategy("live", "Always");
    booted("after the restore");
    let out = s.on_console(
        "live",
        &format!("{mount}; cat /mnt/d/a; ls /mnt/d/b || echo no-$((40+2))B"),
        "no-42B",
        false,
    );
    assert!(out.contains("file-A"), "{out}");
    assert!(!out.contains("file-B"), "{out}");

    let out = s.kubectl(&["delete", "vm", "live", "--wait=false"]);
    assert!(out.contains("deleted"), "{out}");
}

/// Memory snapshots (docs/memory-snapshots.md): a VirtualMachineSnapshot annotated
/// `snapshot.kubevirt-rs.io/memory: "true"` of a running VM saves the guest's memory on its
/// node; a VirtualMachineRestore of it (onto the stopped VM, and to a new VM) starts the
/// guest from that memory: a counter running in the guest goes on from where it was, with
/// the same boot id. Honoured once: a restart boots. A memory snapshot of a stopped VM
/// fails saying why; hand-written references that are paths or name a namespace are
/// refused at admission; deleting the snapshot removes the memory. One cold boot, two
/// restores, one more cold boot.
#[test]
fn a_memory_snapshot_restore_resumes_a_counter_running_in_the_guest() {
    use kubevirt_api::memsnap;
    if !have_kubectl() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);
    let apply = |name: &str, manifest: &str| {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, manifest).expect("write manifest");
        s.kubectl(&["apply", "-f", file.to_str().expect("utf8")])
    };
    let cmdline = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/cmdline"),
    )
    .expect("guest/cmdline");
    let cmdline = cmdline
        .lines()
        .find_map(|l| l.strip_prefix("q35="))
        .expect("q35 line");
    let vm = |name: &str, strategy: &str| {
        format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: {strategy}
  template:
    spec:
      domain:
        memory: {{guest: 128Mi}}
        firmware:
          kernelBoot:
            kernelArgs: {cmdline}
            container: {{image: "kubevirt-rs/demo-guest:latest", kernelPath: /boot/vmlinux, initrdPath: /boot/initrd.img}}
        devices:
          autoattachGraphicsDevice: false
          autoattachPodInterface: false
          disks:
          - name: cloudinit
            disk: {{bus: virtio}}
      terminationGracePeriodSeconds: 0
      volumes:
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
            #!/bin/sh
            (i=0; while :; do i=$((i+1)); echo $i > /run/tick; sleep 1; done) </dev/null >/dev/null 2>&1 &
            echo "counter guest up"
"#
        )
    };
    let out = apply(
        "vms",
        &[vm("counter", "Always"), vm("idle", "Halted")].join("---\n"),
    );
    assert!(out.contains("counter created"), "{out}");
    // The counter and the boot id, read on the serial console.
    // (Typed again until the counter has started: a fresh boot may not have it yet.)
    let tick = |vmi: &str| -> (u64, String) {
        let mut last = String::new();
        for _ in 0..30 {
            let out = s.on_console(
                vmi,
                "echo T=$(cat /run/tick)=B=$(cat /proc/sys/kernel/random/boot_id)=E$((6*7))",
                "=E42",
                false,
            );
            let found = out.lines().filter(|l| !l.contains("$(cat")).find_map(|l| {
                let rest = &l[l.find("T=")? + 2..];
                let (n, rest) = rest.split_once("=B=")?;
                let (boot, _) = rest.split_once("=E42")?;
                Some((n.trim().parse().ok()?, boot.to_string()))
            });
            if let Some(t) = found {
                return t;
            }
            last = out;
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("no tick on {vmi}'s console: {last}")
    };
    let running = |vmi: &str| {
        assert!(
            wait_for(Duration::from_secs(180), || s.jsonpath(
                "vmi",
                vmi,
                "{.status.phase}/{.status.conditions[?(@.type=='Paused')].status}"
            ) == "Running/"),
            "{}",
            s.kubectl(&["get", "vm,vmi", "-o", "yaml"])
        );
    };
    running("counter");
    let serial = s.vmi_dir("default", "counter").serial_log();
    assert!(
        wait_for(Duration::from_secs(120), || std::fs::read_to_string(
            &serial
        )
        .is_ok_and(|l| l.contains("counter guest up"))),
        "the guest never booted"
    );
    let (before, boot) = tick("counter");

    // Hand-written references that are paths or name a namespace: refused at admission.
    for bad in [
        r#"{"node":"node01","key":"../../memory-snapshots/other"}"#,
        r#"{"node":"node01","key":"0f8fad5b-d9cb-469f-a165-70867728950e","namespace":"other"}"#,
    ] {
        let out = s.kubectl(&[
            "annotate",
            "vm",
            "counter",
            &format!("{}={bad}", memsnap::RESTORE),
        ]);
        assert!(
            out.contains(memsnap::RESTORE) && !out.contains("annotated"),
            "{out}"
        );
    }

    let snapshot = |name: &str, vm: &str| {
        apply(
            name,
            &format!(
                r#"apiVersion: snapshot.kubevirt.io/v1beta1
kind: VirtualMachineSnapshot
metadata:
  name: {name}
  annotations:
    {}: "true"
spec:
  source:
    apiGroup: kubevirt.io
    kind: VirtualMachine
    name: {vm}
"#,
                memsnap::MEMORY
            ),
        )
    };
    // A stopped VM has no memory to save: the snapshot fails saying so.
    assert!(snapshot("idle-mem", "idle").contains("created"));
    assert!(
        wait_for(Duration::from_secs(30), || s.jsonpath(
            "vmsnapshot",
            "idle-mem",
            "{.status.phase}"
        ) == "Failed"),
        "{}",
        s.kubectl(&["get", "vmsnapshot", "idle-mem", "-o", "yaml"])
    );
    assert!(s
        .jsonpath("vmsnapshot", "idle-mem", "{.status.error.message}")
        .contains("needs a running VM"));

    assert!(snapshot("mem", "counter").contains("created"));
    assert!(
        wait_for(Duration::from_secs(60), || s.jsonpath(
            "vmsnapshot",
            "mem",
            "{.status.phase} {.status.readyToUse}"
        ) == "Succeeded true"),
        "{}\n{}",
        s.kubectl(&["get", "vmsnapshot", "mem", "-o", "yaml"]),
        s.kubectl(&["get", "vmi", "counter", "-o", "yaml"])
    );
    let uid = s.jsonpath("vmsnapshot", "mem", "{.metadata.uid}");
    let reference = s.jsonpath(
        "vmsnapshotcontent",
        &format!("vmsnapshot-content-{uid}"),
        "{.metadata.annotations.snapshot\\.kubevirt-rs\\.io/memory-state}",
    );
    let r = memsnap::MemoryRef::parse(&reference).expect("the content's memory reference");
    assert_eq!((r.node.as_str(), r.key.as_str()), ("node01", uid.as_str()));
    let entry = dir.path().join("data/memory-snapshots/default").join(&uid);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        assert_eq!(mode(&entry), 0o700);
        assert_eq!(mode(&entry.join("memory.bin")), 0o600);
    }
    // A save outside a memory snapshot in progress is refused, whatever its key: a key no
    // snapshot owns, and the finished snapshot's own uid (no user stores guest RAM on a node
    // by calling the subresource directly). Nothing is written to the store.
    let raw_save = |key: &str| {
        let body = dir.path().join("save.json");
        std::fs::write(&body, format!(r#"{{"key":"{key}"}}"#)).expect("write body");
        s.kubectl(&[
            "replace",
            "--raw",
            &format!(
                "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/counter/{}",
                memsnap::SAVE_SUBRESOURCE
            ),
            "-f",
            body.to_str().expect("utf8"),
        ])
    };
    for key in ["0f8fad5b-d9cb-469f-a165-70867728950e", uid.as_str()] {
        let out = raw_save(key);
        assert!(
            out.contains("Conflict")
                && out.contains(&format!(
                    "no memory snapshot of virtualmachine counter with uid {key} is in progress"
                )),
            "{out}"
        );
    }
    assert!(!dir
        .path()
        .join("data/memory-snapshots/default/0f8fad5b-d9cb-469f-a165-70867728950e")
        .exists());
    // The guest runs on after the snapshot.
    running("counter");
    let (after, again) = tick("counter");
    assert!(after > before, "{after} <= {before}");
    assert_eq!(again, boot);

    // Stopped, restored onto itself, started: the counter goes on, the same boot.
    let stop = |vm: &str| {
        s.set_run_strategy(vm, "Halted");
        assert!(
            wait_for(Duration::from_secs(60), || s
                .kubectl(&["get", "vmi", vm, "-o", "name"])
                .contains("NotFound")),
            "{}",
            s.kubectl(&["get", "vmi", vm, "-o", "yaml"])
        );
    };
    let start = |vm: &str| {
        s.set_run_strategy(vm, "Always");
    };
    let restore = |name: &str, target: &str| {
        let out = apply(
            name,
            &format!(
                r#"apiVersion: snapshot.kubevirt.io/v1beta1
kind: VirtualMachineRestore
metadata:
  name: {name}
spec:
  target:
    apiGroup: kubevirt.io
    kind: VirtualMachine
    name: {target}
  virtualMachineSnapshotName: mem
"#
            ),
        );
        assert!(out.contains("created"), "{out}");
        assert!(
            wait_for(Duration::from_secs(60), || s.jsonpath(
                "vmrestore",
                name,
                "{.status.complete}"
            ) == "true"),
            "{}",
            s.kubectl(&["get", "vmrestore", name, "-o", "yaml"])
        );
        assert_eq!(
            s.jsonpath(
                "vm",
                target,
                "{.metadata.annotations.snapshot\\.kubevirt-rs\\.io/restore-memory}"
            ),
            reference
        );
    };
    stop("counter");
    restore("back", "counter");
    start("counter");
    running("counter");
    let (restored, same) = tick("counter");
    assert_eq!(same, boot, "the restored guest booted");
    assert!(
        restored > before,
        "{restored} <= {before}: the counter was reset"
    );
    // Honoured once: the VM no longer carries the reference, its VMI does.
    assert_eq!(
        s.jsonpath(
            "vm",
            "counter",
            "{.metadata.annotations.snapshot\\.kubevirt-rs\\.io/restore-memory}"
        ),
        ""
    );
    assert!(s
        .kubectl(&["get", "events", "-o", "jsonpath={.items[*].reason}"])
        .contains("RestoredFromMemory"));

    // To a new VM: the same guest, under another name.
    restore("to-copy", "copy");
    start("copy");
    running("copy");
    let (copied, same) = tick("copy");
    assert_eq!(same, boot);
    assert!(copied > before, "{copied} <= {before}");
    stop("copy");

    // Deleting the snapshot removes the memory from the node.
    let out = s.kubectl(&["delete", "vmsnapshot", "mem"]);
    assert!(out.contains("deleted"), "{out}");
    // A restart boots (the reference was used up).
    let old_uid = s.jsonpath("vmi", "counter", "{.metadata.uid}");
    let out = s.virtctl(&["restart", "counter"]);
    assert!(!out.contains("rror"), "{out}");
    assert!(wait_for(Duration::from_secs(60), || {
        let u = s.jsonpath("vmi", "counter", "{.metadata.uid}");
        !u.is_empty() && !u.contains("NotFound") && u != old_uid
    }));
    running("counter");
    let (_, rebooted) = tick("counter");
    assert_ne!(rebooted, boot, "a restart must boot, not restore again");
    assert!(
        wait_for(Duration::from_secs(60), || !entry.exists()),
        "the memory of a deleted snapshot stays on the node"
    );
    eprintln!(
        "memory snapshot e2e took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `virtctl memory-dump`, as KubeVirt's: a dump of a stopped VM is refused with KubeVirt's
/// message; `get --create-claim` makes a claim sized as KubeVirt sizes it, the request goes to
/// `Completed` with KubeVirt's file name, and the file in the claim's volume is the guest's
/// ELF core (all of its RAM), downloaded with `--output` through a VirtualMachineExport of the
/// claim (a tar of it, as KubeVirt's); the claim is annotated with it; a second dump replaces the
/// first; a hostile claim name is refused; `remove` clears the request. The guest is started
/// paused (no guest code runs under TCG): a paused VMI runs as far as KubeVirt is concerned.
#[test]
fn virtctl_memory_dump_writes_the_guests_elf_core_into_a_claim_it_creates() {
    use kubevirt_api::memdump;
    if !have_kubectl() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);
    let vm = |name: &str, strategy: &str| {
        format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: {strategy}
  template:
    spec:
      startStrategy: Paused
      domain:
        memory: {{guest: 128Mi}}
        firmware:
          kernelBoot:
            container: {{image: "kubevirt-rs/demo-guest:latest", kernelPath: /boot/vmlinux, initrdPath: /boot/initrd.img}}
        devices:
          autoattachGraphicsDevice: false
          autoattachPodInterface: false
      terminationGracePeriodSeconds: 0
"#
        )
    };
    let file = dir.path().join("vms.yaml");
    std::fs::write(
        &file,
        [vm("dumpee", "Always"), vm("stopped", "Halted")].join("---\n"),
    )
    .expect("write manifest");
    let out = s.kubectl(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(out.contains("dumpee created"), "{out}");
    assert!(
        wait_for(Duration::from_secs(120), || s.jsonpath(
            "vmi",
            "dumpee",
            "{.status.phase}"
        ) == "Running"),
        "{}",
        s.kubectl(&["get", "vm,vmi", "-o", "yaml"])
    );

    // A stopped VM has no memory to dump: KubeVirt's refusal.
    let out = s.virtctl(&["memory-dump", "get", "stopped", "--claim-name=dump"]);
    assert!(
        out.contains(
            r#"error dumping vm memory, virtualmachineinstance.kubevirt.io "stopped" not found"#
        ),
        "{out}"
    );
    // Hostile claim names never reach a request.
    for bad in ["../x", "a/b"] {
        let out = s.virtctl(&[
            "memory-dump",
            "get",
            "dumpee",
            &format!("--claim-name={bad}"),
        ]);
        assert!(
            out.contains("claim name") && !out.contains("Successfully"),
            "{bad}: {out}"
        );
    }
    assert_eq!(
        s.jsonpath("vm", "dumpee", "{.status.memoryDumpRequest}"),
        ""
    );

    let tarball = dir.path().join("dump.tar");
    let output = format!("--output={}", tarball.display());
    let out = s.virtctl(&[
        "memory-dump",
        "get",
        "dumpee",
        "--claim-name=dump",
        "--create-claim",
        &output,
        "--format=raw",
    ]);
    for said in [
        "PVC default/dump created",
        "Successfully submitted memory dump request of VM dumpee",
        "Memory dump completed successfully",
        "Download finished successfully",
    ] {
        assert!(out.contains(said), "{said}: {out}");
    }
    // KubeVirt's size: memory + 100 MiB, plus the filesystem overhead, aligned to 1 MiB.
    let overhead = s.jsonpath("cdiconfig", "config", "{.status.filesystemOverhead.global}");
    let overhead = if overhead.is_empty() {
        memdump::DEFAULT_FS_OVERHEAD.to_string()
    } else {
        overhead
    };
    let want = memdump::size_with_fs_overhead(228 << 20, &overhead).expect("size");
    assert_eq!(
        s.jsonpath("pvc", "dump", "{.spec.resources.requests.storage}"),
        format!("{}Mi", want >> 20)
    );
    let completed = |s: &Server| {
        wait_for(Duration::from_secs(60), || {
            s.jsonpath("vm", "dumpee", "{.status.memoryDumpRequest.phase}") == "Completed"
        })
    };
    assert!(
        completed(&s),
        "{}",
        s.kubectl(&["get", "vm", "dumpee", "-o", "yaml"])
    );
    let first = s.jsonpath("vm", "dumpee", "{.status.memoryDumpRequest.fileName}");
    assert!(
        first.starts_with("dumpee-dump-") && first.ends_with(".memory.dump") && first.len() == 39,
        "{first}"
    );
    for t in ["startTimestamp", "endTimestamp"] {
        assert!(!s
            .jsonpath(
                "vm",
                "dumpee",
                &format!("{{.status.memoryDumpRequest.{t}}}")
            )
            .is_empty());
    }
    assert_eq!(
        s.jsonpath(
            "pvc",
            "dump",
            r"{.metadata.annotations.kubevirt\.io/memory-dump}"
        ),
        first
    );
    let volume = std::path::PathBuf::from(s.jsonpath(
        "pv",
        &s.jsonpath("pvc", "dump", "{.spec.volumeName}"),
        "{.spec.local.path}",
    ));
    let elf = |name: &str| {
        let path = volume.join(name);
        let mut head = [0u8; 5];
        let mut f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        std::io::Read::read_exact(&mut f, &mut head).expect("read the dump");
        assert_eq!(&head, b"\x7fELF\x02", "{name} is no 64-bit ELF core");
        let size = f.metadata().expect("stat").len();
        assert!(
            size >= 128 << 20,
            "{name}: {size} bytes for a 128 MiB guest"
        );
    };
    elf(&first);
    // The download is KubeVirt's: the claim's directory as a tar (gunzipped with
    // `--format=raw`), holding the dump.
    let tar = std::fs::read(&tarball).expect("the download");
    let name_field = &tar[..100];
    let stored = String::from_utf8_lossy(
        &name_field[..name_field.iter().position(|b| *b == 0).unwrap_or(100)],
    )
    .into_owned();
    assert_eq!(stored, first);
    assert_eq!(&tar[512..516], b"\x7fELF");
    assert!(tar.len() >= (128 << 20) + 512, "{} bytes", tar.len());

    // Again, to the associated claim: the new dump replaces the old one.
    std::thread::sleep(Duration::from_millis(1100));
    let out = s.virtctl(&["memory-dump", "get", "dumpee"]);
    assert!(out.contains("Successfully submitted"), "{out}");
    assert!(
        wait_for(Duration::from_secs(60), || {
            let f = s.jsonpath("vm", "dumpee", "{.status.memoryDumpRequest.fileName}");
            !f.is_empty() && f != first && completed(&s)
        }),
        "{}",
        s.kubectl(&["get", "vm", "dumpee", "-o", "yaml"])
    );
    let second = s.jsonpath("vm", "dumpee", "{.status.memoryDumpRequest.fileName}");
    elf(&second);
    let dumps: Vec<String> = std::fs::read_dir(&volume)
        .expect("volume")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("memory.dump"))
        .collect();
    assert_eq!(dumps, std::slice::from_ref(&second));

    let out = s.virtctl(&["memory-dump", "remove", "dumpee"]);
    assert!(
        out.contains("Successfully submitted remove memory dump association of VM dumpee"),
        "{out}"
    );
    assert!(
        wait_for(Duration::from_secs(30), || s
            .jsonpath("vm", "dumpee", "{.status.memoryDumpRequest}")
            .is_empty()),
        "{}",
        s.kubectl(&["get", "vm", "dumpee", "-o", "yaml"])
    );
    // virt-api's `dumpmemory` (the controller's call) writes into no claim without a
    // request in progress for it, and takes no path for a claim.
    let raw = "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/dumpee/dumpmemory";
    for (body, want) in [
        (
            r#"{"claimName":"dump"}"#,
            "no memory dump of virtualmachine dumpee to claim dump is in progress",
        ),
        (r#"{"claimName":"../x"}"#, "claim name"),
        (r#"{"claimName":"dump","path":"/etc"}"#, "unknown field"),
    ] {
        let f = dir.path().join("dumpmemory.json");
        std::fs::write(&f, body).expect("write body");
        let out = s.kubectl(&["replace", "--raw", raw, "-f", f.to_str().expect("utf8")]);
        assert!(out.contains(want), "{body}: {out}");
    }
    let out = s.virtctl(&["memory-dump", "remove", "dumpee"]);
    assert!(
        out.contains("error removing memory dump association, ")
            && out.contains(
                "can't remove memory dump association for vm dumpee, no association found"
            ),
        "{out}"
    );
    eprintln!(
        "memory dump e2e took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A VirtualMachineClone of a stopped VM: the clone's data disk has the source's bytes, its
/// NIC and firmware have no copied identity (a MAC derived from the clone's name is given at
/// start; the firmware UUID from its name), filtered labels are gone, and the temporary
/// snapshot and restore are deleted. The clone then boots and its guest reads the new MAC on
/// its NIC and the new UUID in its SMBIOS table.
#[test]
fn a_clone_of_a_stopped_vm_has_its_disk_and_a_new_identity() {
    if !have_kubectl() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);
    let manifest = r#"apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: origin-data
spec:
  source:
    blank: {}
  storage:
    resources:
      requests:
        storage: 16Mi
---
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: origin
  labels:
    app: web
    team/owner: alice
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        firmware:
          uuid: 5d307ca9-b3ef-428c-8861-06e72d69f223
        devices:
          disks:
          - name: rootdisk
            disk: {bus: virtio}
          - name: data
            disk: {bus: virtio}
          interfaces:
          - name: default
            masquerade: {}
            macAddress: "02:00:00:00:00:0a"
        resources:
          requests:
            memory: 128Mi
      networks:
      - name: default
        pod: {}
      volumes:
      - name: rootdisk
        containerDisk:
          image: kubevirt-rs/demo-guest:latest
      - name: data
        dataVolume:
          name: origin-data
"#;
    let clone = r#"apiVersion: clone.kubevirt.io/v1beta1
kind: VirtualMachineClone
metadata:
  name: copy
spec:
  source:
    apiGroup: kubevirt.io
    kind: VirtualMachine
    name: origin
  target:
    apiGroup: kubevirt.io
    kind: VirtualMachine
    name: copy-vm
  labelFilters: ["*", "!team/*"]
"#;
    let file = dir.path().join("vm.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    let out = s.kubectl(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(
        out.contains("virtualmachine.kubevirt.io/origin created"),
        "{out}"
    );
    assert!(
        wait_for(Duration::from_secs(60), || s.jsonpath(
            "dv",
            "origin-data",
            "{.status.phase}"
        ) == "Succeeded"),
        "{}",
        s.kubectl(&["get", "dv", "origin-data", "-o", "yaml"])
    );
    write_claim_disk_head(&s, "origin-data", b"cloned-bytes");
    let file = dir.path().join("clone.yaml");
    std::fs::write(&file, clone).expect("write clone");
    let out = s.kubectl(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(out.contains("copy created"), "{out}");
    assert!(
        wait_for(Duration::from_secs(60), || s.jsonpath(
            "vmclone",
            "copy",
            "{.status.phase} {.status.targetName} {.status.restoreName}"
        ) == "Succeeded copy-vm "),
        "{}\n{}",
        s.kubectl(&["get", "vmclone", "copy", "-o", "yaml"]),
        s.kubectl(&["get", "vmsnapshot,vmrestore", "-o", "yaml"])
    );
    let claim = s.jsonpath(
        "vm",
        "copy-vm",
        "{.spec.template.spec.volumes[?(@.name=='data')].persistentVolumeClaim.claimName}",
    );
    assert!(claim.starts_with("restore-"), "{claim}");
    assert_eq!(claim_disk_head(&s, &claim, 12), b"cloned-bytes");
    assert_eq!(
        s.jsonpath(
            "vm",
            "copy-vm",
            "{.spec.template.spec.domain.devices.interfaces[0].macAddress}|{.metadata.labels.app}"
        ),
        "|web"
    );
    // The firmware UUID is not the source's (the VM controller derives one from the name).
    assert_ne!(
        s.jsonpath(
            "vm",
            "copy-vm",
            "{.spec.template.spec.domain.firmware.uuid}"
        ),
        "5d307ca9-b3ef-428c-8861-06e72d69f223"
    );
    let labels = s.jsonpath("vm", "copy-vm", "{.metadata.labels}");
    assert!(!labels.contains("team/owner"), "filtered out: {labels}");
    // The source keeps its identity; the temporary snapshot and restore are gone.
    assert_eq!(
        s.jsonpath(
            "vm",
            "origin",
            "{.spec.template.spec.domain.devices.interfaces[0].macAddress}"
        ),
        "02:00:00:00:00:0a"
    );
    assert!(
        wait_for(Duration::from_secs(30), || s
            .kubectl(&["get", "vmsnapshot,vmrestore", "-o", "name"])
            .trim()
            .is_empty()),
        "{}",
        s.kubectl(&["get", "vmsnapshot,vmrestore"])
    );

    // The clone boots, and the guest itself sees the new identity: its NIC's MAC is the one
    // the VMI reports (not the source's), its SMBIOS UUID the clone's firmware UUID.
    s.set_run_strategy("copy-vm", "Always");
    let serial = s.vmi_dir("default", "copy-vm").serial_log();
    assert!(
        wait_for(Duration::from_secs(180), || s.jsonpath(
            "vmi",
            "copy-vm",
            "{.status.phase}"
        ) == "Running"
            && std::fs::read_to_string(&serial)
                .is_ok_and(|l| l.contains("kubevirt-rs demo guest: booted"))),
        "the clone never booted: {}\n{}",
        s.kubectl(&["get", "vm,vmi", "copy-vm", "-o", "yaml"]),
        std::fs::read_to_string(&serial).unwrap_or_default()
    );
    // The launcher gives the NIC a MAC derived from the VMI and reports it in the status.
    let mut mac = String::new();
    wait_for(Duration::from_secs(30), || {
        mac = s.jsonpath("vmi", "copy-vm", "{.status.interfaces[0].mac}");
        !mac.is_empty()
    });
    let uuid = s.jsonpath("vmi", "copy-vm", "{.spec.domain.firmware.uuid}");
    assert!(mac.len() == 17 && mac != "02:00:00:00:00:0a", "{mac}");
    assert!(
        uuid.len() == 36 && uuid != "5d307ca9-b3ef-428c-8861-06e72d69f223",
        "{uuid}"
    );
    let out = s.on_console(
        "copy-vm",
        "cat /sys/class/net/eth0/address /sys/class/dmi/id/product_uuid; echo id-$((40+2))",
        "id-42",
        false,
    );
    assert!(
        out.contains(&mac),
        "the guest's NIC has another MAC than {mac}: {out}"
    );
    assert!(
        !out.contains("02:00:00:00:00:0a"),
        "the source's MAC: {out}"
    );
    assert!(
        out.to_ascii_lowercase()
            .contains(&uuid.to_ascii_lowercase()),
        "the guest's SMBIOS UUID is not {uuid}: {out}"
    );
    let out = s.kubectl(&["delete", "vm", "copy-vm", "--wait=false"]);
    assert!(out.contains("deleted"), "{out}");
}

/// Static provisioning as a cluster administrator writes it: PersistentVolumes made by hand
/// (local volumes pinned to the node) are bound to the claims they fit, as kube's
/// PersistentVolume binder binds them: the smallest that fits, a class-`""` claim waiting until
/// a volume appears, a claim naming a volume that cannot hold it refused, and a volume whose
/// claim is deleted `Released` with its data kept.
#[test]
fn volumes_made_by_hand_are_bound_to_the_claims_they_fit() {
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
    let disks = dir.path().join("disks");
    for d in ["small", "big", "late"] {
        std::fs::create_dir_all(disks.join(d)).expect("mkdir");
    }
    std::fs::write(disks.join("small/disk.img"), b"keep me").expect("data");
    let pv = |name: &str, size: &str, class: &str| {
        format!(
            r#"apiVersion: v1
kind: PersistentVolume
metadata:
  name: {name}
spec:
  capacity: {{storage: {size}}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: "{class}"
  local: {{path: "{}"}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {{key: kubernetes.io/hostname, operator: In, values: [node01]}}
"#,
            disks.join(name).display()
        )
    };
    let claim = |name: &str, size: &str, class: &str, extra: &str| {
        format!(
            r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {name}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: "{class}"
  resources: {{requests: {{storage: {size}}}}}
{extra}"#
        )
    };
    let apply = |file: &str, yaml: String| {
        let path = dir.path().join(file);
        std::fs::write(&path, yaml).expect("manifest");
        let out = s.kubectl(&["apply", "-f", &path.display().to_string()]);
        assert!(out.contains("created"), "{out}");
    };
    apply(
        "pvs.yaml",
        format!(
            "{}---\n{}",
            pv("big", "5Gi", "local-storage"),
            pv("small", "1Gi", "local-storage")
        ),
    );
    let phase = |kind: &str, name: &str| s.jsonpath(kind, name, "{.status.phase}");
    assert!(
        wait_for(Duration::from_secs(20), || phase("pv", "small")
            == "Available"
            && phase("pv", "big") == "Available"),
        "{}",
        s.kubectl(&["get", "pv"])
    );

    // The smallest volume of the class that fits.
    apply("data.yaml", claim("data", "512Mi", "local-storage", ""));
    let binding = |c: &str| s.jsonpath("pvc", c, "{.status.phase} {.spec.volumeName}");
    assert!(
        wait_for(Duration::from_secs(20), || binding("data") == "Bound small"),
        "{}",
        s.kubectl(&["get", "pvc,pv"])
    );
    let uid = s.jsonpath("pvc", "data", "{.metadata.uid}");
    assert_eq!(
        s.jsonpath(
            "pv",
            "small",
            "{.status.phase} {.spec.claimRef.name} {.spec.claimRef.uid}"
        ),
        format!("Bound data {uid}")
    );
    assert_eq!(
        s.jsonpath("pvc", "data", "{.status.capacity.storage}"),
        "1Gi"
    );
    assert_eq!(phase("pv", "big"), "Available");

    // A claim naming a volume too small for it is not bound, and says why.
    apply(
        "greedy.yaml",
        claim("greedy", "50Gi", "local-storage", "  volumeName: big\n"),
    );
    let events = |c: &str| {
        s.kubectl(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={c}"),
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
        ])
    };
    assert!(
        wait_for(Duration::from_secs(20), || events("greedy")
            .contains("FailedBinding: requested PV \"big\" is too small")),
        "{}",
        events("greedy")
    );
    assert_eq!(binding("greedy"), "Pending big");
    assert_eq!(phase("pv", "big"), "Available");

    // Class "": never provisioned; waits until a volume of class "" appears.
    apply("waiting.yaml", claim("waiting", "1Gi", "", ""));
    assert!(
        wait_for(Duration::from_secs(20), || {
            events("waiting").contains(
            "FailedBinding: no persistent volumes available for this claim and no storage class is set"
        )
        }),
        "{}",
        events("waiting")
    );
    assert_eq!(binding("waiting"), "Pending ");
    apply("late.yaml", pv("late", "2Gi", ""));
    assert!(
        wait_for(Duration::from_secs(20), || binding("waiting")
            == "Bound late"),
        "{}",
        s.kubectl(&["get", "pvc,pv"])
    );

    // The claim goes: its volume is Released, and its data stays (Retain).
    let out = s.kubectl(&["delete", "pvc", "data", "--wait=true"]);
    assert!(out.contains("deleted"), "{out}");
    assert!(
        wait_for(Duration::from_secs(20), || phase("pv", "small")
            == "Released"),
        "{}",
        s.kubectl(&["get", "pv"])
    );
    assert_eq!(
        std::fs::read(disks.join("small/disk.img")).expect("data kept"),
        b"keep me"
    );
}

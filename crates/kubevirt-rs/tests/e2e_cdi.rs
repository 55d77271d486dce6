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

//! End-to-end: real QEMU (always TCG here), the demo guest from `guest/build.sh`.
//!
//! The guest is built once per target dir into `$CARGO_TARGET_TMPDIR/guest` (or
//! `$KUBEVIRT_RS_GUEST_DIR`), under a file lock so parallel tests build it once. Without QEMU
//! or the guest, every test here says so on stderr and passes without running.

use kubevirt_launcher::api::{call_blocking, Request, VmiDir};
use kubevirt_launcher::launcher::{LaunchError, Options, Phase, Vm};
use kubevirt_launcher::machine::parse_vmi;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

fn guest() -> Option<&'static Path> {
    static GUEST: OnceLock<Option<PathBuf>> = OnceLock::new();
    GUEST
        .get_or_init(|| kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")))
        .as_deref()
}

/// The guest's recommended kernel command line, without its fixed TSC hints (the launcher adds
/// the host's own for microvm).
fn cmdline(guest: &Path, profile: &str) -> String {
    let text = std::fs::read_to_string(guest.join("cmdline")).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{profile}=")))
        .unwrap();
    line.split_whitespace()
        .filter(|w| !w.starts_with("tsc_early_khz=") && !w.starts_with("lpj="))
        .collect::<Vec<_>>()
        .join(" ")
}

fn kernel_boot_vmi(name: &str, machine: &str, args: &str, user_data: &str) -> String {
    let ud: String = user_data
        .lines()
        .map(|l| format!("        {l}\n"))
        .collect();
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: {name}, namespace: e2e}}
spec:
  terminationGracePeriodSeconds: 30
  domain:
    machine: {{type: {machine}}}
    memory: {{guest: 256Mi}}
    firmware:
      kernelBoot:
        kernelArgs: {args}
        container: {{image: registry.local/demo-guest:latest, kernelPath: /boot/vmlinuz, initrdPath: /boot/initrd.img}}
    devices:
      autoattachGraphicsDevice: false
      disks:
      - name: cloudinit
        disk: {{bus: virtio}}
      interfaces:
      - {{name: default, masquerade: {{}}}}
  networks:
  - {{name: default, pod: {{}}}}
  volumes:
  - name: cloudinit
    cloudInitNoCloud:
      userData: |
{ud}"#
    )
}

/// A temporary directory QEMU's unprivileged user (107) can search: tempfile makes them 0700,
/// and the launcher refuses a VMI directory QEMU could not reach.
fn tmpdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    t
}

fn opts(dir: &Path, guest: &Path) -> Options {
    let mut o = Options::new(dir);
    o.image_store = Some(guest.join("oci"));
    o
}

async fn start(yaml: &str, o: &Options) -> Arc<Vm> {
    let vmi = parse_vmi(yaml).unwrap();
    let (tx, _) = tokio::sync::broadcast::channel(64);
    Vm::start(&vmi, o, tx)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"))
}

/// Wait until serial.log contains `needle`; panics with the log on timeout.
async fn wait_serial(dir: &Path, needle: &str, within: Duration) -> Duration {
    let dir = VmiDir::from_path(dir).expect("a VMI directory");
    let t = Instant::now();
    loop {
        let log = std::fs::read_to_string(dir.serial_log()).unwrap_or_default();
        if log.contains(needle) {
            return t.elapsed();
        }
        if t.elapsed() > within {
            let qemu = std::fs::read_to_string(dir.qemu_log()).unwrap_or_default();
            panic!("{needle:?} not on the serial console after {within:?}\n--- serial.log\n{log}\n--- qemu.log\n{qemu}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn read_state(dir: &Path) -> serde_json::Value {
    VmiDir::from_path(dir)
        .ok()
        .and_then(|d| d.read_state().ok())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The CLI path: `launcher run --detach` with kernelBoot (q35) and cloud-init NoCloud; the
/// user-data output reaches serial.log and `launcher console`; the `shutdown` RPC presses the
/// ACPI power button, the guest powers itself off, and the launcher reports GuestShutdown.
#[test]
fn kernel_boot_with_cloud_init_runs_user_data_and_acpi_shutdown_ends_in_succeeded() {
    let Some(guest) = guest() else { return };
    let tmp = tmpdir();
    let dir = tmp.path().join("vmi");
    let vmi = tmp.path().join("vmi.yaml");
    std::fs::write(
        &vmi,
        kernel_boot_vmi(
            "kernelboot",
            "q35",
            &cmdline(guest, "q35"),
            "#!/bin/sh\necho \"user-data: hello from $(hostname)\"",
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_kubevirt-launcher");
    let out = Command::new(bin)
        .args(["run", "--detach", "-f"])
        .arg(&vmi)
        .arg("--dir")
        .arg(&dir)
        .arg("--image-store")
        .arg(guest.join("oci"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("state: Running (Started"), "{stdout}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(wait_serial(
        &dir,
        "user-data: hello from kernelboot",
        BOOT_TIMEOUT,
    ));

    // The RPC state: accelerator, pids, console socket; the guest's address as user
    // networking hands it out (no pod network for a launcher run by hand), which the guest
    // then holds.
    rt.block_on(wait_serial(&dir, "eth0: 10.0.2.2/24", BOOT_TIMEOUT));
    let vmi_dir = VmiDir::from_path(&dir).unwrap();
    let st = call_blocking(&vmi_dir, Request::State)
        .unwrap()
        .into_state();
    let st = serde_json::to_value(st.unwrap()).unwrap();
    assert_eq!(st["phase"], "Running");
    assert_eq!(st["accelerator"], "tcg");
    assert_eq!(st["interfaces"][0]["ipAddresses"][0], "10.0.2.2", "{st}");
    assert!(st["qemuPid"].as_u64().unwrap() > 0);

    // `launcher console` with a pipe: what we type runs in the guest shell.
    let mut console = Command::new(bin)
        .args(["console", "--timeout", "5", "--dir"])
        .arg(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = console.stdin.take().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stdin.write_all(b"\necho console-$((6*7))\n").unwrap();
    }
    let out = console.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("console-42"));

    let r = call_blocking(
        &vmi_dir,
        Request::Shutdown {
            grace_period_seconds: Some(60),
        },
    );
    assert!(r.is_ok(), "{r:?}");
    let t = Instant::now();
    loop {
        let s = read_state(&dir);
        if s["phase"] == "Succeeded" || s["phase"] == "Failed" {
            assert_eq!(s["phase"], "Succeeded", "{s}");
            assert_eq!(s["reason"], "GuestShutdown", "{s}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no final state: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(vmi_dir.serial_log()).unwrap();
    assert!(log.contains("power button, powering off"), "{log}");
}

/// A containerDisk from the OCI layout on virtio boots through SeaBIOS and syslinux; the base
/// image stays read-only and untouched under a qcow2 overlay.
#[tokio::test]
async fn container_disk_on_virtio_boots_with_bios() {
    let Some(guest) = guest() else { return };
    let tmp = tmpdir();
    let yaml = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: containerdisk, namespace: e2e}
spec:
  domain:
    memory: {guest: 256Mi}
    devices:
      disks:
      - {name: root, bootOrder: 1, disk: {bus: virtio}}
      interfaces: [{name: default, masquerade: {}}]
  networks: [{name: default, pod: {}}]
  volumes:
  - {name: root, containerDisk: {image: registry.local/demo-guest:latest}}
"#;
    let vm = start(yaml, &opts(tmp.path(), guest)).await;
    wait_serial(tmp.path(), "kubevirt-rs demo guest: booted", BOOT_TIMEOUT).await;
    let base = tmp.path().join("container-disks/root/disk.qcow2");
    assert!(std::fs::metadata(&base).unwrap().permissions().readonly());
    // virt-api's DIR/vnc.sock reaches QEMU's VNC server (a hard link into sockets/).
    let vnc_socket = VmiDir::from_path(tmp.path()).unwrap().vnc_socket();
    let mut vnc = std::os::unix::net::UnixStream::connect(vnc_socket).unwrap();
    let mut banner = [0u8; 4];
    std::io::Read::read_exact(&mut vnc, &mut banner).unwrap();
    assert_eq!(&banner, b"RFB ");
    let stats = vm.stats().await.unwrap();
    assert!(
        stats["vcpus"][0]["userSeconds"].as_f64().unwrap() > 0.0,
        "{stats}"
    );
    assert!(
        stats["block"].as_array().is_some_and(|b| !b.is_empty()),
        "{stats}"
    );
    vm.stop().await.unwrap();
    let s = vm.wait().await;
    assert_eq!((s.phase, s.reason.as_str()), (Phase::Succeeded, "Stopped"));
    assert!(
        !tmp.path().join("disks/root.qcow2").exists(),
        "the overlay lives as long as the VMI"
    );
}

/// A persistentVolumeClaim (a qcow2 file) on the default sata bus boots.
#[tokio::test]
async fn sata_disk_boots() {
    let Some(guest) = guest() else { return };
    let tmp = tmpdir();
    let pvc = tmp.path().join("pvc.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(guest.join("disk.qcow2"))
        .arg(&pvc)
        .status()
        .unwrap();
    assert!(st.success());
    let yaml = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: sata, namespace: e2e}
spec:
  domain:
    memory: {guest: 256Mi}
    devices:
      autoattachPodInterface: false
      disks: [{name: root, bootOrder: 1}]
  volumes:
  - {name: root, persistentVolumeClaim: {claimName: root}}
"#;
    let mut o = opts(tmp.path(), guest);
    o.pvc_paths.insert("root".into(), pvc);
    let vm = start(yaml, &o).await;
    assert!(std::fs::read_to_string(tmp.path().join("qemu.cmdline"))
        .unwrap()
        .contains("ide-hd"));
    wait_serial(tmp.path(), "kubevirt-rs demo guest: booted", BOOT_TIMEOUT).await;
    vm.stop().await.unwrap();
    vm.wait().await;
}

/// microvm boots the kernelBoot image to the banner; pausing stops the guest clock (no ticks
/// while paused, and the guest's uptime advances less than the wall clock).
#[tokio::test]
async fn microvm_boots_and_pause_stops_the_guest_clock() {
    let Some(guest) = guest() else { return };
    let tmp = tmpdir();
    let yaml = kernel_boot_vmi(
        "micro",
        "microvm",
        &cmdline(guest, "microvm"),
        "#!/bin/sh\nwhile true; do echo \"tick $(cut -d' ' -f1 /proc/uptime)\"; sleep 1; done &",
    );
    let vm = start(&yaml, &opts(tmp.path(), guest)).await;
    assert_eq!(vm.state().phase, Phase::Running);
    let banner = wait_serial(tmp.path(), "kubevirt-rs demo guest: booted", BOOT_TIMEOUT).await;
    eprintln!("microvm: banner after {banner:?}");
    wait_serial(tmp.path(), "tick ", BOOT_TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    vm.pause().await.unwrap();
    assert_eq!(vm.state().phase, Phase::Paused);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ticks(tmp.path());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = ticks(tmp.path());
    assert_eq!(before.len(), during.len(), "ticks while paused: {during:?}");
    vm.unpause().await.unwrap();
    assert_eq!(vm.state().phase, Phase::Running);
    let t = Instant::now();
    while ticks(tmp.path()).len() < during.len() + 2 && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = ticks(tmp.path());
    let last_before = *during.last().unwrap();
    let first_after = after[during.len()];
    // 3.3 s of wall clock passed paused; the guest saw about one tick interval.
    assert!(
        first_after - last_before < 2.5,
        "guest uptime jumped {} s across a 3.3 s pause: {after:?}",
        first_after - last_before
    );
    vm.stop().await.unwrap();
    vm.wait().await;
}

/// QEMU killed with SIGKILL (no SHUTDOWN event) is a crash: phase Failed, reason Crashed,
/// and the message names the signal.
#[tokio::test]
async fn sigkill_of_qemu_is_reported_as_a_crash() {
    let Some(guest) = guest() else { return };
    let tmp = tmpdir();
    let yaml = kernel_boot_vmi(
        "crash",
        "microvm",
        &cmdline(guest, "microvm"),
        "#!/bin/sh\ntrue",
    );
    let vm = start(&yaml, &opts(tmp.path(), guest)).await;
    let mut events = vm.subscribe();
    wait_serial(tmp.path(), "kubevirt-rs demo guest: booted", BOOT_TIMEOUT).await;
    unsafe { libc::kill(vm.qemu_pid as i32, libc::SIGKILL) };
    let s = tokio::time::timeout(Duration::from_secs(10), vm.wait())
        .await
        .unwrap();
    assert_eq!(s.phase, Phase::Failed);
    assert_eq!(s.reason, "Crashed");
    assert!(s.message.contains("SIGKILL"), "{}", s.message);
    let ev = events.recv().await.unwrap();
    assert_eq!((ev.phase, ev.reason.as_str()), (Phase::Failed, "Crashed"));
    assert_eq!(read_state(tmp.path())["phase"], "Failed");
}

/// Security issue 10: QEMU runs as KubeVirt's qemu user (107:107) with no capabilities,
/// under its seccomp sandbox, and the guest still boots (sockets, ISO, kernel reachable).
#[tokio::test]
async fn qemu_runs_unprivileged_and_sandboxed() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIP: qemu_runs_unprivileged_and_sandboxed needs root (it switches QEMU's user)"
        );
        return;
    }
    let Some(guest) = guest() else {
        eprintln!("SKIP: qemu_runs_unprivileged_and_sandboxed needs QEMU and the demo guest");
        return;
    };
    let tmp = tmpdir();
    let yaml = kernel_boot_vmi(
        "confined",
        "microvm",
        &cmdline(guest, "microvm"),
        "#!/bin/sh\ntrue",
    );
    let vm = start(&yaml, &opts(tmp.path(), guest)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", vm.qemu_pid)).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(field("Uid"), "107 107 107 107", "{status}");
    assert_eq!(field("Gid"), "107 107 107 107", "{status}");
    assert_eq!(field("CapEff"), "0000000000000000", "{status}");
    assert_eq!(field("CapPrm"), "0000000000000000", "{status}");
    assert_eq!(field("Seccomp"), "2", "{status}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", vm.qemu_pid)).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    assert!(
        args.contains(&&b"-sandbox"[..]),
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
    // QEMU could open what it needs: the guest boots and the console works.
    wait_serial(tmp.path(), "kubevirt-rs demo guest: booted", BOOT_TIMEOUT).await;
    use std::os::unix::fs::MetadataExt;
    let sockets = std::fs::metadata(tmp.path().join("sockets")).unwrap();
    assert_eq!((sockets.uid(), sockets.mode() & 0o777), (107, 0o700));
    let vmi_dir = std::fs::metadata(tmp.path()).unwrap();
    assert_eq!(vmi_dir.uid(), 0, "the VMI directory stays root's");
    vm.stop().await.unwrap();
    let s = vm.wait().await;
    assert_eq!((s.phase, s.reason.as_str()), (Phase::Succeeded, "Stopped"));
}

/// Guest RAM on 2 MiB hugepages with QEMU unprivileged: the launcher gives QEMU's user its own
/// directory in the hugetlbfs mount, QEMU takes its pages from there, and both the pages and
/// the directory are back when the VMI ends. The test reserves pages and mounts a hugetlbfs of
/// its own (root only), and restores both.
#[tokio::test]
async fn hugepages_back_guest_ram_for_an_unprivileged_qemu() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: hugepages test needs root (it reserves hugepages and mounts hugetlbfs)");
        return;
    }
    let Some(guest) = guest() else {
        eprintln!("SKIP: hugepages test needs QEMU and the demo guest");
        return;
    };
    const NR: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
    const PAGES: u64 = 64; // 128Mi of guest RAM
    let free = || -> u64 {
        std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    struct Restore {
        nr: Option<String>,
        mount: Option<PathBuf>,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(m) = &self.mount {
                let _ = Command::new("umount").arg(m).status();
            }
            if let Some(nr) = &self.nr {
                let _ = std::fs::write(NR, nr);
            }
        }
    }
    let Ok(old) = std::fs::read_to_string(NR) else {
        eprintln!("SKIP: hugepages test: no 2 MiB hugepages on this kernel ({NR})");
        return;
    };
    let old_n: u64 = old.trim().parse().unwrap_or(0);
    // Declared before `restore`, so dropped after it: unmounted before it is removed.
    let mount_dir = tmpdir();
    let mut restore = Restore {
        nr: None,
        mount: None,
    };
    if std::fs::write(NR, (old_n + PAGES + 8).to_string()).is_ok() {
        restore.nr = Some(old.trim().to_string());
    }
    if free() < PAGES {
        eprintln!(
            "SKIP: hugepages test: the kernel gave only {} free 2 MiB pages",
            free()
        );
        return;
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let hugetlbfs = kubevirt_launcher::machine::hugetlbfs_mounts(&mounts);
    let mount = match hugetlbfs.get(&(2 << 20)) {
        Some(m) => m.clone(),
        None => {
            let ok = Command::new("mount")
                .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "none"])
                .arg(mount_dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("SKIP: hugepages test: cannot mount hugetlbfs here");
                return;
            }
            restore.mount = Some(mount_dir.path().to_path_buf());
            mount_dir.path().to_path_buf()
        }
    };
    let tmp = tmpdir();
    let yaml = kernel_boot_vmi(
        "huge",
        "microvm",
        &cmdline(guest, "microvm"),
        "#!/bin/sh\ntrue",
    )
    .replace(
        "memory: {guest: 256Mi}",
        "memory: {guest: 128Mi, hugepages: {pageSize: 2Mi}}",
    );
    let before = free();
    let vm = start(&yaml, &opts(tmp.path(), guest)).await;
    let dir = mount.join("kubevirt-rs/e2e/huge");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (107, 0o700),
        "{}",
        dir.display()
    );
    assert_eq!(
        vm.spec.memory.hugepages.as_ref().map(|h| h.dir.clone()),
        Some(dir.clone())
    );
    // prealloc=on: every page of guest RAM is taken at start.
    assert!(
        before - free() >= PAGES,
        "free 2 MiB pages went from {before} to {} only",
        free()
    );
    wait_serial(tmp.path(), "kubevirt-rs demo guest: booted", BOOT_TIMEOUT).await;
    vm.stop().await.unwrap();
    let s = vm.wait().await;
    assert_eq!((s.phase, s.reason.as_str()), (Phase::Succeeded, "Stopped"));
    let t = Instant::now();
    while free() < before && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(free(), before, "the guest's hugepages are given back");
    assert!(!dir.exists(), "{} is removed", dir.display());
    drop(restore);
}

/// microvm + e1000 is refused before anything starts, naming the field.
#[tokio::test]
async fn a_spec_the_backend_cannot_honour_fails_before_qemu_starts() {
    let tmp = tmpdir();
    let yaml = kernel_boot_vmi("bad", "microvm", "console=ttyS0", "#!/bin/sh\ntrue")
        .replace("masquerade: {}}", "masquerade: {}, model: e1000}");
    let vmi = parse_vmi(&yaml).unwrap();
    let (tx, _) = tokio::sync::broadcast::channel(4);
    let err = match Vm::start(&vmi, &Options::new(tmp.path()), tx).await {
        Err(e) => e,
        Ok(_) => panic!("started"),
    };
    assert!(matches!(err, LaunchError::Spec(_)), "{err}");
    assert!(
        err.to_string()
            .contains("spec.domain.devices.interfaces[0].model: microvm supports only virtio"),
        "{err}"
    );
    assert!(
        !tmp.path().join("qemu.log").exists(),
        "QEMU must not have been started"
    );
}

/// A missing disk file: QEMU refuses it, and the error carries QEMU's own stderr. A missing
/// QEMU binary says which binary.
#[tokio::test]
async fn missing_image_and_missing_qemu_carry_the_reason() {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: qemu-system-x86_64 is not installed");
        return;
    }
    let tmp = tmpdir();
    let yaml = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: missing, namespace: e2e}
spec:
  domain:
    memory: {guest: 64Mi}
    devices:
      disks: [{name: root, disk: {bus: virtio}}]
  volumes:
  - {name: root, hostDisk: {path: /nonexistent/disk.img, type: Disk}}
"#;
    let vmi = parse_vmi(yaml).unwrap();
    let (tx, _) = tokio::sync::broadcast::channel(4);
    let err = match Vm::start(&vmi, &Options::new(tmp.path()), tx.clone()).await {
        Err(e) => e,
        Ok(_) => panic!("started"),
    };
    let text = err.to_string();
    assert!(matches!(err, LaunchError::QemuExited { .. }), "{text}");
    assert!(text.contains("/nonexistent/disk.img"), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");

    let mut o = Options::new(tmp.path());
    o.qemu_binary = "/nonexistent/qemu-system-x86_64".into();
    // An existing image (a character device such as /dev/null is never given to QEMU's user).
    let img = tmp.path().join("disk.img");
    std::fs::write(&img, [0u8; 512]).unwrap();
    let vmi = parse_vmi(&yaml.replace("/nonexistent/disk.img", img.to_str().unwrap())).unwrap();
    let err = match Vm::start(&vmi, &o, tx).await {
        Err(e) => e,
        Ok(_) => panic!("started"),
    };
    assert!(
        err.to_string()
            .contains("cannot run /nonexistent/qemu-system-x86_64"),
        "{err}"
    );
}

/// The guest's uptimes printed as `tick <seconds>` on a VMI directory's serial console.
fn ticks(dir: &Path) -> Vec<f64> {
    VmiDir::from_path(dir)
        .ok()
        .and_then(|d| std::fs::read_to_string(d.serial_log()).ok())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("tick ")
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// A launcher served on its own `launcher.sock` in `dir`, as virt-handler runs it, and a
/// client to it.
async fn launcher(
    dir: &Path,
    guest: &Path,
    target: bool,
) -> (
    Arc<kubevirt_launcher::rpc::Launcher>,
    kubevirt_launcher::api::LauncherClient,
) {
    let mut o = opts(dir, guest);
    o.migration_target = target;
    let l = kubevirt_launcher::rpc::Launcher::new(o);
    l.listen().unwrap();
    let c = kubevirt_launcher::api::LauncherClient::connect(&VmiDir::from_path(dir).unwrap())
        .await
        .unwrap();
    (l, c)
}

async fn call(
    c: &mut kubevirt_launcher::api::LauncherClient,
    r: Request,
) -> kubevirt_launcher::api::Response {
    let what = format!("{:?}", r.method());
    c.call(r).await.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn migration(r: kubevirt_launcher::api::Response) -> kubevirt_launcher::api::MigrationStatus {
    match r {
        kubevirt_launcher::api::Response::Migration(m) => *m,
        r => panic!("not a migration status: {r:?}"),
    }
}

/// Wait until `f` holds for the launcher's state, or panic with the state and its logs.
async fn wait_state(
    c: &mut kubevirt_launcher::api::LauncherClient,
    dir: &Path,
    within: Duration,
    what: &str,
    f: impl Fn(&kubevirt_launcher::api::State) -> bool,
) -> kubevirt_launcher::api::State {
    let t = Instant::now();
    loop {
        let s = call(c, Request::State).await.into_state().unwrap();
        if f(&s) {
            return s;
        }
        if t.elapsed() > within {
            let d = VmiDir::from_path(dir).unwrap();
            let qemu = std::fs::read_to_string(d.qemu_log()).unwrap_or_default();
            panic!("{what}: not within {within:?}: {s:?}\n--- qemu.log\n{qemu}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Run `command` on the guest's serial console (`console.sock` of `dir`) and wait until its
/// output contains `needle`; returns the output.
async fn console(dir: &Path, command: &str, needle: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = VmiDir::from_path(dir).unwrap().console_socket();
    let mut sock = tokio::net::UnixStream::connect(path).await.unwrap();
    sock.write_all(format!("\n{command}\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let t = Instant::now();
    while !String::from_utf8_lossy(&out).contains(needle) {
        assert!(
            t.elapsed() < BOOT_TIMEOUT,
            "{needle:?} not on the console after {command:?}: {}",
            String::from_utf8_lossy(&out)
        );
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), sock.read(&mut buf)).await
        {
            out.extend_from_slice(&buf[..n]);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The guest's device of the disk with serial `scratch` (busybox has no by-id links).
const SCRATCH_DEV: &str = r#"d=$(for b in /sys/block/vd*; do [ "$(cat $b/serial)" = scratch ] && echo /dev/${b##*/}; done)"#;

/// Issue 14: live migration between two launchers on one host, driven over their
/// `launcher.sock` as the node agent drives it. A's guest boots, writes a marker to its
/// emptyDisk (a local disk: block migration) and prints its uptime every second; a migration
/// without the block target is refused; a migration to target B1 is cancelled (A keeps
/// running, B1's QEMU gives up); the guest writes a second marker; a migration to target B2
/// completes: A's QEMU ends (Succeeded, Migrated), B2 runs the same guest (its uptime goes on
/// from where it was, its console answers) and reads both markers back from B2's copy of the
/// disk, past its page cache.
#[tokio::test]
async fn live_migration_moves_the_running_guest_and_a_cancelled_one_leaves_it_at_the_source() {
    use kubevirt_launcher::api::migration::{reason, MigrationOptions};
    use kubevirt_launcher::api::{ErrorCode, MigrationRole};
    let Some(guest) = guest() else {
        eprintln!("SKIP: live migration test needs QEMU and the demo guest");
        return;
    };
    const MIGRATION_TIMEOUT: Duration = Duration::from_secs(240);
    let tmp = tmpdir();
    let (a_dir, b1_dir, b2_dir) = (
        tmp.path().join("a"),
        tmp.path().join("b1"),
        tmp.path().join("b2"),
    );
    let yaml = kernel_boot_vmi(
        "migrating",
        "q35",
        &cmdline(guest, "q35"),
        &format!(
            "#!/bin/sh\n{SCRATCH_DEV}\nprintf first-marker | dd of=$d bs=512 count=1 conv=sync,fsync 2>/dev/null && sync && echo \"marker written to $d\"\nwhile true; do echo \"tick $(cut -d' ' -f1 /proc/uptime)\"; sleep 1; done &"
        ),
    )
    .replace(
        "      - name: cloudinit\n        disk: {bus: virtio}\n",
        "      - name: cloudinit\n        disk: {bus: virtio}\n      - name: scratch\n        disk: {bus: virtio}\n        serial: scratch\n",
    )
    .replace(
        "  volumes:\n",
        "  volumes:\n  - name: scratch\n    emptyDisk: {capacity: 64Mi}\n",
    );
    let vmi = Box::new(parse_vmi(&yaml).unwrap());
    let (_a, mut ca) = launcher(&a_dir, guest, false).await;
    let s = call(&mut ca, Request::Sync { vmi: vmi.clone() })
        .await
        .into_state()
        .unwrap();
    assert_eq!(s.phase, Phase::Running, "{s:?}");
    let a_qemu = s.qemu_pid.unwrap();
    wait_serial(&a_dir, "marker written to /dev/vd", BOOT_TIMEOUT).await;
    wait_serial(&a_dir, "tick ", BOOT_TIMEOUT).await;

    // Nothing to cancel yet: a clear error, not a QMP one.
    let e = ca.call(Request::CancelMigration).await.unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::NoMigration), "{e}");

    // --- A → B1, cancelled.
    let (_b1, mut cb1) = launcher(&b1_dir, guest, true).await;
    let s = call(&mut cb1, Request::Sync { vmi: vmi.clone() })
        .await
        .into_state()
        .unwrap();
    assert_eq!(
        (s.phase, s.reason.as_str()),
        (Phase::WaitingForMigration, reason::WAITING_FOR_MIGRATION)
    );
    // A target's guest is not there yet: operations on it are refused.
    let e = cb1.call(Request::Pause).await.unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::WrongPhase), "{e}");
    let b1 = migration(
        call(
            &mut cb1,
            Request::PrepareMigrationTarget {
                listen: "127.0.0.1:0".parse().unwrap(),
                options: MigrationOptions::default(),
            },
        )
        .await,
    );
    assert_eq!(b1.role, MigrationRole::Target);
    let b1_addr = b1.address.expect("the target's listening address");
    assert_ne!(b1_addr.port(), 0, "the real port is reported");
    // The emptyDisk is local: B1 serves it over NBD, on a port of its own.
    let b1_block = b1.block_address.expect("the target's NBD address");
    assert_eq!(b1_block.ip(), b1_addr.ip());
    assert_ne!(b1_block.port(), 0);
    assert_eq!(b1.block_exports, ["scratch"]);
    // A VMI with a local disk cannot migrate without its copy.
    let e = ca
        .call(Request::Migrate {
            target: b1_addr,
            block_target: None,
            options: MigrationOptions::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::BadRequest), "{e}");
    assert!(
        e.to_string().contains("params.blockTarget") && e.to_string().contains("scratch"),
        "{e}"
    );
    // A block target nobody serves: the copy cannot start, the guest stays here, and nothing
    // is left behind that would stop the next attempt.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = ca
        .call(Request::Migrate {
            target: b1_addr,
            block_target: Some(closed),
            options: MigrationOptions::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::Failed), "{e}");
    assert!(e.to_string().contains("disk scratch"), "{e}");
    let m = migration(call(&mut ca, Request::MigrationStatus).await);
    assert!(m.failed && !m.completed, "{m:?}");
    // Slow (1 MiB/s) so that it is still running when cancelled.
    let slow = MigrationOptions {
        bandwidth_per_migration: Some(1 << 20),
        ..Default::default()
    };
    let m = migration(
        call(
            &mut ca,
            Request::Migrate {
                target: b1_addr,
                block_target: Some(b1_block),
                options: slow.clone(),
            },
        )
        .await,
    );
    assert_eq!((m.role, m.address), (MigrationRole::Source, Some(b1_addr)));
    assert_eq!(m.block_address, Some(b1_block));
    // A second migration while one runs is refused.
    let e = ca
        .call(Request::Migrate {
            target: b1_addr,
            block_target: Some(b1_block),
            options: slow,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::WrongPhase), "{e}");
    let t = Instant::now();
    loop {
        let m = migration(call(&mut ca, Request::MigrationStatus).await);
        if m.transferred_bytes > 0 {
            assert!(m.in_progress(), "{m:?}");
            // Guest memory goes only once the disk is in step.
            assert!(m.block_ready && m.block_total_bytes > 0, "{m:?}");
            break;
        }
        assert!(t.elapsed() < MIGRATION_TIMEOUT, "no data sent: {m:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ticks_before_cancel = ticks(&a_dir).len();
    call(&mut ca, Request::CancelMigration).await;
    let t = Instant::now();
    let cancelled = loop {
        let m = migration(call(&mut ca, Request::MigrationStatus).await);
        if !m.in_progress() {
            break m;
        }
        assert!(t.elapsed() < MIGRATION_TIMEOUT, "not cancelled: {m:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(cancelled.failed && !cancelled.completed, "{cancelled:?}");
    assert_eq!(cancelled.failure_reason, "Live migration has been aborted");
    assert_eq!(
        cancelled.abort_status,
        Some(kubevirt_launcher::api::migration::AbortStatus::Succeeded)
    );
    let s = call(&mut ca, Request::State).await.into_state().unwrap();
    assert_eq!(s.phase, Phase::Running, "{s:?}");
    assert!(alive(a_qemu), "A's QEMU must keep running after a cancel");
    // The guest keeps running at the source.
    let t = Instant::now();
    while ticks(&a_dir).len() < ticks_before_cancel + 2 {
        assert!(t.elapsed() < BOOT_TIMEOUT, "no tick at A after the cancel");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // B1's incoming migration failed: its QEMU ended.
    let s = wait_state(&mut cb1, &b1_dir, MIGRATION_TIMEOUT, "B1 fails", |s| {
        s.phase.is_final()
    })
    .await;
    assert_eq!(
        (s.phase, s.reason.as_str()),
        (Phase::Failed, reason::MIGRATION_FAILED),
        "{s:?}"
    );

    // What the guest writes after a cancelled copy reaches the next target too.
    console(
        &a_dir,
        &format!("{SCRATCH_DEV}; printf second-marker | dd of=$d bs=512 seek=8 count=1 conv=sync,fsync 2>/dev/null && sync && echo second-$((6*7))"),
        "second-42",
    )
    .await;

    // --- A → B2, completed.
    let (_b2, mut cb2) = launcher(&b2_dir, guest, true).await;
    call(&mut cb2, Request::Sync { vmi: vmi.clone() }).await;
    let b2 = migration(
        call(
            &mut cb2,
            Request::PrepareMigrationTarget {
                listen: "127.0.0.1:0".parse().unwrap(),
                options: MigrationOptions::default(),
            },
        )
        .await,
    );
    let b2_addr = b2.address.unwrap();
    let b2_block = b2.block_address.unwrap();
    // Listening once is enough.
    let e = cb2
        .call(Request::PrepareMigrationTarget {
            listen: "127.0.0.1:0".parse().unwrap(),
            options: MigrationOptions::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::WrongPhase), "{e}");
    let last_uptime_at_a = *ticks(&a_dir).last().unwrap();
    let mut sub =
        kubevirt_launcher::api::LauncherClient::connect(&VmiDir::from_path(&a_dir).unwrap())
            .await
            .unwrap()
            .subscribe()
            .await
            .unwrap();
    call(
        &mut ca,
        Request::Migrate {
            target: b2_addr,
            block_target: Some(b2_block),
            options: MigrationOptions::default(),
        },
    )
    .await;
    // The subscriber sees the migration's progress, then A's end.
    let mut sent = 0;
    let ended = tokio::time::timeout(MIGRATION_TIMEOUT, async {
        while let Some(ev) = sub.next().await {
            match ev.unwrap() {
                kubevirt_launcher::api::Event::Migration(m) => {
                    assert_eq!(m.address, Some(b2_addr));
                    sent = sent.max(m.transferred_bytes);
                }
                kubevirt_launcher::api::Event::StateChanged(s) if s.phase.is_final() => return s,
                _ => {}
            }
        }
        panic!("A's launcher closed the event stream before A ended");
    })
    .await
    .expect("A ends after the migration");
    assert_eq!(
        (ended.phase, ended.reason.as_str()),
        (Phase::Succeeded, reason::MIGRATED),
        "{ended:?}"
    );
    assert!(sent > 0, "migration events report the bytes sent");
    let t = Instant::now();
    while alive(a_qemu) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "A's QEMU is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = call(&mut ca, Request::State).await.into_state().unwrap();
    assert!(s.message.contains(&b2_addr.to_string()), "{s:?}");
    let m = s.migration.unwrap();
    assert!(
        m.completed && m.total_bytes > 0 && m.remaining_bytes == 0,
        "{m:?}"
    );
    // QEMU's own numbers for the switch-over, as the source recorded them.
    assert!(
        m.total_time_ms.is_some_and(|t| t > 0) && m.downtime_ms.is_some(),
        "{m:?}"
    );

    let s = wait_state(&mut cb2, &b2_dir, MIGRATION_TIMEOUT, "B2 runs", |s| {
        s.phase != Phase::WaitingForMigration
    })
    .await;
    assert_eq!(
        (s.phase, s.reason.as_str()),
        (Phase::Running, reason::MIGRATED),
        "{s:?}"
    );
    assert!(s.migration.is_some_and(|m| m.completed), "B2's status");
    // The same guest goes on at B2: its uptime continues from A's (a new boot would start
    // again near 0).
    let t = Instant::now();
    let at_b2 = loop {
        if let Some(u) = ticks(&b2_dir).last() {
            break *u;
        }
        assert!(t.elapsed() < BOOT_TIMEOUT, "no tick on B2's console");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        at_b2 >= last_uptime_at_a,
        "B2's guest uptime {at_b2} s is below A's last {last_uptime_at_a} s: not the same guest"
    );
    // B2's console answers (async: B2's console server runs on this test's runtime), and
    // B2's copy of the disk holds what the guest wrote at A: read from the disk, not from
    // the guest's page cache (which came along with its memory).
    let out = console(
        &b2_dir,
        &format!("{SCRATCH_DEV}; echo 3 > /proc/sys/vm/drop_caches; echo \"on disk: $(dd if=$d bs=512 count=1 2>/dev/null | tr -d '\\000') $(dd if=$d bs=512 skip=8 count=1 2>/dev/null | tr -d '\\000') migrated-$((6*7))\""),
        "migrated-42",
    )
    .await;
    assert!(
        out.contains("on disk: first-marker second-marker migrated-42"),
        "B2's copy of the emptyDisk: {out}"
    );
    call(&mut cb2, Request::Stop).await;
    let s = wait_state(
        &mut cb2,
        &b2_dir,
        Duration::from_secs(30),
        "B2 stops",
        |s| s.phase.is_final(),
    )
    .await;
    assert_eq!(s.phase, Phase::Succeeded, "{s:?}");
}

/// The boot id a `echo "bid=$(cat /proc/sys/kernel/random/boot_id)=end"` printed (not the
/// typed command's echo, which has `$(`).
fn boot_id(out: &str) -> Option<String> {
    out.match_indices("bid=").find_map(|(i, _)| {
        let id = out.get(i + 4..i + 40)?;
        let ok = id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            && out.get(i + 40..i + 44) == Some("=end");
        ok.then(|| id.to_string())
    })
}

/// The `count N`s on a VMI directory's serial console (anywhere in a line: what is typed on
/// the console may share it).
fn counts(dir: &Path) -> Vec<u64> {
    let log = VmiDir::from_path(dir)
        .ok()
        .and_then(|d| std::fs::read_to_string(d.serial_log()).ok())
        .unwrap_or_default();
    log.match_indices("count ")
        .filter_map(|(i, m)| {
            let digits: String = log[i + m.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// Whether a process whose command line mentions `dir` runs (QEMU's has its sockets' paths).
fn process_in(dir: &Path) -> Option<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        (String::from_utf8_lossy(&cmd).contains(&needle) && alive(pid)).then_some(pid)
    })
}

/// Issue 16, memory snapshots: a counter runs in the guest; a `saveState` with `resume` lets it
/// run on; `dumpMemory` writes an ELF core and the guest runs on; `saveState` writes the
/// guest's RAM and device state to A's directory and leaves it paused; A is stopped; a fresh launcher B
/// whose directory holds the state and `restore-memory.json` starts from it: the counter goes
/// on from where it was (not from 1) and the boot id is A's. A VMI whose machine differs
/// (512Mi) and a state file behind a symlink are refused before QEMU runs; a damaged stream is
/// refused by QEMU with its reason, and no QEMU is left behind.
#[tokio::test]
async fn a_guest_restored_from_its_saved_memory_goes_on_counting_with_the_same_boot_id() {
    use kubevirt_launcher::api::memstate::{reason, MemoryRestore};
    use kubevirt_launcher::api::{ErrorCode, Event};
    let Some(guest) = guest() else {
        eprintln!("SKIP: memory snapshot test needs QEMU and the demo guest");
        return;
    };
    let tmp = tmpdir();
    let dir = |n: &str| tmp.path().join(n);
    let yaml = kernel_boot_vmi(
        "memstate",
        "microvm",
        &cmdline(guest, "microvm"),
        "#!/bin/sh\ntrue",
    );
    let vmi = Box::new(parse_vmi(&yaml).unwrap());
    let (_a, mut ca) = launcher(&dir("a"), guest, false).await;
    call(&mut ca, Request::Sync { vmi: vmi.clone() }).await;
    wait_serial(&dir("a"), "kubevirt-rs demo guest: booted", BOOT_TIMEOUT).await;
    let out = console(
        &dir("a"),
        "echo \"bid=$(cat /proc/sys/kernel/random/boot_id)=end\"",
        "=end\r",
    )
    .await;
    let id_a = boot_id(&out).unwrap_or_else(|| panic!("no boot id in {out:?}"));
    console(
        &dir("a"),
        "(i=0; while :; do i=$((i+1)); echo \"count $i\"; sleep 1; done) & echo counting-$((6*7))",
        "counting-42",
    )
    .await;
    wait_serial(&dir("a"), "count 3", BOOT_TIMEOUT).await;

    // A save that resumes: the guest runs on (QEMU leaves postmigrate and takes its disks
    // back), and the counter with it.
    let first = call(&mut ca, Request::SaveState { resume: true })
        .await
        .into_saved_state()
        .expect("a saved state");
    let s = call(&mut ca, Request::State).await.into_state().unwrap();
    assert_eq!(
        (s.phase, s.reason.as_str()),
        (Phase::Running, reason::STATE_SAVED)
    );
    let n = *counts(&dir("a")).last().unwrap();
    wait_serial(&dir("a"), &format!("count {}", n + 1), BOOT_TIMEOUT).await;
    assert!(first.guest_running && first.size_bytes > 0, "{first:?}");

    // KubeVirt's memory dump (the launcher's half): an ELF core of all guest RAM; the guest
    // runs on.
    let dump = match call(&mut ca, Request::DumpMemory).await {
        kubevirt_launcher::api::Response::MemoryDump(d) => d,
        r => panic!("not a memory dump: {r:?}"),
    };
    let a = VmiDir::from_path(dir("a")).unwrap();
    let core = std::fs::read(a.memory_dump()).unwrap();
    assert_eq!(core.len() as u64, dump.size_bytes);
    assert!(
        core.starts_with(b"\x7fELF") && dump.size_bytes > 256 << 20,
        "{dump:?}"
    );
    drop(core);
    std::fs::remove_file(a.memory_dump()).unwrap();
    let s = call(&mut ca, Request::State).await.into_state().unwrap();
    assert_eq!(s.phase, Phase::Running, "{s:?}");

    let mut sub =
        kubevirt_launcher::api::LauncherClient::connect(&VmiDir::from_path(dir("a")).unwrap())
            .await
            .unwrap()
            .subscribe()
            .await
            .unwrap();
    let saved = call(&mut ca, Request::SaveState { resume: false })
        .await
        .into_saved_state()
        .expect("a saved state");
    let last_at_a = *counts(&dir("a")).last().unwrap();
    eprintln!(
        "saved {} bytes in {} ms after count {last_at_a}",
        saved.size_bytes, saved.duration_ms
    );
    assert!(saved.guest_running && saved.size_bytes > 0, "{saved:?}");
    assert_eq!(saved.memory_bytes, 256 << 20);
    assert_eq!(
        std::fs::metadata(a.memory_state()).unwrap().len(),
        saved.size_bytes
    );
    assert_eq!(a.read_saved_state().unwrap().as_ref(), Some(&saved));
    // Subscribers saw the save complete.
    let done = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = sub.next().await {
            if let Ok(Event::StateSave(p)) = ev {
                if p.status == "completed" {
                    return p;
                }
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("a StateSave event");
    assert!(done.transferred_bytes > 0, "{done:?}");
    // The guest waits, paused, for its disks to be copied; nothing counts meanwhile.
    let s = call(&mut ca, Request::State).await.into_state().unwrap();
    assert_eq!(
        (s.phase, s.reason.as_str()),
        (Phase::Paused, reason::STATE_SAVED)
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(*counts(&dir("a")).last().unwrap(), last_at_a);
    call(&mut ca, Request::Stop).await;
    wait_state(
        &mut ca,
        &dir("a"),
        Duration::from_secs(30),
        "A stops",
        |s| s.phase.is_final(),
    )
    .await;

    // What the handler does before it starts the restoring launcher: the state file into the
    // new directory, and the instruction beside it.
    let restore_into = |name: &str| {
        let d = VmiDir::from_path(dir(name)).unwrap();
        std::fs::create_dir_all(d.memory_state_dir()).unwrap();
        std::fs::hard_link(a.memory_state(), d.memory_state()).unwrap();
        d.write_memory_restore(&MemoryRestore {
            saved: saved.clone(),
        })
        .unwrap();
        d
    };
    let b = restore_into("b");
    let (_b, mut cb) = launcher(&dir("b"), guest, false).await;
    let t = Instant::now();
    let s = call(&mut cb, Request::Sync { vmi: vmi.clone() })
        .await
        .into_state()
        .unwrap();
    eprintln!("restore → running: {:?}", t.elapsed());
    assert_eq!(
        (s.phase, s.reason.as_str()),
        (Phase::Running, reason::RESTORED),
        "{s:?}"
    );
    let out = console(
        &dir("b"),
        "echo \"bid=$(cat /proc/sys/kernel/random/boot_id)=end\"",
        "=end\r",
    )
    .await;
    assert_eq!(boot_id(&out).as_deref(), Some(id_a.as_str()), "{out}");
    wait_serial(&dir("b"), &format!("count {}", last_at_a + 2), BOOT_TIMEOUT).await;
    let at_b = counts(&dir("b"));
    assert!(
        at_b[0] >= last_at_a && at_b[0] <= last_at_a + 1,
        "the counter restarted: A ended at {last_at_a}, B counts {at_b:?}"
    );
    call(&mut cb, Request::Stop).await;
    assert!(b.read_memory_restore().unwrap().is_some());

    // A VMI with another machine (512Mi): refused before QEMU runs, naming the difference.
    let c = restore_into("c");
    let bigger = Box::new(parse_vmi(&yaml.replace("guest: 256Mi", "guest: 512Mi")).unwrap());
    let (_c, mut cc) = launcher(&dir("c"), guest, false).await;
    let e = cc.call(Request::Sync { vmi: bigger }).await.unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::InvalidSpec), "{e}");
    assert!(
        e.to_string().contains("does not fit") && e.to_string().contains("-m 256M"),
        "{e}"
    );
    assert!(
        !c.qemu_log().exists(),
        "QEMU ran for a machine that does not fit"
    );

    // The state file behind a symlink (out of the directory): not followed.
    let d = VmiDir::from_path(dir("d")).unwrap();
    std::fs::create_dir_all(d.memory_state_dir()).unwrap();
    std::os::unix::fs::symlink(a.memory_state(), d.memory_state()).unwrap();
    d.write_memory_restore(&MemoryRestore {
        saved: saved.clone(),
    })
    .unwrap();
    let (_d, mut cd) = launcher(&dir("d"), guest, false).await;
    let e = cd
        .call(Request::Sync { vmi: vmi.clone() })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("memory.bin"), "{e}");
    assert!(!d.qemu_log().exists());

    // A damaged stream (the state is guest-controlled data): QEMU refuses it with its reason,
    // and its QEMU is gone when the error comes.
    let e_dir = VmiDir::from_path(dir("e")).unwrap();
    std::fs::create_dir_all(e_dir.memory_state_dir()).unwrap();
    let mut bytes = std::fs::read(a.memory_state()).unwrap();
    bytes[..64].fill(0);
    std::fs::write(e_dir.memory_state(), &bytes).unwrap();
    e_dir
        .write_memory_restore(&MemoryRestore {
            saved: saved.clone(),
        })
        .unwrap();
    let (_e, mut ce) = launcher(&dir("e"), guest, false).await;
    let e = ce
        .call(Request::Sync { vmi: vmi.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::Failed), "{e}");
    assert!(e.to_string().contains("loading the saved state"), "{e}");
    assert!(e_dir.qemu_log().exists(), "QEMU should have tried");
    assert_eq!(process_in(e_dir.path()), None, "a QEMU was left behind");
    let s = call(&mut ce, Request::State).await.into_state().unwrap();
    assert_eq!(
        (s.phase, s.reason.as_str()),
        (Phase::Failed, "FailedToStart")
    );
}

//! Launcher benchmark (by hand, not in CI):
//!
//!   guest/build.sh /work/guest-out
//!   cargo build --release -p kubevirt-launcher --bins
//!   target/release/launcher-bench /work/guest-out [RUNS]
//!
//! For the demo guest (kernelBoot of the image's vmlinux, cloud-init NoCloud, one masquerade
//! NIC), on q35 and microvm, median of RUNS (default 5): launcher start → QEMU running (QMP
//! `cont` done), → first serial byte, → boot banner. Then what confinement costs (security issue
//! 10: at most 10 ms per VM): launcher start → running for microvm with QEMU as root against
//! QEMU as the unprivileged qemu user, and bare QEMU start → QMP greeting with and without
//! `-sandbox`. Last, the RSS of a `kubevirt-launcher run` process (the launcher, not QEMU)
//! while its VM runs.
//!
//! Per architecture (issue 17): `launcher-bench GUEST RUNS arch ARM64_GUEST [S390X_GUEST]`
//! (from `guest/build.sh --arch arm64` and `--arch s390x`) gives start → running, → first
//! serial byte and → banner for an amd64 guest (q35), an arm64 guest (`virt`,
//! qemu-system-aarch64) and, when given, an s390x guest (`s390-ccw-virtio`,
//! qemu-system-s390x), all kernelBoot of the image's `vmlinuz` with the same devices.
//!
//! Memory snapshots (issue 16): the same VM saved once (`saveState` of a guest whose shell
//! answers), then RUNS times interleaved: a cold boot → the console answers an `echo` (typed
//! again every 250 ms until it does), against a restore from the saved state (a fresh VMI
//! directory with the state hard-linked in and `restore-memory.json`, as the handler prepares
//! it) → running → the console answers the same `echo`. Both from `Vm::start`, with the image
//! cache, QEMU as the qemu user.

use kubevirt_launcher::api::memstate::{MemoryRestore, SavedState};
use kubevirt_launcher::api::VmiDir;
use kubevirt_launcher::confine::QemuUser;
use kubevirt_launcher::launcher::{Options, Vm};
use kubevirt_launcher::machine::parse_vmi;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BANNER: &[u8] = b"kubevirt-rs demo guest: booted";

/// `machine` is q35 or microvm (amd64), virt (arm64: the arm64 guest's image, ref `arm64`) or
/// s390-ccw-virtio (s390x: ref `s390x`).
fn vmi(guest: &Path, machine: &str) -> String {
    let (arch, image, key) = match machine {
        "virt" => ("arm64", "demo-guest:arm64", "arm64"),
        "s390-ccw-virtio" => ("s390x", "demo-guest:s390x", "s390x"),
        _ => ("amd64", "demo-guest:latest", machine),
    };
    let cmdline = std::fs::read_to_string(guest.join("cmdline")).unwrap_or_default();
    let args = cmdline
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or("console=ttyS0")
        .split_whitespace()
        .filter(|w| !w.starts_with("tsc_early_khz=") && !w.starts_with("lpj="))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        r##"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: bench-{machine}, namespace: bench}}
spec:
  architecture: {arch}
  domain:
    machine: {{type: {machine}}}
    memory: {{guest: 256Mi}}
    firmware:
      kernelBoot:
        kernelArgs: {args}
        container: {{image: "{image}", kernelPath: /boot/vmlinuz, initrdPath: /boot/initrd.img}}
    devices:
      autoattachGraphicsDevice: false
      disks: [{{name: cloudinit, disk: {{bus: virtio}}}}]
      interfaces: [{{name: default, masquerade: {{}}}}]
  networks: [{{name: default, pod: {{}}}}]
  volumes:
  - name: cloudinit
    cloudInitNoCloud: {{userData: "#!/bin/sh\ntrue\n"}}
"##
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn one(
    guest: &Path,
    machine: &str,
    dir: &Path,
    user: QemuUser,
) -> anyhow::Result<(f64, f64, f64)> {
    let _ = std::fs::remove_dir_all(dir);
    let vmi_dir = VmiDir::from_path(dir)?;
    let mut o = Options::new(dir);
    o.qemu_user = user;
    o.image_store = Some(guest.join("oci"));
    // As the handler runs launchers: images extracted once, shared (the first run fills it).
    o.image_cache = dir.parent().map(|p| p.join("image-cache"));
    let v = parse_vmi(&vmi(guest, machine))?;
    let (tx, _) = tokio::sync::broadcast::channel(16);
    let t0 = Instant::now();
    let vm = Vm::start(&v, &o, tx).await?;
    let running = t0.elapsed();
    let console = vm
        .console
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no console"))?;
    let mut rx = console.output.subscribe();
    let mut seen = Vec::new();
    let banner = loop {
        if seen.windows(BANNER.len()).any(|w| w == BANNER) {
            break t0.elapsed();
        }
        // The console may have printed the banner before we subscribed.
        if std::fs::read(vmi_dir.serial_log())
            .is_ok_and(|l| l.windows(BANNER.len()).any(|w| w == BANNER))
        {
            break t0.elapsed();
        }
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Ok(chunk)) => seen.extend_from_slice(&chunk),
            Ok(Err(_)) => {}
            Err(_) => anyhow::bail!("no banner within 60 s"),
        }
    };
    let first = console
        .facts
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .first_byte
        .map(|t| t.duration_since(t0))
        .unwrap_or_default();
    vm.stop().await?;
    vm.wait().await;
    Ok((
        running.as_secs_f64() * 1000.0,
        first.as_secs_f64(),
        banner.as_secs_f64(),
    ))
}

/// Type `echo ready-$((6*7))` on the console (again every 250 ms) until `ready-42` comes
/// back: the guest runs and its shell answers.
async fn echo_round_trip(vm: &Vm, within: Duration) -> anyhow::Result<()> {
    let console = vm
        .console
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no console"))?;
    let mut rx = console.output.subscribe();
    let mut seen = Vec::new();
    const ANSWER: &[u8] = b"ready-42";
    let t = Instant::now();
    loop {
        console
            .input
            .send(b"\necho ready-$((6*7))\n".to_vec())
            .await
            .map_err(|_| anyhow::anyhow!("the console is gone"))?;
        let next = Instant::now() + Duration::from_millis(250);
        while Instant::now() < next {
            let left = next.saturating_duration_since(Instant::now());
            if let Ok(Ok(chunk)) = tokio::time::timeout(left, rx.recv()).await {
                seen.extend_from_slice(&chunk);
                if seen.windows(ANSWER.len()).any(|w| w == ANSWER) {
                    return Ok(());
                }
            }
        }
        if t.elapsed() > within {
            anyhow::bail!("no echo within {within:?}");
        }
    }
}

fn bench_opts(guest: &Path, dir: &Path) -> Options {
    let mut o = Options::new(dir);
    o.image_store = Some(guest.join("oci"));
    o.image_cache = dir.parent().map(|p| p.join("image-cache"));
    o
}

/// Boot `machine` until its shell answers, save its state, stop it: the saved state and the
/// directory holding it.
async fn save_once(guest: &Path, machine: &str, dir: &Path) -> anyhow::Result<SavedState> {
    let _ = std::fs::remove_dir_all(dir);
    let v = parse_vmi(&vmi(guest, machine))?;
    let (tx, _) = tokio::sync::broadcast::channel(16);
    let vm = Vm::start(&v, &bench_opts(guest, dir), tx).await?;
    echo_round_trip(&vm, Duration::from_secs(120)).await?;
    let saved = vm.save_state(false).await?;
    vm.stop().await?;
    vm.wait().await;
    Ok(saved)
}

/// One cold boot (`saved: None`) or restore to the console's echo: (start → running ms,
/// start → echo s).
async fn to_echo(
    guest: &Path,
    machine: &str,
    dir: &Path,
    saved: Option<(&Path, &SavedState)>,
) -> anyhow::Result<(f64, f64)> {
    let _ = std::fs::remove_dir_all(dir);
    if let Some((from, s)) = saved {
        let (from, to) = (VmiDir::from_path(from)?, VmiDir::from_path(dir)?);
        std::fs::create_dir_all(to.memory_state_dir())?;
        std::fs::hard_link(from.memory_state(), to.memory_state())?;
        to.write_memory_restore(&MemoryRestore { saved: s.clone() })?;
    }
    let v = parse_vmi(&vmi(guest, machine))?;
    let (tx, _) = tokio::sync::broadcast::channel(16);
    let t0 = Instant::now();
    let vm = Vm::start(&v, &bench_opts(guest, dir), tx).await?;
    let running = t0.elapsed();
    echo_round_trip(&vm, Duration::from_secs(120)).await?;
    let echo = t0.elapsed();
    vm.stop().await?;
    vm.wait().await;
    Ok((running.as_secs_f64() * 1000.0, echo.as_secs_f64()))
}

/// Bare QEMU (microvm, TCG, stopped) from exec to its QMP greeting, in ms.
fn qemu_greeting(sandbox: bool) -> anyhow::Result<f64> {
    use std::io::Read;
    let mut cmd = std::process::Command::new(kubevirt_launcher::qemu::QEMU_BINARY);
    cmd.args([
        "-machine",
        "microvm",
        "-accel",
        "tcg",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-S",
        "-qmp",
        "stdio",
    ]);
    if sandbox {
        cmd.args(["-sandbox", kubevirt_launcher::qemu::devices::SANDBOX]);
    }
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut buf = [0u8; 256];
    let mut seen = Vec::new();
    const GREETING: &[u8] = b"{\"QMP\"";
    while !seen.windows(GREETING.len()).any(|w| w == GREETING) {
        let n = out.read(&mut buf)?;
        if n == 0 {
            anyhow::bail!("QEMU exited before its QMP greeting");
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let _ = child.kill();
    let _ = child.wait();
    Ok(ms)
}

fn launcher_rss(guest: &Path, work: &Path) -> anyhow::Result<String> {
    let bin = std::env::current_exe()?.with_file_name("kubevirt-launcher");
    if !bin.exists() {
        return Ok(format!(
            "n/a ({} missing: cargo build --release -p kubevirt-launcher --bins)",
            bin.display()
        ));
    }
    let dir = work.join("rss");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let yaml = dir.join("vmi.yaml");
    std::fs::write(&yaml, vmi(guest, "microvm"))?;
    let vmi_dir = VmiDir::from_path(dir.join("vmi"))?;
    let mut child = std::process::Command::new(&bin)
        .args(["run", "-f"])
        .arg(&yaml)
        .arg("--dir")
        .arg(vmi_dir.path())
        .arg("--image-store")
        .arg(guest.join("oci"))
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let t = Instant::now();
    let mut rss = String::from("n/a");
    while t.elapsed() < Duration::from_secs(60) {
        let log = std::fs::read(vmi_dir.serial_log()).unwrap_or_default();
        if log.windows(BANNER.len()).any(|w| w == BANNER) {
            std::thread::sleep(Duration::from_secs(2));
            let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
            rss = status
                .lines()
                .find(|l| l.starts_with("VmRSS"))
                .map(|l| l.trim_start_matches("VmRSS:").trim().to_string())
                .unwrap_or_default();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    Ok(rss)
}

/// Memory snapshots: restore from a saved state against a cold boot, to the same echo.
fn memory_snapshots(
    rt: &tokio::runtime::Runtime,
    guest: &Path,
    work: &Path,
    runs: usize,
) -> anyhow::Result<()> {
    println!("\n| memory snapshot (TCG, 256 MiB) | cold boot → echo (s) | restore → running (ms) | restore → echo (s) | state file (MiB) | save (ms) |");
    println!("|---|---|---|---|---|---|");
    for machine in ["microvm", "q35"] {
        let saved_dir = work.join(format!("{machine}-saved"));
        let saved = rt.block_on(save_once(guest, machine, &saved_dir))?;
        let (mut cold, mut running, mut echo) = (vec![], vec![], vec![]);
        for i in 0..runs {
            let c = rt.block_on(to_echo(
                guest,
                machine,
                &work.join(format!("{machine}-cold-{i}")),
                None,
            ))?;
            let r = rt.block_on(to_echo(
                guest,
                machine,
                &work.join(format!("{machine}-restore-{i}")),
                Some((&saved_dir, &saved)),
            ))?;
            eprintln!("{machine} run {i}: cold boot → echo {:.2} s; restore → running {:.0} ms, → echo {:.3} s", c.1, r.0, r.1);
            cold.push(c.1);
            running.push(r.0);
            echo.push(r.1);
        }
        println!(
            "| {machine} | {:.2} | {:.0} | {:.3} | {:.1} | {} |",
            median(cold),
            median(running),
            median(echo),
            saved.size_bytes as f64 / f64::from(1 << 20),
            saved.duration_ms
        );
    }
    Ok(())
}

/// Per guest architecture: launcher start → running, → first serial byte, → banner.
fn architectures(
    rt: &tokio::runtime::Runtime,
    guests: &[(&Path, &str)],
    work: &Path,
    runs: usize,
) -> anyhow::Result<()> {
    println!("| architecture (machine, emulator) | start → QEMU running (ms) | → first serial byte (s) | → banner (s) |");
    println!("|---|---|---|---|");
    for (guest, machine) in guests {
        let mut r = (vec![], vec![], vec![]);
        for i in 0..runs {
            let (a, b, c) = rt.block_on(one(
                guest,
                machine,
                &work.join(format!("{machine}-{i}")),
                QemuUser::default(),
            ))?;
            eprintln!("{machine} run {i}: running {a:.0} ms, first byte {b:.2} s, banner {c:.2} s");
            r.0.push(a);
            r.1.push(b);
            r.2.push(c);
        }
        let label = match *machine {
            "virt" => "arm64 (virt, qemu-system-aarch64)",
            "s390-ccw-virtio" => "s390x (s390-ccw-virtio, qemu-system-s390x)",
            _ => "amd64 (q35, qemu-system-x86_64)",
        };
        println!(
            "| {label} | {:.0} | {:.2} | {:.2} |",
            median(r.0),
            median(r.1),
            median(r.2)
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let guest = PathBuf::from(args.next().unwrap_or_else(|| "/work/guest-out".into()));
    let runs: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(5);
    let work = std::env::temp_dir().join(format!("launcher-bench-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.next().as_deref() {
        Some("memory") => {
            // Only the memory snapshot table.
            let r = memory_snapshots(&rt, &guest, &work, runs);
            let _ = std::fs::remove_dir_all(&work);
            return r;
        }
        Some("arch") => {
            let arm64 = PathBuf::from(
                args.next()
                    .ok_or_else(|| anyhow::anyhow!("arch needs the arm64 guest's directory"))?,
            );
            let s390x = args.next().map(PathBuf::from);
            let mut guests = vec![(guest.as_path(), "q35"), (arm64.as_path(), "virt")];
            if let Some(s) = &s390x {
                guests.push((s.as_path(), "s390-ccw-virtio"));
            }
            let r = architectures(&rt, &guests, &work, runs);
            let _ = std::fs::remove_dir_all(&work);
            return r;
        }
        _ => {}
    }
    println!("| profile | start → QEMU running (ms) | → first serial byte (s) | → banner (s) |");
    println!("|---|---|---|---|");
    for machine in ["q35", "microvm"] {
        let mut r = (vec![], vec![], vec![]);
        for i in 0..runs {
            let (a, b, c) = rt.block_on(one(
                &guest,
                machine,
                &work.join(format!("{machine}-{i}")),
                QemuUser::default(),
            ))?;
            eprintln!("{machine} run {i}: running {a:.0} ms, first byte {b:.2} s, banner {c:.2} s");
            r.0.push(a);
            r.1.push(b);
            r.2.push(c);
        }
        println!(
            "| {machine} | {:.0} | {:.2} | {:.2} |",
            median(r.0),
            median(r.1),
            median(r.2)
        );
    }
    memory_snapshots(&rt, &guest, &work, runs)?;
    // What confinement costs, per VM.
    println!("\n| confinement (microvm) | start → QEMU running (ms) |");
    println!("|---|---|");
    let root = unsafe { libc::geteuid() } == 0;
    let users: &[(&str, QemuUser)] = if root {
        &[
            ("QEMU as root", QemuUser::ROOT),
            ("QEMU as qemu (107)", QemuUser::KUBEVIRT),
        ]
    } else {
        &[("QEMU as the current user", QemuUser::ROOT)]
    };
    for (label, user) in users {
        let mut v = vec![];
        for i in 0..runs {
            let dir = work.join(format!("confine-{}-{i}", user.uid));
            v.push(rt.block_on(one(&guest, "microvm", &dir, *user))?.0);
        }
        println!("| {label} | {:.0} |", median(v));
    }
    println!("\n| bare QEMU (microvm, -S) | exec → QMP greeting (ms) |");
    println!("|---|---|");
    for (label, sandbox) in [("without -sandbox", false), ("with -sandbox", true)] {
        let v = (0..runs.max(5))
            .map(|_| qemu_greeting(sandbox))
            .collect::<anyhow::Result<Vec<_>>>()?;
        println!("| {label} | {:.1} |", median(v));
    }
    println!(
        "\nlauncher VmRSS while a microvm runs: {}",
        launcher_rss(&guest, &work)?
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

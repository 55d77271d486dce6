//! `kubevirt-rs launcher ...`: run one VMI without a control plane (like
//! `firecracker --config-file`), attach to its console, print its state.

use crate::api::{call_blocking, Request, VmiDir};
use crate::launcher::{Options, Phase, StateEvent};
use crate::machine::{parse_vmi, HostPorts};
use crate::rpc::Launcher;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct LauncherArgs {
    /// Log lines on stderr (DIR/launcher.log when detached): `text`, or `json` (one object
    /// a line with `component`, `namespace`, `name`, `uid`); the node agent passes its own.
    #[arg(long, global = true, default_value = "text",
          value_parser = crate::logging::LogFormat::parse)]
    pub log_format: crate::logging::LogFormat,
    #[command(subcommand)]
    command: LauncherCommand,
}

#[derive(clap::Subcommand, Debug)]
enum LauncherCommand {
    /// Run one VMI: start it, print state changes, shut it down gracefully on SIGTERM/SIGINT.
    /// Without -f the launcher waits for a `sync` call on DIR/launcher.sock.
    Run(RunArgs),
    /// Attach to a running VMI's serial console (Ctrl+] leaves an interactive session).
    Console(ConsoleArgs),
    /// Print the launcher's state (the RPC `state`, or DIR/state.json if it has exited) as JSON.
    State(DirArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The VirtualMachineInstance (YAML or JSON).
    #[arg(short = 'f', long = "filename")]
    file: Option<PathBuf>,
    /// The per-VMI directory: sockets, logs, disks, state.json.
    #[arg(long)]
    dir: PathBuf,
    /// OCI image layout holding containerDisk / kernelBoot images.
    #[arg(long)]
    image_store: Option<PathBuf>,
    /// Fall back to software emulation (TCG) when KVM is not usable (KubeVirt's useEmulation).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    allow_emulation: bool,
    /// Detach: run in a new session with output to DIR/launcher.log; return once it runs.
    #[arg(long)]
    detach: bool,
    /// Host ports for masquerade `ports`: `ephemeral` (default), `same`, or `base:N`.
    #[arg(long, default_value = "ephemeral")]
    host_ports: String,
    /// Extract each containerDisk image's base once into this directory and share it between
    /// VMIs (default: into DIR, per VMI).
    #[arg(long)]
    image_cache: Option<PathBuf>,
    /// persistentVolumeClaim file: CLAIM=PATH (repeatable).
    #[arg(long = "pvc", value_name = "CLAIM=PATH")]
    pvcs: Vec<String>,
    /// dataVolume file: NAME=PATH (repeatable).
    #[arg(long = "data-volume", value_name = "NAME=PATH")]
    data_volumes: Vec<String>,
    /// The QEMU binary.
    #[arg(long, default_value = crate::qemu::QEMU_BINARY)]
    qemu: String,
    /// QEMU's user id (KubeVirt's qemu user by default); 0 keeps QEMU as root.
    #[arg(long, default_value_t = crate::confine::QemuUser::KUBEVIRT.uid)]
    qemu_uid: u32,
    /// QEMU's group id (the group of /dev/kvm is added as a supplementary group).
    #[arg(long, default_value_t = crate::confine::QemuUser::KUBEVIRT.gid)]
    qemu_gid: u32,
    /// Start as a live migration's target: the VMI's machine waits (`-incoming defer`, phase
    /// WaitingForMigration) for `prepareMigrationTarget` and the source's `migrate`.
    #[arg(long)]
    migration_target: bool,
}

#[derive(clap::Args, Debug)]
pub struct ConsoleArgs {
    #[arg(long)]
    dir: PathBuf,
    /// With a non-interactive stdin: stop after this many seconds (default 10).
    #[arg(long)]
    timeout: Option<f64>,
}

#[derive(clap::Args, Debug)]
pub struct DirArgs {
    #[arg(long)]
    dir: PathBuf,
}

pub fn run(args: LauncherArgs) -> Result<i32> {
    match args.command {
        LauncherCommand::Run(a) => run_vmi(a),
        LauncherCommand::Console(a) => console(a),
        LauncherCommand::State(a) => {
            let dir = VmiDir::from_path(&a.dir)?;
            let state = match call_blocking(&dir, Request::State).map(|r| r.into_state()) {
                Ok(Some(s)) => s,
                Ok(None) => bail!("the launcher answered `state` without a state"),
                Err(e) => dir
                    .read_state()
                    .with_context(|| format!("launcher not reachable ({e})"))?,
            };
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(0)
        }
    }
}

fn pairs(list: &[String], what: &str) -> Result<std::collections::BTreeMap<String, PathBuf>> {
    list.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
                .with_context(|| format!("--{what} {s}: expected NAME=PATH"))
        })
        .collect()
}

fn describe(ev: &StateEvent, accel: &str) -> String {
    match (ev.phase, ev.reason.as_str()) {
        (Phase::Running, "Started") => format!("state: Running (accelerator {accel})"),
        (p, r) if ev.message.is_empty() => format!("state: {p:?} ({r})"),
        (p, r) => format!("state: {p:?} ({r}: {})", ev.message),
    }
}

fn run_vmi(a: RunArgs) -> Result<i32> {
    let dir = std::path::absolute(&a.dir)?;
    let vmi_dir = VmiDir::from_path(&dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if a.detach {
        return detach(&vmi_dir);
    }
    // Before anything else runs: the launcher keeps only the capabilities it needs.
    crate::confine::drop_launcher_capabilities()?;
    let mut opts = Options::new(&dir);
    opts.image_store = a.image_store.clone();
    opts.image_cache = a.image_cache.clone();
    opts.allow_emulation = a.allow_emulation;
    opts.qemu_binary = a.qemu.clone();
    opts.migration_target = a.migration_target;
    // u32::MAX is "no change" to chown/setuid: refuse it rather than confine nobody.
    if a.qemu_uid == u32::MAX || a.qemu_gid == u32::MAX {
        bail!(
            "--qemu-uid/--qemu-gid: {} is not a user or group id",
            u32::MAX
        );
    }
    opts.qemu_user = crate::confine::QemuUser {
        uid: a.qemu_uid,
        gid: if a.qemu_uid == 0 { 0 } else { a.qemu_gid },
    };
    // The handler's resolved volumes (volumes.json), then any given by hand on the command line.
    opts.defaults = vmi_dir.read_defaults()?;
    opts.pod_network = vmi_dir.read_network()?;
    let node = vmi_dir.read_volumes()?;
    opts.pvc_paths = node.persistent_volume_claims;
    opts.pvc_paths.extend(pairs(&a.pvcs, "pvc")?);
    opts.data_volume_paths = node.data_volumes;
    opts.cloud_init_secrets = node.cloud_init;
    opts.node_local_claims = node.local_claims;
    opts.data_volume_paths
        .extend(pairs(&a.data_volumes, "data-volume")?);
    opts.host_ports = match a.host_ports.as_str() {
        "ephemeral" => HostPorts::Ephemeral,
        "same" => HostPorts::Same,
        s => match s.strip_prefix("base:").and_then(|n| n.parse().ok()) {
            Some(n) => HostPorts::Base(n),
            None => bail!("--host-ports {s}: use ephemeral, same or base:N"),
        },
    };
    let vmi = match &a.file {
        None => None,
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            Some(
                parse_vmi(&text)
                    .with_context(|| format!("{}: not a VirtualMachineInstance", f.display()))?,
            )
        }
    };
    // Every line of this launcher names its VMI (`--log-format json`: namespace, name, uid):
    // the runtime is single-threaded, so the span is current wherever its tasks log.
    let (namespace, name, uid) = match (vmi.as_ref(), vmi_dir.owner()) {
        (Some(v), _) => {
            let m = &v.metadata;
            let f = |x: &Option<String>| x.clone().unwrap_or_default();
            (f(&m.namespace), f(&m.name), f(&m.uid))
        }
        (None, Some(o)) => (o.namespace, o.name, o.uid),
        (None, None) => Default::default(),
    };
    let _vmi_span = tracing::error_span!("vmi", %namespace, %name, %uid).entered();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let launcher = Launcher::new(opts);
        launcher.listen().context("serving launcher.sock")?;
        let mut events = launcher.subscribe();
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let printer = {
            let l = launcher.clone();
            tokio::spawn(async move {
                let mut last = String::new();
                while let Ok(ev) = events.recv().await {
                    let accel = l
                        .state()
                        .await
                        .accelerator
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    let line = describe(&ev, &accel);
                    if line == last {
                        continue;
                    }
                    println!("{line}");
                    last = line;
                    let _ = std::io::stdout().flush();
                }
            })
        };
        if let Some(vmi) = &vmi {
            if let Err(e) = launcher.sync(vmi).await {
                tokio::time::sleep(Duration::from_millis(20)).await;
                eprintln!("error: {e}");
                return Ok(1);
            }
        }
        // Wait for a VM (sync over RPC when started without -f).
        let vm = loop {
            if let Some(vm) = launcher.vm().await {
                break vm;
            }
            tokio::select! {
                _ = sigterm.recv() => return Ok(0),
                _ = sigint.recv() => return Ok(0),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if launcher.state().await.phase == Phase::Failed {
                return Ok(1);
            }
        };
        let s = vm.state();
        println!("accelerator: {} ({})", s.accelerator.map(|a| a.to_string()).unwrap_or_default(), s.accelerator_reason);
        for p in &s.ports {
            println!("port: {} {}:{} -> guest {}", p.protocol, p.host_address, p.host_port, p.guest_port);
        }
        if let Some(c) = &s.console_socket {
            println!("console: {} (kubevirt-rs launcher console --dir {})", c.display(), dir.display());
        }
        let mut signals = 0;
        let final_state = loop {
            tokio::select! {
                s = vm.wait() => break s,
                _ = sigterm.recv() => signals += 1,
                _ = sigint.recv() => signals += 1,
            }
            let grace = Duration::from_secs(vm.spec.termination_grace_period_seconds);
            let r = if signals == 1 {
                eprintln!("launcher: signal received, shutting the guest down (grace period {grace:?}; again to stop now)");
                vm.shutdown(grace).await
            } else {
                vm.stop().await
            };
            if let Err(e) = r {
                eprintln!("launcher: {e}");
            }
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        printer.abort();
        Ok(if final_state.phase == Phase::Succeeded { 0 } else { 1 })
    })
}

/// Re-run this command in its own session (it survives whoever started it), output to
/// DIR/launcher.log, and return once the VM runs (or failed).
fn detach(dir: &VmiDir) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    let log = std::fs::File::create(dir.launcher_log())?;
    let _ = std::fs::remove_file(dir.state_file());
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(s) = dir.read_state() {
            if !matches!(s.phase, Phase::Pending | Phase::Starting) {
                println!("launcher: pid {pid}, dir {}", dir.path().display());
                println!(
                    "state: {:?} ({}{})",
                    s.phase,
                    s.reason,
                    if s.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", s.message)
                    }
                );
                return Ok(if s.phase == Phase::Failed { 1 } else { 0 });
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            bail!(
                "the launcher exited ({st}); see {}",
                dir.launcher_log().display()
            );
        }
        if Instant::now() > deadline {
            bail!("the launcher (pid {pid}) did not start the VM within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enable() -> RawMode {
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawMode(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawMode(Some(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

fn console(a: ConsoleArgs) -> Result<i32> {
    let path = VmiDir::from_path(&a.dir)?.console_socket();
    let sock = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("connecting to {}", path.display()))?;
    let tty = unsafe { libc::isatty(0) } == 1;
    let mut to_guest = sock.try_clone()?;
    if tty {
        eprintln!("Connected to {}. Escape with Ctrl+].\r", path.display());
        let _raw = RawMode::enable();
        let mut from_guest = sock.try_clone()?;
        std::thread::spawn(move || {
            let mut out = std::io::stdout();
            let mut buf = [0u8; 4096];
            while let Ok(n) = from_guest.read(&mut buf) {
                if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
            // The VM went away: leave the console.
            unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
        });
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = stdin.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if let Some(i) = buf[..n].iter().position(|&b| b == 0x1d) {
                to_guest.write_all(&buf[..i])?;
                break;
            }
            to_guest.write_all(&buf[..n])?;
        }
        return Ok(0);
    }
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut to_guest);
    });
    let deadline = Instant::now() + Duration::from_secs_f64(a.timeout.unwrap_or(10.0));
    let mut from_guest = sock;
    let mut out = std::io::stdout();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        from_guest.set_read_timeout(Some(left))?;
        match from_guest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.write_all(&buf[..n])?;
                out.flush()?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(0)
}

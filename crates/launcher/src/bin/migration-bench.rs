//! Live migration benchmark (by hand, not in CI):
//!
//!   guest/build.sh /work/guest-out
//!   cargo build --release -p kubevirt-launcher --bin migration-bench
//!   target/release/migration-bench /work/guest-out [RUNS]
//!
//! The demo guest (kernelBoot of the image's vmlinux, q35, 1 vCPU, 256 MiB, TCG) is migrated
//! over loopback TCP, RUNS times (default 3) per case, two ways, interleaved run by run so both
//! see the same machine load:
//!
//! - **launcher**: a source launcher and a `--migration-target` launcher (in this process, each
//!   serving its own `launcher.sock`, driven through [`LauncherClient`] as the node agent drives
//!   them); timed from `prepareMigrationTarget` through `migrate` to the target reporting
//!   Running. Downtime and QEMU's total time are what the source launcher reports
//!   (`downtimeMs`, `totalTimeMs`).
//! - **bare**: the same guest (same kernel, initrd, command line, machine, memory, CPU, accel
//!   and devices) in two `qemu-system-x86_64` processes started by hand, as root and without
//!   `-sandbox` (the target with `-incoming defer`), migrated through QMP directly with the
//!   capabilities and parameters the launcher uses by default; timed from the target's
//!   `migrate-incoming` to its `MIGRATION completed` event. Downtime and total time from the
//!   source's `query-migrate`.
//!
//! Cases: **idle** (the guest's shell waits) and **dirty** (a loop in the guest rewrites a
//! 100 MiB file in a tmpfs, 1 MiB at a time with `dd`, all through the migration). After each
//! migration the target's serial console must answer a command, or the bench fails.
//!
//! Every QEMU it started is killed on the way out (also on an error or Ctrl+C: the launchers'
//! QEMUs and the bare ones die with this process through `PR_SET_PDEATHSIG`), and its work
//! directory is removed.

use anyhow::{anyhow, bail, Context, Result};
use kubevirt_launcher::api::migration::{reason, MigrationOptions};
use kubevirt_launcher::api::{
    Event, LauncherClient, MigrationRole, MigrationStatus, Phase, Request, Response, State, VmiDir,
};
use kubevirt_launcher::launcher::Options;
use kubevirt_launcher::machine::parse_vmi;
use kubevirt_launcher::migration::{
    capabilities, completion_times, listening_address, source_parameters, target_parameters, uri,
};
use kubevirt_launcher::qmp::{Qmp, QmpEvent};
use kubevirt_launcher::rpc::Launcher;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MEMORY_MIB: u64 = 256;
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the dirtying loop runs before the migration starts.
const DIRTY_WARMUP: Duration = Duration::from_secs(3);
const LISTEN: &str = "127.0.0.1:0";

/// The guest's memory-dirtying workload, typed on its console: a 1 MiB random block copied
/// 100 times into a file on a tmpfs of its own, then a background loop rewriting the file in
/// place, 1 MiB per `dd` (random data: QEMU sends zero pages as a flag, so zeros would not
/// count). It answers `dirty-42` once the loop runs.
const DIRTY_LOOP: &str = "mkdir -p /dirty && mount -t tmpfs -o size=110m tmpfs /dirty && \
    dd if=/dev/urandom of=/dirty/src bs=1M count=1 2>/dev/null && \
    for i in $(seq 100); do cat /dirty/src; done >/dirty/x && \
    (while :; do dd if=/dirty/x of=/dirty/x bs=1M conv=notrunc 2>/dev/null; done &) && \
    echo dirty-$((6*7))";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Idle,
    Dirty,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Idle => "idle",
            Case::Dirty => "dirty (100 MiB loop)",
        }
    }
}

/// One migration's numbers, in milliseconds.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Wall time, first migration command → the guest runs at the target.
    total: f64,
    /// QEMU's `total-time` at the source.
    qemu_total: f64,
    /// QEMU's `downtime` at the source.
    downtime: f64,
    /// Of `total`: until the source's QEMU accepted `migrate` (the target listening, both
    /// ends' capabilities and parameters set).
    started: f64,
}

impl Sample {
    fn line(&self) -> String {
        format!(
            "{:.0} ms (migrate accepted after {:.0} ms; QEMU total-time {:.0} ms, downtime {:.0} ms; after QEMU's total {:.0} ms)",
            self.total,
            self.started,
            self.qemu_total,
            self.downtime,
            self.total - self.started - self.qemu_total
        )
    }
}

/// The guest: the files of GUEST_DIR both paths boot.
struct Guest {
    dir: PathBuf,
    vmlinux: PathBuf,
    initrd: PathBuf,
    append: String,
}

impl Guest {
    fn open(dir: &Path) -> Result<Guest> {
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("guest directory {}", dir.display()))?;
        let cmdline = std::fs::read_to_string(dir.join("cmdline")).with_context(|| {
            format!(
                "{}/cmdline (build the guest: guest/build.sh {})",
                dir.display(),
                dir.display()
            )
        })?;
        let append = cmdline
            .lines()
            .find_map(|l| l.strip_prefix("q35="))
            .ok_or_else(|| anyhow!("{}/cmdline has no q35= line", dir.display()))?
            .to_string();
        let g = Guest {
            vmlinux: dir.join("vmlinux"),
            initrd: dir.join("initrd.img"),
            append,
            dir,
        };
        for f in [&g.vmlinux, &g.initrd, &g.dir.join("oci/index.json")] {
            if !f.is_file() {
                bail!("{} is missing: build the guest first", f.display());
            }
        }
        Ok(g)
    }

    /// The VMI both launchers get: what the bare QEMUs are started with.
    fn vmi_yaml(&self) -> String {
        format!(
            r##"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: migration-bench, namespace: bench}}
spec:
  domain:
    machine: {{type: q35}}
    memory: {{guest: {MEMORY_MIB}Mi}}
    firmware:
      kernelBoot:
        kernelArgs: {args}
        container: {{image: demo-guest:latest, kernelPath: /boot/vmlinux, initrdPath: /boot/initrd.img}}
    devices:
      autoattachGraphicsDevice: false
      autoattachMemBalloon: false
      autoattachPodInterface: false
"##,
            args = self.append
        )
    }

    /// The bare QEMU of one end: the launcher's machine for [`Guest::vmi_yaml`] (see its
    /// `qemu.cmdline`) without the confinement (`-sandbox`, QEMU's own user) and without the
    /// per-VMI identity (`-name`, `-uuid`, `-msg`).
    fn bare_argv(&self, dir: &Path, target: bool) -> Vec<String> {
        let p = |f: &str| dir.join(f).display().to_string();
        let mut a: Vec<String> = [
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1,sockets=1,cores=1,threads=1",
            "-m",
            &format!("{MEMORY_MIB}M"),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-shutdown",
            "-chardev",
            &format!("socket,id=qmp,path={},server=on,wait=off", p("qmp.sock")),
            "-mon",
            "chardev=qmp,mode=control",
            "-kernel",
            &self.vmlinux.display().to_string(),
            "-initrd",
            &self.initrd.display().to_string(),
            "-append",
            &self.append,
            "-chardev",
            &format!(
                "socket,id=serial0,path={},server=on,wait=off",
                p("serial.sock")
            ),
            "-serial",
            "chardev:serial0",
            "-device",
            "virtio-scsi-pci,id=scsi0",
            "-chardev",
            &format!("socket,id=qga0,path={},server=on,wait=off", p("qga.sock")),
            "-device",
            "virtio-serial-pci,id=virtio-serial0",
            "-device",
            "virtserialport,bus=virtio-serial0.0,chardev=qga0,name=org.qemu.guest_agent.0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if target {
            a.extend(["-incoming".into(), "defer".into()]);
        } else {
            a.push("-S".into());
        }
        a
    }
}

/// The bench's own directory, removed on the way out. Searchable by QEMU's user (107): the
/// launcher refuses a VMI directory QEMU could not reach.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<WorkDir> {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!("migration-bench-{}", std::process::id()));
        std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o711))?;
        Ok(WorkDir(p))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("migration-bench: removing {}: {e}", self.0.display());
        }
    }
}

/// QEMUs started through a launcher in this process: SIGKILLed when the run is over, however
/// it ended. Only a process whose command line still names the run's directory is killed (a
/// pid may have been reused).
struct Reaper {
    dir: PathBuf,
    pids: Vec<u32>,
}

impl Reaper {
    fn new(dir: &Path) -> Reaper {
        Reaper {
            dir: dir.to_path_buf(),
            pids: vec![],
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let needle = self.dir.display().to_string();
        for &pid in &self.pids {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                // SAFETY: kill(2) on a pid checked just above to be this run's QEMU.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// A serial console (the launcher's `console.sock`, or a bare QEMU's serial socket): what it
/// prints is collected in the background; [`Console::ask`] types a command and waits for its
/// answer.
struct Console {
    what: String,
    writer: tokio::net::unix::OwnedWriteHalf,
    out: Arc<Mutex<Vec<u8>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Console {
    async fn connect(path: &Path, what: &str) -> Result<Console> {
        let s = tokio::net::UnixStream::connect(path)
            .await
            .with_context(|| format!("{what}: connecting to {}", path.display()))?;
        let (mut r, writer) = s.into_split();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut o) = sink.lock() {
                    o.extend_from_slice(&buf[..n]);
                }
            }
        });
        Ok(Console {
            what: what.to_string(),
            writer,
            out,
            reader,
        })
    }

    fn output(&self) -> Vec<u8> {
        self.out.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Type `command` (again every `retype`, for a shell that is not there yet) until `answer`
    /// appears in what the console prints after the first try.
    async fn ask(
        &mut self,
        command: &str,
        answer: &str,
        within: Duration,
        retype: Duration,
    ) -> Result<Duration> {
        let from = self.output().len();
        let t = Instant::now();
        let mut typed: Option<Instant> = None;
        loop {
            if typed.is_none_or(|at| at.elapsed() >= retype) {
                self.writer
                    .write_all(format!("\n{command}\n").as_bytes())
                    .await
                    .with_context(|| format!("{}: typing {command:?}", self.what))?;
                typed = Some(Instant::now());
            }
            let out = self.output();
            if String::from_utf8_lossy(&out[from.min(out.len())..]).contains(answer) {
                return Ok(t.elapsed());
            }
            if t.elapsed() > within {
                let tail =
                    String::from_utf8_lossy(&out[out.len().saturating_sub(2000)..]).into_owned();
                bail!(
                    "{}: no {answer:?} within {within:?} after typing {command:?}; the console printed:\n{tail}",
                    self.what
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The guest is up: its shell answers.
    async fn wait_shell(&mut self) -> Result<Duration> {
        self.ask(
            "echo up-$((6*7))",
            "up-42",
            BOOT_TIMEOUT,
            Duration::from_secs(2),
        )
        .await
    }

    /// The guest still runs: its shell answers (one command, typed once more if lost).
    async fn check_alive(&mut self) -> Result<()> {
        self.ask(
            "echo alive-$((6*7))",
            "alive-42",
            ANSWER_TIMEOUT,
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
    }

    async fn start_dirty_loop(&mut self) -> Result<()> {
        self.ask(DIRTY_LOOP, "dirty-42", ANSWER_TIMEOUT, ANSWER_TIMEOUT)
            .await
            .context("starting the memory-dirtying loop in the guest")?;
        tokio::time::sleep(DIRTY_WARMUP).await;
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn tail(path: &Path, bytes: usize) -> String {
    let b = std::fs::read(path).unwrap_or_default();
    format!(
        "--- {}\n{}",
        path.display(),
        String::from_utf8_lossy(&b[b.len().saturating_sub(bytes)..])
    )
}

fn logs(dir: &VmiDir) -> String {
    format!(
        "{}\n{}",
        tail(&dir.qemu_log(), 2000),
        tail(&dir.serial_log(), 1000)
    )
}

fn migration_of(r: Response, what: &str) -> Result<MigrationStatus> {
    match r {
        Response::Migration(m) => Ok(*m),
        r => bail!("{what}: not a migration status: {r:?}"),
    }
}

fn state_of(r: Response, what: &str) -> Result<State> {
    r.into_state()
        .ok_or_else(|| anyhow!("{what}: the reply is not a state"))
}

/// A launcher in this process, serving `DIR/launcher.sock`, and a client of it.
async fn launcher(
    dir: &Path,
    guest: &Guest,
    cache: &Path,
    target: bool,
) -> Result<(Arc<Launcher>, LauncherClient, VmiDir)> {
    let vmi_dir = VmiDir::from_path(dir).with_context(|| format!("{}", dir.display()))?;
    let mut o = Options::new(dir);
    o.image_store = Some(guest.dir.join("oci"));
    // As virt-handler runs launchers: the image extracted once, shared.
    o.image_cache = Some(cache.to_path_buf());
    o.migration_target = target;
    let l = Launcher::new(o);
    l.listen()
        .with_context(|| format!("serving {}", vmi_dir.launcher_socket().display()))?;
    let c = LauncherClient::connect(&vmi_dir)
        .await
        .with_context(|| format!("connecting to {}", vmi_dir.launcher_socket().display()))?;
    Ok((l, c, vmi_dir))
}

/// One migration through the launchers.
async fn launcher_run(guest: &Guest, work: &Path, case: Case, run: usize) -> Result<Sample> {
    let root = work.join(format!("launcher-{case:?}-{run}").to_lowercase());
    std::fs::create_dir(&root)?;
    let mut reaper = Reaper::new(&root);
    let vmi = Box::new(parse_vmi(&guest.vmi_yaml())?);
    let cache = work.join("image-cache");

    let (_src, mut src, src_dir) = launcher(&root.join("src"), guest, &cache, false).await?;
    let s = state_of(
        src.call(Request::Sync { vmi: vmi.clone() })
            .await
            .context("source: sync")?,
        "source: sync",
    )?;
    reaper.pids.extend(s.qemu_pid);
    if s.phase != Phase::Running {
        bail!(
            "source: {:?} ({}): {}\n{}",
            s.phase,
            s.reason,
            s.message,
            logs(&src_dir)
        );
    }
    let (_dst, mut dst, dst_dir) = launcher(&root.join("dst"), guest, &cache, true).await?;
    let s = state_of(
        dst.call(Request::Sync { vmi })
            .await
            .context("target: sync")?,
        "target: sync",
    )?;
    reaper.pids.extend(s.qemu_pid);
    if s.phase != Phase::WaitingForMigration {
        bail!(
            "target: {:?} ({}): {}\n{}",
            s.phase,
            s.reason,
            s.message,
            logs(&dst_dir)
        );
    }

    let mut console = Console::connect(&src_dir.console_socket(), "source console").await?;
    console.wait_shell().await.with_context(|| logs(&src_dir))?;
    if case == Case::Dirty {
        console.start_dirty_loop().await?;
    }
    let mut src_events = LauncherClient::connect(&src_dir).await?.subscribe().await?;
    let mut dst_events = LauncherClient::connect(&dst_dir).await?.subscribe().await?;

    let t0 = Instant::now();
    let listening = migration_of(
        dst.call(Request::PrepareMigrationTarget {
            listen: LISTEN.parse()?,
            options: MigrationOptions::default(),
        })
        .await
        .context("target: prepareMigrationTarget")?,
        "prepareMigrationTarget",
    )?;
    let addr = listening
        .address
        .ok_or_else(|| anyhow!("the target reported no address: {listening:?}"))?;
    src.call(Request::Migrate {
        target: addr,
        block_target: listening.block_address,
        options: MigrationOptions::default(),
    })
    .await
    .context("source: migrate")?;
    let started = t0.elapsed();
    // The guest runs at the target: the migration is over for whoever waits on it.
    let arrived = tokio::time::timeout(MIGRATION_TIMEOUT, async {
        while let Some(ev) = dst_events.next().await {
            match ev? {
                Event::StateChanged(s) if s.phase == Phase::WaitingForMigration => {}
                Event::StateChanged(s) => return Ok(s),
                Event::Migration(_) | Event::StateSave(_) => {}
            }
        }
        bail!("the target launcher closed its event stream")
    })
    .await
    .map_err(|_| anyhow!("the guest did not arrive within {MIGRATION_TIMEOUT:?}"))?
    .with_context(|| format!("target\n{}", logs(&dst_dir)))?;
    let total = t0.elapsed();
    if (arrived.phase, arrived.reason.as_str()) != (Phase::Running, reason::MIGRATED) {
        bail!(
            "target: {:?} ({}): {}\n{}",
            arrived.phase,
            arrived.reason,
            arrived.message,
            logs(&dst_dir)
        );
    }
    let done = tokio::time::timeout(MIGRATION_TIMEOUT, async {
        while let Some(ev) = src_events.next().await {
            match ev? {
                Event::Migration(m) if m.role == MigrationRole::Source && m.completed => {
                    return Ok(m)
                }
                Event::Migration(m) if m.failed => {
                    bail!(
                        "the source reports the migration failed: {}",
                        m.failure_reason
                    )
                }
                _ => {}
            }
        }
        bail!("the source launcher closed its event stream before reporting completion")
    })
    .await
    .map_err(|_| anyhow!("the source did not report completion within {MIGRATION_TIMEOUT:?}"))?
    .with_context(|| format!("source\n{}", logs(&src_dir)))?;

    let mut at_target = Console::connect(&dst_dir.console_socket(), "target console").await?;
    at_target
        .check_alive()
        .await
        .with_context(|| format!("the guest does not run at the target\n{}", logs(&dst_dir)))?;
    drop(at_target);
    drop(console);

    let stopped = dst.call(Request::Stop).await;
    if let Err(e) = stopped {
        eprintln!("target: stop: {e}");
    }
    Ok(Sample {
        total: total.as_secs_f64() * 1000.0,
        started: started.as_secs_f64() * 1000.0,
        qemu_total: done
            .total_time_ms
            .ok_or_else(|| anyhow!("the source reported no totalTimeMs: {done:?}"))?
            as f64,
        downtime: done
            .downtime_ms
            .ok_or_else(|| anyhow!("the source reported no downtimeMs: {done:?}"))?
            as f64,
    })
}

/// A bare QEMU, killed when dropped (and with this process: PR_SET_PDEATHSIG).
struct BareQemu {
    what: &'static str,
    dir: PathBuf,
    child: tokio::process::Child,
    qmp: Qmp,
    events: tokio::sync::broadcast::Receiver<QmpEvent>,
}

impl BareQemu {
    async fn start(guest: &Guest, dir: &Path, target: bool) -> Result<BareQemu> {
        let what = if target { "bare target" } else { "bare source" };
        std::fs::create_dir(dir)?;
        let log = std::fs::File::create(dir.join("qemu.log"))?;
        let mut cmd = tokio::process::Command::new(kubevirt_launcher::qemu::QEMU_BINARY);
        cmd.args(guest.bare_argv(dir, target))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        // SAFETY: prctl(2) only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| {
            format!("{what}: starting {}", kubevirt_launcher::qemu::QEMU_BINARY)
        })?;
        let pid = child.id();
        let (qmp, events) =
            Qmp::connect_retry(&dir.join("qmp.sock"), Duration::from_secs(30), || {
                pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            })
            .await
            .with_context(|| format!("{what}: QMP\n{}", tail(&dir.join("qemu.log"), 2000)))?;
        if let Ok(Some(st)) = child.try_wait() {
            bail!(
                "{what}: QEMU exited: {st}\n{}",
                tail(&dir.join("qemu.log"), 2000)
            );
        }
        Ok(BareQemu {
            what,
            dir: dir.to_path_buf(),
            child,
            qmp,
            events,
        })
    }

    fn log(&self) -> String {
        tail(&self.dir.join("qemu.log"), 2000)
    }

    async fn console(&self) -> Result<Console> {
        Console::connect(
            &self.dir.join("serial.sock"),
            &format!("{} console", self.what),
        )
        .await
    }
}

impl Drop for BareQemu {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// One migration between two bare QEMUs.
async fn bare_run(guest: &Guest, work: &Path, case: Case, run: usize) -> Result<Sample> {
    let root = work.join(format!("bare-{case:?}-{run}").to_lowercase());
    std::fs::create_dir(&root)?;
    let src = BareQemu::start(guest, &root.join("src"), false).await?;
    let mut dst = BareQemu::start(guest, &root.join("dst"), true).await?;
    let mut console = src.console().await?;
    src.qmp.cont().await.context("bare source: cont")?;
    console.wait_shell().await.with_context(|| src.log())?;
    if case == Case::Dirty {
        console.start_dirty_loop().await?;
    }

    let o = MigrationOptions::default();
    let t0 = Instant::now();
    // What prepareMigrationTarget does.
    dst.qmp
        .migrate_set_capabilities(capabilities(&o, MigrationRole::Target, false))
        .await
        .context("bare target: migrate-set-capabilities")?;
    if let Some(p) = target_parameters(&o) {
        dst.qmp.migrate_set_parameters(p).await?;
    }
    let listen: SocketAddr = LISTEN.parse()?;
    dst.qmp
        .migrate_incoming(&uri(&listen))
        .await
        .context("bare target: migrate-incoming")?;
    let info = dst.qmp.query_migrate().await?;
    let addr = listening_address(&info, listen)
        .ok_or_else(|| anyhow!("bare target: no listening address in {info:?}"))?;
    // What migrate does.
    src.qmp
        .migrate_set_capabilities(capabilities(&o, MigrationRole::Source, false))
        .await
        .context("bare source: migrate-set-capabilities")?;
    src.qmp
        .migrate_set_parameters(source_parameters(&o))
        .await
        .context("bare source: migrate-set-parameters")?;
    src.qmp
        .migrate(&uri(&addr))
        .await
        .context("bare source: migrate")?;
    let started = t0.elapsed();
    let events = &mut dst.events;
    tokio::time::timeout(MIGRATION_TIMEOUT, async {
        loop {
            let ev = events
                .recv()
                .await
                .map_err(|e| anyhow!("bare target's QMP events: {e}"))?;
            if ev.event == "MIGRATION" {
                match ev.data.get("status").and_then(|s| s.as_str()) {
                    Some("completed") => return Ok(()),
                    Some("failed") => bail!("the incoming migration failed"),
                    _ => {}
                }
            }
        }
    })
    .await
    .map_err(|_| anyhow!("bare: the guest did not arrive within {MIGRATION_TIMEOUT:?}"))?
    .with_context(|| dst.log())?;
    let total = t0.elapsed();
    let t = Instant::now();
    let (downtime, qemu_total) = loop {
        let i = src.qmp.query_migrate().await?;
        if let Some(times) = completion_times(&i) {
            break times;
        }
        match i.status.as_deref() {
            Some("failed") | Some("cancelled") => {
                bail!("bare source: migration {:?}: {:?}", i.status, i.error_desc)
            }
            _ if t.elapsed() > MIGRATION_TIMEOUT => bail!("bare source: not completed: {i:?}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let status = dst.qmp.query_status().await?;
    if !status.running {
        bail!("bare target: the guest is not running after the migration: {status:?}");
    }
    let _ = src.qmp.quit().await;
    drop(console);
    let mut at_target = dst.console().await?;
    at_target
        .check_alive()
        .await
        .with_context(|| format!("the guest does not run at the bare target\n{}", dst.log()))?;
    Ok(Sample {
        total: total.as_secs_f64() * 1000.0,
        started: started.as_secs_f64() * 1000.0,
        qemu_total: qemu_total as f64,
        downtime: downtime as f64,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn spread(v: &[f64]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.0} ({min:.0}–{max:.0})", median(v))
}

/// Runs that failed: the case, the path and why (the bench goes on, then exits non-zero).
type Failures = Vec<(Case, &'static str, String)>;

fn record(
    case: Case,
    path: &'static str,
    run: usize,
    r: Result<Sample>,
    into: &mut Vec<Sample>,
    failures: &mut Failures,
) {
    match r {
        Ok(s) => {
            eprintln!("{} run {run}: {path:<9} {}", case.name(), s.line());
            into.push(s);
        }
        Err(e) => {
            eprintln!("{} run {run}: {path:<9} FAILED: {e:?}", case.name());
            failures.push((case, path, format!("run {run}: {e:#}")));
        }
    }
}

async fn bench(guest: &Guest, work: &Path, runs: usize) -> Result<()> {
    let mut rows = vec![];
    let mut failures: Failures = vec![];
    for case in [Case::Idle, Case::Dirty] {
        let (mut l, mut b) = (vec![], vec![]);
        for run in 0..runs {
            let r = launcher_run(guest, work, case, run).await;
            record(case, "launcher", run, r, &mut l, &mut failures);
            let r = bare_run(guest, work, case, run).await;
            record(case, "bare QEMU", run, r, &mut b, &mut failures);
        }
        rows.push((case, l, b));
    }
    println!("| case | path | total ms, median (min–max) | QEMU total-time ms | downtime ms, median (min–max) | launcher / bare | failed runs |");
    println!("|---|---|---|---|---|---|---|");
    for (case, l, b) in rows {
        let col = |v: &[Sample], f: fn(&Sample) -> f64| v.iter().map(f).collect::<Vec<_>>();
        let ratio = median(&col(&l, |s| s.total)) / median(&col(&b, |s| s.total));
        for (path, v, r) in [
            ("launcher", &l, format!("{ratio:.2}×")),
            ("bare QEMU", &b, String::new()),
        ] {
            let failed = failures
                .iter()
                .filter(|(c, p, _)| *c == case && *p == path)
                .count();
            println!(
                "| {} | {path} | {} | {:.0} | {} | {r} | {failed} of {runs} |",
                case.name(),
                spread(&col(v, |s| s.total)),
                median(&col(v, |s| s.qemu_total)),
                spread(&col(v, |s| s.downtime)),
            );
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    for (case, path, why) in &failures {
        eprintln!("FAILED: {}, {path}, {why}", case.name());
    }
    bail!("{} of {} migrations failed", failures.len(), 4 * runs)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let guest_dir = PathBuf::from(args.next().unwrap_or_else(|| "/work/guest-out".into()));
    let runs: usize = match args.next() {
        None => 3,
        Some(n) => n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| anyhow!("RUNS must be a positive number, not {n:?}"))?,
    };
    if !Path::new("/proc/self").exists() {
        bail!("/proc is needed");
    }
    let guest = Guest::open(&guest_dir)?;
    let work = WorkDir::new()?;
    // One thread: the launchers spawn QEMU from it, and PR_SET_PDEATHSIG ties each QEMU to the
    // thread that spawned it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(async {
        tokio::select! {
            r = bench(&guest, &work.0, runs) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    // Tasks (console relays, launchers) go with the runtime; QEMUs were killed by their guards.
    drop(rt);
    drop(work);
    r
}

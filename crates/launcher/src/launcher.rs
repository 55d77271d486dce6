//! Lifecycle of one VMI's QEMU: start (paused, then `cont` unless `startStrategy: Paused`),
//! pause/unpause, graceful shutdown (ACPI power button, then a hard stop after the grace
//! period), hard stop, reset, soft reboot, balloon, stats.
//!
//! Phase transitions are decided in one place: [`Vm::on_event`] (QMP events) and
//! [`Vm::on_exit`] (QEMU's exit status). A QEMU that exits without a SHUTDOWN event crashed.
//!
//! Soft reboot is libvirt's ACPI "fake reboot": `system_powerdown`, and when the guest powers
//! off (SHUTDOWN guest-shutdown; QEMU runs with `-no-shutdown`) the launcher resets and
//! continues the machine instead of ending it. It needs no keyboard (the demo guest has
//! `i8042.nokbd`, so ctrl-alt-del would not reach it) and no guest agent.

use crate::accel::{self, AccelChoice};
use crate::api::VmiDir;
use crate::confine::QemuUser;
use crate::console::Console;
use crate::machine::{Environment, HostPorts, MachineSpec, NetBackend, PortForward, SpecError};
use crate::qemu;
use crate::qmp::{Event, Qmp, QmpError, QmpEvent};
use crate::volumes::{self, VolumeError};
use kubevirt_api::VirtualMachineInstance;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// The launcher waits for a VMI (`sync`).
    Pending,
    Starting,
    /// A migration target: QEMU waits for the incoming migration (`-incoming defer`); the
    /// guest runs elsewhere until it completes.
    WaitingForMigration,
    Running,
    Paused,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// The last known state; also written to `DIR/state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub phase: Phase,
    /// A short CamelCase code: Started, PausedByUser, Unpaused, GuestShutdown, Stopped,
    /// Crashed, GuestPanicked, FailedToStart, ...
    pub reason: String,
    /// Details (exit status, signal, QEMU's stderr).
    pub message: String,
    pub vmi: String,
    pub accelerator: Option<accel::Accelerator>,
    pub accelerator_reason: String,
    pub qemu_pid: Option<u32>,
    pub launcher_pid: u32,
    /// The guest's interfaces and their addresses (`status.interfaces`).
    #[serde(default)]
    pub interfaces: Vec<GuestInterface>,
    /// The guest agent while it answers (`AgentConnected`); `None` when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_agent: Option<crate::agent::AgentStatus>,
    /// How the last application of `access-credentials.json` through the guest agent went
    /// (KubeVirt's `AccessCredentialsSynchronized`); `None` when there is nothing to apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_credentials: Option<AccessCredentialsStatus>,
    pub vnc_socket: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub ports: Vec<PortForward>,
    /// The vCPU topology QEMU has now (`status.currentCPUTopology`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_topology: Option<CpuTopology>,
    /// Guest memory at boot, asked for and plugged (`status.memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryState>,
    /// The last live migration, from this launcher's side (source or target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<crate::api::MigrationStatus>,
    pub timestamp: f64,
}

/// Sockets × cores × threads, KubeVirt's `CPUTopology`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTopology {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

/// KubeVirt's `MemoryStatus`, in bytes: `guest_current` is what the guest has plugged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryState {
    pub guest_at_boot: u64,
    pub guest_requested: u64,
    pub guest_current: u64,
}

/// Why a CPU or memory change cannot be applied to the running machine.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error(
        "spec.domain.cpu.sockets: {want} sockets exceed maxSockets {max}: this needs a restart"
    )]
    TooManySockets { want: u32, max: u32 },
    #[error(
        "spec.domain.cpu.sockets: reducing the sockets from {current} to {want} needs a restart"
    )]
    FewerSockets { current: u32, want: u32 },
    #[error(
        "spec.domain.cpu.sockets: machine type microvm cannot hotplug CPUs: this needs a restart"
    )]
    NoCpuHotplug,
    #[error("spec.domain.memory.guest: this VM has no memory hotplug (maxGuest unset, below 1Gi, microvm or hugepages): this needs a restart")]
    NoMemoryHotplug,
    #[error("spec.domain.memory.guest: {want} bytes is outside {boot}..={max} bytes (boot memory..maxGuest): this needs a restart")]
    MemoryOutOfRange { want: u64, boot: u64, max: u64 },
    #[error("spec.domain.memory.guest: {want} bytes is not a multiple of {block} bytes")]
    MemoryUnaligned { want: u64, block: u64 },
}

impl State {
    pub fn pending(vmi: &str) -> State {
        State {
            phase: Phase::Pending,
            reason: "WaitingForSync".into(),
            message: String::new(),
            vmi: vmi.into(),
            accelerator: None,
            accelerator_reason: String::new(),
            qemu_pid: None,
            launcher_pid: std::process::id(),
            interfaces: vec![],
            guest_agent: None,
            access_credentials: None,
            vnc_socket: None,
            console_socket: None,
            ports: vec![],
            cpu_topology: None,
            memory: None,
            migration: None,
            timestamp: now(),
        }
    }
}

/// The outcome of applying the guest agent's access credentials, in KubeVirt's words.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessCredentialsStatus {
    pub succeeded: bool,
    /// Empty on success; else which user and what the agent said.
    pub message: String,
}

/// One guest interface as `status.interfaces[]` reports it (KubeVirt's
/// `VirtualMachineInstanceNetworkInterface`): known from the launcher's own setup (the pod
/// network's addresses, the addresses its DHCP hands out), never read off the console.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestInterface {
    /// The interface's name in the VMI spec.
    pub name: String,
    pub mac: Option<String>,
    /// The first is KubeVirt's `ipAddress`.
    pub ip_addresses: Vec<String>,
    /// KubeVirt's `infoSource`: `domain` for what the launcher knows itself, with
    /// `guest-agent` and `multus-status` added where those told.
    pub info_source: String,
    /// The interface's name inside the guest, as its agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
}

/// `status.interfaces` once the guest agent has spoken (KubeVirt's merge): an interface the
/// launcher knows gets the guest's name for it (matched by MAC) and, if the launcher knows no
/// address for it (a tap on a node bridge), the guest's; the guest's other interfaces with
/// addresses follow, except loopback, as `infoSource: guest-agent`.
pub fn merge_guest_agent(
    domain: &[GuestInterface],
    agent: Option<&crate::agent::AgentStatus>,
) -> Vec<GuestInterface> {
    let Some(agent) = agent else {
        return domain.to_vec();
    };
    let same_mac = |a: &Option<String>, b: &Option<String>| matches!((a, b), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b));
    let mut out: Vec<GuestInterface> = domain
        .iter()
        .map(|d| {
            let mut d = d.clone();
            if let Some(g) = agent.interfaces.iter().find(|g| same_mac(&g.mac, &d.mac)) {
                d.interface_name = Some(g.name.clone());
                if d.ip_addresses.is_empty() {
                    d.ip_addresses = g.ip_addresses.clone();
                }
                d.info_source = match d.info_source.strip_prefix("domain") {
                    Some(rest) => format!("domain, guest-agent{rest}"),
                    None => format!("{}, guest-agent", d.info_source),
                };
            }
            d
        })
        .collect();
    for g in &agent.interfaces {
        let known = domain.iter().any(|d| same_mac(&g.mac, &d.mac));
        if !known && g.name != "lo" && !g.ip_addresses.is_empty() {
            out.push(GuestInterface {
                name: String::new(),
                mac: g.mac.clone(),
                ip_addresses: g.ip_addresses.clone(),
                info_source: "guest-agent".into(),
                interface_name: Some(g.name.clone()),
            });
        }
    }
    out
}

/// The interfaces of a machine with the addresses the guest is given: its pod interface's
/// address for the pod network's bindings (as KubeVirt reports masquerade and bridge) and
/// Multus networks' (their CNI result), user networking's
/// guest address without a pod network, none for a tap on a node bridge (only the guest
/// knows it).
pub fn guest_interfaces(
    spec: &MachineSpec,
    pod: Option<&crate::api::PodNetworkInfo>,
) -> Vec<GuestInterface> {
    spec.nics
        .iter()
        .map(|n| {
            let pod_if = match &n.backend {
                NetBackend::Pod { interface, .. } => Some(interface.as_str()),
                NetBackend::Passt { .. } => Some(crate::api::PodInterface::POD),
                _ => None,
            };
            let ips: Vec<String> = match (&n.backend, pod_if, pod) {
                (_, Some(name), Some(p)) => p
                    .interfaces
                    .iter()
                    .filter(|i| i.interface == name)
                    .flat_map(|i| &i.addresses)
                    .map(|a| a.ip.to_string())
                    .collect(),
                (NetBackend::Masquerade { guest, .. }, _, _) => vec![guest.clone()],
                _ => vec![],
            };
            // KubeVirt adds `multus-status` where the addresses come from Multus' network
            // status: here, the CNI result of a Multus network's attachment.
            let multus = pod_if.is_some_and(|i| i != crate::api::PodInterface::POD);
            GuestInterface {
                interface_name: None,
                name: n.name.clone(),
                mac: n.mac.clone(),
                ip_addresses: ips,
                info_source: if multus {
                    "domain, multus-status"
                } else {
                    "domain"
                }
                .into(),
            }
        })
        .collect()
}

/// A state change, as streamed to `subscribe`rs ([`crate::api::Event::StateChanged`]).
pub use crate::api::StateChange as StateEvent;

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Accel(#[from] accel::AccelError),
    #[error("invalid VMI for this backend: {0}")]
    Spec(#[from] SpecError),
    #[error("preparing volumes: {0}")]
    Volume(#[from] VolumeError),
    #[error("rendering QEMU's arguments: {0}")]
    Render(#[from] qemu::RenderError),
    #[error("setting up the pod network: {0}")]
    Network(#[from] crate::network::NetworkError),
    #[error("the guest's DHCP server: {0}")]
    Dhcp(#[from] crate::dhcp::DhcpError),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// KubeVirt's words for a soft reboot that has no way to reach the guest.
    #[error("VMI neither have the agent connected nor the ACPI feature enabled")]
    NoSoftReboot,
    #[error(transparent)]
    Hotplug(#[from] HotplugError),
    #[error("cannot run {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("QEMU exited during start ({status}); its stderr ({log}):\n{stderr}")]
    QemuExited {
        status: String,
        log: PathBuf,
        stderr: String,
    },
    #[error("{source}; QEMU's stderr ({log}):\n{stderr}")]
    Qmp {
        source: QmpError,
        log: PathBuf,
        stderr: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the VM is {0:?}: {1}")]
    WrongPhase(Phase, &'static str),
    #[error(transparent)]
    Migration(#[from] crate::migration::MigrationError),
    /// A memory snapshot that cannot be saved or restored (`memstate.rs`).
    #[error(transparent)]
    MemoryState(#[from] crate::api::memstate::MemoryStateError),
    #[error("{0}: not a restore instruction: {1}")]
    RestoreFile(PathBuf, crate::api::VmiDirError),
}

/// How to run VMIs on this host (what `launcher run` flags and the handler decide).
#[derive(Clone, Debug)]
pub struct Options {
    pub dir: PathBuf,
    pub image_store: Option<PathBuf>,
    /// Where containerDisk bases are extracted once and shared between VMIs.
    pub image_cache: Option<PathBuf>,
    pub allow_emulation: bool,
    pub qemu_binary: String,
    pub host_ports: HostPorts,
    pub pvc_paths: BTreeMap<String, PathBuf>,
    pub data_volume_paths: BTreeMap<String, PathBuf>,
    /// Claims whose volume is on this node only (`volumes.json`'s `localClaims`): copied by
    /// a live migration.
    pub node_local_claims: std::collections::BTreeSet<String>,
    /// Cloud-init data the handler resolved from Secrets, by volume name (`volumes.json`).
    pub cloud_init_secrets: BTreeMap<String, crate::machine::ResolvedCloudInit>,
    /// Who QEMU runs as (default KubeVirt's qemu 107:107; uid 0 keeps root). See `confine.rs`.
    pub qemu_user: QemuUser,
    /// The cluster's defaults (virt-handler's `defaults.json`); `None`: the single-node ones.
    pub defaults: Option<kubevirt_api::defaults::DefaultsConfig>,
    /// The pod network virt-handler set up and started this launcher in (`network.json`).
    pub pod_network: Option<crate::api::PodNetworkInfo>,
    /// Start QEMU as a live migration's target (`launcher run --migration-target`): the same
    /// machine, waiting with `-incoming defer` for `prepareMigrationTarget`.
    pub migration_target: bool,
}

impl Options {
    pub fn new(dir: &Path) -> Options {
        Options {
            dir: dir.to_path_buf(),
            image_store: None,
            image_cache: None,
            allow_emulation: true,
            qemu_binary: qemu::QEMU_BINARY.into(),
            host_ports: HostPorts::Ephemeral,
            pvc_paths: BTreeMap::new(),
            data_volume_paths: BTreeMap::new(),
            node_local_claims: Default::default(),
            cloud_init_secrets: BTreeMap::new(),
            qemu_user: QemuUser::default(),
            defaults: None,
            pod_network: None,
            migration_target: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Intent {
    None,
    Pause,
    Shutdown,
    Stop,
    SoftReboot,
}

pub(crate) struct Inner {
    pub(crate) state: State,
    intent: Intent,
    /// The SHUTDOWN event, if one came (guest flag, reason).
    shutdown: Option<(bool, String)>,
    panicked: bool,
    /// This QEMU was started with `-incoming defer`.
    pub(crate) target: bool,
    /// An outgoing migration runs (QEMU's own STOP at switch-over is not a pause).
    pub(crate) migrating: bool,
    /// The guest has moved to the target: QEMU's end is this VMI's success here.
    pub(crate) migrated: bool,
    /// Why the launcher cancelled the migration (KubeVirt's failure reason).
    pub(crate) cancel_reason: Option<String>,
    /// A `saveState` runs (`memstate.rs`).
    pub(crate) saving: bool,
    /// STOP events of the launcher's own `stop`s (a save's): not a pause of anyone's.
    pub(crate) expected_stops: u32,
    /// A `freeze` holds the guest (`freeze.rs`).
    pub(crate) frozen: Option<crate::freeze::Hold>,
    /// Numbers the freezes, so a timer ends only its own.
    pub(crate) freezes: u64,
}

/// One running VMI.
pub struct Vm {
    pub spec: MachineSpec,
    pub qmp: Qmp,
    pub console: Option<Console>,
    pub started: Instant,
    pub qemu_pid: u32,
    inner: Mutex<Inner>,
    events: broadcast::Sender<StateEvent>,
    final_rx: watch::Receiver<bool>,
    pub(crate) dir: PathBuf,
    /// The guest agent's channel, connected on first use; one command at a time.
    agent: tokio::sync::Mutex<Option<crate::agent::Agent>>,
    /// The access credentials the guest last got (`None`: none yet, or the last try failed,
    /// or the agent went away since).
    applied_credentials: tokio::sync::Mutex<Option<crate::api::AgentCredentials>>,
    /// `status.interfaces` as the launcher knows them, before the guest agent's merge.
    domain_interfaces: Vec<GuestInterface>,
    /// The hotpluggable volumes attached now (`hotplug.rs`); one change at a time.
    pub(crate) hotplug: tokio::sync::Mutex<crate::hotplug::Plugged>,
    /// One CPU/memory change at a time.
    resources: tokio::sync::Mutex<()>,
    /// One migration request at a time (`migration.rs`).
    pub(crate) migration_lock: tokio::sync::Mutex<()>,
    /// One freeze or unfreeze at a time (`freeze.rs`).
    pub(crate) freeze_lock: tokio::sync::Mutex<()>,
    /// [`crate::api::Event::Migration`]s: progress and outcome of a migration.
    pub(crate) migration_events: broadcast::Sender<crate::api::MigrationStatus>,
    /// [`crate::api::Event::StateSave`]s: progress of a `saveState`.
    pub(crate) save_events: broadcast::Sender<crate::api::memstate::SaveProgress>,
    /// What a saved state of this machine fits ([`crate::api::memstate::MachineFacts`]).
    pub facts: crate::api::memstate::MachineFacts,
}

/// How often the guest agent is asked while it does not answer (so `AgentConnected` comes
/// soon after the guest starts it), and while it does.
pub const AGENT_POLL_DISCONNECTED: Duration = Duration::from_secs(2);
pub const AGENT_POLL_CONNECTED: Duration = Duration::from_secs(10);

fn tail(path: &Path, max: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    String::from_utf8_lossy(&text[start..]).trim().to_string()
}

fn describe_exit(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        let name = match sig {
            libc::SIGKILL => "SIGKILL",
            libc::SIGTERM => "SIGTERM",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGABRT => "SIGABRT",
            libc::SIGINT => "SIGINT",
            libc::SIGBUS => "SIGBUS",
            _ => "signal",
        };
        format!("killed by signal {sig} ({name})")
    } else {
        format!("exit status {}", status.code().unwrap_or(-1))
    }
}

/// Write `state.json` atomically ([`crate::api::VmiDir::write_state`]).
pub fn write_state(dir: &Path, state: &State) {
    if let Err(e) = VmiDir::unchecked(dir).write_state(state) {
        tracing::warn!(error = %e, "cannot record the state");
    }
}

/// The machine a VMI becomes on this host with these options: the host's environment, the
/// volumes and the cluster's defaults the handler handed over.
pub fn machine_spec(
    vmi: &VirtualMachineInstance,
    opts: &Options,
    accelerator: accel::Accelerator,
) -> Result<MachineSpec, SpecError> {
    let mut env = Environment::detect(&opts.dir, accelerator);
    // Asking QEMU for its CPU models costs ~50 ms: only when the VMI names one.
    let named_model = vmi
        .spec
        .domain
        .cpu
        .as_ref()
        .and_then(|c| c.model.as_deref())
        .is_some_and(|m| !matches!(m, "" | "host-model" | "host-passthrough"));
    if named_model {
        env.qemu_cpu_models = crate::machine::qemu_cpu_models(&opts.qemu_binary);
    }
    env.image_store = opts.image_store.clone();
    env.host_ports = opts.host_ports.clone();
    env.pvc_paths = opts.pvc_paths.clone();
    env.data_volume_paths = opts.data_volume_paths.clone();
    env.node_local_claims = opts.node_local_claims.clone();
    env.cloud_init_secrets = opts.cloud_init_secrets.clone();
    if let Some(defaults) = &opts.defaults {
        env.defaults = defaults.clone();
    }
    env.pod_network = opts.pod_network.clone();
    MachineSpec::from_vmi(vmi, &env)
}

impl Vm {
    /// Start a VMI: choose the accelerator, build and check the machine, prepare volumes, run
    /// QEMU paused, attach QMP and the console, then continue it (unless startStrategy Paused).
    /// On error the returned error carries the reason (and QEMU's stderr if it ran).
    pub async fn start(
        vmi: &VirtualMachineInstance,
        opts: &Options,
        events: broadcast::Sender<StateEvent>,
    ) -> Result<Arc<Vm>, LaunchError> {
        let t0 = Instant::now();
        let dir = &opts.dir;
        std::fs::create_dir_all(dir).map_err(|source| LaunchError::Io {
            path: dir.clone(),
            source,
        })?;
        let guest_arch = vmi
            .spec
            .architecture
            .as_deref()
            .filter(|a| !a.is_empty())
            .or(opts.defaults.as_ref().map(|d| d.architecture.as_str()))
            .map_or(
                Some(crate::machine::Arch::Amd64),
                crate::machine::Arch::parse,
            );
        let choice: AccelChoice = accel::choose_for(guest_arch, opts.allow_emulation)?;
        let spec = machine_spec(vmi, opts, choice.accelerator)?;
        let binary = qemu::binary(spec.arch, &opts.qemu_binary).to_string();
        if spec.accelerator == accel::Accelerator::Kvm {
            opts.qemu_user.check_kvm().map_err(VolumeError::from)?;
        }
        // Rendered before anything is created: a spec QEMU's argv cannot carry fails cleanly.
        let mut argv = qemu::render(&spec)?;
        let facts = crate::api::memstate::MachineFacts::from_argv(&argv);
        // Start from a saved guest state (memory snapshot, `restore-memory.json`): checked
        // against this machine before anything is created or QEMU runs.
        let restore = {
            let vmi_dir = VmiDir::unchecked(dir);
            vmi_dir
                .read_memory_restore()
                .map_err(|e| LaunchError::RestoreFile(vmi_dir.memory_restore_file(), e))?
        };
        let restore =
            match restore {
                Some(_) if opts.migration_target => return Err(LaunchError::WrongPhase(
                    Phase::Pending,
                    "a migration target cannot also start from a saved state (restore-memory.json)",
                )),
                Some(r) => {
                    let file =
                        crate::memstate::check_restore(&r, &spec, &facts, &VmiDir::unchecked(dir))?;
                    Some((r, file))
                }
                None => None,
            };
        if opts.migration_target {
            qemu::as_migration_target(&mut argv);
        } else if restore.is_some() {
            // Paused (-S stays) until the state is loaded and the launcher continues it.
            qemu::as_restore_target(&mut argv);
        }
        // Also removes old sockets and gives QEMU's user what it opens.
        volumes::prepare(
            &spec,
            opts.image_store.as_deref(),
            opts.image_cache.as_deref(),
            opts.qemu_user,
        )?;
        let log_path = VmiDir::unchecked(dir).qemu_log();
        // The previous QEMU's log is kept as qemu.log.1; this one is rotated at its cap.
        let qemu_log = crate::api::logs::QemuLog::of(&VmiDir::unchecked(dir));
        let log = qemu_log
            .open_for_new_qemu()
            .map_err(|source| LaunchError::Io {
                path: log_path.clone(),
                source,
            })?;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                every.tick().await;
                match qemu_log.rotate_if_full() {
                    Ok(true) => tracing::info!("rotated qemu.log"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "rotating qemu.log"),
                }
            }
        });
        let log2 = log.try_clone().map_err(|source| LaunchError::Io {
            path: log_path.clone(),
            source,
        })?;
        let _ = std::fs::write(
            VmiDir::unchecked(dir).qemu_cmdline(),
            format!("{binary} {}\n", argv.join(" ")),
        );
        let mut cmd = tokio::process::Command::new(&binary);
        cmd.args(&argv)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(false)
            // Its own process group: a terminal's Ctrl+C (or `timeout`) reaches the launcher,
            // which shuts the guest down gracefully, not QEMU directly.
            .process_group(0);
        // QEMU's user (no capabilities unless root) and PR_SET_PDEATHSIG: confine.rs.
        opts.qemu_user.apply(&mut cmd);
        // The pod network's taps, handed to QEMU as the descriptors its -netdev names, and
        // the DHCP server that gives the guest its address.
        crate::network::check_host_devices(&spec, Path::new(crate::network::PCI_DEVICES))?;
        let mut plumbed = match &opts.pod_network {
            Some(pod) => Some(crate::network::plumb(&spec, pod)?),
            None => None,
        };
        let passt = match &opts.pod_network {
            Some(_) => {
                crate::network::start_passt(&spec, crate::api::PodInterface::POD, opts.qemu_user)
                    .await?
            }
            None => None,
        };
        if let Some(p) = &mut plumbed {
            p.pass_to(&mut cmd);
            for plan in std::mem::take(&mut p.dhcp) {
                let server = crate::dhcp::DhcpServer::bind(&plan.bridge, plan.server, plan.leases)?;
                let bridge = plan.bridge;
                tokio::spawn(async move {
                    let served = server
                        .serve(|l| tracing::info!(ip = %l.ip, %bridge, "DHCP lease acknowledged"))
                        .await;
                    if let Err(e) = served {
                        tracing::warn!(error = %e, "the DHCP server stopped");
                    }
                });
            }
        }
        tracing::debug!(
            uid = opts.qemu_user.uid,
            gid = opts.qemu_user.gid,
            "starting QEMU"
        );
        let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            binary: binary.clone(),
            source,
        })?;
        // QEMU holds the taps now; ours close.
        drop(plumbed);
        if let Some(mut passt) = passt {
            // passt serves this QEMU alone and leaves when it disconnects.
            tokio::spawn(async move {
                let status = passt.wait().await;
                tracing::info!(?status, "passt exited");
            });
        }
        let qemu_pid = child.id().unwrap_or(0);
        let connected = Qmp::connect_retry(&spec.qmp_socket(), Duration::from_secs(20), || {
            matches!(child.try_wait(), Ok(None))
        })
        .await;
        let fail_early = |child: &mut tokio::process::Child, e: Option<QmpError>| {
            let status = child.try_wait().ok().flatten();
            match (status, e) {
                (Some(st), _) => LaunchError::QemuExited {
                    status: describe_exit(&st),
                    log: log_path.clone(),
                    stderr: tail(&log_path, 4000),
                },
                (None, Some(source)) => LaunchError::Qmp {
                    source,
                    log: log_path.clone(),
                    stderr: tail(&log_path, 4000),
                },
                (None, None) => LaunchError::QemuExited {
                    status: "unknown".into(),
                    log: log_path.clone(),
                    stderr: tail(&log_path, 4000),
                },
            }
        };
        let (qmp, mut qmp_events) = match connected {
            Ok(c) => c,
            Err(e) => {
                // Give a dying QEMU a moment to finish writing and exiting.
                let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                let err = fail_early(&mut child, Some(e));
                let _ = child.start_kill();
                return Err(err);
            }
        };
        if let Some((r, file)) = &restore {
            let t = Instant::now();
            if let Err(e) = crate::memstate::load(&qmp, file).await {
                // QEMU exits by itself when it refuses a stream; it must not outlive the error.
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(LaunchError::MemoryState(
                    crate::api::memstate::MemoryStateError::Qemu {
                        what: "loading the saved state",
                        detail: format!(
                            "{e}; QEMU's stderr ({}):\n{}",
                            log_path.display(),
                            tail(&log_path, 4000)
                        ),
                    },
                ));
            }
            tracing::info!(vmi = %spec.vmi, bytes = r.saved.size_bytes, ms = t.elapsed().as_millis() as u64, "guest state loaded");
        }
        if spec.vnc {
            // virt-api connects to DIR/vnc.sock: a hard link to QEMU's socket, made while the
            // guest has not run yet (-S), in a directory QEMU's user cannot write.
            let (from, to) = (spec.qemu_vnc_socket(), spec.vnc_socket());
            let _ = std::fs::remove_file(&to);
            if let Err(e) = std::fs::hard_link(&from, &to) {
                tracing::warn!("VNC socket {} -> {}: {e}", from.display(), to.display());
            }
        }
        let console = if spec.serial_console {
            match Console::start(
                &spec.serial_socket(),
                &VmiDir::unchecked(dir).console_socket(),
                &VmiDir::unchecked(dir).serial_log(),
            )
            .await
            {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!("serial console: {e}");
                    None
                }
            }
        } else {
            None
        };
        if let Some(period) = spec.balloon {
            if let Err(e) = qmp
                .qom_set(
                    "/machine/peripheral/balloon0",
                    "guest-stats-polling-interval",
                    serde_json::json!(period),
                )
                .await
            {
                tracing::warn!("balloon stats polling: {e}");
            }
        }
        let ports = spec
            .nics
            .iter()
            .flat_map(|n| match &n.backend {
                NetBackend::Masquerade { forwards, .. } => forwards.clone(),
                _ => vec![],
            })
            .collect();
        let domain_interfaces = guest_interfaces(&spec, opts.pod_network.as_ref());
        let state = State {
            phase: Phase::Starting,
            reason: "Starting".into(),
            message: String::new(),
            vmi: spec.vmi.clone(),
            accelerator: Some(choice.accelerator),
            accelerator_reason: choice.reason.clone(),
            qemu_pid: Some(qemu_pid),
            launcher_pid: std::process::id(),
            interfaces: domain_interfaces.clone(),
            guest_agent: None,
            access_credentials: None,
            vnc_socket: spec.vnc.then(|| spec.vnc_socket()),
            console_socket: spec
                .serial_console
                .then(|| VmiDir::unchecked(dir).console_socket()),
            ports,
            cpu_topology: Some(CpuTopology {
                sockets: spec.cpu.sockets,
                cores: spec.cpu.cores,
                threads: spec.cpu.threads,
            }),
            memory: Some(MemoryState {
                guest_at_boot: spec.memory.bytes,
                guest_requested: spec.memory.bytes,
                guest_current: spec.memory.bytes,
            }),
            migration: opts.migration_target.then(|| {
                crate::api::MigrationStatus::new(crate::api::MigrationRole::Target, None, now())
            }),
            timestamp: now(),
        };
        let (final_tx, final_rx) = watch::channel(false);
        let hotplug = tokio::sync::Mutex::new(crate::hotplug::Plugged::at_start(vmi, &spec));
        let vm = Arc::new(Vm {
            hotplug,
            spec,
            qmp,
            console,
            started: t0,
            qemu_pid,
            inner: Mutex::new(Inner {
                state,
                intent: Intent::None,
                shutdown: None,
                panicked: false,
                target: opts.migration_target,
                migrating: false,
                migrated: false,
                cancel_reason: None,
                saving: false,
                expected_stops: 0,
                frozen: None,
                freezes: 0,
            }),
            events,
            final_rx,
            dir: dir.clone(),
            agent: tokio::sync::Mutex::new(None),
            applied_credentials: tokio::sync::Mutex::new(None),
            domain_interfaces,
            resources: tokio::sync::Mutex::new(()),
            migration_lock: tokio::sync::Mutex::new(()),
            freeze_lock: tokio::sync::Mutex::new(()),
            migration_events: broadcast::channel(64).0,
            save_events: broadcast::channel(64).0,
            facts,
        });
        vm.publish();
        tokio::spawn(vm.clone().poll_guest_agent());

        // The monitor: QMP events and QEMU's exit, in order.
        let v = vm.clone();
        tokio::spawn(async move {
            let mut events_open = true;
            loop {
                tokio::select! {
                    ev = qmp_events.recv(), if events_open => match ev {
                        Ok(ev) => v.on_event(&ev).await,
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => events_open = false,
                    },
                    st = child.wait() => {
                        // Drain events QEMU sent just before it exited.
                        while let Ok(ev) = qmp_events.try_recv() {
                            v.on_event(&ev).await;
                        }
                        v.on_exit(st.ok());
                        let _ = final_tx.send(true);
                        break;
                    }
                }
            }
        });

        if opts.migration_target {
            // No `cont`: QEMU runs the guest itself once the incoming migration completes
            // (the target has no -S), or keeps it paused if it was paused at the source.
            vm.set_phase(
                Phase::WaitingForMigration,
                crate::api::migration::reason::WAITING_FOR_MIGRATION,
                "QEMU waits for an incoming migration (prepareMigrationTarget)",
            );
        } else if let Some((r, _)) = &restore {
            // The guest goes on where it was saved: running if it ran (unless the VMI says
            // startStrategy Paused), paused if its user had paused it.
            use crate::api::memstate::reason::RESTORED;
            if r.saved.guest_running && !vm.spec.start_paused {
                if let Err(e) = vm.qmp.cont().await {
                    return Err(vm.qmp_err(e));
                }
                vm.set_phase(
                    Phase::Running,
                    RESTORED,
                    "the guest runs on from its saved state",
                );
            } else {
                vm.set_phase(
                    Phase::Paused,
                    RESTORED,
                    "the guest was restored from its saved state, paused",
                );
            }
        } else if vm.spec.start_paused {
            vm.set_phase(
                Phase::Paused,
                "StartStrategyPaused",
                "spec.startStrategy is Paused",
            );
        } else {
            if let Err(e) = vm.qmp.cont().await {
                return Err(LaunchError::Qmp {
                    source: e,
                    log: VmiDir::unchecked(dir).qemu_log(),
                    stderr: tail(&VmiDir::unchecked(dir).qemu_log(), 4000),
                });
            }
            vm.set_phase(
                Phase::Running,
                "Started",
                &format!("accelerator {}", choice.accelerator),
            );
        }
        Ok(vm)
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> State {
        self.lock().state.clone()
    }

    pub(crate) fn publish(&self) {
        let s = self.state();
        write_state(&self.dir, &s);
        let _ = self.events.send(StateEvent {
            phase: s.phase,
            reason: s.reason.clone(),
            message: s.message.clone(),
            timestamp: s.timestamp,
        });
    }

    pub(crate) fn set_phase(&self, phase: Phase, reason: &str, message: &str) {
        {
            let mut i = self.lock();
            if i.state.phase.is_final() {
                return;
            }
            if i.state.phase == phase && i.state.reason == reason {
                return;
            }
            i.state.phase = phase;
            i.state.reason = reason.into();
            i.state.message = message.into();
            i.state.timestamp = now();
        }
        self.publish();
    }

    /// QMP events → phase. Called by the monitor task only.
    async fn on_event(&self, ev: &QmpEvent) {
        tracing::debug!("QMP event {} {}", ev.event, ev.data);
        if ev.event == "MEMORY_DEVICE_SIZE_CHANGE" {
            self.on_memory_size(&ev.data);
            return;
        }
        match ev.typed() {
            Event::Stop => {
                {
                    let mut i = self.lock();
                    if i.expected_stops > 0 {
                        i.expected_stops -= 1;
                        return;
                    }
                }
                let (ending, intent, migration) = {
                    let i = self.lock();
                    let migration = i.migrating || i.state.phase == Phase::WaitingForMigration;
                    (i.shutdown.is_some(), i.intent, migration)
                };
                // QEMU stops the vCPUs itself at a migration's switch-over.
                if !ending && intent != Intent::SoftReboot && !migration {
                    let (reason, msg) = if intent == Intent::Pause {
                        ("PausedByUser", "paused on request")
                    } else {
                        (
                            "PausedByQEMU",
                            "QEMU stopped the vCPUs (I/O error, watchdog or debug)",
                        )
                    };
                    self.set_phase(Phase::Paused, reason, msg);
                }
            }
            Event::Resume => {
                let (reboot, phase) = {
                    let i = self.lock();
                    (i.intent == Intent::SoftReboot, i.state.phase)
                };
                if reboot {
                    self.lock().intent = Intent::None;
                    self.set_phase(
                        Phase::Running,
                        "SoftRebooted",
                        "the guest powered off and was restarted",
                    );
                } else if phase == Phase::Paused {
                    self.set_phase(Phase::Running, "Unpaused", "");
                }
            }
            Event::Shutdown { guest, reason } => {
                let intent = self.lock().intent;
                if guest && reason == "guest-shutdown" && intent == Intent::SoftReboot {
                    // The fake reboot: reset and continue instead of ending.
                    let r = async {
                        self.qmp.system_reset().await?;
                        self.qmp.cont().await
                    };
                    if let Err(e) = r.await {
                        tracing::warn!("soft reboot: {e}");
                    }
                    return;
                }
                // The first SHUTDOWN says why; our own `quit` after it adds a host-qmp-quit one.
                let first = {
                    let mut i = self.lock();
                    let first = i.shutdown.is_none();
                    i.shutdown.get_or_insert((guest, reason.clone()));
                    first
                };
                if !first {
                    return;
                }
                // -no-shutdown keeps QEMU alive after the guest powers off: end it.
                if reason != "host-qmp-quit" && reason != "host-signal" {
                    let _ = self.qmp.quit().await;
                }
            }
            Event::GuestPanicked { .. } => {
                self.lock().panicked = true;
                let _ = self.qmp.quit().await;
            }
            Event::Migration { status } => self.on_migration_event(&status).await,
            Event::Watchdog { action } => {
                tracing::info!("{}: watchdog fired, action {action}", self.spec.vmi);
            }
            _ => {}
        }
    }

    /// QEMU exited → final phase. A missing SHUTDOWN event means QEMU crashed.
    fn on_exit(&self, status: Option<std::process::ExitStatus>) {
        let how = status
            .as_ref()
            .map(describe_exit)
            .unwrap_or_else(|| "unknown exit".into());
        let (shutdown, intent, panicked, migrated, target) = {
            let mut i = self.lock();
            let target = i.target && i.state.phase == Phase::WaitingForMigration;
            if let Some(m) = i.state.migration.as_mut().filter(|m| m.in_progress()) {
                m.failed = true;
                m.end_timestamp = Some(now());
                if m.failure_reason.is_empty() {
                    m.failure_reason = format!("QEMU exited during the migration: {how}");
                }
            }
            (i.shutdown.clone(), i.intent, i.panicked, i.migrated, target)
        };
        let log = VmiDir::unchecked(&self.dir).qemu_log();
        let migrated_to = self
            .state()
            .migration
            .and_then(|m| m.address)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let (phase, reason, message) = match (shutdown, panicked) {
            _ if migrated => (
                Phase::Succeeded,
                crate::api::migration::reason::MIGRATED,
                format!("the guest migrated to {migrated_to}"),
            ),
            (Some((_, r)), _)
                if target
                    && !(r == "host-qmp-quit"
                        && matches!(intent, Intent::Stop | Intent::Shutdown)) =>
            {
                (
                    Phase::Failed,
                    crate::api::migration::reason::MIGRATION_FAILED,
                    format!("the incoming migration did not complete; QEMU {how}"),
                )
            }
            (None, _) if target => (
                Phase::Failed,
                crate::api::migration::reason::MIGRATION_FAILED,
                format!(
                    "the incoming migration did not complete; QEMU {how}; last stderr: {}",
                    tail(&log, 1000)
                ),
            ),
            (_, true) => (
                Phase::Failed,
                "GuestPanicked",
                format!("the guest kernel panicked; QEMU {how}"),
            ),
            (Some((true, r)), _) if r == "guest-shutdown" => (
                Phase::Succeeded,
                "GuestShutdown",
                "the guest powered off".to_string(),
            ),
            (Some((_, r)), _)
                if r == "host-qmp-quit" && matches!(intent, Intent::Stop | Intent::Shutdown) =>
            {
                (
                    Phase::Succeeded,
                    "Stopped",
                    "stopped by the host".to_string(),
                )
            }
            (Some((_, r)), _) => (
                Phase::Failed,
                "Stopped",
                format!("QEMU stopped ({r}) without a request from the launcher; {how}"),
            ),
            (None, _) => (
                Phase::Failed,
                "Crashed",
                format!(
                    "QEMU exited without a SHUTDOWN event: {how}; last stderr: {}",
                    tail(&log, 1000)
                ),
            ),
        };
        self.set_phase(phase, reason, &message);
        volumes::cleanup(&self.spec);
    }

    /// The guest agent's channel, connected if it is not.
    pub(crate) async fn agent(
        &self,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, crate::agent::Agent>, crate::agent::AgentError>
    {
        let mut guard = self.agent.lock().await;
        if guard.is_none() {
            *guard = Some(crate::agent::Agent::connect(&self.spec.guest_agent_socket()).await?);
        }
        tokio::sync::MutexGuard::try_map(guard, Option::as_mut).map_err(|_| {
            crate::agent::AgentError::Protocol {
                command: "connect".into(),
                detail: "no guest agent channel".into(),
            }
        })
    }

    /// Polls the guest agent while the VM runs: `AgentConnected`, guest OS info and the
    /// guest's addresses follow what it answers. A paused guest cannot answer; what it said
    /// last stays.
    async fn poll_guest_agent(self: Arc<Self>) {
        let mut final_rx = self.final_rx.clone();
        loop {
            if *final_rx.borrow() {
                return;
            }
            if self.state().phase == Phase::Running {
                let status = match self.agent().await {
                    Ok(mut a) => a.status().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = &status {
                    tracing::trace!(error = %e, "guest agent not answering");
                }
                let up = status.is_ok();
                self.set_guest_agent(status.ok());
                self.sync_access_credentials(up).await;
            }
            let wait = if self.lock().state.guest_agent.is_some() {
                AGENT_POLL_CONNECTED
            } else {
                AGENT_POLL_DISCONNECTED
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = final_rx.changed() => {}
            }
        }
    }

    /// Applies `access-credentials.json` through the guest agent when it differs from what the
    /// guest last got (the handler rewrites it when a Secret changes; a guest agent that went
    /// away gets it again), and reports the outcome as KubeVirt's access credential manager
    /// does.
    async fn sync_access_credentials(&self, agent_up: bool) {
        let wanted = match VmiDir::unchecked(&self.dir).read_access_credentials() {
            Ok(Some(c)) if !c.is_empty() => c,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the access credentials");
                return;
            }
        };
        let mut applied = self.applied_credentials.lock().await;
        if !agent_up {
            *applied = None;
            self.set_access_credentials(AccessCredentialsStatus {
                succeeded: false,
                message: "Guest agent is offline".into(),
            });
            return;
        }
        if applied.as_ref() == Some(&wanted) {
            return;
        }
        let mut errors = Vec::new();
        match self.agent().await {
            Err(_) => errors.push("Guest agent is offline".to_string()),
            Ok(mut agent) => {
                for (user, keys) in &wanted.authorized_keys {
                    if let Err(e) = agent.set_authorized_keys(user, keys).await {
                        errors.push(format!(
                            "Error encountered writing ssh pub key access credentials for user [{user}]: {e}"
                        ));
                    }
                }
                for (user, password) in &wanted.passwords {
                    if let Err(e) = agent.set_user_password(user, password).await {
                        errors.push(format!(
                            "Error encountered setting password for user [{user}]: {e}"
                        ));
                    }
                }
            }
        }
        let ok = errors.is_empty();
        tracing::info!(
            users = wanted.authorized_keys.len() + wanted.passwords.len(),
            ok,
            "access credentials applied through the guest agent"
        );
        // A failure is retried at the next poll.
        *applied = ok.then_some(wanted);
        self.set_access_credentials(AccessCredentialsStatus {
            succeeded: ok,
            message: errors.join("; "),
        });
    }

    fn set_access_credentials(&self, status: AccessCredentialsStatus) {
        {
            let mut i = self.lock();
            if i.state.phase.is_final() || i.state.access_credentials.as_ref() == Some(&status) {
                return;
            }
            i.state.access_credentials = Some(status);
            i.state.timestamp = now();
        }
        self.publish();
    }

    fn set_guest_agent(&self, status: Option<crate::agent::AgentStatus>) {
        {
            let mut i = self.lock();
            if i.state.phase.is_final() || i.state.guest_agent == status {
                return;
            }
            if i.state.guest_agent.is_some() != status.is_some() {
                tracing::info!(connected = status.is_some(), "guest agent");
            }
            i.state.interfaces = merge_guest_agent(&self.domain_interfaces, status.as_ref());
            i.state.guest_agent = status;
            i.state.timestamp = now();
        }
        self.publish();
    }

    /// The `guestosinfo` subresource, asked of the agent now.
    pub async fn guest_info(
        &self,
    ) -> Result<kubevirt_api::guestagent::GuestAgentInfo, crate::agent::AgentError> {
        self.agent().await?.guest_info().await
    }

    /// The `userlist` subresource.
    pub async fn user_list(
        &self,
    ) -> Result<kubevirt_api::guestagent::GuestOSUserList, crate::agent::AgentError> {
        self.agent().await?.user_list().await
    }

    /// The `filesystemlist` subresource.
    pub async fn filesystem_list(
        &self,
    ) -> Result<kubevirt_api::guestagent::FileSystemList, crate::agent::AgentError> {
        self.agent().await?.filesystem_list().await
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StateEvent> {
        self.events.subscribe()
    }

    /// Progress of `saveState`s ([`crate::api::Event::StateSave`]).
    pub fn subscribe_saves(&self) -> broadcast::Receiver<crate::api::memstate::SaveProgress> {
        self.save_events.subscribe()
    }

    /// Migration progress and outcomes ([`crate::api::Event::Migration`]).
    pub fn subscribe_migration(&self) -> broadcast::Receiver<crate::api::MigrationStatus> {
        self.migration_events.subscribe()
    }

    /// Wait until QEMU has exited and the final phase is set.
    pub async fn wait(&self) -> State {
        let mut rx = self.final_rx.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        self.state()
    }

    fn ensure_alive(&self, what: &'static str) -> Result<(), LaunchError> {
        let p = self.lock().state.phase;
        if p.is_final() {
            return Err(LaunchError::WrongPhase(p, what));
        }
        Ok(())
    }

    /// Alive, with the guest here (not a migration target still waiting) and no outgoing
    /// migration that the operation would disturb.
    pub(crate) fn ensure_guest(&self, what: &'static str) -> Result<(), LaunchError> {
        let (p, migrating, saving) = {
            let i = self.lock();
            (i.state.phase, i.migrating, i.saving)
        };
        if p.is_final() || p == Phase::WaitingForMigration {
            return Err(LaunchError::WrongPhase(p, what));
        }
        if migrating {
            return Err(crate::migration::MigrationError::InProgress(what).into());
        }
        if saving {
            return Err(crate::api::memstate::MemoryStateError::InProgress.into());
        }
        Ok(())
    }

    pub(crate) fn qmp_err(&self, e: QmpError) -> LaunchError {
        let log = VmiDir::unchecked(&self.dir).qemu_log();
        LaunchError::Qmp {
            source: e,
            stderr: tail(&log, 2000),
            log,
        }
    }

    pub async fn pause(&self) -> Result<(), LaunchError> {
        self.ensure_guest("cannot pause")?;
        {
            let mut i = self.lock();
            i.intent = Intent::Pause;
            // The user's pause outlasts a snapshot's freeze: its unfreeze leaves it paused.
            if let Some(h) = i.frozen.as_mut() {
                if h.by == crate::freeze::FrozenBy::Stop {
                    h.by = crate::freeze::FrozenBy::AlreadyPaused;
                }
            }
        }
        self.qmp.stop().await.map_err(|e| self.qmp_err(e))?;
        self.set_phase(Phase::Paused, "PausedByUser", "paused on request");
        Ok(())
    }

    pub async fn unpause(&self) -> Result<(), LaunchError> {
        self.ensure_guest("cannot unpause")?;
        {
            let mut i = self.lock();
            i.intent = Intent::None;
            // The guest runs again: a freeze that held it by stopping it (or found it
            // paused) holds nothing now, and must not make a later freeze think it is done.
            if i.frozen
                .is_some_and(|h| h.by != crate::freeze::FrozenBy::Agent)
            {
                i.frozen = None;
            }
        }
        self.qmp.cont().await.map_err(|e| self.qmp_err(e))?;
        self.set_phase(Phase::Running, "Unpaused", "");
        Ok(())
    }

    /// ACPI power button; if the guest is still running after `grace`, a hard stop.
    pub async fn shutdown(self: &Arc<Self>, grace: Duration) -> Result<(), LaunchError> {
        self.ensure_alive("cannot shut down")?;
        if self.lock().state.phase == Phase::WaitingForMigration {
            // No guest here yet to press a power button for.
            return self.stop().await;
        }
        self.lock().intent = Intent::Shutdown;
        self.qmp
            .system_powerdown()
            .await
            .map_err(|e| self.qmp_err(e))?;
        let vm = self.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(grace, vm.wait()).await.is_err() {
                tracing::info!("{}: grace period over, stopping", vm.spec.vmi);
                let _ = vm.stop().await;
            }
        });
        Ok(())
    }

    /// Hard stop: QMP quit, and SIGKILL if QEMU does not answer.
    pub async fn stop(&self) -> Result<(), LaunchError> {
        self.ensure_alive("cannot stop")?;
        self.lock().intent = Intent::Stop;
        if self.qmp.quit().await.is_err() {
            unsafe { libc::kill(self.qemu_pid as i32, libc::SIGKILL) };
        }
        Ok(())
    }

    pub async fn reset(&self) -> Result<(), LaunchError> {
        self.ensure_guest("cannot reset")?;
        self.qmp.system_reset().await.map_err(|e| self.qmp_err(e))
    }

    /// See the module documentation: ACPI power button, then reset instead of power off.
    /// KubeVirt's soft reboot: the ACPI power button (the guest powers off, the launcher
    /// resets and continues it), or, without ACPI, a reboot asked of the guest agent.
    pub async fn soft_reboot(&self) -> Result<(), LaunchError> {
        self.ensure_guest("cannot reboot")?;
        if !self.spec.acpi {
            if self.lock().state.guest_agent.is_none() {
                return Err(LaunchError::NoSoftReboot);
            }
            return self
                .agent()
                .await?
                .shutdown(crate::agent::ShutdownMode::Reboot)
                .await
                .map_err(LaunchError::from);
        }
        self.lock().intent = Intent::SoftReboot;
        self.qmp
            .system_powerdown()
            .await
            .map_err(|e| self.qmp_err(e))
    }

    /// Grows the running machine to `sockets` and `guest_bytes` of memory (either may be
    /// `None`: unchanged), as KubeVirt's LiveUpdate does, in the same QEMU: the missing sockets'
    /// vCPUs are `device_add`ed (ids `vcpu-s<socket>-c<core>-t<thread>`), the virtio-mem
    /// device's `requested-size` is set. The guest plugs the memory in its own time; QEMU
    /// reports each step (`MEMORY_DEVICE_SIZE_CHANGE`), which updates `memory.guestCurrent`.
    pub async fn set_resources(
        &self,
        sockets: Option<u32>,
        guest_bytes: Option<u64>,
    ) -> Result<State, LaunchError> {
        self.ensure_guest("cannot hotplug")?;
        let _one = self.resources.lock().await;
        let cpu = &self.spec.cpu;
        let current = self.state().cpu_topology.map_or(cpu.sockets, |t| t.sockets);
        if let Some(want) = sockets.filter(|w| *w != current) {
            if want < current {
                return Err(HotplugError::FewerSockets { current, want }.into());
            }
            if self.spec.profile == crate::machine::Profile::Microvm {
                return Err(HotplugError::NoCpuHotplug.into());
            }
            if want > cpu.max_sockets {
                return Err(HotplugError::TooManySockets {
                    want,
                    max: cpu.max_sockets,
                }
                .into());
            }
            let mut slots = self
                .qmp
                .query_hotpluggable_cpus()
                .await
                .map_err(|e| self.qmp_err(e))?;
            slots.sort_by_key(|c| (c.props.socket_id, c.props.core_id, c.props.thread_id));
            for slot in slots
                .iter()
                .filter(|c| c.qom_path.is_none() && c.props.socket_id.unwrap_or(0) < want)
            {
                self.qmp
                    .add_cpu(&slot.r#type, &slot.props)
                    .await
                    .map_err(|e| self.qmp_err(e))?;
            }
            tracing::info!(vmi = %self.spec.vmi, from = current, to = want, "CPU sockets hotplugged");
            {
                let mut i = self.lock();
                i.state.cpu_topology = Some(CpuTopology {
                    sockets: want,
                    cores: cpu.cores,
                    threads: cpu.threads,
                });
                i.state.timestamp = now();
            }
            self.publish();
        }
        let requested = self
            .state()
            .memory
            .map_or(self.spec.memory.bytes, |m| m.guest_requested);
        if let Some(want) = guest_bytes.filter(|w| *w != requested) {
            let boot = self.spec.memory.bytes;
            let Some(h) = &self.spec.memory.hotplug else {
                return Err(HotplugError::NoMemoryHotplug.into());
            };
            if want < boot || want > h.max_bytes {
                return Err(HotplugError::MemoryOutOfRange {
                    want,
                    boot,
                    max: h.max_bytes,
                }
                .into());
            }
            if !(want - boot).is_multiple_of(h.block_size) {
                return Err(HotplugError::MemoryUnaligned {
                    want,
                    block: h.block_size,
                }
                .into());
            }
            let path = format!("/machine/peripheral/{}", crate::machine::VIRTIO_MEM_ID);
            self.qmp
                .qom_set(&path, "requested-size", serde_json::json!(want - boot))
                .await
                .map_err(|e| self.qmp_err(e))?;
            let plugged: u64 = self
                .qmp
                .qom_get(&path, "size")
                .await
                .map_err(|e| self.qmp_err(e))?;
            tracing::info!(vmi = %self.spec.vmi, bytes = want, plugged, "guest memory requested");
            {
                let mut i = self.lock();
                i.state.memory = Some(MemoryState {
                    guest_at_boot: boot,
                    guest_requested: want,
                    guest_current: boot + plugged,
                });
                i.state.timestamp = now();
            }
            self.publish();
        }
        Ok(self.state())
    }

    /// QEMU's `MEMORY_DEVICE_SIZE_CHANGE` of the virtio-mem device: what the guest has plugged.
    fn on_memory_size(&self, data: &serde_json::Value) {
        if data.get("id").and_then(|v| v.as_str()) != Some(crate::machine::VIRTIO_MEM_ID) {
            return;
        }
        let Some(size) = data.get("size").and_then(|v| v.as_u64()) else {
            return;
        };
        {
            let mut i = self.lock();
            let boot = self.spec.memory.bytes;
            let m = i.state.memory.get_or_insert(MemoryState {
                guest_at_boot: boot,
                guest_requested: boot,
                guest_current: boot,
            });
            m.guest_current = boot.saturating_add(size);
            i.state.timestamp = now();
        }
        self.publish();
    }

    pub async fn set_balloon(&self, bytes: u64) -> Result<(), LaunchError> {
        self.ensure_guest("cannot set the balloon")?;
        self.qmp.balloon(bytes).await.map_err(|e| self.qmp_err(e))
    }

    /// vCPU times (from the vCPU threads' /proc stat), QEMU's resident memory, balloon and
    /// guest memory, block I/O, and the counters of the VMI's taps ([`crate::api::stats`]).
    pub async fn stats(&self) -> Result<serde_json::Value, LaunchError> {
        use crate::api::stats::{self, VcpuStats, VmiStats};
        self.ensure_alive("no stats")?;
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mut vcpus = Vec::new();
        for c in self
            .qmp
            .query_cpus_fast()
            .await
            .map_err(|e| self.qmp_err(e))?
        {
            let stat = std::fs::read_to_string(format!(
                "/proc/{}/task/{}/stat",
                self.qemu_pid, c.thread_id
            ))
            .unwrap_or_default();
            // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
            let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = after.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            let delay_seconds = std::fs::read_to_string(format!(
                "/proc/{}/task/{}/schedstat",
                self.qemu_pid, c.thread_id
            ))
            .ok()
            .and_then(|s| stats::schedstat_delay_seconds(&s));
            vcpus.push(VcpuStats {
                cpu: c.cpu_index.into(),
                thread_id: c.thread_id,
                user_seconds: ticks(11) / tick,
                system_seconds: ticks(12) / tick,
                delay_seconds,
            });
        }
        let balloon = self.qmp.query_balloon().await.ok();
        let guest: Option<crate::qmp::GuestStats> = if self.spec.balloon.is_some() {
            self.qmp
                .qom_get("/machine/peripheral/balloon0", "guest-stats")
                .await
                .ok()
        } else {
            None
        };
        let resident_bytes = std::fs::read_to_string(format!("/proc/{}/status", self.qemu_pid))
            .ok()
            .and_then(|s| stats::vm_rss_bytes(&s));
        let block = self
            .qmp
            .query_blockstats()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|b| {
                Some(stats::BlockStats {
                    drive: stats::drive_name(&b.device, &b.qdev)?,
                    rd_bytes: b.stats.rd_bytes,
                    wr_bytes: b.stats.wr_bytes,
                    rd_operations: b.stats.rd_operations,
                    wr_operations: b.stats.wr_operations,
                    flush_operations: b.stats.flush_operations,
                })
            })
            .collect();
        // QEMU runs in the VMI's network namespace: its /proc net/dev lists the taps.
        let net_dev =
            std::fs::read_to_string(format!("/proc/{}/net/dev", self.qemu_pid)).unwrap_or_default();
        let net = self
            .spec
            .nics
            .iter()
            .filter_map(|n| match &n.backend {
                crate::machine::NetBackend::Pod { tap, .. }
                | crate::machine::NetBackend::Bridge { tap, .. } => {
                    stats::tap_counters(&net_dev, tap, &n.name)
                }
                _ => None,
            })
            .collect();
        let reply = VmiStats {
            vcpus,
            memory: stats::MemoryStats {
                guest_bytes: self.spec.memory.bytes,
                resident_bytes,
                balloon_actual_bytes: balloon.map(|b| b.actual),
                guest_stats: guest.map(|g| g.stats),
            },
            block,
            net,
            qemu_pid: Some(self.qemu_pid),
        };
        // Numbers and strings only: serializing cannot fail.
        Ok(serde_json::to_value(reply).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    /// KubeVirt's merge of the guest agent's interfaces: the guest's name for a known NIC
    /// (by MAC, any case), its addresses only where the launcher knows none, its other
    /// interfaces with addresses after them, loopback left out.
    #[test]
    fn guest_agent_interfaces_merge_as_kubevirt_reports_them() {
        use crate::agent::{AgentStatus, GuestNic};
        let domain = vec![
            GuestInterface {
                name: "default".into(),
                mac: Some("52:54:00:aa:bb:cc".into()),
                ip_addresses: vec!["10.244.0.5".into()],
                info_source: "domain".into(),
                interface_name: None,
            },
            GuestInterface {
                name: "blue".into(),
                mac: Some("52:54:00:dd:ee:ff".into()),
                ip_addresses: vec![],
                info_source: "domain, multus-status".into(),
                interface_name: None,
            },
        ];
        assert_eq!(merge_guest_agent(&domain, None), domain);
        let nic = |name: &str, mac: Option<&str>, ips: &[&str]| GuestNic {
            name: name.into(),
            mac: mac.map(String::from),
            ip_addresses: ips.iter().map(|s| s.to_string()).collect(),
        };
        let agent = AgentStatus {
            interfaces: vec![
                nic("lo", None, &["127.0.0.1"]),
                nic("eth0", Some("52:54:00:AA:BB:CC"), &["10.0.2.2"]),
                nic("eth1", Some("52:54:00:dd:ee:ff"), &["192.168.7.3"]),
                nic("docker0", Some("02:42:00:00:00:01"), &["172.17.0.1"]),
                nic("dummy0", Some("02:42:00:00:00:02"), &[]),
            ],
            ..Default::default()
        };
        let merged = merge_guest_agent(&domain, Some(&agent));
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[0].interface_name.as_deref(), Some("eth0"));
        assert_eq!(
            merged[0].ip_addresses,
            ["10.244.0.5"],
            "the pod IP stays first"
        );
        assert_eq!(merged[0].info_source, "domain, guest-agent");
        assert_eq!(merged[1].ip_addresses, ["192.168.7.3"]);
        assert_eq!(merged[1].info_source, "domain, guest-agent, multus-status");
        assert_eq!(merged[2].interface_name.as_deref(), Some("docker0"));
        assert_eq!(merged[2].info_source, "guest-agent");
        assert_eq!(merged[2].name, "");
    }

    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_statuses_are_described() {
        assert_eq!(
            describe_exit(&std::process::ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe_exit(&std::process::ExitStatus::from_raw(1 << 8)),
            "exit status 1"
        );
    }

    /// The cluster's defaults the handler hands over decide what admission left open (here:
    /// the binding of the default pod interface), not the launcher's own single-node defaults.
    #[test]
    fn the_handlers_cluster_defaults_decide_the_default_binding() {
        use kubevirt_api::defaults::{DefaultBinding, DefaultsConfig};
        let vmi: VirtualMachineInstance = serde_yaml::from_str(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
             metadata: {name: d, namespace: default}\n\
             spec: {domain: {devices: {}, memory: {guest: 64Mi}}}\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut opts = Options::new(dir.path());
        let backend = |opts: &Options| {
            let spec = machine_spec(&vmi, opts, accel::Accelerator::Tcg).unwrap();
            assert_eq!(spec.nics.len(), 1, "{:?}", spec.nics);
            spec.nics[0].backend.clone()
        };
        // A launcher run by hand: the single-node masquerade default.
        assert!(matches!(backend(&opts), NetBackend::Masquerade { .. }));
        // The cluster says bridge (KubeVirt's own default).
        opts.defaults = Some(DefaultsConfig {
            default_network_interface: DefaultBinding::Bridge,
            ..DefaultsConfig::default()
        });
        assert!(matches!(backend(&opts), NetBackend::Bridge { .. }));
    }
}

//! virt-handler for one node: starts a launcher for every VMI placed on this node, reports
//! what the launcher sees as the VMI's status, stops launchers of deleted VMIs, and keeps the
//! Node object (labels, heartbeat).
//!
//! Everything it needs is on disk (`<data>/vms/<key>/`, [`VmiDir`]: the launcher's sockets,
//! `launcher.pid`, `state.json`) or in the API server, so a restarted handler adopts running
//! launchers: nothing is kept in memory that a crash would lose. Launchers run in their own
//! session (`launcher run --detach`) and outlive the handler.

pub mod cleanup;
pub mod cni;
pub mod hotplug;
pub mod local_volumes;
pub mod memdump;
pub mod memstore;
pub mod metrics;
pub mod migration;
pub mod multus;
pub mod podnet;
pub mod rest;
pub mod scrape;
pub mod secrets;
pub mod status;
pub mod tls;
pub mod volumes;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use kubevirt_api::status::{condition, reason, VmiPhase};
use kubevirt_api::VirtualMachineInstance;
use kubevirt_launcher::api::{
    AgentCredentials, LauncherClient, NodeVolumes, Phase, Request, State, VmiDir, VmiDirError,
};
use kubevirt_runtime::events;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    /// VM directories live under `<data_dir>/vms/<key>` ([`VmiDir`]).
    pub data_dir: PathBuf,
    /// The OCI image layout containerDisks are resolved from.
    pub image_store: Option<PathBuf>,
    /// The `kubevirt-rs` binary that runs `launcher run`.
    pub launcher_bin: PathBuf,
    /// The cluster configuration, followed live: `useEmulation` applies to the next VMI
    /// started.
    pub cluster: kubevirt_runtime::cluster::ClusterConfigRx,
    /// Where PersistentVolume `local.path`s and hostDisk paths may point
    /// (`--host-path-root`; docs/security.md).
    pub host_paths: kubevirt_runtime::host_path::HostPathPolicy,
    /// The user QEMU runs as (`launcher run --qemu-uid/--qemu-gid`).
    pub qemu_user: kubevirt_launcher::confine::QemuUser,
    /// The pod network every VMI of this node gets (a namespace + CNI `ADD`); `None` runs
    /// VMs on user-mode networking (no root, or no CNI plugins: see [`pod_network`]).
    pub pod_network: Option<Arc<podnet::PodNetwork>>,
    /// How often the Node's heartbeat is written ([`HEARTBEAT_INTERVAL`]).
    pub heartbeat_interval: Duration,
    /// Where other nodes reach this node (the Node's `InternalIP`): the migration proxy
    /// listens there for incoming migrations.
    pub node_address: std::net::IpAddr,
    /// The port of this node's mutual-TLS endpoint on `node_address` ([`rest`]; 0: any free
    /// port, published on the Node).
    pub handler_port: u16,
    /// The port of this node's `/metrics` listener on `node_address` ([`scrape`]; 0: any
    /// free port, published on the Node); `None`: no listener (the server's own node, whose
    /// per-VMI metrics the server's `/metrics` serves).
    pub metrics_port: Option<u16>,
    /// Reclaim the local-path volumes pinned to this node whose claim is gone: a node apart
    /// from the server (whose provisioner reclaims its own node's).
    pub reclaim_local_volumes: bool,
}

/// The node's pod network, when this host can give VMIs one: root (namespaces, CNI), the CNI
/// plugins the conflist names, `ip` and `nft`. Otherwise why not, for a loud warning.
pub fn pod_network(
    data_dir: &Path,
    node: podnet::NodeNetwork,
) -> Result<podnet::PodNetwork, String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    for tool in ["ip", "nft"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            return Err(format!("`{tool}` is not installed (scripts/deps.sh)"));
        }
    }
    let cni = cni::Cni::new(data_dir.join("cni").join("cache"));
    let net = podnet::PodNetwork::new(node, cni).map_err(|e| e.to_string())?;
    for p in net.plugins() {
        net.cni.find_plugin(&p).map_err(|e| e.to_string())?;
    }
    Ok(net)
}

impl Config {
    pub fn emulation(&self) -> bool {
        self.cluster.borrow().use_emulation
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

struct Context {
    client: Client,
    config: Config,
    followers: Arc<Followers>,
    /// Follows migration targets' launchers (their VMIs are not yet this node's).
    target_followers: Arc<Followers>,
    /// The proxies of the migrations this node takes part in.
    migrations: migration::Proxies,
    /// This node's certificate of the cluster CA: its endpoint and the migration proxies.
    node_tls: Arc<tls::Issued>,
    recorder: Recorder,
    /// Reconciles hold it shared; the sweep holds it exclusively while it decides a directory
    /// is an orphan and removes it, so no launcher is spawned into a directory being removed.
    dirs: tokio::sync::RwLock<()>,
}

impl Context {
    async fn event(
        &self,
        vmi: &VirtualMachineInstance,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        events::publish_event(&self.recorder, &vmi.object_ref(&()), type_, reason, note).await;
    }
}

/// KubeVirt's label for the node a VMI runs on.
pub const NODE_LABEL: &str = "kubevirt.io/nodeName";

/// The VMI's directory, `<data_dir>/vms/<key>` ([`VmiDir`] checks both names and that its
/// sockets' paths fit).
pub fn vmi_dir(config: &Config, namespace: &str, name: &str) -> Result<VmiDir, VmiDirError> {
    VmiDir::new(&config.data_dir, namespace, name)
}

/// The launcher's state: live over its socket, else the last one it wrote. A launcher that
/// is gone while its last state says the VM runs died with it (QEMU dies with its launcher):
/// that is reported as Failed, reason `LauncherExited`.
async fn launcher_state(dir: &VmiDir) -> Option<State> {
    let live = async {
        let mut c = LauncherClient::connect(dir)
            .await?
            .with_timeout(Duration::from_secs(10));
        c.call(Request::State).await
    };
    match live.await {
        Ok(r) => {
            if let Some(s) = r.into_state() {
                return Some(s);
            }
        }
        Err(e) => {
            tracing::trace!(dir = %dir.path().display(), error = %e, "launcher not answering")
        }
    }
    let mut s = dir.read_state().ok()?;
    if !s.phase.is_final() && !process_alive(s.launcher_pid) {
        s.message = format!(
            "the launcher (pid {}) exited while the VM was {:?}; its QEMU went with it",
            s.launcher_pid, s.phase
        );
        s.phase = Phase::Failed;
        s.reason = reason::LAUNCHER_EXITED.into();
    }
    Some(s)
}

/// True while `pid` exists and is not a zombie.
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Follows a launcher's event stream (`subscribe` on its socket) and asks for a reconcile of
/// its VMI on every event and when the stream ends (the launcher exited). This is what makes
/// status changes reach the API within milliseconds instead of at the next poll.
struct Followers {
    active: std::sync::Mutex<std::collections::HashSet<VmiDir>>,
    trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<VirtualMachineInstance>>,
}

impl Followers {
    fn follow(self: &Arc<Self>, dir: &VmiDir, vmi: &VirtualMachineInstance) {
        {
            let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            if !active.insert(dir.clone()) {
                return;
            }
        }
        let this = self.clone();
        let dir = dir.clone();
        let obj = ObjectRef::from_obj(vmi);
        tokio::spawn(async move {
            if let Err(e) = this.stream(&dir, &obj).await {
                tracing::debug!(dir = %dir.path().display(), error = %e, "launcher event stream ended");
            }
            this.active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&dir);
            let _ = this.trigger.unbounded_send(obj);
        });
    }

    async fn stream(
        &self,
        dir: &VmiDir,
        obj: &ObjectRef<VirtualMachineInstance>,
    ) -> Result<(), kubevirt_launcher::api::ClientError> {
        let mut events = LauncherClient::connect(dir).await?.subscribe().await?;
        // A change between the reconcile that started following and the subscription shows
        // in the subscription's first state: look again once.
        if self.trigger.unbounded_send(obj.clone()).is_err() {
            return Ok(());
        }
        while let Some(ev) = events.next().await {
            ev?;
            if self.trigger.unbounded_send(obj.clone()).is_err() {
                break;
            }
        }
        Ok(())
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

async fn patch_status(
    api: &Api<VirtualMachineInstance>,
    name: &str,
    status: Value,
) -> Result<(), Error> {
    // VMIs have no status subresource in KubeVirt: the status goes through the main endpoint.
    kubevirt_runtime::status::write_status_no_subresource(api, name, status).await?;
    Ok(())
}

fn spawn_launcher(
    ctx: &Context,
    dir: &VmiDir,
    vmi: &VirtualMachineInstance,
    volumes: &NodeVolumes,
    credentials: &AgentCredentials,
    network: Option<&kubevirt_launcher::api::PodNetworkInfo>,
    migration_target: bool,
) -> Result<(), Error> {
    let config = &ctx.config;
    // A migration target's events go to the target controller: its VMI is not this node's.
    let followers = if migration_target {
        &ctx.target_followers
    } else {
        &ctx.followers
    };
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir.path()).map_err(io(dir.path()))?;
    let file = dir.vmi_file();
    std::fs::write(&file, serde_json::to_vec(vmi).unwrap_or_default()).map_err(io(&file))?;
    dir.write_volumes(volumes).map_err(|e| Error::Io {
        path: dir.volumes_file().display().to_string(),
        source: std::io::Error::other(e),
    })?;
    if !credentials.is_empty() {
        dir.write_access_credentials(credentials)
            .map_err(|e| Error::Io {
                path: dir.access_credentials_file().display().to_string(),
                source: std::io::Error::other(e),
            })?;
    }
    // The launcher defaults what admission left open with the cluster's current defaults,
    // not its own.
    let defaults = config.cluster.borrow().defaults();
    dir.write_defaults(&defaults).map_err(|e| Error::Io {
        path: dir.defaults_file().display().to_string(),
        source: std::io::Error::other(e),
    })?;
    let netns = match network {
        Some(n) => {
            dir.write_network(n).map_err(|e| Error::Io {
                path: dir.network_file().display().to_string(),
                source: std::io::Error::other(e),
            })?;
            Some(std::fs::File::open(&n.netns).map_err(io(&n.netns))?)
        }
        None => None,
    };
    let spawned = dir.spawned_marker();
    std::fs::write(&spawned, b"").map_err(io(&spawned))?;
    let mut cmd = tokio::process::Command::new(&config.launcher_bin);
    cmd.arg("launcher")
        .arg("run")
        .args(kubevirt_launcher::logging::launcher_args())
        .arg("-f")
        .arg(&file)
        .arg("--dir")
        .arg(dir.path())
        .arg(format!("--allow-emulation={}", config.emulation()))
        .arg(format!("--qemu-uid={}", config.qemu_user.uid))
        .arg(format!("--qemu-gid={}", config.qemu_user.gid))
        .arg("--detach")
        .args(migration_target.then_some("--migration-target"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(ns) = netns {
        use std::os::fd::AsRawFd;
        // The launcher (and the QEMU it starts) lives in the VMI's network namespace, as
        // KubeVirt's launcher lives in its Pod's.
        // SAFETY: setns is async-signal-safe; the descriptor stays open until after the fork
        // (the closure owns the file).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    if let Some(store) = &config.image_store {
        cmd.arg("--image-store").arg(store);
        cmd.arg("--image-cache")
            .arg(config.data_dir.join("image-cache"));
    }
    // The detaching parent waits until the VM runs (or fails); the launcher itself lives on in
    // its own session, whatever happens to us.
    let name = vmi.name_any();
    let (followers, obj) = (followers.clone(), ObjectRef::from_obj(vmi));
    let (dir, vmi_key) = (
        dir.clone(),
        format!("{}/{name}", vmi.namespace().unwrap_or_default()),
    );
    tokio::spawn(async move {
        let failure = match cmd.status().await {
            Ok(s) if s.success() => {
                tracing::info!(vmi = %name, "launcher started");
                None
            }
            Ok(s) => Some(format!("the launcher exited ({s}) before the VM ran")),
            Err(e) => Some(format!("cannot run the launcher: {e}")),
        };
        // A launcher that failed before it could report a final state of its own: record
        // the failure where the handler reads launcher states, so the VMI reports it.
        if let Some(why) = failure {
            let reported = dir.read_state().is_ok_and(|s| s.phase.is_final());
            if !reported {
                let last = std::fs::read_to_string(dir.launcher_log())
                    .ok()
                    .and_then(|l| l.lines().last().map(str::to_string))
                    .unwrap_or_default();
                let mut st = State::pending(&vmi_key);
                st.phase = Phase::Failed;
                st.reason = reason::FAILED_TO_START.into();
                st.message = format!("{why}: {last}");
                if let Err(e) = dir.write_state(&st) {
                    tracing::warn!(vmi = %name, error = %e, "cannot record the launcher's failure");
                }
            }
            tracing::warn!(vmi = %name, %why, "launcher failed to start; see its launcher.log");
        }
        // Look again now, not at the next requeue.
        let _ = followers.trigger.unbounded_send(obj);
    });
    Ok(())
}

/// One VMI's reconcile, in a span naming it: every line logged while acting on it carries
/// its namespace, name and uid (`--log-format json`).
async fn reconcile(vmi: Arc<VirtualMachineInstance>, ctx: Arc<Context>) -> Result<Action, Error> {
    use tracing::Instrument;
    let span = tracing::error_span!(
        "vmi",
        namespace = %vmi.namespace().unwrap_or_default(),
        name = %vmi.name_any(),
        uid = %vmi.uid().unwrap_or_default(),
    );
    reconcile_vmi(vmi, ctx).instrument(span).await
}

async fn reconcile_vmi(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = vmi.namespace().unwrap_or_else(|| "default".into());
    let name = vmi.name_any();
    let api: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let dir = match vmi_dir(&ctx.config, &ns, &name) {
        Ok(d) => d,
        Err(e) => {
            // Nothing of this VMI can live on disk: an invalid name, or a directory whose
            // sockets would not fit a socket address. Say so instead of failing later.
            tracing::warn!(vmi = %name, namespace = %ns, error = %e, "no VMI directory");
            if !VmiPhase::of(&vmi).is_some_and(VmiPhase::is_final) {
                let current = serde_json::to_value(&vmi.status).unwrap_or(Value::Null);
                let failed = status::failed_to_start(&current, &e.to_string(), &now());
                patch_status(&api, &name, failed).await?;
            }
            return Ok(Action::await_change());
        }
    };
    let _dirs = ctx.dirs.read().await;
    // The directory of an earlier VMI of the same name (a crash-looping VM gets a new VMI per
    // start): its state is not this VMI's, and nothing of it may stay.
    if let Some(old) = dir.owner().filter(|o| Some(&o.uid) != vmi.uid().as_ref()) {
        tracing::info!(vmi = %name, namespace = %ns, old_uid = %old.uid, "removing an earlier VMI's directory");
        release_network_of(&ctx, &old.uid).await;
        if let Err(e) = remove_dir(&ctx, &dir).await {
            tracing::warn!(vmi = %name, error = %e, "cannot remove an earlier VMI's directory");
        }
    }
    let current = serde_json::to_value(&vmi.status).unwrap_or(Value::Null);
    let phase = VmiPhase::of(&vmi);
    let is_final = phase.is_some_and(VmiPhase::is_final);
    let state = launcher_state(&dir).await;

    if vmi.metadata.deletion_timestamp.is_some() {
        // Stop the VM, then report it final so the controller can release the VMI.
        match &state {
            Some(s) if !s.phase.is_final() => {
                let grace = vmi.spec.termination_grace_period_seconds.unwrap_or(30);
                let signaled = dir.shutdown_marker();
                if !signaled.exists() {
                    let _ = std::fs::write(&signaled, b"");
                    ctx.event(
                        &vmi,
                        EventType::Normal,
                        "ShuttingDown",
                        format!("Signaled Graceful Shutdown (grace period {grace} s)"),
                    )
                    .await;
                }
                let shutdown = Request::Shutdown {
                    grace_period_seconds: Some(u64::try_from(grace).unwrap_or(0)),
                };
                let asked = async { LauncherClient::connect(&dir).await?.call(shutdown).await };
                if let Err(e) = asked.await {
                    tracing::debug!(vmi = %name, error = %e, "shutdown not delivered");
                }
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            // The launcher is done. Its network goes before the final status is written: that
            // status lets the controller release the VMI, after which no reconcile comes.
            Some(s) => {
                release_network(&ctx, &vmi).await;
                patch_status(&api, &name, status::from_launcher(s, &current, &now())).await?
            }
            None if !is_final => {
                release_network(&ctx, &vmi).await;
                patch_status(&api, &name, json!({"phase": VmiPhase::Succeeded.as_str()})).await?
            }
            None => release_network(&ctx, &vmi).await,
        }
        if let Err(e) = remove_dir(&ctx, &dir).await {
            tracing::warn!(vmi = %name, error = %e, "cannot remove the deleted VMI's directory");
        }
        return Ok(Action::await_change());
    }
    if is_final {
        // A final VMI's launcher is gone (KubeVirt: its Pod completed): so is its network.
        if state.as_ref().is_none_or(|s| s.phase.is_final()) {
            release_network(&ctx, &vmi).await;
        }
        return Ok(Action::await_change());
    }
    match state {
        None if !dir.spawned_marker().exists() => {
            if matches!(phase, Some(VmiPhase::Scheduled | VmiPhase::Scheduling))
                || phase.is_none()
                    && vmi.status.as_ref().and_then(|s| s.node_name.as_deref())
                        == Some(ctx.config.node_name.as_str())
            {
                match prepare_launcher(&ctx, &vmi, &dir, false).await? {
                    Prep::Spawned => {}
                    Prep::WaitVolumes(why) => {
                        tracing::info!(vmi = %name, %why, "waiting for volumes");
                        return Ok(Action::requeue(Duration::from_secs(2)));
                    }
                    Prep::WaitSecrets(why) => {
                        tracing::info!(vmi = %name, %why, "waiting for Secrets");
                        let waiting = status::not_synchronized_because(
                            &current,
                            secrets::FAILED_MOUNT,
                            &why,
                            &now(),
                        );
                        if status::changed(&current, &waiting) {
                            patch_status(&api, &name, waiting).await?;
                            ctx.event(&vmi, EventType::Warning, secrets::FAILED_MOUNT, why)
                                .await;
                        }
                        return Ok(Action::requeue(Duration::from_secs(2)));
                    }
                    Prep::WaitNetworks(why) => {
                        // KubeVirt keeps the VMI waiting, and says why.
                        tracing::info!(vmi = %name, %why, "waiting for networks");
                        let waiting = status::not_synchronized(&current, &why, &now());
                        if status::changed(&current, &waiting) {
                            patch_status(&api, &name, waiting).await?;
                            ctx.event(&vmi, EventType::Warning, reason::FAILED_CREATE, why)
                                .await;
                        }
                        return Ok(Action::requeue(Duration::from_secs(2)));
                    }
                    Prep::Fail(why) => {
                        tracing::warn!(vmi = %name, %why, "the VMI cannot start");
                        let failed = status::failed_to_start(&current, &why, &now());
                        patch_status(&api, &name, failed).await?;
                        return Ok(Action::await_change());
                    }
                }
            }
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        // Spawned, not answering yet. A launcher that cannot start writes a Failed state
        // (and so does the handler when the launcher process fails before it could).
        None => Ok(Action::requeue(Duration::from_secs(1))),
        Some(s) => {
            tracing::debug!(vmi = %name, phase = ?s.phase, reason = %s.reason, "launcher state");
            if let Some(st) = migration::as_source(&vmi, &ctx.config.node_name) {
                if let Some(action) = migration::source(&ctx, &vmi, &dir, &s, &st).await? {
                    return Ok(action);
                }
            } else if s.phase == Phase::Succeeded
                && s.reason == kubevirt_launcher::api::migration::reason::MIGRATED
            {
                // The guest moved to another node (recorded already): its phase is the
                // target's to report; what it left here goes.
                release_network(&ctx, &vmi).await;
                if let Err(e) = remove_dir(&ctx, &dir).await {
                    tracing::warn!(vmi = %name, error = %e, "cannot remove a migrated VMI's directory");
                }
                return Ok(Action::await_change());
            }
            if s.phase.is_final() {
                // Before the final status: once the VMI is final it may be deleted at once.
                release_network(&ctx, &vmi).await;
            } else {
                ctx.followers.follow(&dir, &vmi);
                if secrets::has_agent_credentials(&vmi) {
                    refresh_agent_credentials(&ctx, &vmi, &dir).await;
                }
            }
            let mut s = s;
            if let Some((sockets, guest)) = status::resources_to_apply(&vmi, &s) {
                let req = Request::SetResources {
                    sockets,
                    guest_memory_bytes: guest,
                };
                let applied = async { LauncherClient::connect(&dir).await?.call(req).await };
                match applied.await {
                    Ok(r) => {
                        tracing::info!(vmi = %name, ?sockets, ?guest, "CPU/memory hotplugged");
                        if let Some(new) = r.into_state() {
                            s = new;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(vmi = %name, error = %e, "CPU/memory hotplug failed");
                        ctx.event(&vmi, EventType::Warning, "HotplugFailed", e.to_string())
                            .await;
                    }
                }
            }
            let mut status = status::from_launcher(&s, &current, &now());
            if matches!(s.phase, Phase::Running | Phase::Paused) {
                // KubeVirt's LiveMigratable condition: whether `migrate` may be asked for.
                let mut local = dir
                    .read_volumes()
                    .map(|v| v.local_claims)
                    .unwrap_or_default();
                let mut modes =
                    migration::claim_modes(&ctx.client, &vmi, &ctx.config.node_name, &local).await;
                // A volume another VMI here uses too cannot move with this one.
                modes.shared =
                    local_volumes::shared_with_others(&ctx.config.data_dir, &dir, &local);
                local.retain(|c| !modes.shared.contains(c));
                let gates = ctx.config.cluster.borrow().feature_gates.clone();
                let c = match migration::live_migratable(&vmi, &modes, &local, &gates) {
                    Ok(()) => status::condition(
                        &current,
                        condition::LIVE_MIGRATABLE,
                        true,
                        "",
                        "",
                        &now(),
                    ),
                    Err((why, message)) => status::condition(
                        &current,
                        condition::LIVE_MIGRATABLE,
                        false,
                        why,
                        &message,
                        &now(),
                    ),
                };
                if let Some(cs) = status["conditions"].as_array_mut() {
                    cs.push(c);
                }
            }
            // Volume hotplug: only a running (or paused) guest takes or gives back a disk.
            let mut hotplug_pending = false;
            if matches!(s.phase, Phase::Running | Phase::Paused) {
                let synced = hotplug::sync(
                    &ctx.client,
                    &ctx.config.host_paths,
                    &ctx.config.node_name,
                    &vmi,
                    &dir,
                    &current,
                )
                .await?;
                if let Some((volumes, pending)) = synced {
                    status["volumeStatus"] = volumes;
                    hotplug_pending = pending;
                }
                // The sizes of its node-local disks, for a migration's target to make.
                let sizes = local_volumes::local_sizes(&vmi, &dir);
                if !sizes.is_empty() {
                    let base = match &status["volumeStatus"] {
                        Value::Null => current["volumeStatus"].clone(),
                        v => v.clone(),
                    };
                    status["volumeStatus"] = local_volumes::with_sizes(&base, &sizes);
                }
            }
            if status::changed(&current, &status) {
                patch_status(&api, &name, status.clone()).await?;
                for (type_, reason, note) in status::transition_events(&current, &status, &s) {
                    ctx.event(&vmi, type_, reason, note).await;
                }
            }
            // Phase changes arrive as launcher events; the rest is a safety net.
            let settled = matches!(s.phase, Phase::Running | Phase::Paused) && !hotplug_pending;
            Ok(Action::requeue(Duration::from_secs(if settled {
                60
            } else {
                1
            })))
        }
    }
}

/// What [`prepare_launcher`] did.
enum Prep {
    /// The launcher was spawned.
    Spawned,
    /// A PVC/DataVolume is not usable yet.
    WaitVolumes(String),
    /// A cloud-init or access credential Secret does not exist yet.
    WaitSecrets(String),
    /// A network the VMI names does not exist yet.
    WaitNetworks(String),
    /// The VMI cannot run on this node (a refused host path or Secret, a network that
    /// failed): why.
    Fail(String),
}

/// Resolves what the VMI needs on this node (volumes, Secrets, networks) and spawns its
/// launcher in `dir`; `migration_target` starts it as a live migration's target.
async fn prepare_launcher(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    dir: &VmiDir,
    migration_target: bool,
) -> Result<Prep, Error> {
    // PVC/DataVolume volumes must be usable first; until then the VMI waits.
    // A migration's target makes the node-local volumes the source copies to it.
    let st = kubevirt_api::status::vmi_migration_state(vmi);
    let sizes = local_volumes::published_sizes(vmi);
    let incoming = migration_target.then(|| volumes::Incoming {
        source: st["sourceNode"].as_str().unwrap_or_default(),
        uid: st["migrationUid"].as_str().unwrap_or_default(),
        sizes: &sizes,
        dir,
        client: &ctx.client,
        me: &ctx.config.node_name,
    });
    let (mut node, local) = match volumes::resolve(
        &ctx.client,
        vmi,
        &ctx.config.host_paths,
        &ctx.config.node_name,
        incoming,
    )
    .await?
    {
        volumes::Resolved::Ready(node, local) => (node, local),
        volumes::Resolved::Wait(why) => return Ok(Prep::WaitVolumes(why)),
        volumes::Resolved::Refused(why) => return Ok(Prep::Fail(why)),
    };
    // Cloud-init and access credential Secrets (KubeVirt mounts them into the pod: until each
    // exists, the VMI waits).
    let (resolved, agent_credentials) = secrets::resolve(&ctx.client, vmi).await?;
    match resolved {
        secrets::Secrets::Ready(resolved) => node.cloud_init = resolved,
        secrets::Secrets::Wait(why) => return Ok(Prep::WaitSecrets(why)),
        secrets::Secrets::Refused(why) => return Ok(Prep::Fail(why)),
    }
    let network = match &ctx.config.pod_network {
        Some(pods) => match attach_networks(ctx, vmi, pods).await? {
            Ok(info) => Some(info),
            Err(Blocked::Wait(why)) => return Ok(Prep::WaitNetworks(why)),
            Err(Blocked::Fail(why)) => {
                return Ok(Prep::Fail(format!("setting up the pod network: {why}")))
            }
        },
        None => None,
    };
    // A restore from a memory snapshot: the state linked in, `restore-memory.json` written.
    if !migration_target {
        if let Some(why) = prepare_memory_restore(ctx, vmi, dir).await {
            return Ok(Prep::Fail(why));
        }
    }
    // Recorded before the launcher starts: whoever removes this directory after the guest
    // migrated away finds which copies left with it.
    if let Err(e) =
        std::fs::create_dir_all(dir.path()).and_then(|()| local_volumes::record_local(dir, &local))
    {
        return Ok(Prep::Fail(format!(
            "recording the VMI's node-local volumes: {e}"
        )));
    }
    spawn_launcher(
        ctx,
        dir,
        vmi,
        &node,
        &agent_credentials,
        network.as_ref(),
        migration_target,
    )?;
    Ok(Prep::Spawned)
}

/// The VMI's memory reference ([`kubevirt_api::memsnap::RESTORE`], put there by the VM
/// controller from a restored VM): its state from this node's store, of the VMI's own
/// namespace only, into `dir`. `Some(why)` when it cannot be honoured: the VMI fails with it
/// rather than boot as if restored.
async fn prepare_memory_restore(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    dir: &VmiDir,
) -> Option<String> {
    use kubevirt_api::memsnap;
    let value = vmi.annotations().get(memsnap::RESTORE)?.clone();
    let ns = vmi.namespace().unwrap_or_default();
    let outcome = match memsnap::MemoryRef::parse(&value) {
        Err(e) => Err(e),
        Ok(r) => {
            let (data, node, d) = (
                ctx.config.data_dir.clone(),
                ctx.config.node_name.clone(),
                dir.clone(),
            );
            let ns = ns.clone();
            tokio::task::spawn_blocking(move || {
                memstore::prepare_restore(&data, &node, &ns, &r, &d)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map(|saved| {
                tracing::info!(vmi = %vmi.name_any(), from = %saved.vmi, "starting from a memory snapshot");
            })
        }
    };
    match outcome {
        Ok(()) => None,
        Err(e) => {
            let why = format!(
                "{}: cannot restore the memory snapshot: {e}",
                memsnap::REASON_REFUSED
            );
            ctx.event(
                vmi,
                EventType::Warning,
                memsnap::REASON_REFUSED,
                why.clone(),
            )
            .await;
            Some(why)
        }
    }
}

/// Removes this node's memory snapshots that nothing names any more ([`memstore::collect`]):
/// no VirtualMachineSnapshot (by uid), no VirtualMachineSnapshotContent, and no VM or VMI
/// whose restore reference still points at it (a VM restored while stopped keeps its
/// memory when its snapshot is deleted before it starts).
async fn collect_memory(ctx: &Context) {
    use kubevirt_api::memsnap;
    let root = memstore::root(&ctx.config.data_dir);
    let Ok(namespaces) = std::fs::read_dir(&root) else {
        return;
    };
    let mut kept = std::collections::BTreeMap::new();
    for ns in namespaces.flatten() {
        let name = ns.file_name().to_string_lossy().to_string();
        if kubevirt_api::names::dns1123_label(&name).is_some() {
            continue;
        }
        let contents: Api<kubevirt_api::VirtualMachineSnapshotContent> =
            Api::namespaced(ctx.client.clone(), &name);
        let snapshots: Api<kubevirt_api::VirtualMachineSnapshot> =
            Api::namespaced(ctx.client.clone(), &name);
        let vms: Api<kubevirt_api::VirtualMachine> = Api::namespaced(ctx.client.clone(), &name);
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &name);
        let lp = kube::api::ListParams::default();
        let listed = async {
            Ok::<_, kube::Error>((
                snapshots.list(&lp).await?,
                contents.list(&lp).await?,
                vms.list(&lp).await?,
                vmis.list(&lp).await?,
            ))
        };
        let keys = match listed.await {
            Ok((s, c, vm, vmi)) => Some(
                c.items
                    .iter()
                    .filter_map(|c| c.annotations().get(memsnap::CONTENT_STATE))
                    .chain(
                        vm.items
                            .iter()
                            .filter_map(|v| v.annotations().get(memsnap::RESTORE)),
                    )
                    .chain(
                        vmi.items
                            .iter()
                            .filter_map(|v| v.annotations().get(memsnap::RESTORE)),
                    )
                    .filter_map(|v| memsnap::MemoryRef::parse(v).ok())
                    .filter(|r| r.node == ctx.config.node_name)
                    .map(|r| r.key)
                    .chain(s.items.iter().filter_map(|s| s.metadata.uid.clone()))
                    .collect::<Vec<_>>(),
            ),
            Err(e) => {
                tracing::debug!(error = %e, "listing snapshots for the memory store");
                None
            }
        };
        kept.insert(name, keys);
    }
    let data = ctx.config.data_dir.clone();
    let _ = tokio::task::spawn_blocking(move || {
        memstore::collect(&data, |ns| kept.get(ns).cloned().flatten())
    })
    .await;
}

/// Rewrites the VMI's `access-credentials.json` when its Secrets changed; the launcher applies
/// it through the guest agent at its next poll (KubeVirt's access credential manager follows
/// the mounted Secrets the same way). A Secret that went away leaves the last credentials.
async fn refresh_agent_credentials(ctx: &Context, vmi: &VirtualMachineInstance, dir: &VmiDir) {
    let found = match secrets::fetch(&ctx.client, vmi).await {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(vmi = %vmi.name_any(), error = %e, "reading access credential Secrets");
            return;
        }
    };
    // While one of its Secrets is missing, the guest keeps what it got last.
    let missing = secrets::secret_uses(vmi)
        .into_iter()
        .filter(|u| u.field.starts_with("spec.accessCredentials"))
        .any(|u| !found.contains_key(&u.name));
    if missing {
        return;
    }
    let wanted = secrets::agent_credentials(vmi, &found);
    if dir
        .read_access_credentials()
        .ok()
        .flatten()
        .unwrap_or_default()
        == wanted
    {
        return;
    }
    tracing::info!(vmi = %vmi.name_any(), "access credential Secrets changed");
    if let Err(e) = dir.write_access_credentials(&wanted) {
        tracing::warn!(vmi = %vmi.name_any(), error = %e, "cannot hand over the access credentials");
    }
}

/// Why a VMI's networks cannot be attached (yet).
enum Blocked {
    /// Something it names may still come (a NetworkAttachmentDefinition).
    Wait(String),
    /// A network this node will not run, or a plugin's own error (as kubelet reports a
    /// failed sandbox); nothing half-configured is left.
    Fail(String),
}

/// Attaches the VMI's networks in its namespace (the pod network, Multus networks) and says
/// what the launcher gets.
async fn attach_networks(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    pods: &podnet::PodNetwork,
) -> Result<Result<kubevirt_launcher::api::PodNetworkInfo, Blocked>, Error> {
    let (networks, sriov) = match multus::resolve(&ctx.client, vmi, &pods.node).await? {
        multus::Networks::Ready(n, sriov) => (n, sriov),
        multus::Networks::Missing(why) => return Ok(Err(Blocked::Wait(why))),
        multus::Networks::Refused(why) => return Ok(Err(Blocked::Fail(why))),
    };
    let uid = vmi.uid().unwrap_or_default();
    let ns = vmi.namespace().unwrap_or_else(|| "default".into());
    Ok(pods
        .setup(&uid, &ns, &vmi.name_any(), &networks)
        .await
        .map(|n| kubevirt_launcher::api::PodNetworkInfo { sriov, ..n.info() })
        .map_err(|e| Blocked::Fail(e.to_string())))
}

/// Tears down the VMI's pod network (CNI `DEL`, its namespace) if it has one; idempotent.
async fn release_network(ctx: &Context, vmi: &VirtualMachineInstance) {
    if let Some(uid) = vmi.uid() {
        release_network_of(ctx, &uid).await;
    }
}

/// [`release_network`] of the VMI with `uid`, which may no longer exist.
async fn release_network_of(ctx: &Context, uid: &str) {
    let Some(pods) = &ctx.config.pod_network else {
        return;
    };
    let Ok(ns) = podnet::PodNetwork::netns_name(uid) else {
        return;
    };
    if !Path::new(podnet::NETNS_DIR).join(ns).exists() {
        return;
    }
    if let Err(e) = pods.teardown(uid).await {
        tracing::warn!(%uid, error = %e, "tearing down the pod network");
    }
}

/// [`cleanup::remove`] off the async runtime (it may wait for killed processes to go).
async fn remove_dir(ctx: &Context, dir: &VmiDir) -> Result<(), cleanup::CleanupError> {
    // A guest that migrated away leaves its node-local volumes' copies to be removed once the
    // target holds them.
    local_volumes::mark_leaving(&ctx.config.host_paths, dir).await;
    let (data, d) = (ctx.config.data_dir.clone(), dir.clone());
    match tokio::task::spawn_blocking(move || cleanup::remove(&data, &d)).await {
        Ok(r) => r,
        Err(e) => Err(cleanup::CleanupError::Io {
            path: dir.path().to_path_buf(),
            source: std::io::Error::other(e),
        }),
    }
}

/// How long a directory without a (matching) `vmi.json` is left alone: the handler writes
/// `vmi.json` right after making the directory.
const UNCLAIMED_GRACE: Duration = Duration::from_secs(60);
/// How often orphan VMI directories are looked for while the handler runs.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Whether a VMI may have a directory on node `me`: it runs here (or is not placed yet), or
/// migrates here. A VMI that moved to another node left nothing here that may stay.
fn belongs_here(v: &VirtualMachineInstance, me: &str) -> bool {
    let node = v.status.as_ref().and_then(|s| s.node_name.as_deref());
    node.is_none_or(|n| n == me)
        || v.labels()
            .get(kubevirt_api::status::label::MIGRATION_TARGET_NODE_NAME)
            .map(String::as_str)
            == Some(me)
}

/// Removes the VMI directories (and what still runs from them) whose VMI no longer exists
/// or runs on another node now (it migrated away):
/// deleted while no handler ran, or deleted so fast (a final VMI released at once) that no
/// reconcile saw its deletion. Returns how many were removed.
async fn sweep(ctx: &Context) -> usize {
    let dirs = VmiDir::all(&ctx.config.data_dir);
    if dirs.is_empty() {
        return 0;
    }
    let all: Api<VirtualMachineInstance> = Api::all(ctx.client.clone());
    let me = ctx.config.node_name.as_str();
    let live: std::collections::HashSet<(String, String)> =
        match all.list(&kube::api::ListParams::default()).await {
            Ok(l) => l
                .items
                .iter()
                .filter(|v| belongs_here(v, me))
                .map(|v| (v.namespace().unwrap_or_default(), v.name_any()))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing VMIs for the directory sweep");
                return 0;
            }
        };
    let mut removed = 0;
    for dir in dirs {
        let owner = cleanup::owner(&dir);
        match &owner {
            Some(o) if live.contains(&(o.namespace.clone(), o.name.clone())) => continue,
            None if !cleanup::unclaimed_long_enough(
                &dir,
                std::time::SystemTime::now(),
                UNCLAIMED_GRACE,
            ) =>
            {
                continue
            }
            _ => {}
        }
        // Decided and removed under the exclusive lock, after looking once more: a VMI of
        // that name created since the list keeps its directory.
        let _dirs = ctx.dirs.write().await;
        if let Some(o) = &owner {
            let api: Api<VirtualMachineInstance> =
                Api::namespaced(ctx.client.clone(), &o.namespace);
            match api.get_opt(&o.name).await {
                Ok(None) => {}
                Ok(Some(v)) if belongs_here(&v, me) => continue,
                Ok(Some(_)) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "sweep: looking up a VMI");
                    continue;
                }
            }
            release_network_of(ctx, &o.uid).await;
        }
        // A migration target removed here is not prepared again by a reconcile that still
        // sees the VMI labelled for it.
        ctx.migrations.end_target_of(&dir);
        tracing::info!(
            dir = %dir.path().display(),
            vmi = ?owner.as_ref().map(|o| format!("{}/{} ({})", o.namespace, o.name, o.uid)),
            "removing the directory of a VMI that no longer exists"
        );
        match remove_dir(ctx, &dir).await {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(error = %e, "sweep"),
        }
    }
    removed
}

fn error_policy(_vmi: Arc<VirtualMachineInstance>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "handler reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// KubeVirt's virt-handler heartbeat interval (`heartBeatInterval`, one minute); virt-controller
/// marks a Node unschedulable when its heartbeat is five minutes old.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(60);

/// The Node's labels and annotations the handler owns, KubeVirt's names: the scheduler reads
/// `kubevirt.io/schedulable`, virt-controller the heartbeat.
fn node_metadata(config: &Config, schedulable: bool) -> Value {
    use kubevirt_api::status::label;
    let emulation = config.emulation();
    let kvm = kubevirt_launcher::accel::choose(emulation)
        .map(|c| c.accelerator.as_str() == "kvm")
        .unwrap_or(false);
    let mut labels = json!({
        label::HOSTNAME: config.node_name,
        label::ARCH: go_arch(),
        label::SCHEDULABLE: schedulable.to_string(),
        label::KVM: kvm.to_string(),
        label::EMULATION: emulation.to_string(),
        label::POD_NETWORK: if config.pod_network.is_some() { "cni" } else { "user" },
    });
    // The guest architectures this node runs (docs/architectures.md): "false" says the
    // emulator or firmware is missing, and the scheduler keeps such VMIs off this node.
    for arch in kubevirt_api::arch::Arch::ALL {
        let ok = kubevirt_launcher::qemu::can_run(arch).is_ok();
        labels[arch.node_label()] = json!(ok.to_string());
    }
    json!({
        "labels": labels,
        "annotations": {label::HEARTBEAT: now()},
    })
}

/// The Node's `Ready` condition; its transition time kept while it stays True.
fn ready_condition(current: Option<&Node>) -> Value {
    let since = current
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(now);
    json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
           "message": "virt-handler is posting ready status",
           "lastHeartbeatTime": now(), "lastTransitionTime": since})
}

/// One heartbeat: the Node's labels and heartbeat annotation (creating the Node, as kubelet
/// registers it, when it does not exist), then its `Ready` condition and node info.
async fn heartbeat(nodes: &Api<Node>, config: &Config) -> Result<(), kube::Error> {
    let name = &config.node_name;
    let meta = json!({"metadata": node_metadata(config, true)});
    let current = match nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&meta))
        .await
    {
        Ok(n) => n,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let mut node =
                json!({"apiVersion": "v1", "kind": "Node", "metadata": meta["metadata"]});
            node["metadata"]["name"] = json!(name);
            let node: Node = serde_json::from_value(node).unwrap_or_default();
            match nodes.create(&PostParams::default(), &node).await {
                Ok(n) => {
                    tracing::info!(node = %name, "registered the Node");
                    n
                }
                Err(kube::Error::Api(s)) if s.code == 409 => nodes.get(name).await?,
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let status = json!({"status": {
        "conditions": [ready_condition(Some(&current))],
        "addresses": [
            {"type": "InternalIP", "address": config.node_address.to_string()},
            {"type": "Hostname", "address": name},
        ],
        "nodeInfo": {"kubeletVersion": format!("kubevirt-rs-{}", env!("CARGO_PKG_VERSION")),
                     "architecture": go_arch(), "operatingSystem": "linux"},
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// The architecture as Kubernetes names it (Go's `GOARCH`).
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Registers the node and heartbeats every `config.heartbeat_interval`.
async fn node_heartbeat(client: Client, config: Config) {
    let nodes: Api<Node> = Api::all(client);
    loop {
        if let Err(e) = heartbeat(&nodes, &config).await {
            tracing::warn!(node = %config.node_name, error = %e, "node heartbeat failed");
        }
        tokio::time::sleep(config.heartbeat_interval).await;
    }
}

/// Registers (or refreshes) the Node now, as the heartbeat loop of [`run`] does: the server
/// calls it before its controller places anything, so its own node is there to take VMIs.
pub async fn register_node(client: Client, config: &Config) -> Result<(), kube::Error> {
    heartbeat(&Api::all(client), config).await
}

/// What KubeVirt's handler does when it stops: labels its Node `kubevirt.io/schedulable=false`
/// (with a last heartbeat), so no VMI is placed on a node nobody serves.
pub async fn mark_unschedulable(client: Client, config: &Config) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client);
    let meta = json!({"metadata": node_metadata(config, false)});
    nodes
        .patch(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Merge(&meta),
        )
        .await?;
    Ok(())
}

/// How often copies of volumes that left this node, and volumes to reclaim, are looked for.
const LOCAL_VOLUME_SWEEP: Duration = Duration::from_secs(5);

/// Runs the handler until the future is dropped.
pub async fn run(client: Client, config: Config) -> anyhow::Result<()> {
    tokio::spawn(node_heartbeat(client.clone(), config.clone()));
    // Copies of volumes that moved away, and (apart from the server) reclaimed volumes.
    {
        let (client, config) = (client.clone(), config.clone());
        tokio::spawn(async move {
            loop {
                local_volumes::sweep(
                    &client,
                    &config.host_paths,
                    &config.data_dir,
                    &config.node_name,
                    config.reclaim_local_volumes,
                )
                .await;
                tokio::time::sleep(LOCAL_VOLUME_SWEEP).await;
            }
        });
    }
    // The server issues the certificate once the heartbeat has registered the Node.
    let node_tls = Arc::new(
        tls::wait_for_node_certificate(&client, &config.node_name, config.node_address).await?,
    );
    let (c, cfg, t) = (client.clone(), config.clone(), node_tls.clone());
    tokio::spawn(async move {
        if let Err(e) = rest::run(c, cfg, t).await {
            tracing::error!(error = format!("{e:#}"), "the handler endpoint stopped");
        }
    });
    if let Some(port) = config.metrics_port {
        let (c, cfg, t) = (client.clone(), config.clone(), node_tls.clone());
        tokio::spawn(async move {
            if let Err(e) = scrape::run(c, cfg, port, t).await {
                tracing::error!(error = format!("{e:#}"), "the metrics endpoint stopped");
            }
        });
    }
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let selector = format!("{NODE_LABEL}={}", config.node_name);
    if let Some(pods) = &config.pod_network {
        // Pod networks of VMIs that went while no handler ran (deleted, or final).
        match vmis
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
        {
            Ok(list) => {
                let live = list
                    .items
                    .iter()
                    .filter(|v| !VmiPhase::of(v).is_some_and(VmiPhase::is_final))
                    .filter_map(|v| v.uid())
                    .collect();
                let removed = pods.collect_garbage(&live).await;
                if !removed.is_empty() {
                    tracing::info!(count = removed.len(), "removed stale pod networks");
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing VMIs for pod network cleanup"),
        }
    }
    let (trigger, triggered) = futures::channel::mpsc::unbounded();
    let followers = Arc::new(Followers {
        active: Default::default(),
        trigger,
    });
    let (target_trigger, target_triggered) = futures::channel::mpsc::unbounded();
    let target_followers = Arc::new(Followers {
        active: Default::default(),
        trigger: target_trigger,
    });
    let recorder = events::instance_recorder(client.clone(), "virt-handler", &config.node_name);
    let ctx = Arc::new(Context {
        client,
        config,
        followers,
        target_followers,
        migrations: Default::default(),
        node_tls,
        recorder,
        dirs: Default::default(),
    });
    // Directories of VMIs that went while no handler ran, then the same as a safety net.
    let removed = sweep(&ctx).await;
    if removed > 0 {
        tracing::info!(
            count = removed,
            "removed the directories of VMIs that no longer exist"
        );
    }
    let sweeper = ctx.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            sweep(&sweeper).await;
            collect_memory(&sweeper).await;
        }
    });
    // The VMIs migrating to this node (KubeVirt's migration target controller).
    let targets = format!(
        "{}={}",
        kubevirt_api::status::label::MIGRATION_TARGET_NODE_NAME,
        ctx.config.node_name
    );
    let target_ctl = Controller::new(vmis.clone(), watcher::Config::default().labels(&targets))
        .reconcile_on(target_triggered)
        .run(migration::reconcile_target, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "migration target controller event");
            }
        });
    tokio::spawn(target_ctl);
    let controller = Controller::new(vmis, watcher::Config::default().labels(&selector));
    // A Secret a VMI of this node names (cloud-init, access credentials) came or changed:
    // look at that VMI now (a waiting one starts, a running one gets its new credentials).
    let store = controller.store();
    let secrets_api: Api<k8s_openapi::api::core::v1::Secret> = Api::all(ctx.client.clone());
    controller
        .watches(secrets_api, watcher::Config::default(), move |secret| {
            let ns = secret.namespace();
            let name = secret.name_any();
            store
                .state()
                .into_iter()
                .filter(|v| v.namespace() == ns)
                .filter(|v| secrets::secret_uses(v).iter().any(|u| u.name == name))
                .map(|v| ObjectRef::from_obj(v.as_ref()))
                .collect::<Vec<_>>()
        })
        .reconcile_on(triggered)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "handler controller event");
            }
        })
        .await;
    Ok(())
}

//! virt-handler for one node: starts a launcher for every VMI placed on this node, reports
//! what the launcher sees as the VMI's status, stops launchers of deleted VMIs, and keeps the
//! Node object (labels, heartbeat).
//!
//! Everything it needs is on disk (`<data>/vms/<namespace>/<name>/`: the launcher's sockets,
//! `launcher.pid`, `state.json`) or in the API server, so a restarted handler adopts running
//! launchers: nothing is kept in memory that a crash would lose. Launchers run in their own
//! session (`launcher run --detach`) and outlive the handler.

pub mod volumes;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use kubevirt_api::VirtualMachineInstance;
use kubevirt_launcher::launcher::{Phase, State};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    /// VM directories live under `<data_dir>/vms/<namespace>/<name>`.
    pub data_dir: PathBuf,
    /// The OCI image layout containerDisks are resolved from.
    pub image_store: Option<PathBuf>,
    /// The `kubevirt-rs` binary that runs `launcher run`.
    pub launcher_bin: PathBuf,
    /// KubeVirt's `developerConfiguration.useEmulation`; shared with the configuration
    /// watcher, so a change to the `KubeVirt` resource applies to the next VMI started.
    pub allow_emulation: Arc<std::sync::atomic::AtomicBool>,
}

impl Config {
    pub fn emulation(&self) -> bool {
        self.allow_emulation
            .load(std::sync::atomic::Ordering::Relaxed)
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
    recorder: Recorder,
}

impl Context {
    async fn event(
        &self,
        vmi: &VirtualMachineInstance,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        kubevirt_controller::publish_event(
            &self.recorder,
            &vmi.object_ref(&()),
            type_,
            reason,
            note,
        )
        .await;
    }
}

/// KubeVirt's label for the node a VMI runs on.
pub const NODE_LABEL: &str = "kubevirt.io/nodeName";

pub fn vmi_dir(config: &Config, namespace: &str, name: &str) -> PathBuf {
    config.data_dir.join("vms").join(namespace).join(name)
}

/// The launcher's state: live over its socket, else the last one it wrote. A launcher that
/// is gone while its last state says the VM runs died with it (QEMU dies with its launcher):
/// that is reported as Failed, reason `LauncherExited`.
fn launcher_state(dir: &Path) -> Option<State> {
    if let Ok(v) = kubevirt_launcher::rpc::call(dir, "state", json!({})) {
        if let Ok(s) = serde_json::from_value::<State>(v) {
            return Some(s);
        }
    }
    let text = std::fs::read_to_string(dir.join("state.json")).ok()?;
    let mut s: State = serde_json::from_str(&text).ok()?;
    if !s.phase.is_final() && !process_alive(s.launcher_pid) {
        s.message = format!(
            "the launcher (pid {}) exited while the VM was {:?}; its QEMU went with it",
            s.launcher_pid, s.phase
        );
        s.phase = Phase::Failed;
        s.reason = "LauncherExited".into();
    }
    Some(s)
}

/// True while `pid` exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
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
    active: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
    trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<VirtualMachineInstance>>,
}

impl Followers {
    fn follow(self: &Arc<Self>, dir: &Path, vmi: &VirtualMachineInstance) {
        {
            let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            if !active.insert(dir.to_path_buf()) {
                return;
            }
        }
        let this = self.clone();
        let dir = dir.to_path_buf();
        let obj = ObjectRef::from_obj(vmi);
        tokio::spawn(async move {
            if let Err(e) = this.stream(&dir, &obj).await {
                tracing::debug!(dir = %dir.display(), error = %e, "launcher event stream ended");
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
        dir: &Path,
        obj: &ObjectRef<VirtualMachineInstance>,
    ) -> std::io::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let sock = tokio::net::UnixStream::connect(dir.join("launcher.sock")).await?;
        let (rd, mut wr) = sock.into_split();
        let req = json!({"v": kubevirt_launcher::rpc::VERSION, "id": 1, "method": "subscribe"});
        wr.write_all(format!("{req}\n").as_bytes()).await?;
        let mut lines = tokio::io::BufReader::new(rd).lines();
        while lines.next_line().await?.is_some() {
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

fn condition(kind: &str, status: bool, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": if status { "True" } else { "False" },
           "reason": reason, "message": message, "lastProbeTime": null, "lastTransitionTime": now()})
}

/// The VMI status the launcher's state stands for.
fn status_from(state: &State, current: &Value) -> Value {
    let phase = match state.phase {
        Phase::Pending | Phase::Starting => "Scheduled",
        Phase::Running | Phase::Paused => "Running",
        Phase::Succeeded => "Succeeded",
        Phase::Failed => "Failed",
    };
    let mut conditions = vec![condition(
        "Ready",
        matches!(state.phase, Phase::Running),
        if state.phase == Phase::Running {
            ""
        } else {
            &state.reason
        },
        "",
    )];
    if state.phase == Phase::Paused {
        conditions.push(condition(
            "Paused",
            true,
            "PausedByUser",
            "VMI was paused by user",
        ));
    }
    if let Some(acc) = state.accelerator {
        if acc.as_str() == "tcg" {
            conditions.push(condition(
                "SoftwareEmulation",
                true,
                "",
                &format!(
                    "Software emulation is enabled: {}",
                    state.accelerator_reason
                ),
            ));
        }
    }
    let mut transitions = current["phaseTransitionTimestamps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !transitions.iter().any(|t| t["phase"] == phase) {
        transitions.push(json!({"phase": phase, "phaseTransitionTimestamp": now()}));
    }
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "phaseTransitionTimestamps": transitions,
        "guestOSInfo": {},
        "launcherContainerImageVersion": format!("kubevirt-rs/{}", env!("CARGO_PKG_VERSION")),
    });
    if let Some(ip) = &state.guest_ip {
        status["interfaces"] = json!([{"name": "default", "ipAddress": ip, "ipAddresses": [ip],
                                       "interfaceName": "eth0", "infoSource": "domain, guest-agent"}]);
    }
    if state.phase.is_final() && !state.message.is_empty() {
        status["reason"] = json!(state.reason);
    }
    status
}

async fn patch_status(
    api: &Api<VirtualMachineInstance>,
    name: &str,
    status: Value,
) -> Result<(), Error> {
    // VMIs have no status subresource in KubeVirt: the status goes through the main endpoint.
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

fn spawn_launcher(
    config: &Config,
    dir: &Path,
    vmi: &VirtualMachineInstance,
    volume_args: &[String],
    followers: &Arc<Followers>,
) -> Result<(), Error> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let file = dir.join("vmi.json");
    std::fs::write(&file, serde_json::to_vec(vmi).unwrap_or_default()).map_err(io(&file))?;
    std::fs::write(dir.join(".spawned"), b"").map_err(io(dir))?;
    let mut cmd = tokio::process::Command::new(&config.launcher_bin);
    cmd.arg("launcher")
        .arg("run")
        .arg("-f")
        .arg(&file)
        .arg("--dir")
        .arg(dir)
        .arg(format!("--allow-emulation={}", config.emulation()))
        .arg("--detach")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(store) = &config.image_store {
        cmd.arg("--image-store").arg(store);
        cmd.arg("--image-cache")
            .arg(config.data_dir.join("image-cache"));
    }
    cmd.args(volume_args);
    // The detaching parent waits until the VM runs (or fails); the launcher itself lives on in
    // its own session, whatever happens to us.
    let name = vmi.name_any();
    let (followers, obj) = (followers.clone(), ObjectRef::from_obj(vmi));
    tokio::spawn(async move {
        let status = cmd.status().await;
        // Look again now, not at the next requeue.
        let _ = followers.trigger.unbounded_send(obj);
        match status {
            Ok(s) if s.success() => tracing::info!(vmi = %name, "launcher started"),
            Ok(s) => {
                tracing::warn!(vmi = %name, status = %s, "launcher failed to start; see its launcher.log")
            }
            Err(e) => tracing::warn!(vmi = %name, error = %e, "cannot run the launcher"),
        }
    });
    Ok(())
}

async fn reconcile(vmi: Arc<VirtualMachineInstance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = vmi.namespace().unwrap_or_else(|| "default".into());
    let name = vmi.name_any();
    let api: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let dir = vmi_dir(&ctx.config, &ns, &name);
    let current = serde_json::to_value(&vmi.status).unwrap_or(Value::Null);
    let phase = current["phase"].as_str().unwrap_or("").to_string();
    let state = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || launcher_state(&dir))
            .await
            .ok()
            .flatten()
    };

    if vmi.metadata.deletion_timestamp.is_some() {
        // Stop the VM, then report it final so the controller can release the VMI.
        match &state {
            Some(s) if !s.phase.is_final() => {
                let grace = vmi.spec.termination_grace_period_seconds.unwrap_or(30);
                let signaled = dir.join(".shutdown-signaled");
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
                let d = dir.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    kubevirt_launcher::rpc::call(
                        &d,
                        "shutdown",
                        json!({"gracePeriodSeconds": grace}),
                    )
                })
                .await;
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            Some(s) => patch_status(&api, &name, status_from(s, &current)).await?,
            None if phase != "Succeeded" && phase != "Failed" => {
                patch_status(&api, &name, json!({"phase": "Succeeded"})).await?
            }
            None => {}
        }
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(Action::await_change());
    }
    if phase == "Succeeded" || phase == "Failed" {
        return Ok(Action::await_change());
    }
    match state {
        None if !dir.join(".spawned").exists() => {
            if phase == "Scheduled"
                || phase == "Scheduling"
                || phase.is_empty()
                    && vmi.status.as_ref().and_then(|s| s.node_name.as_deref())
                        == Some(ctx.config.node_name.as_str())
            {
                // PVC/DataVolume volumes must be usable first; until then the VMI waits.
                match volumes::resolve(&ctx.client, &vmi).await? {
                    volumes::Resolved::Ready(args) => {
                        spawn_launcher(&ctx.config, &dir, &vmi, &args, &ctx.followers)?
                    }
                    volumes::Resolved::Wait(why) => {
                        tracing::info!(vmi = %name, %why, "waiting for volumes");
                        return Ok(Action::requeue(Duration::from_secs(2)));
                    }
                }
            }
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        None => {
            // Spawned, not answering yet; if it never does, the VMI failed to start.
            let log = std::fs::read_to_string(dir.join("launcher.log")).unwrap_or_default();
            if log.contains("error") {
                let msg: String = log.lines().rev().take(3).collect::<Vec<_>>().join(" ");
                patch_status(
                    &api,
                    &name,
                    json!({"phase": "Failed", "reason": "FailedToStart",
                    "conditions": [condition("Ready", false, "FailedToStart", &msg)]}),
                )
                .await?;
                return Ok(Action::await_change());
            }
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        Some(s) => {
            tracing::debug!(vmi = %name, phase = ?s.phase, reason = %s.reason, "launcher state");
            if !s.phase.is_final() {
                ctx.followers.follow(&dir, &vmi);
            }
            let status = status_from(&s, &current);
            let changed = ["phase", "interfaces", "conditions"]
                .iter()
                .any(|k| strip_times(&status[k]) != strip_times(&current[k]));
            if changed {
                patch_status(&api, &name, status.clone()).await?;
                for (type_, reason, note) in transition_events(&current, &status, &s) {
                    ctx.event(&vmi, type_, reason, note).await;
                }
            }
            // Phase changes arrive as launcher events; the guest's IP (read from its console)
            // does not, so it is polled for until known.
            let settled = match s.phase {
                Phase::Running => s.guest_ip.is_some() || !wants_ip(&vmi),
                Phase::Paused => true,
                _ => false,
            };
            Ok(Action::requeue(Duration::from_secs(if settled {
                60
            } else {
                1
            })))
        }
    }
}

/// The events virt-handler records when a VMI's reported status changes (KubeVirt's reasons).
fn transition_events(
    old: &Value,
    new: &Value,
    s: &State,
) -> Vec<(EventType, &'static str, String)> {
    let paused = |v: &Value| {
        v["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Paused" && c["status"] == "True")
        })
    };
    let mut out = Vec::new();
    let (was, is) = (
        old["phase"].as_str().unwrap_or(""),
        new["phase"].as_str().unwrap_or(""),
    );
    if was != is {
        match is {
            "Running" => out.push((
                EventType::Normal,
                "Started",
                "VirtualMachineInstance started.".to_string(),
            )),
            "Succeeded" => out.push((
                EventType::Normal,
                "Stopped",
                format!("The VirtualMachineInstance was shut down ({}).", s.reason),
            )),
            "Failed" => out.push((
                EventType::Warning,
                "Stopped",
                format!(
                    "The VirtualMachineInstance crashed: {}: {}",
                    s.reason, s.message
                ),
            )),
            _ => {}
        }
    }
    match (paused(old), paused(new)) {
        (false, true) => out.push((
            EventType::Normal,
            "Paused",
            "The VirtualMachineInstance was paused.".to_string(),
        )),
        (true, false) if is == "Running" => out.push((
            EventType::Normal,
            "Resumed",
            "The VirtualMachineInstance was resumed.".to_string(),
        )),
        _ => {}
    }
    out
}

/// True when the VMI has an interface whose address the guest reports (any but none).
fn wants_ip(vmi: &VirtualMachineInstance) -> bool {
    vmi.spec
        .domain
        .devices
        .interfaces
        .as_ref()
        .is_some_and(|i| !i.is_empty())
}

/// Conditions compared without their timestamps, so an unchanged state writes nothing.
fn strip_times(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(a) = v.as_array_mut() {
        for c in a {
            if let Some(m) = c.as_object_mut() {
                m.remove("lastTransitionTime");
                m.remove("lastProbeTime");
            }
        }
    }
    v
}

fn error_policy(_vmi: Arc<VirtualMachineInstance>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "handler reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Registers the node (labels a scheduler reads, KubeVirt's names) and keeps its heartbeat.
async fn node_heartbeat(client: Client, config: Config) {
    let nodes: Api<Node> = Api::all(client);
    loop {
        let emulation = config.emulation();
        let kvm = kubevirt_launcher::accel::choose(emulation)
            .map(|c| c.accelerator.as_str() == "kvm")
            .unwrap_or(false);
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": config.node_name, "labels": {
                "kubernetes.io/hostname": config.node_name,
                "kubevirt.io/schedulable": "true",
                "kubevirt.io/kvm": if kvm { "true" } else { "false" },
                "kubevirt.io/emulation": if emulation { "true" } else { "false" },
            }, "annotations": {"kubevirt.io/heartbeat": now()}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "virt-handler is running", "lastHeartbeatTime": now()}],
                "nodeInfo": {"kubeletVersion": format!("kubevirt-rs-{}", env!("CARGO_PKG_VERSION")),
                    "architecture": "amd64", "operatingSystem": "linux"}},
        });
        let applied = nodes
            .patch(
                &config.node_name,
                &PatchParams::apply("virt-handler").force(),
                &Patch::Apply(&node),
            )
            .await;
        if let Err(e) = applied {
            tracing::warn!(error = %e, "node heartbeat failed");
            let _ = nodes
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(node).unwrap_or_default(),
                )
                .await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

/// Runs the handler until the future is dropped.
pub async fn run(client: Client, config: Config) -> anyhow::Result<()> {
    tokio::spawn(node_heartbeat(client.clone(), config.clone()));
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let selector = format!("{NODE_LABEL}={}", config.node_name);
    let (trigger, triggered) = futures::channel::mpsc::unbounded();
    let followers = Arc::new(Followers {
        active: Default::default(),
        trigger,
    });
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "virt-handler".into(),
            instance: Some(config.node_name.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client,
        config,
        followers,
        recorder,
    });
    Controller::new(vmis, watcher::Config::default().labels(&selector))
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

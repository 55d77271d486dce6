//! The DataVolume controller: DataVolume → PVC (owned by it) → import into the bound volume →
//! CDI's status.
//!
//! Phases, as CDI reports them (`pkg/controller/datavolume`): `Pending` until the PVC is bound,
//! then `ImportScheduled` → `ImportInProgress` → `Succeeded` (http, s3, registry, blank),
//! `CloneScheduled` → `CloneInProgress` → `Succeeded` (pvc), `UploadReady` → `Succeeded`
//! (upload), or `Failed` when the source can never be imported (a 404, a bad checksum, a
//! truncated or backed qcow2, an image bigger than the volume). Transient errors (network,
//! 5xx, timeouts) keep the phase, bump `restartCount` and retry with backoff, as CDI's importer
//! pod restarts would. Conditions `Bound`, `Running` and `Ready` carry CDI's reasons.
//!
//! Imports run as tokio tasks of this process, one per claim. The DataVolume's status is the
//! only record: after a restart, a DataVolume still in a scheduled/in-progress phase is simply
//! imported again (the engine overwrites `.importing`; the volume is never half-written).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::{watcher, Controller};
use kube::{Resource, ResourceExt};
use kubevirt_api::cdi::{phase, DataVolumeCondition};
use kubevirt_api::quantity::Quantity;
use kubevirt_api::DataVolume;
use kubevirt_cdi::{ImportError, ProgressSink, Source, Target, VolumeMode};
use serde_json::{json, Value};

use crate::provisioner::{is_block, requested_bytes};
use crate::{Context, Error};

/// CDI's PVC annotations (`pkg/controller/common/util.go`).
pub mod ann {
    pub const ENDPOINT: &str = "cdi.kubevirt.io/storage.import.endpoint";
    pub const SOURCE: &str = "cdi.kubevirt.io/storage.import.source";
    pub const CONTENT_TYPE: &str = "cdi.kubevirt.io/storage.contentType";
    pub const POD_PHASE: &str = "cdi.kubevirt.io/storage.pod.phase";
    pub const POD_READY: &str = "cdi.kubevirt.io/storage.pod.ready";
    pub const POD_RESTARTS: &str = "cdi.kubevirt.io/storage.pod.restarts";
    pub const UPLOAD_TARGET: &str = "cdi.kubevirt.io/storage.upload.target";
    pub const CLONE_REQUEST: &str = "k8s.io/CloneRequest";
    pub const CREATED_FOR_DV: &str = "cdi.kubevirt.io/createdForDataVolume";
}

/// What fills the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// http, s3, registry or blank (CDI's import source annotation value).
    Import(&'static str),
    Clone,
    Upload,
}

/// The source kind of a DataVolume spec, or why it cannot be served.
pub fn kind_of(dv: &DataVolume) -> Result<Kind, String> {
    let Some(src) = &dv.spec.source else {
        return Err(if dv.spec.source_ref.is_some() {
            "spec.sourceRef (DataSource) is not supported here: use spec.source".into()
        } else {
            "spec.source is required (http, s3, registry, pvc, upload or blank)".into()
        });
    };
    let mut found = Vec::new();
    if src.http.is_some() {
        found.push(Kind::Import("http"));
    }
    if src.s3.is_some() {
        found.push(Kind::Import("s3"));
    }
    if src.registry.is_some() {
        found.push(Kind::Import("registry"));
    }
    if src.blank.is_some() {
        found.push(Kind::Import("none"));
    }
    if src.pvc.is_some() {
        found.push(Kind::Clone);
    }
    if src.upload.is_some() {
        found.push(Kind::Upload);
    }
    for (set, name) in [
        (src.gcs.is_some(), "gcs"),
        (src.imageio.is_some(), "imageio"),
        (src.vddk.is_some(), "vddk"),
        (src.snapshot.is_some(), "snapshot"),
    ] {
        if set {
            return Err(format!(
                "spec.source.{name} is not supported by kubevirt-rs: use http, s3, registry, pvc, upload or blank"
            ));
        }
    }
    match found.as_slice() {
        [k] => Ok(*k),
        [] => Err("spec.source names no source".into()),
        _ => Err("spec.source names more than one source".into()),
    }
}

/// The DataVolume's requested size (`spec.pvc` or `spec.storage` `resources.requests.storage`).
pub fn dv_requested(dv: &DataVolume) -> Result<Option<u64>, String> {
    let (q, field) = if let Some(p) = &dv.spec.pvc {
        (
            p.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage")),
            "spec.pvc.resources.requests.storage",
        )
    } else if let Some(s) = &dv.spec.storage {
        (
            s.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage")),
            "spec.storage.resources.requests.storage",
        )
    } else {
        return Err("spec.pvc or spec.storage is required".into());
    };
    let Some(q) = q else { return Ok(None) };
    let v = Quantity::from_k8s(q)
        .map_err(|e| format!("{field} {:?}: {e}", q.0))?
        .value();
    u64::try_from(v)
        .ok()
        .filter(|v| *v > 0)
        .map(Some)
        .ok_or_else(|| format!("{field} {:?} must be positive", q.0))
}

fn dv_block(dv: &DataVolume) -> bool {
    let mode = dv
        .spec
        .pvc
        .as_ref()
        .and_then(|p| p.volume_mode.as_deref())
        .or_else(|| {
            dv.spec
                .storage
                .as_ref()
                .and_then(|s| s.volume_mode.as_deref())
        });
    mode == Some("Block")
}

const MIB: u64 = 1 << 20;

/// CDI's `GetRequiredSpace`: the claim size that leaves `size` usable after the filesystem
/// overhead (rounded up to MiB).
pub fn with_overhead(size: u64, overhead: f64) -> u64 {
    let need = (size as f64 / (1.0 - overhead)).ceil() as u64;
    need.div_ceil(MIB) * MIB
}

/// The usable part of a Filesystem claim of `capacity` bytes (CDI's `GetUsableSpace`),
/// aligned down to MiB.
pub fn usable(capacity: u64, overhead: f64) -> u64 {
    let u = (capacity as f64 * (1.0 - overhead)).floor() as u64;
    if u >= MIB {
        u / MIB * MIB
    } else {
        u
    }
}

/// Where the image goes in a bound claim, and how big it may be. `dv` is the DataVolume that
/// owns the claim, if any: with `spec.storage` its request is the usable size.
pub(crate) async fn target_for(
    ctx: &Context,
    pvc: &PersistentVolumeClaim,
    dv: Option<&DataVolume>,
) -> Result<Target, String> {
    let pv_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("PVC {} is not bound yet", pvc.name_any()))?;
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv = pvs
        .get_opt(&pv_name)
        .await
        .map_err(|e| format!("reading PersistentVolume {pv_name}: {e}"))?
        .ok_or_else(|| format!("PersistentVolume {pv_name} does not exist"))?;
    // A claim naming another claim's volume (`spec.volumeName` by hand) writes into, or is
    // cloned from, nothing of it: imports, uploads and clones all come through here.
    if !kubevirt_api::core_kinds::pv_bound_to(&pv, pvc) {
        return Err(format!(
            "PersistentVolume {pv_name} is not bound to PersistentVolumeClaim {}/{} (its claimRef names another claim)",
            pvc.namespace().unwrap_or_default(),
            pvc.name_any()
        ));
    }
    // A volume pinned to another node holds its data there, not at this path here.
    let off = kubevirt_runtime::pv::off_node(&ctx.client, &pv, &ctx.config.node_name)
        .await
        .map_err(|e| format!("reading Node {}: {e}", ctx.config.node_name))?;
    if let Some(why) = off {
        return Err(format!("PersistentVolume {pv_name} {why}"));
    }
    let path = pv
        .spec
        .as_ref()
        .and_then(|s| s.local.as_ref())
        .map(|l| l.path.clone())
        .ok_or_else(|| {
            format!("PersistentVolume {pv_name} has no spec.local.path (not a local volume)")
        })?;
    // A PersistentVolume is an administrator's word, but a claim bound to it is a user's
    // reach: its path must lie beneath the provisioner's volumes or an allowed root, as the
    // node agent requires for VM disks.
    let path = match &ctx.config.host_paths {
        Some(policy) => policy
            .persistent_volume(&path)
            .map_err(|e| format!("PersistentVolume {pv_name} spec.local.path: {e}"))?,
        None => PathBuf::from(path),
    };
    let capacity = pvc
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| Quantity::from_k8s(q).ok())
        .and_then(|q| u64::try_from(q.value()).ok())
        .map(Ok)
        .unwrap_or_else(|| requested_bytes(pvc))?;
    let block = is_block(pvc);
    if block {
        let mut t = Target::new(path, capacity);
        t.mode = VolumeMode::Block;
        return Ok(t);
    }
    let overhead = ctx.filesystem_overhead().await;
    let size = match dv {
        Some(dv) if dv.spec.storage.is_some() => match dv_requested(dv)? {
            Some(r) if r <= capacity => r,
            _ => usable(capacity, overhead),
        },
        _ => usable(capacity, overhead),
    };
    Ok(Target::new(path.join("disk.img"), size))
}

fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now())
}

/// The `Running` condition: (status, reason, message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Running(pub &'static str, pub String, pub String);

impl Running {
    pub fn no() -> Self {
        Running("False", String::new(), String::new())
    }
    pub fn pod_running() -> Self {
        Running("True", "Pod is running".into(), String::new())
    }
    pub fn completed(msg: &str) -> Self {
        Running("False", "Completed".into(), msg.into())
    }
    pub fn error(msg: String) -> Self {
        Running("False", "Error".into(), msg)
    }
}

/// One status write of a DataVolume.
#[derive(Clone, Debug)]
pub(crate) struct StatusWrite {
    pub phase: &'static str,
    pub claim: String,
    pub bound: bool,
    pub running: Running,
    pub progress: Option<String>,
    pub restart_count: Option<i32>,
}

fn conditions(old: &[DataVolumeCondition], w: &StatusWrite) -> Vec<DataVolumeCondition> {
    let t = now();
    let mk = |type_: &str, status: &str, reason: &str, message: String| {
        let previous = old.iter().map(|c| kubevirt_runtime::status::Previous {
            type_: &c.r#type,
            status: &c.status,
            since: c.last_transition_time.clone(),
        });
        let transition =
            kubevirt_runtime::status::transition_time(previous, type_, status, t.clone());
        DataVolumeCondition {
            r#type: type_.into(),
            status: status.into(),
            last_transition_time: Some(transition),
            last_heart_beat_time: Some(t.clone()),
            reason: (!reason.is_empty()).then(|| reason.to_string()),
            message: (!message.is_empty()).then_some(message),
        }
    };
    let claim = &w.claim;
    vec![
        if w.bound {
            mk("Bound", "True", "Bound", format!("PVC {claim} Bound"))
        } else {
            mk("Bound", "False", "Pending", format!("PVC {claim} Pending"))
        },
        mk("Running", w.running.0, &w.running.1, w.running.2.clone()),
        if w.phase == phase::SUCCEEDED {
            mk("Ready", "True", "", String::new())
        } else {
            mk("Ready", "False", "", String::new())
        },
    ]
}

/// Writes the status through `/status`. `Ok(false)` when the DataVolume is gone.
pub(crate) async fn write_status(
    ctx: &Context,
    ns: &str,
    name: &str,
    w: &StatusWrite,
) -> Result<bool, kube::Error> {
    let api: Api<DataVolume> = Api::namespaced(ctx.client.clone(), ns);
    let Some(cur) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let old = cur.status.clone().unwrap_or_default();
    let mut st = json!({
        "phase": w.phase,
        "claimName": w.claim,
        "conditions": conditions(old.conditions.as_deref().unwrap_or_default(), w),
    });
    if let Some(p) = &w.progress {
        st["progress"] = json!(p);
    }
    if let Some(r) = w.restart_count {
        st["restartCount"] = json!(r);
    }
    match kubevirt_runtime::status::write_status(&api, name, &st).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

fn owned_by(pvc: &PersistentVolumeClaim, dv: &DataVolume) -> bool {
    pvc.owner_references()
        .iter()
        .any(|o| Some(&o.uid) == dv.metadata.uid.as_ref() && o.kind == "DataVolume")
}

fn pvc_bound(pvc: &PersistentVolumeClaim) -> bool {
    pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

fn endpoint(dv: &DataVolume) -> Option<String> {
    let src = dv.spec.source.as_ref()?;
    src.http
        .as_ref()
        .map(|h| h.url.clone())
        .or_else(|| src.s3.as_ref().map(|s| s.url.clone()))
        .or_else(|| src.registry.as_ref().and_then(|r| r.url.clone()))
}

/// The claim a DataVolume asks for, owned by it.
async fn pvc_for(ctx: &Context, dv: &DataVolume, kind: Kind) -> Result<Value, String> {
    let ns = dv.namespace().unwrap_or_default();
    let name = dv.name_any();
    let block = dv_block(dv);
    let mut requested = dv_requested(dv)?;
    if requested.is_none() {
        if let (Kind::Clone, Some(p)) = (kind, dv.spec.source.as_ref().and_then(|s| s.pvc.as_ref()))
        {
            let sns = if p.namespace.is_empty() {
                ns.clone()
            } else {
                p.namespace.clone()
            };
            let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &sns);
            let src = api
                .get_opt(&p.name)
                .await
                .map_err(|e| format!("reading the clone source PVC {sns}/{}: {e}", p.name))?
                .ok_or_else(|| format!("the clone source PVC {sns}/{} does not exist", p.name))?;
            requested = Some(requested_bytes(&src)?);
        }
    }
    let Some(mut size) = requested else {
        return Err("the DataVolume needs a size: set spec.storage.resources.requests.storage (or spec.pvc.resources.requests.storage)".into());
    };
    if dv.spec.storage.is_some() && !block && dv_requested(dv)?.is_some() {
        size = with_overhead(size, ctx.filesystem_overhead().await);
    }
    let (access, class) = match (&dv.spec.pvc, &dv.spec.storage) {
        (Some(p), _) => (p.access_modes.clone(), p.storage_class_name.clone()),
        (None, Some(s)) => (s.access_modes.clone(), s.storage_class_name.clone()),
        _ => (None, None),
    };
    let access = access
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
    let mut owner = dv
        .controller_owner_ref(&())
        .ok_or("the DataVolume has no uid")?;
    owner.block_owner_deletion = Some(true);
    let mut annotations = serde_json::Map::new();
    annotations.insert(ann::CONTENT_TYPE.into(), json!("kubevirt"));
    annotations.insert(
        ann::CREATED_FOR_DV.into(),
        json!(dv.metadata.uid.clone().unwrap_or_default()),
    );
    match kind {
        Kind::Import(src) => {
            annotations.insert(ann::SOURCE.into(), json!(src));
            if let Some(e) = endpoint(dv) {
                annotations.insert(ann::ENDPOINT.into(), json!(e));
            }
        }
        Kind::Upload => {
            annotations.insert(ann::UPLOAD_TARGET.into(), json!(""));
        }
        Kind::Clone => {
            if let Some(p) = dv.spec.source.as_ref().and_then(|s| s.pvc.as_ref()) {
                let sns = if p.namespace.is_empty() {
                    ns.clone()
                } else {
                    p.namespace.clone()
                };
                annotations.insert(
                    ann::CLONE_REQUEST.into(),
                    json!(format!("{sns}/{}", p.name)),
                );
            }
        }
    }
    let mut spec = json!({
        "accessModes": access,
        "resources": {"requests": {"storage": size.to_string()}},
        "volumeMode": if block { "Block" } else { "Filesystem" },
    });
    if let Some(c) = class {
        spec["storageClassName"] = json!(c);
    }
    Ok(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {"app": "containerized-data-importer",
                       "app.kubernetes.io/component": "storage",
                       "app.kubernetes.io/managed-by": "cdi-controller"},
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": spec,
    }))
}

/// Stops the import into the claim with uid `claim_uid`, if one runs.
pub(crate) fn cancel_for_claim(ctx: &Context, claim_uid: &str) {
    if let Ok(mut tasks) = ctx.tasks.lock() {
        if let Some(t) = tasks.remove(claim_uid) {
            t.abort();
        }
    }
}

fn task_running(ctx: &Context, claim_uid: &str) -> bool {
    ctx.tasks
        .lock()
        .map(|t| t.get(claim_uid).is_some_and(|h| !h.is_finished()))
        .unwrap_or(false)
}

/// Patches annotations of a claim (CDI's importer/upload pod state lives there).
pub(crate) async fn annotate_pvc(
    ctx: &Context,
    ns: &str,
    name: &str,
    anns: Value,
) -> Result<(), kube::Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": anns}})),
    )
    .await?;
    Ok(())
}

async fn reconcile(dv: Arc<DataVolume>, ctx: Arc<Context>) -> Result<Action, Error> {
    if dv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = dv
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = dv.name_any();
    let status = dv.status.clone().unwrap_or_default();
    let cur_phase = status.phase.clone().unwrap_or_default();
    let restarts = status.restart_count;
    let kind = match kind_of(&dv) {
        Ok(k) => k,
        Err(msg) => {
            if cur_phase != phase::FAILED {
                ctx.event(dv.as_ref(), EventType::Warning, "Error", msg.clone())
                    .await;
                write_status(
                    &ctx,
                    &ns,
                    &name,
                    &StatusWrite {
                        phase: phase::FAILED,
                        claim: name.clone(),
                        bound: false,
                        running: Running::error(msg),
                        progress: Some("N/A".into()),
                        restart_count: restarts,
                    },
                )
                .await?;
            }
            return Ok(Action::await_change());
        }
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(pvc) = pvcs.get_opt(&name).await? else {
        match pvc_for(&ctx, &dv, kind).await {
            Ok(obj) => {
                let pvc: PersistentVolumeClaim = serde_json::from_value(obj)?;
                match pvcs.create(&PostParams::default(), &pvc).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
                write_status(
                    &ctx,
                    &ns,
                    &name,
                    &StatusWrite {
                        phase: phase::PENDING,
                        claim: name.clone(),
                        bound: false,
                        running: Running::no(),
                        progress: Some("N/A".into()),
                        restart_count: Some(restarts.unwrap_or(0)),
                    },
                )
                .await?;
                ctx.event(
                    dv.as_ref(),
                    EventType::Normal,
                    "Pending",
                    format!("PVC {name} Pending"),
                )
                .await;
                return Ok(Action::requeue(Duration::from_millis(500)));
            }
            Err(msg) => {
                ctx.event(dv.as_ref(), EventType::Warning, "Error", msg.clone())
                    .await;
                write_status(
                    &ctx,
                    &ns,
                    &name,
                    &StatusWrite {
                        phase: phase::PENDING,
                        claim: name.clone(),
                        bound: false,
                        running: Running::error(msg),
                        progress: Some("N/A".into()),
                        restart_count: restarts,
                    },
                )
                .await?;
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
        }
    };
    if !owned_by(&pvc, &dv) {
        let msg = format!("Resource \"{name}\" already exists and is not managed by DataVolume");
        if status.phase.is_none() {
            ctx.event(
                dv.as_ref(),
                EventType::Warning,
                "ErrResourceExists",
                msg.clone(),
            )
            .await;
            write_status(
                &ctx,
                &ns,
                &name,
                &StatusWrite {
                    phase: phase::PENDING,
                    claim: name.clone(),
                    bound: pvc_bound(&pvc),
                    running: Running::error(msg),
                    progress: Some("N/A".into()),
                    restart_count: restarts,
                },
            )
            .await?;
        }
        return Ok(Action::requeue(Duration::from_secs(10)));
    }
    if !pvc_bound(&pvc) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let claim_uid = pvc.uid().ok_or(Error::MissingField("PVC metadata.uid"))?;
    match cur_phase.as_str() {
        phase::SUCCEEDED | phase::FAILED => return Ok(Action::await_change()),
        _ => {}
    }
    match kind {
        Kind::Upload => {
            if cur_phase != phase::UPLOAD_READY {
                annotate_pvc(
                    &ctx,
                    &ns,
                    &name,
                    json!({ann::POD_READY: "true", ann::POD_PHASE: "Running"}),
                )
                .await?;
                write_status(
                    &ctx,
                    &ns,
                    &name,
                    &StatusWrite {
                        phase: phase::UPLOAD_READY,
                        claim: name.clone(),
                        bound: true,
                        running: Running::pod_running(),
                        progress: Some("N/A".into()),
                        restart_count: Some(restarts.unwrap_or(0)),
                    },
                )
                .await?;
                ctx.event(
                    dv.as_ref(),
                    EventType::Normal,
                    "UploadReady",
                    format!("Upload into {name} ready"),
                )
                .await;
            }
            Ok(Action::await_change())
        }
        Kind::Import(_) | Kind::Clone => {
            if task_running(&ctx, &claim_uid) {
                return Ok(Action::requeue(Duration::from_secs(60)));
            }
            let clone = kind == Kind::Clone;
            let scheduled = if clone {
                phase::CLONE_SCHEDULED
            } else {
                phase::IMPORT_SCHEDULED
            };
            if matches!(cur_phase.as_str(), "" | phase::PENDING | phase::PVC_BOUND) {
                write_status(
                    &ctx,
                    &ns,
                    &name,
                    &StatusWrite {
                        phase: scheduled,
                        claim: name.clone(),
                        bound: true,
                        running: Running::no(),
                        progress: Some("N/A".into()),
                        restart_count: Some(restarts.unwrap_or(0)),
                    },
                )
                .await?;
                let (reason, what) = if clone {
                    ("CloneScheduled", "Cloning from")
                } else {
                    ("ImportScheduled", "Import into")
                };
                let note = if clone {
                    format!("{what} source PVC into {name} scheduled")
                } else {
                    format!("{what} {name} scheduled")
                };
                ctx.event(dv.as_ref(), EventType::Normal, reason, note)
                    .await;
            } else {
                tracing::info!(%ns, dv = %name, phase = %cur_phase, "resuming an unfinished import");
            }
            let task = tokio::spawn(import_task(
                ctx.clone(),
                (*dv).clone(),
                pvc,
                clone,
                restarts.unwrap_or(0),
            ));
            if let Ok(mut tasks) = ctx.tasks.lock() {
                tasks.insert(claim_uid, task);
            }
            Ok(Action::requeue(Duration::from_secs(60)))
        }
    }
}

/// Why one attempt did not succeed.
enum AttemptError {
    Transient(String),
    Permanent(String),
    /// The DataVolume was deleted: stop quietly.
    Gone,
}

impl From<ImportError> for AttemptError {
    fn from(e: ImportError) -> Self {
        if e.is_transient() {
            AttemptError::Transient(e.to_string())
        } else {
            AttemptError::Permanent(e.to_string())
        }
    }
}

/// The clone source's image file: the source claim must be bound and, if a DataVolume fills
/// it, that DataVolume must have succeeded.
async fn clone_source_path(ctx: &Context, ns: &str, name: &str) -> Result<PathBuf, AttemptError> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let src = api
        .get_opt(name)
        .await
        .map_err(|e| AttemptError::Transient(format!("reading source PVC {ns}/{name}: {e}")))?
        .ok_or_else(|| AttemptError::Transient(format!("source PVC {ns}/{name} not found")))?;
    if let Some(owner) = src
        .owner_references()
        .iter()
        .find(|o| o.kind == "DataVolume")
    {
        let dvs: Api<DataVolume> = Api::namespaced(ctx.client.clone(), ns);
        let phase = dvs
            .get_opt(&owner.name)
            .await
            .ok()
            .flatten()
            .and_then(|d| d.status.and_then(|s| s.phase));
        if phase.as_deref() != Some(phase::SUCCEEDED) {
            return Err(AttemptError::Transient(format!(
                "source PVC {ns}/{name} is still being populated by DataVolume {}",
                owner.name
            )));
        }
    }
    let t = target_for(ctx, &src, None)
        .await
        .map_err(AttemptError::Transient)?;
    Ok(t.path)
}

async fn resolve_source(ctx: &Context, dv: &DataVolume, ns: &str) -> Result<Source, AttemptError> {
    let refs = kubevirt_cdi::spec::references(&dv.spec, ns);
    let mut res = kubevirt_cdi::spec::Resolved::default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    for s in &refs.secrets {
        let secret = secrets
            .get_opt(s)
            .await
            .map_err(|e| AttemptError::Transient(format!("reading Secret {s}: {e}")))?
            .ok_or_else(|| {
                AttemptError::Transient(format!("Secret {ns}/{s} named by the source not found"))
            })?;
        let data = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .chain(
                secret
                    .string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            )
            .collect();
        res.secrets.insert(s.clone(), data);
    }
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    for c in &refs.config_maps {
        let cm = cms
            .get_opt(c)
            .await
            .map_err(|e| AttemptError::Transient(format!("reading ConfigMap {c}: {e}")))?
            .ok_or_else(|| {
                AttemptError::Transient(format!("ConfigMap {ns}/{c} named by the source not found"))
            })?;
        res.config_maps
            .insert(c.clone(), cm.data.unwrap_or_default());
    }
    if let Some((sns, sname)) = &refs.pvc {
        res.pvc_path = Some(clone_source_path(ctx, sns, sname).await?);
    }
    if let Some(cfg) = ctx.cdi_config().await {
        res.insecure_registries = cfg.spec.insecure_registries.unwrap_or_default();
    }
    if dv.spec.source.as_ref().is_some_and(|s| s.http.is_some()) {
        res.http_checksum = http_checksum(ctx, ns, &dv.name_any()).await;
    }
    kubevirt_cdi::spec::source_from_spec(&dv.spec, &res)
        .map_err(|e| AttemptError::Permanent(e.to_string()))
}

/// Newer CDI's `spec.source.http.checksum`, read from the stored object: the generated
/// `DataVolumeSourceHTTP` (KubeVirt's OpenAPI document) does not carry the field yet.
async fn http_checksum(ctx: &Context, ns: &str, name: &str) -> Option<String> {
    let ar = kube::api::ApiResource::erase::<DataVolume>(&());
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let obj = api.get_opt(name).await.ok().flatten()?;
    obj.data["spec"]["source"]["http"]["checksum"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

/// One import attempt, with throttled progress writes. Returns the outcome's summary.
async fn attempt(
    ctx: &Context,
    dv: &DataVolume,
    pvc: &PersistentVolumeClaim,
    ns: &str,
    name: &str,
    population: crate::metrics::Population,
) -> Result<kubevirt_cdi::ImportOutcome, AttemptError> {
    let source = resolve_source(ctx, dv, ns).await?;
    let target = target_for(ctx, pvc, Some(dv))
        .await
        .map_err(AttemptError::Transient)?;
    let (watch_sink, mut rx) = ProgressSink::watch();
    // CDI's importer exports its percent done by owner (the claim) uid; so does this.
    let owner_uid = pvc.uid().unwrap_or_default();
    let metrics = crate::metrics::cdi().clone();
    metrics.set_progress(population, &owner_uid, 0.0);
    let sink = ProgressSink::from_fn(move |p| {
        if let Some(percent) = p.percent {
            metrics.set_progress(population, &owner_uid, percent);
        }
        watch_sink.send(p);
    });
    let opts = ctx.config.import.clone();
    let import = kubevirt_cdi::import(&source, &target, &opts, sink);
    let progress = async {
        let api: Api<DataVolume> = Api::namespaced(ctx.client.clone(), ns);
        let mut last = String::new();
        loop {
            tokio::time::sleep(ctx.config.progress_interval).await;
            let p = rx.borrow_and_update().percent_string();
            if p == last || p == "N/A" {
                // Still check that the DataVolume exists.
                if matches!(api.get_opt(name).await, Ok(None)) {
                    return;
                }
                continue;
            }
            let r =
                kubevirt_runtime::status::write_status(&api, name, json!({"progress": p})).await;
            match r {
                Err(kube::Error::Api(s)) if s.code == 404 => return,
                Err(e) => tracing::debug!(error = %e, "progress write failed"),
                Ok(_) => last = p,
            }
        }
    };
    tokio::select! {
        r = import => r.map_err(AttemptError::from),
        _ = progress => Err(AttemptError::Gone),
    }
}

async fn import_task(
    ctx: Arc<Context>,
    dv: DataVolume,
    pvc: PersistentVolumeClaim,
    clone: bool,
    mut restarts: i32,
) {
    let ns = dv.namespace().unwrap_or_default();
    let name = dv.name_any();
    let in_progress = if clone {
        phase::CLONE_IN_PROGRESS
    } else {
        phase::IMPORT_IN_PROGRESS
    };
    let claim_uid = pvc.uid().unwrap_or_default();
    loop {
        let w = StatusWrite {
            phase: in_progress,
            claim: name.clone(),
            bound: true,
            running: Running::pod_running(),
            progress: Some(kubevirt_cdi::progress::format_percent(0.0)),
            restart_count: Some(restarts),
        };
        match write_status(&ctx, &ns, &name, &w).await {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => tracing::warn!(%ns, dv = %name, error = %e, "status write failed"),
        }
        let _ = annotate_pvc(
            &ctx,
            &ns,
            &name,
            json!({ann::POD_PHASE: "Running", ann::POD_RESTARTS: restarts.to_string()}),
        )
        .await;
        ctx.event(
            &dv,
            EventType::Normal,
            if clone {
                "CloneInProgress"
            } else {
                "ImportInProgress"
            },
            format!(
                "{} {name} in progress",
                if clone { "Clone into" } else { "Import into" }
            ),
        )
        .await;
        tracing::info!(%ns, dv = %name, restarts, "import starting");
        let population = if clone {
            crate::metrics::Population::Clone
        } else {
            crate::metrics::Population::Import
        };
        let tried = attempt(&ctx, &dv, &pvc, &ns, &name, population).await;
        // The attempt is over: its progress series goes, as CDI's with its importer pod.
        crate::metrics::cdi().forget_progress(&claim_uid);
        match tried {
            Ok(out) => {
                tracing::info!(%ns, dv = %name, formats = ?out.formats, bytes = out.transferred,
                    elapsed_ms = out.elapsed.as_millis() as u64, "import succeeded");
                let _ = annotate_pvc(&ctx, &ns, &name, json!({ann::POD_PHASE: "Succeeded"})).await;
                let w = StatusWrite {
                    phase: phase::SUCCEEDED,
                    claim: name.clone(),
                    bound: true,
                    running: Running::completed(if clone {
                        "Clone Complete"
                    } else {
                        "Import Complete"
                    }),
                    progress: Some("100.0%".into()),
                    restart_count: Some(restarts),
                };
                if let Err(e) = write_status(&ctx, &ns, &name, &w).await {
                    tracing::warn!(%ns, dv = %name, error = %e, "status write failed");
                }
                let (reason, note) = if clone {
                    ("CloneSucceeded", format!("Successfully cloned into {name}"))
                } else {
                    (
                        "ImportSucceeded",
                        format!("Successfully imported into PVC {name}"),
                    )
                };
                ctx.event(&dv, EventType::Normal, reason, note).await;
                break;
            }
            Err(AttemptError::Gone) => break,
            Err(AttemptError::Permanent(msg)) => {
                tracing::warn!(%ns, dv = %name, error = %msg, "import failed");
                let _ = annotate_pvc(&ctx, &ns, &name, json!({ann::POD_PHASE: "Failed"})).await;
                let w = StatusWrite {
                    phase: phase::FAILED,
                    claim: name.clone(),
                    bound: true,
                    running: Running::error(format!("Unable to process data: {msg}")),
                    progress: None,
                    restart_count: Some(restarts),
                };
                if let Err(e) = write_status(&ctx, &ns, &name, &w).await {
                    tracing::warn!(%ns, dv = %name, error = %e, "status write failed");
                }
                ctx.event(
                    &dv,
                    EventType::Warning,
                    "Error",
                    format!("Unable to process data: {msg}"),
                )
                .await;
                break;
            }
            Err(AttemptError::Transient(msg)) => {
                restarts += 1;
                let delay = ctx
                    .config
                    .retry
                    .delay(u32::try_from(restarts).unwrap_or(u32::MAX));
                tracing::warn!(%ns, dv = %name, error = %msg, restarts, retry_in_ms = delay.as_millis() as u64, "import failed, will retry");
                let w = StatusWrite {
                    phase: in_progress,
                    claim: name.clone(),
                    bound: true,
                    running: Running::error(msg.clone()),
                    progress: None,
                    restart_count: Some(restarts),
                };
                match write_status(&ctx, &ns, &name, &w).await {
                    Ok(false) => break,
                    Ok(true) => {}
                    Err(e) => tracing::warn!(%ns, dv = %name, error = %e, "status write failed"),
                }
                ctx.event(&dv, EventType::Warning, "Error", msg).await;
                tokio::time::sleep(delay).await;
            }
        }
    }
    if let Ok(mut tasks) = ctx.tasks.lock() {
        tasks.remove(&claim_uid);
    }
}

fn error_policy(dv: Arc<DataVolume>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::debug!(dv = %dv.name_any(), error = %err, "datavolume reconcile failed");
    match err {
        Error::Kube(kube::Error::Api(s)) if s.code == 409 => {
            Action::requeue(Duration::from_millis(200))
        }
        _ => Action::requeue(Duration::from_secs(2)),
    }
}

/// Runs the DataVolume controller until the future is dropped.
pub async fn run(ctx: Arc<Context>) {
    let dvs: Api<DataVolume> = Api::all(ctx.client.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::all(ctx.client.clone());
    Controller::new(dvs, watcher::Config::default())
        .owns(pvcs, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "datavolume controller");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dv(spec: Value) -> DataVolume {
        serde_json::from_value(
            json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "d"}, "spec": spec}),
        )
        .expect("DataVolume")
    }

    #[test]
    fn filesystem_overhead_sizes_as_cdi() {
        // 1 GiB usable needs 1024 MiB / 0.945 = 1083.6 MiB, rounded up to MiB.
        assert_eq!(with_overhead(1 << 30, 0.055), 1084 * MIB);
        assert!(usable(with_overhead(1 << 30, 0.055), 0.055) >= 1 << 30);
        assert_eq!(usable(100 * MIB, 0.055), 94 * MIB);
        assert_eq!(usable(100 * MIB, 0.0), 100 * MIB);
    }

    #[test]
    fn source_kinds_and_refusals() {
        let k = |src: Value| kind_of(&dv(json!({"source": src, "storage": {}})));
        assert_eq!(
            k(json!({"http": {"url": "http://x"}})),
            Ok(Kind::Import("http"))
        );
        assert_eq!(k(json!({"blank": {}})), Ok(Kind::Import("none")));
        assert_eq!(
            k(json!({"pvc": {"name": "a", "namespace": "b"}})),
            Ok(Kind::Clone)
        );
        assert_eq!(k(json!({"upload": {}})), Ok(Kind::Upload));
        assert!(k(json!({"gcs": {"url": "gs://x"}}))
            .unwrap_err()
            .contains("spec.source.gcs is not supported"));
        assert!(kind_of(&dv(json!({"storage": {}})))
            .unwrap_err()
            .contains("spec.source is required"));
    }

    #[test]
    fn requested_size_from_pvc_or_storage() {
        let d = dv(json!({"storage": {"resources": {"requests": {"storage": "64Mi"}}}}));
        assert_eq!(dv_requested(&d), Ok(Some(64 * MIB)));
        let d = dv(
            json!({"pvc": {"volumeMode": "Block", "resources": {"requests": {"storage": "1Gi"}}}}),
        );
        assert_eq!(dv_requested(&d), Ok(Some(1 << 30)));
        assert!(dv_block(&d));
        let d = dv(json!({"storage": {}}));
        assert_eq!(dv_requested(&d), Ok(None));
        let d = dv(json!({}));
        assert!(dv_requested(&d)
            .unwrap_err()
            .contains("spec.pvc or spec.storage"));
    }
}

//! The local-path provisioner: dynamic provisioning for the claims on this one node (of class
//! `local-path`, of no class, or of any other class: there is only one kind of storage here).
//!
//! A Pending claim gets `DATA_DIR/volumes/pvc-<claim uid>`: a directory for `volumeMode:
//! Filesystem` (KubeVirt and CDI put the image in `disk.img` inside it) or a sparse raw file of
//! the requested size for `Block`. A PersistentVolume named `pvc-<claim uid>` (as
//! external-provisioner names them) records the path in `spec.local.path`, pins it to this node
//! and is bound to the claim (`claimRef` + the claim's `spec.volumeName`, both `Bound`). When
//! the claim is gone the `Delete` reclaim policy applies: the data is removed, then the
//! PersistentVolume.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::ResourceExt;
use kubevirt_api::quantity::Quantity;
use kubevirt_runtime::status;
use serde_json::json;

use crate::{Context, Error, PROVISIONER_NAME, STORAGE_CLASS};

/// `pv.kubernetes.io/provisioned-by`, as external-provisioner annotates its volumes.
pub const ANN_PROVISIONED_BY: &str = kubevirt_api::core_kinds::ANN_PROVISIONED_BY;

const ANN_UPLOAD_TARGET: &str = crate::datavolume::ann::UPLOAD_TARGET;
const ANN_POD_READY: &str = crate::datavolume::ann::POD_READY;
const ANN_POD_PHASE: &str = crate::datavolume::ann::POD_PHASE;

/// The PersistentVolume name for a claim uid.
pub fn pv_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// Whether the claim's volume mode is Block (else Filesystem).
pub fn is_block(pvc: &PersistentVolumeClaim) -> bool {
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .is_some_and(|m| m == "Block")
}

/// `spec.resources.requests.storage` in bytes.
pub fn requested_bytes(pvc: &PersistentVolumeClaim) -> Result<u64, String> {
    let q = pvc
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .ok_or("spec.resources.requests.storage is required: set the size of the volume")?;
    let v = Quantity::from_k8s(q)
        .map_err(|e| format!("spec.resources.requests.storage {:?}: {e}", q.0))?
        .value();
    u64::try_from(v)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("spec.resources.requests.storage {:?} must be positive", q.0))
}

/// Every claim is ours except one that opts out of dynamic provisioning
/// (`storageClassName: ""`, which binds only to a pre-made volume). There is one node and one
/// kind of storage, so a class named in a manifest written for another cluster
/// (`standard`, `rook-ceph-block`, ...) is served by this provisioner too, rather than leaving
/// the claim Pending forever.
fn ours(pvc: &PersistentVolumeClaim) -> bool {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        != Some("")
}

/// How a claim is provisioned: its class and that class's reclaim policy.
struct Class {
    name: String,
    reclaim_policy: String,
}

/// The StorageClass a claim of ours is provisioned with: the class it names, or the default
/// class (`storageclass.kubernetes.io/is-default-class`), or `local-path`. `None` when the
/// claim names a class of another provisioner: that claim is left to it, as in a cluster.
async fn class_of(ctx: &Context, pvc: &PersistentVolumeClaim) -> Result<Option<Class>, Error> {
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let named = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone());
    let class = match &named {
        Some(n) => classes.get_opt(n).await?,
        None => default_class(ctx).await?,
    };
    Ok(match class {
        Some(c) if c.provisioner != PROVISIONER_NAME => None,
        Some(c) => Some(Class {
            name: c.name_any(),
            reclaim_policy: c.reclaim_policy.unwrap_or_else(|| "Delete".into()),
        }),
        // A class named in a manifest written for another cluster, which this one does not
        // have: served from local-path storage (see `ours`).
        None => Some(Class {
            name: named.unwrap_or_else(|| STORAGE_CLASS.into()),
            reclaim_policy: "Delete".into(),
        }),
    })
}

/// What a bound claim annotated for upload (`virtctl image-upload pvc`) gets so the upload
/// proxy takes it, whoever binds it; DataVolume claims are handled by the DataVolume
/// controller.
pub(crate) fn upload_ready_annotations(
    pvc: &PersistentVolumeClaim,
) -> Vec<(&'static str, &'static str)> {
    let upload_target = pvc.annotations().contains_key(ANN_UPLOAD_TARGET)
        && !pvc
            .owner_references()
            .iter()
            .any(|o| o.kind == "DataVolume");
    if upload_target {
        vec![(ANN_POD_READY, "true"), (ANN_POD_PHASE, "Running")]
    } else {
        Vec::new()
    }
}

/// The default StorageClass (`storageclass.kubernetes.io/is-default-class`), the class a claim
/// without one has.
async fn default_class(ctx: &Context) -> Result<Option<StorageClass>, Error> {
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    Ok(classes
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .find(|c| {
            c.annotations()
                .get(kubevirt_api::core_kinds::DEFAULT_CLASS_ANNOTATION)
                .is_some_and(|v| v == "true")
        }))
}

async fn default_class_name(ctx: &Context) -> Result<Option<String>, Error> {
    Ok(default_class(ctx).await?.map(|c| c.name_any()))
}

/// Where the volume of `pv_name` lives.
pub fn volume_path(ctx: &Context, pv_name: &str, block: bool) -> PathBuf {
    let dir = ctx.config.volumes_dir();
    if block {
        dir.join(format!("{pv_name}.raw"))
    } else {
        dir.join(pv_name)
    }
}

fn create_volume(path: &std::path::Path, block: bool, size: u64) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
    }
    if block {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(Error::io(path))?;
        f.set_len(size).map_err(Error::io(path))?;
    } else {
        std::fs::create_dir_all(path).map_err(Error::io(path))?;
    }
    Ok(())
}

/// What a claim's `dataSource`/`dataSourceRef` asks of the provisioner.
enum SnapshotSource {
    /// Nothing: an empty volume.
    None,
    /// A VolumeSnapshot that is not ready yet.
    Wait,
    /// A source this claim may not have (the message names the field).
    Refused(String),
    /// The ready snapshot's handle.
    Handle(String),
}

/// The VolumeSnapshot a claim is to be restored from (`dataSourceRef`, else `dataSource`,
/// with `apiGroup: snapshot.storage.k8s.io`, `kind: VolumeSnapshot`), in the claim's own
/// namespace; its `restoreSize` must fit in `size` (the claim's request).
async fn snapshot_source(
    ctx: &Context,
    pvc: &PersistentVolumeClaim,
    ns: &str,
    size: u64,
) -> Result<SnapshotSource, Error> {
    use kubevirt_api::volumesnapshot::{VolumeSnapshot, VolumeSnapshotContent, GROUP};
    let Some(spec) = pvc.spec.as_ref() else {
        return Ok(SnapshotSource::None);
    };
    let (field, name, namespace) = match (&spec.data_source_ref, &spec.data_source) {
        (Some(r), _) if r.api_group.as_deref() == Some(GROUP) && r.kind == "VolumeSnapshot" => {
            ("spec.dataSourceRef", r.name.clone(), r.namespace.clone())
        }
        (None, Some(r)) if r.api_group.as_deref() == Some(GROUP) && r.kind == "VolumeSnapshot" => {
            ("spec.dataSource", r.name.clone(), None)
        }
        _ => return Ok(SnapshotSource::None),
    };
    if let Some(other) = namespace.filter(|n| n != ns) {
        return Ok(SnapshotSource::Refused(format!(
            "{field}.namespace {other:?}: a claim is restored only from a VolumeSnapshot in its own namespace {ns:?}"
        )));
    }
    let snaps: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), ns);
    let snap = match kubevirt_api::names::dns1123_subdomain(&name) {
        None => snaps.get_opt(&name).await?,
        Some(problem) => {
            return Ok(SnapshotSource::Refused(format!(
                "{field}.name {name:?}: {problem}"
            )))
        }
    };
    let Some(snap) = snap else {
        return Ok(SnapshotSource::Wait);
    };
    let st = snap.status.clone().unwrap_or_default();
    if st.ready_to_use != Some(true) {
        return Ok(SnapshotSource::Wait);
    }
    if let Some(rs) = &st.restore_size {
        let want = Quantity::from_k8s(rs).map(|q| q.value()).unwrap_or(0);
        if u64::try_from(want).is_ok_and(|w| w > size) {
            return Ok(SnapshotSource::Refused(format!(
                "spec.resources.requests.storage {size} is smaller than the restoreSize {} of VolumeSnapshot {name:?}: request at least {want}",
                rs.0
            )));
        }
    }
    let Some(content_name) = st.bound_volume_snapshot_content_name else {
        return Ok(SnapshotSource::Wait);
    };
    let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    let Some(content) = contents.get_opt(&content_name).await? else {
        return Ok(SnapshotSource::Wait);
    };
    if content.spec.driver != PROVISIONER_NAME {
        return Ok(SnapshotSource::Refused(format!(
            "{field}: VolumeSnapshot {name:?} was taken by driver {:?}, not {PROVISIONER_NAME}",
            content.spec.driver
        )));
    }
    Ok(match content.status.and_then(|s| s.snapshot_handle) {
        Some(h) => match crate::snapshotter::snapshot_data(&ctx.config, &h) {
            Ok(_) => SnapshotSource::Handle(h),
            Err(e) => SnapshotSource::Refused(format!("{field}: VolumeSnapshot {name:?}: {e}")),
        },
        None => SnapshotSource::Wait,
    })
}

async fn reconcile_pvc(
    pvc: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if pvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase == Some("Bound") {
        return Ok(Action::await_change());
    }
    // A volume made by hand for this claim, or one that fits it, comes first (kube's binder).
    let default_class = default_class_name(&ctx).await?;
    match crate::binder::bind_existing(&ctx, &pvc, default_class.as_deref()).await? {
        crate::binder::Outcome::Bound(pv) => {
            ctx.event(
                pvc.as_ref(),
                EventType::Normal,
                "Bound",
                format!("Bound to the existing volume {pv}"),
            )
            .await;
            return Ok(Action::await_change());
        }
        crate::binder::Outcome::Waiting(why) => {
            ctx.event(pvc.as_ref(), EventType::Warning, "FailedBinding", why)
                .await;
            return Ok(Action::await_change());
        }
        crate::binder::Outcome::NoMatch => {}
    }
    if !ours(&pvc) {
        ctx.event(
            pvc.as_ref(),
            EventType::Normal,
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set".into(),
        )
        .await;
        return Ok(Action::await_change());
    }
    let volume_name = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
    if volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        return Ok(Action::await_change());
    }
    let ns = pvc
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = pvc.name_any();
    let uid = pvc.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let Some(class) = class_of(&ctx, &pvc).await? else {
        return Ok(Action::await_change());
    };
    let size = match requested_bytes(&pvc) {
        Ok(s) => s,
        Err(msg) => {
            ctx.event(
                pvc.as_ref(),
                EventType::Warning,
                "ProvisioningFailed",
                msg.clone(),
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    let block = is_block(&pvc);
    // A claim restored from a VolumeSnapshot: the snapshot must be ready and fit.
    let restore_from = match snapshot_source(&ctx, &pvc, &ns, size).await? {
        SnapshotSource::None => None,
        SnapshotSource::Wait => return Ok(Action::requeue(Duration::from_secs(2))),
        SnapshotSource::Refused(msg) => {
            ctx.event(pvc.as_ref(), EventType::Warning, "ProvisioningFailed", msg)
                .await;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        SnapshotSource::Handle(h) => Some(h),
    };
    let pv = pv_name(&uid);
    let path = volume_path(&ctx, &pv, block);
    {
        let path = path.clone();
        let config = ctx.config.clone();
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            create_volume(&path, block, size)?;
            if let Some(handle) = restore_from {
                let kind =
                    crate::snapshotter::restore_into(&config, &handle, &path, block, size)?;
                tracing::info!(%handle, ?kind, path = %path.display(), "volume restored from snapshot");
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Spec(format!("volume creation task: {e}")))??;
    }
    let spec = pvc.spec.clone().unwrap_or_default();
    let access_modes = spec
        .access_modes
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
    let pv_obj = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv, "annotations": {ANN_PROVISIONED_BY: PROVISIONER_NAME},
                     "labels": {"kubevirt-rs.io/provisioner": "local-path"}},
        "spec": {
            "capacity": {"storage": size.to_string()},
            "accessModes": access_modes,
            "persistentVolumeReclaimPolicy": class.reclaim_policy,
            "storageClassName": class.name,
            "volumeMode": if block { "Block" } else { "Filesystem" },
            "local": {"path": path.display().to_string()},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": ns, "name": name, "uid": uid},
            "nodeAffinity": kubevirt_api::core_kinds::pinned_to(&ctx.config.node_name),
        },
    });
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    match pvs
        .create(&PostParams::default(), &serde_json::from_value(pv_obj)?)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    status::write_status(&pvs, &pv, json!({"phase": "Bound"})).await?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let mut annotations = json!({
        "pv.kubernetes.io/bind-completed": "yes",
        "pv.kubernetes.io/bound-by-controller": "yes",
        "volume.kubernetes.io/storage-provisioner": PROVISIONER_NAME,
        "volume.beta.kubernetes.io/storage-provisioner": PROVISIONER_NAME,
    });
    for (k, v) in upload_ready_annotations(&pvc) {
        annotations[k] = json!(v);
    }
    let mut spec_patch = json!({"volumeName": pv});
    if spec.storage_class_name.is_none() {
        spec_patch["storageClassName"] = json!(class.name);
    }
    pvcs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({
            "metadata": {"annotations": annotations},
            "spec": spec_patch,
        })),
    )
    .await?;
    status::write_status(
        &pvcs,
        &name,
        json!({
            "phase": "Bound",
            "accessModes": access_modes,
            "capacity": {"storage": size.to_string()},
        }),
    )
    .await?;
    ctx.event(
        pvc.as_ref(),
        EventType::Normal,
        "ProvisioningSucceeded",
        format!("Successfully provisioned volume {pv}"),
    )
    .await;
    tracing::info!(%ns, pvc = %name, %pv, path = %path.display(), size, "provisioned");
    Ok(Action::await_change())
}

/// Reclaims our PersistentVolumes whose claim is gone (reclaim policy Delete).
async fn reconcile_pv(pv: Arc<PersistentVolume>, ctx: Arc<Context>) -> Result<Action, Error> {
    if pv.annotations().get(ANN_PROVISIONED_BY).map(String::as_str) != Some(PROVISIONER_NAME) {
        // Someone else's volume: only its phase is kept (kube's binder), never its data.
        let claim = match pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
            Some(r) => {
                let ns = r.namespace.clone().unwrap_or_default();
                let name = r.name.clone().unwrap_or_default();
                // Names from a volume are read only when they can be names at all.
                let valid = kubevirt_api::names::dns1123_label(&ns).is_none()
                    && kubevirt_api::names::dns1123_subdomain(&name).is_none();
                if !valid {
                    None
                } else {
                    Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
                        .get_opt(&name)
                        .await?
                }
            }
            None => None,
        };
        let now = pv.status.as_ref().and_then(|s| s.phase.as_deref());
        if let Some(phase) = crate::binder::volume_phase(&pv, claim.as_ref()) {
            if now != Some(phase) {
                let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
                status::write_status(&pvs, &pv.name_any(), json!({"phase": phase})).await?;
            }
        }
        // A bound volume is looked at again now and then: a claim's deletion missed by the
        // watch (a relist) still releases it.
        let bound = claim.is_some_and(|c| c.metadata.uid.is_some());
        return Ok(if bound {
            Action::requeue(Duration::from_secs(300))
        } else {
            Action::await_change()
        });
    }
    let spec = pv.spec.clone().unwrap_or_default();
    let Some(claim) = spec.claim_ref.clone() else {
        return Ok(Action::await_change());
    };
    let ns = claim.namespace.clone().unwrap_or_default();
    let name = claim.name.clone().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let live = pvcs
        .get_opt(&name)
        .await?
        .filter(|c| c.metadata.uid == claim.uid);
    if live.is_some() {
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    if spec.persistent_volume_reclaim_policy.as_deref() != Some("Delete") {
        let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
        status::write_status(&pvs, &pv.name_any(), json!({"phase": "Released"})).await?;
        return Ok(Action::await_change());
    }
    // A volume that moved to another node with its VM (a live migration re-pins it) holds its
    // data there: that node's agent reclaims it, and the PersistentVolume with it.
    if let Some(why) =
        kubevirt_runtime::pv::off_node(&ctx.client, &pv, &ctx.config.node_name).await?
    {
        tracing::debug!(pv = %pv.name_any(), %why, "left to the node holding it");
        return Ok(Action::await_change());
    }
    // The claim's import (if any) must not keep writing into a deleted volume.
    if let Some(uid) = &claim.uid {
        crate::datavolume::cancel_for_claim(&ctx, uid);
    }
    if let Some(path) = spec.local.as_ref().map(|l| PathBuf::from(&l.path)) {
        // Only ever delete one of our volumes: a direct child of our volumes directory, proven
        // after resolving links and refusing '..' (a PersistentVolume is user input).
        match kubevirt_runtime::pv::remove_provisioned(&ctx.config.volumes_dir(), &path).await {
            Ok(()) => {}
            Err(kubevirt_runtime::pv::RemoveError::NotOurs(e)) => {
                tracing::warn!(pv = %pv.name_any(), error = %e, "not deleting a path that is not one of our volumes");
            }
            Err(kubevirt_runtime::pv::RemoveError::Io { path, source }) => {
                return Err(Error::Io { path, source });
            }
        }
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    match pvs.delete(&pv.name_any(), &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(pv = %pv.name_any(), claim = %format!("{ns}/{name}"), "reclaimed");
    Ok(Action::await_change())
}

fn error_policy<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "provisioner reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Our volumes are pinned to the node that made them (by name). A server started under another
/// node name (its hostname changed, `--node-name` differs) cannot reach them: VMIs using them
/// are placed nowhere and CDI refuses them. Said once, loudly, at start.
async fn warn_if_renamed(ctx: &Context, pvs: &Api<PersistentVolume>) {
    let ours = ListParams::default().labels("kubevirt-rs.io/provisioner=local-path");
    let Ok(list) = pvs.list(&ours).await else {
        return;
    };
    let node = &ctx.config.node_name;
    let mut elsewhere = std::collections::BTreeSet::new();
    for pv in &list.items {
        if let Ok(Some(_)) = kubevirt_runtime::pv::off_node(&ctx.client, pv, node).await {
            let pinned = pv
                .spec
                .as_ref()
                .and_then(|s| s.node_affinity.as_ref())
                .and_then(|a| a.required.as_ref())
                .map(|r| r.node_selector_terms.iter())
                .into_iter()
                .flatten()
                .flat_map(|t| t.match_expressions.iter().flatten())
                .flat_map(|e| e.values.iter().flatten())
                .cloned();
            elsewhere.extend(pinned);
        }
    }
    if !elsewhere.is_empty() {
        tracing::warn!(
            node = %node,
            pinned_to = ?elsewhere,
            "local-path volumes of this data directory are pinned to other node names: VMIs using them will not be placed and CDI will not touch them; start with --node-name set to the name they were made under"
        );
    }
}

/// Runs the provisioner (claims) and the reclaimer (volumes) until the future is dropped.
pub async fn run(ctx: Arc<Context>) {
    let pvcs: Api<PersistentVolumeClaim> = Api::all(ctx.client.clone());
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    warn_if_renamed(&ctx, &pvs).await;
    let claims = Controller::new(pvcs.clone(), watcher::Config::default());
    // A volume that appears or is freed may be the one a Pending claim waits for.
    let pending = claims.store();
    let claims = claims
        .watches(pvs.clone(), watcher::Config::default(), move |pv| {
            let named = pv
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|r| {
                    Some(
                        ObjectRef::<PersistentVolumeClaim>::new(r.name.as_deref()?)
                            .within(r.namespace.as_deref()?),
                    )
                });
            match named {
                Some(r) => vec![r],
                None => pending
                    .state()
                    .into_iter()
                    .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound"))
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect(),
            }
        })
        .run(reconcile_pvc, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "provisioner");
            }
        });
    let volumes = Controller::new(pvs, watcher::Config::default())
        .watches(pvcs, watcher::Config::default(), |pvc| {
            // Ours by the claim's uid; one made by hand by the claim's volumeName.
            let by_uid = pvc.metadata.uid.as_deref().map(pv_name);
            let named = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
            by_uid
                .into_iter()
                .chain(named.filter(|n| !n.is_empty()))
                .map(|n| ObjectRef::new(&n))
                .collect::<Vec<_>>()
        })
        .run(reconcile_pv, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reclaimer");
            }
        });
    futures::join!(claims, volumes);
}

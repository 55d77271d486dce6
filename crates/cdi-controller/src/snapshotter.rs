//! The local-path storage's CSI snapshotter: what external-snapshotter's snapshot controller and
//! csi-snapshotter sidecar do together for a CSI driver, for the volumes of [`crate::provisioner`].
//!
//! - A VolumeSnapshot of a Bound claim of ours (looked up in the VolumeSnapshot's own
//!   namespace: the API has no other) whose class (named, or the default class of our driver)
//!   is ours gets a dynamic VolumeSnapshotContent `snapcontent-<volumesnapshot uid>`. The
//!   volume's data (`disk.img`, or the Block file) is copied into
//!   `DATA_DIR/snapshots/<content name>/disk.img`: a reflink (`FICLONE`) where the filesystem
//!   has them, else a sparse copy (`SEEK_DATA`/`SEEK_HOLE`), into a temporary name, fsynced,
//!   renamed. Then both objects get `readyToUse: true`, `restoreSize` (the source volume's
//!   capacity) and `creationTime`; the content gets `snapshotHandle` (its own name).
//! - A pre-provisioned VolumeSnapshot (`source.volumeSnapshotContentName`) binds to a content
//!   whose `volumeSnapshotRef` names it.
//! - When a VolumeSnapshot is gone, its content goes too if its `deletionPolicy` is `Delete`;
//!   a content being deleted removes its data first (`Retain` keeps it).
//!
//! The only mapping from a snapshot handle to a path is [`snapshot_data`]; the provisioner
//! restores claims whose `dataSource` is a VolumeSnapshot through it ([`restore_into`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::ResourceExt;
use kubevirt_api::volumesnapshot::{
    self as vs, VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent,
};
use kubevirt_runtime::status;
use serde_json::json;

use crate::{Config, Context, Error, PROVISIONER_NAME};

/// The file a snapshot's data is kept in, inside its directory.
const DATA_FILE: &str = "disk.img";
const CHUNK: usize = 8 << 20;

/// `DATA_DIR/snapshots/<handle>/disk.img`: where the data of the snapshot `handle` lives.
/// The one place a handle becomes a path. A handle is a content name we made
/// (`snapcontent-<uid>`), but it arrives from the API (a user may create a content with any
/// `snapshotHandle`), so it must be a DNS-1123 label, and the directory is proven to stay
/// directly beneath `DATA_DIR/snapshots` after resolving links.
pub fn snapshot_data(config: &Config, handle: &str) -> Result<PathBuf, Error> {
    if let Some(problem) = kubevirt_api::names::dns1123_label(handle) {
        return Err(Error::Spec(format!(
            "snapshot handle {handle:?} is not one of this node's snapshots: {problem}"
        )));
    }
    let root = config.snapshots_dir();
    std::fs::create_dir_all(&root).map_err(Error::io(&root))?;
    let dir = kubevirt_runtime::host_path::beneath(&root, Path::new(handle))
        .map_err(|e| Error::Spec(format!("snapshot handle {handle:?}: {e}")))?;
    let real_root = kubevirt_runtime::host_path::resolve(&root)
        .map_err(|e| Error::Spec(format!("{}: {e}", root.display())))?;
    if dir.parent() != Some(real_root.as_path()) {
        return Err(Error::Spec(format!(
            "snapshot handle {handle:?} resolves outside {}",
            real_root.display()
        )));
    }
    Ok(dir.join(DATA_FILE))
}

/// The file holding a bound claim's data: the PersistentVolume's `spec.local.path`
/// (`/disk.img` on Filesystem), only if the volume is one of ours and its path is proven
/// beneath our volumes directory (a PersistentVolume is user input).
fn volume_data(config: &Config, pv: &PersistentVolume) -> Result<(PathBuf, bool), String> {
    if pv
        .annotations()
        .get(crate::provisioner::ANN_PROVISIONED_BY)
        .map(String::as_str)
        != Some(PROVISIONER_NAME)
    {
        return Err(format!(
            "PersistentVolume {} was not provisioned by {PROVISIONER_NAME}",
            pv.name_any()
        ));
    }
    // A volume that moved to another node with its VM has its data there: the copy here, if
    // any, is stale.
    if let Some(host) = kubevirt_api::core_kinds::pinned_host(pv).filter(|h| *h != config.node_name)
    {
        return Err(format!(
            "PersistentVolume {} is on node {host}, not on this node {}: it moved there with its VM",
            pv.name_any(),
            config.node_name
        ));
    }
    let spec = pv.spec.as_ref().ok_or("PersistentVolume has no spec")?;
    let path = spec
        .local
        .as_ref()
        .map(|l| PathBuf::from(&l.path))
        .ok_or_else(|| format!("PersistentVolume {} has no spec.local.path", pv.name_any()))?;
    let real = kubevirt_runtime::host_path::beneath(&config.volumes_dir(), &path)
        .map_err(|e| format!("PersistentVolume {}: {e}", pv.name_any()))?;
    let block = spec.volume_mode.as_deref() == Some("Block");
    Ok(if block {
        (real, true)
    } else {
        (real.join(DATA_FILE), false)
    })
}

/// Nanoseconds since the epoch, external-snapshotter's content `creationTime`.
fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn time_of_nanos(n: i64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_second(n.div_euclid(1_000_000_000))
        .ok()
        .map(Time)
}

/// How a copy was made (logged, and seen by the tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyKind {
    Reflink,
    Sparse,
}

/// Copies `src` to `dst` as a whole file of `len` bytes (`len` ≥ the source: the rest reads
/// as zeros): into `dst` + `.tmp`, reflinked or copied extent by extent with zero blocks left
/// as holes, fsynced, renamed over `dst`, the directory fsynced. `dst` is either the complete
/// copy or untouched.
pub fn copy_file(src: &Path, dst: &Path, len: u64) -> Result<CopyKind, Error> {
    let input = File::open(src).map_err(Error::io(src))?;
    let src_len = input.metadata().map_err(Error::io(src))?.len();
    let file_name = dst
        .file_name()
        .ok_or_else(|| Error::Spec(format!("{} has no file name", dst.display())))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = dst.with_file_name(tmp_name);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)
        .map_err(Error::io(&tmp))?;
    // SAFETY: FICLONE on two owned, open fds; failure is reported through the return value.
    let cloned = unsafe { libc::ioctl(out.as_raw_fd(), libc::FICLONE, input.as_raw_fd()) } == 0;
    let kind = if cloned {
        CopyKind::Reflink
    } else {
        let mut buf = vec![0u8; CHUNK];
        for (start, end) in kubevirt_cdi::data_extents(&input, src_len).map_err(Error::io(src))? {
            let mut off = start;
            while off < end {
                let n = ((end - off) as usize).min(CHUNK);
                input
                    .read_exact_at(&mut buf[..n], off)
                    .map_err(Error::io(src))?;
                // Zero blocks stay holes, as the import engine writes volumes.
                let mut b = 0;
                while b < n {
                    let e = (b + 4096).min(n);
                    if buf[b..e].iter().any(|&x| x != 0) {
                        out.write_all_at(&buf[b..e], off + b as u64)
                            .map_err(Error::io(&tmp))?;
                    }
                    b = e;
                }
                off += n as u64;
            }
        }
        CopyKind::Sparse
    };
    out.set_len(len.max(src_len)).map_err(Error::io(&tmp))?;
    out.sync_all().map_err(Error::io(&tmp))?;
    drop(out);
    std::fs::rename(&tmp, dst).map_err(Error::io(dst))?;
    if let Some(dir) = dst.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io(dir))?;
    }
    Ok(kind)
}

/// Copies the data of the snapshot `handle` into a freshly provisioned volume (`target` is
/// the Block file or the Filesystem volume's directory), for a claim whose `dataSource` is a
/// VolumeSnapshot. `capacity` is the claim's size: a Block target keeps it.
pub fn restore_into(
    config: &Config,
    handle: &str,
    target: &Path,
    block: bool,
    capacity: u64,
) -> Result<CopyKind, Error> {
    let src = snapshot_data(config, handle)?;
    if block {
        copy_file(&src, target, capacity)
    } else {
        let len = std::fs::metadata(&src).map_err(Error::io(&src))?.len();
        copy_file(&src, &target.join(DATA_FILE), len)
    }
}

fn error_status(message: &str) -> serde_json::Value {
    json!({"error": {"message": message, "time": Time(k8s_openapi::jiff::Timestamp::now())},
           "readyToUse": false})
}

/// The class a VolumeSnapshot is taken with, if it is ours: the one it names, else our
/// driver's default class.
async fn class_of(
    ctx: &Context,
    snap: &VolumeSnapshot,
) -> Result<Option<VolumeSnapshotClass>, Error> {
    let classes: Api<VolumeSnapshotClass> = Api::all(ctx.client.clone());
    let class = match &snap.spec.volume_snapshot_class_name {
        Some(n) => classes.get_opt(n).await?,
        None => classes
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .find(|c| {
                c.spec.driver == PROVISIONER_NAME
                    && c.annotations()
                        .get(vs::DEFAULT_SNAPSHOT_CLASS_ANNOTATION)
                        .is_some_and(|v| v == "true")
            }),
    };
    Ok(class.filter(|c| c.spec.driver == PROVISIONER_NAME))
}

async fn fail(
    ctx: &Context,
    snap: &VolumeSnapshot,
    ns: &str,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    let api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), ns);
    let already = snap
        .status
        .as_ref()
        .and_then(|s| s.error.as_ref())
        .and_then(|e| e.message.as_deref())
        == Some(message.as_str());
    if !already {
        status::write_status(&api, &snap.name_any(), error_status(&message)).await?;
        ctx.event(snap, EventType::Warning, reason, message).await;
    }
    Ok(Action::requeue(Duration::from_secs(10)))
}

async fn reconcile_snapshot(snap: Arc<VolumeSnapshot>, ctx: Arc<Context>) -> Result<Action, Error> {
    if snap.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let st = snap.status.clone().unwrap_or_default();
    if st.ready_to_use == Some(true) {
        return Ok(Action::await_change());
    }
    let ns = snap
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = snap.name_any();
    let uid = snap.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let snaps: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());

    // Pre-provisioned: bind to the named content if it names us.
    if let Some(cname) = &snap.spec.source.volume_snapshot_content_name {
        let Some(content) = contents.get_opt(cname).await? else {
            return fail(
                &ctx,
                &snap,
                &ns,
                "SnapshotContentMissing",
                format!("VolumeSnapshotContent {cname} not found"),
            )
            .await;
        };
        let r = &content.spec.volume_snapshot_ref;
        if r.name.as_deref() != Some(name.as_str()) || r.namespace.as_deref() != Some(ns.as_str()) {
            return fail(
                &ctx,
                &snap,
                &ns,
                "SnapshotContentMismatch",
                format!("VolumeSnapshotContent {cname} is bound to another VolumeSnapshot"),
            )
            .await;
        }
        if r.uid.is_none() {
            contents
                .patch(
                    cname,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"volumeSnapshotRef": {"uid": uid}}})),
                )
                .await?;
        } else if r.uid.as_deref() != Some(uid.as_str()) {
            return fail(
                &ctx,
                &snap,
                &ns,
                "SnapshotContentMismatch",
                format!("VolumeSnapshotContent {cname} is bound to another VolumeSnapshot"),
            )
            .await;
        }
        return publish(&ctx, &snaps, &name, &content).await;
    }

    let Some(claim) = snap.spec.source.persistent_volume_claim_name.clone() else {
        return Ok(Action::await_change());
    };
    let Some(class) = class_of(&ctx, &snap).await? else {
        // Another driver's class (or none): not ours to fulfil, as in a cluster.
        return Ok(Action::await_change());
    };
    let content_name = vs::dynamic_content_name(&uid);
    let existing = contents.get_opt(&content_name).await?;
    if let Some(c) = &existing {
        if c.status.as_ref().and_then(|s| s.ready_to_use) == Some(true) {
            return publish(&ctx, &snaps, &name, c).await;
        }
    }
    // The claim, in the VolumeSnapshot's own namespace only.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(pvc) = pvcs.get_opt(&claim).await? else {
        return fail(
            &ctx,
            &snap,
            &ns,
            "SnapshotCreationFailed",
            format!("PersistentVolumeClaim {claim:?} not found in namespace {ns:?}"),
        )
        .await;
    };
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let pv_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty());
    let Some(pv_name) = pv_name.filter(|_| bound) else {
        return fail(
            &ctx,
            &snap,
            &ns,
            "SnapshotCreationFailed",
            format!("PersistentVolumeClaim {claim:?} is not bound yet"),
        )
        .await;
    };
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(pv) = pvs.get_opt(&pv_name).await? else {
        return fail(
            &ctx,
            &snap,
            &ns,
            "SnapshotCreationFailed",
            format!("PersistentVolume {pv_name} of claim {claim:?} not found"),
        )
        .await;
    };
    if pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .and_then(|r| r.uid.as_deref())
        != pvc.uid().as_deref()
    {
        return fail(
            &ctx,
            &snap,
            &ns,
            "SnapshotCreationFailed",
            format!("PersistentVolume {pv_name} is not bound to claim {claim:?}"),
        )
        .await;
    }
    let (src, block) = match volume_data(&ctx.config, &pv) {
        Ok(v) => v,
        Err(m) => return fail(&ctx, &snap, &ns, "SnapshotCreationFailed", m).await,
    };
    let capacity = pv
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| kubevirt_api::quantity::Quantity::from_k8s(q).ok())
        .and_then(|q| u64::try_from(q.value()).ok());

    if existing.is_none() {
        let content = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": content_name,
                         "finalizers": [vs::VOLUME_SNAPSHOT_CONTENT_FINALIZER]},
            "spec": {
                "deletionPolicy": class.spec.deletion_policy,
                "driver": PROVISIONER_NAME,
                "source": {"volumeHandle": pv_name},
                "sourceVolumeMode": if block { "Block" } else { "Filesystem" },
                "volumeSnapshotClassName": class.name_any(),
                "volumeSnapshotRef": {"kind": "VolumeSnapshot",
                    "apiVersion": "snapshot.storage.k8s.io/v1",
                    "namespace": ns, "name": name, "uid": uid},
            },
        });
        match contents
            .create(&PostParams::default(), &serde_json::from_value(content)?)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        status::write_status(
            &snaps,
            &name,
            json!({
            "boundVolumeSnapshotContentName": content_name, "readyToUse": false}),
        )
        .await?;
        ctx.event(
            snap.as_ref(),
            EventType::Normal,
            "CreatingSnapshot",
            format!("Waiting for a snapshot {ns}/{name} to be created by the CSI driver."),
        )
        .await;
    }

    let dst = snapshot_data(&ctx.config, &content_name)?;
    let size = {
        let (src, dst) = (src.clone(), dst.clone());
        tokio::task::spawn_blocking(move || -> Result<(u64, CopyKind), Error> {
            let len = std::fs::metadata(&src).map_err(Error::io(&src))?.len();
            if let Some(dir) = dst.parent() {
                std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
            }
            Ok((len, copy_file(&src, &dst, len)?))
        })
        .await
        .map_err(|e| Error::Spec(format!("snapshot copy task: {e}")))?
    };
    let (len, kind) = match size {
        Ok(v) => v,
        Err(e) => {
            return fail(
                &ctx,
                &snap,
                &ns,
                "SnapshotCreationFailed",
                format!("copying the data of claim {claim:?}: {e}"),
            )
            .await
        }
    };
    let restore_size = i64::try_from(capacity.unwrap_or(len).max(len)).unwrap_or(i64::MAX);
    let created = now_nanos();
    status::write_status(
        &contents,
        &content_name,
        json!({
        "snapshotHandle": content_name, "readyToUse": true,
        "restoreSize": restore_size, "creationTime": created}),
    )
    .await?;
    tracing::info!(%ns, snapshot = %name, content = %content_name, ?kind, bytes = len, "volume snapshot taken");
    ctx.event(
        snap.as_ref(),
        EventType::Normal,
        "SnapshotCreated",
        format!("Snapshot {ns}/{name} was successfully created by the CSI driver."),
    )
    .await;
    let content = contents.get(&content_name).await?;
    publish(&ctx, &snaps, &name, &content).await
}

/// Copies a ready content's status onto its VolumeSnapshot.
async fn publish(
    ctx: &Context,
    snaps: &Api<VolumeSnapshot>,
    name: &str,
    content: &VolumeSnapshotContent,
) -> Result<Action, Error> {
    let cs = content.status.clone().unwrap_or_default();
    if cs.ready_to_use != Some(true) {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    status::write_status(
        snaps,
        name,
        json!({
            "boundVolumeSnapshotContentName": content.name_any(),
            "readyToUse": true,
            "restoreSize": cs.restore_size.unwrap_or(0).to_string(),
            "creationTime": cs.creation_time.and_then(time_of_nanos),
            "error": null,
        }),
    )
    .await?;
    if let Ok(s) = snaps.get(name).await {
        ctx.event(
            &s,
            EventType::Normal,
            "SnapshotReady",
            format!(
                "Snapshot {}/{name} is ready to use.",
                s.namespace().unwrap_or_default()
            ),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// A content whose VolumeSnapshot is gone goes too under `Delete`; a content being deleted
/// takes its data with it under `Delete`, then its finalizer is removed.
async fn reconcile_content(
    content: Arc<VolumeSnapshotContent>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if content.spec.driver != PROVISIONER_NAME {
        return Ok(Action::await_change());
    }
    let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    let name = content.name_any();
    let delete = content.spec.deletion_policy == vs::DELETION_POLICY_DELETE;
    if content.metadata.deletion_timestamp.is_none() {
        let r = &content.spec.volume_snapshot_ref;
        let (Some(ns), Some(vs_name)) = (&r.namespace, &r.name) else {
            return Ok(Action::await_change());
        };
        let snaps: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), ns);
        // Only a content that was bound (its ref carries the VolumeSnapshot's uid) follows
        // its VolumeSnapshot; a pre-provisioned one waits for its VolumeSnapshot to appear.
        let Some(uid) = &r.uid else {
            return Ok(Action::await_change());
        };
        let live = snaps
            .get_opt(vs_name)
            .await?
            .filter(|s| s.uid().as_ref() == Some(uid));
        if live.is_none() && delete {
            match contents.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    if !content
        .finalizers()
        .iter()
        .any(|f| f == vs::VOLUME_SNAPSHOT_CONTENT_FINALIZER)
    {
        return Ok(Action::await_change());
    }
    if delete {
        if let Some(handle) = content
            .status
            .as_ref()
            .and_then(|s| s.snapshot_handle.clone())
        {
            match snapshot_data(&ctx.config, &handle) {
                Ok(file) => {
                    if let Some(dir) = file.parent().map(Path::to_path_buf) {
                        let removed =
                            tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir))
                                .await
                                .map_err(|e| Error::Spec(format!("snapshot removal task: {e}")))?;
                        match removed {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => {
                                return Err(Error::Io {
                                    path: file,
                                    source: e,
                                })
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(content = %name, error = %e, "not removing data of a foreign snapshot handle")
                }
            }
        }
    }
    let keep: Vec<String> = content
        .finalizers()
        .iter()
        .filter(|f| *f != vs::VOLUME_SNAPSHOT_CONTENT_FINALIZER)
        .cloned()
        .collect();
    contents
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": keep}})),
        )
        .await?;
    tracing::info!(content = %name, delete, "volume snapshot content removed");
    Ok(Action::await_change())
}

fn error_policy<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "snapshotter reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the snapshotter (VolumeSnapshots) and the content reclaimer until dropped.
pub async fn run(ctx: Arc<Context>) {
    let snaps: Api<VolumeSnapshot> = Api::all(ctx.client.clone());
    let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    let snapshots = Controller::new(snaps.clone(), watcher::Config::default())
        .run(reconcile_snapshot, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "snapshotter");
            }
        });
    let reclaim = Controller::new(contents, watcher::Config::default())
        .watches(snaps, watcher::Config::default(), |s| {
            s.metadata
                .uid
                .as_deref()
                .map(|uid| ObjectRef::new(&vs::dynamic_content_name(uid)))
        })
        .run(reconcile_content, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "snapshot content reclaimer");
            }
        });
    futures::join!(snapshots, reclaim);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_that_would_escape_the_snapshots_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::single_node("n", dir.path());
        for bad in [
            "..",
            "../volumes",
            "a/b",
            "/etc",
            "",
            "A",
            ".",
            "snap/../../x",
        ] {
            assert!(snapshot_data(&cfg, bad).is_err(), "{bad:?}");
        }
        // A link planted where a snapshot directory would be does not lead out.
        std::fs::create_dir_all(cfg.snapshots_dir()).unwrap();
        std::os::unix::fs::symlink("/etc", cfg.snapshots_dir().join("snapcontent-x")).unwrap();
        assert!(snapshot_data(&cfg, "snapcontent-x").is_err());
        let ok = snapshot_data(&cfg, "snapcontent-1234").unwrap();
        assert!(
            ok.ends_with("snapshots/snapcontent-1234/disk.img"),
            "{}",
            ok.display()
        );
    }

    #[test]
    fn copies_are_sparse_complete_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"hello", 1 << 20).unwrap();
        f.write_all_at(b"world", 40 << 20).unwrap();
        drop(f);
        let dst = dir.path().join("dst");
        std::fs::write(&dst, b"old").unwrap();
        copy_file(&src, &dst, 64 << 20).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert!(!dir.path().join("dst.tmp").exists());
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&dst).unwrap().blocks() * 512;
        assert!(
            blocks < 8 << 20,
            "copy is not sparse: {blocks} bytes allocated"
        );
    }
}

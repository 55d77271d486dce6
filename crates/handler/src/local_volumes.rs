//! Local-path volumes that move with their VM in a live migration (docs/migration.md, "Local
//! volumes"): beyond KubeVirt, which refuses to migrate a VMI with a claim that is not
//! `ReadWriteMany`.
//!
//! A volume of our local-path provisioner is one directory (or raw file, for `Block`) at its
//! `spec.local.path` on the node it is pinned to by name. Every node has the same data
//! directory path, as in a cluster, so the same path names the volume's copy on any node.
//!
//! - **Source**: the VMI's launcher is told these claims are node-local (`volumes.json`'s
//!   `localClaims`), so a migration mirrors their disks to the target (`sync: full`); the node
//!   agent publishes each disk file's size in `status.volumeStatus[].size` (the target's file
//!   must have exactly that size, and a CDI import's `disk.img` size cannot be recomputed).
//! - **Target**: [`create_incoming`] first asks the API server, with a dry run, whether it
//!   would re-pin the volume (Kubernetes before 1.34, or without the `MutablePVNodeAffinity`
//!   gate, refuses: the migration fails before anything is copied), then makes the volume
//!   empty at the same path, records it in the VMI directory (`incoming-volumes.json`), and the
//!   launcher exports it for the copy. When the guest runs here, [`pin_here`] re-pins each
//!   PersistentVolume's `nodeAffinity` to this node *before* the VMI is taken over: whoever
//!   sees the VMI on this node finds its volumes here. A migration that fails removes what it
//!   made ([`remove_incoming`]) only if the guest never ran here (its launcher's incoming
//!   migration did not complete, nor reach post-copy) and the volume is not pinned here: a
//!   copy the guest ran on is the newest, and is pinned here instead.
//! - **Every node**: the volumes a VMI uses as node-local are recorded in its directory at
//!   start (`local-volumes.json`: PersistentVolume → claim and path).
//! - **Source, after**: when a VMI directory whose guest migrated away (its launcher ended
//!   `Migrated`) is removed, its volumes are listed under `DATA_DIR/leaving-volumes/`, and
//!   [`sweep`] removes each copy once its PersistentVolume is pinned elsewhere (or gone), never
//!   before (until then the source's copy may be the only one), and never a path another VMI
//!   directory of this node uses.
//! - **Reclaim**: a node apart from the server (which runs the provisioner) removes the data of
//!   the volumes pinned to it whose claim is gone (`Delete` policy), then the PersistentVolume.
//!
//! Making a volume here and removing one that left take one lock: a VM that moves away and
//! back finds its path made anew, not removed behind it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use kubevirt_api::core_kinds::{local_path_volume, pinned_host, pinned_to, pv_bound_to};
use kubevirt_launcher::api::VmiDir;
use kubevirt_runtime::host_path::HostPathPolicy;
use serde_json::json;

static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the source lists the copies it leaves behind, one file per PersistentVolume.
const LEAVING: &str = "leaving-volumes";
/// In a migration target's VMI directory: PersistentVolume name → path made for the copy.
const INCOMING: &str = "incoming-volumes.json";
/// In every VMI directory with node-local volumes: PersistentVolume name → [`LocalVolume`].
const LOCAL: &str = "local-volumes.json";

/// A node-local volume a VMI uses: its claim (a DataVolume's by the DataVolume's name, as the
/// launcher knows it) and the volume's path (directory, or raw file for Block).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LocalVolume {
    pub claim: String,
    pub path: PathBuf,
}

/// Writes `local-volumes.json` (atomically) for the VMI directory `dir`.
pub fn record_local(dir: &VmiDir, volumes: &BTreeMap<String, LocalVolume>) -> std::io::Result<()> {
    if volumes.is_empty() {
        let _ = std::fs::remove_file(dir.path().join(LOCAL));
        return Ok(());
    }
    write_atomic(
        &dir.path().join(LOCAL),
        &serde_json::to_vec(volumes).map_err(std::io::Error::other)?,
    )
}

/// The node-local volumes recorded for `dir`.
pub fn read_local(dir: &VmiDir) -> BTreeMap<String, LocalVolume> {
    std::fs::read(dir.path().join(LOCAL))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// `pv`'s path when it is where our provisioner puts a volume of that name: directly in this
/// node's provisioner directory, named after the volume (`<name>`, or `<name>.raw` for Block).
/// Two volumes naming one path, or a path elsewhere, are nobody's to make or remove.
pub fn own_path(policy: &HostPathPolicy, pv: &PersistentVolume) -> Result<PathBuf, String> {
    let name = pv.name_any();
    if kubevirt_api::names::dns1123_subdomain(&name).is_some() {
        return Err(format!("{name:?} is not a PersistentVolume name"));
    }
    let local = local_path(pv).ok_or("no spec.local.path")?;
    let path =
        kubevirt_runtime::host_path::provisioned_volume(policy.volumes_dir(), Path::new(local))
            .map_err(|e| format!("spec.local.path: {e}"))?;
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    if file == name || file.strip_suffix(".raw") == Some(name.as_str()) {
        Ok(path)
    } else {
        Err(format!(
            "spec.local.path {local:?} is not this volume's own path in the provisioner's directory"
        ))
    }
}

/// Whether the guest may have run on this node's copy of the VMI in `dir` as a migration's
/// target: its incoming migration completed or reached post-copy, or it runs.
fn guest_ran_here(dir: &VmiDir) -> bool {
    dir.read_state().is_ok_and(|s| {
        matches!(
            s.phase,
            kubevirt_launcher::api::Phase::Running | kubevirt_launcher::api::Phase::Paused
        ) || s
            .migration
            .as_ref()
            .is_some_and(|m| m.completed || m.qemu_status.starts_with("postcopy"))
    })
}

/// Whether `pv` (the volume `pvc` is bound to) is a local-path volume pinned to `node`: one a
/// live migration from `node` copies.
pub fn movable_from(pv: &PersistentVolume, pvc: &PersistentVolumeClaim, node: &str) -> bool {
    local_path_volume(pv) && pinned_host(pv) == Some(node) && pv_bound_to(pv, pvc)
}

fn local_path(pv: &PersistentVolume) -> Option<&str> {
    pv.spec.as_ref()?.local.as_ref().map(|l| l.path.as_str())
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Made {
    /// The migration they were made for.
    uid: String,
    volumes: BTreeMap<String, PathBuf>,
}

fn read_made(dir: &VmiDir) -> Made {
    std::fs::read(dir.path().join(INCOMING))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Makes, on a migration's target, the volume of `pv` at its `local.path` (beneath this
/// node's provisioner directory, [`kubevirt_runtime::host_path::provisioned_volume`]): an
/// empty directory with a sparse `disk.img` of `size` bytes, or a sparse raw file for
/// `block`. Whatever was at that path is another migration's leftover (the volume is pinned
/// to the source): it goes. Returns the disk file the launcher opens, and the volume's path.
pub async fn create_incoming(
    policy: &HostPathPolicy,
    pv: &PersistentVolume,
    block: bool,
    size: u64,
    inc: crate::volumes::Incoming<'_>,
) -> Result<(PathBuf, PathBuf), String> {
    let name = pv.name_any();
    let path = own_path(policy, pv)?;
    // The switch-over re-pins the volume here: a cluster that refuses that (Kubernetes before
    // 1.34, or without the MutablePVNodeAffinity gate) fails the migration now, not then.
    let me = inc.me;
    Api::<PersistentVolume>::all(inc.client.clone())
        .patch(
            &name,
            &PatchParams::default().dry_run(),
            &Patch::Merge(json!({"spec": {"nodeAffinity": pinned_to(me)}})),
        )
        .await
        .map_err(|e| {
            format!(
                "the API server would not re-pin the volume to node {me} (its nodeAffinity must be mutable: Kubernetes 1.34+ with the MutablePVNodeAffinity feature gate): {e}"
            )
        })?;
    let _held = LOCK.lock().await;
    // A copy that left this node earlier is not removed behind the one made now.
    let leaving = policy
        .volumes_dir()
        .parent()
        .map(|d| d.join(LEAVING).join(&name));
    let dir = inc.dir.clone();
    let uid = inc.uid.to_string();
    let made = path.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<PathBuf> {
        if let Some(l) = leaving {
            let _ = std::fs::remove_file(l);
        }
        match std::fs::symlink_metadata(&made) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&made)?,
            Ok(_) => std::fs::remove_file(&made)?,
            Err(_) => {}
        }
        let file = if block {
            made.clone()
        } else {
            std::fs::create_dir(&made)?;
            made.join("disk.img")
        };
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)?
            .set_len(size)?;
        // Recorded before the copy starts: a failed migration finds what to remove.
        let mut rec = read_made(&dir);
        if rec.uid != uid {
            rec = Made {
                uid,
                volumes: BTreeMap::new(),
            };
        }
        rec.volumes.insert(name, made);
        write_atomic(
            &dir.path().join(INCOMING),
            &serde_json::to_vec(&rec).map_err(std::io::Error::other)?,
        )?;
        Ok(file)
    })
    .await
    .map_err(|e| format!("creating the volume: {e}"))?
    .map(|disk| (disk, path.clone()))
    .map_err(|e| format!("creating {} for the migration: {e}", path.display()))
}

/// Pins to `me` the volumes a migration brought here (re-pinning their `nodeAffinity`), before
/// the VMI is taken over. Idempotent: a retry after a failed write finishes the rest.
pub async fn pin_here(client: &Client, dir: &VmiDir, me: &str) -> Result<(), kube::Error> {
    let made = read_made(dir);
    if made.volumes.is_empty() {
        return Ok(());
    }
    let _held = LOCK.lock().await;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for name in made.volumes.keys() {
        let Some(pv) = pvs.get_opt(name).await? else {
            continue;
        };
        if pinned_host(&pv) == Some(me) || !local_path_volume(&pv) {
            continue;
        }
        pvs.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": pv.resource_version()},
                "spec": {"nodeAffinity": pinned_to(me)},
            })),
        )
        .await?;
        tracing::info!(pv = %name, node = %me, "the volume moved here with its VM");
    }
    Ok(())
}

/// Removes what a migration target made here for a migration that did not bring the guest:
/// only volumes still pinned elsewhere (never one pinned here: that copy is the live one).
pub async fn remove_incoming(client: &Client, policy: &HostPathPolicy, dir: &VmiDir, me: &str) {
    let made = read_made(dir);
    if made.volumes.is_empty() {
        return;
    }
    if guest_ran_here(dir) {
        // The newest copy is here: it is pinned here, never removed (a conflict or a transient
        // error is tried again for a while).
        let mut pinned = pin_here(client, dir, me).await;
        for _ in 0..10 {
            if pinned.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            pinned = pin_here(client, dir, me).await;
        }
        match pinned {
            Ok(()) => {
                tracing::warn!(vmi = %dir.path().display(), "the guest ran here before its migration was given up: its volumes stay here, pinned to this node")
            }
            Err(e) => {
                tracing::error!(vmi = %dir.path().display(), error = %e, "the guest ran here before its migration was given up and its volumes cannot be pinned here: they are kept, but the PersistentVolumes still name the source node")
            }
        }
        let _ = std::fs::remove_file(dir.path().join(INCOMING));
        return;
    }
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let _held = LOCK.lock().await;
    for (name, path) in &made.volumes {
        match pvs.get_opt(name).await {
            Ok(Some(pv)) if pinned_host(&pv) == Some(me) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(pv = %name, error = %e, "keeping a volume made for a failed migration: its volume cannot be read");
                continue;
            }
        }
        match kubevirt_runtime::pv::remove_provisioned(policy.volumes_dir(), path).await {
            Ok(()) => {
                tracing::info!(pv = %name, path = %path.display(), "removed the copy made for a failed migration")
            }
            Err(e) => {
                tracing::warn!(pv = %name, error = %e, "removing the copy made for a failed migration")
            }
        }
    }
    let _ = std::fs::remove_file(dir.path().join(INCOMING));
}

/// Before VMI directory `dir` is removed: if its guest migrated away (its launcher ended
/// `Migrated`), its node-local volumes are listed to be removed by [`sweep`] once pinned
/// elsewhere. No API call: it cannot fail half-way, whoever removes the directory.
pub async fn mark_leaving(policy: &HostPathPolicy, dir: &VmiDir) {
    let migrated = dir.read_state().is_ok_and(|s| {
        s.phase == kubevirt_launcher::api::Phase::Succeeded
            && s.reason == kubevirt_launcher::api::migration::reason::MIGRATED
    });
    let volumes = read_local(dir);
    if !migrated || volumes.is_empty() {
        return;
    }
    let Some(base) = policy.volumes_dir().parent().map(|d| d.join(LEAVING)) else {
        return;
    };
    let _held = LOCK.lock().await;
    for (name, v) in &volumes {
        if kubevirt_api::names::dns1123_subdomain(name).is_some() {
            continue;
        }
        let written = std::fs::create_dir_all(&base)
            .and_then(|()| write_atomic(&base.join(name), v.path.as_os_str().as_encoded_bytes()));
        if let Err(e) = written {
            tracing::warn!(pv = %name, error = %e, "listing a volume that left this node");
        }
    }
}

/// The paths the VMI directories of this node use as node-local volumes.
fn paths_in_use(data_dir: &Path) -> std::collections::BTreeSet<PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(data_dir.join("vms"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(b) = std::fs::read(e.path().join(LOCAL)) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<BTreeMap<String, LocalVolume>>(&b) else {
            continue;
        };
        out.extend(v.into_values().map(|l| l.path));
    }
    out
}

/// The claims among `claims` whose node-local volume another VMI directory of this node than
/// `dir` uses too (a claim two VMIs share cannot move with one of them).
pub fn shared_with_others(
    data_dir: &Path,
    dir: &VmiDir,
    claims: &std::collections::BTreeSet<String>,
) -> std::collections::BTreeSet<String> {
    let mine = read_local(dir);
    let mut out = std::collections::BTreeSet::new();
    let me = std::fs::canonicalize(dir.path()).unwrap_or_else(|_| dir.path().to_path_buf());
    for e in std::fs::read_dir(data_dir.join("vms"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if std::fs::canonicalize(e.path()).unwrap_or_else(|_| e.path()) == me {
            continue;
        }
        let Ok(b) = std::fs::read(e.path().join(LOCAL)) else {
            continue;
        };
        let Ok(theirs) = serde_json::from_slice::<BTreeMap<String, LocalVolume>>(&b) else {
            continue;
        };
        for (pv, v) in &mine {
            if theirs.contains_key(pv) && claims.contains(&v.claim) {
                out.insert(v.claim.clone());
            }
        }
    }
    out
}

/// One pass: copies that left this node are removed once their volume is pinned elsewhere or
/// gone; with `reclaim`, the volumes pinned here whose claim is gone (`Delete` policy) are
/// reclaimed, data first.
pub async fn sweep(
    client: &Client,
    policy: &HostPathPolicy,
    data_dir: &Path,
    me: &str,
    reclaim: bool,
) {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    if let Some(base) = policy.volumes_dir().parent().map(|d| d.join(LEAVING)) {
        let entries: Vec<_> = std::fs::read_dir(&base)
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if kubevirt_api::names::dns1123_subdomain(&name).is_some() {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let _held = LOCK.lock().await;
            // Still listed (a migration back here clears it), read under the lock.
            let Ok(path) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let gone = match pvs.get_opt(&name).await {
                Ok(None) => true,
                // Pinned elsewhere, and still naming this path as its own.
                Ok(Some(pv)) => {
                    pinned_host(&pv).is_some_and(|h| h != me)
                        && own_path(policy, &pv).is_ok_and(|p| p == Path::new(&path))
                }
                Err(_) => false,
            };
            if !gone {
                continue;
            }
            if paths_in_use(data_dir).contains(Path::new(&path)) {
                tracing::warn!(pv = %name, %path, "a copy that left is used by another VMI here: kept");
                continue;
            }
            match kubevirt_runtime::pv::remove_provisioned(policy.volumes_dir(), Path::new(&path))
                .await
            {
                Ok(()) => {
                    tracing::info!(pv = %name, %path, "removed the copy of a volume that moved to another node")
                }
                Err(err) => {
                    tracing::warn!(pv = %name, error = %err, "not removing the copy of a volume that moved")
                }
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
    if !reclaim {
        return;
    }
    let ours = ListParams::default().labels("kubevirt-rs.io/provisioner=local-path");
    let Ok(list) = pvs.list(&ours).await else {
        return;
    };
    for pv in list.items {
        if pinned_host(&pv) != Some(me) || !local_path_volume(&pv) {
            continue;
        }
        let spec = pv.spec.clone().unwrap_or_default();
        if spec.persistent_volume_reclaim_policy.as_deref() != Some("Delete") {
            continue;
        }
        let Some(r) = spec.claim_ref else { continue };
        let (Some(ns), Some(claim)) = (r.namespace.as_deref(), r.name.as_deref()) else {
            continue;
        };
        if kubevirt_api::names::dns1123_label(ns).is_some()
            || kubevirt_api::names::dns1123_subdomain(claim).is_some()
        {
            continue;
        }
        // A claimRef without a uid names whichever claim has that name.
        let live = match Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
            .get_opt(claim)
            .await
        {
            Ok(c) => c.is_some_and(|c| r.uid.is_none() || c.metadata.uid == r.uid),
            Err(_) => continue,
        };
        if live {
            continue;
        }
        let name = pv.name_any();
        let path = match own_path(policy, &pv) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(pv = %name, error = %e, "not reclaiming a volume");
                continue;
            }
        };
        let _held = LOCK.lock().await;
        if paths_in_use(data_dir).contains(&path) {
            tracing::warn!(pv = %name, "a volume whose claim is gone is used by a VMI here: kept");
            continue;
        }
        if let Err(e) = kubevirt_runtime::pv::remove_provisioned(policy.volumes_dir(), &path).await
        {
            tracing::warn!(pv = %name, error = %e, "not reclaiming a volume");
            continue;
        }
        match pvs.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(pv = %name, "reclaimed"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(pv = %name, error = %e, "deleting a reclaimed volume"),
        }
    }
}

/// The sizes of the VMI's node-local disks (volume name → bytes), as the source publishes them
/// in `status.volumeStatus` for a migration's target.
pub fn local_sizes(
    vmi: &kubevirt_api::VirtualMachineInstance,
    dir: &VmiDir,
) -> BTreeMap<String, u64> {
    let Ok(node) = dir.read_volumes() else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for v in vmi.spec.volumes.iter().flatten() {
        let file = match (&v.persistent_volume_claim, &v.data_volume) {
            (Some(c), _) if node.local_claims.contains(&c.claim_name) => {
                node.persistent_volume_claims.get(&c.claim_name)
            }
            (_, Some(d)) if node.local_claims.contains(&d.name) => node.data_volumes.get(&d.name),
            _ => None,
        };
        if let Some(len) = file
            .and_then(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
        {
            out.insert(v.name.clone(), len);
        }
    }
    out
}

/// `status.volumeStatus` with an entry per node-local disk carrying its `size` (other entries
/// kept; an entry of the same name updated).
pub fn with_sizes(current: &serde_json::Value, sizes: &BTreeMap<String, u64>) -> serde_json::Value {
    let mut out: Vec<serde_json::Value> = current.as_array().cloned().unwrap_or_default();
    for (name, size) in sizes {
        match out.iter_mut().find(|e| e["name"] == name.as_str()) {
            Some(e) => e["size"] = json!(size),
            None => out.push(json!({"name": name, "target": "", "size": size})),
        }
    }
    serde_json::Value::Array(out)
}

/// The sizes a source published (volume name → bytes).
pub fn published_sizes(vmi: &kubevirt_api::VirtualMachineInstance) -> BTreeMap<String, u64> {
    vmi.status
        .iter()
        .flat_map(|s| s.volume_status.iter().flatten())
        .filter_map(|v| Some((v.name.clone(), u64::try_from(v.size?).ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base: &Path) -> HostPathPolicy {
        std::fs::create_dir_all(base.join("data/volumes")).expect("mkdir");
        HostPathPolicy::new(&[], &base.join("data"), &base.join("data/volumes")).expect("policy")
    }

    fn pv(name: &str, path: &str) -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"local": {"path": path}}}))
        .expect("pv")
    }

    #[test]
    fn only_a_volume_at_its_own_path_is_moved_made_or_removed() {
        let t = tempfile::tempdir().expect("tempdir");
        let base = t.path().canonicalize().expect("canon");
        let p = policy(&base);
        let vols = base.join("data/volumes");
        let at = |n: &str| vols.join(n).display().to_string();
        assert_eq!(
            own_path(&p, &pv("pvc-1", &at("pvc-1"))),
            Ok(vols.join("pvc-1"))
        );
        assert_eq!(
            own_path(&p, &pv("pvc-1", &at("pvc-1.raw"))),
            Ok(vols.join("pvc-1.raw"))
        );
        // Another volume's path, deeper, '..', the data directory, elsewhere: nobody's.
        for bad in [
            at("pvc-2"),
            at("pvc-1/disk.img"),
            format!("{}/../kubeconfig", vols.display()),
            base.join("data").display().to_string(),
            "/etc".to_string(),
        ] {
            assert!(own_path(&p, &pv("pvc-1", &bad)).is_err(), "{bad}");
        }
        assert!(own_path(&p, &pv("../x", &at("../x"))).is_err());
    }

    #[test]
    fn only_a_guest_that_migrated_away_leaves_its_volumes_behind() {
        use kubevirt_launcher::api::{Phase, State};
        let t = tempfile::tempdir().expect("tempdir");
        let base = t.path().canonicalize().expect("canon");
        let p = policy(&base);
        let data = base.join("data");
        let dir = VmiDir::new(&data, "default", "v").expect("dir");
        std::fs::create_dir_all(dir.path()).expect("mkdir");
        let volume = data.join("volumes/pvc-1");
        let local = BTreeMap::from([(
            "pvc-1".to_string(),
            LocalVolume {
                claim: "c".into(),
                path: volume.clone(),
            },
        )]);
        record_local(&dir, &local).expect("record");
        assert_eq!(read_local(&dir), local);
        let leaving = data.join(LEAVING).join("pvc-1");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        // Stopped here (or failed): its volume stays.
        let mut st = State::pending("default/v");
        st.phase = Phase::Succeeded;
        dir.write_state(&st).expect("state");
        rt.block_on(mark_leaving(&p, &dir));
        assert!(!leaving.exists());
        // Migrated away: listed, with its path.
        st.reason = kubevirt_launcher::api::migration::reason::MIGRATED.into();
        dir.write_state(&st).expect("state");
        rt.block_on(mark_leaving(&p, &dir));
        assert_eq!(
            std::fs::read(&leaving).expect("listed"),
            volume.as_os_str().as_encoded_bytes()
        );
        // Another VMI directory using the volume shares it.
        let other = VmiDir::new(&data, "default", "w").expect("dir");
        std::fs::create_dir_all(other.path()).expect("mkdir");
        record_local(&other, &local).expect("record");
        let claims = std::collections::BTreeSet::from(["c".to_string()]);
        assert_eq!(shared_with_others(&data, &dir, &claims), claims);
        assert!(paths_in_use(&data).contains(&volume));
    }

    #[test]
    fn sizes_are_merged_into_the_volume_status_entries() {
        let current = json!([{"name": "hot", "target": "sda", "hotplugVolume": {}},
                             {"name": "data", "target": "", "size": 1}]);
        let sizes = BTreeMap::from([("data".to_string(), 16u64 << 20), ("root".to_string(), 7)]);
        let v = with_sizes(&current, &sizes);
        assert_eq!(
            v,
            json!([{"name": "hot", "target": "sda", "hotplugVolume": {}},
                   {"name": "data", "target": "", "size": 16u64 << 20},
                   {"name": "root", "target": "", "size": 7}])
        );
    }
}

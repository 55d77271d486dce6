//! A VMI's `persistentVolumeClaim` and `dataVolume` volumes → the files the launcher opens
//! (`kubevirt_launcher::api::NodeVolumes`, handed over as `volumes.json` in the VMI directory).
//!
//! PVC → its bound PersistentVolume → `spec.local.path` (the local-path provisioner's
//! directory or file): for `volumeMode: Filesystem` the disk is `disk.img` in that directory
//! (KubeVirt's convention), for `Block` the path itself. A volume that is not usable yet (claim
//! missing or unbound, DataVolume not `Succeeded`) makes the VMI wait, as virt-handler does:
//! it is not a failure.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::Api;
use kube::{Client, ResourceExt};
use kubevirt_api::{DataVolume, VirtualMachineInstance};
use kubevirt_launcher::api::NodeVolumes;
use kubevirt_runtime::host_path::HostPathPolicy;

/// What the launcher needs, or why the VMI must wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The files the launcher opens, and the node-local volumes among them (PersistentVolume →
    /// claim and path).
    Ready(
        NodeVolumes,
        std::collections::BTreeMap<String, crate::local_volumes::LocalVolume>,
    ),
    /// A volume is not ready; the message says which and why.
    Wait(String),
    /// A volume points at a host path this node does not allow (`--host-path-root`); the
    /// message says which volume, which path and how to allow it. The VMI fails to start.
    Refused(String),
}

/// CDI's default filesystem overhead: a disk.img created for a bare Filesystem claim leaves
/// this fraction free, as KubeVirt's `disk.img` sizing does.
const FILESYSTEM_OVERHEAD: f64 = 0.055;

/// A capacity map's `storage`, in bytes (0 when absent or unreadable).
fn storage_bytes(
    capacity: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
) -> u64 {
    capacity
        .and_then(|c| c.get("storage"))
        .and_then(|q| kubevirt_api::quantity::Quantity::from_k8s(q).ok())
        .and_then(|q| u64::try_from(q.value()).ok())
        .unwrap_or(0)
}

enum Claim {
    /// The disk file, and when the volume is on this node only (a local-path volume a live
    /// migration copies: `volumes.json`'s `localClaims`) its PersistentVolume and path.
    Path(PathBuf, Option<(String, PathBuf)>),
    Wait(String),
    Refused(String),
}

/// A migration bringing the VMI here from `source`: a local-path volume pinned to that node
/// is made here empty, `size` bytes, for the copy to fill (docs/migration.md).
#[derive(Clone, Copy)]
pub struct Incoming<'a> {
    pub source: &'a str,
    /// The migration's uid, recorded with what is made for it.
    pub uid: &'a str,
    /// Volume name → the size the source published (`status.volumeStatus[].size`).
    pub sizes: &'a std::collections::BTreeMap<String, u64>,
    pub dir: &'a kubevirt_launcher::api::VmiDir,
    pub client: &'a Client,
    /// This node.
    pub me: &'a str,
}

#[allow(clippy::too_many_arguments)]
async fn claim_path(
    client: &Client,
    policy: &HostPathPolicy,
    node: &str,
    ns: &str,
    claim: &str,
    from_dv: bool,
    incoming: Option<(Incoming<'_>, &str)>,
) -> kube::Result<Claim> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let Some(pvc) = pvcs.get_opt(claim).await? else {
        return Ok(Claim::Wait(format!(
            "PersistentVolumeClaim {ns}/{claim} does not exist"
        )));
    };
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let pv_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty());
    let (true, Some(pv_name)) = (bound, pv_name) else {
        return Ok(Claim::Wait(format!(
            "PersistentVolumeClaim {ns}/{claim} is not bound yet"
        )));
    };
    // A claim a DataVolume fills is usable only once the DataVolume succeeded.
    if !from_dv {
        if let Some(o) = pvc
            .owner_references()
            .iter()
            .find(|o| o.kind == "DataVolume")
        {
            if let Some(w) = dv_not_ready(client, ns, &o.name).await? {
                return Ok(Claim::Wait(w));
            }
        }
    }
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let Some(pv) = pvs.get_opt(&pv_name).await? else {
        return Ok(Claim::Wait(format!(
            "PersistentVolume {pv_name} of claim {ns}/{claim} does not exist"
        )));
    };
    // A claim naming someone else's volume (`spec.volumeName` written by hand) gets nothing.
    if !kubevirt_api::core_kinds::pv_bound_to(&pv, &pvc) {
        return Ok(Claim::Refused(format!(
            "PersistentVolume {pv_name} is not bound to PersistentVolumeClaim {ns}/{claim} (its claimRef names another claim)"
        )));
    }
    // A volume that moves here with the VMI: made empty for the copy.
    if let Some((inc, volume)) = incoming {
        if crate::local_volumes::movable_from(&pv, &pvc, inc.source) && inc.source != node {
            let Some(size) = inc.sizes.get(volume).copied() else {
                return Ok(Claim::Wait(format!(
                    "waiting for node {} to publish the size of volume {volume}",
                    inc.source
                )));
            };
            let block = pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block");
            // A disk bigger than its volume is nobody's: a size written by someone else.
            let capacity = storage_bytes(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()));
            if size > capacity {
                return Ok(Claim::Refused(format!(
                    "volume {volume}: the published size {size} exceeds PersistentVolume {pv_name}'s capacity {capacity}"
                )));
            }
            return Ok(
                match crate::local_volumes::create_incoming(policy, &pv, block, size, inc).await {
                    Ok((disk, volume)) => Claim::Path(disk, Some((pv_name.clone(), volume))),
                    Err(why) => Claim::Refused(format!(
                        "PersistentVolume {pv_name} (claim {ns}/{claim}): {why}"
                    )),
                },
            );
        }
    }
    let node_local = if crate::local_volumes::movable_from(&pv, &pvc, node) {
        crate::local_volumes::own_path(policy, &pv)
            .ok()
            .map(|p| (pv_name.clone(), p))
    } else {
        None
    };
    if let Some(why) = kubevirt_runtime::pv::off_node(client, &pv, node).await? {
        return Ok(Claim::Refused(format!(
            "PersistentVolume {pv_name} (claim {ns}/{claim}) {why}"
        )));
    }
    let Some(local) = pv.spec.as_ref().and_then(|s| s.local.as_ref()) else {
        return Ok(Claim::Wait(format!(
            "PersistentVolume {pv_name} has no spec.local.path: only local volumes can be used on this node"
        )));
    };
    // A PersistentVolume is user input: its path must resolve beneath the provisioner's
    // volumes or an administrator's root, never anywhere else on the host.
    let path = match policy.persistent_volume(&local.path) {
        Ok(p) => p,
        Err(e) => {
            return Ok(Claim::Refused(format!(
                "PersistentVolume {pv_name} (claim {ns}/{claim}) spec.local.path: {e}"
            )))
        }
    };
    let block = pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block");
    if block {
        return Ok(Claim::Path(path, node_local));
    }
    let disk = path.join("disk.img");
    if !disk.exists() && !from_dv {
        // A bare Filesystem claim: KubeVirt creates a sparse disk.img filling it.
        let capacity = storage_bytes(pvc.status.as_ref().and_then(|s| s.capacity.as_ref()));
        let size = ((capacity as f64 * (1.0 - FILESYSTEM_OVERHEAD)) as u64) / (1 << 20) * (1 << 20);
        let d = disk.clone();
        let created = tokio::task::spawn_blocking(move || {
            let f = std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&d)?;
            f.set_len(size)
        })
        .await;
        match created {
            Ok(Ok(())) => {
                tracing::info!(path = %disk.display(), size, "created disk.img for a bare claim")
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Ok(Err(e)) => {
                return Ok(Claim::Wait(format!(
                    "cannot create {}: {e}",
                    disk.display()
                )))
            }
            Err(e) => {
                return Ok(Claim::Wait(format!(
                    "cannot create {}: {e}",
                    disk.display()
                )))
            }
        }
    }
    Ok(Claim::Path(disk, node_local))
}

async fn dv_not_ready(client: &Client, ns: &str, name: &str) -> kube::Result<Option<String>> {
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), ns);
    let Some(dv) = dvs.get_opt(name).await? else {
        return Ok(Some(format!("DataVolume {ns}/{name} does not exist")));
    };
    let phase = dv
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    Ok((phase != "Succeeded")
        .then(|| format!("DataVolume {ns}/{name} is not ready (phase {phase:?})")))
}

/// Resolves every PVC and DataVolume volume of `vmi`, and checks its hostDisk paths.
pub async fn resolve(
    client: &Client,
    vmi: &VirtualMachineInstance,
    policy: &HostPathPolicy,
    node_name: &str,
    incoming: Option<Incoming<'_>>,
) -> kube::Result<Resolved> {
    let ns = vmi.namespace().unwrap_or_else(|| "default".into());
    let mut node = NodeVolumes::default();
    let mut local = std::collections::BTreeMap::new();
    for (i, vol) in vmi.spec.volumes.iter().flatten().enumerate() {
        if let Some(hd) = &vol.host_disk {
            if let Err(e) = policy.host_disk(&hd.path) {
                return Ok(Resolved::Refused(format!(
                    "spec.volumes[{i}].hostDisk.path: {e}"
                )));
            }
        } else if let Some(p) = &vol.persistent_volume_claim {
            let inc = incoming.map(|i| (i, vol.name.as_str()));
            match claim_path(client, policy, node_name, &ns, &p.claim_name, false, inc).await? {
                Claim::Path(path, here) => {
                    node.persistent_volume_claims
                        .insert(p.claim_name.clone(), path);
                    if let Some((pv, path)) = here {
                        node.local_claims.insert(p.claim_name.clone());
                        let claim = p.claim_name.clone();
                        local.insert(pv, crate::local_volumes::LocalVolume { claim, path });
                    }
                }
                Claim::Wait(w) => return Ok(Resolved::Wait(w)),
                Claim::Refused(w) => return Ok(Resolved::Refused(w)),
            }
        } else if let Some(d) = &vol.data_volume {
            if let Some(w) = dv_not_ready(client, &ns, &d.name).await? {
                return Ok(Resolved::Wait(w));
            }
            let dvs: Api<DataVolume> = Api::namespaced(client.clone(), &ns);
            let claim = dvs
                .get_opt(&d.name)
                .await?
                .and_then(|dv| dv.status.and_then(|s| s.claim_name))
                .unwrap_or_else(|| d.name.clone());
            let inc = incoming.map(|i| (i, vol.name.as_str()));
            match claim_path(client, policy, node_name, &ns, &claim, true, inc).await? {
                Claim::Path(path, here) => {
                    node.data_volumes.insert(d.name.clone(), path);
                    if let Some((pv, path)) = here {
                        node.local_claims.insert(d.name.clone());
                        let claim = d.name.clone();
                        local.insert(pv, crate::local_volumes::LocalVolume { claim, path });
                    }
                }
                Claim::Wait(w) => return Ok(Resolved::Wait(w)),
                Claim::Refused(w) => return Ok(Resolved::Refused(w)),
            }
        }
    }
    Ok(Resolved::Ready(node, local))
}

/// A hotpluggable volume that cannot be attached yet: KubeVirt's volume status reason and
/// message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotReady {
    pub reason: &'static str,
    pub message: String,
}

/// Resolves the VMI's volumes one by one, for a running VMI whose hotpluggable volumes may
/// come and go: what resolves goes into the node volumes, a volume in `only` that does not
/// is reported by name (the others are not asked again: they resolved at start).
pub async fn resolve_each(
    client: &Client,
    vmi: &VirtualMachineInstance,
    policy: &HostPathPolicy,
    node_name: &str,
    only: &std::collections::BTreeSet<String>,
) -> kube::Result<(NodeVolumes, std::collections::BTreeMap<String, NotReady>)> {
    let ns = vmi.namespace().unwrap_or_else(|| "default".into());
    let mut node = NodeVolumes::default();
    let mut not_ready = std::collections::BTreeMap::new();
    for vol in vmi.spec.volumes.iter().flatten() {
        let claim = if let Some(p) = &vol.persistent_volume_claim {
            claim_path(client, policy, node_name, &ns, &p.claim_name, false, None).await?
        } else if let Some(d) = &vol.data_volume {
            match dv_not_ready(client, &ns, &d.name).await? {
                Some(w) => Claim::Wait(w),
                None => {
                    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), &ns);
                    let claim = dvs
                        .get_opt(&d.name)
                        .await?
                        .and_then(|dv| dv.status.and_then(|s| s.claim_name))
                        .unwrap_or_else(|| d.name.clone());
                    claim_path(client, policy, node_name, &ns, &claim, true, None).await?
                }
            }
        } else {
            continue;
        };
        match claim {
            Claim::Path(path, _) => {
                if let Some(p) = &vol.persistent_volume_claim {
                    node.persistent_volume_claims
                        .insert(p.claim_name.clone(), path);
                } else if let Some(d) = &vol.data_volume {
                    node.data_volumes.insert(d.name.clone(), path);
                }
            }
            Claim::Wait(message) if only.contains(&vol.name) => {
                not_ready.insert(
                    vol.name.clone(),
                    NotReady {
                        reason: "PVCNotReady",
                        message,
                    },
                );
            }
            Claim::Refused(message) if only.contains(&vol.name) => {
                not_ready.insert(
                    vol.name.clone(),
                    NotReady {
                        reason: "HostPathRefused",
                        message,
                    },
                );
            }
            _ => {}
        }
    }
    Ok((node, not_ready))
}

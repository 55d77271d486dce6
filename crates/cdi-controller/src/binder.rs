//! Kubernetes' PersistentVolume binder (kube-controller-manager's `persistentvolume-binder`)
//! for volumes someone made by hand, e.g. a `local` PersistentVolume pinned to a node, as
//! `kubectl apply` of a static-provisioning manifest creates them.
//!
//! - A Pending claim is bound to an existing volume before any is provisioned for it
//!   (`FindMatchingVolume`): the volume its `spec.volumeName` names, else one whose `claimRef`
//!   names it (pre-bound by the user), else the smallest `Available` volume of the claim's class
//!   (`storageClassName`; a claim without one has the default class, as the DefaultStorageClass
//!   admission plugin would have set it) whose capacity is at least the request, whose access
//!   modes include the claim's, whose volume mode is the claim's and whose labels match the
//!   claim's `selector`.
//! - Binding writes the volume's `claimRef` (with the claim's uid) and phase `Bound`, then the
//!   claim's `spec.volumeName`, `pv.kubernetes.io/bind-completed` and phase `Bound` with the
//!   volume's capacity and access modes. Each step is a conditional write: a volume another
//!   claim took in between is not taken again.
//! - A volume without a claim is `Available`; one whose claim is gone is `Released` (it keeps
//!   its data; a `Retain` volume is for its administrator to clean).
//!
//! A claim of class `""` binds only to volumes of class `""` and is never provisioned: it waits
//! (`FailedBinding` event) until a volume that fits appears.
//!
//! Where this differs from kube's binder, on purpose:
//! - only `local` volumes are matched (the only kind a node agent here can open); a claim
//!   naming another kind is told so;
//! - a claim with a `dataSource`/`dataSourceRef` (a snapshot restore, a clone) is never matched
//!   to a free volume, only provisioned from its source (kube would bind it and drop the data,
//!   kubernetes/kubernetes#101878);
//! - our provisioner's own volumes are left to it (it finishes a binding it started).
//!
//! Names from a claim or a volume are checked before they become part of a request path.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use kubevirt_api::quantity::Quantity;
use kubevirt_runtime::status;
use serde_json::json;

use crate::{Context, Error};

/// `pv.kubernetes.io/bind-completed`: the claim's binding is done.
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// `pv.kubernetes.io/bound-by-controller`: the binder (not the user) wrote the binding.
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The class annotation older manifests use instead of `storageClassName`.
const ANN_BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

/// What became of a Pending claim.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Bound to this volume.
    Bound(String),
    /// No volume fits; a class with a provisioner may provision one.
    NoMatch,
    /// The claim names a volume it cannot have yet: why (an event's message).
    Waiting(String),
}

/// The claim's class: `storageClassName`, else the beta annotation, else `default_class`
/// (kube's DefaultStorageClass admission fills it at creation), else `""`.
fn claim_class(pvc: &PersistentVolumeClaim, default_class: Option<&str>) -> String {
    if let Some(c) = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()) {
        return c;
    }
    if let Some(c) = pvc.annotations().get(ANN_BETA_CLASS) {
        return c.clone();
    }
    default_class.unwrap_or_default().to_string()
}

fn volume_class(pv: &PersistentVolume) -> String {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .or_else(|| pv.annotations().get(ANN_BETA_CLASS).cloned())
        .unwrap_or_default()
}

fn bytes(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> Option<i128> {
    q.and_then(|q| Quantity::from_k8s(q).ok())
        .map(|q| q.value())
}

/// Whether `pv`'s `claimRef` names `pvc` (namespace and name; uid when it has one).
fn bound_to(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    kubevirt_api::core_kinds::pv_bound_to(pv, pvc)
}

/// Why `pv` cannot hold `pvc`, whatever its phase and class (kube's `checkVolumeSatisfyClaim`):
/// too small, missing an access mode, another volume mode, or being deleted.
fn unfit(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> Option<String> {
    let name = pv.name_any();
    if pv.metadata.deletion_timestamp.is_some() {
        return Some(format!("volume {name:?} is being deleted"));
    }
    let (Some(vs), Some(cs)) = (pv.spec.as_ref(), pvc.spec.as_ref()) else {
        return Some(format!("volume {name:?} or the claim has no spec"));
    };
    let requested = bytes(
        cs.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage")),
    )
    .unwrap_or(0);
    let capacity = bytes(vs.capacity.as_ref().and_then(|c| c.get("storage"))).unwrap_or(0);
    if capacity < requested {
        return Some(format!(
            "requested PV {name:?} is too small: it has {capacity} bytes, the claim asks for {requested}"
        ));
    }
    let modes = vs.access_modes.as_deref().unwrap_or_default();
    if let Some(m) = cs
        .access_modes
        .iter()
        .flatten()
        .find(|m| !modes.contains(m))
    {
        return Some(format!(
            "volume {name:?} does not offer access mode {m} the claim asks for"
        ));
    }
    if vs.local.is_none() {
        return Some(format!(
            "volume {name:?} is not a local volume: only local volumes can be used here"
        ));
    }
    let mode = |m: Option<&str>| m.unwrap_or("Filesystem").to_string();
    let (vm, cm) = (
        mode(vs.volume_mode.as_deref()),
        mode(cs.volume_mode.as_deref()),
    );
    if vm != cm {
        return Some(format!(
            "volume {name:?} has volumeMode {vm}, the claim asks for {cm}"
        ));
    }
    None
}

/// Made by our provisioner: it binds its volumes itself.
fn ours(pv: &PersistentVolume) -> bool {
    pv.annotations()
        .get(crate::provisioner::ANN_PROVISIONED_BY)
        .is_some_and(|p| p == crate::PROVISIONER_NAME)
}

/// kube's `FindMatchingVolume` without a node: a volume pre-bound to the claim (its `claimRef`
/// names it) if one fits, else the smallest `Available` volume of the claim's class that fits
/// and matches its selector.
pub fn find_matching<'a>(
    pvc: &PersistentVolumeClaim,
    pvs: &'a [PersistentVolume],
    default_class: Option<&str>,
) -> Option<&'a PersistentVolume> {
    let class = claim_class(pvc, default_class);
    let selector = pvc.spec.as_ref().and_then(|s| s.selector.as_ref());
    let restores = pvc
        .spec
        .as_ref()
        .is_some_and(|s| s.data_source.is_some() || s.data_source_ref.is_some());
    let mut smallest: Option<(i128, &PersistentVolume)> = None;
    for pv in pvs {
        if ours(pv) {
            continue;
        }
        let claimed = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some();
        if claimed && !bound_to(pv, pvc) {
            continue;
        }
        if unfit(pv, pvc).is_some() {
            continue;
        }
        if claimed {
            return Some(pv);
        }
        if restores {
            continue;
        }
        let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase != Some("Available") || volume_class(pv) != class {
            continue;
        }
        if let Some(sel) = selector {
            if !kubevirt_api::admitters::selector_matches(sel, pv.metadata.labels.as_ref())
                .unwrap_or(false)
            {
                continue;
            }
        }
        let capacity = bytes(
            pv.spec
                .as_ref()
                .and_then(|s| s.capacity.as_ref())
                .and_then(|c| c.get("storage")),
        )
        .unwrap_or(0);
        if smallest.is_none_or(|(c, _)| capacity < c) {
            smallest = Some((capacity, pv));
        }
    }
    smallest.map(|(_, pv)| pv)
}

/// Binds Pending claim `pvc` to an existing volume if one is meant for it or fits it.
pub async fn bind_existing(
    ctx: &Context,
    pvc: &PersistentVolumeClaim,
    default_class: Option<&str>,
) -> Result<Outcome, Error> {
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let named = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty());
    let pv = match named {
        // Pre-bound by the user through the claim: that volume or nothing.
        Some(name) => {
            if kubevirt_api::names::dns1123_subdomain(&name).is_some() {
                return Ok(Outcome::Waiting(format!(
                    "spec.volumeName {name:?} is not a valid PersistentVolume name"
                )));
            }
            let Some(pv) = pvs.get_opt(&name).await? else {
                return Ok(Outcome::Waiting(format!(
                    "volume {name:?} requested by the claim does not exist"
                )));
            };
            if ours(&pv) {
                // Our provisioner's: it finishes its own binding; another claim gets nothing.
                return Ok(if bound_to(&pv, pvc) {
                    Outcome::NoMatch
                } else {
                    Outcome::Waiting(format!(
                        "volume {name:?} is already bound to a different claim"
                    ))
                });
            }
            let claimed = pv
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .is_some();
            if claimed && !bound_to(&pv, pvc) {
                return Ok(Outcome::Waiting(format!(
                    "volume {name:?} is already bound to a different claim"
                )));
            }
            if let Some(why) = unfit(&pv, pvc) {
                return Ok(Outcome::Waiting(why));
            }
            let (want, have) = (claim_class(pvc, default_class), volume_class(&pv));
            if want != have {
                return Ok(Outcome::Waiting(format!(
                    "storageClassName does not match: the claim's is {want:?}, volume {name:?}'s is {have:?}"
                )));
            }
            pv
        }
        None => {
            let all = pvs.list(&Default::default()).await?.items;
            match find_matching(pvc, &all, default_class) {
                Some(pv) => pv.clone(),
                None => return Ok(Outcome::NoMatch),
            }
        }
    };
    bind(ctx, pvc, &pv).await?;
    Ok(Outcome::Bound(pv.name_any()))
}

/// Writes the binding: the volume's `claimRef` and phase first (conditional on the volume's
/// resourceVersion, so two claims cannot both take it), then the claim.
async fn bind(
    ctx: &Context,
    pvc: &PersistentVolumeClaim,
    pv: &PersistentVolume,
) -> Result<(), Error> {
    let ns = pvc
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = pvc.name_any();
    let uid = pvc.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let pv_name = pv.name_any();
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let already = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| r.uid.as_deref() == Some(uid.as_str()));
    if !already {
        let mut meta = json!({"resourceVersion": pv.resource_version()});
        if pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_none()
        {
            meta["annotations"] = json!({ANN_BOUND_BY_CONTROLLER: "yes"});
        }
        pvs.patch(
            &pv_name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": meta,
                "spec": {"claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                      "namespace": ns, "name": name, "uid": uid,
                                      "resourceVersion": pvc.resource_version()}},
            })),
        )
        .await?;
    }
    status::write_status(&pvs, &pv_name, json!({"phase": "Bound"})).await?;
    let spec = pv.spec.clone().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let mut annotations = json!({ANN_BIND_COMPLETED: "yes"});
    for (k, v) in crate::provisioner::upload_ready_annotations(pvc) {
        annotations[k] = json!(v);
    }
    let by_user = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    if !by_user {
        annotations[ANN_BOUND_BY_CONTROLLER] = json!("yes");
    }
    pvcs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({
            "metadata": {"annotations": annotations, "resourceVersion": pvc.resource_version()},
            "spec": {"volumeName": pv_name},
        })),
    )
    .await?;
    status::write_status(
        &pvcs,
        &name,
        json!({
            "phase": "Bound",
            "accessModes": spec.access_modes.unwrap_or_default(),
            "capacity": spec.capacity.unwrap_or_default(),
        }),
    )
    .await?;
    tracing::info!(%ns, pvc = %name, pv = %pv_name, "bound to an existing volume");
    Ok(())
}

/// The phase a volume that is not our provisioner's should have: `Available` without a claim,
/// `Released` when the claim its `claimRef` names (with a uid) is gone, `Bound` while it is
/// there; `None` to leave it (pre-bound by the user, claim not created yet).
pub fn volume_phase(
    pv: &PersistentVolume,
    claim: Option<&PersistentVolumeClaim>,
) -> Option<&'static str> {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return Some("Available");
    };
    match (claim, &r.uid) {
        (Some(c), _) if bound_to(pv, c) && c.metadata.uid == r.uid => Some("Bound"),
        (Some(_), None) => None,
        (None, None) => None,
        _ => Some("Released"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(name: &str, v: serde_json::Value) -> PersistentVolume {
        let mut o = json!({"metadata": {"name": name}, "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local-storage", "local": {"path": "/mnt/x"}},
            "status": {"phase": "Available"}});
        merge(&mut o, v);
        serde_json::from_value(o).expect("pv")
    }

    fn pvc(v: serde_json::Value) -> PersistentVolumeClaim {
        let mut o = json!({"metadata": {"name": "c", "namespace": "default", "uid": "u1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-storage",
                     "resources": {"requests": {"storage": "512Mi"}}}});
        merge(&mut o, v);
        serde_json::from_value(o).expect("pvc")
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn found(c: &PersistentVolumeClaim, pvs: &[PersistentVolume]) -> Option<String> {
        find_matching(c, pvs, Some("local-path")).map(|p| p.name_any())
    }

    #[test]
    fn the_smallest_available_volume_of_the_class_that_fits_is_chosen() {
        let pvs = [
            pv("big", json!({"spec": {"capacity": {"storage": "10Gi"}}})),
            pv("small", json!({})),
            pv("tiny", json!({"spec": {"capacity": {"storage": "100Mi"}}})),
            pv("other-class", json!({"spec": {"storageClassName": "fast"}})),
            pv("released", json!({"status": {"phase": "Released"}})),
            pv("rox", json!({"spec": {"accessModes": ["ReadOnlyMany"]}})),
            pv("block", json!({"spec": {"volumeMode": "Block"}})),
        ];
        assert_eq!(found(&pvc(json!({})), &pvs), Some("small".into()));
        // Too big for every volume of the class but one.
        let c = pvc(json!({"spec": {"resources": {"requests": {"storage": "5Gi"}}}}));
        assert_eq!(found(&c, &pvs), Some("big".into()));
        let c = pvc(json!({"spec": {"resources": {"requests": {"storage": "50Gi"}}}}));
        assert_eq!(found(&c, &pvs), None);
        // Volume mode and access modes must be offered.
        let c = pvc(json!({"spec": {"volumeMode": "Block"}}));
        assert_eq!(found(&c, &pvs), Some("block".into()));
        let c = pvc(json!({"spec": {"accessModes": ["ReadWriteMany"]}}));
        assert_eq!(found(&c, &pvs), None);
        // The class "" matches only volumes of class "".
        let c = pvc(json!({"spec": {"storageClassName": ""}}));
        assert_eq!(found(&c, &pvs), None);
        let blank = [pv("blank", json!({"spec": {"storageClassName": null}}))];
        assert_eq!(found(&c, &blank), Some("blank".into()));
        // A claim without a class has the default one.
        let c = pvc(json!({"spec": {"storageClassName": null}}));
        assert_eq!(found(&c, &pvs), None);
        let default = [pv("d", json!({"spec": {"storageClassName": "local-path"}}))];
        assert_eq!(found(&c, &default), Some("d".into()));
    }

    #[test]
    fn selectors_and_claim_refs_decide_which_volume() {
        let pvs = [
            pv(
                "a",
                json!({"metadata": {"labels": {"tier": "gold"}}, "spec": {"capacity": {"storage": "2Gi"}}}),
            ),
            pv("b", json!({})),
            // Pre-bound by the user to another claim: never this one's.
            pv(
                "theirs",
                json!({"spec": {"claimRef": {"namespace": "default", "name": "other"}}}),
            ),
        ];
        let c = pvc(json!({"spec": {"selector": {"matchLabels": {"tier": "gold"}}}}));
        assert_eq!(found(&c, &pvs), Some("a".into()));
        let c = pvc(json!({"spec": {"selector": {"matchExpressions": [
            {"key": "tier", "operator": "DoesNotExist"}]}}}));
        assert_eq!(found(&c, &pvs), Some("b".into()));
        // A volume pre-bound to this claim wins over a smaller free one, whatever its phase.
        let mine = pv(
            "mine",
            json!({"spec": {"capacity": {"storage": "8Gi"}, "storageClassName": "slow",
                            "claimRef": {"namespace": "default", "name": "c"}},
                   "status": {"phase": "Pending"}}),
        );
        let mut with = pvs.to_vec();
        with.push(mine);
        assert_eq!(found(&pvc(json!({})), &with), Some("mine".into()));
        // ... but one whose claimRef records another uid is another claim's (same name, older).
        let stale = pv(
            "stale",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "c", "uid": "u0"}}}),
        );
        assert_eq!(found(&pvc(json!({})), &[stale]), None);
    }

    #[test]
    fn only_local_volumes_not_our_provisioners_and_no_restores_are_matched() {
        let nfs = pv(
            "nfs",
            json!({"spec": {"local": null, "nfs": {"server": "10.0.0.1", "path": "/x"}}}),
        );
        assert_eq!(found(&pvc(json!({})), &[nfs]), None);
        let provisioned = pv(
            "pvc-1",
            json!({"metadata": {"annotations": {
                "pv.kubernetes.io/provisioned-by": crate::PROVISIONER_NAME}}}),
        );
        assert_eq!(found(&pvc(json!({})), &[provisioned]), None);
        let restore = pvc(json!({"spec": {"dataSource": {
            "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"}}}));
        assert_eq!(found(&restore, &[pv("free", json!({}))]), None);
        // Pre-bound to it by an administrator, a restore's claim still gets that volume.
        let pre = pv(
            "pre",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "c"}}}),
        );
        assert_eq!(found(&restore, &[pre]), Some("pre".into()));
    }

    #[test]
    fn volume_phases_follow_their_claims() {
        let free = pv("free", json!({}));
        assert_eq!(volume_phase(&free, None), Some("Available"));
        let bound = pv(
            "b",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "c", "uid": "u1"}}}),
        );
        assert_eq!(volume_phase(&bound, Some(&pvc(json!({})))), Some("Bound"));
        assert_eq!(volume_phase(&bound, None), Some("Released"));
        // The claim of that name now is another one.
        let newer = pvc(json!({"metadata": {"uid": "u2"}}));
        assert_eq!(volume_phase(&bound, Some(&newer)), Some("Released"));
        // Pre-bound by the user, claim not bound yet: left for the claim's binding.
        let pre = pv(
            "p",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "c"}}}),
        );
        assert_eq!(volume_phase(&pre, None), None);
        assert_eq!(volume_phase(&pre, Some(&pvc(json!({})))), None);
    }
}

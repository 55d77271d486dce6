//! CDI's StorageProfiles: one per StorageClass, named after it, whose status says how a
//! DataVolume of that class is provisioned (access modes, volume modes, clone strategy). For
//! our local-path provisioner that is ReadWriteOnce Filesystem or Block volumes, copied when
//! cloned; for a class of another provisioner CDI knows nothing, so `claimPropertySets` is
//! left empty, as CDI does for an unknown provisioner. A profile whose class is gone is
//! deleted.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::ResourceExt;
use kubevirt_api::StorageProfile;
use serde_json::json;

use crate::{Context, Error, PROVISIONER_NAME};

/// What the profile of `class` reports.
pub fn status_for(class: &StorageClass) -> serde_json::Value {
    let mut status = json!({
        "storageClass": class.name_any(),
        "provisioner": class.provisioner,
        "dataImportCronSourceFormat": "pvc",
    });
    if class.provisioner == PROVISIONER_NAME {
        status["claimPropertySets"] = json!([
            {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"},
            {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block"},
        ]);
        status["cloneStrategy"] = json!("copy");
    }
    status
}

/// CDI's `kubevirt_cdi_storageprofile_info` labels of the profile of `class`
/// (`computeMetrics` of CDI's storage-profile controller, from [`status_for`]): complete when
/// there are claim property sets and each has access modes and a volume mode; smart clone
/// when the clone strategy is `snapshot` or `csi-clone` (ours is `copy`, CDI's host-assisted;
/// a class of another provisioner, whose strategy CDI would look up among the
/// VolumeSnapshotClasses, is counted as without); degraded without ReadWriteMany or smart
/// clone (we never run on single-node OpenShift, CDI's exception).
pub fn profile_info(class: &StorageClass) -> crate::metrics::ProfileInfo {
    let status = status_for(class);
    let sets = status["claimPropertySets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let complete = !sets.is_empty()
        && sets.iter().all(|s| {
            s["accessModes"].as_array().is_some_and(|m| !m.is_empty())
                && s["volumeMode"].as_str().is_some_and(|m| !m.is_empty())
        });
    let rwx = sets.iter().any(|s| {
        s["accessModes"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m == "ReadWriteMany"))
    });
    let smartclone = matches!(
        status["cloneStrategy"].as_str(),
        Some("snapshot" | "csi-clone")
    );
    let annotated = |key: &str| class.annotations().get(key).is_some_and(|v| v == "true");
    crate::metrics::ProfileInfo {
        storageclass: class.name_any(),
        provisioner: class.provisioner.clone(),
        complete,
        default: annotated(kubevirt_api::core_kinds::DEFAULT_CLASS_ANNOTATION),
        virtdefault: annotated("storageclass.kubevirt.io/is-default-virt-class"),
        rwx,
        smartclone,
        degraded: !rwx || !smartclone,
    }
}

async fn reconcile(class: Arc<StorageClass>, ctx: Arc<Context>) -> Result<Action, Error> {
    let profiles: Api<StorageProfile> = Api::all(ctx.client.clone());
    let name = class.name_any();
    if class.metadata.deletion_timestamp.is_none() && profiles.get_opt(&name).await?.is_none() {
        let p: StorageProfile = serde_json::from_value(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "StorageProfile",
            "metadata": {"name": name, "labels": {"app": "containerized-data-importer"}},
            "spec": {},
        }))?;
        match profiles.create(&PostParams::default(), &p).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    kubevirt_runtime::status::write_status(&profiles, &name, status_for(&class)).await?;
    if class.metadata.deletion_timestamp.is_none() {
        crate::metrics::cdi().set_profile(profile_info(&class));
    }
    Ok(Action::requeue(Duration::from_secs(600)))
}

fn error_policy(_: Arc<StorageClass>, e: &Error, _: Arc<Context>) -> Action {
    tracing::debug!(error = %e, "storage profile");
    Action::requeue(Duration::from_secs(5))
}

/// Deletes the profiles whose StorageClass is gone, every minute.
async fn prune(ctx: Arc<Context>) {
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let profiles: Api<StorageProfile> = Api::all(ctx.client.clone());
    loop {
        if let (Ok(cs), Ok(ps)) = (
            classes.list(&Default::default()).await,
            profiles.list(&Default::default()).await,
        ) {
            for p in ps.items {
                let name = p.name_any();
                if !cs.items.iter().any(|c| c.name_any() == name) {
                    crate::metrics::cdi().forget_profile(&name);
                    if let Err(e) = profiles.delete(&name, &Default::default()).await {
                        tracing::debug!(profile = %name, error = %e, "deleting a storage profile");
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

pub async fn run(ctx: Arc<Context>) {
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let profiles = Controller::new(classes, watcher::Config::default())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "storage profiles");
            }
        });
    futures::join!(profiles, prune(ctx));
}

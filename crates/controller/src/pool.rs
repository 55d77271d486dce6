//! VirtualMachinePool (`pool.kubevirt.io/v1beta1`): keeps `spec.replicas` VirtualMachines
//! from `spec.virtualMachineTemplate`, KubeVirt's way (pkg/virt-controller/watch/pool): VMs
//! are named `<pool>-<index>`, scale-up fills the lowest free indexes, scale-down removes the
//! highest first, and `status.{replicas, readyReplicas, labelSelector}` is written through
//! `/status`. The VMs then run by their own runStrategy (the VM controller's job).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use kubevirt_api::{VirtualMachine, VirtualMachinePool};
use serde_json::json;

use crate::replicaset::selector_string;
use crate::{Context, Error};

/// The index of a pool VM named `<pool>-<index>`.
pub fn index_of(pool: &str, vm: &str) -> Option<u32> {
    vm.strip_prefix(pool)?.strip_prefix('-')?.parse().ok()
}

/// Indexes to create (lowest free first) and to delete (highest first) to reach `want`.
pub fn plan(taken: &BTreeSet<u32>, want: usize) -> (Vec<u32>, Vec<u32>) {
    if taken.len() >= want {
        let delete = taken
            .iter()
            .rev()
            .take(taken.len() - want)
            .copied()
            .collect();
        return (Vec::new(), delete);
    }
    let mut create = Vec::new();
    let mut i = 0u32;
    while taken.len() + create.len() < want {
        if !taken.contains(&i) {
            create.push(i);
        }
        i += 1;
    }
    (create, Vec::new())
}

fn owned_by(vm: &VirtualMachine, pool: &VirtualMachinePool) -> bool {
    vm.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == pool.metadata.uid.as_ref())
}

pub async fn reconcile(pool: Arc<VirtualMachinePool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = crate::namespace_of(&pool.metadata)?;
    let name = pool.name_any();
    let pools: Api<VirtualMachinePool> = Api::namespaced(ctx.client.clone(), &ns);
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = selector_string(&pool.spec.selector);
    let owned: Vec<VirtualMachine> = vms
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|v| owned_by(v, &pool) && v.metadata.deletion_timestamp.is_none())
        .collect();
    let taken: BTreeSet<u32> = owned
        .iter()
        .filter_map(|v| index_of(&name, &v.name_any()))
        .collect();
    let want = usize::try_from(pool.spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let paused = pool.spec.paused == Some(true) || pool.metadata.deletion_timestamp.is_some();
    let mut count = owned.len();
    if !paused {
        let (create, delete) = plan(&taken, want);
        for i in delete {
            let vm_name = format!("{name}-{i}");
            match vms.delete(&vm_name, &DeleteParams::default()).await {
                Ok(_) => {
                    count -= 1;
                    ctx.event(
                        pool.as_ref(),
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted VM {vm_name}"),
                    )
                    .await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut owner = pool
            .controller_owner_ref(&())
            .ok_or(Error::MissingField("metadata.uid"))?;
        owner.block_owner_deletion = Some(true);
        let tmpl = &pool.spec.virtual_machine_template;
        let meta = tmpl.metadata.clone().unwrap_or_default();
        for i in create {
            let vm = VirtualMachine {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{i}")),
                    namespace: Some(ns.clone()),
                    labels: meta.labels.clone(),
                    annotations: meta.annotations.clone(),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                spec: tmpl.spec.clone().unwrap_or_default(),
                status: None,
            };
            match vms.create(&PostParams::default(), &vm).await {
                Ok(c) => {
                    count += 1;
                    ctx.event(
                        pool.as_ref(),
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created VM {}", c.name_any()),
                    )
                    .await;
                }
                Err(e) => {
                    ctx.event(
                        pool.as_ref(),
                        EventType::Warning,
                        "FailedCreate",
                        format!("Error creating VM {name}-{i}: {e}"),
                    )
                    .await;
                    return Err(e.into());
                }
            }
        }
    }
    let ready = owned
        .iter()
        .filter(|v| v.status.as_ref().and_then(|s| s.ready) == Some(true))
        .count();
    let status = json!({"replicas": count, "readyReplicas": ready, "labelSelector": selector});
    let old = pool.status.as_ref().map(serde_json::to_value).transpose()?;
    let changed = old.as_ref().is_none_or(|o| {
        ["replicas", "readyReplicas", "labelSelector"]
            .iter()
            .any(|k| o.get(k) != status.get(k))
    });
    if changed {
        kubevirt_runtime::status::write_status(&pools, &name, &status).await?;
    }
    // The pool's VMs are watched (`owns`): their changes bring us back here.
    Ok(Action::requeue(Duration::from_secs(300)))
}

pub fn error_policy(pool: Arc<VirtualMachinePool>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::debug!(pool = %pool.name_any(), error = %err, "reconcile failed");
    Action::requeue(err.retry_after())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_index() {
        assert_eq!(index_of("web", "web-3"), Some(3));
        assert_eq!(index_of("web", "web-x"), None);
        assert_eq!(index_of("web", "webby-1"), None);
    }

    #[test]
    fn scale_up_fills_the_lowest_gaps_and_scale_down_takes_the_highest() {
        let taken: BTreeSet<u32> = [0, 2, 5].into();
        assert_eq!(plan(&taken, 5), (vec![1, 3], vec![]));
        assert_eq!(plan(&taken, 1), (vec![], vec![5, 2]));
        assert_eq!(plan(&taken, 3), (vec![], vec![]));
    }
}

//! KubeVirt's evacuation controller (pkg/virt-controller/watch/drain/evacuation): a VMI that
//! an eviction marked with `status.evacuationNodeName` (virt-api's eviction admitter, when a
//! drain evicts its launcher Pod) gets a VirtualMachineInstanceMigration
//! `kubevirt-evacuation-<random>`, annotated `kubevirt.io/evacuationMigration: <node>`, with
//! priority `system-critical` (`system-maintenance` when the descheduler asked).
//!
//! Only while the VMI still runs on the marked node, is not migrating and has no unfinished
//! migration, wants to migrate on eviction (LiveMigrate, or LiveMigrateIfPossible and
//! migratable) and is migratable; and within the cluster's `migrations` limits
//! (`parallelMigrationsPerCluster`, `parallelOutboundMigrationsPerNode`), as KubeVirt applied
//! them here before v1.9 moved them into the migration queue. Nothing is cleared here: the
//! migration controller clears `evacuationNodeName` when the VMI has moved.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use kubevirt_api::status::{
    label, migration_is_final, vmi_is_migratable, vmi_migrates_on_eviction, EvictionStrategy,
};
use kubevirt_api::{
    VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationSpec,
};
use kubevirt_runtime::cluster::MigrationConfig;

use crate::{phase, Context, Error};

/// KubeVirt's `MigrationPriority` values.
const PRIORITY_SYSTEM_CRITICAL: &str = "system-critical";
const PRIORITY_SYSTEM_MAINTENANCE: &str = "system-maintenance";

/// How soon a marked VMI that had to wait for a free slot is looked at again.
const WAIT_FOR_SLOT: Duration = Duration::from_secs(5);

/// Serializes the decisions to create, so concurrent reconciles cannot overrun the limits.
static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether the VMI should get an evacuation migration now, limits aside.
pub fn wants_evacuation(
    vmi: &VirtualMachineInstance,
    unfinished: &[VirtualMachineInstanceMigration],
    cluster: Option<EvictionStrategy>,
) -> bool {
    let Some(status) = vmi.status.as_ref() else {
        return false;
    };
    let evacuating = status.evacuation_node_name.as_deref().unwrap_or("");
    let node = status.node_name.as_deref().unwrap_or("");
    // KubeVirt's hasMigratedOnEviction: once it runs elsewhere there is nothing to do.
    if evacuating.is_empty() || evacuating != node {
        return false;
    }
    if phase::is_final(vmi) || vmi.metadata.deletion_timestamp.is_some() {
        return false;
    }
    // KubeVirt's IsMigrating: started and not ended.
    let migrating = status
        .migration_state
        .as_ref()
        .is_some_and(|m| m.start_timestamp.is_some() && m.end_timestamp.is_none());
    if migrating || !vmi_migrates_on_eviction(vmi, cluster) || !vmi_is_migratable(vmi) {
        return false;
    }
    let ns = vmi.metadata.namespace.as_deref();
    let name = vmi.metadata.name.as_deref();
    let has_migration = unfinished
        .iter()
        .any(|m| m.metadata.namespace.as_deref() == ns && m.spec.vmi_name.as_deref() == name);
    // Waiting for the Pods of an earlier migration to go.
    let pods = status.active_pods.as_ref().map_or(0, BTreeMap::len);
    !has_migration && pods <= 1
}

/// How many more migrations may start from `node`: the cluster's free slots and the node's
/// outbound ones, whichever is fewer. `on_node` tells whether a migration's VMI
/// (namespace, name) runs on `node`.
pub fn free_slots(
    unfinished: &[VirtualMachineInstanceMigration],
    limits: &MigrationConfig,
    on_node: impl Fn(&str, &str) -> bool,
) -> usize {
    let cluster =
        (limits.parallel_migrations_per_cluster as usize).saturating_sub(unfinished.len());
    let from_node = unfinished
        .iter()
        .filter(|m| {
            on_node(
                m.metadata.namespace.as_deref().unwrap_or(""),
                m.spec.vmi_name.as_deref().unwrap_or(""),
            )
        })
        .count();
    let node = (limits.parallel_outbound_migrations_per_node as usize).saturating_sub(from_node);
    cluster.min(node)
}

/// KubeVirt's `GenerateNewMigration`.
pub fn new_migration(vmi: &VirtualMachineInstance, node: &str) -> VirtualMachineInstanceMigration {
    let descheduler = vmi
        .annotations()
        .get(label::EVICTION_SOURCE)
        .is_some_and(|v| v == "descheduler");
    VirtualMachineInstanceMigration {
        metadata: ObjectMeta {
            generate_name: Some("kubevirt-evacuation-".into()),
            namespace: vmi.metadata.namespace.clone(),
            annotations: Some(BTreeMap::from([(
                label::EVACUATION_MIGRATION.to_string(),
                node.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: VirtualMachineInstanceMigrationSpec {
            vmi_name: vmi.metadata.name.clone(),
            priority: Some(
                if descheduler {
                    PRIORITY_SYSTEM_MAINTENANCE
                } else {
                    PRIORITY_SYSTEM_CRITICAL
                }
                .into(),
            ),
            ..VirtualMachineInstanceMigrationSpec::default()
        },
        status: None,
    }
}

/// Whether the watch should bother the reconciler with this VMI at all.
pub fn is_marked(vmi: &VirtualMachineInstance) -> bool {
    vmi.status
        .as_ref()
        .and_then(|s| s.evacuation_node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

pub async fn reconcile(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if !is_marked(&vmi) {
        return Ok(Action::await_change());
    }
    let ns = crate::namespace_of(&vmi.metadata)?;
    let _creating = CREATING.lock().await;
    // Read again under the lock: the watch's copy may predate a migration just created.
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(vmi) = vmis.get_opt(&vmi.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let unfinished: Vec<VirtualMachineInstanceMigration> =
        Api::<VirtualMachineInstanceMigration>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|m| !migration_is_final(m))
            .collect();
    let (cluster, limits) = {
        let c = ctx.config.cluster.borrow();
        (c.eviction_strategy, c.migrations.clone())
    };
    if !wants_evacuation(&vmi, &unfinished, cluster) {
        return Ok(Action::await_change());
    }
    let node = vmi
        .status
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let on_node: Vec<(String, String)> = Api::<VirtualMachineInstance>::all(ctx.client.clone())
        .list(&ListParams::default().labels(&format!("{}={node}", label::NODE_NAME)))
        .await?
        .items
        .iter()
        .map(|v| (v.namespace().unwrap_or_default(), v.name_any()))
        .collect();
    let free = free_slots(&unfinished, &limits, |ns, name| {
        on_node.iter().any(|(n, v)| n == ns && v == name)
    });
    if free == 0 {
        tracing::info!(%ns, vmi = %vmi.name_any(), %node, "evacuation waits for a free migration slot");
        return Ok(Action::requeue(WAIT_FOR_SLOT));
    }
    let api: Api<VirtualMachineInstanceMigration> = Api::namespaced(ctx.client.clone(), &ns);
    match api
        .create(&PostParams::default(), &new_migration(&vmi, &node))
        .await
    {
        Ok(m) => {
            tracing::info!(%ns, vmi = %vmi.name_any(), migration = %m.name_any(), "evacuation migration created");
            ctx.event(
                &vmi,
                EventType::Normal,
                "SuccessfulCreate",
                format!("Created Migration {}", m.name_any()),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) => {
            ctx.event(
                &vmi,
                EventType::Warning,
                "FailedCreate",
                format!("Error creating a Migration: {e}"),
            )
            .await;
            Err(e.into())
        }
    }
}

pub fn error_policy(vmi: Arc<VirtualMachineInstance>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::debug!(vmi = %vmi.name_any(), error = %err, "evacuation reconcile failed");
    Action::requeue(err.retry_after())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vmi(strategy: &str, status: serde_json::Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "metadata": {"name": "vm", "namespace": "ns", "uid": "u1"},
            "spec": {"domain": {"devices": {}}, "evictionStrategy": strategy},
            "status": status,
        }))
        .expect("vmi")
    }

    fn marked(extra: serde_json::Value) -> serde_json::Value {
        let mut s = json!({"phase": "Running", "nodeName": "node01", "evacuationNodeName": "node01",
            "activePods": {"p1": "node01"},
            "conditions": [{"type": "LiveMigratable", "status": "True"}]});
        if let (Some(m), Some(e)) = (s.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        s
    }

    fn migration(ns: &str, vmi: &str, phase: Option<&str>) -> VirtualMachineInstanceMigration {
        let mut m = json!({"metadata": {"name": format!("m-{vmi}"), "namespace": ns},
            "spec": {"vmiName": vmi}});
        if let Some(p) = phase {
            m["status"] = json!({"phase": p});
        }
        serde_json::from_value(m).expect("migration")
    }

    #[test]
    fn a_marked_migratable_vmi_wants_one_migration() {
        let v = vmi("LiveMigrate", marked(json!({})));
        assert!(wants_evacuation(&v, &[], None));
        // Already has one.
        assert!(!wants_evacuation(&v, &[migration("ns", "vm", None)], None));
        // Same name in another namespace is another VMI's.
        assert!(wants_evacuation(
            &v,
            &[migration("other", "vm", None)],
            None
        ));
        // Moved away already (evacuationNodeName left for the migration controller to clear).
        let moved = vmi("LiveMigrate", marked(json!({"nodeName": "node02"})));
        assert!(!wants_evacuation(&moved, &[], None));
        // Migrating now.
        let m = vmi(
            "LiveMigrate",
            marked(json!({"migrationState": {"startTimestamp": "2026-01-01T00:00:00Z"}})),
        );
        assert!(!wants_evacuation(&m, &[], None));
        // Pods of an earlier migration still there.
        let two = vmi(
            "LiveMigrate",
            marked(json!({"activePods": {"p1": "node01", "p2": "node02"}})),
        );
        assert!(!wants_evacuation(&two, &[], None));
        // Final.
        assert!(!wants_evacuation(
            &vmi("LiveMigrate", marked(json!({"phase": "Failed"}))),
            &[],
            None
        ));
        // Not marked.
        assert!(!wants_evacuation(
            &vmi("LiveMigrate", marked(json!({"evacuationNodeName": null}))),
            &[],
            None
        ));
    }

    #[test]
    fn only_strategies_that_migrate_get_a_migration() {
        // External: someone else moves the VMI.
        assert!(!wants_evacuation(
            &vmi("External", marked(json!({}))),
            &[],
            None
        ));
        assert!(!wants_evacuation(
            &vmi("None", marked(json!({}))),
            &[],
            None
        ));
        assert!(wants_evacuation(
            &vmi("LiveMigrateIfPossible", marked(json!({}))),
            &[],
            None
        ));
        // Not migratable: never.
        let stuck = vmi("LiveMigrate", marked(json!({"conditions": []})));
        assert!(!wants_evacuation(&stuck, &[], None));
    }

    #[test]
    fn the_parallel_limits_hold() {
        let limits = MigrationConfig::default();
        let on = |_: &str, name: &str| name.starts_with("here");
        assert_eq!(free_slots(&[], &limits, on), 2);
        let one_here = [migration("ns", "here-1", None)];
        assert_eq!(free_slots(&one_here, &limits, on), 1);
        let two_here = [
            migration("ns", "here-1", None),
            migration("ns", "here-2", None),
        ];
        assert_eq!(free_slots(&two_here, &limits, on), 0);
        // Five elsewhere fill the cluster.
        let five: Vec<_> = (0..5)
            .map(|i| migration("ns", &format!("far-{i}"), None))
            .collect();
        assert_eq!(free_slots(&five, &limits, on), 0);
        let four: Vec<_> = (0..4)
            .map(|i| migration("ns", &format!("far-{i}"), None))
            .collect();
        assert_eq!(free_slots(&four, &limits, on), 1);
        // Limits of zero stop everything; nothing underflows.
        let none = MigrationConfig {
            parallel_migrations_per_cluster: 0,
            parallel_outbound_migrations_per_node: 0,
            ..MigrationConfig::default()
        };
        assert_eq!(free_slots(&five, &none, on), 0);
    }

    #[test]
    fn the_migration_is_kubevirts() {
        let v = vmi("LiveMigrate", marked(json!({})));
        let m = new_migration(&v, "node01");
        assert_eq!(
            m.metadata.generate_name.as_deref(),
            Some("kubevirt-evacuation-")
        );
        assert_eq!(m.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(
            m.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubevirt.io/evacuationMigration"))
                .map(String::as_str),
            Some("node01")
        );
        assert_eq!(m.spec.vmi_name.as_deref(), Some("vm"));
        assert_eq!(m.spec.priority.as_deref(), Some("system-critical"));
        let mut d = v.clone();
        d.metadata.annotations = Some(BTreeMap::from([(
            "kubevirt.io/eviction-source".to_string(),
            "descheduler".to_string(),
        )]));
        assert_eq!(
            new_migration(&d, "node01").spec.priority.as_deref(),
            Some("system-maintenance")
        );
        assert!(migration_is_final(&migration("ns", "x", Some("Succeeded"))));
        assert!(!migration_is_final(&migration("ns", "x", Some("Running"))));
    }
}

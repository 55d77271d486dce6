//! KubeVirt's migration controller (pkg/virt-controller/watch/migration): drives a
//! VirtualMachineInstanceMigration through its phases by handing the VMI to the node agents
//! and reading back what they report in the VMI's `status.migrationState`.
//!
//! ```text
//! (unset) → Pending      the migration is accepted (no other migration of the VMI runs)
//! Pending → Scheduling   the VMI runs and the limits allow one more migration
//!                        (parallelMigrationsPerCluster, parallelOutboundMigrationsPerNode)
//! Scheduling → Scheduled a target node is chosen (the scheduler's filters, without the
//!                        source node, with spec.addedNodeSelector); handed off: the VMI gets
//!                        migrationState {migrationUid, sourceNode, targetNode} and the
//!                        kubevirt.io/migrationTargetNodeName label the target's handler
//!                        watches
//! Scheduled → PreparingTarget   the VMI shows the hand-off
//! PreparingTarget → TargetReady the target's handler published targetNodeAddress
//! TargetReady → Running  the source's handler started the migration (startTimestamp)
//! Running → Succeeded    completed, and the target's handler took the VMI over
//!                        (status.nodeName is the target)
//! any → Failed           the node agents report failed, the VMI went away or ended, no
//!                        node took the target in time, or the target was not prepared in time
//! ```
//!
//! Cancelling is deleting: the migration keeps KubeVirt's `kubevirt.io/migrationJobFinalize`
//! finalizer while it is not final. A deleted migration that was not handed off yet fails at
//! once; one that was gets `migrationState.abortRequested` on the VMI, the source's handler
//! cancels, and the failure it reports ends the migration. The finalizer goes when the
//! migration is final.
//!
//! Unlike KubeVirt there is no target Pod: Scheduling lasts as long as no node takes the
//! target, and the target's handler starts the target launcher itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use kubevirt_api::status::finalizer::MIGRATION as FINALIZER;
use kubevirt_api::status::label::{MIGRATION_TARGET_NODE_NAME, POD_NETWORK};
use kubevirt_api::status::{vmi_migration_state, MigrationPhase, VmiPhase};
use kubevirt_api::{MigrationPolicy, VirtualMachineInstance, VirtualMachineInstanceMigration};
use serde_json::{json, Value};

use crate::{migration_policy, phase, scheduler, Context, Error};

/// KubeVirt's `defaultUnschedulablePendingTimeoutSeconds`: a migration whose target no node
/// takes fails after this long.
pub const UNSCHEDULABLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the target's handler may take to prepare the target (start its launcher and
/// listen); KubeVirt's catch-all for a target Pod that never runs is 15 minutes, ours has no
/// image to pull.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a migration waiting for a limit, a node or a node agent is looked at again
/// besides on changes.
const RECHECK: Duration = Duration::from_secs(2);
/// How often a migration in flight is looked at again besides on changes: what the node
/// agents write wakes it, but a source agent that went silent writes nothing.
const SOURCE_RECHECK: Duration = Duration::from_secs(10);

/// KubeVirt's event reasons.
pub const FAILED_MIGRATION: &str = "FailedMigration";
pub const SUCCESSFUL_MIGRATION: &str = "SuccessfulMigration";
pub const PREPARING_TARGET: &str = "PreparingTarget";
pub const MIGRATED: &str = "Migrated";

/// The VMI's migration state if it belongs to the migration with `uid`.
fn ours(vmi: &VirtualMachineInstance, uid: &str) -> Option<Value> {
    let st = vmi_migration_state(vmi);
    (st["migrationUid"] == uid).then_some(st)
}

fn seconds_since(t: &Value, now: Timestamp) -> Option<u64> {
    let t: Timestamp = t.as_str()?.parse().ok()?;
    u64::try_from(now.as_second().saturating_sub(t.as_second())).ok()
}

/// When the migration entered `p` (its phase transition record).
fn entered(m: &VirtualMachineInstanceMigration, p: MigrationPhase) -> Option<Value> {
    m.status
        .as_ref()?
        .phase_transition_timestamps
        .as_ref()?
        .iter()
        .rev()
        .find(|t| t.phase.as_deref() == Some(p.as_str()))
        .and_then(|t| serde_json::to_value(t.phase_transition_timestamp.as_ref()?).ok())
}

/// Whether a migration is past Pending and not final: it counts against the limits.
fn active(m: &VirtualMachineInstanceMigration) -> bool {
    MigrationPhase::of(m).is_some_and(|p| p > MigrationPhase::Pending && !p.is_final())
}

/// What one reconcile decided (pure: [`decide`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Nothing to write; look again after this long (or on a change).
    Wait(Option<Duration>),
    /// Move to this phase.
    To(MigrationPhase),
    /// Fail with this event message.
    Fail(String),
    /// Ask the source to cancel (`migrationState.abortRequested` on the VMI).
    RequestAbort,
    /// Choose a target node (Pending → Scheduling, or Scheduling without one).
    Place,
    /// Hand the VMI to the target node's handler.
    HandOff,
}

/// The cluster around one migration: what [`decide`] needs besides the migration and its VMI.
#[derive(Clone, Debug, Default)]
pub struct Others {
    /// Migrations past Pending and not final, cluster-wide (this one excluded).
    pub active: usize,
    /// Of those, leaving the VMI's node.
    pub active_from_node: usize,
    /// Whether another migration, not final, owns the VMI's migration state.
    pub other_owns_vmi: bool,
    /// The VMI's failed migrations: how many, and when the last one failed.
    pub failed_before: (u32, Option<Timestamp>),
    /// The source node and the heartbeat timeout, when that node's agent stopped
    /// heartbeating ([`crate::node::unresponsive`]).
    pub source_silent: Option<(String, Duration)>,
}

/// KubeVirt's backoff for evacuation migrations of a VMI whose migrations failed: 20 s after
/// the first failure, doubling, at most 5 minutes; without it a drain would retry a failing
/// migration as fast as the controllers run.
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let secs = 20u64.saturating_mul(1 << failures.saturating_sub(1).min(8));
    Duration::from_secs(secs.min(300))
}

/// The next step of migration `m` of `vmi`.
pub fn decide(
    m: &VirtualMachineInstanceMigration,
    vmi: Option<&VirtualMachineInstance>,
    others: &Others,
    limits: &kubevirt_runtime::cluster::MigrationConfig,
    now: Timestamp,
) -> Step {
    let uid = m.metadata.uid.as_deref().unwrap_or_default();
    let p = MigrationPhase::of(m);
    let Some(vmi) = vmi else {
        return Step::Fail("Migration failed because vmi does not exist.".into());
    };
    let st = ours(vmi, uid);
    let handed_off = st.is_some();
    if phase::is_final(vmi) {
        return Step::Fail("Migration failed vmi shutdown during migration.".into());
    }
    if let Some(st) = &st {
        if st["failed"] == true {
            let why = st["failureReason"].as_str().unwrap_or("");
            return Step::Fail(if why.is_empty() {
                "source node reported migration failed".into()
            } else {
                format!("source node reported migration failed: {why}")
            });
        }
        // A source agent that stopped heartbeating reports nothing more: not the outcome,
        // not a cancel. The stream runs through that agent's proxy, so without it the guest
        // cannot finish moving; it stays at the source. Once the source reported the migration
        // completed, the guest is the target's: the target's agent takes the VMI over and the
        // migration succeeds below.
        // After the switch to post-copy the guest runs at the target while its pages still
        // come from the source: neither side alone has the guest, so nothing is declared.
        let reported = st["completed"] == true || st["mode"] == "PostCopy";
        let in_flight = matches!(
            p,
            Some(
                MigrationPhase::PreparingTarget
                    | MigrationPhase::TargetReady
                    | MigrationPhase::Running
            )
        );
        if let (Some((node, timeout)), true, false) = (&others.source_silent, in_flight, reported) {
            return Step::Fail(format!(
                "the source node {node} stopped reporting (no virt-handler heartbeat for more \
                 than {} s); the guest stays on {node}",
                timeout.as_secs()
            ));
        }
    }
    if m.metadata.deletion_timestamp.is_some() {
        return match &st {
            Some(st) if st["abortRequested"] != true => Step::RequestAbort,
            Some(_) => Step::Wait(Some(RECHECK)),
            None => Step::Fail("Migration failed due to being canceled".into()),
        };
    }
    match p {
        None if others.other_owns_vmi => Step::Fail(
            "VMI is not eligible for migration because another migration job is in progress."
                .into(),
        ),
        None => Step::To(MigrationPhase::Pending),
        Some(MigrationPhase::Pending) => {
            if !phase::is(vmi, VmiPhase::Running) {
                return Step::Wait(Some(RECHECK));
            }
            let evacuation = m
                .annotations()
                .contains_key(kubevirt_api::status::label::EVACUATION_MIGRATION);
            if let (true, (n, Some(last))) = (evacuation, others.failed_before) {
                let since =
                    u64::try_from(now.as_second().saturating_sub(last.as_second())).unwrap_or(0);
                if since < backoff(n).as_secs() {
                    return Step::Wait(Some(Duration::from_secs(backoff(n).as_secs() - since)));
                }
            }
            if others.active >= limits.parallel_migrations_per_cluster as usize
                || others.active_from_node >= limits.parallel_outbound_migrations_per_node as usize
            {
                return Step::Wait(Some(RECHECK));
            }
            Step::Place
        }
        Some(MigrationPhase::Scheduling) => {
            let target = m
                .status
                .as_ref()
                .and_then(|s| s.migration_state.as_ref())
                .and_then(|s| s.target_node.as_deref());
            if target.is_some() {
                return Step::HandOff;
            }
            let waited = entered(m, MigrationPhase::Scheduling)
                .and_then(|t| seconds_since(&t, now))
                .unwrap_or(0);
            if waited >= UNSCHEDULABLE_TIMEOUT.as_secs() {
                return Step::Fail(format!(
                    "Migration target for VMI [{}/{}] was unschedulable for {} s",
                    vmi.namespace().unwrap_or_default(),
                    vmi.name_any(),
                    UNSCHEDULABLE_TIMEOUT.as_secs()
                ));
            }
            Step::Place
        }
        Some(MigrationPhase::Scheduled) if handed_off => Step::To(MigrationPhase::PreparingTarget),
        Some(MigrationPhase::Scheduled) => Step::HandOff,
        Some(MigrationPhase::PreparingTarget) => {
            let Some(st) = st else {
                return Step::Fail(
                    "VMI's migration state was cleared during the active migration.".into(),
                );
            };
            if st["targetNodeAddress"]
                .as_str()
                .is_some_and(|a| !a.is_empty())
            {
                return Step::To(MigrationPhase::TargetReady);
            }
            let waited = entered(m, MigrationPhase::PreparingTarget)
                .and_then(|t| seconds_since(&t, now))
                .unwrap_or(0);
            if waited >= PREPARE_TIMEOUT.as_secs() {
                return Step::Fail(format!(
                    "the target node {} did not prepare the target within {} s",
                    st["targetNode"].as_str().unwrap_or_default(),
                    PREPARE_TIMEOUT.as_secs()
                ));
            }
            Step::Wait(Some(RECHECK))
        }
        Some(MigrationPhase::TargetReady) => match st {
            None => {
                Step::Fail("VMI's migration state was cleared during the active migration.".into())
            }
            Some(st) if !st["startTimestamp"].is_null() => Step::To(MigrationPhase::Running),
            Some(_) => Step::Wait(Some(SOURCE_RECHECK)),
        },
        Some(MigrationPhase::Running) => match st {
            None => {
                Step::Fail("VMI's migration state was cleared during the active migration.".into())
            }
            Some(st) => {
                let on_target = vmi.status.as_ref().and_then(|s| s.node_name.as_deref())
                    == st["targetNode"].as_str();
                if st["completed"] == true && on_target {
                    Step::To(MigrationPhase::Succeeded)
                } else {
                    Step::Wait(Some(SOURCE_RECHECK))
                }
            }
        },
        Some(MigrationPhase::Succeeded | MigrationPhase::Failed) => Step::Wait(None),
    }
}

fn transitions(m: &VirtualMachineInstanceMigration, to: MigrationPhase, now: Timestamp) -> Value {
    let mut ts = m
        .status
        .as_ref()
        .and_then(|s| s.phase_transition_timestamps.clone())
        .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    ts.push(json!({"phase": to.as_str(), "phaseTransitionTimestamp": now.to_string()}));
    Value::Array(ts)
}

/// The VMI to migrate, with the migration's `addedNodeSelector` merged into its node selector
/// (KubeVirt adds it to the target Pod's).
fn target_constraints(
    vmi: &VirtualMachineInstance,
    m: &VirtualMachineInstanceMigration,
) -> VirtualMachineInstance {
    let mut v = vmi.clone();
    if let Some(added) = &m.spec.added_node_selector {
        let sel = v.spec.node_selector.get_or_insert_with(BTreeMap::new);
        for (k, val) in added {
            sel.insert(k.clone(), val.clone());
        }
    }
    v
}

/// Reconciles one migration.
pub async fn reconcile(
    m: Arc<VirtualMachineInstanceMigration>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = crate::namespace_of(&m.metadata)?;
    let uid = crate::uid_of(&m.metadata)?;
    let name = m.name_any();
    let migrations: Api<VirtualMachineInstanceMigration> = Api::namespaced(ctx.client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let vmi_name = m.spec.vmi_name.clone().unwrap_or_default();
    let vmi = if vmi_name.is_empty() {
        None
    } else {
        vmis.get_opt(&vmi_name).await?
    };
    let now = Timestamp::now();
    let p = MigrationPhase::of(&m);

    if p.is_some_and(MigrationPhase::is_final) {
        finish(&m, vmi.as_ref(), &vmis, &migrations).await?;
        return Ok(Action::await_change());
    }
    if m.metadata.deletion_timestamp.is_none() && !m.finalizers().iter().any(|f| f == FINALIZER) {
        let mut fins = m.finalizers().to_vec();
        fins.push(FINALIZER.into());
        let patch = json!({"metadata": {"resourceVersion": m.metadata.resource_version, "finalizers": fins}});
        migrations
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        return Ok(Action::await_change());
    }

    let all = Api::<VirtualMachineInstanceMigration>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let source = vmi
        .as_ref()
        .and_then(|v| v.status.as_ref())
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let others_active: Vec<&VirtualMachineInstanceMigration> = all
        .iter()
        .filter(|o| o.metadata.uid.as_deref() != Some(uid.as_str()) && active(o))
        .collect();
    let owner = vmi
        .as_ref()
        .map(vmi_migration_state)
        .and_then(|s| s["migrationUid"].as_str().map(String::from))
        .filter(|u| !u.is_empty() && *u != uid);
    let others = Others {
        active: others_active.len(),
        active_from_node: others_active
            .iter()
            .filter(|o| {
                o.status
                    .as_ref()
                    .and_then(|s| s.migration_state.as_ref())
                    .and_then(|s| s.source_node.as_deref())
                    == Some(source.as_str())
            })
            .count(),
        other_owns_vmi: owner.is_some_and(|o| {
            all.iter().any(|x| {
                x.metadata.uid.as_deref() == Some(o.as_str())
                    && !MigrationPhase::of(x).is_some_and(MigrationPhase::is_final)
            })
        }),
        failed_before: (0, None),
        source_silent: None,
    };
    let failed: Vec<Timestamp> = all
        .iter()
        .filter(|o| {
            o.metadata.namespace.as_deref() == Some(ns.as_str())
                && o.spec.vmi_name == m.spec.vmi_name
        })
        .filter(|o| MigrationPhase::of(o) == Some(MigrationPhase::Failed))
        .filter_map(|o| {
            entered(o, MigrationPhase::Failed)
                .and_then(|t| t.as_str().and_then(|t| t.parse::<Timestamp>().ok()))
        })
        .collect();
    let others = Others {
        failed_before: (
            u32::try_from(failed.len()).unwrap_or(u32::MAX),
            failed.iter().max().copied(),
        ),
        ..others
    };
    let source_node = vmi
        .as_ref()
        .map(vmi_migration_state)
        .and_then(|s| s["sourceNode"].as_str().map(String::from))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| source.clone());
    let timeout = ctx.config.node_heartbeat_timeout;
    let source_silent = if source_node.is_empty() {
        None
    } else {
        Api::<Node>::all(ctx.client.clone())
            .get_opt(&source_node)
            .await?
            .filter(|n| crate::node::unresponsive(n, now, timeout))
            .map(|_| (source_node, timeout))
    };
    let others = Others {
        source_silent,
        ..others
    };
    let limits = ctx.config.cluster.borrow().migrations.clone();
    let step = decide(&m, vmi.as_ref(), &others, &limits, now);
    tracing::debug!(%ns, %name, phase = ?p, ?step, "migration");
    let state = vmi
        .as_ref()
        .and_then(|v| ours(v, &uid))
        .unwrap_or(Value::Null);
    match step {
        Step::Wait(after) => {
            // Keep the migration's copy of the VMI's migration state current.
            if !state.is_null() && mirrored(&m) != state {
                write(&migrations, &name, json!({"migrationState": state})).await?;
            }
            Ok(after.map_or_else(Action::await_change, Action::requeue))
        }
        Step::To(next) => {
            let mut status = json!({"phase": next.as_str(), "phaseTransitionTimestamps": transitions(&m, next, now)});
            if !state.is_null() {
                status["migrationState"] = state;
            }
            write(&migrations, &name, status).await?;
            match next {
                MigrationPhase::PreparingTarget => {
                    ctx.event(
                        m.as_ref(),
                        EventType::Normal,
                        PREPARING_TARGET,
                        "VirtualMachineInstance Migration Target Prepared.".into(),
                    )
                    .await
                }
                MigrationPhase::Succeeded => {
                    tracing::info!(%ns, %name, vmi = %vmi_name, "migration succeeded");
                    ctx.event(
                        m.as_ref(),
                        EventType::Normal,
                        SUCCESSFUL_MIGRATION,
                        "Source node reported migration succeeded".into(),
                    )
                    .await
                }
                _ => {}
            }
            Ok(Action::requeue(RECHECK))
        }
        Step::Fail(why) => {
            tracing::warn!(%ns, %name, vmi = %vmi_name, %why, "migration failed");
            fail_on_vmi(&vmis, vmi.as_ref(), &uid, &why, now).await?;
            let mut status = json!({
                "phase": MigrationPhase::Failed.as_str(),
                "phaseTransitionTimestamps": transitions(&m, MigrationPhase::Failed, now),
            });
            if m.metadata.deletion_timestamp.is_some() {
                status["conditions"] = json!([{"type": "migrationAbortRequested", "status": "True",
                    "lastProbeTime": now.to_string()}]);
            }
            write(&migrations, &name, status).await?;
            ctx.event(m.as_ref(), EventType::Warning, FAILED_MIGRATION, why)
                .await;
            Ok(Action::requeue(RECHECK))
        }
        Step::RequestAbort => {
            let Some(vmi) = vmi else {
                return Ok(Action::requeue(RECHECK));
            };
            let patch = json!({"status": {"migrationState": {"abortRequested": true}}});
            vmis.patch(
                &vmi.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
            write(
                &migrations,
                &name,
                json!({"conditions": [{"type": "migrationAbortRequested", "status": "True",
                    "lastProbeTime": now.to_string()}]}),
            )
            .await?;
            tracing::info!(%ns, %name, vmi = %vmi_name, "migration cancel requested");
            Ok(Action::requeue(RECHECK))
        }
        Step::Place => {
            let Some(vmi) = vmi else {
                return Ok(Action::requeue(RECHECK));
            };
            let all_nodes = Api::<Node>::all(ctx.client.clone())
                .list(&ListParams::default())
                .await?
                .items;
            // The target connects the guest's NICs as the source does.
            let has_nics = vmi
                .spec
                .domain
                .devices
                .interfaces
                .as_ref()
                .is_some_and(|i| !i.is_empty());
            let network = all_nodes
                .iter()
                .filter(|_| has_nics)
                .find(|n| n.metadata.name.as_deref() == Some(source.as_str()))
                .and_then(|n| n.labels().get(POD_NETWORK).cloned());
            let nodes: Vec<Node> = all_nodes
                .into_iter()
                .filter(|n| n.metadata.name.as_deref() != Some(source.as_str()))
                .collect();
            let load = crate::vmi::load(&ctx).await?;
            let mut wanted = target_constraints(&vmi, &m);
            if let Some(network) = network {
                wanted
                    .spec
                    .node_selector
                    .get_or_insert_with(BTreeMap::new)
                    .insert(POD_NETWORK.into(), network);
            }
            let to_scheduling = p != Some(MigrationPhase::Scheduling);
            // The target must reach the VMI's volumes too, except the local-path volumes of
            // the source node: the migration copies those and pins them to the target
            // (docs/migration.md; a VMI whose launcher does not copy them is not
            // LiveMigratable, so no migration gets here).
            let mut volumes = crate::vmi::volumes_of(&ctx, &vmi).await?;
            volumes.bound.retain(|pv| {
                !(kubevirt_api::core_kinds::local_path_volume(pv)
                    && kubevirt_api::core_kinds::pinned_host(pv) == Some(source.as_str()))
            });
            match scheduler::place(&wanted, &nodes, &load, &volumes) {
                Ok(target) => {
                    tracing::info!(%ns, %name, vmi = %vmi_name, %source, %target, "migration target chosen");
                    let mut status = json!({"migrationState": {
                        "migrationUid": uid, "sourceNode": source, "targetNode": target}});
                    if to_scheduling {
                        status["phase"] = json!(MigrationPhase::Scheduling.as_str());
                        status["phaseTransitionTimestamps"] =
                            transitions(&m, MigrationPhase::Scheduling, now);
                    }
                    write(&migrations, &name, status).await?;
                    Ok(Action::requeue(RECHECK))
                }
                Err(why) => {
                    // KubeVirt's target Pod would wait Pending with kube-scheduler's verdict.
                    let mut status =
                        json!({"migrationState": {"migrationUid": uid, "sourceNode": source}});
                    if to_scheduling {
                        status["phase"] = json!(MigrationPhase::Scheduling.as_str());
                        status["phaseTransitionTimestamps"] =
                            transitions(&m, MigrationPhase::Scheduling, now);
                        write(&migrations, &name, status).await?;
                    }
                    let message = format!(
                        "Migration target for VMI [{ns}/{vmi_name}] is currently unschedulable: {why}"
                    );
                    tracing::info!(%ns, %name, %message);
                    if to_scheduling {
                        ctx.event(m.as_ref(), EventType::Warning, "FailedScheduling", message)
                            .await;
                    }
                    Ok(Action::requeue(Duration::from_secs(5)))
                }
            }
        }
        Step::HandOff => {
            let Some(vmi) = vmi else {
                return Ok(Action::requeue(RECHECK));
            };
            let target = m
                .status
                .as_ref()
                .and_then(|s| s.migration_state.as_ref())
                .and_then(|s| s.target_node.clone())
                .unwrap_or_default();
            let resolved = resolve_configuration(&ctx, &vmi).await?;
            if let Some(policy) = &resolved.policy {
                tracing::info!(%ns, %name, vmi = %vmi_name, %policy, "migration is updated by migration policy");
            }
            let mut state = json!({
                "migrationUid": uid,
                "sourceNode": source,
                "targetNode": target,
                "mode": "PreCopy",
                "migrationConfiguration": resolved.configuration,
            });
            if let Some(policy) = resolved.policy {
                state["migrationPolicyName"] = Value::String(policy);
            }
            // A fresh state replaces any earlier migration's, its configuration included.
            let fresh = replacement(&vmi_migration_state(&vmi), state);
            let patch = json!({
                "metadata": {
                    "resourceVersion": vmi.metadata.resource_version,
                    "labels": {MIGRATION_TARGET_NODE_NAME: target},
                },
                "status": {"migrationState": fresh},
            });
            vmis.patch(
                &vmi.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
            let status = json!({
                "phase": MigrationPhase::Scheduled.as_str(),
                "phaseTransitionTimestamps": transitions(&m, MigrationPhase::Scheduled, now),
            });
            write(&migrations, &name, status).await?;
            tracing::info!(%ns, %name, vmi = %vmi_name, %target, "migration handed off to the target node");
            Ok(Action::requeue(RECHECK))
        }
    }
}

/// The JSON merge patch that turns `old` into `new`: every key of `old` that `new` lacks is
/// removed (null), in nested objects too. A merge patch merges objects, so without the nulls a
/// migration would run with a setting the previous one had and the cluster no longer has.
fn replacement(old: &Value, new: Value) -> Value {
    match (old, new) {
        (Value::Object(old), Value::Object(mut new)) => {
            for (k, was) in old {
                let now = match new.remove(k) {
                    Some(v) => replacement(was, v),
                    None => Value::Null,
                };
                new.insert(k.clone(), now);
            }
            Value::Object(new)
        }
        (_, new) => new,
    }
}

/// The settings the migration runs with (`migrationState.migrationConfiguration`): the
/// cluster's `MigrationConfiguration` (KubeVirt copies the whole of it) with the best-matching
/// MigrationPolicy laid over it. The handlers take the options they apply from it
/// (`MigrationOptions::from_configuration`).
async fn resolve_configuration(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
) -> Result<migration_policy::Resolved, Error> {
    let cluster = ctx.config.cluster.borrow().migrations.raw.clone();
    let policies = Api::<MigrationPolicy>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    if policies.is_empty() {
        return Ok(migration_policy::resolve(
            &cluster,
            &[],
            &BTreeMap::new(),
            &BTreeMap::new(),
        ));
    }
    let ns = crate::namespace_of(&vmi.metadata)?;
    let namespace_labels = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(&ns)
        .await?
        .and_then(|n| n.metadata.labels)
        .unwrap_or_default();
    let vmi_labels = vmi.metadata.labels.clone().unwrap_or_default();
    Ok(migration_policy::resolve(
        &cluster,
        &policies,
        &vmi_labels,
        &namespace_labels,
    ))
}

fn mirrored(m: &VirtualMachineInstanceMigration) -> Value {
    m.status
        .as_ref()
        .and_then(|s| s.migration_state.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

async fn write(
    api: &Api<VirtualMachineInstanceMigration>,
    name: &str,
    status: Value,
) -> Result<(), Error> {
    kubevirt_runtime::status::write_status(api, name, status).await?;
    Ok(())
}

/// A failed migration that the VMI still shows as in progress: marked failed there, so the
/// target's handler stops its target and the source's keeps the guest.
async fn fail_on_vmi(
    vmis: &Api<VirtualMachineInstance>,
    vmi: Option<&VirtualMachineInstance>,
    uid: &str,
    why: &str,
    now: Timestamp,
) -> Result<(), Error> {
    let Some(vmi) = vmi else { return Ok(()) };
    let Some(st) = ours(vmi, uid) else {
        return Ok(());
    };
    if st["failed"] == true || (st["completed"] == true && !phase::is_final(vmi)) {
        return Ok(());
    }
    let reason = st["failureReason"]
        .as_str()
        .filter(|r| !r.is_empty())
        .unwrap_or(why);
    let patch = json!({"status": {"migrationState": {
        "failed": true, "completed": true, "endTimestamp": now.to_string(), "failureReason": reason,
    }}});
    patch_vmi(vmis, &vmi.name_any(), &patch).await
}

/// A merge patch of a VMI; a VMI that is gone needs none.
async fn patch_vmi(
    vmis: &Api<VirtualMachineInstance>,
    name: &str,
    patch: &Value,
) -> Result<(), Error> {
    match vmis
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A final migration: its copy of the VMI's migration state, the target label gone from the
/// VMI, and its finalizer released.
async fn finish(
    m: &VirtualMachineInstanceMigration,
    vmi: Option<&VirtualMachineInstance>,
    vmis: &Api<VirtualMachineInstance>,
    migrations: &Api<VirtualMachineInstanceMigration>,
) -> Result<(), Error> {
    let uid = m.metadata.uid.as_deref().unwrap_or_default();
    let name = m.name_any();
    if let Some(vmi) = vmi {
        if let Some(st) = ours(vmi, uid) {
            if mirrored(m) != st {
                write(migrations, &name, json!({"migrationState": st})).await?;
            }
            let labelled = vmi.labels().contains_key(MIGRATION_TARGET_NODE_NAME);
            // After a failure the target's handler has nothing left to do; after a success it
            // removed the label itself when it took the VMI over.
            if labelled && st["completed"] == true {
                let mut patch = json!({"metadata": {"labels": {MIGRATION_TARGET_NODE_NAME: null}}});
                // A migration that moved the VMI off a node being drained ends the evacuation.
                let evacuating = vmi
                    .status
                    .as_ref()
                    .and_then(|s| s.evacuation_node_name.as_deref());
                if MigrationPhase::of(m) == Some(MigrationPhase::Succeeded)
                    && evacuating.is_some()
                    && evacuating != vmi.status.as_ref().and_then(|s| s.node_name.as_deref())
                {
                    patch["status"] = json!({"evacuationNodeName": null});
                }
                patch_vmi(vmis, &vmi.name_any(), &patch).await?;
            }
        }
    }
    if m.finalizers().iter().any(|f| f == FINALIZER) {
        let keep: Vec<&String> = m.finalizers().iter().filter(|f| *f != FINALIZER).collect();
        let patch = json!({"metadata": {"resourceVersion": m.metadata.resource_version, "finalizers": keep}});
        migrations
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

pub fn error_policy(
    m: Arc<VirtualMachineInstanceMigration>,
    err: &Error,
    _ctx: Arc<Context>,
) -> Action {
    tracing::debug!(migration = %m.name_any(), error = %err, "reconcile failed");
    Action::requeue(err.retry_after())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fresh_migration_state_removes_the_earlier_ones_keys_and_settings() {
        let old = serde_json::json!({"migrationUid": "a", "failed": true,
            "targetDirectMigrationNodePorts": {"1": 49152},
            "migrationConfiguration": {"bandwidthPerMigration": "1Mi", "progressTimeout": 10}});
        let new = serde_json::json!({"migrationUid": "b",
            "migrationConfiguration": {"progressTimeout": 10}});
        let patch = super::replacement(&old, new);
        assert_eq!(
            patch,
            serde_json::json!({"migrationUid": "b", "failed": null,
                "targetDirectMigrationNodePorts": null,
                "migrationConfiguration": {"bandwidthPerMigration": null, "progressTimeout": 10}})
        );
        // No earlier state: the new one as it is.
        let fresh = serde_json::json!({"migrationUid": "c"});
        assert_eq!(
            super::replacement(&serde_json::Value::Null, fresh.clone()),
            fresh
        );
    }

    use super::*;
    use kubevirt_runtime::cluster::ClusterConfig;

    fn mig(v: Value) -> VirtualMachineInstanceMigration {
        let mut base = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": "m", "namespace": "default", "uid": "u1"},
            "spec": {"vmiName": "vm"}});
        merge(&mut base, v);
        serde_json::from_value(base).unwrap()
    }

    fn vmi(v: Value) -> VirtualMachineInstance {
        let mut base = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm", "namespace": "default", "uid": "v1"},
            "spec": {"domain": {"devices": {}}},
            "status": {"phase": "Running", "nodeName": "node01"}});
        merge(&mut base, v);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn step(m: &VirtualMachineInstanceMigration, v: Option<&VirtualMachineInstance>) -> Step {
        decide(
            m,
            v,
            &Others::default(),
            &ClusterConfig::default().migrations,
            Timestamp::now(),
        )
    }

    #[test]
    fn a_migration_walks_kubevirts_phases_as_the_node_agents_report() {
        let v = vmi(json!({}));
        assert_eq!(
            step(&mig(json!({})), Some(&v)),
            Step::To(MigrationPhase::Pending)
        );
        let pending = mig(json!({"status": {"phase": "Pending"}}));
        assert_eq!(step(&pending, Some(&v)), Step::Place);
        let scheduling = mig(
            json!({"status": {"phase": "Scheduling", "migrationState": {"targetNode": "node02"}}}),
        );
        assert_eq!(step(&scheduling, Some(&v)), Step::HandOff);
        let scheduled = mig(json!({"status": {"phase": "Scheduled"}}));
        let handed = vmi(
            json!({"status": {"migrationState": {"migrationUid": "u1", "targetNode": "node02"}}}),
        );
        assert_eq!(step(&scheduled, Some(&v)), Step::HandOff);
        assert_eq!(
            step(&scheduled, Some(&handed)),
            Step::To(MigrationPhase::PreparingTarget)
        );
        let preparing = mig(json!({"status": {"phase": "PreparingTarget"}}));
        assert_eq!(step(&preparing, Some(&handed)), Step::Wait(Some(RECHECK)));
        let ready = vmi(json!({"status": {"migrationState": {"migrationUid": "u1",
            "targetNode": "node02", "targetNodeAddress": "10.0.0.2"}}}));
        assert_eq!(
            step(&preparing, Some(&ready)),
            Step::To(MigrationPhase::TargetReady)
        );
        let target_ready = mig(json!({"status": {"phase": "TargetReady"}}));
        assert_eq!(
            step(&target_ready, Some(&ready)),
            Step::Wait(Some(SOURCE_RECHECK))
        );
        let started = vmi(json!({"status": {"migrationState": {"migrationUid": "u1",
            "targetNode": "node02", "targetNodeAddress": "10.0.0.2",
            "startTimestamp": "2026-11-30T07:00:00Z"}}}));
        assert_eq!(
            step(&target_ready, Some(&started)),
            Step::To(MigrationPhase::Running)
        );
        let running = mig(json!({"status": {"phase": "Running"}}));
        // The source reported completion, but the target has not taken the VMI over yet.
        let completed = vmi(json!({"status": {"migrationState": {"migrationUid": "u1",
            "targetNode": "node02", "completed": true}}}));
        assert_eq!(
            step(&running, Some(&completed)),
            Step::Wait(Some(SOURCE_RECHECK))
        );
        let moved = vmi(json!({"status": {"nodeName": "node02", "migrationState": {
            "migrationUid": "u1", "targetNode": "node02", "completed": true}}}));
        assert_eq!(
            step(&running, Some(&moved)),
            Step::To(MigrationPhase::Succeeded)
        );
    }

    #[test]
    fn failures_and_cancels_end_the_migration_with_kubevirts_messages() {
        let running = mig(json!({"status": {"phase": "Running"}}));
        assert_eq!(
            step(&running, None),
            Step::Fail("Migration failed because vmi does not exist.".into())
        );
        let failed = vmi(json!({"status": {"migrationState": {"migrationUid": "u1",
            "failed": true, "failureReason": "Live migration has been aborted"}}}));
        assert_eq!(
            step(&running, Some(&failed)),
            Step::Fail(
                "source node reported migration failed: Live migration has been aborted".into()
            )
        );
        // Another migration's failure is not this one's.
        let other =
            vmi(json!({"status": {"migrationState": {"migrationUid": "u0", "failed": true}}}));
        assert_eq!(
            step(&running, Some(&other)),
            Step::Fail("VMI's migration state was cleared during the active migration.".into())
        );
        let ended = vmi(json!({"status": {"phase": "Succeeded"}}));
        assert_eq!(
            step(&running, Some(&ended)),
            Step::Fail("Migration failed vmi shutdown during migration.".into())
        );
        // Deleted before the hand-off: failed at once; after it: the source is asked to cancel.
        let deleted = mig(
            json!({"metadata": {"deletionTimestamp": "2026-11-30T07:00:00Z"},
            "status": {"phase": "Pending"}}),
        );
        assert_eq!(
            step(&deleted, Some(&vmi(json!({})))),
            Step::Fail("Migration failed due to being canceled".into())
        );
        let handed = vmi(json!({"status": {"migrationState": {"migrationUid": "u1"}}}));
        assert_eq!(step(&deleted, Some(&handed)), Step::RequestAbort);
        let asked = vmi(
            json!({"status": {"migrationState": {"migrationUid": "u1", "abortRequested": true}}}),
        );
        assert_eq!(step(&deleted, Some(&asked)), Step::Wait(Some(RECHECK)));
    }

    #[test]
    fn limits_and_other_migrations_hold_a_migration_back() {
        let pending = mig(json!({"status": {"phase": "Pending"}}));
        let v = vmi(json!({}));
        let limits = ClusterConfig::default().migrations;
        let busy = |active, from_node| Others {
            active,
            active_from_node: from_node,
            ..Default::default()
        };
        let now = Timestamp::now();
        assert_eq!(
            decide(&pending, Some(&v), &busy(4, 1), &limits, now),
            Step::Place
        );
        assert_eq!(
            decide(&pending, Some(&v), &busy(5, 0), &limits, now),
            Step::Wait(Some(RECHECK))
        );
        assert_eq!(
            decide(&pending, Some(&v), &busy(2, 2), &limits, now),
            Step::Wait(Some(RECHECK))
        );
        // A VMI that does not run yet waits; one that another migration moves is refused.
        let starting = vmi(json!({"status": {"phase": "Scheduled"}}));
        assert_eq!(
            decide(&pending, Some(&starting), &busy(0, 0), &limits, now),
            Step::Wait(Some(RECHECK))
        );
        let new = mig(json!({}));
        let owned = Others {
            other_owns_vmi: true,
            ..Default::default()
        };
        assert_eq!(
            decide(&new, Some(&v), &owned, &limits, now),
            Step::Fail(
                "VMI is not eligible for migration because another migration job is in progress."
                    .into()
            )
        );
    }

    #[test]
    fn an_unschedulable_or_unprepared_target_times_out() {
        let v = vmi(json!({}));
        let long_ago = "2026-11-30T06:00:00Z";
        let now: Timestamp = "2026-11-30T06:06:00Z".parse().unwrap();
        let limits = ClusterConfig::default().migrations;
        let scheduling = mig(
            json!({"status": {"phase": "Scheduling", "phaseTransitionTimestamps": [
            {"phase": "Scheduling", "phaseTransitionTimestamp": long_ago}]}}),
        );
        assert!(matches!(
            decide(&scheduling, Some(&v), &Others::default(), &limits, now),
            Step::Fail(m) if m.contains("unschedulable for 300 s")
        ));
        let preparing = mig(
            json!({"status": {"phase": "PreparingTarget", "phaseTransitionTimestamps": [
            {"phase": "PreparingTarget", "phaseTransitionTimestamp": long_ago}]}}),
        );
        let handed = vmi(
            json!({"status": {"migrationState": {"migrationUid": "u1", "targetNode": "node02"}}}),
        );
        assert!(matches!(
            decide(&preparing, Some(&handed), &Others::default(), &limits, now),
            Step::Fail(m) if m.contains("node02 did not prepare the target")
        ));
    }

    #[test]
    fn a_migration_whose_source_agent_went_silent_fails_and_leaves_the_guest_there() {
        let limits = ClusterConfig::default().migrations;
        let now = Timestamp::now();
        let silent = Others {
            source_silent: Some(("node01".into(), Duration::from_secs(300))),
            ..Default::default()
        };
        let started = vmi(json!({"status": {"nodeName": "node01", "migrationState": {
            "migrationUid": "u1", "sourceNode": "node01", "targetNode": "node02",
            "targetNodeAddress": "10.0.0.2", "startTimestamp": "2026-11-30T07:00:00Z"}}}));
        for phase in ["PreparingTarget", "TargetReady", "Running"] {
            let m = mig(json!({"status": {"phase": phase}}));
            assert_eq!(
                decide(&m, Some(&started), &silent, &limits, now),
                Step::Fail(
                    "the source node node01 stopped reporting (no virt-handler heartbeat for \
                     more than 300 s); the guest stays on node01"
                        .into()
                ),
                "{phase}"
            );
            // With the source heartbeating, the migration waits, and looks again on its own.
            assert!(matches!(
                decide(&m, Some(&started), &Others::default(), &limits, now),
                Step::Wait(Some(_)) | Step::To(_)
            ));
        }
        // A cancel the silent source will never act on fails too, rather than wait forever.
        let deleted = mig(
            json!({"metadata": {"deletionTimestamp": "2026-11-30T07:00:00Z"},
            "status": {"phase": "Running"}}),
        );
        assert!(matches!(
            decide(&deleted, Some(&started), &silent, &limits, now),
            Step::Fail(m) if m.contains("stopped reporting")
        ));
        // The source reported completion before it went silent: the guest is the target's,
        // whose agent takes the VMI over; nothing fails.
        let completed = vmi(json!({"status": {"nodeName": "node01", "migrationState": {
            "migrationUid": "u1", "sourceNode": "node01", "targetNode": "node02",
            "startTimestamp": "2026-11-30T07:00:00Z", "completed": true}}}));
        let running = mig(json!({"status": {"phase": "Running"}}));
        assert_eq!(
            decide(&running, Some(&completed), &silent, &limits, now),
            Step::Wait(Some(SOURCE_RECHECK))
        );
        // In post-copy the guest already runs at the target: failing would remove it there.
        let postcopy = vmi(json!({"status": {"nodeName": "node01", "migrationState": {
            "migrationUid": "u1", "sourceNode": "node01", "targetNode": "node02",
            "startTimestamp": "2026-11-30T07:00:00Z", "mode": "PostCopy"}}}));
        assert_eq!(
            decide(&running, Some(&postcopy), &silent, &limits, now),
            Step::Wait(Some(SOURCE_RECHECK))
        );
        // Before the hand-off the source has nothing to report: placement goes on.
        let pending = mig(json!({"status": {"phase": "Pending"}}));
        assert_eq!(
            decide(&pending, Some(&vmi(json!({}))), &silent, &limits, now),
            Step::Place
        );
    }

    #[test]
    fn evacuations_back_off_after_failures_as_kubevirt() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(20));
        assert_eq!(backoff(2), Duration::from_secs(40));
        assert_eq!(backoff(5), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
        let v = vmi(json!({}));
        let limits = ClusterConfig::default().migrations;
        let now: Timestamp = "2026-11-30T06:00:30Z".parse().unwrap();
        let failed = Others {
            failed_before: (1, Some("2026-11-30T06:00:20Z".parse().unwrap())),
            ..Default::default()
        };
        let evac = mig(
            json!({"metadata": {"annotations": {"kubevirt.io/evacuationMigration": "node01"}},
            "status": {"phase": "Pending"}}),
        );
        assert_eq!(
            decide(&evac, Some(&v), &failed, &limits, now),
            Step::Wait(Some(Duration::from_secs(10)))
        );
        // A user's migration is not held back.
        let user = mig(json!({"status": {"phase": "Pending"}}));
        assert_eq!(decide(&user, Some(&v), &failed, &limits, now), Step::Place);
    }

    #[test]
    fn the_added_node_selector_narrows_the_target() {
        let v = vmi(json!({"spec": {"nodeSelector": {"a": "1"}}}));
        let m = mig(json!({"spec": {"addedNodeSelector": {"b": "2", "a": "3"}}}));
        let t = target_constraints(&v, &m);
        let sel = t.spec.node_selector.unwrap();
        assert_eq!(sel.get("b").map(String::as_str), Some("2"));
        assert_eq!(sel.get("a").map(String::as_str), Some("3"));
    }
}

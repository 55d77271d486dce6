//! VirtualMachineInstanceReplicaSet: keeps `spec.replicas` VMIs from the template, KubeVirt's
//! way (pkg/virt-controller/watch/replicaset): finished VMIs (Succeeded/Failed) are deleted
//! and replaced, extra ones are deleted (those not yet running first, then the newest),
//! and `status.{replicas, readyReplicas, labelSelector}` is written through `/status`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use kubevirt_api::{VirtualMachineInstance, VirtualMachineInstanceReplicaSet};
use serde_json::json;

use crate::{phase, Context, Error};
use kubevirt_api::status::{condition, VmiPhase};

/// A label selector as the `labelSelector` query string (and `status.labelSelector`).
pub fn selector_string(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({values})", e.key),
        });
    }
    parts.join(",")
}

/// Which of `vmis` to delete to get down to `want`: not-yet-running first, then the newest.
pub fn pick_for_deletion(vmis: &[VirtualMachineInstance], want: usize) -> Vec<String> {
    let mut sorted: Vec<&VirtualMachineInstance> = vmis.iter().collect();
    sorted.sort_by_key(|v| {
        let running = phase::is(v, VmiPhase::Running);
        let created = v.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (running, std::cmp::Reverse(created), v.name_any())
    });
    let extra = vmis.len().saturating_sub(want);
    sorted
        .into_iter()
        .take(extra)
        .map(|v| v.name_any())
        .collect()
}

fn owned_by(vmi: &VirtualMachineInstance, rs: &VirtualMachineInstanceReplicaSet) -> bool {
    vmi.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == rs.metadata.uid.as_ref())
}

pub async fn reconcile(
    rs: Arc<VirtualMachineInstanceReplicaSet>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = crate::namespace_of(&rs.metadata)?;
    let name = rs.name_any();
    let rss: Api<VirtualMachineInstanceReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = selector_string(&rs.spec.selector);
    let listed = vmis.list(&ListParams::default().labels(&selector)).await?;
    let owned: Vec<VirtualMachineInstance> = listed
        .items
        .into_iter()
        .filter(|v| owned_by(v, &rs))
        .collect();
    let (live, finished): (Vec<_>, Vec<_>) = owned
        .into_iter()
        .filter(|v| v.metadata.deletion_timestamp.is_none())
        .partition(|v| !phase::is_final(v));
    let want = usize::try_from(rs.spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let paused = rs.spec.paused == Some(true) || rs.metadata.deletion_timestamp.is_some();

    let mut count = live.len();
    if !paused {
        for v in &finished {
            delete(&ctx, &rs, &vmis, &v.name_any()).await?;
        }
        if live.len() > want {
            for n in pick_for_deletion(&live, want) {
                delete(&ctx, &rs, &vmis, &n).await?;
                count -= 1;
            }
        }
        let mut owner = rs
            .controller_owner_ref(&())
            .ok_or(Error::MissingField("metadata.uid"))?;
        owner.block_owner_deletion = Some(true);
        let tmpl = rs.spec.template.metadata.clone().unwrap_or_default();
        for _ in live.len()..want {
            let vmi = VirtualMachineInstance {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{name}-")),
                    namespace: Some(ns.clone()),
                    labels: tmpl.labels.clone(),
                    annotations: tmpl.annotations.clone(),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                spec: rs.spec.template.spec.clone().unwrap_or_default(),
                status: None,
            };
            match vmis.create(&PostParams::default(), &vmi).await {
                Ok(c) => {
                    count += 1;
                    ctx.event(
                        rs.as_ref(),
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created virtual machine instance {}", c.name_any()),
                    )
                    .await;
                }
                Err(e) => {
                    ctx.event(
                        rs.as_ref(),
                        EventType::Warning,
                        "FailedCreate",
                        format!("Error creating VMI: {e}"),
                    )
                    .await;
                    return Err(e.into());
                }
            }
        }
    }

    let ready = live
        .iter()
        .filter(|v| phase::vmi_condition_true(v, condition::READY))
        .count();
    let status = json!({
        "replicas": count,
        "readyReplicas": ready,
        "labelSelector": selector,
    });
    let old = rs.status.as_ref().map(serde_json::to_value).transpose()?;
    let changed = old.as_ref().is_none_or(|o| {
        o.get("replicas") != status.get("replicas")
            || o.get("readyReplicas") != status.get("readyReplicas")
            || o.get("labelSelector") != status.get("labelSelector")
    });
    if changed {
        kubevirt_runtime::status::write_status(&rss, &name, &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn delete(
    ctx: &Context,
    rs: &VirtualMachineInstanceReplicaSet,
    vmis: &Api<VirtualMachineInstance>,
    name: &str,
) -> Result<(), Error> {
    match vmis.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            ctx.event(
                rs,
                EventType::Normal,
                "SuccessfulDelete",
                format!("Deleted virtual machine instance {name}"),
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn error_policy(
    rs: Arc<VirtualMachineInstanceReplicaSet>,
    err: &Error,
    _ctx: Arc<Context>,
) -> Action {
    tracing::debug!(rs = %rs.name_any(), error = %err, "reconcile failed");
    Action::requeue(err.retry_after())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_render_as_query_strings() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"a": "1", "b": "2"},
            "matchExpressions": [{"key": "c", "operator": "In", "values": ["x", "y"]},
                                 {"key": "d", "operator": "Exists"}]
        }))
        .expect("selector");
        assert_eq!(selector_string(&sel), "a=1,b=2,c in (x,y),d");
    }

    #[test]
    fn scale_down_prefers_pending_then_newest() {
        let mk = |name: &str, phase: &str, t: &str| -> VirtualMachineInstance {
            serde_json::from_value(json!({"metadata": {"name": name, "creationTimestamp": t},
                "spec": {"domain": {"devices": {}}}, "status": {"phase": phase}}))
            .expect("vmi")
        };
        let vmis = vec![
            mk("old-running", "Running", "2024-01-01T00:00:00Z"),
            mk("new-running", "Running", "2024-01-02T00:00:00Z"),
            mk("pending", "Scheduled", "2024-01-01T00:00:00Z"),
        ];
        assert_eq!(pick_for_deletion(&vmis, 1), vec!["pending", "new-running"]);
        assert!(pick_for_deletion(&vmis, 3).is_empty());
    }
}

//! KubeVirt's node controller (pkg/virt-controller/watch/node): every virt-handler writes its
//! Node's `kubevirt.io/heartbeat` annotation; a Node whose heartbeat is older than
//! [`crate::Config::node_heartbeat_timeout`] is labelled `kubevirt.io/schedulable=false`
//! (event `NodeUnresponsive`), so no new VMI goes there, and its `Ready` condition becomes
//! `Unknown` (what Kubernetes' node lifecycle controller does for a silent kubelet). The
//! handler's next heartbeat sets both back.
//!
//! KubeVirt also fails the VMIs of such a node whose launcher Pods kubelet reports gone. Here
//! launchers are processes that outlive their handler and are adopted by the next one, and
//! nothing but the handler can see them, so the VMIs of a silent node keep their phase.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use kubevirt_api::status::label::{HEARTBEAT, SCHEDULABLE};
use kubevirt_api::status::reason::NODE_UNRESPONSIVE;
use serde_json::json;

use crate::Context;

/// KubeVirt's `heartBeatTimeout`.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(300);

/// KubeVirt's `isNodeUnresponsive`: the Node's heartbeat is older than `timeout`. A Node
/// without the annotation (no handler ever ran there) or with one that does not parse is not
/// judged.
pub fn unresponsive(node: &Node, now: Timestamp, timeout: Duration) -> bool {
    let Some(beat) = node
        .annotations()
        .get(HEARTBEAT)
        .and_then(|b| b.parse::<Timestamp>().ok())
    else {
        return false;
    };
    let age = now.as_second().saturating_sub(beat.as_second());
    age > i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX)
}

/// How often the Nodes are looked at: KubeVirt's minute, or sooner for a short timeout.
fn recheck(timeout: Duration) -> Duration {
    (timeout / 5).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Marks unresponsive Nodes unschedulable, every [`recheck`] interval, until dropped.
pub async fn monitor(ctx: Arc<Context>) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let timeout = ctx.config.node_heartbeat_timeout;
    loop {
        tokio::time::sleep(recheck(timeout)).await;
        let list = match nodes.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::debug!(error = %e, "listing Nodes");
                continue;
            }
        };
        let now = Timestamp::now();
        for node in list.iter().filter(|n| {
            n.labels().get(SCHEDULABLE).map(String::as_str) == Some("true")
                && unresponsive(n, now, timeout)
        }) {
            if let Err(e) = mark_unresponsive(&nodes, node, &ctx).await {
                tracing::warn!(node = %node.name_any(), error = %e, "marking a Node unresponsive");
            }
        }
    }
}

async fn mark_unresponsive(
    nodes: &Api<Node>,
    node: &Node,
    ctx: &Context,
) -> Result<(), kube::Error> {
    let name = node.name_any();
    tracing::info!(node = %name, "virt-handler is not responsive, marking the node unschedulable");
    ctx.event(
        node,
        EventType::Normal,
        NODE_UNRESPONSIVE,
        "virt-handler is not responsive, marking node as unresponsive".into(),
    )
    .await;
    let mut conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for c in conditions.iter_mut().filter(|c| c.type_ == "Ready") {
        if c.status != "Unknown" {
            c.status = "Unknown".into();
            c.reason = Some("NodeStatusUnknown".into());
            c.message = Some("virt-handler stopped posting node status.".into());
            c.last_transition_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::now(),
            ));
        }
    }
    let status = json!({"status": {"conditions": conditions}});
    nodes
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    // The label last: once a Node reads unschedulable, its Ready condition already says why
    // (and a failed label write is retried, since the Node still reads schedulable).
    let labels = json!({"metadata": {"labels": {SCHEDULABLE: "false"}}});
    nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(&labels))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(beat: Option<&str>) -> Node {
        let mut n = json!({"metadata": {"name": "n"}});
        if let Some(b) = beat {
            n["metadata"]["annotations"] = json!({HEARTBEAT: b});
        }
        serde_json::from_value(n).expect("node")
    }

    #[test]
    fn a_node_is_unresponsive_once_its_heartbeat_is_older_than_the_timeout() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().expect("time");
        let five = Duration::from_secs(300);
        assert!(!unresponsive(
            &node(Some("2026-01-01T00:06:00Z")),
            now,
            five
        ));
        assert!(!unresponsive(
            &node(Some("2026-01-01T00:05:00Z")),
            now,
            five
        ));
        assert!(unresponsive(&node(Some("2026-01-01T00:04:59Z")), now, five));
        // Never heartbeated, or garbage: not judged (KubeVirt).
        assert!(!unresponsive(&node(None), now, five));
        assert!(!unresponsive(&node(Some("yesterday")), now, five));
        // A heartbeat from the future is not stale.
        assert!(!unresponsive(
            &node(Some("2027-01-01T00:00:00Z")),
            now,
            five
        ));
    }

    #[test]
    fn recheck_follows_short_timeouts() {
        assert_eq!(recheck(HEARTBEAT_TIMEOUT), Duration::from_secs(60));
        assert_eq!(recheck(Duration::from_secs(10)), Duration::from_secs(2));
        assert_eq!(recheck(Duration::from_millis(10)), Duration::from_secs(1));
    }
}

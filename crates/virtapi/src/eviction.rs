//! KubeVirt's pod-eviction admitter (`virt-launcher-eviction-interceptor.kubevirt.io`,
//! pkg/virt-api/webhooks/validating-webhook/admitters/pod-eviction-admitter.go): an eviction
//! of a VMI's launcher Pod (`kubectl drain`, the descheduler) becomes an evacuation of the VMI
//! when its eviction strategy asks for one. The VMI gets `status.evacuationNodeName` (the
//! evacuation controller then creates its migration) and the eviction is refused with 429,
//! which `kubectl drain` retries every 5 s until the Pod is gone. Any other Pod, and a VMI whose
//! strategy is None, is let through: the API server deletes the Pod.
//!
//! The decision is [`decide`], a pure function of the Pod, its VMI and the cluster's default
//! strategy; [`PodEvictionAdmitter`] reads the VMI and writes the mark.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use kubevirt_api::status::{label, vmi_is_migratable, EvictionStrategy};
use kubevirt_api::VirtualMachineInstance;
use kubevirt_runtime::cluster::ClusterConfigRx;
use kubevirt_runtime::subresource::{EvictionAdmitter, EvictionVerdict};
use serde_json::{json, Value};

/// The webhook's name in KubeVirt, as a denial names it.
pub const WEBHOOK: &str = "virt-launcher-eviction-interceptor.kubevirt.io";

/// The annotation the descheduler sets on its Eviction requests, and its value there.
const REQUESTED_BY: &str = "requested-by";
const DESCHEDULER: &str = "sigs.k8s.io/descheduler";

/// What an eviction of a launcher Pod does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let the eviction delete the Pod.
    Pass,
    /// Refuse it (429) with this message.
    Deny(String),
    /// Mark the VMI for evacuation from `node`, then refuse the eviction with
    /// [`evacuation_message`].
    Mark { node: String },
}

/// KubeVirt's message when an eviction started an evacuation (the descheduler expects this
/// form).
pub fn evacuation_message(namespace: &str, name: &str) -> String {
    format!("Eviction triggered evacuation of VMI \"{namespace}/{name}\"")
}

/// The VMI a Pod is the launcher of: a `kubevirt.io=virt-launcher` Pod that is not completed,
/// names its VMI in `kubevirt.io/domain`, and is controlled by a VirtualMachineInstance of that
/// name. KubeVirt reads only the label and the annotation; the controller reference is also
/// required here, so that a Pod merely dressed as a launcher (anyone who may create Pods can
/// set labels) is evicted as the ordinary Pod it is and cannot mark someone's VMI.
pub fn launcher_vmi(pod: &Pod) -> Option<&str> {
    let meta = &pod.metadata;
    let is_launcher = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(label::APP))
        .is_some_and(|v| v == label::VIRT_LAUNCHER);
    let completed = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    if !is_launcher || completed {
        return None;
    }
    let vmi = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(label::DOMAIN))?;
    let owned = meta.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true)
            && o.kind == "VirtualMachineInstance"
            && o.api_version.starts_with("kubevirt.io/")
            && o.name == *vmi
    });
    owned.then_some(vmi.as_str())
}

/// KubeVirt's admitter, for a launcher Pod of `vmi` (see [`launcher_vmi`]); `cluster` is
/// the cluster's `evictionStrategy`.
pub fn decide(
    pod: &Pod,
    vmi: &VirtualMachineInstance,
    cluster: Option<EvictionStrategy>,
) -> Decision {
    // A Pod of an earlier VMI of the same name: its owner is gone, and so will it be.
    let owner_uid = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str());
    if owner_uid != vmi.metadata.uid.as_deref() {
        return Decision::Pass;
    }
    let name = vmi.metadata.name.as_deref().unwrap_or_default();
    let namespace = vmi.metadata.namespace.as_deref().unwrap_or_default();
    let mark = match EvictionStrategy::of_vmi(vmi, cluster) {
        None | Some(EvictionStrategy::None) => false,
        Some(EvictionStrategy::LiveMigrate) => {
            if !vmi_is_migratable(vmi) {
                return Decision::Deny(format!(
                    "VMI {name} is configured with an eviction strategy but is not live-migratable"
                ));
            }
            true
        }
        Some(EvictionStrategy::LiveMigrateIfPossible) => vmi_is_migratable(vmi),
        Some(EvictionStrategy::External) => true,
    };
    if !mark {
        return Decision::Pass;
    }
    let status = vmi.status.as_ref();
    if status
        .and_then(|s| s.evacuation_node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
    {
        return Decision::Deny(format!(
            "Evacuation in progress: {}",
            evacuation_message(namespace, name)
        ));
    }
    let vmi_node = status.and_then(|s| s.node_name.as_deref()).unwrap_or("");
    let pod_node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("");
    if vmi_node != pod_node {
        return Decision::Deny("Eviction request for target Pod".into());
    }
    Decision::Mark {
        node: pod_node.to_string(),
    }
}

/// virt-api's eviction webhook, plugged into the embedded API server.
pub struct PodEvictionAdmitter {
    client: Client,
    cluster: ClusterConfigRx,
}

impl PodEvictionAdmitter {
    pub fn new(client: Client, cluster: ClusterConfigRx) -> Self {
        PodEvictionAdmitter { client, cluster }
    }

    /// KubeVirt's `markVMI`: `status.evacuationNodeName`, and the descheduler's annotation
    /// when it asked. A dry run writes nothing.
    async fn mark(
        &self,
        vmi: &VirtualMachineInstance,
        node: &str,
        descheduler: bool,
        dry_run: bool,
    ) -> Result<(), kube::Error> {
        if dry_run {
            return Ok(());
        }
        let ns = vmi.metadata.namespace.as_deref().unwrap_or_default();
        let name = vmi.metadata.name.as_deref().unwrap_or_default();
        let api: Api<VirtualMachineInstance> = Api::namespaced(self.client.clone(), ns);
        if descheduler {
            let patch =
                json!({"metadata": {"annotations": {label::EVICTION_SOURCE: "descheduler"}}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        kubevirt_runtime::status::write_status_no_subresource(
            &api,
            name,
            json!({"evacuationNodeName": node}),
        )
        .await?;
        Ok(())
    }
}

fn deny(message: String) -> EvictionVerdict {
    EvictionVerdict::Deny {
        webhook: WEBHOOK,
        code: 429,
        message,
    }
}

#[async_trait::async_trait]
impl EvictionAdmitter for PodEvictionAdmitter {
    async fn admit(&self, pod: &Value, eviction: &Value, dry_run: bool) -> EvictionVerdict {
        let Ok(pod) = serde_json::from_value::<Pod>(pod.clone()) else {
            return EvictionVerdict::Allow;
        };
        let Some(vmi_name) = launcher_vmi(&pod) else {
            return EvictionVerdict::Allow;
        };
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<VirtualMachineInstance> = Api::namespaced(self.client.clone(), ns);
        let vmi = match api.get(vmi_name).await {
            Ok(v) => v,
            Err(e) => return deny(format!("kubevirt failed getting the vmi: {e}")),
        };
        let cluster = self.cluster.borrow().eviction_strategy;
        match decide(&pod, &vmi, cluster) {
            Decision::Pass => EvictionVerdict::Allow,
            Decision::Deny(m) => deny(m),
            Decision::Mark { node } => {
                let descheduler = eviction["metadata"]["annotations"][REQUESTED_BY] == DESCHEDULER;
                if let Err(e) = self.mark(&vmi, &node, descheduler, dry_run).await {
                    return deny(format!("kubevirt failed marking the vmi for eviction: {e}"));
                }
                tracing::info!(namespace = %ns, vmi = %vmi_name, %node, "eviction triggered evacuation");
                deny(evacuation_message(ns, vmi_name))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn launcher(node: &str, owner_uid: &str) -> Pod {
        pod(json!({
            "metadata": {"name": "virt-launcher-vm-abcde", "namespace": "ns",
                "labels": {"kubevirt.io": "virt-launcher"},
                "annotations": {"kubevirt.io/domain": "vm"},
                "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                    "name": "vm", "uid": owner_uid, "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running"}
        }))
    }

    fn vmi(strategy: Option<&str>, node: &str, migratable: bool) -> VirtualMachineInstance {
        let mut v = json!({
            "metadata": {"name": "vm", "namespace": "ns", "uid": "u1"},
            "spec": {"domain": {"devices": {}}},
            "status": {"nodeName": node, "phase": "Running",
                "conditions": [{"type": "LiveMigratable", "status": if migratable {"True"} else {"False"}}]}
        });
        if let Some(s) = strategy {
            v["spec"]["evictionStrategy"] = json!(s);
        }
        serde_json::from_value(v).expect("vmi")
    }

    fn mark(node: &str) -> Decision {
        Decision::Mark { node: node.into() }
    }

    #[test]
    fn each_strategy_decides_as_kubevirt() {
        let p = launcher("node01", "u1");
        assert_eq!(
            decide(&p, &vmi(Some("None"), "node01", true), None),
            Decision::Pass
        );
        assert_eq!(decide(&p, &vmi(None, "node01", true), None), Decision::Pass);
        assert_eq!(
            decide(&p, &vmi(Some("LiveMigrate"), "node01", true), None),
            mark("node01")
        );
        assert_eq!(
            decide(&p, &vmi(Some("LiveMigrate"), "node01", false), None),
            Decision::Deny(
                "VMI vm is configured with an eviction strategy but is not live-migratable".into()
            )
        );
        assert_eq!(
            decide(
                &p,
                &vmi(Some("LiveMigrateIfPossible"), "node01", true),
                None
            ),
            mark("node01")
        );
        assert_eq!(
            decide(
                &p,
                &vmi(Some("LiveMigrateIfPossible"), "node01", false),
                None
            ),
            Decision::Pass
        );
        // External marks whether or not the VMI could migrate.
        assert_eq!(
            decide(&p, &vmi(Some("External"), "node01", false), None),
            mark("node01")
        );
    }

    #[test]
    fn the_cluster_default_applies_unless_the_vmi_sets_one() {
        let p = launcher("node01", "u1");
        let live = Some(EvictionStrategy::LiveMigrate);
        assert_eq!(decide(&p, &vmi(None, "node01", true), live), mark("node01"));
        assert_eq!(
            decide(&p, &vmi(Some("None"), "node01", true), live),
            Decision::Pass
        );
        assert_eq!(
            decide(
                &p,
                &vmi(Some("External"), "node01", true),
                Some(EvictionStrategy::None)
            ),
            mark("node01")
        );
    }

    #[test]
    fn a_marked_vmi_and_a_target_pod_are_refused() {
        let p = launcher("node01", "u1");
        let mut v = vmi(Some("LiveMigrate"), "node01", true);
        if let Some(s) = v.status.as_mut() {
            s.evacuation_node_name = Some("node01".into());
        }
        assert_eq!(
            decide(&p, &v, None),
            Decision::Deny(
                "Evacuation in progress: Eviction triggered evacuation of VMI \"ns/vm\"".into()
            )
        );
        // The Pod on another node than the VMI's is a migration target.
        let target = launcher("node02", "u1");
        assert_eq!(
            decide(&target, &vmi(Some("LiveMigrate"), "node01", true), None),
            Decision::Deny("Eviction request for target Pod".into())
        );
    }

    #[test]
    fn pods_that_only_look_like_launchers_are_ordinary_pods() {
        assert_eq!(launcher_vmi(&launcher("node01", "u1")), Some("vm"));
        // Named and labelled like a launcher, owned by nothing.
        let mut p = launcher("node01", "u1");
        p.metadata.owner_references = None;
        assert_eq!(launcher_vmi(&p), None);
        // Owned by something else than the VMI it names.
        let mut p = launcher("node01", "u1");
        if let Some(o) = p.metadata.owner_references.as_mut() {
            o[0].name = "other".into();
        }
        assert_eq!(launcher_vmi(&p), None);
        let mut p = launcher("node01", "u1");
        if let Some(o) = p.metadata.owner_references.as_mut() {
            o[0].kind = "ReplicaSet".into();
        }
        assert_eq!(launcher_vmi(&p), None);
        // Completed launchers are let go, as KubeVirt does.
        let mut p = launcher("node01", "u1");
        if let Some(s) = p.status.as_mut() {
            s.phase = Some("Succeeded".into());
        }
        assert_eq!(launcher_vmi(&p), None);
        // A launcher of an earlier VMI of the same name does not speak for the new one.
        assert_eq!(
            decide(
                &launcher("node01", "old"),
                &vmi(Some("LiveMigrate"), "node01", true),
                None
            ),
            Decision::Pass
        );
    }
}

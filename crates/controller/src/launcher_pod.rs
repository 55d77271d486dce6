//! Launcher Pod records: for each VMI, the Pod KubeVirt would run its virt-launcher in,
//! `virt-launcher-<vmi>-<5 random>` in the VMI's namespace, bound to the node the VMI runs on.
//! Nothing runs in them (the handler spawns the launcher itself); they are there for what
//! Kubernetes tools expect of a node that runs VMs: `kubectl get pods -o wide` shows where each
//! VMI is, and `kubectl drain NODE` finds the VMIs of a node as Pods to evict (see
//! [`kubevirt_virtapi`'s eviction admitter] and [`crate::evacuation`]).
//!
//! Level-based from the VMI's status, as [`plan`] decides:
//! - a Pod for `status.nodeName` while the VMI is not final (and not being deleted), and one
//!   for `status.migrationState.targetNode` while that migration is neither completed nor
//!   failed; a Pod of this VMI on any other node is deleted;
//! - each Pod's `status.phase` mirrors the VMI (Pending until Running, then Succeeded or
//!   Failed; a migration target is Running once the migration started);
//! - `status.activePods` (Pod uid → node) records the Pods, as KubeVirt's VMI does;
//! - a recorded Pod on the VMI's own node that is gone was deleted by someone else (this
//!   controller never deletes that one): as when KubeVirt's launcher Pod goes, the VMI stops.
//!   It is deleted; its VM, if any, starts a new one per its runStrategy, and the scheduler
//!   keeps it off a cordoned node.
//!
//! Only Pods controlled by the VMI (controller ownerReference with its uid) and labelled
//! `kubevirt.io=virt-launcher` count: a Pod that merely carries the labels is not this
//! controller's to delete or to count.
//!
//! [`kubevirt_virtapi`'s eviction admitter]: ../../kubevirt_virtapi/eviction/index.html

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use kubevirt_api::status::{label, VmiPhase};
use kubevirt_api::VirtualMachineInstance;
use serde_json::json;

use crate::vmi::{launcher_pod, LauncherPodConfig};
use crate::{phase, Context, Error};

/// The image named in launcher Pod records (nothing pulls it: the handler runs the launcher).
pub const LAUNCHER_IMAGE: &str = "kubevirt-rs/virt-launcher";

/// KubeVirt's `MigrationJobLabel`: on a migration target's Pod, the migration's uid.
const MIGRATION_JOB_LABEL: &str = "kubevirt.io/migrationJobUID";

/// Why a VMI should have a Pod on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The node the VMI runs on (`status.nodeName`).
    Source,
    /// The node an unfinished migration moves it to.
    Target,
}

/// What one reconcile does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The VMI's launcher Pod was deleted by someone else: stop the VMI (and nothing else).
    pub stop_vmi: Option<String>,
    /// Nodes to create a Pod on.
    pub create: Vec<(String, Role)>,
    /// Pods (by name) to delete: on a node the VMI no longer runs on.
    pub delete: Vec<String>,
    /// Pods (by name) whose status (phase, address, Ready) should become this.
    pub phases: Vec<(String, PodState)>,
    /// `status.activePods` as it should be (uid → node), when it differs from the VMI's.
    pub active_pods: Option<BTreeMap<String, String>>,
}

/// The nodes the VMI should have a Pod on now, with why.
pub fn wanted(vmi: &VirtualMachineInstance) -> Vec<(String, Role)> {
    let Some(status) = vmi.status.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(n) = status.node_name.as_deref().filter(|n| !n.is_empty()) {
        out.push((n.to_string(), Role::Source));
    }
    if let Some(m) = status.migration_state.as_ref() {
        let finished = m.completed == Some(true) || m.failed == Some(true);
        if let Some(t) = m.target_node.as_deref().filter(|t| !t.is_empty()) {
            if !finished && !out.iter().any(|(n, _)| n == t) {
                out.push((t.to_string(), Role::Target));
            }
        }
    }
    out
}

/// Whether `pod` is one of `vmi`'s launcher Pods: controlled by it (its uid) and labelled as
/// a launcher.
pub fn is_launcher_of(pod: &Pod, vmi: &VirtualMachineInstance) -> bool {
    let Some(uid) = vmi.metadata.uid.as_deref() else {
        return false;
    };
    let controlled =
        pod.metadata.owner_references.iter().flatten().any(|o| {
            o.controller == Some(true) && o.kind == "VirtualMachineInstance" && o.uid == uid
        });
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(label::APP))
        .is_some_and(|v| v == label::VIRT_LAUNCHER);
    controlled && labelled
}

fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

/// What a launcher Pod's status shows: its phase, its address and whether it is Ready, as
/// kubelet reports them for KubeVirt's virt-launcher Pod. Endpoints of Services that select
/// the VMI's labels are built from these (kube's endpoints controller reads Pods only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodState {
    pub phase: &'static str,
    /// `status.podIPs`, the first being `status.podIP`: the addresses of the VMI's
    /// pod-network interface (KubeVirt's masquerade/bridge binding gives the guest the
    /// Pod's address).
    pub ips: Vec<String>,
    /// The `Ready` condition: the VMI runs and is Ready.
    pub ready: bool,
}

impl PodState {
    pub fn of_pod(pod: &Pod) -> PodState {
        let st = pod.status.as_ref();
        let phase = match st.and_then(|s| s.phase.as_deref()) {
            Some("Running") => "Running",
            Some("Succeeded") => "Succeeded",
            Some("Failed") => "Failed",
            Some("Unknown") => "Unknown",
            Some("Pending") => "Pending",
            _ => "",
        };
        let mut ips: Vec<String> = st
            .and_then(|s| s.pod_ips.as_ref())
            .map(|v| v.iter().map(|i| i.ip.clone()).collect())
            .unwrap_or_default();
        if ips.is_empty() {
            ips.extend(st.and_then(|s| s.pod_ip.clone()));
        }
        let ready = st
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        PodState { phase, ips, ready }
    }

    /// The merge patch of `status` that makes a Pod show this.
    pub fn status_patch(&self) -> serde_json::Value {
        let ip = self
            .ips
            .first()
            .map_or(serde_json::Value::Null, |i| json!(i));
        let ips = if self.ips.is_empty() {
            serde_json::Value::Null
        } else {
            json!(self
                .ips
                .iter()
                .map(|i| json!({"ip": i}))
                .collect::<Vec<_>>())
        };
        json!({
            "phase": self.phase,
            "podIP": ip,
            "podIPs": ips,
            "conditions": [{"type": "Ready", "status": if self.ready { "True" } else { "False" }}],
        })
    }
}

/// The addresses of the VMI's pod-network interface, as `status.interfaces` reports them:
/// the interface named like the network with `pod: {}` (KubeVirt's default network is
/// named `default`). Only valid IP addresses are kept.
pub fn pod_network_ips(vmi: &VirtualMachineInstance) -> Vec<String> {
    let pod_net = match vmi.spec.networks.as_deref() {
        Some(nets) => nets
            .iter()
            .find(|n| n.pod.is_some())
            .map(|n| n.name.clone()),
        None => Some("default".to_string()),
    };
    let Some(pod_net) = pod_net else {
        return Vec::new();
    };
    let iface = vmi
        .status
        .as_ref()
        .and_then(|s| s.interfaces.as_ref())
        .and_then(|ifs| ifs.iter().find(|i| i.name.as_deref() == Some(&pod_net)));
    let Some(iface) = iface else {
        return Vec::new();
    };
    let mut ips: Vec<String> = iface.ip_addresses.clone().unwrap_or_default();
    if let Some(ip) = iface.ip_address.as_ref() {
        if !ips.contains(ip) {
            ips.insert(0, ip.clone());
        }
    }
    ips.retain(|i| i.parse::<std::net::IpAddr>().is_ok());
    ips
}

/// The status a Pod of `role` shows for `vmi`: only the Pod the VMI runs in has its address
/// and may be Ready (a migration target's Pod is not serving yet).
pub fn pod_state(vmi: &VirtualMachineInstance, role: Role) -> PodState {
    let phase = pod_phase(vmi, role);
    let serving = role == Role::Source && phase == "Running";
    PodState {
        phase,
        ips: if serving {
            pod_network_ips(vmi)
        } else {
            Vec::new()
        },
        ready: serving && phase::vmi_condition_true(vmi, kubevirt_api::status::condition::READY),
    }
}

/// The phase a Pod of `role` shows for `vmi`.
pub fn pod_phase(vmi: &VirtualMachineInstance, role: Role) -> &'static str {
    match role {
        Role::Target => {
            let started = vmi
                .status
                .as_ref()
                .and_then(|s| s.migration_state.as_ref())
                .is_some_and(|m| m.start_timestamp.is_some());
            if started {
                "Running"
            } else {
                "Pending"
            }
        }
        Role::Source => match phase::of(vmi) {
            Some(VmiPhase::Running) => "Running",
            Some(VmiPhase::Succeeded) => "Succeeded",
            Some(VmiPhase::Failed) => "Failed",
            Some(VmiPhase::Unknown) => "Unknown",
            _ => "Pending",
        },
    }
}

/// What to do for `vmi`, given the Pods in its namespace that carry its uid label (hostile
/// look-alikes included: they are filtered here).
pub fn plan(vmi: &VirtualMachineInstance, pods: &[Pod]) -> Plan {
    let mut p = Plan::default();
    let ours: Vec<&Pod> = pods
        .iter()
        .filter(|pod| is_launcher_of(pod, vmi) && pod.metadata.deletion_timestamp.is_none())
        .collect();
    let status = vmi.status.as_ref();
    let recorded = status
        .and_then(|s| s.active_pods.clone())
        .unwrap_or_default();
    let deleted = vmi.metadata.deletion_timestamp.is_some();
    let live = !deleted && !phase::is_final(vmi);
    let wanted = wanted(vmi);
    let source = status.and_then(|s| s.node_name.as_deref()).unwrap_or("");

    // A recorded Pod of the VMI's own node that is gone, with no other Pod there: someone
    // deleted it (this controller deletes only Pods of other nodes).
    if live && !source.is_empty() {
        let has_source_pod = ours.iter().any(|pod| node_of(pod) == source);
        let lost = recorded.iter().find(|(uid, node)| {
            node.as_str() == source
                && !ours
                    .iter()
                    .any(|pod| pod.metadata.uid.as_deref() == Some(uid.as_str()))
        });
        if let (Some((uid, _)), false) = (lost, has_source_pod) {
            p.stop_vmi = Some(uid.clone());
            return p;
        }
    }

    let mut active = BTreeMap::new();
    let mut covered = BTreeSet::new();
    for pod in &ours {
        let node = node_of(pod);
        let name = pod.metadata.name.clone().unwrap_or_default();
        match wanted.iter().find(|(n, _)| n == node) {
            Some((_, role)) if !covered.contains(node) => {
                covered.insert(node.to_string());
                if let Some(uid) = pod.metadata.uid.clone() {
                    active.insert(uid, node.to_string());
                }
                let want = pod_state(vmi, *role);
                if PodState::of_pod(pod) != want {
                    p.phases.push((name, want));
                }
            }
            // A second Pod on a wanted node, or one on a node the VMI left.
            _ => p.delete.push(name),
        }
    }
    if live {
        for (node, role) in &wanted {
            if !covered.contains(node) {
                p.create.push((node.clone(), *role));
            }
        }
    }
    if active != recorded {
        p.active_pods = Some(active);
    }
    p
}

/// The Pod record for `vmi` on `node`: [`launcher_pod`] (KubeVirt's labels, annotation and
/// controller reference), bound to the node.
pub fn render(vmi: &VirtualMachineInstance, node: &str, role: Role) -> Pod {
    let mut pod = launcher_pod(
        vmi,
        &LauncherPodConfig {
            image: LAUNCHER_IMAGE.into(),
        },
    );
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.to_string());
    }
    let migration = vmi
        .status
        .as_ref()
        .and_then(|s| s.migration_state.as_ref())
        .and_then(|m| m.migration_uid.clone());
    if let (Role::Target, Some(uid)) = (role, migration) {
        pod.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(MIGRATION_JOB_LABEL.into(), uid);
    }
    pod
}

/// Keeps one VMI's launcher Pods.
pub async fn reconcile(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = crate::namespace_of(&vmi.metadata)?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    // The VMI as it is now, not as the watch last saw it: a stale status (a node it left)
    // would otherwise look like a deleted Pod.
    let Some(vmi) = vmis.get_opt(&vmi.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let uid = crate::uid_of(&vmi.metadata)?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = pods_api
        .list(&ListParams::default().labels(&format!("{}={uid}", label::CREATED_BY)))
        .await?
        .items;
    let p = plan(&vmi, &pods);
    let name = vmi.name_any();

    if let Some(lost) = p.stop_vmi {
        tracing::info!(%ns, vmi = %name, pod_uid = %lost, "launcher pod deleted: stopping the VMI");
        ctx.event(
            &vmi,
            EventType::Warning,
            "LauncherPodDeleted",
            format!("The virt-launcher pod of this VMI (uid {lost}) was deleted; stopping the VMI"),
        )
        .await;
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: vmi.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match vmis.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }

    for pod in &p.delete {
        match pods_api.delete(pod, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(%ns, vmi = %name, %pod, "deleted launcher pod"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut active = p.active_pods;
    for (node, role) in &p.create {
        let created = pods_api
            .create(&PostParams::default(), &render(&vmi, node, *role))
            .await?;
        let pod = created.name_any();
        kubevirt_runtime::status::write_status(
            &pods_api,
            &pod,
            pod_state(&vmi, *role).status_patch(),
        )
        .await?;
        tracing::info!(%ns, vmi = %name, %pod, %node, "created launcher pod");
        if let Some(uid) = created.metadata.uid {
            let mut a = active.take().unwrap_or_else(|| {
                vmi.status
                    .as_ref()
                    .and_then(|s| s.active_pods.clone())
                    .unwrap_or_default()
            });
            a.insert(uid, node.clone());
            active = Some(a);
        }
    }
    for (pod, state) in &p.phases {
        match kubevirt_runtime::status::write_status(&pods_api, pod, state.status_patch()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(active) = active {
        // A merge patch: keys of Pods that are gone are set to null, so they go.
        let mut map = serde_json::Map::new();
        let recorded = vmi
            .status
            .as_ref()
            .and_then(|s| s.active_pods.clone())
            .unwrap_or_default();
        for uid in recorded.keys().filter(|u| !active.contains_key(*u)) {
            map.insert(uid.clone(), serde_json::Value::Null);
        }
        for (uid, node) in active {
            map.insert(uid, json!(node));
        }
        kubevirt_runtime::status::write_status_no_subresource(
            &vmis,
            &name,
            json!({"activePods": map}),
        )
        .await?;
    }
    Ok(Action::await_change())
}

pub fn error_policy(vmi: Arc<VirtualMachineInstance>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::debug!(vmi = %vmi.name_any(), error = %err, "launcher pod reconcile failed");
    Action::requeue(err.retry_after())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(status: serde_json::Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm", "namespace": "ns", "uid": "u1"},
            "spec": {"domain": {"devices": {}}},
            "status": status,
        }))
        .expect("vmi")
    }

    fn phases(p: &Plan) -> Vec<(String, &'static str)> {
        p.phases.iter().map(|(n, s)| (n.clone(), s.phase)).collect()
    }

    fn pod(name: &str, uid: &str, node: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": uid,
                "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": "u1"},
                "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                    "name": "vm", "uid": "u1", "controller": true}]},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase}
        }))
        .expect("pod")
    }

    #[test]
    fn a_running_vmi_gets_one_pod_on_its_node_and_records_it() {
        let v = vmi(json!({"phase": "Running", "nodeName": "node01"}));
        let p = plan(&v, &[]);
        assert_eq!(p.create, vec![("node01".to_string(), Role::Source)]);
        assert!(p.delete.is_empty() && p.stop_vmi.is_none());
        // Once it exists: recorded, its phase mirrored.
        let p = plan(
            &v,
            &[pod("virt-launcher-vm-abcde", "p1", "node01", "Pending")],
        );
        assert!(p.create.is_empty());
        assert_eq!(
            phases(&p),
            vec![("virt-launcher-vm-abcde".to_string(), "Running")]
        );
        assert_eq!(
            p.active_pods,
            Some(BTreeMap::from([("p1".to_string(), "node01".to_string())]))
        );
        // Nothing to do when everything is as it should be.
        let v =
            vmi(json!({"phase": "Running", "nodeName": "node01", "activePods": {"p1": "node01"}}));
        assert_eq!(
            plan(&v, &[pod("a", "p1", "node01", "Running")]),
            Plan::default()
        );
    }

    #[test]
    fn unplaced_final_and_deleted_vmis_get_no_new_pod() {
        assert!(plan(&vmi(json!({"phase": "Scheduling"})), &[])
            .create
            .is_empty());
        assert!(
            plan(&vmi(json!({"phase": "Succeeded", "nodeName": "n"})), &[])
                .create
                .is_empty()
        );
        let mut v = vmi(json!({"phase": "Running", "nodeName": "n"}));
        v.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        assert!(plan(&v, &[]).create.is_empty());
        // A final VMI's Pod stays, completed as the VMI.
        let v = vmi(json!({"phase": "Failed", "nodeName": "n", "activePods": {"p1": "n"}}));
        let p = plan(&v, &[pod("a", "p1", "n", "Running")]);
        assert_eq!(phases(&p), vec![("a".to_string(), "Failed")]);
        assert!(p.delete.is_empty() && p.stop_vmi.is_none());
    }

    #[test]
    fn a_migration_adds_the_target_and_the_source_goes_after() {
        let migrating = vmi(json!({"phase": "Running", "nodeName": "node01",
            "activePods": {"p1": "node01"},
            "migrationState": {"targetNode": "node02", "migrationUid": "m1"}}));
        let p = plan(&migrating, &[pod("a", "p1", "node01", "Running")]);
        assert_eq!(p.create, vec![("node02".to_string(), Role::Target)]);
        assert_eq!(pod_phase(&migrating, Role::Target), "Pending");
        let target = render(&migrating, "node02", Role::Target);
        assert_eq!(
            target.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("node02")
        );
        assert_eq!(
            target
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MIGRATION_JOB_LABEL))
                .map(String::as_str),
            Some("m1")
        );
        // Completed: the VMI runs on node02; node01's Pod is deleted, not mistaken for a
        // Pod someone took away.
        let done = vmi(json!({"phase": "Running", "nodeName": "node02",
            "activePods": {"p1": "node01", "p2": "node02"},
            "migrationState": {"targetNode": "node02", "completed": true}}));
        let p = plan(
            &done,
            &[
                pod("a", "p1", "node01", "Running"),
                pod("b", "p2", "node02", "Running"),
            ],
        );
        assert_eq!(p.delete, vec!["a".to_string()]);
        assert_eq!(p.stop_vmi, None);
        assert_eq!(
            p.active_pods,
            Some(BTreeMap::from([("p2".to_string(), "node02".to_string())]))
        );
        // Failed: the target's Pod goes.
        let failed = vmi(json!({"phase": "Running", "nodeName": "node01",
            "migrationState": {"targetNode": "node02", "failed": true}}));
        let p = plan(
            &failed,
            &[
                pod("a", "p1", "node01", "Running"),
                pod("b", "p2", "node02", "Running"),
            ],
        );
        assert_eq!(p.delete, vec!["b".to_string()]);
    }

    #[test]
    fn a_recorded_pod_deleted_by_someone_else_stops_the_vmi() {
        let v =
            vmi(json!({"phase": "Running", "nodeName": "node01", "activePods": {"p1": "node01"}}));
        let p = plan(&v, &[]);
        assert_eq!(p.stop_vmi, Some("p1".to_string()));
        assert!(p.create.is_empty(), "the Pod must not come back: {p:?}");
        // A final VMI is not stopped again.
        let v = vmi(
            json!({"phase": "Succeeded", "nodeName": "node01", "activePods": {"p1": "node01"}}),
        );
        assert_eq!(plan(&v, &[]).stop_vmi, None);
        // A recorded Pod of a node the VMI left is only forgotten.
        let v = vmi(json!({"phase": "Running", "nodeName": "node02",
            "activePods": {"p1": "node01", "p2": "node02"}}));
        let p = plan(&v, &[pod("b", "p2", "node02", "Running")]);
        assert_eq!(p.stop_vmi, None);
        assert_eq!(
            p.active_pods,
            Some(BTreeMap::from([("p2".to_string(), "node02".to_string())]))
        );
    }

    #[test]
    fn pods_that_only_look_like_launchers_are_not_ours() {
        let v = vmi(json!({"phase": "Running", "nodeName": "node01"}));
        // Named and labelled like a launcher Pod, owned by nothing: neither counted nor
        // deleted; the VMI still gets its own.
        let mut fake = pod("virt-launcher-vm-zzzzz", "x1", "node01", "Running");
        fake.metadata.owner_references = None;
        let p = plan(&v, std::slice::from_ref(&fake));
        assert_eq!(p.create, vec![("node01".to_string(), Role::Source)]);
        assert!(p.delete.is_empty());
        assert_eq!(p.active_pods, None);
        // Owned by the VMI but not labelled a launcher: not ours either.
        let mut unlabelled = pod("other", "x2", "node05", "Running");
        unlabelled.metadata.labels = None;
        assert!(plan(&v, &[unlabelled]).delete.is_empty());
        // A controller reference with another uid (an earlier VMI of the same name).
        let mut old = pod("virt-launcher-vm-old", "x3", "node07", "Running");
        if let Some(o) = old.metadata.owner_references.as_mut() {
            o[0].uid = "u0".into();
        }
        assert!(plan(&v, &[old]).delete.is_empty());
        // Two Pods of ours on the VMI's node: one is kept, the other deleted.
        let p = plan(
            &v,
            &[
                pod("a", "p1", "node01", "Running"),
                pod("b", "p2", "node01", "Running"),
            ],
        );
        assert_eq!(p.delete, vec!["b".to_string()]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn the_pod_is_kubevirts_launcher_pod_bound_to_the_node() {
        let v = vmi(json!({"phase": "Running", "nodeName": "node01"}));
        let pod = render(&v, "node01", Role::Source);
        assert_eq!(
            pod.metadata.generate_name.as_deref(),
            Some("virt-launcher-vm-")
        );
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(label::APP).map(String::as_str),
            Some("virt-launcher")
        );
        assert_eq!(
            labels.get(label::CREATED_BY).map(String::as_str),
            Some("u1")
        );
        assert_eq!(labels.get(label::VM_NAME).map(String::as_str), Some("vm"));
        assert!(is_launcher_of(&pod, &v));
        let owner = &pod.metadata.owner_references.clone().unwrap_or_default()[0];
        assert_eq!(owner.block_owner_deletion, Some(true));
        assert_eq!(
            pod.spec.and_then(|s| s.node_name).as_deref(),
            Some("node01")
        );
    }

    #[test]
    fn the_running_pod_has_the_pod_network_address_and_follows_ready() {
        let v = vmi(json!({"phase": "Running", "nodeName": "node01",
            "interfaces": [{"name": "default", "ipAddress": "10.244.0.7",
                            "ipAddresses": ["10.244.0.7", "fd10:244::7"]},
                           {"name": "blue", "ipAddress": "192.168.1.5"}],
            "conditions": [{"type": "Ready", "status": "True"}]}));
        let want = pod_state(&v, Role::Source);
        assert_eq!(want.ips, vec!["10.244.0.7", "fd10:244::7"]);
        assert!(want.ready);
        let patch = want.status_patch();
        assert_eq!(patch["podIP"], "10.244.0.7");
        assert_eq!(patch["podIPs"][1]["ip"], "fd10:244::7");
        // The plan writes it to a Pod that lacks it, and leaves one that has it.
        let p = plan(&v, &[pod("a", "p1", "node01", "Running")]);
        assert_eq!(p.phases, vec![("a".to_string(), want.clone())]);
        let mut done = pod("a", "p1", "node01", "Running");
        done.status = serde_json::from_value(patch).ok();
        assert!(plan(&v, &[done]).phases.is_empty());
        // A migration target's Pod has no address and is not Ready.
        assert_eq!(
            pod_state(&v, Role::Target),
            PodState {
                phase: "Pending",
                ips: vec![],
                ready: false
            }
        );
        // Not Ready: the condition says False; a stopped VMI keeps no address.
        let mut nr = v.clone();
        if let Some(c) = nr.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c[0].status = "False".into();
        }
        assert!(!pod_state(&nr, Role::Source).ready);
        let stopped = vmi(json!({"phase": "Succeeded", "nodeName": "node01",
            "interfaces": [{"name": "default", "ipAddress": "10.244.0.7"}]}));
        assert!(pod_state(&stopped, Role::Source).ips.is_empty());
        // A garbage address reported by the guest is not published.
        let bad = vmi(json!({"phase": "Running", "nodeName": "node01",
            "interfaces": [{"name": "default", "ipAddress": "10.0.0.1; rm -rf /"}]}));
        assert!(pod_state(&bad, Role::Source).ips.is_empty());
        // The pod network is the one with `pod: {}`, whatever its name.
        let named: VirtualMachineInstance = serde_json::from_value(json!({
            "metadata": {"name": "vm", "namespace": "ns", "uid": "u1"},
            "spec": {"domain": {"devices": {}},
                     "networks": [{"name": "blue", "multus": {"networkName": "x"}},
                                  {"name": "podnet", "pod": {}}]},
            "status": {"phase": "Running", "nodeName": "n",
                "interfaces": [{"name": "blue", "ipAddress": "192.168.1.5"},
                               {"name": "podnet", "ipAddress": "10.244.0.9"}]}
        }))
        .expect("vmi");
        assert_eq!(pod_network_ips(&named), vec!["10.244.0.9"]);
    }
}

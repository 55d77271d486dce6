//! Which Node a VMI goes to: a small scheduler with kube-scheduler's filters and messages.
//!
//! In KubeVirt, virt-controller creates a launcher Pod whose `nodeSelector` is the VMI's plus
//! `kubevirt.io/schedulable: "true"`, and kube-scheduler places that Pod. There is no Pod and
//! no kube-scheduler here, so virt-controller places the VMI itself, with the filters
//! kube-scheduler would apply to that Pod, in its order (the first that refuses a node gives
//! that node's reason):
//!
//! 1. `NodeUnschedulable`: a cordoned node (`spec.unschedulable`) is refused unless the VMI
//!    tolerates `node.kubernetes.io/unschedulable:NoSchedule`.
//! 2. `TaintToleration`: a `NoSchedule`/`NoExecute` taint the VMI does not tolerate. A node
//!    whose `Ready` condition is not `True` counts as tainted `node.kubernetes.io/not-ready`
//!    (the taint Kubernetes' node lifecycle controller would put there).
//! 3. `NodeAffinity`: `spec.nodeSelector` plus `kubevirt.io/schedulable: "true"` (KubeVirt's
//!    addition; virt-controller sets it to `false` on a node whose handler stopped
//!    heartbeating), and the required node affinity (`nodeSelectorTerms`, ORed; within a term
//!    `matchExpressions` with In/NotIn/Exists/DoesNotExist/Gt/Lt and `matchFields` on
//!    `metadata.name`, ANDed).
//!
//! 4. The guest architecture (ours; KubeVirt puts `kubernetes.io/arch` in the launcher Pod's
//!    `nodeSelector`): a node advertising guest architectures (`guest-arch.node.kubevirt.io/*`
//!    labels, [`kubevirt_api::arch::Arch::node_label`]) takes a VMI only when the label of its
//!    `spec.architecture` (empty: amd64) is `"true"`; a node advertising none, only when its
//!    `kubernetes.io/arch` (if any) is that architecture. Its refusal names the architecture:
//!    `1 node(s) can't run arm64 guests (guest-arch.node.kubevirt.io/arm64)`.
//!
//! 5. `VolumeBinding`: every PersistentVolume the VMI's claims are bound to must fit the node
//!    (its required `nodeAffinity`: a local-path volume is pinned to the node holding its
//!    data): `node(s) had volume node affinity conflict`. Before any node is looked at, a
//!    claim that is not bound yet keeps the VMI off every node (`pod has unbound immediate
//!    PersistentVolumeClaims`), and one that does not exist gets KubeVirt's wait (`PVC ns/x
//!    does not exist, waiting for it to appear`), as virt-controller holds the launcher Pod
//!    back: placed before its volume binds, a VMI could land on a node its data is not on.
//!    Hotplugged volumes hold nothing back, but once bound their volumes pin the VMI too.
//!
//! Among the nodes left, the one running the fewest VMIs wins (ties: the first name). That is
//! all the scoring there is: no resources, no preferred affinity, no pod (anti-)affinity, no
//! topology spread. A VMI no node takes gets kube-scheduler's message, e.g.
//! `0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s)
//! were unschedulable.`
//!
//! Everything here is pure: the reconciler reads the Nodes and the VMIs' placements and
//! passes them in.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, Taint, Toleration};
use kubevirt_api::arch::NODE_LABEL_PREFIX;
use kubevirt_api::core_kinds::node_selector_matches;
use kubevirt_api::status::label::{ARCH, SCHEDULABLE};
use kubevirt_api::VirtualMachineInstance;

/// The taint key of a cordoned node (kube-scheduler's `NodeUnschedulable` tolerates it).
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// The taint key of a node that is not Ready.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";

/// Why one node was refused, worded as kube-scheduler's filter plugins word it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Cordoned (`spec.unschedulable`).
    Unschedulable,
    /// A taint the VMI does not tolerate.
    Taint { key: String, value: String },
    /// `nodeSelector`, `kubevirt.io/schedulable` or the required node affinity.
    Affinity,
    /// The node does not run guests of this `spec.architecture` (empty: one this
    /// implementation does not know, not echoed).
    Architecture { arch: String },
    /// A PersistentVolume of the VMI's claims is pinned to other nodes.
    VolumeAffinity,
}

/// What the VMI's claims require (kube-scheduler's VolumeBinding plugin), read by the
/// reconciler from the claims of its `persistentVolumeClaim` and `dataVolume` volumes (not the
/// hotplugged ones) and the volumes they are bound to.
#[derive(Clone, Debug, Default)]
pub struct Volumes {
    /// Why no node can take the VMI yet, whatever the nodes.
    pub not_yet: Option<NotYet>,
    /// The PersistentVolumes the claims are bound to: each must fit the node.
    pub bound: Vec<PersistentVolume>,
}

/// A claim that keeps the VMI off every node for now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotYet {
    /// The claim does not exist (or its name could not be one): KubeVirt waits for it.
    MissingClaim { namespace: String, name: String },
    /// The claim is not bound to a volume yet.
    Unbound,
    /// A claim is bound to a PersistentVolume that does not exist.
    MissingVolume,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unschedulable => f.write_str("node(s) were unschedulable"),
            Refusal::Taint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Refusal::Affinity => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Refusal::Architecture { arch } if kubevirt_api::arch::Arch::parse(arch).is_some() => {
                write!(
                    f,
                    "node(s) can't run {arch} guests ({NODE_LABEL_PREFIX}{arch})"
                )
            }
            Refusal::Architecture { .. } => {
                f.write_str("node(s) can't run guests of an unsupported architecture")
            }
            Refusal::VolumeAffinity => f.write_str("node(s) had volume node affinity conflict"),
        }
    }
}

/// No node takes the VMI; `Display` is kube-scheduler's `FitError` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unschedulable {
    /// How many nodes there are.
    pub nodes: usize,
    /// Each refused node's reason.
    pub refusals: Vec<Refusal>,
    /// Set when no node was looked at: a claim keeps the VMI off all of them.
    pub not_yet: Option<NotYet>,
}

impl std::fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.not_yet {
            Some(NotYet::MissingClaim { namespace, name }) => {
                return write!(
                    f,
                    "PVC {namespace}/{name} does not exist, waiting for it to appear"
                )
            }
            Some(NotYet::Unbound) => {
                return write!(
                    f,
                    "0/{} nodes are available: pod has unbound immediate PersistentVolumeClaims.",
                    self.nodes
                )
            }
            Some(NotYet::MissingVolume) => {
                // kube-scheduler's VolumeBinding refuses every node with ErrReasonPVNotExist.
                return write!(
                    f,
                    "0/{0} nodes are available: {0} node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s).",
                    self.nodes
                );
            }
            None => {}
        }
        if self.nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        let mut counts: BTreeMap<&Refusal, usize> = BTreeMap::new();
        for r in &self.refusals {
            *counts.entry(r).or_default() += 1;
        }
        // kube-scheduler sorts the "<count> <reason>" strings.
        let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        write!(
            f,
            "0/{} nodes are available: {}.",
            self.nodes,
            parts.join(", ")
        )
    }
}

/// The node for `vmi` among `nodes`; `load` is how many (non-final) VMIs each node runs,
/// `volumes` what its claims require.
pub fn place<'a>(
    vmi: &VirtualMachineInstance,
    nodes: &'a [Node],
    load: &BTreeMap<String, usize>,
    volumes: &Volumes,
) -> Result<&'a str, Unschedulable> {
    if let Some(n) = &volumes.not_yet {
        return Err(Unschedulable {
            nodes: nodes.len(),
            refusals: Vec::new(),
            not_yet: Some(n.clone()),
        });
    }
    let mut refusals = Vec::new();
    let mut best: Option<(usize, &str)> = None;
    for node in nodes {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        let refused = refusal(vmi, node).or_else(|| {
            (!volumes
                .bound
                .iter()
                .all(|pv| kubevirt_api::core_kinds::pv_fits_node(pv, node)))
            .then_some(Refusal::VolumeAffinity)
        });
        match refused {
            Some(r) => refusals.push(r),
            None => {
                let n = load.get(name).copied().unwrap_or(0);
                if best.is_none_or(|(bn, bname)| (n, name) < (bn, bname)) {
                    best = Some((n, name));
                }
            }
        }
    }
    match best {
        Some((_, name)) => Ok(name),
        None => Err(Unschedulable {
            nodes: nodes.len(),
            refusals,
            not_yet: None,
        }),
    }
}

/// Why `node` cannot take `vmi`, by the first filter that refuses it; `None` if it can.
pub fn refusal(vmi: &VirtualMachineInstance, node: &Node) -> Option<Refusal> {
    let tolerations = vmi.spec.tolerations.as_deref().unwrap_or_default();
    let spec = node.spec.as_ref();
    if spec.and_then(|s| s.unschedulable) == Some(true) {
        let cordon = Taint {
            key: TAINT_UNSCHEDULABLE.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerated(tolerations, &cordon) {
            return Some(Refusal::Unschedulable);
        }
    }
    let mut taints: Vec<Taint> = spec
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .collect();
    if !is_ready(node) && !taints.iter().any(|t| t.key == TAINT_NOT_READY) {
        taints.push(Taint {
            key: TAINT_NOT_READY.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
    }
    if let Some(t) = taints.iter().find(|t| !tolerated(tolerations, t)) {
        return Some(Refusal::Taint {
            key: t.key.clone(),
            value: t.value.clone().unwrap_or_default(),
        });
    }
    if !affinity_matches(vmi, node) {
        return Some(Refusal::Affinity);
    }
    let arch = guest_arch(vmi);
    if !runs_arch(node, arch) {
        // Admission refuses unknown architectures; one that got past it is not echoed.
        let arch = kubevirt_api::arch::Arch::parse(arch).map_or("", |a| a.as_str());
        return Some(Refusal::Architecture { arch: arch.into() });
    }
    None
}

/// The VMI's `spec.architecture`; empty or absent is amd64 (admission defaults it).
fn guest_arch(vmi: &VirtualMachineInstance) -> &str {
    match vmi.spec.architecture.as_deref() {
        None | Some("") => kubevirt_api::arch::Arch::Amd64.as_str(),
        Some(a) => a,
    }
}

/// Whether `node` runs guests of `arch`: by its guest-architecture labels if it has any,
/// else by its `kubernetes.io/arch` (a node without either is not judged).
fn runs_arch(node: &Node, arch: &str) -> bool {
    let Some(labels) = node.metadata.labels.as_ref() else {
        return true;
    };
    if labels.keys().any(|k| k.starts_with(NODE_LABEL_PREFIX)) {
        // An architecture we do not know has no label: no node runs it.
        return kubevirt_api::arch::Arch::parse(arch)
            .is_some_and(|a| labels.get(a.node_label()).map(String::as_str) == Some("true"));
    }
    labels.get(ARCH).is_none_or(|a| a == arch)
}

/// The node's `Ready` condition is `True`.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Kubernetes' `ToleratesTaint`, for any toleration of the list.
fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect = t.effect.as_deref().unwrap_or_default();
        let key = t.key.as_deref().unwrap_or_default();
        if !effect.is_empty() && effect != taint.effect {
            return false;
        }
        if !key.is_empty() && key != taint.key {
            return false;
        }
        match t.operator.as_deref().unwrap_or_default() {
            "" | "Equal" => {
                t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
            }
            "Exists" => true,
            _ => false,
        }
    })
}

fn affinity_matches(vmi: &VirtualMachineInstance, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if labels.get(SCHEDULABLE).map(String::as_str) != Some("true") {
        return false;
    }
    let selector = vmi.spec.node_selector.as_ref();
    if selector.is_some_and(|s| s.iter().any(|(k, v)| labels.get(k) != Some(v))) {
        return false;
    }
    let required = vmi
        .spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    required.is_none_or(|sel| node_selector_matches(sel, node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, extra: serde_json::Value) -> Node {
        let mut n = json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, SCHEDULABLE: "true"}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        });
        merge(&mut n, extra);
        serde_json::from_value(n).expect("node")
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

    fn vmi(spec: serde_json::Value) -> VirtualMachineInstance {
        let mut v = json!({"metadata": {"name": "v"}, "spec": {"domain": {"devices": {}}}});
        merge(&mut v["spec"], spec);
        serde_json::from_value(v).expect("vmi")
    }

    /// `place` for a VMI without claims.
    fn place<'a>(
        vmi: &VirtualMachineInstance,
        nodes: &'a [Node],
        load: &BTreeMap<String, usize>,
    ) -> Result<&'a str, Unschedulable> {
        super::place(vmi, nodes, load, &Volumes::default())
    }

    fn load(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn the_least_loaded_schedulable_node_wins_and_ties_go_by_name() {
        let nodes = [node("node02", json!({})), node("node01", json!({}))];
        let v = vmi(json!({}));
        assert_eq!(place(&v, &nodes, &load(&[])), Ok("node01"));
        assert_eq!(
            place(&v, &nodes, &load(&[("node01", 2), ("node02", 1)])),
            Ok("node02")
        );
        // The single-node server: its own node is the only one.
        assert_eq!(
            place(&v, &nodes[1..], &load(&[("node01", 9)])),
            Ok("node01")
        );
    }

    #[test]
    fn cordoned_unready_and_unlabelled_nodes_are_refused_with_kube_schedulers_words() {
        let nodes = [
            node("cordoned", json!({"spec": {"unschedulable": true}})),
            node(
                "down",
                json!({"metadata": {"labels": {SCHEDULABLE: "false"}}}),
            ),
            node(
                "notready",
                json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
            ),
            node(
                "tainted",
                json!({"spec": {"taints": [{"key": "gpu", "value": "a100", "effect": "NoSchedule"}]}}),
            ),
            node(
                "soft",
                json!({"spec": {"taints": [{"key": "x", "effect": "PreferNoSchedule"}]},
                       "metadata": {"labels": {"disk": "hdd"}}}),
            ),
        ];
        let v = vmi(json!({"nodeSelector": {"disk": "ssd"}}));
        let e = place(&v, &nodes, &load(&[])).expect_err("nothing fits");
        assert_eq!(
            e.to_string(),
            "0/5 nodes are available: 1 node(s) had untolerated taint {gpu: a100}, \
             1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
             1 node(s) were unschedulable, 2 node(s) didn't match Pod's node affinity/selector."
        );
        // The PreferNoSchedule taint does not refuse: only the selector did.
        assert_eq!(refusal(&v, &nodes[4]), Some(Refusal::Affinity));
        assert_eq!(
            Unschedulable {
                nodes: 0,
                refusals: vec![],
                not_yet: None,
            }
            .to_string(),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn tolerations_let_a_vmi_onto_tainted_and_cordoned_nodes() {
        let nodes = [
            node("cordoned", json!({"spec": {"unschedulable": true}})),
            node(
                "tainted",
                json!({"spec": {"taints": [{"key": "gpu", "value": "a100", "effect": "NoExecute"}]}}),
            ),
        ];
        let none = vmi(json!({}));
        assert!(place(&none, &nodes, &load(&[])).is_err());
        let equal = vmi(json!({"tolerations": [{"key": "gpu", "value": "a100"}]}));
        assert_eq!(place(&equal, &nodes, &load(&[])), Ok("tainted"));
        let wrong_value = vmi(json!({"tolerations": [{"key": "gpu", "value": "h100"}]}));
        assert!(refusal(&wrong_value, &nodes[1]).is_some());
        let wrong_effect = vmi(
            json!({"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert!(refusal(&wrong_effect, &nodes[1]).is_some());
        let everything = vmi(json!({"tolerations": [{"operator": "Exists"}]}));
        assert_eq!(refusal(&everything, &nodes[0]), None);
        assert_eq!(refusal(&everything, &nodes[1]), None);
    }

    #[test]
    fn required_node_affinity_operators() {
        let n = node(
            "node02",
            json!({"metadata": {"labels": {"zone": "a", "cores": "8"}}}),
        );
        let with = |exprs: serde_json::Value| {
            vmi(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}}),
            )
        };
        let fits = |exprs| refusal(&with(exprs), &n).is_none();
        assert!(fits(
            json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}])
        ));
        assert!(!fits(
            json!([{"key": "zone", "operator": "In", "values": ["b"]}])
        ));
        assert!(fits(
            json!([{"key": "zone", "operator": "NotIn", "values": ["b"]}])
        ));
        assert!(fits(
            json!([{"key": "rack", "operator": "NotIn", "values": ["b"]}])
        ));
        assert!(!fits(
            json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}])
        ));
        assert!(fits(json!([{"key": "zone", "operator": "Exists"}])));
        assert!(!fits(json!([{"key": "zone", "operator": "DoesNotExist"}])));
        assert!(fits(json!([{"key": "rack", "operator": "DoesNotExist"}])));
        assert!(fits(
            json!([{"key": "cores", "operator": "Gt", "values": ["4"]}])
        ));
        assert!(!fits(
            json!([{"key": "cores", "operator": "Lt", "values": ["4"]}])
        ));
        assert!(!fits(
            json!([{"key": "cores", "operator": "Gt", "values": ["4", "5"]}])
        ));
        assert!(!fits(
            json!([{"key": "zone", "operator": "Gt", "values": ["4"]}])
        ));
        assert!(!fits(
            json!([{"key": "zone", "operator": "Matches", "values": ["a"]}])
        ));
        // ANDed within a term.
        assert!(!fits(json!([
            {"key": "zone", "operator": "In", "values": ["a"]},
            {"key": "rack", "operator": "Exists"}])));
        // Terms are ORed; an empty term matches nothing.
        let terms = |t: serde_json::Value| {
            vmi(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": t}}}}),
            )
        };
        assert!(refusal(
            &terms(
                json!([{"matchExpressions": [{"key": "rack", "operator": "Exists"}]},
                          {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}])
            ),
            &n
        )
        .is_none());
        assert!(refusal(&terms(json!([{}])), &n).is_some());
        assert!(refusal(&terms(json!([])), &n).is_some());
        // matchFields: metadata.name only.
        assert!(refusal(
            &terms(json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node02"]}]}])),
            &n
        )
        .is_none());
        assert!(refusal(
            &terms(json!([{"matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["node02"]}]}])),
            &n
        )
        .is_some());
    }

    #[test]
    fn odd_node_selector_keys_match_nothing_and_are_not_echoed() {
        let nodes = [node("node01", json!({}))];
        for key in [
            "",
            "/",
            "kubernetes.io/hostname\0",
            "../../etc/passwd",
            "a b",
            "ключ",
            &"k".repeat(10_000),
        ] {
            let v = vmi(json!({"nodeSelector": {key: "node01"}}));
            let e = place(&v, &nodes, &load(&[])).expect_err(key);
            assert_eq!(
                e.to_string(),
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
            );
        }
        // The VMI cannot switch KubeVirt's own requirement off.
        let sneaky = vmi(json!({"nodeSelector": {SCHEDULABLE: "false"}}));
        let down = [node(
            "n",
            json!({"metadata": {"labels": {SCHEDULABLE: "false"}}}),
        )];
        assert!(place(&sneaky, &down, &load(&[])).is_err());
    }

    #[test]
    fn a_vmi_goes_only_to_nodes_advertising_its_architecture() {
        let amd64_only = json!({"metadata": {"labels": {
            ARCH: "amd64",
            "guest-arch.node.kubevirt.io/amd64": "true",
            "guest-arch.node.kubevirt.io/arm64": "false"}}});
        let both = json!({"metadata": {"labels": {
            ARCH: "amd64",
            "guest-arch.node.kubevirt.io/amd64": "true",
            "guest-arch.node.kubevirt.io/arm64": "true"}}});
        let arm = vmi(json!({"architecture": "arm64"}));
        let x86 = vmi(json!({"architecture": "amd64"}));
        let unset = vmi(json!({}));
        // No node has qemu-system-aarch64: the arm64 VMI waits, and the message says why.
        let nodes = [
            node("node01", amd64_only.clone()),
            node("node02", amd64_only),
        ];
        let e = place(&arm, &nodes, &load(&[])).expect_err("no arm64 node");
        assert_eq!(
            e.to_string(),
            "0/2 nodes are available: 2 node(s) can't run arm64 guests \
             (guest-arch.node.kubevirt.io/arm64)."
        );
        assert_eq!(place(&x86, &nodes, &load(&[])), Ok("node01"));
        assert_eq!(place(&unset, &nodes, &load(&[])), Ok("node01"));
        // One node can: it takes the arm64 VMI however loaded it is.
        let nodes = [nodes[0].clone(), node("node02", both)];
        assert_eq!(place(&arm, &nodes, &load(&[("node02", 5)])), Ok("node02"));
        // A node advertising no guest architectures is judged by kubernetes.io/arch, and one
        // with neither label (registered by hand) is not judged.
        let arm_host = node("arm", json!({"metadata": {"labels": {ARCH: "arm64"}}}));
        assert_eq!(refusal(&arm, &arm_host), None);
        assert_eq!(
            refusal(&x86, &arm_host),
            Some(Refusal::Architecture {
                arch: "amd64".into()
            })
        );
        assert_eq!(refusal(&arm, &node("bare", json!({}))), None);
        // A label other than "true" does not count; a hostile architecture (past admission)
        // matches no advertised label and is not echoed.
        let odd = node(
            "odd",
            json!({"metadata": {"labels": {"guest-arch.node.kubevirt.io/arm64": "yes"}}}),
        );
        assert!(refusal(&arm, &odd).is_some());
        // s390x is refused by nodes that do not advertise it, naming the label.
        let s390x = vmi(json!({"architecture": "s390x"}));
        assert_eq!(
            place(&s390x, &[node("n", both_labels())], &load(&[]))
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err("0/1 nodes are available: 1 node(s) can't run s390x guests \
                 (guest-arch.node.kubevirt.io/s390x)."
                .to_string())
        );
        for hostile in ["ppc64le", "", "../arm64", "arm64\0", &"a".repeat(10_000)] {
            let v = vmi(json!({"architecture": hostile}));
            let nodes = [node("n", both_labels())];
            match place(&v, &nodes, &load(&[])) {
                // "" is amd64 (admission's default)
                Ok(_) => assert_eq!(hostile, ""),
                Err(e) => assert_eq!(
                    e.to_string(),
                    "0/1 nodes are available: 1 node(s) can't run guests of an unsupported \
                     architecture."
                ),
            }
        }
    }

    fn both_labels() -> serde_json::Value {
        json!({"metadata": {"labels": {
            "guest-arch.node.kubevirt.io/amd64": "true",
            "guest-arch.node.kubevirt.io/arm64": "true"}}})
    }

    #[test]
    fn a_vmi_goes_only_where_its_volumes_are_and_waits_for_its_claims() {
        let nodes = [
            node("node01", json!({"metadata": {"labels": {"zone": "a"}}})),
            node("node02", json!({})),
        ];
        let v = vmi(json!({}));
        let pv = |affinity: serde_json::Value| -> PersistentVolume {
            serde_json::from_value(json!({"metadata": {"name": "pv"}, "spec": affinity}))
                .expect("pv")
        };
        let pinned = |host: &str| {
            pv(
                json!({"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}]}}}),
            )
        };
        let with = |bound: Vec<PersistentVolume>| Volumes {
            not_yet: None,
            bound,
        };
        // The least loaded node is node02, but the data is on node01.
        let busy = load(&[("node01", 5)]);
        assert_eq!(
            super::place(&v, &nodes, &busy, &with(vec![pinned("node01")])),
            Ok("node01")
        );
        assert_eq!(
            super::place(&v, &nodes, &busy, &with(vec![pv(json!({}))])),
            Ok("node02"),
            "a volume without node affinity (shared storage) fits every node"
        );
        // Two volumes on two nodes: nowhere, in kube-scheduler's words.
        let e = super::place(
            &v,
            &nodes,
            &busy,
            &with(vec![pinned("node01"), pinned("node02")]),
        )
        .expect_err("split volumes");
        assert_eq!(
            e.to_string(),
            "0/2 nodes are available: 2 node(s) had volume node affinity conflict."
        );
        // A label term (not the hostname) and matchFields.
        let zoned = pv(json!({"nodeAffinity": {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}));
        assert_eq!(
            super::place(&v, &nodes, &busy, &with(vec![zoned])),
            Ok("node01")
        );
        let by_name = pv(json!({"nodeAffinity": {"required": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node02"]}]}]}}}));
        assert_eq!(
            super::place(&v, &nodes, &load(&[("node02", 5)]), &with(vec![by_name])),
            Ok("node02")
        );
        // An empty term list matches no node (Kubernetes), so such a volume is usable nowhere.
        let empty = pv(json!({"nodeAffinity": {"required": {"nodeSelectorTerms": []}}}));
        assert!(super::place(&v, &nodes, &busy, &with(vec![empty])).is_err());
        // The node's own filters still come first.
        let cordoned = [node("node01", json!({"spec": {"unschedulable": true}}))];
        let e = super::place(&v, &cordoned, &busy, &with(vec![pinned("node01")]))
            .expect_err("cordoned");
        assert_eq!(
            e.to_string(),
            "0/1 nodes are available: 1 node(s) were unschedulable."
        );
        // Claims that keep the VMI off every node.
        let wait = |n: NotYet| {
            super::place(
                &v,
                &nodes,
                &busy,
                &Volumes {
                    not_yet: Some(n),
                    bound: vec![],
                },
            )
            .expect_err("waits")
            .to_string()
        };
        assert_eq!(
            wait(NotYet::Unbound),
            "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims."
        );
        assert_eq!(
            wait(NotYet::MissingClaim {
                namespace: "default".into(),
                name: "disk".into()
            }),
            "PVC default/disk does not exist, waiting for it to appear"
        );
        assert_eq!(
            wait(NotYet::MissingVolume),
            "0/2 nodes are available: 2 node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)."
        );
    }
}

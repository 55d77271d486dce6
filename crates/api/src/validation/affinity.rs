//! `spec.affinity` and `spec.topologySpreadConstraints`: KubeVirt's `validateSpecAffinity` and
//! `validateSpecTopologySpreadConstraints` (vmi-create-admitter.go), which run KubeVirt's copy of
//! Kubernetes' pod validation (validate-k8s-utils.go, taken from
//! kubernetes/pkg/apis/core/validation) and the label selector rules of
//! `k8s.io/apimachinery/pkg/apis/meta/v1/validation`.
//!
//! Every Kubernetes field error becomes one cause of type `FieldValueInvalid` whose message is
//! the error as Kubernetes prints it, path included (`spec.nodeAffinity...values: Required
//! value: must be specified when ...`), as KubeVirt reports them. KubeVirt's paths are kept
//! even where they look wrong, so a user who greps for one finds ours:
//!
//! - the affinity rules start at the spec, not at `spec.affinity` (`spec.nodeAffinity...`);
//! - a pod affinity term's namespaces are reported at `...namespace`, without an index (as
//!   Kubernetes itself does).
//!
//! One path KubeVirt builds wrongly is reported at the field itself, as elsewhere in this crate:
//! a spread constraint's label selector, which KubeVirt reports at
//! `spec.topologySpreadConstraints.labelSelector` whatever the constraint, is reported at
//! `spec.topologySpreadConstraints[i].labelSelector`.
//!
//! KubeVirt's copy is older than Kubernetes' current pod validation: it has no rules for
//! `minDomains`, `nodeAffinityPolicy`, `nodeTaintsPolicy`, `matchLabelKeys` or
//! `mismatchLabelKeys`, nor for the values of `Gt`/`Lt` node selector requirements, and neither
//! do we.

use crate::field::{FieldError, Path};
use crate::names;
use crate::VirtualMachineInstanceSpec;
use k8s_openapi::api::core::v1::{
    Affinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodAffinityTerm,
    TopologySpreadConstraint, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::HashMap;

/// The value a Kubernetes field error shows: a `string` as Go's `%q`, a value of a named
/// string type (an operator, an action) as JSON, numbers as they are.
enum Bad<'a> {
    Str(&'a str),
    Json(&'a str),
    Int(i64),
}

impl std::fmt::Display for Bad<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Str(s) => f.write_str(&names::go_quote(s)),
            Bad::Json(s) => f.write_str(&go_json(s)),
            Bad::Int(i) => write!(f, "{i}"),
        }
    }
}

/// A string as Go's `json.Marshal` writes it: JSON, with `<`, `>`, `&`, U+2028 and U+2029
/// escaped.
fn go_json(s: &str) -> String {
    let json = serde_json::Value::String(s.to_string()).to_string();
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// Collects Kubernetes field errors as KubeVirt turns them into causes.
struct Errs<'e>(&'e mut Vec<FieldError>);

impl Errs<'_> {
    fn push(&mut self, path: &Path, body: String) {
        self.0
            .push(FieldError::invalid(path, format!("{path}: {body}")));
    }
    fn required(&mut self, path: &Path, detail: &str) {
        self.push(path, format!("Required value: {detail}"));
    }
    fn forbidden(&mut self, path: &Path, detail: &str) {
        self.push(path, format!("Forbidden: {detail}"));
    }
    fn invalid(&mut self, path: &Path, value: Bad, detail: &str) {
        self.push(path, format!("Invalid value: {value}: {detail}"));
    }
}

/// The affinity and spread rules of a VMI spec at `root` (`spec`, or `spec.template.spec`).
pub(super) fn validate(spec: &VirtualMachineInstanceSpec, root: &Path, errs: &mut Vec<FieldError>) {
    let mut e = Errs(errs);
    if let Some(a) = &spec.affinity {
        validate_affinity(a, root, &mut e);
    }
    if let Some(c) = &spec.topology_spread_constraints {
        validate_topology_spread(c, &root.child("topologySpreadConstraints"), &mut e);
    }
}

fn validate_affinity(a: &Affinity, p: &Path, e: &mut Errs) {
    if let Some(na) = &a.node_affinity {
        let np = p.child("nodeAffinity");
        if let Some(sel) = &na.required_during_scheduling_ignored_during_execution {
            node_selector(
                sel,
                &np.child("requiredDuringSchedulingIgnoredDuringExecution"),
                e,
            );
        }
        let pp = np.child("preferredDuringSchedulingIgnoredDuringExecution");
        for (i, term) in na
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .enumerate()
        {
            let tp = pp.index(i);
            weight(term.weight, &tp, e);
            node_selector_term(&term.preference, &tp.child("preference"), e);
        }
    }
    let pod_terms = [
        (
            a.pod_affinity.as_ref().map(|x| {
                (
                    &x.required_during_scheduling_ignored_during_execution,
                    &x.preferred_during_scheduling_ignored_during_execution,
                )
            }),
            "podAffinity",
        ),
        (
            a.pod_anti_affinity.as_ref().map(|x| {
                (
                    &x.required_during_scheduling_ignored_during_execution,
                    &x.preferred_during_scheduling_ignored_during_execution,
                )
            }),
            "podAntiAffinity",
        ),
    ];
    for (terms, name) in pod_terms {
        let Some((required, preferred)) = terms else {
            continue;
        };
        let ap = p.child(name);
        let rp = ap.child("requiredDuringSchedulingIgnoredDuringExecution");
        for (i, t) in required.iter().flatten().enumerate() {
            pod_affinity_term(t, &rp.index(i), e);
        }
        let pp = ap.child("preferredDuringSchedulingIgnoredDuringExecution");
        for (i, t) in preferred.iter().flatten().enumerate() {
            weighted_pod_affinity_term(t, &pp.index(i), e);
        }
    }
}

fn weight(w: i32, term: &Path, e: &mut Errs) {
    if !(1..=100).contains(&w) {
        e.invalid(
            &term.child("weight"),
            Bad::Int(w.into()),
            "must be in the range 1-100",
        );
    }
}

fn weighted_pod_affinity_term(t: &WeightedPodAffinityTerm, p: &Path, e: &mut Errs) {
    weight(t.weight, p, e);
    pod_affinity_term(&t.pod_affinity_term, &p.child("podAffinityTerm"), e);
}

fn pod_affinity_term(t: &PodAffinityTerm, p: &Path, e: &mut Errs) {
    if let Some(s) = &t.label_selector {
        label_selector(s, &p.child("labelSelector"), e);
    }
    if let Some(s) = &t.namespace_selector {
        label_selector(s, &p.child("namespaceSelector"), e);
    }
    let nsp = p.child("namespace");
    for ns in t.namespaces.iter().flatten() {
        for m in names::dns1123_label_problems(ns) {
            e.invalid(&nsp, Bad::Str(ns), &m);
        }
    }
    let kp = p.child("topologyKey");
    if t.topology_key.is_empty() {
        e.required(&kp, "can not be empty");
    }
    label_name(&t.topology_key, &kp, e);
}

fn node_selector(sel: &NodeSelector, p: &Path, e: &mut Errs) {
    let tp = p.child("nodeSelectorTerms");
    if sel.node_selector_terms.is_empty() {
        e.required(&tp, "must have at least one node selector term");
        return;
    }
    for (i, term) in sel.node_selector_terms.iter().enumerate() {
        node_selector_term(term, &tp.index(i), e);
    }
}

fn node_selector_term(term: &NodeSelectorTerm, p: &Path, e: &mut Errs) {
    for (j, r) in term.match_expressions.iter().flatten().enumerate() {
        node_selector_requirement(r, &p.child("matchExpressions").index(j), e);
    }
    for (j, r) in term.match_fields.iter().flatten().enumerate() {
        node_field_requirement(r, &p.child("matchFields").index(j), e);
    }
}

fn node_selector_requirement(r: &NodeSelectorRequirement, p: &Path, e: &mut Errs) {
    let n = r.values.as_ref().map_or(0, Vec::len);
    let vp = p.child("values");
    match r.operator.as_str() {
        "In" | "NotIn" if n == 0 => {
            e.required(&vp, "must be specified when `operator` is 'In' or 'NotIn'")
        }
        "Exists" | "DoesNotExist" if n > 0 => e.forbidden(
            &vp,
            "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        ),
        "Gt" | "Lt" if n != 1 => e.required(
            &vp,
            "must be specified single value when `operator` is 'Lt' or 'Gt'",
        ),
        "In" | "NotIn" | "Exists" | "DoesNotExist" | "Gt" | "Lt" => {}
        op => e.invalid(
            &p.child("operator"),
            Bad::Json(op),
            "not a valid selector operator",
        ),
    }
    label_name(&r.key, &p.child("key"), e);
}

/// Node field selectors may only select `metadata.name`, a node name.
fn node_field_requirement(r: &NodeSelectorRequirement, p: &Path, e: &mut Errs) {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" | "NotIn" if values.len() != 1 => e.required(
            &p.child("values"),
            "must be only one value when `operator` is 'In' or 'NotIn' for node field selector",
        ),
        "In" | "NotIn" => {}
        op => e.invalid(
            &p.child("operator"),
            Bad::Json(op),
            "not a valid selector operator",
        ),
    }
    if r.key != "metadata.name" {
        e.invalid(
            &p.child("key"),
            Bad::Str(&r.key),
            "not a valid field selector key",
        );
        return;
    }
    for (i, v) in values.iter().enumerate() {
        for m in names::dns1123_subdomain_problems(v) {
            e.invalid(&p.child("values").index(i), Bad::Str(v), &m);
        }
    }
}

/// `ValidateLabelSelector` with the default options (known operators, valid label values).
fn label_selector(s: &LabelSelector, p: &Path, e: &mut Errs) {
    let mp = p.child("matchLabels");
    for (k, v) in s.match_labels.iter().flatten() {
        label_name(k, &mp, e);
        for m in names::label_value_problems(v) {
            e.invalid(&mp, Bad::Str(v), &m);
        }
    }
    for (i, r) in s.match_expressions.iter().flatten().enumerate() {
        let rp = p.child("matchExpressions").index(i);
        let values = r.values.as_deref().unwrap_or_default();
        let vp = rp.child("values");
        match r.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                e.required(&vp, "must be specified when `operator` is 'In' or 'NotIn'")
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => e.forbidden(
                &vp,
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            op => e.invalid(
                &rp.child("operator"),
                Bad::Json(op),
                "not a valid selector operator",
            ),
        }
        label_name(&r.key, &rp.child("key"), e);
        for (j, v) in values.iter().enumerate() {
            for m in names::label_value_problems(v) {
                e.invalid(&vp.index(j), Bad::Str(v), &m);
            }
        }
    }
}

/// `ValidateLabelName`: a qualified name.
fn label_name(name: &str, p: &Path, e: &mut Errs) {
    for m in names::qualified_name_problems(name) {
        e.invalid(p, Bad::Str(name), &m);
    }
}

fn validate_topology_spread(cs: &[TopologySpreadConstraint], p: &Path, e: &mut Errs) {
    // A constraint is a duplicate when a later one has the same (topologyKey,
    // whenUnsatisfiable) pair; KubeVirt compares each with all later ones, we look up the last
    // index of each pair, so many constraints cost no more than a few.
    let mut last: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, c) in cs.iter().enumerate() {
        last.insert((c.topology_key.as_str(), c.when_unsatisfiable.as_str()), i);
    }
    for (i, c) in cs.iter().enumerate() {
        let cp = p.index(i);
        if c.max_skew <= 0 {
            e.invalid(
                &cp.child("maxSkew"),
                Bad::Int(c.max_skew.into()),
                "must be greater than zero",
            );
        }
        let kp = cp.child("topologyKey");
        if c.topology_key.is_empty() {
            e.required(&kp, "can not be empty");
        } else {
            label_name(&c.topology_key, &kp, e);
        }
        if !matches!(
            c.when_unsatisfiable.as_str(),
            "DoNotSchedule" | "ScheduleAnyway"
        ) {
            e.push(
                &cp.child("whenUnsatisfiable"),
                format!(
                    "Unsupported value: {}: supported values: \"DoNotSchedule\", \"ScheduleAnyway\"",
                    go_json(&c.when_unsatisfiable)
                ),
            );
        }
        // KubeVirt reports these at `spec.topologySpreadConstraints.labelSelector`, without the
        // constraint's index (its copy passes the list's path); we name the constraint.
        if let Some(s) = &c.label_selector {
            label_selector(s, &cp.child("labelSelector"), e);
        }
        let pair = (c.topology_key.as_str(), c.when_unsatisfiable.as_str());
        if last.get(&pair).is_some_and(|&j| j > i) {
            e.push(
                &cp.child("{topologyKey, whenUnsatisfiable}"),
                format!(
                    "Duplicate value: {}",
                    names::go_quote(&format!("{{{}, {}}}", pair.0, pair.1))
                ),
            );
        }
    }
}

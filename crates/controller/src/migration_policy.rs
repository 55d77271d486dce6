//! KubeVirt's MigrationPolicy matching (pkg/virt-controller/watch/migration/
//! migrationpolicy.go): at hand-off, the policy that matches the VMI best overrides the
//! cluster's `migrations` settings field by field, and the VMI's `migrationState` records the
//! policy's name (`migrationPolicyName`) and the configuration the node agents then apply
//! (`migrationConfiguration`).
//!
//! A policy matches when every label of its `virtualMachineInstanceSelector` is on the VMI and
//! every label of its `namespaceSelector` is on the VMI's namespace (a policy without
//! `selectors` matches nothing). The best match has the most matching labels in total; a tie
//! goes to the one with more matching VMI labels, then to the lexically first name.

use std::collections::BTreeMap;

use kubevirt_api::MigrationPolicy;
use serde_json::{Map, Value};

/// What a matched policy contributes: its name and the resolved configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// The cluster's `migrations` settings with the policy's fields laid over them.
    pub configuration: Value,
    /// The matched policy's name, when one matched.
    pub policy: Option<String>,
}

type Labels = BTreeMap<String, String>;

/// (matching VMI labels, matching namespace labels), or None when the policy does not match.
fn score(p: &MigrationPolicy, vmi: &Labels, ns: &Labels) -> Option<(usize, usize)> {
    // KubeVirt checks a selector only when the labels it is compared with are non-nil; a
    // running VMI always carries labels (at least `kubevirt.io/nodeName`), and its namespace
    // labels are compared as a map, so an absent map is an empty one here.
    let count = |sel: &Option<Labels>, labels: &Labels| -> Option<usize> {
        let sel = match sel {
            Some(s) => s,
            None => return Some(0),
        };
        sel.iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            .then_some(sel.len())
    };
    let s = &p.spec.selectors;
    if s.virtual_machine_instance_selector.is_none() && s.namespace_selector.is_none() {
        // KubeVirt: `policy.Spec.Selectors == nil` matches nothing. The generated type has no
        // nil `selectors` (it is required), so both selectors absent is that case.
        return None;
    }
    Some((
        count(&s.virtual_machine_instance_selector, vmi)?,
        count(&s.namespace_selector, ns)?,
    ))
}

/// The policy among `policies` that matches a VMI with `vmi_labels` in a namespace with
/// `namespace_labels` best, by KubeVirt's rules.
pub fn matching<'a>(
    policies: &'a [MigrationPolicy],
    vmi_labels: &Labels,
    namespace_labels: &Labels,
) -> Option<&'a MigrationPolicy> {
    let name = |p: &MigrationPolicy| p.metadata.name.clone().unwrap_or_default();
    policies
        .iter()
        .filter_map(|p| score(p, vmi_labels, namespace_labels).map(|s| (p, s)))
        .max_by(|(pa, (va, na)), (pb, (vb, nb))| {
            (va + na)
                .cmp(&(vb + nb))
                .then(va.cmp(vb))
                // max_by keeps the last of equals: order names descending so the lexically
                // first name is the greatest.
                .then_with(|| name(pb).cmp(&name(pa)))
        })
        .map(|(p, _)| p)
}

/// KubeVirt's `applyMigrationPolicySpec`: the policy's set fields over the cluster's
/// configuration. `allowWorkloadDisruption` follows `allowPostCopy` when the policy sets only
/// the latter.
pub fn apply(cluster: &Value, policy: &MigrationPolicy) -> Value {
    let mut out = match cluster {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let spec = match serde_json::to_value(&policy.spec) {
        Ok(Value::Object(m)) => m,
        _ => return Value::Object(out),
    };
    if spec.get("allowWorkloadDisruption").is_none() {
        if let Some(v) = spec.get("allowPostCopy") {
            out.insert("allowWorkloadDisruption".into(), v.clone());
        }
    }
    for key in [
        "allowAutoConverge",
        "bandwidthPerMigration",
        "completionTimeoutPerGiB",
        "maxDowntimeMs",
        "allowPostCopy",
        "allowWorkloadDisruption",
    ] {
        if let Some(v) = spec.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    Value::Object(out)
}

/// The configuration a migration of a VMI with these labels runs with.
pub fn resolve(
    cluster: &Value,
    policies: &[MigrationPolicy],
    vmi_labels: &Labels,
    namespace_labels: &Labels,
) -> Resolved {
    match matching(policies, vmi_labels, namespace_labels) {
        Some(p) => Resolved {
            configuration: apply(cluster, p),
            policy: p.metadata.name.clone(),
        },
        None => Resolved {
            configuration: cluster.clone(),
            policy: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(v: Value) -> MigrationPolicy {
        serde_json::from_value(v).expect("a MigrationPolicy")
    }

    fn labels(v: Value) -> Labels {
        serde_json::from_value(v).expect("labels")
    }

    fn named(name: &str, selectors: Value) -> MigrationPolicy {
        policy(json!({
            "apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
            "metadata": {"name": name},
            "spec": {"selectors": selectors},
        }))
    }

    #[test]
    fn the_policy_matching_most_labels_wins_and_ties_go_to_vmi_labels_then_names() {
        let vmi = labels(json!({"app": "db", "tier": "gold", "kubevirt.io/nodeName": "n1"}));
        let ns = labels(json!({"team": "a"}));
        let ps = vec![
            named("b-ns", json!({"namespaceSelector": {"team": "a"}})),
            named(
                "a-vmi",
                json!({"virtualMachineInstanceSelector": {"app": "db"}}),
            ),
            named(
                "z-two",
                json!({"virtualMachineInstanceSelector": {"app": "db", "tier": "gold"}}),
            ),
            named(
                "wrong",
                json!({"virtualMachineInstanceSelector": {"app": "db", "tier": "silver", "x": "y"}}),
            ),
            named("empty", json!({})),
        ];
        // Two matching labels beat one; "wrong" has three but one does not match.
        assert_eq!(
            matching(&ps, &vmi, &ns).and_then(|p| p.metadata.name.as_deref()),
            Some("z-two")
        );
        // One each: the VMI-label match beats the namespace-label match.
        assert_eq!(
            matching(&ps[..2], &vmi, &ns).and_then(|p| p.metadata.name.as_deref()),
            Some("a-vmi")
        );
        // Same score: the lexically first name.
        let tie = vec![
            named(
                "m",
                json!({"virtualMachineInstanceSelector": {"app": "db"}}),
            ),
            named(
                "c",
                json!({"virtualMachineInstanceSelector": {"tier": "gold"}}),
            ),
        ];
        assert_eq!(
            matching(&tie, &vmi, &ns).and_then(|p| p.metadata.name.as_deref()),
            Some("c")
        );
        // A namespace without the label: no match; a policy without selectors never matches.
        assert!(matching(&ps[..1], &vmi, &Labels::new()).is_none());
        assert!(matching(&ps[4..], &vmi, &ns).is_none());
    }

    #[test]
    fn a_matched_policy_overrides_the_cluster_settings_field_by_field() {
        let cluster = json!({"bandwidthPerMigration": "64Mi", "progressTimeout": 150,
                             "allowPostCopy": false, "completionTimeoutPerGiB": 150});
        let p = policy(json!({
            "apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
            "metadata": {"name": "slow"},
            "spec": {"selectors": {"virtualMachineInstanceSelector": {"app": "db"}},
                     "bandwidthPerMigration": "1Mi", "allowPostCopy": true,
                     "maxDowntimeMs": 100},
        }));
        let r = resolve(
            &cluster,
            std::slice::from_ref(&p),
            &labels(json!({"app": "db"})),
            &Labels::new(),
        );
        assert_eq!(r.policy.as_deref(), Some("slow"));
        assert_eq!(
            r.configuration,
            json!({"bandwidthPerMigration": "1Mi", "progressTimeout": 150,
                   "allowPostCopy": true, "allowWorkloadDisruption": true,
                   "completionTimeoutPerGiB": 150, "maxDowntimeMs": 100})
        );
        // No match: the cluster's settings unchanged.
        let none = resolve(
            &cluster,
            &[p],
            &labels(json!({"app": "web"})),
            &Labels::new(),
        );
        assert_eq!(
            none,
            Resolved {
                configuration: cluster,
                policy: None
            }
        );
    }
}

//! KubeVirt's vmpool-admitter_test.go.

mod admitters;
use admitters::*;
use serde_json::{json, Value};

fn pool(selector: Value, labels: Value) -> Value {
    json!({"apiVersion": "pool.kubevirt.io/v1beta1", "kind": "VirtualMachinePool",
           "metadata": {"name": "p", "namespace": "default"},
           "spec": {"selector": selector,
                    "virtualMachineTemplate": {"metadata": {"labels": labels},
                        "spec": {"runStrategy": "Always",
                                 "template": {"spec": {"domain": {"devices": {"disks": [{"name": "testdisk"}]},
                                                                  "resources": {"requests": {"memory": "64Mi"}}},
                                                       "volumes": [{"name": "testdisk", "containerDisk": {"image": "fake"}}]}}}}}})
}

fn ok() -> Value {
    pool(
        json!({"matchLabels": {"match": "me"}}),
        json!({"match": "me"}),
    )
}

#[test]
fn vmpool_table() {
    let strategies = |which: &str, set: Value| with(ok(), &format!("spec.{which}"), set);
    check(vec![
        Case::new("should accept valid vm spec", ok()),
        Case::new("with missing labels", pool(json!({"matchLabels": {"match": "me"}}), json!({})))
            .refused("spec.selector", "selector does not match labels."),
        Case::new("with mismatching label selectors", pool(json!({"matchLabels": {"match": "not"}}), json!({"match": "me"})))
            .refused("spec.selector", "selector does not match labels."),
        Case::new("the VM template's rules apply",
            with(ok(), "spec.virtualMachineTemplate.spec.runStrategy", json!("Sometimes")))
            .refused("spec.virtualMachineTemplate.spec.runStrategy", "Invalid RunStrategy (Sometimes)"),
        Case::new("a reserved label on the VMI template",
            with(ok(), "spec.virtualMachineTemplate.spec.template.metadata", json!({"labels": {"kubevirt.io/nodeName": "n"}})))
            .refused("spec.virtualMachineTemplate.spec.template.metadata.labels", "creation of the following reserved kubevirt.io/ labels on a VMI object is prohibited"),
        Case::new("a reserved label on the VMI template by the admin",
            with(ok(), "spec.virtualMachineTemplate.spec.template.metadata", json!({"labels": {"kubevirt.io/nodeName": "n"}})))
            .by(admin()),
        Case::new("with invalid maxUnavailable percentage", with(ok(), "spec.maxUnavailable", json!("150%")))
            .refused("spec.maxUnavailable", "maxUnavailable percentage value 150 must be between 1 and 100"),
        Case::new("with a maxUnavailable percentage without %", with(ok(), "spec.maxUnavailable", json!("50")))
            .refused("spec.maxUnavailable", "maxUnavailable percentage must end with %"),
        Case::new("with a maxUnavailable percentage that is no number", with(ok(), "spec.maxUnavailable", json!("x%")))
            .refused("spec.maxUnavailable", "maxUnavailable percentage value \"x\" is invalid"),
        Case::new("with invalid maxUnavailable integer", with(ok(), "spec.maxUnavailable", json!(0)))
            .refused("spec.maxUnavailable", "maxUnavailable must be greater than 0"),
        Case::new("with a valid maxUnavailable", with(ok(), "spec.maxUnavailable", json!("25%"))),
        Case::new("with invalid unmanaged and proactive update strategy",
            strategies("updateStrategy", json!({"unmanaged": {}, "proactive": {}})))
            .refused("spec.updateStrategy", "only one strategy can be configured at a time: but found unmanaged, proactive strategies"),
        Case::new("with invalid unmanaged and opportunistic update strategy",
            strategies("updateStrategy", json!({"unmanaged": {}, "opportunistic": {}})))
            .refused("spec.updateStrategy", "only one strategy can be configured at a time"),
        Case::new("with invalid proactive and opportunistic update strategy",
            strategies("updateStrategy", json!({"proactive": {}, "opportunistic": {}})))
            .refused("spec.updateStrategy", "only one strategy can be configured at a time"),
        Case::new("with invalid update strategy (all three)",
            strategies("updateStrategy", json!({"unmanaged": {}, "proactive": {}, "opportunistic": {}})))
            .refused("spec.updateStrategy", "unmanaged, opportunistic, proactive"),
        Case::new("with invalid unmanaged and proactive scale-in strategy",
            strategies("scaleInStrategy", json!({"unmanaged": {}, "proactive": {}})))
            .refused("spec.scaleInStrategy", "only one strategy can be configured at a time"),
        Case::new("with invalid unmanaged and opportunistic scale-in strategy",
            strategies("scaleInStrategy", json!({"unmanaged": {}, "opportunistic": {}})))
            .refused("spec.scaleInStrategy", "only one strategy can be configured at a time"),
        Case::new("with invalid proactive and opportunistic scale-in strategy",
            strategies("scaleInStrategy", json!({"proactive": {}, "opportunistic": {}})))
            .refused("spec.scaleInStrategy", "only one strategy can be configured at a time"),
        Case::new("with one update strategy", strategies("updateStrategy", json!({"proactive": {}}))),
        Case::new("the selector is immutable",
            pool(json!({"matchLabels": {"match": "me", "more": "x"}}), json!({"match": "me", "more": "x"})))
            .old(ok())
            .refused("spec.selector", "selector is immutable after creation."),
        Case::new("an update keeping the selector", with(ok(), "spec.replicas", json!(3))).old(ok()),
    ]);
}

//! KubeVirt's vmirs-admitter_test.go.

mod admitters;
use admitters::*;
use serde_json::{json, Value};

fn rs(selector: Value, labels: Value, volumes: Value) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet",
           "metadata": {"name": "rs", "namespace": "default"},
           "spec": {"selector": selector,
                    "template": {"metadata": {"labels": labels},
                                 "spec": {"domain": {"devices": {"disks": [{"name": "testdisk"}]},
                                                     "resources": {"requests": {"memory": "64Mi"}}},
                                          "volumes": volumes}}}})
}

fn disk() -> Value {
    json!([{"name": "testdisk", "containerDisk": {"image": "fake"}}])
}

#[test]
fn vmirs_table() {
    check(vec![
        Case::new(
            "with missing volume and missing labels",
            rs(
                json!({"matchLabels": {"match": "me"}}),
                json!({}),
                json!([]),
            ),
        )
        .refused("spec.selector", "selector does not match labels."),
        Case::new(
            "with missing volume (the VMI spec rules apply to the template)",
            rs(
                json!({"matchLabels": {"match": "me"}}),
                json!({"match": "me"}),
                json!([]),
            ),
        )
        .refused("spec.template.spec.domain.devices.disks[0].name", ""),
        Case::new(
            "with mismatching label selectors",
            rs(
                json!({"matchLabels": {"match": "not"}}),
                json!({"match": "me"}),
                disk(),
            ),
        )
        .refused("spec.selector", "selector does not match labels."),
        Case::new(
            "with a bad selector operator",
            rs(
                json!({"matchExpressions": [{"key": "match", "operator": "Near"}]}),
                json!({"match": "me"}),
                disk(),
            ),
        )
        .refused(
            "spec.selector",
            "\"Near\" is not a valid label selector operator",
        ),
        Case::new(
            "with a matchExpressions selector",
            rs(
                json!({"matchExpressions": [{"key": "match", "operator": "In", "values": ["me"]}]}),
                json!({"match": "me"}),
                disk(),
            ),
        ),
        Case::new(
            "should accept valid vmi spec",
            rs(
                json!({"matchLabels": {"match": "me"}}),
                json!({"match": "me"}),
                disk(),
            ),
        ),
        Case::new(
            "without a template spec",
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet",
                   "metadata": {"name": "rs"}, "spec": {"selector": {}, "template": {}}}),
        )
        .refused("spec.template", "missing virtual machine template."),
    ]);
}

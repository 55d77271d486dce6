//! KubeVirt's pkg/storage/admitters/vmsnapshot_test.go.

mod admitters;
use admitters::*;
use serde_json::{json, Value};

fn snap(source: Value) -> Value {
    json!({"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
           "metadata": {"name": "s", "namespace": "default"}, "spec": {"source": source}})
}

fn vm_source() -> Value {
    json!({"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm"})
}

#[test]
fn snapshot_table() {
    check(vec![
        Case::new(
            "should reject missing apigroup",
            snap(json!({"kind": "VirtualMachine", "name": "vm"})),
        )
        .refused("spec.source.apiGroup", "missing apiGroup"),
        Case::new("should allow when VM does not exist", snap(vm_source())),
        Case::new(
            "should reject invalid kind",
            snap(
                json!({"apiGroup": "kubevirt.io", "kind": "VirtualMachineInstance", "name": "vm"}),
            ),
        )
        .refused("spec.source.kind", "invalid kind"),
        Case::new(
            "should reject invalid apiGroup",
            snap(json!({"apiGroup": "foo.bar", "kind": "VirtualMachine", "name": "vm"})),
        )
        .refused("spec.source.apiGroup", "invalid apiGroup"),
        Case::new(
            "should reject spec update",
            snap(json!({"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "other"})),
        )
        .old(snap(vm_source()))
        .refused("spec", "spec in immutable after creation"),
        Case::new(
            "should allow metadata update",
            with(snap(vm_source()), "metadata.labels", json!({"a": "b"})),
        )
        .old(snap(vm_source())),
        Case::new(
            "the controller's status writes are updates too",
            with(snap(vm_source()), "status", json!({"phase": "InProgress"})),
        )
        .old(snap(vm_source())),
    ]);
}

//! KubeVirt's pkg/storage/admitters/vmrestore_test.go.

mod admitters;
use admitters::*;
use serde_json::{json, Value};

fn restore(spec: Value) -> Value {
    let mut s = json!({"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm"},
                       "virtualMachineSnapshotName": "snap"});
    for (k, v) in spec.as_object().cloned().unwrap_or_default() {
        s[k] = v;
    }
    json!({"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineRestore",
           "metadata": {"name": "r", "namespace": "default"}, "spec": s})
}

fn snapshot(source_uid: &str) -> Value {
    json!({"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
           "metadata": {"name": "snap", "namespace": "default"},
           "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm"}},
           "status": {"sourceUID": source_uid, "virtualMachineSnapshotContentName": "content"}})
}

fn content(persistent_tpm: bool) -> Value {
    json!({"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshotContent",
           "metadata": {"name": "content", "namespace": "default"},
           "spec": {"source": {"virtualMachine": {"spec": {"template": {"spec": {"domain": {"devices": {"tpm": {"persistent": persistent_tpm}}}}}}}}}})
}

fn vm(uid: &str) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
           "metadata": {"name": "vm", "namespace": "default", "uid": uid},
           "spec": {"template": {}}})
}

fn patch(p: &str) -> Value {
    restore(json!({"patches": [p]}))
}

#[test]
fn restore_table() {
    let other = with(
        with(restore(json!({})), "metadata.name", json!("earlier")),
        "status",
        json!({"complete": false}),
    );
    let done = with(other.clone(), "status", json!({"complete": true}));
    check(vec![
        Case::new("should reject missing apigroup", restore(json!({"target": {"kind": "VirtualMachine", "name": "vm"}})))
            .refused("spec.target.apiGroup", "missing apiGroup"),
        Case::new("should accept when snapshot does not exist", restore(json!({}))),
        Case::new("should reject spec update", restore(json!({"virtualMachineSnapshotName": "other"})))
            .old(restore(json!({})))
            .refused("spec", "spec in immutable after creation"),
        Case::new("should allow metadata update", with(restore(json!({})), "metadata.labels", json!({"a": "b"})))
            .old(restore(json!({}))),
        Case::new("should reject invalid kind", restore(json!({"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachineInstance", "name": "vm"}})))
            .refused("spec.target.kind", "invalid kind"),
        Case::new("should reject invalid apiGroup", restore(json!({"target": {"apiGroup": "foo.bar", "kind": "VirtualMachine", "name": "vm"}})))
            .refused("spec.target.apiGroup", "invalid apiGroup"),
        Case::new("should reject if restore in progress", restore(json!({}))).stored(vec![other])
            .refused("spec.target", "VirtualMachineRestore \"earlier\" in progress"),
        Case::new("a completed restore of the same target is no conflict", restore(json!({}))).stored(vec![done]),
        Case::new("should reject volume overrides if no parameter is specified",
            restore(json!({"volumeRestoreOverrides": [{"volumeName": "disk"}]})))
            .refused("spec.volumeRestoreOverrides[0]", "must provide at least one overriden field"),
        Case::new("a volume override needs a volume name",
            restore(json!({"volumeRestoreOverrides": [{"restoreName": "x"}]})))
            .refused("spec.volumeRestoreOverrides[0].volumeName", "must provide a volume name"),
        Case::new("should accept correct volume restore policy", restore(json!({"volumeRestorePolicy": "InPlace"}))),
        Case::new("should accept PrefixTargetName volume restore policy", restore(json!({"volumeRestorePolicy": "PrefixTargetName"}))),
        Case::new("should reject invalid volume restore policy", restore(json!({"volumeRestorePolicy": "Elsewhere"})))
            .refused("spec.volumeRestorePolicy", "volume restore policy \"Elsewhere\" doesn't exist"),
        Case::new("should accept correct volume ownership policy", restore(json!({"volumeOwnershipPolicy": "Vm"}))),
        Case::new("should reject invalid volume ownership policy", restore(json!({"volumeOwnershipPolicy": "Root"})))
            .refused("spec.volumeOwnershipPolicy", "volume ownership policy \"Root\" doesn't exist"),
        Case::new("backend storage, restoring to a VM that does not exist", restore(json!({})))
            .stored(vec![snapshot("uid-1"), content(true)])
            .refused("spec", "Restore to a different VM is not supported when snapshotted VM has backend storage (persistent TPM or EFI)"),
        Case::new("backend storage, restoring to another VM that exists", restore(json!({})))
            .stored(vec![snapshot("uid-1"), content(true), vm("uid-2")])
            .refused("spec", "Restore to a different VM is not supported"),
        Case::new("backend storage, restoring to the same VM", restore(json!({})))
            .stored(vec![snapshot("uid-1"), content(true), vm("uid-1")]),
        Case::new("no backend storage, restoring to another VM", restore(json!({})))
            .stored(vec![snapshot("uid-1"), content(false)]),
        Case::new("patch to replace metadata", patch(r#"{"op": "replace", "path": "/metadata", "value": "some-value"}"#))
            .refused("spec.patches", "patching is valid only for elements under /spec/ only"),
        Case::new("patch to replace name", patch(r#"{"op": "replace", "path": "/metadata/name", "value": "some-value"}"#))
            .refused("spec.patches", "patching is valid only for elements under /spec/ only"),
        Case::new("patch to replace kind", patch(r#"{"op": "replace", "path": "/kind", "value": "some-value"}"#))
            .refused("spec.patches", "under /spec/"),
        Case::new("patch to remove api version", patch(r#"{"op": "remove", "path": "/apiVersion"}"#))
            .refused("spec.patches", "under /spec/"),
        Case::new("patch to replace status", patch(r#"{"op": "replace", "path": "/status", "value": "some-value"}"#))
            .refused("spec.patches", "under /spec/"),
        Case::new("patch to add ready status", patch(r#"{"op": "add", "path": "/status/ready", "value": "some-value"}"#))
            .refused("spec.patches", "under /spec/"),
        Case::new("patch to replace MAC", patch(r#"{"op": "replace", "path": "/spec/template/spec/domain/devices/interfaces/0/macAddress", "value": "some-value"}"#)),
        Case::new("patch to add running", patch(r#"{"op": "add", "path": "/spec/running", "value": "some-value"}"#)),
        Case::new("patch to remove instancetype", patch(r#"{"op": "remove", "path": "/spec/instancetype"}"#)),
        Case::new("patch to replace a label", patch(r#"{"op": "replace", "path": "/metadata/labels/key", "value": "some-value"}"#)),
        Case::new("patch to remove an annotation", patch(r#"{"op": "remove", "path": "/metadata/annotations/key"}"#)),
        Case::new("should reject an invalid patch", patch(r#"{"op": "replace", "path": "/spec/x", "value": a:b}"#))
            .refused("spec.patches", "patch format is not valid - one \":\" expected in a single key-value json patch"),
        // Unlike KubeVirt's text split: a JSON patch whose value has a colon (a MAC address,
        // as a clone's newMacAddresses makes) passes; a move out of metadata does not.
        Case::new("patch setting a MAC", patch(r#"{"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/0/macAddress", "value": "02:00:00:00:00:01"}"#)),
        Case::new("patch moving the uid", patch(r#"{"op": "move", "from": "/metadata/uid", "path": "/spec/x"}"#))
            .refused("spec.patches", "under /spec/ only: \"from\": \"/metadata/uid\""),
    ]);
}

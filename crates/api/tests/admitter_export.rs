//! KubeVirt's pkg/storage/admitters/vmexport_test.go, as a table, plus hostile values.

mod admitters;
use admitters::*;
use serde_json::{json, Value};

fn export(api_group: Option<&str>, kind: &str, name: &str) -> Value {
    let mut source = json!({"kind": kind, "name": name});
    if let Some(g) = api_group {
        source["apiGroup"] = json!(g);
    }
    json!({"apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport",
           "metadata": {"name": "export", "namespace": "default"},
           "spec": {"source": source, "tokenSecretRef": "token"}})
}

const KV: Option<&str> = Some("kubevirt.io");
const SNAP: Option<&str> = Some("snapshot.kubevirt.io");
const BACKUP: Option<&str> = Some("backup.kubevirt.io");
const TEMPLATE: Option<&str> = Some("template.kubevirt.io");

#[test]
fn export_table() {
    check(vec![
        // it should reject blank names
        Case::new(
            "persistent volume claim",
            export(Some(""), "PersistentVolumeClaim", ""),
        )
        .refused("spec.source.name", "PVC name must not be empty"),
        Case::new(
            "virtual machine snapshot",
            export(KV, "VirtualMachineSnapshot", ""),
        )
        .refused("spec.source.name", "VMSnapshot name must not be empty"),
        Case::new("virtual machine", export(KV, "VirtualMachine", ""))
            .refused("spec.source.name", "Virtual Machine name must not be empty"),
        Case::new(
            "virtual machine backup",
            export(BACKUP, "VirtualMachineBackup", ""),
        )
        .refused(
            "spec.source.name",
            "VirtualMachineBackup name must not be empty",
        ),
        // VirtualMachineTemplate sources need OCIExport and virt-template, which we lack.
        Case::new(
            "VMTemplate source without the gates",
            export(TEMPLATE, "VirtualMachineTemplate", "t"),
        )
        .refused(
            "spec.source.kind",
            "OCIExport feature gate and virt-template deployment",
        ),
        Case::new(
            "VMTemplate source with OCIExport only",
            export(TEMPLATE, "VirtualMachineTemplate", "t"),
        )
        .gates(&["OCIExport"])
        .refused(
            "spec.source.kind",
            "OCIExport feature gate and virt-template deployment",
        ),
        Case::new(
            "should reject unknown kind",
            export(Some("v1"), "Pod", "foo"),
        )
        .refused("spec.source.kind", "invalid kind"),
        Case::new(
            "should reject spec update",
            export(KV, "VirtualMachine", "other"),
        )
        .old(export(KV, "VirtualMachine", "vm"))
        .refused("spec", "spec in immutable after creation"),
        Case::new(
            "should allow metadata update",
            with(
                export(KV, "VirtualMachine", "vm"),
                "metadata.labels",
                json!({"a": "b"}),
            ),
        )
        .old(export(KV, "VirtualMachine", "vm")),
        Case::new(
            "the controller's status writes are updates too",
            with(
                export(KV, "VirtualMachine", "vm"),
                "status",
                json!({"phase": "Ready"}),
            ),
        )
        .old(export(KV, "VirtualMachine", "vm")),
        // spec.ttlDuration is a metav1.Duration: Go's duration syntax, or refused.
        Case::new(
            "a ttlDuration Go parses",
            with(
                export(KV, "VirtualMachine", "vm"),
                "spec.ttlDuration",
                json!("1h30m"),
            ),
        ),
        Case::new(
            "a ttlDuration without a unit",
            with(
                export(KV, "VirtualMachine", "vm"),
                "spec.ttlDuration",
                json!("10"),
            ),
        )
        .refused("spec.ttlDuration", "time: missing unit in duration \"10\""),
        Case::new(
            "a ttlDuration in days",
            with(
                export(KV, "VirtualMachine", "vm"),
                "spec.ttlDuration",
                json!("2d"),
            ),
        )
        .refused(
            "spec.ttlDuration",
            "time: unknown unit \"d\" in duration \"2d\"",
        ),
        Case::new(
            "a ttlDuration that overflows",
            with(
                export(KV, "VirtualMachine", "vm"),
                "spec.ttlDuration",
                json!("99999999999999h"),
            ),
        )
        .refused("spec.ttlDuration", "time: invalid duration"),
        // it should allow
        Case::new(
            "persistent volume claim blank",
            export(Some(""), "PersistentVolumeClaim", "pvc"),
        ),
        Case::new(
            "persistent volume claim nil",
            export(None, "PersistentVolumeClaim", "pvc"),
        ),
        Case::new(
            "virtual machine snapshot",
            export(SNAP, "VirtualMachineSnapshot", "snap"),
        ),
        Case::new("virtual machine", export(KV, "VirtualMachine", "vm")),
        Case::new(
            "virtual machine backup",
            export(BACKUP, "VirtualMachineBackup", "b"),
        ),
        // it should reject invalid apigroups
        Case::new(
            "persistent volume claim",
            export(Some("invalid"), "PersistentVolumeClaim", "pvc"),
        )
        .refused(
            "spec.source.APIGroup",
            "PVC API group must be missing or blank",
        ),
        Case::new(
            "virtual machine snapshot",
            export(Some("invalid"), "VirtualMachineSnapshot", "s"),
        )
        .refused(
            "spec.source.APIGroup",
            "VMSnapshot API group must be snapshot.kubevirt.io",
        ),
        Case::new(
            "virtual machine",
            export(Some("invalid"), "VirtualMachine", "vm"),
        )
        .refused("spec.source.APIGroup", "VM API group must be kubevirt.io"),
        Case::new(
            "virtual machine, no apiGroup",
            export(None, "VirtualMachine", "vm"),
        )
        .refused("spec.source.APIGroup", "VM API group must be kubevirt.io"),
        Case::new(
            "virtual machine backup",
            export(Some("invalid"), "VirtualMachineBackup", "b"),
        )
        .refused(
            "spec.source.APIGroup",
            "VirtualMachineBackup API group must be backup.kubevirt.io",
        ),
        Case::new("kind is case-sensitive", export(KV, "virtualmachine", "vm"))
            .refused("spec.source.kind", "invalid kind"),
    ]);
}

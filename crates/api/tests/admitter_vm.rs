//! KubeVirt's vms-admitter_test.go and pkg/storage/admitters/vm-storage-admitter_test.go: the
//! VM rules beyond its VMI template (run strategy, live-update CPU, data volume templates,
//! updates while a snapshot or restore is in progress, volume requests).

mod admitters;
use admitters::*;
use serde_json::{json, Value};

fn vm() -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
           "metadata": {"name": "vm", "namespace": "default"},
           "spec": {"runStrategy": "Always",
                    "template": {"spec": {"domain": {"devices": {"disks": [{"name": "disk"}]},
                                                     "resources": {"requests": {"memory": "64Mi"}}},
                                          "volumes": [{"name": "disk", "containerDisk": {"image": "fake"}}]}}}})
}

fn dvt(ns: Option<&str>) -> Value {
    let mut meta = json!({"name": "dv"});
    if let Some(ns) = ns {
        meta["namespace"] = json!(ns);
    }
    with(
        with(
            vm(),
            "spec.dataVolumeTemplates",
            json!([{"metadata": meta,
            "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}}}]),
        ),
        "spec.template.spec.volumes",
        json!([{"name": "disk", "dataVolume": {"name": "dv"}}]),
    )
}

fn snapshotting(v: Value) -> Value {
    with(v, "status", json!({"snapshotInProgress": "snap"}))
}

fn restoring(v: Value) -> Value {
    with(v, "status", json!({"restoreInProgress": "restore"}))
}

#[test]
fn vm_table() {
    let other_volume = with(
        vm(),
        "spec.template.spec.volumes",
        json!([{"name": "disk", "containerDisk": {"image": "other"}}]),
    );
    check(vec![
        Case::new("a valid VM", vm()),
        Case::new("both running and runStrategy", with(vm(), "spec.running", json!(true)))
            .refused("spec.running", "Running and RunStrategy are mutually exclusive"),
        Case::new("an unknown run strategy", with(vm(), "spec.runStrategy", json!("Sometimes")))
            .refused("spec.runStrategy", "Invalid RunStrategy (Sometimes)"),
        Case::new("WaitAsReceiver needs its gate", with(vm(), "spec.runStrategy", json!("WaitAsReceiver")))
            .refused("spec.runStrategy", "Invalid RunStrategy (WaitAsReceiver), DecentralizedLiveMigration feature gate is not enabled in kubevirt resource"),
        Case::new("WaitAsReceiver with the gate", with(vm(), "spec.runStrategy", json!("WaitAsReceiver")))
            .gates(&["DecentralizedLiveMigration"]),
        Case::new("more sockets than maxSockets", with(vm(), "spec.template.spec.domain.cpu", json!({"sockets": 4, "maxSockets": 2})))
            .refused("spec.template.spec.domain.cpu.sockets", "Number of sockets in CPU topology is greater than the maximum sockets allowed"),
        Case::new("sockets within maxSockets", with(vm(), "spec.template.spec.domain.cpu", json!({"sockets": 2, "maxSockets": 4}))),
        Case::new("a sidecar hook on the template needs the Sidecar gate", with(vm(), "spec.template.metadata", json!({"annotations": {"hooks.kubevirt.io/hookSidecars": "[{\"image\": \"x\"}]"}})))
            .refused("spec.template.metadata.annotations", "sidecar feature gate is not enabled in kubevirt-config, invalid entry spec.template.metadata.annotations.hooks.kubevirt.io/hookSidecars"),
        Case::new("a sidecar hook on the template with the gate", with(vm(), "spec.template.metadata", json!({"annotations": {"hooks.kubevirt.io/hookSidecars": "[{\"image\": \"x\"}]"}})))
            .gates(&["Sidecar"]),
        Case::new("a data volume template in the VM's namespace", dvt(Some("default"))),
        Case::new("a data volume template without namespace", dvt(None)),
        Case::new("a data volume template in another namespace", dvt(Some("kube-system")))
            .refused("spec.dataVolumeTemplates[0]", "Embedded DataVolume namespace kube-system differs from VM namespace default"),
        Case::new("an unchanged data volume template is not checked again", dvt(Some("kube-system")))
            .old(dvt(Some("kube-system"))),
        // Snapshot in progress.
        Case::new("volumes may not change during a snapshot", snapshotting(other_volume.clone()))
            .old(vm())
            .refused("spec", "Cannot update vm disks or volumes until snapshot \"snap\" completes"),
        Case::new("the run strategy may not change during a snapshot", snapshotting(with(vm(), "spec.runStrategy", json!("Halted"))))
            .old(vm())
            .refused("spec", "Cannot update vm running state until snapshot \"snap\" completes"),
        Case::new("other changes are fine during a snapshot", snapshotting(with(vm(), "metadata.labels", json!({"a": "b"}))))
            .old(vm()),
        Case::new("volumes may change without a snapshot", other_volume).old(vm()),
        // Restore in progress.
        Case::new("the run strategy may not change during a restore", restoring(with(vm(), "spec.runStrategy", json!("Halted"))))
            .old(vm())
            .refused("spec", "Cannot update VM runStrategy until restore \"restore\" completes"),
        Case::new("running: false to runStrategy: Halted is no change", restoring(with(vm(), "spec.runStrategy", json!("Halted"))))
            .old(with(with(vm(), "spec.runStrategy", Value::Null), "spec.running", json!(false))),
        // A VM being deleted is let through.
        Case::new("a deleting VM is not checked further", snapshotting(with(with(vm(), "spec.runStrategy", json!("Halted")), "metadata.deletionTimestamp", json!("2026-01-01T00:00:00Z"))))
            .old(vm()),
        // Volume requests.
        Case::new("a volume request both adds and removes",
            with(vm(), "status.volumeRequests", json!([{"addVolumeOptions": {"name": "v", "disk": {"name": "v"}, "volumeSource": {"persistentVolumeClaim": {"claimName": "c"}}},
                                                          "removeVolumeOptions": {"name": "v"}}])))
            .refused("Status.volumeRequests", "VolumeRequests require either addVolumeOptions or removeVolumeOptions to be set, not both"),
        Case::new("an empty volume request", with(vm(), "status.volumeRequests", json!([{}])))
            .refused("Status.volumeRequests", "VolumeRequests require one of either addVolumeOptions or removeVolumeOptions to be set"),
        Case::new("a volume added twice",
            with(vm(), "status.volumeRequests", json!([
                {"addVolumeOptions": {"name": "v", "disk": {"name": "v"}, "volumeSource": {"persistentVolumeClaim": {"claimName": "c"}}}},
                {"addVolumeOptions": {"name": "v", "disk": {"name": "v"}, "volumeSource": {"persistentVolumeClaim": {"claimName": "c"}}}}])))
            .refused("Status.volumeRequests", "AddVolume request for [v] aleady exists"),
        Case::new("a volume removed twice",
            with(vm(), "status.volumeRequests", json!([{"removeVolumeOptions": {"name": "v"}}, {"removeVolumeOptions": {"name": "v"}}])))
            .refused("Status.volumeRequests", "RemoveVolume request for [v] aleady exists"),
        Case::new("an added volume that clashes with the template's",
            with(vm(), "status.volumeRequests", json!([{"addVolumeOptions": {"name": "disk", "disk": {"name": "disk"}, "volumeSource": {"persistentVolumeClaim": {"claimName": "c"}}}}])))
            .refused("Status.volumeRequests", "AddVolume request for [disk] conflicts with an existing volume of the same name on the vmi template."),
        Case::new("a new volume request", with(vm(), "status.volumeRequests", json!([{"addVolumeOptions": {"name": "v", "disk": {"name": "v"}, "volumeSource": {"persistentVolumeClaim": {"claimName": "c"}}}}]))),
    ]);
}

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
            with(vm(), "status.volumeRequests", json!([{"addVolumeOptions": {"name": "v", "disk": {"name": "v", "disk": {"bus": "scsi"}}, "volumeSource": {"persistentVolumeClaim": {"claimName": "c"}}},
                                                          "removeVolumeOptions": {"name": "v"}}])))
            .refused("Status.volumeRequests", "VolumeRequests require either addVolumeOptions or removeVolumeOptions to be set, not both"),
        Case::new("an empty volume request", with(vm(), "status.volumeRequests", json!([{}])))
            .refused("Status.volumeRequests", "VolumeRequests require one of either addVolumeOptions or removeVolumeOptions to be set"),
        Case::new("a volume added twice",
            with(vm(), "status.volumeRequests", json!([
                {"addVolumeOptions": {"name": "v", "disk": {"name": "v", "disk": {"bus": "scsi"}}, "volumeSource": {"persistentVolumeClaim": {"claimName": "c"}}}},
                {"addVolumeOptions": {"name": "v", "disk": {"name": "v", "disk": {"bus": "scsi"}}, "volumeSource": {"persistentVolumeClaim": {"claimName": "c"}}}}])))
            .refused("Status.volumeRequests", "AddVolume request for [v] aleady exists"),
        Case::new("a volume removed twice",
            with(vm(), "status.volumeRequests", json!([{"removeVolumeOptions": {"name": "v"}}, {"removeVolumeOptions": {"name": "v"}}])))
            .refused("Status.volumeRequests", "RemoveVolume request for [v] aleady exists"),
        Case::new("an added volume that clashes with the template's",
            with(vm(), "status.volumeRequests", json!([{"addVolumeOptions": {"name": "disk", "disk": {"name": "disk", "disk": {"bus": "scsi"}}, "volumeSource": {"persistentVolumeClaim": {"claimName": "c"}}}}])))
            .refused("Status.volumeRequests", "AddVolume request for [disk] conflicts with an existing volume of the same name on the vmi template."),
        Case::new("a new volume request", with(vm(), "status.volumeRequests", json!([{"addVolumeOptions": {"name": "v", "disk": {"name": "v", "disk": {"bus": "scsi"}}, "volumeSource": {"persistentVolumeClaim": {"claimName": "c"}}}}]))),
    ]);
}

// ---- Instancetypes and preferences (pkg/instancetype/webhooks/vm/admitter.go) ----

/// A VM whose template leaves CPU and memory to its instancetype.
fn sized_vm(it: &str, kind: &str) -> Value {
    let mut v = vm();
    v["spec"]["template"]["spec"]["domain"]
        .as_object_mut()
        .expect("domain")
        .remove("resources");
    with(v, "spec.instancetype", json!({"name": it, "kind": kind}))
}

fn instancetype(kind: &str, name: &str, ns: Option<&str>, spec: Value) -> Value {
    let mut meta = json!({"name": name});
    if let Some(ns) = ns {
        meta["namespace"] = json!(ns);
    }
    json!({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": kind, "metadata": meta, "spec": spec})
}

fn cluster_it(name: &str, spec: Value) -> Value {
    instancetype("VirtualMachineClusterInstancetype", name, None, spec)
}

fn cluster_pref(name: &str, spec: Value) -> Value {
    instancetype("VirtualMachineClusterPreference", name, None, spec)
}

fn small() -> Value {
    json!({"cpu": {"guest": 2}, "memory": {"guest": "128Mi"}})
}

const CLUSTER_IT: &str = "VirtualMachineClusterInstancetype";

#[test]
fn instancetype_table() {
    let prefer = |v: Value, name: &str| {
        with(
            v,
            "spec.preference",
            json!({"name": name, "kind": "VirtualMachineClusterPreference"}),
        )
    };
    let revision = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": "vm-small-rev", "namespace": "default",
                     "labels": {"instancetype.kubevirt.io/object-name": "small"}},
        "data": {"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": CLUSTER_IT, "spec": small()},
        "revision": 1});
    check(vec![
        Case::new("an instancetype provides CPU and memory", sized_vm("small", CLUSTER_IT))
            .stored(vec![cluster_it("small", small())]),
        Case::new("template sockets conflict with the instancetype",
            with(sized_vm("small", CLUSTER_IT), "spec.template.spec.domain.cpu", json!({"sockets": 2})))
            .stored(vec![cluster_it("small", small())])
            .refused("spec.template.spec.domain.cpu.sockets", "VM field(s) spec.template.spec.domain.cpu.sockets conflicts with selected instance type"),
        Case::new("a template memory request conflicts with the instancetype",
            with(sized_vm("small", CLUSTER_IT), "spec.template.spec.domain.resources", json!({"requests": {"memory": "64Mi"}})))
            .stored(vec![cluster_it("small", small())])
            .refused("spec.template.spec.domain.resources.requests.memory", "VM field(s) spec.template.spec.domain.resources.requests.memory conflicts with selected instance type"),
        Case::new("a template CPU limit conflicts with the instancetype",
            with(sized_vm("small", CLUSTER_IT), "spec.template.spec.domain.resources", json!({"limits": {"cpu": "1"}})))
            .stored(vec![cluster_it("small", small())])
            .refused("spec.template.spec.domain.resources.limits.cpu", "conflicts with selected instance type"),
        Case::new("a node selector set by both conflicts",
            with(sized_vm("small", CLUSTER_IT), "spec.template.spec.nodeSelector", json!({"a": "b"})))
            .stored(vec![cluster_it("small", json!({"cpu": {"guest": 1}, "memory": {"guest": "128Mi"}, "nodeSelector": {"x": "y"}}))])
            .refused("spec.template.spec.nodeSelector", "VM field(s) spec.template.spec.nodeSelector conflicts with selected instance type"),
        Case::new("an annotation with another value conflicts",
            with(sized_vm("small", CLUSTER_IT), "spec.template.metadata", json!({"annotations": {"k": "vm"}})))
            .stored(vec![cluster_it("small", json!({"cpu": {"guest": 1}, "memory": {"guest": "128Mi"}, "annotations": {"k": "it"}}))])
            .refused("annotations.k", "VM field(s) annotations.k conflicts with selected instance type"),
        Case::new("an annotation with the same value does not",
            with(sized_vm("small", CLUSTER_IT), "spec.template.metadata", json!({"annotations": {"k": "it"}})))
            .stored(vec![cluster_it("small", json!({"cpu": {"guest": 1}, "memory": {"guest": "128Mi"}, "annotations": {"k": "it"}}))]),
        // KubeVirt's VM admitter goes on without an instancetype it cannot find, so a VM may
        // be created before it (the controller reports it).
        Case::new("a missing instancetype is not applied",
            with(sized_vm("absent", CLUSTER_IT), "spec.template.spec.domain.cpu", json!({"sockets": 2}))),
        Case::new("a namespaced instancetype is looked up in the VM's namespace only",
            with(sized_vm("small", "VirtualMachineInstancetype"), "spec.template.spec.domain.cpu", json!({"sockets": 2})))
            .stored(vec![instancetype("VirtualMachineInstancetype", "small", Some("other"), small())]),
        Case::new("a namespaced instancetype in the VM's namespace applies",
            with(sized_vm("small", "VirtualMachineInstancetype"), "spec.template.spec.domain.cpu", json!({"sockets": 2})))
            .stored(vec![instancetype("VirtualMachineInstancetype", "small", Some("default"), small())])
            .refused("spec.template.spec.domain.cpu.sockets", "conflicts with selected instance type"),
        Case::new("an instancetype name with ../ is never looked up",
            with(sized_vm("../other/small", "VirtualMachineInstancetype"), "spec.template.spec.domain.cpu", json!({"sockets": 2})))
            .stored(vec![instancetype("VirtualMachineInstancetype", "small", Some("other"), small())]),
        Case::new("offline validation skips the instancetype",
            with(sized_vm("small", CLUSTER_IT), "spec.template.spec.domain.cpu", json!({"sockets": 2})))
            .stored(vec![cluster_it("small", small())])
            .offline(),
        Case::new("revisionName pins the VM to a stored revision",
            with(with(sized_vm("small", CLUSTER_IT), "spec.instancetype.revisionName", json!("vm-small-rev")),
                 "spec.template.spec.domain.cpu", json!({"cores": 2})))
            .stored(vec![revision.clone()])
            .refused("spec.template.spec.domain.cpu.cores", "conflicts with selected instance type"),
        Case::new("the recorded revision is used when it copies the named instancetype",
            with(with(sized_vm("small", CLUSTER_IT), "status.instancetypeRef", json!({"controllerRevisionRef": {"name": "vm-small-rev"}})),
                 "spec.template.spec.domain.cpu", json!({"threads": 2})))
            .stored(vec![revision.clone()])
            .refused("spec.template.spec.domain.cpu.threads", "conflicts with selected instance type"),
        Case::new("a revisionName with ../ is never looked up",
            with(with(sized_vm("small", CLUSTER_IT), "spec.instancetype.revisionName", json!("../vm-small-rev")),
                 "spec.template.spec.domain.cpu", json!({"cores": 2})))
            .stored(vec![revision]),
        Case::new("a huge instancetype vCPU count is placed without overflow",
            sized_vm("huge", CLUSTER_IT))
            .stored(vec![cluster_it("huge", json!({"cpu": {"guest": i64::MAX}, "memory": {"guest": "128Mi"}}))]),
        // Preferences.
        Case::new("a preference's disk bus is applied before validation",
            prefer(vm(), "bad-bus"))
            .stored(vec![cluster_pref("bad-bus", json!({"devices": {"preferredDiskBus": "floppy"}}))])
            .refused("spec.template.spec.domain.devices.disks[0].disk.bus", "floppy"),
        Case::new("a spread preference needs a divisible vCPU count",
            prefer(sized_vm("three", CLUSTER_IT), "spread"))
            .stored(vec![cluster_it("three", json!({"cpu": {"guest": 3}, "memory": {"guest": "128Mi"}})),
                         cluster_pref("spread", json!({"cpu": {"preferredCPUTopology": "spread"}}))])
            .refused("instancetype.spec.cpu.guest", "3 vCPUs provided by the instance type are not divisible by the Spec.PreferSpreadSocketToCoreRatio or Spec.CPU.PreferSpreadOptions.Ratio of 2 provided by the preference"),
        Case::new("a preference's CPU requirement the instancetype does not meet",
            prefer(sized_vm("small", CLUSTER_IT), "big"))
            .stored(vec![cluster_it("small", small()),
                         cluster_pref("big", json!({"requirements": {"cpu": {"guest": 4}}}))])
            .refused("spec.instancetype", "failure checking preference requirements: insufficient CPU resources of 2 vCPU provided by instance type, preference requires 4 vCPU"),
        Case::new("a preference's memory requirement the instancetype does not meet",
            prefer(sized_vm("small", CLUSTER_IT), "big"))
            .stored(vec![cluster_it("small", small()),
                         cluster_pref("big", json!({"requirements": {"memory": {"guest": "1Gi"}}}))])
            .refused("spec.instancetype", "failure checking preference requirements: insufficient Memory resources of 128Mi provided by instance type, preference requires 1Gi"),
        Case::new("a preference's memory requirement the VM does not meet",
            prefer(vm(), "big"))
            .stored(vec![cluster_pref("big", json!({"requirements": {"memory": {"guest": "1Gi"}}}))])
            .refused("spec.template.spec.domain.memory", "failure checking preference requirements: insufficient Memory resources of 64Mi provided by VirtualMachine, preference requires 1Gi"),
        Case::new("a preference's CPU requirement the VM's sockets do not meet",
            prefer(with(vm(), "spec.template.spec.domain.cpu", json!({"sockets": 1})), "big"))
            .stored(vec![cluster_pref("big", json!({"requirements": {"cpu": {"guest": 2}}}))])
            .refused("spec.template.spec.domain.cpu.sockets", "failure checking preference requirements: insufficient CPU resources of 1 vCPU provided by VirtualMachine, preference requires 2 vCPU provided as sockets"),
        Case::new("a preference's architecture requirement",
            prefer(vm(), "arm"))
            .stored(vec![cluster_pref("arm", json!({"requirements": {"architecture": "arm64"}}))])
            .refused("spec.template.spec.architecture", "failure checking preference requirements: preference requires architecture arm64 but amd64 is being requested"),
        Case::new("requirements that are met",
            prefer(sized_vm("small", CLUSTER_IT), "ok"))
            .stored(vec![cluster_it("small", small()),
                         cluster_pref("ok", json!({"requirements": {"cpu": {"guest": 2}, "memory": {"guest": "128Mi"}}}))]),
    ]);
}

/// KubeVirt: "should not apply instancetype to the VMISpec of the original VM".
#[test]
fn the_stored_vm_keeps_its_template_as_written() {
    let c = Case::new("an instancetype VM", sized_vm("small", CLUSTER_IT))
        .stored(vec![cluster_it("small", small())]);
    let stored = c.run().expect("admitted");
    let domain = &stored["spec"]["template"]["spec"]["domain"];
    assert!(domain.get("cpu").is_none(), "{domain}");
    assert!(domain.get("memory").is_none(), "{domain}");
}

// ---- Template metadata: reserved labels (ValidateVirtualMachineInstanceMetadata) ----

#[test]
fn template_labels_table() {
    let labelled = |k: &str| with(vm(), "spec.template.metadata", json!({"labels": {k: "x"}}));
    check(vec![
        Case::new(
            "a user may not put KubeVirt's node label on the template",
            labelled("kubevirt.io/nodeName"),
        )
        .refused(
            "spec.template.metadata.labels",
            "creation of the following reserved kubevirt.io/ labels on a VMI object is prohibited",
        ),
        Case::new("nor created-by", labelled("kubevirt.io/created-by")).refused(
            "spec.template.metadata.labels",
            "reserved kubevirt.io/ labels",
        ),
        Case::new(
            "KubeVirt's components may",
            labelled("kubevirt.io/nodeName"),
        )
        .by(admin()),
        Case::new(
            "other kubevirt.io labels are fine",
            labelled("kubevirt.io/domain"),
        ),
    ]);
}

// ---- Live update (validateLiveUpdateFeatures) ----

fn hotplug_vm() -> Value {
    let mut v = with(
        vm(),
        "spec.template.spec.domain.memory",
        json!({"guest": "1Gi", "maxGuest": "4Gi"}),
    );
    v["spec"]["template"]["spec"]["domain"]
        .as_object_mut()
        .expect("domain")
        .remove("resources");
    v
}

#[test]
fn live_update_table() {
    let mem = |f: &str, v: Value| with(hotplug_vm(), &format!("spec.template.spec.domain.{f}"), v);
    let guest = "spec.template.spec.domain.memory.guest";
    check(vec![
        Case::new("memory hotplug within maxGuest", hotplug_vm()),
        Case::new("realtime", mem("cpu", json!({"dedicatedCpuPlacement": true, "realtime": {}, "numa": {"guestMappingPassthrough": {}}})))
            .refused(guest, "Memory hotplug is not compatible with realtime VMs"),
        Case::new("guest mapping passthrough", mem("cpu", json!({"dedicatedCpuPlacement": true, "numa": {"guestMappingPassthrough": {}}})))
            .refused(guest, "Memory hotplug is not compatible with guest mapping passthrough"),
        Case::new("launchSecurity", mem("launchSecurity", json!({"sev": {}})))
            .refused(guest, "Memory hotplug is not compatible with encrypted VMs"),
        Case::new("guest memory is not set", mem("memory", json!({"maxGuest": "4Gi"})))
            .refused(guest, "Guest memory must be configured when memory hotplug is enabled"),
        Case::new("guest memory is greater than maxGuest", mem("memory", json!({"guest": "4112Mi", "maxGuest": "4Gi"})))
            .refused(guest, "Guest memory is greater than the configured maxGuest memory"),
        Case::new("maxGuest is not aligned", mem("memory", json!({"guest": "1Gi", "maxGuest": "2049Mi"})))
            .refused(guest, "MaxGuest must be 2Mi aligned"),
        Case::new("guest memory is not aligned", mem("memory", json!({"guest": "1025Mi", "maxGuest": "4Gi"})))
            .refused(guest, "Guest memory must be 2Mi aligned"),
        Case::new("guest memory with 1Gi hugepages is not aligned", mem("memory", json!({"guest": "2G", "maxGuest": "16Gi", "hugepages": {"pageSize": "1Gi"}})))
            .refused(guest, "Guest memory must be 1Gi aligned"),
        Case::new("architecture is not amd64", with(hotplug_vm(), "spec.template.spec.architecture", json!("arm64")))
            .refused(guest, "Memory hotplug is only available for x86_64 VMs"),
        Case::new("guest memory is less than 1Gi", mem("memory", json!({"guest": "512Mi", "maxGuest": "4Gi"})))
            .refused(guest, "Memory hotplug is only available for VMs with at least 1Gi of guest memory"),
        Case::new("the Stage rollout strategy does not check it", mem("memory", json!({"guest": "512Mi", "maxGuest": "4Gi"})))
            .configured(stage),
        // The VMI's own rule refuses it under any strategy, as KubeVirt's does.
        Case::new("sockets over maxSockets under Stage", with(vm(), "spec.template.spec.domain.cpu", json!({"sockets": 4, "maxSockets": 2})))
            .configured(stage)
            .refused("spec.template.spec.domain.cpu.sockets", "Number of sockets in CPU topology is greater than the maximum sockets allowed"),
    ]);
}

// ---- Run strategies and warnings ----

#[test]
fn run_strategy_table() {
    let rs = |s: &str| with(vm(), "spec.runStrategy", json!(s));
    check(vec![
        Case::new("Halted", rs("Halted")),
        Case::new("Manual", rs("Manual")),
        Case::new("Always", rs("Always")),
        Case::new("RerunOnFailure", rs("RerunOnFailure")),
        Case::new("Once", rs("Once")),
        Case::new("invalid", rs("invalid"))
            .refused("spec.runStrategy", "Invalid RunStrategy (invalid)"),
        Case::new(
            "neither running nor runStrategy",
            with(vm(), "spec.runStrategy", Value::Null),
        )
        .refused("spec.running", "RunStrategy must be specified"),
    ]);
}

#[test]
fn spec_running_is_accepted_with_kubevirts_deprecation_warning() {
    let running = with(
        with(vm(), "spec.runStrategy", Value::Null),
        "spec.running",
        json!(false),
    );
    let a = Case::new("running: false", running)
        .admitted()
        .expect("accepted");
    assert_eq!(
        a.warnings,
        ["spec.running is deprecated, please use spec.runStrategy instead."]
    );
    let a = Case::new("runStrategy", vm()).admitted().expect("accepted");
    assert!(a.warnings.is_empty(), "{:?}", a.warnings);
}

// ---- Volume requests against the running VMI (validateVolumeRequests) ----

/// KubeVirt's running-VM fixture: the template's volumes, and a running VMI with one more.
fn running_vm(requests: Value) -> (Value, Value) {
    let disks = json!([{"name": "testdisk"}, {"name": "testpvcdisk"}, {"name": "a-pvcdisk"}, {"name": "t-pvcdisk"}]);
    let volumes = json!([
        {"name": "testdisk", "containerDisk": {"image": "fake"}},
        {"name": "testpvcdisk", "persistentVolumeClaim": {"claimName": "testpvcdiskclaim"}},
        {"name": "a-pvcdisk", "persistentVolumeClaim": {"claimName": "a-pvcdiskclaim"}},
        {"name": "t-pvcdisk", "persistentVolumeClaim": {"claimName": "t-pvcdiskclaim"}}]);
    let mut v = with(
        vm(),
        "spec.template.spec.domain.devices.disks",
        disks.clone(),
    );
    v = with(v, "spec.template.spec.volumes", volumes.clone());
    v = with(
        v,
        "status",
        json!({"ready": true, "volumeRequests": requests}),
    );
    let mut vmi_disks = disks.as_array().expect("disks").clone();
    vmi_disks.push(json!({"name": "testpvcdisk-extra"}));
    let mut vmi_volumes = volumes.as_array().expect("volumes").clone();
    vmi_volumes.push(json!({"name": "testpvcdisk-extra", "persistentVolumeClaim": {"claimName": "testpvcdiskclaim-extra"}}));
    let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm", "namespace": "default"},
        "spec": {"domain": {"devices": {"disks": vmi_disks}, "resources": {"requests": {"memory": "64Mi"}}},
                 "volumes": vmi_volumes}});
    (v, vmi)
}

fn add(name: &str, disk: Value, claim: &str) -> Value {
    json!([{"addVolumeOptions": {"name": name, "disk": with(disk, "name", json!(name)),
                                 "volumeSource": {"persistentVolumeClaim": {"claimName": claim}}}}])
}

fn on_running(name: &'static str, requests: Value) -> Case {
    let (v, vmi) = running_vm(requests);
    Case::new(name, v).stored(vec![vmi])
}

fn on_migrating(name: &'static str, requests: Value) -> Case {
    let (v, mut vmi) = running_vm(requests);
    vmi["status"] = json!({"migrationState": {"startTimestamp": "2026-01-01T00:00:00Z"}});
    Case::new(name, v).stored(vec![vmi])
}

#[test]
fn volume_requests_on_a_running_vm_table() {
    let f = "Status.volumeRequests";
    let scsi = json!({"disk": {"bus": "scsi"}});
    check(vec![
        on_running("add a volume", add("testdisk2", scsi.clone(), "madeup")),
        on_running("add a volume (virtio)", add("testdisk2", json!({"disk": {"bus": "virtio"}}), "madeup")),
        on_running("add a LUN", add("testlun2", json!({"lun": {"bus": "scsi"}}), "madeupLUN")),
        on_running("a LUN on virtio", add("testlun2", json!({"lun": {"bus": "virtio"}}), "madeupLUN"))
            .refused(f, "AddVolume request for LUN [testlun2] requires bus to be 'scsi'. [virtio] is not permitted."),
        on_running("a LUN on usb", add("testLUN-usb", json!({"lun": {"bus": "usb"}}), "invalidCombination"))
            .refused(f, "requires bus to be 'scsi'. [usb] is not permitted."),
        on_running("a CD-ROM", add("testCDRom", json!({"cdrom": {"bus": "scsi"}}), "cdRomtest"))
            .refused(f, "AddVolume request for [testCDRom] requires diskDevice of type 'disk' or 'lun' to be used."),
        on_running("dedicated IOThreads on scsi", add("testDisk", json!({"disk": {"bus": "scsi"}, "dedicatedIOThread": true}), "diskTest"))
            .refused(f, "AddVolume request for [testDisk] requires virtio bus for IOThreads."),
        on_running("dedicated IOThreads on virtio", add("testdisk2", json!({"disk": {"bus": "virtio"}, "dedicatedIOThread": true}), "madeup")),
        on_running("a volume that conflicts with the running VMI's", add("testpvcdisk-extra", scsi.clone(), "NOT-IDENTICAL-TO-WHAT-IS-IN-VMI"))
            .refused(f, "AddVolume request for [testpvcdisk-extra] conflicts with an existing volume of the same name on currently running vmi"),
        on_running("a volume identical to the VMI's", add("a-pvcdisk", scsi.clone(), "a-pvcdiskclaim")),
        on_running("a disk on a bus no disk may have", add("testdisk2", json!({"disk": {"bus": "floppy"}}), "madeup"))
            .refused(f, "requires bus to be 'scsi' or 'virtio'. [floppy] is not permitted."),
        on_migrating("an add while the VMI migrates", add("testdisk2", scsi, "madeup"))
            .refused("spec", "Cannot handle volume requests while VMI migration is in progress"),
        on_migrating("a remove while the VMI migrates", json!([{"removeVolumeOptions": {"name": "testdisk"}}]))
            .refused("spec", "Cannot handle volume requests while VMI migration is in progress"),
    ]);
}

//! KubeVirt's vmi-update-admitter_test.go: who may change a VMI's spec and its reserved labels.

mod admitters;
use admitters::*;
use serde_json::{json, Value};

fn vmi() -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
           "metadata": {"name": "t", "namespace": "default", "labels": {"app": "x"}},
           "spec": {"domain": {"cpu": {"sockets": 1, "maxSockets": 4},
                               "memory": {"guest": "128Mi", "maxGuest": "512Mi"},
                               "devices": {}}}})
}

/// The VMI as the server stored it: admitted, defaults applied.
fn stored() -> Value {
    Case::new("store", vmi())
        .by(admin())
        .run()
        .expect("valid VMI")
}

#[test]
fn vmi_update_table() {
    let old = stored();
    check(vec![
        Case::new("an unchanged spec is accepted", old.clone()).old(old.clone()),
        Case::new("a user's spec change is refused", with(old.clone(), "spec.domain.cpu.sockets", json!(2)))
            .old(old.clone())
            .refused("", "update of VMI object is restricted"),
        Case::new("a hostile user's volume injection is refused",
            with(old.clone(), "spec.volumes", json!([{"name": "x", "hostDisk": {"path": "/etc/shadow", "type": "Disk"}}])))
            .old(old.clone())
            .refused("", "update of VMI object is restricted"),
        Case::new("KubeVirt's controller may change the spec (hotplug)",
            with(old.clone(), "spec.domain.cpu.sockets", json!(2)))
            .old(old.clone())
            .by(kubevirt_api::UserInfo { username: "system:serviceaccount:kubevirt:kubevirt-controller".into(), groups: vec![] }),
        Case::new("system:masters (our controllers) may change the spec",
            with(old.clone(), "spec.domain.cpu.sockets", json!(2)))
            .old(old.clone())
            .by(admin()),
        Case::new("a service account of another namespace is a plain user",
            with(old.clone(), "spec.domain.cpu.sockets", json!(2)))
            .old(old.clone())
            .by(user("system:serviceaccount:evil:kubevirt-controller"))
            .refused("", "update of VMI object is restricted"),
        Case::new("maxSockets may not change, even for KubeVirt",
            with(old.clone(), "spec.domain.cpu.maxSockets", json!(8)))
            .old(old.clone())
            .by(admin())
            .refused("", "CPU topology maxSockets changed"),
        Case::new("maxGuest may not change, even for KubeVirt",
            with(old.clone(), "spec.domain.memory.maxGuest", json!("1Gi")))
            .old(old.clone())
            .by(admin())
            .refused("", "Memory maxGuest changed"),
        Case::new("the same maxGuest written differently is no change",
            with(old.clone(), "spec.domain.memory.maxGuest", json!("0.5Gi")))
            .old(old.clone())
            .by(admin()),
        Case::new("a user may change ordinary labels",
            with(old.clone(), "metadata.labels", json!({"app": "y"})))
            .old(old.clone()),
        Case::new("a user may not set a reserved label",
            with(old.clone(), "metadata.labels", json!({"app": "x", "kubevirt.io/nodeName": "node01"})))
            .old(old.clone())
            .refused("", "modification of the following reserved kubevirt.io/ labels on a VMI object is prohibited"),
        Case::new("a user may not remove a reserved label",
            with(with(old.clone(), "metadata.labels", json!({})), "metadata.name", json!("t")))
            .old(with(old.clone(), "metadata.labels", json!({"kubevirt.io/created-by": "uid"})))
            .refused("", "reserved kubevirt.io/ labels"),
        Case::new("KubeVirt may set reserved labels",
            with(old.clone(), "metadata.labels", json!({"kubevirt.io/nodeName": "node01"})))
            .old(old.clone())
            .by(admin()),
        Case::new("creation is not an update", vmi()),
    ]);
}

/// vmi-create-admitter's restricted labels (`ValidateVirtualMachineInstanceMetadata`): only
/// KubeVirt's components may create a VMI carrying a reserved `kubevirt.io/` label.
#[test]
fn vmi_create_reserved_labels_table() {
    let labelled = |k: &str| with(vmi(), "metadata.labels", json!({"app": "x", k: "v"}));
    const MSG: &str =
        "creation of the following reserved kubevirt.io/ labels on a VMI object is prohibited";
    let mut cases = vec![
        Case::new("a user's VMI without reserved labels", vmi()),
        Case::new(
            "other kubevirt.io/ labels are the user's",
            labelled("kubevirt.io/domain"),
        ),
        Case::new(
            "a look-alike key is not reserved",
            labelled("kubevirt.io/created-by-me"),
        ),
        Case::new(
            "a hostile user's created-by, pointing at someone else's VM",
            labelled("kubevirt.io/created-by"),
        )
        .refused("metadata.labels", MSG),
        Case::new(
            "a service account of another namespace is a plain user",
            labelled("kubevirt.io/nodeName"),
        )
        .by(user("system:serviceaccount:evil:kubevirt-controller"))
        .refused("metadata.labels", MSG),
        Case::new(
            "KubeVirt's controller service account",
            labelled("kubevirt.io/created-by"),
        )
        .by(kubevirt_api::UserInfo {
            username: "system:serviceaccount:kubevirt:kubevirt-controller".into(),
            groups: vec![],
        }),
        Case::new(
            "system:masters (our controller creates VMIs for VMs as admin)",
            labelled("kubevirt.io/created-by"),
        )
        .by(admin()),
        Case::new(
            "the server's own writes (no user)",
            labelled("kubevirt.io/created-by"),
        )
        .anonymous(),
    ];
    for k in [
        "kubevirt.io/migrationJobUID",
        "kubevirt.io/nodeName",
        "kubevirt.io/migrationTargetNodeName",
        "kubevirt.io/schedulable",
        "kubevirt.io/install-strategy",
    ] {
        cases.push(Case::new("every reserved label", labelled(k)).refused("metadata.labels", MSG));
    }
    check(cases);
}

// ---- Hotplug storage (pkg/storage/admitters/storagehotplug_test.go, "Storage Hotplug
// Admitter"), through the VMI update admitter as KubeVirt's components write it ----
//
// KubeVirt tells hotplugged volumes from permanent ones by `status.volumeStatus`
// (`makeStatus(n, h)`: the first n-h volumes are permanent, the rest hotplugged); we by the
// volume's `hotpluggable` flag (`Volume::is_hotpluggable`), which KubeVirt's virt-api sets on
// every volume it hotplugs. So each ported case marks hotpluggable exactly the volumes
// KubeVirt's status marks hotplugged: index >= `hot_from` (= n-h).
//
// Our admission also defaults updates (KubeVirt's VMI mutator runs on creation only), so a
// volume without a disk gets the default one: the cases KubeVirt builds from a volume without
// a disk reach the same rules here with a disk without a volume, or a filesystem.

/// KubeVirt's `makeVolumes`: DataVolume volumes `volume-name-i`, hotpluggable from `hot_from`.
fn vols(hot_from: usize, idx: &[usize]) -> Vec<Value> {
    idx.iter()
        .map(|&i| {
            let mut dv = json!({"name": format!("dv-name-{i}")});
            if i >= hot_from {
                dv["hotpluggable"] = json!(true);
            }
            json!({"name": format!("volume-name-{i}"), "dataVolume": dv})
        })
        .collect()
}

/// KubeVirt's `makeInvalidVolumes(total, bad)`: volume `bad` is a containerDisk.
fn invalid_vols(hot_from: usize, total: usize, bad: usize) -> Vec<Value> {
    (0..total)
        .map(|i| {
            if i == bad {
                json!({"name": format!("volume-name-{i}"), "containerDisk": {"image": "fake"}})
            } else {
                vols(hot_from, &[i]).remove(0)
            }
        })
        .collect()
}

/// `makeVolumesWithMemoryDumpVol(total, dump)`.
fn vols_with_dump(hot_from: usize, total: usize, dump: usize) -> Vec<Value> {
    (0..total)
        .map(|i| {
            if i == dump {
                json!({"name": format!("volume-name-{i}"),
                       "memoryDump": {"claimName": format!("volume-name-{i}"), "hotpluggable": true}})
            } else {
                vols(hot_from, &[i]).remove(0)
            }
        })
        .collect()
}

/// `makeDisksWithBus` and friends: `kind` is `disk`, `lun` or `cdrom`; boot order i+1.
fn disks(kind: &str, bus: &str, idx: &[usize]) -> Vec<Value> {
    idx.iter()
        .map(|&i| json!({"name": format!("volume-name-{i}"), kind: {"bus": bus}, "bootOrder": i + 1}))
        .collect()
}

/// `makeDisksNoVolume`.
fn disks_no_volume(idx: &[usize]) -> Vec<Value> {
    idx.iter()
        .map(|&i| json!({"name": format!("invalid-volume-name-{i}"), "disk": {"bus": "scsi"}}))
        .collect()
}

/// With the last disk changed by `f`.
fn last(mut d: Vec<Value>, f: fn(&mut Value)) -> Vec<Value> {
    if let Some(x) = d.last_mut() {
        f(x);
    }
    d
}

fn hp_vmi(volumes: Vec<Value>, disks: Vec<Value>) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
           "metadata": {"name": "testvmi", "namespace": "default"},
           "spec": {"domain": {"resources": {"requests": {"memory": "128Mi"}},
                               "devices": {"disks": disks}},
                    "volumes": volumes}})
}

/// The stored VMI: defaulted as admission stores it (not validated: some of KubeVirt's "old"
/// VMIs could not have been created).
fn stored_as_is(v: Value) -> Value {
    let mut vmi: kubevirt_api::VirtualMachineInstance = serde_json::from_value(v).expect("a VMI");
    kubevirt_api::defaults::default_vmi(&mut vmi, &Default::default());
    serde_json::to_value(vmi).expect("encodes")
}

/// KubeVirt's controller replacing `old` by `new`.
fn hotplug(name: &'static str, new: Value, old: Value) -> Case {
    Case::new(name, new).old(stored_as_is(old)).by(admin())
}

fn without_declarative_hotplug(mut c: Case) -> Case {
    c.opts.validation.disabled_feature_gates = vec!["DeclarativeHotplugVolumes".into()];
    c
}

#[test]
fn hotplug_storage_as_kubevirt_tests_it() {
    let scsi = |idx: &[usize]| disks("disk", "scsi", idx);
    check(vec![
        hotplug("accept if no volumes are there or added", hp_vmi(vec![], vec![]), hp_vmi(vec![], vec![])),
        hotplug("reject if #volumes != #disks (a disk without a volume)",
            hp_vmi(vols(0, &[1]), scsi(&[1, 2])),
            hp_vmi(vols(0, &[1]), scsi(&[1])))
            .refused("", "mismatch between volumes declared (1) and required (2)"),
        hotplug("reject if we remove a permanent volume",
            hp_vmi(vec![], vec![]),
            hp_vmi(vols(1, &[0]), scsi(&[0])))
            .refused("", "Number of permanent volumes has changed"),
        // KubeVirt's data: the disks name no volume; the defaulted disks make them too many.
        hotplug("reject if we add a disk without a matching volume",
            hp_vmi(vols(1, &[0, 1]), disks_no_volume(&[0, 1])),
            hp_vmi(vols(1, &[0]), disks_no_volume(&[0])))
            .refused("", "mismatch between volumes declared (2) and required (4)"),
        hotplug("reject a hotplugged volume without its disk (used by a filesystem)",
            with(hp_vmi(vols(1, &[0, 1]), scsi(&[0])), "spec.domain.devices.filesystems", json!([{"name": "volume-name-1", "virtiofs": {}}])),
            hp_vmi(vols(1, &[0]), scsi(&[0])))
            .gates(&["EnableVirtioFsStorageVolumes"])
            .refused("", "disk volume-name-1 does not exist"),
        hotplug("reject if we modify existing volume to be invalid",
            hp_vmi(vols(1, &[0, 1]), disks_no_volume(&[0, 1])),
            hp_vmi(vols(1, &[0, 1]), scsi(&[0, 1])))
            .refused("", "mismatch between volumes declared (2) and required (4)"),
        hotplug("reject if a permanent volume's disk changes",
            hp_vmi(vols(1, &[0, 1]), [disks("disk", "virtio", &[0]), scsi(&[1])].concat()),
            hp_vmi(vols(1, &[0, 1]), scsi(&[0, 1])))
            .refused("", "permanent disk volume-name-0, changed"),
        // KubeVirt: "hotplug volume volume-name-1, changed" (its status still calls the
        // containerDisk hotplugged); a containerDisk is permanent here.
        hotplug("reject if a hotplug volume changed (into a containerDisk)",
            hp_vmi(invalid_vols(1, 2, 1), scsi(&[0, 1])),
            hp_vmi(vols(1, &[0, 1]), scsi(&[0, 1])))
            .refused("", "Number of permanent volumes has changed"),
        // KubeVirt: "volume volume-name-1 is not a PVC or DataVolume"; the same reason here:
        // only PVCs and DataVolumes are hotpluggable, anything else is a new permanent volume.
        hotplug("reject if we add volumes that are not PVC or DV",
            hp_vmi(invalid_vols(1, 2, 1), scsi(&[0, 1])),
            hp_vmi(vols(1, &[0]), scsi(&[0])))
            .refused("", "Number of permanent volumes has changed"),
        hotplug("accept if we add volumes and disk properly",
            hp_vmi(vols(1, &[0, 1]), scsi(&[0, 1])),
            hp_vmi(vols(1, &[0]), scsi(&[0]))),
        hotplug("accept if we add volumes and disk properly (virtio bus)",
            hp_vmi(vols(1, &[0, 1]), disks("disk", "virtio", &[0, 1])),
            hp_vmi(vols(1, &[0]), disks("disk", "virtio", &[0]))),
        hotplug("reject if we hotplug a volume with dedicated IOThreads",
            hp_vmi(vols(1, &[0, 1]), last(scsi(&[0, 1]), |d| d["dedicatedIOThread"] = json!(true))),
            hp_vmi(vols(1, &[0]), scsi(&[0])))
            .refused("", "Hotplug configuration for [volume-name-1] requires virtio bus for IOThreads."),
        hotplug("accept if we hotplug a virtio volume with dedicated IOThreads",
            hp_vmi(vols(1, &[0, 1]), last(disks("disk", "virtio", &[0, 1]), |d| d["dedicatedIOThread"] = json!(true))),
            hp_vmi(vols(1, &[0]), disks("disk", "virtio", &[0]))),
        hotplug("accept if we add LUN disk with valid SCSI bus",
            hp_vmi(vols(1, &[0, 1]), disks("lun", "scsi", &[0, 1])),
            hp_vmi(vols(1, &[0]), disks("lun", "scsi", &[0]))),
        hotplug("reject if we add disk with invalid bus",
            hp_vmi(vols(1, &[0, 1]), last(scsi(&[0, 1]), |d| d["disk"]["bus"] = json!("invalid"))),
            hp_vmi(vols(1, &[0]), scsi(&[0])))
            .refused("", "Hotplug configuration for disk [volume-name-1] requires bus to be 'scsi' or 'virtio'. [invalid] is not permitted."),
        hotplug("reject if we add LUN disk with invalid bus",
            hp_vmi(vols(1, &[0, 1]), last(disks("lun", "scsi", &[0, 1]), |d| d["lun"]["bus"] = json!("invalid"))),
            hp_vmi(vols(1, &[0]), disks("lun", "scsi", &[0])))
            .refused("", "Hotplug configuration for LUN [volume-name-1] requires bus to be 'scsi'. [invalid] is not permitted."),
        hotplug("reject if we add disk with neither Disk nor LUN type",
            hp_vmi(vols(1, &[0, 1]), disks("cdrom", "scsi", &[0, 1])),
            hp_vmi(vols(1, &[0]), disks("cdrom", "scsi", &[0])))
            .refused("", "Hotplug configuration for [volume-name-1] requires diskDevice of type 'disk' or 'lun' to be used."),
        without_declarative_hotplug(hotplug("allow cd-rom inject",
            hp_vmi(vols(1, &[0, 1]), disks("cdrom", "scsi", &[0, 1])),
            hp_vmi(vols(1, &[0]), disks("cdrom", "scsi", &[0, 1])))),
        hotplug("allow cd-rom eject (DeclarativeHotplugVolumes)",
            hp_vmi(vols(1, &[0]), disks("cdrom", "scsi", &[0, 1])),
            hp_vmi(vols(1, &[0, 1]), disks("cdrom", "scsi", &[0, 1]))),
        without_declarative_hotplug(hotplug("reject cd-rom eject",
            hp_vmi(vols(1, &[0]), disks("cdrom", "scsi", &[0, 1])),
            hp_vmi(vols(1, &[0, 1]), disks("cdrom", "scsi", &[0, 1]))))
            .refused("", "mismatch between volumes declared (1) and required (2)"),
        hotplug("reject if we add disk with invalid boot order",
            hp_vmi(vols(1, &[0, 1]), last(scsi(&[0, 1]), |d| d["bootOrder"] = json!(0))),
            hp_vmi(vols(1, &[0]), scsi(&[0])))
            .refused("spec.domain.devices.disks[1].bootOrder", "spec.domain.devices.disks[1] must have a boot order > 0, if supplied"),
        // KubeVirt accepts a memory dump volume added by its memory-dump controller; we have
        // no memory dumps, and such a volume is not hotpluggable here.
        hotplug("a memory dump volume without a matching disk (accepted by KubeVirt)",
            hp_vmi(vols_with_dump(2, 3, 2), scsi(&[0, 1])),
            hp_vmi(vols(2, &[0, 1]), scsi(&[0, 1])))
            .refused("", "Number of permanent volumes has changed"),
        hotplug("reject if #volumes != #disks even when there is memory dump volume",
            hp_vmi(vols_with_dump(0, 3, 2), scsi(&[0, 1, 3])),
            hp_vmi(vols_with_dump(0, 3, 2), scsi(&[0, 1])))
            .refused("", "mismatch between volumes declared (2) and required (3)"),
    ]);
}

#[test]
fn hotplug_storage_with_filesystems() {
    let fs = |v: Value| {
        with(
            v,
            "spec.domain.devices.filesystems",
            json!([{"name": "volume-name-1", "virtiofs": {}}]),
        )
    };
    let scsi = |idx: &[usize]| disks("disk", "scsi", idx);
    check(vec![
        hotplug(
            "accept if volume without matching disk is used by filesystem",
            fs(hp_vmi(vols(2, &[0, 1, 2]), scsi(&[0, 2]))),
            fs(hp_vmi(vols(2, &[0, 1]), scsi(&[0]))),
        )
        .gates(&["EnableVirtioFsStorageVolumes"]),
        hotplug(
            "reject if #volumes != #disks even when there are volumes used by filesystems",
            fs(hp_vmi(vols(2, &[0, 1, 2]), scsi(&[0, 2, 3]))),
            fs(hp_vmi(vols(2, &[0, 1, 2]), scsi(&[0, 2]))),
        )
        .gates(&["EnableVirtioFsStorageVolumes"])
        .refused("", "mismatch between volumes declared (3) and required (4)"),
    ]);
}

#[test]
fn hotplug_storage_migrated_volumes() {
    let vmi = |claim: &str, hot: bool| {
        let pvc = |c: &str| json!({"claimName": c, "hotpluggable": hot});
        hp_vmi(
            vec![
                json!({"name": "vol0", "persistentVolumeClaim": pvc("pvc0")}),
                json!({"name": "vol1", "persistentVolumeClaim": pvc(claim)}),
            ],
            vec![
                json!({"name": "vol0", "disk": {"bus": "virtio"}}),
                json!({"name": "vol1", "disk": {"bus": "virtio"}}),
            ],
        )
    };
    let migrating = |v: Value| {
        with(
            v,
            "status",
            json!({"migratedVolumes": [{"volumeName": "vol1",
            "sourcePVCInfo": {"claimName": "pvc1"}, "destinationPVCInfo": {"claimName": "pvc1"}}]}),
        )
    };
    check(vec![
        hotplug(
            "a migrated permanent volume may change",
            migrating(vmi("pvc2", false)),
            vmi("pvc1", false),
        ),
        hotplug(
            "a migrated hotplugged volume may change",
            migrating(vmi("pvc2", true)),
            vmi("pvc1", true),
        ),
        hotplug(
            "a permanent volume that is not migrated may not",
            vmi("pvc2", false),
            vmi("pvc1", false),
        )
        .refused("", "permanent volume vol1, changed"),
        hotplug(
            "a hotplugged volume that is not migrated may not",
            vmi("pvc2", true),
            vmi("pvc1", true),
        )
        .refused("", "hotplug volume vol1, changed"),
    ]);
}

/// Our own cases: what a hotplug may and may not do, and what a compromised component could try.
#[test]
fn hotplug_storage_edges_and_hostile_updates() {
    let scsi = |idx: &[usize]| disks("disk", "scsi", idx);
    let root = |mut v: Value| {
        v["spec"]["volumes"]
            .as_array_mut()
            .expect("volumes")
            .insert(
                0,
                json!({"name": "root", "containerDisk": {"image": "demo"}}),
            );
        v["spec"]["domain"]["devices"]["disks"]
            .as_array_mut()
            .expect("disks")
            .insert(0, json!({"name": "root", "disk": {"bus": "virtio"}}));
        v
    };
    check(vec![
        hotplug("unplugging a hotplugged volume and its disk",
            root(hp_vmi(vols(1, &[0]), scsi(&[0]))),
            root(hp_vmi(vols(1, &[0, 1]), scsi(&[0, 1])))),
        hotplug("a hotplugged volume's source may not change",
            root(hp_vmi(vec![json!({"name": "volume-name-1", "dataVolume": {"name": "other", "hotpluggable": true}})], scsi(&[1]))),
            root(hp_vmi(vols(1, &[1]), scsi(&[1]))))
            .refused("", "hotplug volume volume-name-1, changed"),
        hotplug("a hotplugged disk may not change",
            root(hp_vmi(vols(1, &[1]), disks("disk", "virtio", &[1]))),
            root(hp_vmi(vols(1, &[1]), scsi(&[1]))))
            .refused("", "hotplug disk volume-name-1, changed"),
        hotplug("a permanent volume may not become hotpluggable",
            root(hp_vmi(vols(0, &[0]), scsi(&[0]))),
            root(hp_vmi(vols(1, &[0]), scsi(&[0]))))
            .refused("", "Number of permanent volumes has changed"),
        hotplug("a PVC without the hotpluggable flag is not hotplugged",
            root(hp_vmi(vec![json!({"name": "data", "persistentVolumeClaim": {"claimName": "pvc"}})], vec![json!({"name": "data", "disk": {"bus": "scsi"}})])),
            root(hp_vmi(vec![], vec![])))
            .refused("", "Number of permanent volumes has changed"),
        hotplug("hostile: swapping the containerDisk image of a running VMI",
            with(root(hp_vmi(vec![], vec![])), "spec.volumes", json!([{"name": "root", "containerDisk": {"image": "evil"}}])),
            root(hp_vmi(vec![], vec![])))
            .refused("", "permanent volume root, changed"),
        hotplug("hostile: plugging a hostDisk in",
            root(hp_vmi(vec![json!({"name": "x", "hostDisk": {"path": "/etc/shadow", "type": "Disk"}})], vec![json!({"name": "x", "disk": {"bus": "scsi"}})])),
            root(hp_vmi(vec![], vec![])))
            .gates(&["HostDisk"])
            .refused("", "Number of permanent volumes has changed"),
        hotplug("swapping one hotplugged volume for another",
            root(hp_vmi(vols(1, &[2]), scsi(&[2]))),
            root(hp_vmi(vols(1, &[1]), scsi(&[1])))),
        hotplug("hostile: the root disk's bus changed during a hotplug",
            with(root(hp_vmi(vols(1, &[1]), scsi(&[1]))), "spec.domain.devices.disks", json!([{"name": "root", "disk": {"bus": "sata"}}, {"name": "volume-name-1", "disk": {"bus": "scsi"}, "bootOrder": 2}])),
            root(hp_vmi(vec![], vec![])))
            .refused("", "permanent disk root, changed"),
        Case::new("a user still may not hotplug",
            root(hp_vmi(vols(1, &[1]), scsi(&[1]))))
            .old(stored_as_is(root(hp_vmi(vec![], vec![]))))
            .refused("", "update of VMI object is restricted"),
    ]);
}

#[test]
fn hotplug_storage_many_volumes() {
    let idx: Vec<usize> = (0..500).collect();
    let old = hp_vmi(vols(0, &idx[..250]), disks("disk", "scsi", &idx[..250]));
    let new = hp_vmi(vols(0, &idx), disks("disk", "scsi", &idx));
    check(vec![hotplug("250 volumes plugged at once", new, old)]);
}

// ---- Utility volumes (storagehotplug_test.go, "Utility Volumes Admitter"): KubeVirt's
// `AdmitUtilityVolumes`, called on the admitter's update rules directly, since the VMI creation
// rules (which refuse any utility volume) also run on updates here ----

fn utility_rules(
    new_utility: Value,
    new_volumes: Value,
    old_utility: Option<Value>,
    statuses: Value,
    gates: &[&str],
) -> Vec<kubevirt_api::FieldError> {
    // One disk per volume, so that only the utility volume rules speak.
    let disks: Vec<Value> = new_volumes
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| json!({"name": v["name"], "disk": {"bus": "virtio"}}))
        .collect();
    let mut new = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "t"}, "spec": {"domain": {"devices": {"disks": disks}}, "volumes": new_volumes,
        "utilityVolumes": new_utility}});
    let mut old = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "t"}, "spec": {"domain": {"devices": {"disks": disks}}, "volumes": new["spec"]["volumes"].clone()},
        "status": {"volumeStatus": statuses}});
    if let Some(u) = old_utility {
        old["spec"]["utilityVolumes"] = u;
    }
    // Make the spec differ so that the hotplug rules run.
    new["spec"]["domain"]["cpu"] = json!({"sockets": 1});
    let new: kubevirt_api::VirtualMachineInstance = serde_json::from_value(new).expect("VMI");
    let old_v = old.clone();
    let old: kubevirt_api::VirtualMachineInstance = serde_json::from_value(old).expect("VMI");
    let admin = admin();
    let req = kubevirt_api::Request {
        operation: kubevirt_api::Operation::Update,
        old: Some(&old_v),
        user: Some(&admin),
        subresource: None,
        lookup: None,
    };
    let cfg = kubevirt_api::validation::ValidationConfig {
        feature_gates: gates.iter().map(|g| g.to_string()).collect(),
        ..Default::default()
    };
    kubevirt_api::admitters::vmi_update::rules(&new, Some(&old), &req, &cfg)
}

#[test]
fn utility_volumes_as_kubevirt_tests_them() {
    const G: &[&str] = &["UtilityVolumes"];
    let u = |n: &str, c: &str| json!({"name": n, "claimName": c});
    let vol = |n: &str| json!([{"name": n, "emptyDisk": {"capacity": "1Gi"}}]);
    let msgs = |e: &[kubevirt_api::FieldError]| {
        e.iter()
            .map(|e| format!("{} {:?} {}", e.field, e.reason, e.message))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Accepted.
    for (name, errs) in [
        (
            "valid utility volumes",
            utility_rules(
                json!([u("util-vol1", "pvc1")]),
                vol("vol1"),
                None,
                json!([]),
                G,
            ),
        ),
        (
            "an empty list",
            utility_rules(json!([]), vol("vol1"), None, json!([]), G),
        ),
        (
            "an empty list without the gate",
            utility_rules(json!([]), json!([]), None, json!([]), &[]),
        ),
        (
            "a new utility volume added",
            utility_rules(
                json!([u("existing-util", "pvc1"), u("new-util", "pvc2")]),
                json!([]),
                Some(json!([u("existing-util", "pvc1")])),
                json!([{"name": "existing-util", "hotplugVolume": {}}]),
                G,
            ),
        ),
        (
            "a utility volume removed",
            utility_rules(
                json!([u("remaining-util", "pvc1")]),
                json!([]),
                Some(json!([
                    u("remaining-util", "pvc1"),
                    u("removed-util", "pvc2")
                ])),
                json!([{"name": "remaining-util", "hotplugVolume": {}}, {"name": "removed-util", "hotplugVolume": {}}]),
                G,
            ),
        ),
    ] {
        assert!(errs.is_empty(), "{name}: {}", msgs(&errs));
    }
    // Refused: (case, errors, field, cause type, message part).
    use kubevirt_api::CauseType::*;
    for (name, errs, field, reason, part) in [
        ("duplicate names", utility_rules(json!([u("dup-vol", "pvc1"), u("dup-vol", "pvc2")]), json!([]), None, json!([]), G),
         "spec.utilityVolumes[1].name", FieldValueDuplicate, "spec.utilityVolumes[1] and spec.utilityVolumes[0] must not have the same Name."),
        ("a name of a regular volume", utility_rules(json!([u("conflict-vol", "pvc1")]), vol("conflict-vol"), None, json!([]), G),
         "spec.utilityVolumes[0].name", FieldValueDuplicate, "spec.utilityVolumes[0] conflicts with spec.volumes[0]. UtilityVolume names must be unique across both volumes and utilityVolumes."),
        ("an empty claim name", utility_rules(json!([u("util-vol", "")]), json!([]), None, json!([]), G),
         "spec.utilityVolumes[0].claimName", FieldValueRequired, "UtilityVolume PVC 'claimName' must be set"),
        ("an empty name", utility_rules(json!([u("", "pvc1")]), json!([]), None, json!([]), G),
         "spec.utilityVolumes[0].name", FieldValueRequired, "UtilityVolume 'name' must be set"),
        ("several problems: all reported", utility_rules(json!([u("conflict-vol", "pvc1"), u("empty-pvc", "")]), vol("conflict-vol"), None, json!([]), G),
         "spec.utilityVolumes[1].claimName", FieldValueRequired, "claimName' must be set"),
        ("a utility volume marked permanent", utility_rules(json!([u("util-vol", "pvc1")]), json!([]), Some(json!([])), json!([{"name": "util-vol"}]), G),
         "", FieldValueInvalid, "utility volume util-vol cannot be a permanent volume, utility volumes must always be hotplug"),
        ("a changed utility volume", utility_rules(json!([u("util-vol", "pvc2")]), json!([]), Some(json!([u("util-vol", "pvc1")])), json!([{"name": "util-vol", "hotplugVolume": {}}]), G),
         "", FieldValueInvalid, "utility volume util-vol has changed"),
        ("without the gate", utility_rules(json!([u("util-vol", "pvc1")]), json!([]), None, json!([]), &[]),
         "spec.utilityVolumes", FieldValueInvalid, "UtilityVolumes feature gate is not enabled"),
    ] {
        assert!(
            errs.iter().any(|e| e.field == field && e.reason == reason && e.message.contains(part)),
            "{name}: want {field} {reason:?} {part:?}, got:\n{}", msgs(&errs)
        );
    }
}

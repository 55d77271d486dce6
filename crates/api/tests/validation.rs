//! Every validation rule, each with an object it refuses (naming the field and KubeVirt's
//! message) and the nearest object it accepts.

use kubevirt_api::admission::{admit, AdmitOptions};
use kubevirt_api::FieldError;
use serde_json::{json, Value};

fn vmi() -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "testvmi"},
        "spec": {
            "domain": {
                "devices": {
                    "disks": [
                        {"name": "root", "disk": {"bus": "virtio"}},
                        {"name": "cloudinit", "disk": {"bus": "virtio"}}
                    ],
                    "interfaces": [{"name": "default", "masquerade": {}}]
                },
                "resources": {"requests": {"memory": "128Mi"}}
            },
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [
                {"name": "root", "containerDisk": {"image": "demo"}},
                {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#!/bin/sh\necho hi\n"}}
            ]
        }
    })
}

fn vm(run: Value) -> Value {
    let mut tmpl = vmi();
    let mut spec = json!({"template": {"metadata": {}, "spec": tmpl["spec"].take()}});
    if let (Value::Object(s), Value::Object(r)) = (&mut spec, run) {
        s.extend(r);
    }
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
           "metadata": {"name": "testvm"}, "spec": spec})
}

fn errors(obj: &Value) -> Vec<FieldError> {
    match admit(obj, &AdmitOptions::default()) {
        Ok(_) => Vec::new(),
        Err(e) => e,
    }
}

/// Asserts exactly one error, at `field`, whose message contains `message`.
#[track_caller]
fn rejects(obj: &Value, field: &str, message: &str) {
    let errs = errors(obj);
    assert!(
        errs.iter()
            .any(|e| e.field == field && e.message.contains(message)),
        "expected {field}: {message}\ngot: {errs:#?}"
    );
}

#[track_caller]
fn accepts(obj: &Value) {
    let errs = errors(obj);
    assert!(errs.is_empty(), "expected no errors, got {errs:#?}");
}

fn at<'a>(v: &'a mut Value, ptr: &str) -> &'a mut Value {
    v.pointer_mut(ptr).unwrap_or_else(|| panic!("no {ptr}"))
}

#[test]
fn the_base_objects_are_valid() {
    accepts(&vmi());
    accepts(&vm(json!({"runStrategy": "Always"})));
}

#[test]
fn disk_without_volume() {
    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/disks/0/name").clone_from(&json!("nosuchvolume"));
    rejects(
        &v,
        "spec.domain.devices.disks[0].name",
        "spec.domain.devices.disks[0].Name 'nosuchvolume' not found.",
    );
    // A cdrom may be empty (no volume), like an empty tray.
    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/disks")
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "cd", "cdrom": {"bus": "sata"}}));
    accepts(&v);
}

#[test]
fn duplicate_names() {
    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/disks/1/name").clone_from(&json!("root"));
    rejects(
        &v,
        "spec.domain.devices.disks[1].name",
        "spec.domain.devices.disks[1] and spec.domain.devices.disks[0] must not have the same Name.",
    );

    let mut v = vmi();
    at(&mut v, "/spec/volumes/1/name").clone_from(&json!("root"));
    rejects(
        &v,
        "spec.volumes[1].name",
        "spec.volumes[1] and spec.volumes[0] must not have the same Name.",
    );

    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/interfaces")
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "default", "masquerade": {}}));
    rejects(
        &v,
        "spec.domain.devices.interfaces[1].name",
        "Only one interface can be connected to one specific network",
    );

    let mut v = vmi();
    at(&mut v, "/spec/networks")
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "default", "multus": {"networkName": "x"}}));
    rejects(
        &v,
        "spec.networks[1].name",
        "Network with name \"default\" already exists, every network must have a unique name",
    );
}

#[test]
fn volume_needs_exactly_one_source() {
    let mut v = vmi();
    at(&mut v, "/spec/volumes/0").clone_from(&json!({"name": "root"}));
    rejects(
        &v,
        "spec.volumes[0]",
        "spec.volumes[0] must have exactly one source type set",
    );

    let mut v = vmi();
    at(&mut v, "/spec/volumes/0").clone_from(
        &json!({"name": "root", "containerDisk": {"image": "a"}, "emptyDisk": {"capacity": "1Gi"}}),
    );
    rejects(
        &v,
        "spec.volumes[0]",
        "must have exactly one source type set",
    );
}

#[test]
fn disk_with_several_targets() {
    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/disks/0")["cdrom"] = json!({"bus": "sata"});
    rejects(
        &v,
        "spec.domain.devices.disks[0]",
        "spec.domain.devices.disks[0] can only have a single target type defined",
    );
}

#[test]
fn unknown_or_ide_bus() {
    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/disks/0/disk/bus").clone_from(&json!("floppy"));
    rejects(
        &v,
        "spec.domain.devices.disks[0].disk.bus",
        "spec.domain.devices.disks[0] is set with an unrecognized bus floppy, must be one of: [virtio scsi sata usb]",
    );

    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/disks/0/disk/bus").clone_from(&json!("ide"));
    rejects(
        &v,
        "spec.domain.devices.disks[0].disk.bus",
        "IDE bus is not supported",
    );

    for ok in ["virtio", "sata", "scsi"] {
        let mut v = vmi();
        at(&mut v, "/spec/domain/devices/disks/0/disk/bus").clone_from(&json!(ok));
        accepts(&v);
    }
}

#[test]
fn boot_order_must_be_positive_and_unique() {
    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/disks/0")["bootOrder"] = json!(0);
    rejects(
        &v,
        "spec.domain.devices.disks[0].bootOrder",
        "spec.domain.devices.disks[0] must have a boot order > 0, if supplied",
    );

    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/disks/0")["bootOrder"] = json!(1);
    at(&mut v, "/spec/domain/devices/disks/1")["bootOrder"] = json!(1);
    rejects(
        &v,
        "spec.domain.devices.disks[1].bootOrder",
        "Boot order for spec.domain.devices.disks[1].bootOrder already set for a different device.",
    );

    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/disks/0")["bootOrder"] = json!(1);
    at(&mut v, "/spec/domain/devices/interfaces/0")["bootOrder"] = json!(1);
    rejects(
        &v,
        "spec.domain.devices.interfaces[0].bootOrder",
        "already set for a different device.",
    );

    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/disks/0")["bootOrder"] = json!(1);
    at(&mut v, "/spec/domain/devices/disks/1")["bootOrder"] = json!(2);
    accepts(&v);
}

#[test]
fn memory_is_required() {
    let mut v = vmi();
    at(&mut v, "/spec/domain")
        .as_object_mut()
        .unwrap()
        .remove("resources");
    rejects(
        &v,
        "",
        "no memory requested, at least one of 'spec.domain.memory.guest'",
    );

    let mut v = vmi();
    at(&mut v, "/spec/domain")
        .as_object_mut()
        .unwrap()
        .remove("resources");
    at(&mut v, "/spec/domain")["memory"] = json!({"guest": "64Mi"});
    accepts(&v);
}

#[test]
fn guest_memory_above_the_limit() {
    // KubeVirt's default rollout strategy (LiveUpdate) allows guest memory above the limit.
    let mut v = vmi();
    at(&mut v, "/spec/domain")["memory"] = json!({"guest": "512Mi"});
    at(&mut v, "/spec/domain/resources")["limits"] = json!({"memory": "512Mi"});
    at(&mut v, "/spec/domain/resources/requests/memory").clone_from(&json!("256Mi"));
    accepts(&v);
    at(&mut v, "/spec/domain/resources/limits/memory").clone_from(&json!("256Mi"));
    accepts(&v);
    // With `vmRolloutStrategy: Stage` it may not.
    let mut opts = AdmitOptions::default();
    opts.validation.vm_rollout_live_update = false;
    let errs = admit(&v, &opts).err().unwrap_or_default();
    assert!(
        errs.iter().any(|e| e.field == "spec.domain.memory.guest"
            && e.message == "spec.domain.memory.guest '512Mi' must be equal to or less than the memory limit spec.domain.resources.limits.memory '256Mi'"),
        "{errs:#?}"
    );
}

#[test]
fn request_above_limit() {
    let mut v = vmi();
    at(&mut v, "/spec/domain/resources")["limits"] = json!({"memory": "64Mi"});
    rejects(
        &v,
        "spec.domain.resources.requests.memory",
        "spec.domain.resources.requests.memory '128Mi' is greater than spec.domain.resources.limits.memory '64Mi'",
    );

    let mut v = vmi();
    at(&mut v, "/spec/domain/resources/requests")["cpu"] = json!("2");
    at(&mut v, "/spec/domain/resources")["limits"] = json!({"cpu": "1500m"});
    rejects(
        &v,
        "spec.domain.resources.requests.cpu",
        "spec.domain.resources.requests.cpu '2' is greater than spec.domain.resources.limits.cpu '1500m'",
    );
    at(&mut v, "/spec/domain/resources/limits/cpu").clone_from(&json!("2"));
    accepts(&v);
}

#[test]
fn hugepage_size_mismatch() {
    let mut v = vmi();
    at(&mut v, "/spec/domain")["memory"] = json!({"hugepages": {"pageSize": "1Gi"}});
    rejects(
        &v,
        "spec.domain.resources.requests.memory",
        "spec.domain.resources.requests.memory '128Mi' must be equal to or larger than page size spec.domain.memory.hugepages.pageSize '1Gi'",
    );

    let mut v = vmi();
    at(&mut v, "/spec/domain")["memory"] = json!({"hugepages": {"pageSize": "2Mi"}});
    at(&mut v, "/spec/domain/resources/requests/memory").clone_from(&json!("129M"));
    rejects(
        &v,
        "spec.domain.resources.requests.memory",
        "is not a multiple of the page size",
    );

    let mut v = vmi();
    at(&mut v, "/spec/domain")["memory"] = json!({"hugepages": {"pageSize": "2Mi"}});
    accepts(&v);
}

#[test]
fn efi_and_bios_together_and_secure_boot_without_smm() {
    let mut v = vmi();
    at(&mut v, "/spec/domain")["firmware"] =
        json!({"bootloader": {"efi": {"secureBoot": false}, "bios": {}}});
    rejects(
        &v,
        "spec.domain.firmware.bootloader",
        "spec.domain.firmware.bootloader has both EFI and BIOS configured, but they are mutually exclusive.",
    );

    let mut v = vmi();
    at(&mut v, "/spec/domain")["firmware"] = json!({"bootloader": {"efi": {}}});
    rejects(
        &v,
        "spec.domain",
        "spec.domain has EFI SecureBoot enabled. SecureBoot requires SMM, which is currently disabled.",
    );
    at(&mut v, "/spec/domain")["features"] = json!({"smm": {}});
    accepts(&v);

    let mut v = vmi();
    at(&mut v, "/spec/domain")["firmware"] = json!({"bootloader": {"efi": {"secureBoot": false}}});
    accepts(&v);
}

#[test]
fn cloud_init_inline_data_limit() {
    let mut v = vmi();
    let big = format!("#!/bin/sh\n{}", "x".repeat(2048));
    at(&mut v, "/spec/volumes/1/cloudInitNoCloud/userData").clone_from(&json!(big));
    rejects(
        &v,
        "spec.volumes[1].cloudInitNoCloud",
        "spec.volumes[1].cloudInitNoCloud userdata exceeds 2048 byte limit. Should use UserDataSecretRef for larger data.",
    );

    let mut v = vmi();
    at(&mut v, "/spec/volumes/1").clone_from(&json!({"name": "cloudinit",
        "cloudInitConfigDrive": {"networkData": "y".repeat(2049), "userData": "ok"}}));
    rejects(
        &v,
        "spec.volumes[1].cloudInitConfigDrive",
        "networkdata exceeds 2048 byte limit",
    );

    let mut v = vmi();
    at(&mut v, "/spec/volumes/1/cloudInitNoCloud/userData").clone_from(&json!("x".repeat(2048)));
    accepts(&v);
}

#[test]
fn interface_and_network_must_pair_up() {
    let mut v = vmi();
    at(&mut v, "/spec/networks/0/name").clone_from(&json!("other"));
    rejects(
        &v,
        "spec.domain.devices.interfaces[0].name",
        "spec.domain.devices.interfaces[0].name 'default' not found.",
    );
    rejects(
        &v,
        "spec.networks[0].name",
        "spec.networks[0].name 'other' not found.",
    );
}

#[test]
fn masquerade_only_on_the_pod_network() {
    let mut v = vmi();
    at(&mut v, "/spec/networks/0")
        .clone_from(&json!({"name": "default", "multus": {"networkName": "br"}}));
    rejects(
        &v,
        "spec.domain.devices.interfaces[0].name",
        "Masquerade interface only implemented with pod network",
    );
    at(&mut v, "/spec/domain/devices/interfaces/0")
        .clone_from(&json!({"name": "default", "bridge": {}}));
    accepts(&v);
}

/// KubeVirt's Multus rules: a networkName, one default network, and not beside the pod
/// network.
#[test]
fn multus_networks_follow_kubevirts_rules() {
    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/interfaces").clone_from(&json!([
        {"name": "default", "masquerade": {}},
        {"name": "blue", "bridge": {}},
        {"name": "red", "bridge": {}}
    ]));
    at(&mut v, "/spec/networks").clone_from(&json!([
        {"name": "default", "pod": {}},
        {"name": "blue", "multus": {"networkName": "ns/blue"}},
        {"name": "red", "multus": {"networkName": "red"}}
    ]));
    accepts(&v);
    at(&mut v, "/spec/networks/2/multus/networkName").clone_from(&json!(""));
    rejects(
        &v,
        "spec.networks[2]",
        "CNI delegating plugin must have a networkName",
    );
    at(&mut v, "/spec/networks/2/multus")
        .clone_from(&json!({"networkName": "red", "default": true}));
    rejects(
        &v,
        "spec.networks",
        "Pod network cannot be defined when Multus default network is defined",
    );
    at(&mut v, "/spec/networks/1/multus")
        .clone_from(&json!({"networkName": "ns/blue", "default": true}));
    rejects(
        &v,
        "spec.networks",
        "Multus CNI should only have one default network",
    );
}

/// KubeVirt v1.3 removed these bindings; their fields stay in the API and are refused.
#[test]
fn discontinued_bindings_are_refused_with_kubevirts_messages() {
    for (field, message) in [
        (
            "slirp",
            "Slirp interface support has been discontinued since v1.3",
        ),
        (
            "passt",
            "Passt network binding has been discontinued since v1.3",
        ),
        (
            "macvtap",
            "Macvtap network binding has been discontinued since v1.3",
        ),
    ] {
        let mut v = vmi();
        at(&mut v, "/spec/domain/devices/interfaces/0")
            .clone_from(&json!({"name": "default", field: {}}));
        rejects(
            &v,
            &format!("spec.domain.devices.interfaces[0].{field}"),
            message,
        );
    }
}

#[test]
fn vm_run_strategy() {
    rejects(
        &vm(json!({"running": true, "runStrategy": "Always"})),
        "spec.running",
        "Running and RunStrategy are mutually exclusive",
    );
    rejects(
        &vm(json!({"runStrategy": "Sometimes"})),
        "spec.runStrategy",
        "Invalid RunStrategy (Sometimes)",
    );
    rejects(
        &vm(json!({})),
        "spec.running",
        "RunStrategy must be specified",
    );
    for rs in ["Always", "Halted", "Manual", "RerunOnFailure", "Once"] {
        accepts(&vm(json!({"runStrategy": rs})));
    }
    accepts(&vm(json!({"running": false})));
}

#[test]
fn vm_template_is_validated_with_template_paths() {
    let mut v = vm(json!({"runStrategy": "Always"}));
    at(
        &mut v,
        "/spec/template/spec/domain/devices/disks/0/disk/bus",
    )
    .clone_from(&json!("ide"));
    rejects(
        &v,
        "spec.template.spec.domain.devices.disks[0].disk.bus",
        "IDE bus is not supported",
    );
}

fn dv(spec: Value) -> Value {
    json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
           "metadata": {"name": "dv"}, "spec": spec})
}

#[test]
fn data_volume_pvc_and_storage() {
    let src = json!({"http": {"url": "http://example/disk.img"}});
    let size = json!({"resources": {"requests": {"storage": "1Gi"}}});
    let mut pvc = size.clone();
    pvc["accessModes"] = json!(["ReadWriteOnce"]);
    rejects(
        &dv(json!({"source": src, "pvc": pvc, "storage": size})),
        "spec.storage",
        "Duplicate storage definition, both target storage and target pvc defined",
    );
    rejects(
        &dv(json!({"source": src})),
        "spec.storage",
        "Missing Data volume PVC or Storage",
    );
    rejects(
        &dv(json!({"source": {"http": {"url": "u"}, "blank": {}}, "storage": size})),
        "spec.source",
        "Multiple Data volume sources",
    );
    rejects(
        &dv(json!({"storage": size})),
        "spec.source",
        "Data volume should have either Source, SourceRef, or be externally populated",
    );
    accepts(&dv(json!({"source": src, "storage": size})));
    accepts(&dv(json!({"source": src, "pvc": pvc})));
    // Externally populated: a claim data source, and then no CDI source (KubeVirt's
    // "should reject invalid DataVolumeTemplate with both datasource and Source").
    let mut populated = pvc.clone();
    populated["dataSource"] = json!({"apiGroup": "example.org", "kind": "Populator", "name": "p"});
    rejects(
        &dv(json!({"source": {"blank": {}}, "pvc": populated})),
        "spec.source",
        "External population is incompatible with Source and SourceRef",
    );
    rejects(
        &dv(json!({"sourceRef": {"kind": "DataSource", "name": "d"}, "pvc": populated})),
        "spec.source",
        "External population is incompatible with Source and SourceRef",
    );
    accepts(&dv(json!({"pvc": populated})));
}

fn microvm() -> Value {
    let mut v = vmi();
    at(&mut v, "/spec/domain")["machine"] = json!({"type": "microvm"});
    at(&mut v, "/spec/domain")["firmware"] =
        json!({"kernelBoot": {"container": {"image": "demo", "kernelPath": "/boot/vmlinux"}}});
    v
}

#[test]
fn microvm_accepts_only_virtio_and_kernel_boot() {
    accepts(&microvm());

    let mut v = microvm();
    at(&mut v, "/spec/domain/devices/disks/0/disk/bus").clone_from(&json!("sata"));
    rejects(
        &v,
        "spec.domain.devices.disks[0].disk.bus",
        "machine type microvm supports only bus virtio",
    );

    let mut v = microvm();
    at(&mut v, "/spec/domain/devices/disks")
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "cd", "cdrom": {"bus": "sata"}}));
    rejects(
        &v,
        "spec.domain.devices.disks[2].cdrom",
        "machine type microvm has no cdrom device",
    );

    let mut v = microvm();
    at(&mut v, "/spec/domain/devices/interfaces/0")["model"] = json!("e1000");
    rejects(
        &v,
        "spec.domain.devices.interfaces[0].model",
        "uses model e1000: machine type microvm supports only model virtio",
    );

    let mut v = microvm();
    at(&mut v, "/spec/domain/firmware")["bootloader"] = json!({"efi": {"secureBoot": false}});
    rejects(
        &v,
        "spec.domain.firmware.bootloader.efi",
        "has no EFI firmware",
    );

    let mut v = microvm();
    at(&mut v, "/spec/domain")
        .as_object_mut()
        .unwrap()
        .remove("firmware");
    rejects(
        &v,
        "spec.domain.firmware.kernelBoot",
        "set firmware.kernelBoot",
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/disks/0/disk/bus").clone_from(&json!("ide"));
    at(&mut v, "/spec/volumes/1/name").clone_from(&json!("root"));
    at(&mut v, "/spec/networks/0/name").clone_from(&json!("other"));
    let errs = errors(&v);
    assert!(errs.len() >= 4, "{errs:#?}");
}

#[test]
fn host_disks_need_the_host_disk_feature_gate() {
    let mut v = vmi();
    *at(&mut v, "/spec/volumes/0") = json!({"name": "root",
        "hostDisk": {"path": "/var/data/disk.img", "type": "DiskOrCreate", "capacity": "1Gi"}});
    rejects(
        &v,
        "spec.volumes[0]",
        "HostDisk feature gate is not enabled",
    );
    let mut gated = AdmitOptions::default();
    gated.validation.feature_gates = vec!["HostDisk".into()];
    let errs = admit(&v, &gated).err().unwrap_or_default();
    assert!(errs.is_empty(), "with the gate on: {errs:#?}");
}

/// Issue 10: a name that would reach QEMU's option parser or a file name is refused at the
/// door, with KubeVirt's message where KubeVirt has a rule, else naming the allowed form.
#[test]
fn names_that_would_reach_qemu_or_a_path_are_refused() {
    let hostile = "x,romfile=/etc/shadow";
    // Interface and network names: KubeVirt's own rule and message.
    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/interfaces/0/name").clone_from(&json!(hostile));
    at(&mut v, "/spec/networks/0/name").clone_from(&json!(hostile));
    rejects(
        &v,
        "spec.domain.devices.interfaces[0].name",
        "Network interface name can only contain alphabetical characters, numbers, dashes (-) or underscores (_)",
    );
    rejects(
        &v,
        "spec.networks[0].name",
        "Network interface name can only contain",
    );
    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/interfaces/0/name").clone_from(&json!("Pod_net-1"));
    at(&mut v, "/spec/networks/0/name").clone_from(&json!("Pod_net-1"));
    assert!(errors(&v).is_empty(), "{:#?}", errors(&v));

    // Disk and volume names become files and QEMU ids: DNS-1123 labels.
    for bad in ["../x", "a/b", hostile, "Root", ""] {
        let mut v = vmi();
        at(&mut v, "/spec/domain/devices/disks/0/name").clone_from(&json!(bad));
        at(&mut v, "/spec/volumes/0/name").clone_from(&json!(bad));
        rejects(
            &v,
            "spec.domain.devices.disks[0].name",
            "is not a valid disk name: a lowercase RFC 1123 label must consist of",
        );
        rejects(
            &v,
            "spec.volumes[0].name",
            "is not a valid volume name: a lowercase RFC 1123 label",
        );
    }
    let mut v = vmi();
    let long = "d".repeat(64);
    at(&mut v, "/spec/domain/devices/disks/0/name").clone_from(&json!(long));
    at(&mut v, "/spec/volumes/0/name").clone_from(&json!(long));
    rejects(
        &v,
        "spec.volumes[0].name",
        "must be no more than 63 characters",
    );
}

#[test]
fn mac_addresses_are_parsed_as_kubevirt_parses_them() {
    for (mac, msg) in [
        (
            "de:ad:00:00:be:af,romfile=/etc/shadow",
            "has malformed MAC address",
        ),
        ("de:ad:00:00:be", "has malformed MAC address"),
        (
            "00:00:00:00:fe:80:00:00",
            "has too long MAC address (00:00:00:00:fe:80:00:00).",
        ),
    ] {
        let mut v = vmi();
        at(&mut v, "/spec/domain/devices/interfaces/0")
            .as_object_mut()
            .expect("object")
            .insert("macAddress".into(), json!(mac));
        rejects(
            &v,
            "spec.domain.devices.interfaces[0].macAddress",
            &format!("interface spec.domain.devices.interfaces[0].name {msg}"),
        );
    }
    for mac in ["de:ad:00:00:be:af", "DE-AD-00-00-BE-AF", "dead.0000.beaf"] {
        let mut v = vmi();
        at(&mut v, "/spec/domain/devices/interfaces/0")
            .as_object_mut()
            .expect("object")
            .insert("macAddress".into(), json!(mac));
        assert!(errors(&v).is_empty(), "{mac}: {:#?}", errors(&v));
    }
}

#[test]
fn cpu_names_serials_and_host_disk_paths_have_a_safe_form() {
    let mut v = vmi();
    at(&mut v, "/spec/domain")
        .as_object_mut()
        .expect("object")
        .insert(
            "cpu".into(),
            json!({"model": "qemu64,+x", "features": [{"name": "pcid,romfile=/etc/shadow"}, {"name": "tsc-deadline"}]}),
        );
    rejects(&v, "spec.domain.cpu.model", "is not a CPU model name");
    rejects(
        &v,
        "spec.domain.cpu.features[0].name",
        "is not a CPU feature name: use letters, digits",
    );
    assert_eq!(errors(&v).len(), 2, "{:#?}", errors(&v));

    let mut v = vmi();
    at(&mut v, "/spec/domain/devices/disks/0")
        .as_object_mut()
        .expect("object")
        .insert("serial".into(), json!("abc,romfile=/x"));
    rejects(
        &v,
        "spec.domain.devices.disks[0].serial",
        "spec.domain.devices.disks[0] must be made up of the following characters [A-Za-z0-9_.+-], if specified",
    );
    let mut v = vmi();
    at(&mut v, "/spec/domain")
        .as_object_mut()
        .expect("object")
        .insert("firmware".into(), json!({"serial": "s".repeat(257)}));
    rejects(
        &v,
        "spec.domain.firmware.serial",
        "spec.domain.firmware.serial must be less than or equal to 256 in length, if specified",
    );

    let mut gated = AdmitOptions::default();
    gated.validation.feature_gates = vec!["HostDisk".into()];
    for bad in ["disk.img", "/var/data/../../etc/shadow", "/var//data/a.img"] {
        let mut v = vmi();
        *at(&mut v, "/spec/volumes/0") = json!({"name": "root",
            "hostDisk": {"path": bad, "type": "Disk"}});
        let errs = admit(&v, &gated).err().unwrap_or_default();
        assert!(
            errs.iter()
                .any(|e| e.field == "spec.volumes[0].hostDisk.path"),
            "{bad}: {errs:#?}"
        );
    }
}

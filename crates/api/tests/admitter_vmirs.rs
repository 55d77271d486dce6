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

fn with_passt(binding: &str) -> Value {
    let mut v = rs(
        json!({"matchLabels": {"match": "me"}}),
        json!({"match": "me"}),
        disk(),
    );
    v["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"] =
        json!([{"name": "default", binding: {}}]);
    v["spec"]["template"]["spec"]["networks"] = json!([{"name": "default", "pod": {}}]);
    v
}

const PASST: &str = "Passt network binding is discontinued since v1.3. Please refer to Kubevirt user guide for alternatives.";
const MACVTAP: &str = "Macvtap network binding is discontinued since v1.3. Please refer to Kubevirt user guide for alternatives.";

/// vmirs-admitter.go runs `featuregate.ValidateFeatureGates` on the template at creation.
#[test]
fn vmirs_discontinued_feature_gates() {
    check(vec![
        Case::new(
            "the Passt gate listed and the passt binding used",
            with_passt("passt"),
        )
        .gates(&["Passt"])
        .refused("", PASST),
        Case::new(
            "the Macvtap gate listed and the macvtap binding used",
            with_passt("macvtap"),
        )
        .gates(&["Macvtap"])
        .refused("", MACVTAP),
        Case::new("the Passt gate listed, not used", with_passt("masquerade"))
            .gates(&["Passt", "Macvtap"]),
    ]);
    // Not on update (the template's own binding rule still refuses it).
    let c = Case::new("update", with_passt("passt"))
        .old(with_passt("passt"))
        .gates(&["Passt"]);
    let errs = c.run().expect_err("the binding is discontinued");
    assert!(!errs.iter().any(|e| e.message == PASST), "{errs:?}");
    assert!(
        errs.iter()
            .any(|e| e.field == "spec.template.spec.domain.devices.interfaces[0].passt"),
        "{errs:?}"
    );
}

/// `validateGraceIOVirtualizationAnnotations` at `spec.template.metadata`.
#[test]
fn vmirs_grace_io_annotations() {
    let grace = |annotation: &str| {
        let mut v = rs(
            json!({"matchLabels": {"match": "me"}}),
            json!({"match": "me"}),
            disk(),
        );
        v["spec"]["template"]["metadata"]["annotations"] = json!({annotation: "true"});
        v["spec"]["template"]["spec"]["domain"]["devices"]["gpus"] =
            json!([{"name": "gpu1", "deviceName": "nvidia.com/grace-gpu"}]);
        v
    };
    let permit = |mut c: Case| {
        c.opts.validation.permitted_pci_host_devices = vec![serde_json::from_value(
            json!({"pciVendorSelector": "10DE:2342", "resourceName": "nvidia.com/grace-gpu"}),
        )
        .expect("a PciHostDevice")];
        c
    };
    check(vec![
        permit(Case::new(
            "root complex",
            grace("kubevirt.io/placePCIDevicesOnRootComplex"),
        ))
        .refused(
            "spec.template.metadata.annotations[kubevirt.io/placePCIDevicesOnRootComplex]",
            "GraceIOVirtualization is not compatible with placing PCI devices on the root complex",
        ),
        permit(Case::new("PCI hole", grace("kubevirt.io/disablePCIHole64"))).refused(
            "spec.template.metadata.annotations[kubevirt.io/disablePCIHole64]",
            "GraceIOVirtualization requires the 64-bit PCI hole",
        ),
        permit(Case::new(
            "the spec rule runs on the template too",
            grace("x"),
        ))
        .refused(
            "spec.template.spec.domain.devices.gpus[0].deviceName",
            "GraceIOVirtualization feature gate must be enabled",
        ),
        Case::new(
            "without permitted Grace devices, the annotations are the user's",
            grace("kubevirt.io/disablePCIHole64"),
        ),
    ]);
}

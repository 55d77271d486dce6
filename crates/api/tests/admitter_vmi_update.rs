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

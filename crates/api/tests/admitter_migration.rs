//! KubeVirt's migration-create-admitter_test.go and migration-update-admitter_test.go.

mod admitters;
use admitters::*;
use serde_json::{json, Value};

fn mig(vmi: &str) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
           "metadata": {"name": "m", "namespace": "default", "uid": "uid-m"},
           "spec": {"vmiName": vmi}})
}

fn vmi(phase: &str) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
           "metadata": {"name": "testvmi", "namespace": "default"},
           "spec": {"domain": {"devices": {}}}, "status": {"phase": phase}})
}

#[test]
fn migration_create_table() {
    let running = vmi("Running");
    let not_migratable = with(
        vmi("Running"),
        "status.conditions",
        json!([{"type": "LiveMigratable", "status": "False", "reason": "DisksNotLiveMigratable", "message": "cannot migrate"}]),
    );
    let in_flight = with(
        with(
            mig("testvmi"),
            "metadata.labels",
            json!({"kubevirt.io/vmi-name": "testvmi"}),
        ),
        "metadata.name",
        json!("other"),
    );
    let in_flight = with(in_flight, "metadata.uid", json!("uid-other"));
    let finished = with(in_flight.clone(), "status.phase", json!("Succeeded"));
    check(vec![
        Case::new("a migration of a running VMI is accepted", mig("testvmi")).stored(vec![running.clone()]),
        Case::new("vmiName is required", mig("")).refused("spec.vmiName", "vmiName is missing"),
        Case::new("a VMI that does not exist", mig("testvmi"))
            .refused("", "the VMI \"default/testvmi\" does not exist"),
        Case::new("a hostile vmiName is just a name that does not exist", mig("../../etc/passwd"))
            .refused("", "does not exist"),
        Case::new("a finalized VMI", mig("testvmi")).stored(vec![vmi("Succeeded")])
            .refused("", "Cannot migrate VMI in finalized state."),
        Case::new("a failed VMI", mig("testvmi")).stored(vec![vmi("Failed")])
            .refused("", "Cannot migrate VMI in finalized state."),
        Case::new("a VMI that is not migratable", mig("testvmi")).stored(vec![not_migratable.clone()])
            .refused("", "Cannot migrate VMI, Reason: DisksNotLiveMigratable, Message: cannot migrate"),
        Case::new("a migration in flight", mig("testvmi")).stored(vec![running.clone(), in_flight])
            .refused("", "in-flight migration detected. Active migration job (uid-other) is currently already in progress for VMI testvmi."),
        Case::new("a finished migration is no conflict", mig("testvmi")).stored(vec![running.clone(), finished]),
        Case::new("only virt-controller sets the priority", with(mig("testvmi"), "spec.priority", json!("user")))
            .stored(vec![running.clone()])
            .refused("spec.migrationPriority", "only virt-controller is allowed to set priority field"),
        Case::new("virt-controller sets the priority", with(mig("testvmi"), "spec.priority", json!("system-critical")))
            .stored(vec![running.clone()])
            .by(kubevirt_api::UserInfo { username: "system:serviceaccount:kubevirt:kubevirt-controller".into(), groups: vec![] }),
        Case::new("virt-handler may not set the priority", with(mig("testvmi"), "spec.priority", json!("user")))
            .stored(vec![running.clone()])
            .by(kubevirt_api::UserInfo { username: "system:serviceaccount:kubevirt:kubevirt-handler".into(), groups: vec![] })
            .refused("spec.migrationPriority", "only virt-controller"),
        Case::new("decentralized migration needs its gate",
            with(mig("testvmi"), "spec.sendTo", json!({"connectURL": "x:1", "migrationID": "a"})))
            .stored(vec![running.clone()])
            .refused("", "DecentralizedLiveMigration feature gate is not enabled in kubevirt resource"),
        Case::new("a decentralized migration of a VMI with non-migratable disks",
            with(mig("testvmi"), "spec.sendTo", json!({"connectURL": "x:1", "migrationID": "a"})))
            .stored(vec![not_migratable])
            .gates(&["DecentralizedLiveMigration"]),
        Case::new("sendTo and receive must agree on the migration ID",
            with(with(mig("testvmi"), "spec.sendTo", json!({"connectURL": "x:1", "migrationID": "a"})),
                 "spec.receive", json!({"migrationID": "b"})))
            .stored(vec![running])
            .gates(&["DecentralizedLiveMigration"])
            .refused("", "sendTo migrationID a does not match receive migrationID b"),
    ]);
}

#[test]
fn migration_update_table() {
    let labelled = with(
        mig("testvmi"),
        "metadata.labels",
        json!({"kubevirt.io/vmi-name": "testvmi", "other": "x"}),
    );
    check(vec![
        Case::new("a spec change is refused", mig("othervmi"))
            .old(mig("testvmi"))
            .refused("", "update of Migration object's spec is restricted"),
        Case::new("an unchanged spec is accepted", mig("testvmi")).old(mig("testvmi")),
        Case::new("the labels holding the selector may not go", mig("testvmi"))
            .old(labelled.clone())
            .refused(
                "",
                "selector label can't be removed from an in-flight migration",
            ),
        Case::new(
            "the selector label may not go",
            with(labelled.clone(), "metadata.labels", json!({"other": "x"})),
        )
        .old(labelled.clone())
        .refused(
            "",
            "selector label can't be modified on an in-flight migration",
        ),
        Case::new(
            "another label may go",
            with(
                labelled.clone(),
                "metadata.labels",
                json!({"kubevirt.io/vmi-name": "testvmi"}),
            ),
        )
        .old(labelled.clone()),
        Case::new(
            "a finished migration may lose its labels",
            with(mig("testvmi"), "status.phase", json!("Succeeded")),
        )
        .old(labelled),
    ]);
}

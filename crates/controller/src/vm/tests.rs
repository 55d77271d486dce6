use super::*;
use kubevirt_runtime::backoff::Backoff;
use serde_json::json;

fn vmi(phase: &str, uid: &str) -> VirtualMachineInstance {
    serde_json::from_value(json!({"metadata": {"name": "v", "uid": uid},
        "spec": {"domain": {"devices": {}}}, "status": {"phase": phase}}))
    .expect("vmi")
}

fn status(v: serde_json::Value) -> VirtualMachineStatus {
    serde_json::from_value(v).expect("status")
}

fn inputs(vmi: Option<&VirtualMachineInstance>) -> PrintableInputs<'_> {
    PrintableInputs {
        vm_deleting: false,
        vmi,
        create_expected: false,
        delete_expected: false,
        start_failures: 0,
        strategy: RunStrategy::Always,
    }
}

#[test]
fn running_maps_to_a_run_strategy() {
    let spec = |v| serde_json::from_value::<VirtualMachineSpec>(v).expect("spec");
    assert_eq!(
        run_strategy(&spec(json!({"running": true, "template": {}}))),
        RunStrategy::Always
    );
    assert_eq!(
        run_strategy(&spec(json!({"running": false, "template": {}}))),
        RunStrategy::Halted
    );
    assert_eq!(
        run_strategy(&spec(json!({"template": {}}))),
        RunStrategy::Halted
    );
    assert_eq!(
        run_strategy(&spec(
            json!({"runStrategy": "RerunOnFailure", "template": {}})
        )),
        RunStrategy::RerunOnFailure
    );
}

#[test]
fn printable_status_precedence() {
    let running = vmi("Running", "a");
    let mut paused = running.clone();
    paused.status.as_mut().expect("status").conditions =
        Some(vec![kubevirt_api::VirtualMachineInstanceCondition {
            r#type: "Paused".into(),
            status: "True".into(),
            ..Default::default()
        }]);
    let mut deleting = running.clone();
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let failed = vmi("Failed", "b");
    let scheduled = vmi("Scheduled", "c");

    assert_eq!(
        printable_status(&PrintableInputs {
            vm_deleting: true,
            ..inputs(Some(&running))
        }),
        "Terminating"
    );
    assert_eq!(printable_status(&inputs(Some(&deleting))), "Stopping");
    assert_eq!(
        printable_status(&PrintableInputs {
            delete_expected: true,
            ..inputs(Some(&running))
        }),
        "Stopping"
    );
    // A final VMI being deleted is not Stopping.
    assert_eq!(
        printable_status(&PrintableInputs {
            delete_expected: true,
            ..inputs(Some(&failed))
        }),
        "Stopped"
    );
    assert_eq!(printable_status(&inputs(Some(&paused))), "Paused");
    assert_eq!(printable_status(&inputs(Some(&running))), "Running");
    assert_eq!(printable_status(&inputs(Some(&scheduled))), "Starting");
    assert_eq!(
        printable_status(&PrintableInputs {
            create_expected: true,
            ..inputs(None)
        }),
        "Starting"
    );
    assert_eq!(
        printable_status(&PrintableInputs {
            start_failures: 2,
            ..inputs(None)
        }),
        "CrashLoopBackOff"
    );
    assert_eq!(
        printable_status(&PrintableInputs {
            start_failures: 2,
            ..inputs(Some(&failed))
        }),
        "CrashLoopBackOff"
    );
    assert_eq!(
        printable_status(&PrintableInputs {
            start_failures: 2,
            strategy: RunStrategy::Manual,
            ..inputs(None)
        }),
        "Stopped"
    );
    assert_eq!(printable_status(&inputs(None)), "Stopped");
    assert_eq!(printable_status(&inputs(Some(&failed))), "Stopped");
    let mut pull = scheduled.clone();
    pull.status.as_mut().expect("status").conditions =
        Some(vec![kubevirt_api::VirtualMachineInstanceCondition {
            r#type: "Synchronized".into(),
            status: "False".into(),
            reason: Some("ErrImagePull".into()),
            ..Default::default()
        }]);
    assert_eq!(printable_status(&inputs(Some(&pull))), "ErrImagePull");
}

#[test]
fn start_failures_count_once_per_vmi_and_reset_on_running() {
    let b = Backoff::kubevirt_crash_loop().with_jitter(false);
    let now = Timestamp::now();
    let mut st = VirtualMachineStatus::default();
    let f1 = vmi("Failed", "u1");
    sync_start_failure(&mut st, RunStrategy::Always, Some(&f1), now, &b);
    sync_start_failure(&mut st, RunStrategy::Always, Some(&f1), now, &b);
    let sf = st.start_failure.clone().expect("start failure");
    assert_eq!(sf.consecutive_fail_count, Some(1));
    assert_eq!(sf.last_failed_vmiuid.as_deref(), Some("u1"));
    assert_eq!(
        sf.retry_after_timestamp
            .as_ref()
            .map(|t| t.0.duration_since(now).as_secs()),
        Some(10)
    );
    sync_start_failure(
        &mut st,
        RunStrategy::Always,
        Some(&vmi("Failed", "u2")),
        now,
        &b,
    );
    assert_eq!(
        st.start_failure
            .as_ref()
            .and_then(|s| s.consecutive_fail_count),
        Some(2)
    );
    // A VMI that ran and then failed is not a start failure.
    let mut ran = vmi("Failed", "u3");
    ran.status
        .as_mut()
        .expect("status")
        .phase_transition_timestamps = Some(vec![
        kubevirt_api::VirtualMachineInstancePhaseTransitionTimestamp {
            phase: Some("Running".into()),
            phase_transition_timestamp: None,
        },
    ]);
    sync_start_failure(&mut st, RunStrategy::Always, Some(&ran), now, &b);
    assert_eq!(
        st.start_failure
            .as_ref()
            .and_then(|s| s.consecutive_fail_count),
        Some(2)
    );
    sync_start_failure(
        &mut st,
        RunStrategy::Always,
        Some(&vmi("Running", "u4")),
        now,
        &b,
    );
    assert!(st.start_failure.is_none());
    st.start_failure = sf.clone().into();
    sync_start_failure(&mut st, RunStrategy::Manual, None, now, &b);
    assert!(st.start_failure.is_none());
}

#[test]
fn decisions_per_run_strategy() {
    let now = Timestamp::now();
    let none = status(json!({}));
    let seen = |s: &str| status(json!({"runStrategy": s}));
    let start =
        status(json!({"runStrategy": "Manual", "stateChangeRequests": [{"action": "Start"}]}));
    let stop = status(json!({"stateChangeRequests": [{"action": "Stop", "uid": "a"}]}));
    let running = vmi("Running", "a");
    let failed = vmi("Failed", "a");
    let ok = vmi("Succeeded", "a");
    use Decision::*;
    use RunStrategy::*;
    let d =
        |s, st: &VirtualMachineStatus, v: Option<&VirtualMachineInstance>| decide(s, st, v, now);

    assert_eq!(d(Always, &none, None), Create);
    assert_eq!(d(Always, &none, Some(&running)), Nothing);
    assert_eq!(d(Always, &none, Some(&ok)), Delete { restart: false });
    assert_eq!(d(Always, &stop, Some(&running)), Delete { restart: false });
    assert_eq!(d(Always, &stop, None), Nothing);
    assert_eq!(d(Halted, &none, Some(&running)), Delete { restart: false });
    assert_eq!(d(Halted, &none, None), Nothing);
    assert_eq!(d(Manual, &seen("Manual"), None), Nothing);
    assert_eq!(d(Manual, &start, None), Create);
    assert_eq!(d(Manual, &stop, Some(&running)), Delete { restart: false });
    assert_eq!(d(Manual, &none, Some(&failed)), Nothing);
    assert_eq!(
        d(RerunOnFailure, &none, None),
        Create,
        "switching into RerunOnFailure starts"
    );
    assert_eq!(d(RerunOnFailure, &seen("RerunOnFailure"), None), Nothing);
    assert_eq!(
        d(RerunOnFailure, &seen("RerunOnFailure"), Some(&failed)),
        Delete { restart: true }
    );
    assert_eq!(
        d(RerunOnFailure, &seen("RerunOnFailure"), Some(&ok)),
        Delete { restart: false }
    );
    assert_eq!(d(Once, &seen("Once"), None), Create);
    assert_eq!(d(Once, &seen("Once"), Some(&failed)), Nothing);
    assert_eq!(d(Once, &seen("Once"), Some(&ok)), Nothing);

    let later = now
        .checked_add(SignedDuration::from_secs(30))
        .expect("time");
    let backing_off = status(
        json!({"startFailure": {"consecutiveFailCount": 1, "retryAfterTimestamp": Time(later)}}),
    );
    match d(Always, &backing_off, None) {
        CreateAfter(w) => assert!(w.as_secs() >= 29 && w.as_secs() <= 30, "{w:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn done_requests_are_trimmed() {
    let req = |a: &str, uid: Option<&str>| VirtualMachineStateChangeRequest {
        action: a.into(),
        data: None,
        uid: uid.map(str::to_string),
    };
    let running = vmi("Running", "a");
    let mut r = vec![req("Stop", Some("a")), req("Start", None)];
    trim_requests(&mut r, Some(&running), RunStrategy::Always);
    assert_eq!(r.len(), 2, "the stop is not done while its VMI exists");
    trim_requests(&mut r, None, RunStrategy::Always);
    assert_eq!(
        r,
        vec![req("Start", None)],
        "the stop is done once the VMI is gone"
    );
    trim_requests(&mut r, Some(&vmi("Scheduled", "b")), RunStrategy::Always);
    assert!(r.is_empty(), "the start is done once a new VMI exists");
}

#[test]
fn vmi_from_template() {
    let vm: VirtualMachine = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "demo", "namespace": "ns", "uid": "vm-uid", "generation": 3},
        "spec": {"runStrategy": "Always", "template": {
            "metadata": {"labels": {"app": "demo"}, "annotations": {"a": "b"}},
            "spec": {"domain": {"devices": {}}}}}
    }))
    .expect("vm");
    let it: kubevirt_api::VirtualMachineInstancetypeSpec = serde_json::from_value(
        json!({"cpu": {"guest": 2}, "memory": {"guest": "1Gi"}, "annotations": {"it": "x"}}),
    )
    .expect("it");
    let v = vmi_for(&vm, Some(&it), None, &Default::default()).expect("vmi");
    assert_eq!(v.annotations().get("it").map(String::as_str), Some("x"));
    assert_eq!(v.annotations().get("a").map(String::as_str), Some("b"));
    assert_eq!(v.metadata.name.as_deref(), Some("demo"));
    assert_eq!(v.labels().get("app").map(String::as_str), Some("demo"));
    assert_eq!(
        v.labels().get(VM_NAME_LABEL).map(String::as_str),
        Some("demo")
    );
    assert_eq!(
        v.annotations()
            .get(VM_GENERATION_ANNOTATION)
            .map(String::as_str),
        Some("3")
    );
    let owner = &v.owner_references()[0];
    assert_eq!(
        (
            owner.uid.as_str(),
            owner.controller,
            owner.block_owner_deletion
        ),
        ("vm-uid", Some(true), Some(true))
    );
    let fw = v.spec.domain.firmware.as_ref().and_then(|f| f.uuid.clone());
    assert_eq!(fw, Some(kubevirt_api::defaults::firmware_uuid("demo")));
    assert_eq!(v.spec.domain.cpu.as_ref().and_then(|c| c.sockets), Some(2));
    assert_eq!(
        v.spec
            .domain
            .memory
            .as_ref()
            .and_then(|m| m.guest.clone())
            .map(|q| q.0),
        Some("1Gi".into())
    );
    assert_eq!(
        v.spec
            .domain
            .machine
            .as_ref()
            .and_then(|m| m.r#type.as_deref()),
        Some("q35"),
        "defaulted"
    );
}

#[test]
fn a_template_that_sets_what_its_instancetype_provides_makes_no_vmi() {
    let vm: VirtualMachine = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "demo", "namespace": "ns", "uid": "vm-uid"},
        "spec": {"runStrategy": "Always", "template": {
            "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}
    }))
    .expect("vm");
    let it: kubevirt_api::VirtualMachineInstancetypeSpec =
        serde_json::from_value(json!({"cpu": {"guest": 2}, "memory": {"guest": "1Gi"}}))
            .expect("it");
    let err = vmi_for(&vm, Some(&it), None, &Default::default()).expect_err("conflict");
    assert_eq!(
        err.to_string(),
        "VM field(s) spec.template.spec.domain.memory.guest conflicts with selected instance type"
    );
}

fn vm_meta(meta: serde_json::Value) -> VirtualMachine {
    let mut m = json!({"name": "v", "namespace": "ns", "uid": "vm-uid", "resourceVersion": "7"});
    if let (Some(o), Some(extra)) = (m.as_object_mut(), meta.as_object()) {
        o.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": m,
        "spec": {"runStrategy": "Always", "template": {}}
    }))
    .expect("vm")
}

const DELETED: &str = "2024-01-01T00:00:00Z";

#[test]
fn the_finalizer_is_added_to_a_vm_that_is_not_being_deleted() {
    assert_eq!(VM_FINALIZER, "kubevirt.io/virtualMachineControllerFinalize");
    let fresh = vm_meta(json!({"finalizers": ["example.com/other"]}));
    let running = vmi("Running", "a");
    for v in [None, Some(&running)] {
        assert_eq!(finalizer_step(&fresh, v), FinalizerStep::Add);
    }
    assert_eq!(
        finalizers_patch(&fresh, FinalizerStep::Add),
        Some(json!({"metadata": {"resourceVersion": "7",
            "finalizers": ["example.com/other", VM_FINALIZER]}})),
        "added next to the others, guarded by the resourceVersion"
    );
    // Never removed while the VM is not being deleted, whatever its VMI does.
    let held = vm_meta(json!({"finalizers": [VM_FINALIZER]}));
    for v in [None, Some(&running), Some(&vmi("Succeeded", "a"))] {
        assert_eq!(finalizer_step(&held, v), FinalizerStep::Keep);
    }
    assert_eq!(finalizers_patch(&held, FinalizerStep::Keep), None);
}

#[test]
fn a_deleted_vm_deletes_its_vmi_and_keeps_the_finalizer_while_the_vmi_exists() {
    let vm = vm_meta(json!({"finalizers": [VM_FINALIZER], "deletionTimestamp": DELETED}));
    let running = vmi("Running", "a");
    assert_eq!(
        decide_deleted(&vm, Some(&running)),
        Decision::Delete { restart: false }
    );
    assert_eq!(finalizer_step(&vm, Some(&running)), FinalizerStep::Keep);
    // Already being deleted (held by its own finalizer until QEMU is gone): wait.
    let mut going = running.clone();
    going.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    assert_eq!(decide_deleted(&vm, Some(&going)), Decision::Nothing);
    assert_eq!(finalizer_step(&vm, Some(&going)), FinalizerStep::Keep);
    // Foreground propagation deletes the VMI too.
    let fg = vm_meta(json!({"finalizers": ["foregroundDeletion", VM_FINALIZER],
        "deletionTimestamp": DELETED}));
    assert_eq!(
        decide_deleted(&fg, Some(&running)),
        Decision::Delete { restart: false }
    );
    assert_eq!(finalizer_step(&fg, Some(&running)), FinalizerStep::Keep);
}

#[test]
fn a_deleted_vm_whose_vmi_is_gone_is_released() {
    let vm = vm_meta(json!({"finalizers": ["foregroundDeletion", VM_FINALIZER],
        "deletionTimestamp": DELETED}));
    assert_eq!(decide_deleted(&vm, None), Decision::Nothing);
    assert_eq!(finalizer_step(&vm, None), FinalizerStep::Remove);
    assert_eq!(
        finalizers_patch(&vm, FinalizerStep::Remove),
        Some(json!({"metadata": {"resourceVersion": "7", "finalizers": ["foregroundDeletion"]}})),
        "only this controller's finalizer goes"
    );
    // Not ours (already removed, or a VM from before the finalizer): nothing to remove.
    let bare = vm_meta(json!({"deletionTimestamp": DELETED, "finalizers": ["x"]}));
    assert_eq!(finalizer_step(&bare, None), FinalizerStep::Keep);
}

#[test]
fn orphan_propagation_leaves_the_vmi_and_releases_the_vm() {
    let vm = vm_meta(json!({"finalizers": [VM_FINALIZER, "orphan"], "deletionTimestamp": DELETED}));
    assert!(orphans_dependents(&vm));
    let running = vmi("Running", "a");
    assert_eq!(decide_deleted(&vm, Some(&running)), Decision::Nothing);
    assert_eq!(finalizer_step(&vm, Some(&running)), FinalizerStep::Remove);
    assert_eq!(finalizer_step(&vm, None), FinalizerStep::Remove);
    assert_eq!(
        finalizers_patch(&vm, FinalizerStep::Remove),
        Some(json!({"metadata": {"resourceVersion": "7", "finalizers": ["orphan"]}}))
    );
}

#[test]
fn a_snapshot_or_restore_in_progress_holds_the_vm() {
    let mut st = VirtualMachineStatus::default();
    assert_eq!(held_by(&st), None);
    st.restore_in_progress = Some("r".into());
    assert_eq!(
        held_by(&st),
        Some((
            "RestoreInProgress",
            "Cannot start VM until restore \"r\" completes".to_string()
        ))
    );
    st.snapshot_in_progress = Some("s".into());
    assert_eq!(
        held_by(&st).map(|h| h.0),
        Some("SnapshotInProgress"),
        "the snapshot is named first"
    );
}

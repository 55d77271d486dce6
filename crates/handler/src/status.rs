//! The VMI status virt-handler reports, as pure functions of the launcher's state and the
//! VMI's current status: which phase, which conditions, which transition timestamps and which
//! events. No I/O here, so every mapping is unit-tested; `lib.rs` only writes the result.

use kube::runtime::events::EventType;
use kubevirt_api::quantity::Quantity;
use kubevirt_api::status::{condition, reason, VmiPhase};
use kubevirt_launcher::api::{Phase, State};
use serde_json::{json, Value};

/// The VMI phase a launcher phase stands for.
pub fn vmi_phase(p: Phase) -> VmiPhase {
    match p {
        // A migration target's VMI runs at the source until the migration completes.
        Phase::Pending | Phase::Starting | Phase::WaitingForMigration => VmiPhase::Scheduled,
        Phase::Running | Phase::Paused => VmiPhase::Running,
        Phase::Succeeded => VmiPhase::Succeeded,
        Phase::Failed => VmiPhase::Failed,
    }
}

/// The phase in a status JSON, `None` while unset (or not one of KubeVirt's).
pub fn phase_of(status: &Value) -> Option<VmiPhase> {
    status["phase"].as_str().and_then(VmiPhase::parse)
}

/// A condition; `lastTransitionTime` is kept from `current` when the condition's status did
/// not change (Kubernetes' convention), else it is `now`: the one rule, in
/// [`kubevirt_runtime::status::condition`].
pub fn condition(
    current: &Value,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    kubevirt_runtime::status::condition(current, kind, status, reason, message, now)
}

/// The status of a VMI that could not be started: phase Failed, reason `FailedToStart`, the
/// Ready condition saying why.
pub fn failed_to_start(current: &Value, message: &str, now: &str) -> Value {
    json!({
        "phase": VmiPhase::Failed.as_str(),
        "reason": reason::FAILED_TO_START,
        "conditions": [condition(current, condition::READY, false, reason::FAILED_TO_START, message, now)],
    })
}

/// The status of a VMI whose launcher cannot be made yet (KubeVirt: its Pod cannot be
/// created): the phase stays, `Synchronized` is False with reason `FailedCreate` and why.
pub fn not_synchronized(current: &Value, message: &str, now: &str) -> Value {
    not_synchronized_because(current, reason::FAILED_CREATE, message, now)
}

/// [`not_synchronized`] with another reason (`FailedMount`: a Secret the launcher needs is
/// missing, as kubelet reports a Secret volume it cannot mount).
pub fn not_synchronized_because(current: &Value, why: &str, message: &str, now: &str) -> Value {
    let mut conditions: Vec<Value> = current["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] != condition::SYNCHRONIZED)
        .cloned()
        .collect();
    conditions.push(condition(
        current,
        condition::SYNCHRONIZED,
        false,
        why,
        message,
        now,
    ));
    json!({"phase": current["phase"], "conditions": conditions})
}

/// KubeVirt's condition type for access credentials propagated by the guest agent.
pub const ACCESS_CREDENTIALS_SYNCHRONIZED: &str = "AccessCredentialsSynchronized";

/// The VMI status the launcher's state stands for.
pub fn from_launcher(state: &State, current: &Value, now: &str) -> Value {
    let phase = vmi_phase(state.phase);
    let running = state.phase == Phase::Running;
    let mut conditions = vec![condition(
        current,
        condition::READY,
        running,
        if running { "" } else { &state.reason },
        "",
        now,
    )];
    if state.phase == Phase::Paused {
        conditions.push(condition(
            current,
            condition::PAUSED,
            true,
            reason::PAUSED_BY_USER,
            "VMI was paused by user",
            now,
        ));
    }
    if let Some(acc) = state.accelerator {
        if acc.as_str() == "tcg" {
            conditions.push(condition(
                current,
                condition::SOFTWARE_EMULATION,
                true,
                "",
                &format!(
                    "Software emulation is enabled: {}",
                    state.accelerator_reason
                ),
                now,
            ));
        }
    }
    // KubeVirt sets AgentConnected while the agent answers and drops it when it does not.
    if state.guest_agent.is_some() {
        conditions.push(condition(
            current,
            condition::AGENT_CONNECTED,
            true,
            "",
            "",
            now,
        ));
    }
    // KubeVirt's AccessCredentialsSynchronized: how applying the guest agent's access
    // credentials went (no reason; the message says what failed).
    if let Some(ac) = &state.access_credentials {
        conditions.push(condition(
            current,
            ACCESS_CREDENTIALS_SYNCHRONIZED,
            ac.succeeded,
            "",
            &ac.message,
            now,
        ));
    }
    let mut transitions = current["phaseTransitionTimestamps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !transitions.iter().any(|t| t["phase"] == phase.as_str()) {
        transitions.push(json!({"phase": phase.as_str(), "phaseTransitionTimestamp": now}));
    }
    let mut status = json!({
        "phase": phase.as_str(),
        "conditions": conditions,
        "phaseTransitionTimestamps": transitions,
        "guestOSInfo": guest_os_info(state, current),
        "launcherContainerImageVersion": format!("kubevirt-rs/{}", env!("CARGO_PKG_VERSION")),
    });
    if !state.interfaces.is_empty() {
        status["interfaces"] = Value::Array(
            state
                .interfaces
                .iter()
                .map(|i| {
                    let mut v = json!({"name": i.name, "infoSource": i.info_source});
                    if let Some(mac) = &i.mac {
                        v["mac"] = json!(mac);
                    }
                    if let Some(n) = &i.interface_name {
                        v["interfaceName"] = json!(n);
                    }
                    if let Some(ip) = i.ip_addresses.first() {
                        v["ipAddress"] = json!(ip);
                        v["ipAddresses"] = json!(i.ip_addresses);
                    }
                    v
                })
                .collect(),
        );
    }
    if let Some(t) = &state.cpu_topology {
        status["currentCPUTopology"] =
            json!({"sockets": t.sockets, "cores": t.cores, "threads": t.threads});
    }
    if let Some(m) = &state.memory {
        let q = |b: u64| Quantity::from_value(i128::from(b)).to_string();
        status["memory"] = json!({
            "guestAtBoot": q(m.guest_at_boot),
            "guestCurrent": q(m.guest_current),
            "guestRequested": q(m.guest_requested),
        });
    }
    if state.phase.is_final() && !state.message.is_empty() {
        status["reason"] = json!(state.reason);
    }
    status
}

/// `guestOSInfo` from the guest agent; keys it no longer reports are cleared (`null` in the
/// merge patch), so a disconnected agent leaves `{}`.
fn guest_os_info(state: &State, current: &Value) -> Value {
    let mut os = state
        .guest_agent
        .as_ref()
        .and_then(|a| serde_json::to_value(&a.os).ok())
        .unwrap_or_else(|| json!({}));
    if let (Some(cur), Some(new)) = (current["guestOSInfo"].as_object(), os.as_object_mut()) {
        for k in cur.keys() {
            new.entry(k.clone()).or_insert(Value::Null);
        }
    }
    os
}

/// What the VMI spec asks of a running machine that its launcher has not applied yet
/// (LiveUpdate: the VM controller patched `spec.domain.cpu.sockets` or
/// `spec.domain.memory.guest`): `(sockets, guest memory bytes)`, `None` for what is applied.
pub fn resources_to_apply(
    vmi: &kubevirt_api::VirtualMachineInstance,
    state: &State,
) -> Option<(Option<u32>, Option<u64>)> {
    if !matches!(state.phase, Phase::Running | Phase::Paused) {
        return None;
    }
    let domain = &vmi.spec.domain;
    let sockets = match (
        domain.cpu.as_ref().and_then(|c| c.sockets),
        &state.cpu_topology,
    ) {
        (Some(want), Some(t)) if want > 0 && u32::try_from(want).ok() != Some(t.sockets) => {
            u32::try_from(want).ok()
        }
        _ => None,
    };
    let memory = match (
        domain.memory.as_ref().and_then(|m| m.guest.as_ref()),
        &state.memory,
    ) {
        (Some(q), Some(m)) => Quantity::from_k8s(q)
            .ok()
            .and_then(|q| u64::try_from(q.value()).ok())
            .filter(|b| *b != m.guest_requested),
        _ => None,
    };
    (sockets.is_some() || memory.is_some()).then_some((sockets, memory))
}

/// Whether `new` differs from `current` in what a user sees (phase, interfaces, conditions),
/// ignoring the conditions' timestamps: an unchanged state writes nothing.
pub fn changed(current: &Value, new: &Value) -> bool {
    [
        "phase",
        "interfaces",
        "conditions",
        "guestOSInfo",
        "currentCPUTopology",
        "memory",
    ]
    .iter()
    .any(|k| strip_times(&new[k]) != strip_times(&current[k]))
    // Written only while hotplugged volumes exist (or just went): compared only then.
    || (!new["volumeStatus"].is_null() && new["volumeStatus"] != current["volumeStatus"])
}

fn strip_times(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(a) = v.as_array_mut() {
        for c in a {
            if let Some(m) = c.as_object_mut() {
                m.remove("lastTransitionTime");
                m.remove("lastProbeTime");
            }
        }
    }
    v
}

/// The events virt-handler records when a VMI's reported status changes (KubeVirt's reasons).
pub fn transition_events(
    old: &Value,
    new: &Value,
    s: &State,
) -> Vec<(EventType, &'static str, String)> {
    let paused = |v: &Value| {
        v["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == condition::PAUSED && c["status"] == "True")
        })
    };
    let mut out = Vec::new();
    let (was, is) = (phase_of(old), phase_of(new));
    if was != is {
        match is {
            Some(VmiPhase::Running) => {
                out.push((
                    EventType::Normal,
                    "Started",
                    "VirtualMachineInstance started.".to_string(),
                ));
                // A memory snapshot's restore: the guest went on where it was saved.
                if s.reason == kubevirt_launcher::api::memstate::reason::RESTORED {
                    out.push((
                        EventType::Normal,
                        kubevirt_launcher::api::memstate::reason::RESTORED,
                        "VirtualMachineInstance started from a memory snapshot.".to_string(),
                    ));
                }
            }
            Some(VmiPhase::Succeeded) => out.push((
                EventType::Normal,
                "Stopped",
                format!("The VirtualMachineInstance was shut down ({}).", s.reason),
            )),
            Some(VmiPhase::Failed) => out.push((
                EventType::Warning,
                "Stopped",
                format!(
                    "The VirtualMachineInstance crashed: {}: {}",
                    s.reason, s.message
                ),
            )),
            _ => {}
        }
    }
    // KubeVirt's events for a changed AccessCredentialsSynchronized condition.
    let ac = |v: &Value| {
        v["conditions"].as_array().and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == ACCESS_CREDENTIALS_SYNCHRONIZED)
                .map(|c| {
                    (
                        c["status"] == "True",
                        c["message"].as_str().unwrap_or("").to_string(),
                    )
                })
        })
    };
    if let Some((ok, message)) = ac(new).filter(|n| ac(old).as_ref() != Some(n)) {
        out.push(if ok {
            (
                EventType::Normal,
                "AccessCredentialsSyncSuccess",
                if message.is_empty() {
                    "Access credentials sync successful.".to_string()
                } else {
                    format!("Access credentials sync successful: {message}")
                },
            )
        } else {
            (
                EventType::Warning,
                "AccessCredentialsSyncFailed",
                format!("Access credentials sync failed: {message}"),
            )
        });
    }
    match (paused(old), paused(new)) {
        (false, true) => out.push((
            EventType::Normal,
            "Paused",
            "The VirtualMachineInstance was paused.".to_string(),
        )),
        (true, false) if is == Some(VmiPhase::Running) => out.push((
            EventType::Normal,
            "Resumed",
            "The VirtualMachineInstance was resumed.".to_string(),
        )),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubevirt_launcher::accel::Accelerator;

    const T0: &str = "2026-01-01T00:00:00Z";
    const T1: &str = "2026-01-01T00:01:00Z";

    fn state(phase: Phase, reason: &str) -> State {
        let mut s = State::pending("default/vm");
        s.phase = phase;
        s.reason = reason.into();
        s
    }

    fn cond<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
    }

    #[test]
    fn access_credentials_outcome_is_kubevirts_condition_and_events() {
        let mut s = state(Phase::Running, "Started");
        let before = from_launcher(&s, &json!({}), T0);
        assert!(cond(&before, ACCESS_CREDENTIALS_SYNCHRONIZED).is_none());
        s.access_credentials = Some(kubevirt_launcher::launcher::AccessCredentialsStatus {
            succeeded: false,
            message: "Guest agent is offline".into(),
        });
        let failed = from_launcher(&s, &before, T1);
        let c = cond(&failed, ACCESS_CREDENTIALS_SYNCHRONIZED).expect("condition");
        assert_eq!(c["status"], "False");
        assert_eq!(c["message"], "Guest agent is offline");
        let ev = transition_events(&before, &failed, &s);
        assert!(ev
            .iter()
            .any(|(_, r, m)| *r == "AccessCredentialsSyncFailed"
                && m == "Access credentials sync failed: Guest agent is offline"));
        s.access_credentials = Some(Default::default());
        s.access_credentials.as_mut().unwrap().succeeded = true;
        let ok = from_launcher(&s, &failed, T1);
        assert_eq!(
            cond(&ok, ACCESS_CREDENTIALS_SYNCHRONIZED).unwrap()["status"],
            "True"
        );
        let ev = transition_events(&failed, &ok, &s);
        assert!(ev
            .iter()
            .any(|(_, r, m)| *r == "AccessCredentialsSyncSuccess"
                && m == "Access credentials sync successful."));
        // Unchanged: no event again.
        assert!(transition_events(&ok, &ok, &s)
            .iter()
            .all(|(_, r, _)| !r.starts_with("AccessCredentials")));
    }

    #[test]
    fn topology_and_memory_reach_the_status_and_spec_changes_are_found() {
        use kubevirt_launcher::launcher::{CpuTopology, MemoryState};
        let mut s = state(Phase::Running, "Started");
        s.cpu_topology = Some(CpuTopology {
            sockets: 1,
            cores: 2,
            threads: 1,
        });
        s.memory = Some(MemoryState {
            guest_at_boot: 1 << 30,
            guest_requested: 2 << 30,
            guest_current: 1536 << 20,
        });
        let st = from_launcher(&s, &Value::Null, T0);
        assert_eq!(
            st["currentCPUTopology"],
            json!({"sockets": 1, "cores": 2, "threads": 1})
        );
        assert_eq!(
            st["memory"],
            json!({"guestAtBoot": "1Gi", "guestCurrent": "1536Mi", "guestRequested": "2Gi"})
        );
        let mut later = st.clone();
        later["memory"]["guestCurrent"] = json!("2Gi");
        assert!(changed(&st, &later), "memory progress is written");

        let vmi: kubevirt_api::VirtualMachineInstance = serde_json::from_value(json!({
            "metadata": {"name": "vm"},
            "spec": {"domain": {"devices": {}, "cpu": {"sockets": 2, "cores": 2},
                                "memory": {"guest": "2Gi"}}}}))
        .unwrap();
        // Memory is already requested; one socket is missing.
        assert_eq!(resources_to_apply(&vmi, &s), Some((Some(2), None)));
        s.cpu_topology = Some(CpuTopology {
            sockets: 2,
            cores: 2,
            threads: 1,
        });
        assert_eq!(resources_to_apply(&vmi, &s), None);
        // Only a running (or paused) machine is changed.
        let mut starting = s.clone();
        starting.phase = Phase::Starting;
        starting.cpu_topology = None;
        assert_eq!(resources_to_apply(&vmi, &starting), None);
    }

    #[test]
    fn launcher_phases_map_to_kubevirts() {
        assert_eq!(vmi_phase(Phase::Pending), VmiPhase::Scheduled);
        assert_eq!(vmi_phase(Phase::Starting), VmiPhase::Scheduled);
        assert_eq!(vmi_phase(Phase::Paused), VmiPhase::Running);
        assert_eq!(vmi_phase(Phase::Failed), VmiPhase::Failed);
    }

    #[test]
    fn running_is_ready_paused_is_not_and_tcg_is_reported() {
        let mut s = state(Phase::Running, "Started");
        s.accelerator = Some(Accelerator::Tcg);
        s.accelerator_reason = "no usable KVM".into();
        s.interfaces = vec![kubevirt_launcher::api::GuestInterface {
            name: "default".into(),
            mac: Some("52:54:00:12:34:56".into()),
            ip_addresses: vec!["10.244.0.7".into()],
            info_source: "domain".into(),
            interface_name: None,
        }];
        let st = from_launcher(&s, &Value::Null, T0);
        assert_eq!(st["phase"], "Running");
        assert_eq!(cond(&st, "Ready").expect("Ready")["status"], "True");
        assert!(
            cond(&st, "SoftwareEmulation").expect("emulation")["message"]
                .as_str()
                .is_some_and(|m| m.contains("no usable KVM"))
        );
        assert_eq!(
            st["interfaces"],
            json!([{"name": "default", "mac": "52:54:00:12:34:56", "ipAddress": "10.244.0.7",
                    "ipAddresses": ["10.244.0.7"], "infoSource": "domain"}])
        );

        let p = from_launcher(&state(Phase::Paused, "PausedByUser"), &st, T1);
        assert_eq!(p["phase"], "Running");
        assert_eq!(cond(&p, "Ready").expect("Ready")["status"], "False");
        assert_eq!(
            cond(&p, "Paused").expect("Paused")["reason"],
            "PausedByUser"
        );
    }

    /// The guest agent's answers: AgentConnected, guestOSInfo and the guest's name for the
    /// interface, dropped again when it stops answering.
    #[test]
    fn a_connected_guest_agent_is_reported_as_kubevirt_does() {
        let mut s = state(Phase::Running, "Started");
        s.interfaces = vec![kubevirt_launcher::api::GuestInterface {
            name: "default".into(),
            mac: Some("52:54:00:12:34:56".into()),
            ip_addresses: vec!["10.244.0.7".into()],
            info_source: "domain, guest-agent".into(),
            interface_name: Some("eth0".into()),
        }];
        s.guest_agent = Some(kubevirt_launcher::agent::AgentStatus {
            version: "7.2.22".into(),
            os: kubevirt_api::VirtualMachineInstanceGuestOSInfo {
                id: Some("kubevirt-rs-demo".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let st = from_launcher(&s, &Value::Null, T0);
        assert_eq!(
            cond(&st, "AgentConnected").expect("AgentConnected")["status"],
            "True"
        );
        assert_eq!(st["guestOSInfo"], json!({"id": "kubevirt-rs-demo"}));
        assert_eq!(st["interfaces"][0]["interfaceName"], "eth0");
        assert_eq!(st["interfaces"][0]["infoSource"], "domain, guest-agent");
        s.guest_agent = None;
        let gone = from_launcher(&s, &st, T1);
        assert!(cond(&gone, "AgentConnected").is_none());
        assert_eq!(
            gone["guestOSInfo"],
            json!({"id": null}),
            "cleared in the merge patch"
        );
        assert!(changed(&st, &gone));
    }

    #[test]
    fn a_transition_time_moves_only_when_the_status_changes() {
        let s = state(Phase::Running, "Started");
        let first = from_launcher(&s, &Value::Null, T0);
        let again = from_launcher(&s, &first, T1);
        assert_eq!(
            cond(&again, "Ready").expect("Ready")["lastTransitionTime"],
            T0
        );
        assert!(!changed(&first, &again));
        let stopped = from_launcher(&state(Phase::Succeeded, "GuestShutdown"), &again, T1);
        assert_eq!(
            cond(&stopped, "Ready").expect("Ready")["lastTransitionTime"],
            T1
        );
        assert!(changed(&again, &stopped));
        // Each phase's first transition is recorded once.
        let ts = stopped["phaseTransitionTimestamps"]
            .as_array()
            .expect("transitions");
        assert_eq!(
            ts.iter().map(|t| t["phase"].clone()).collect::<Vec<_>>(),
            vec![json!("Running"), json!("Succeeded")]
        );
    }

    #[test]
    fn failed_to_start_names_the_reason_on_ready() {
        let st = failed_to_start(&Value::Null, "spec.volumes[0]: refused", T0);
        assert_eq!(phase_of(&st), Some(VmiPhase::Failed));
        assert_eq!(st["reason"], "FailedToStart");
        let ready = cond(&st, "Ready").expect("Ready");
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["message"], "spec.volumes[0]: refused");
    }

    #[test]
    fn events_follow_phase_and_pause_changes() {
        let running = from_launcher(&state(Phase::Running, "Started"), &Value::Null, T0);
        let s = state(Phase::Running, "Started");
        let ev = transition_events(&json!({"phase": "Scheduled"}), &running, &s);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].1, "Started");
        let paused = from_launcher(&state(Phase::Paused, "PausedByUser"), &running, T1);
        let ev = transition_events(&running, &paused, &s);
        assert_eq!(ev.iter().map(|e| e.1).collect::<Vec<_>>(), vec!["Paused"]);
        let ev = transition_events(&paused, &running, &s);
        assert_eq!(ev.iter().map(|e| e.1).collect::<Vec<_>>(), vec!["Resumed"]);
        let mut crashed = state(Phase::Failed, "Crashed");
        crashed.message = "signal 9".into();
        let failed = from_launcher(&crashed, &running, T1);
        let ev = transition_events(&running, &failed, &crashed);
        assert!(matches!(ev[0].0, EventType::Warning));
        assert!(ev[0].2.contains("Crashed: signal 9"));
        assert_eq!(failed["reason"], "Crashed");
    }
}

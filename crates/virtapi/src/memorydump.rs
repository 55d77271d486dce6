//! KubeVirt's memory dump requests (pkg/virt-api/rest/memorydump.go): the rules and messages
//! of `memorydump` / `removememorydump`, as pure functions of the VM, its VMI and the claim,
//! and the JSON patch of `status.memoryDumpRequest` they produce. The I/O is in `lib.rs`.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kubevirt_api::memdump::{self, phase};
use kubevirt_api::quantity::Quantity;
use kubevirt_api::VirtualMachineMemoryDumpRequest;
use serde_json::{json, Value};

/// KubeVirt's messages.
pub const PVC_VOLUME_MODE: &str = "pvc should be filesystem pvc";
pub const PVC_ACCESS_MODE: &str = "pvc access mode can't be read only";
pub const NO_CLAIM_NAME: &str = "Memory dump requires claim name to be set";

/// Which claim a `memorydump` request is for: the body's, else the one already associated
/// (KubeVirt's `validateMemoryDumpRequest`, its first half). `Err((conflict?, message))`:
/// `false` is a 400, `true` a 409 on the VM.
pub fn claim_of(
    current: Option<&VirtualMachineMemoryDumpRequest>,
    asked: &str,
) -> Result<String, (bool, String)> {
    match (current, asked) {
        (None, "") => Err((false, NO_CLAIM_NAME.into())),
        (Some(c), a) if !a.is_empty() && c.claim_name != a => Err((
            true,
            format!(
                "can't request memory dump for pvc [{a}] while pvc [{}] is still associated as the memory dump pvc",
                c.claim_name
            ),
        )),
        (Some(c), "") => Ok(c.claim_name.clone()),
        (_, a) => Ok(a.to_string()),
    }
}

/// `NewScaledQuantity(v, Kilo).String()`: `v` thousands in canonical decimal SI form.
fn kilo_string(kilos: u64) -> String {
    let mut v = kilos;
    for suffix in ["k", "M", "G", "T", "P"] {
        if !v.is_multiple_of(1000) || v == 0 {
            return format!("{v}{suffix}");
        }
        v /= 1000;
    }
    format!("{v}E")
}

/// Whether `claim` is already another's: named by the memory dump request of another VM of
/// the namespace (still associated: not being removed), or a volume of a VMI (a claim or a
/// DataVolume of that name). KubeVirt refuses this when it hotplugs the claim; here two dumps
/// into one claim would remove each other's files. The message of a 409 on the claim.
pub fn claim_taken(
    claim: &str,
    vm: &str,
    vms: &[kubevirt_api::VirtualMachine],
    vmis: &[kubevirt_api::VirtualMachineInstance],
) -> Result<(), String> {
    for other in vms
        .iter()
        .filter(|o| o.metadata.name.as_deref() != Some(vm))
    {
        let req = other
            .status
            .as_ref()
            .and_then(|s| s.memory_dump_request.as_ref());
        if req.is_some_and(|r| r.claim_name == claim && !r.remove.unwrap_or(false)) {
            return Err(format!(
                "pvc [{claim}] is already associated with the memory dump of vm {}",
                other.metadata.name.as_deref().unwrap_or_default()
            ));
        }
    }
    for vmi in vmis {
        let uses = vmi.spec.volumes.iter().flatten().any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|p| p.claim_name == claim)
                || v.data_volume.as_ref().is_some_and(|d| d.name == claim)
        });
        if uses {
            return Err(format!(
                "pvc [{claim}] is in use as a volume of vmi {}",
                vmi.metadata.name.as_deref().unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// KubeVirt's `validateMemoryDumpClaim` on the claim it found: Filesystem, writable, and at
/// least the VMI's memory + 100 MiB with the filesystem overhead (`overhead`, CDIConfig's for
/// the claim's class). `Err` is the message of a 409 on the claim.
pub fn check_claim(
    pvc: &PersistentVolumeClaim,
    vmi: &kubevirt_api::VirtualMachineInstanceSpec,
    overhead: &str,
) -> Result<(), String> {
    let spec = pvc.spec.clone().unwrap_or_default();
    if spec.volume_mode.as_deref() == Some("Block") {
        return Err(PVC_VOLUME_MODE.into());
    }
    if spec
        .access_modes
        .iter()
        .flatten()
        .any(|m| m == "ReadOnlyMany")
    {
        return Err(PVC_ACCESS_MODE.into());
    }
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| Quantity::from_k8s(q).ok())
        .map(|q| q.value().max(0) as u64)
        .unwrap_or(0);
    let kilos = size.div_ceil(1000);
    let expected = memdump::size_with_fs_overhead(memdump::expected_dump_bytes(vmi), overhead)?;
    if kilos.saturating_mul(1000) < expected {
        return Err(format!(
            "pvc size [{}] should be bigger then [{}]",
            kilo_string(kilos),
            Quantity::from_value(i128::from(expected))
        ));
    }
    Ok(())
}

/// KubeVirt's `generateVMMemoryDumpRequestPatch`: a JSON patch of the VM's status, guarded by
/// a test of the current request (`current`, as stored), setting `new` (a dump request when
/// `!remove`, else the removal). `Err` is the message of a 409 on the VM.
pub fn request_patch(
    vm_name: &str,
    status: &Value,
    claim: &str,
    remove: bool,
) -> Result<Value, String> {
    let current = &status["memoryDumpRequest"];
    let cur: Option<VirtualMachineMemoryDumpRequest> = if current.is_null() {
        None
    } else {
        Some(
            serde_json::from_value(current.clone())
                .map_err(|e| format!("status.memoryDumpRequest: {e}"))?,
        )
    };
    let new = if remove {
        let Some(c) = &cur else {
            return Err(format!(
                "can't remove memory dump association for vm {vm_name}, no association found"
            ));
        };
        if c.remove == Some(true) {
            return Err(format!(
                "memory dump remove request for pvc [{}] already exists",
                c.claim_name
            ));
        }
        json!({"claimName": c.claim_name, "phase": phase::DISSOCIATING, "remove": true})
    } else {
        if let Some(c) = &cur {
            if c.phase == phase::DISSOCIATING {
                return Err(format!(
                    "can't dump memory for pvc [{claim}] a remove memory dump request is in progress"
                ));
            }
            if c.phase != phase::COMPLETED && c.phase != phase::FAILED {
                return Err(format!(
                    "memory dump request for pvc [{claim}] already in progress"
                ));
            }
        }
        json!({"claimName": claim, "phase": phase::ASSOCIATING})
    };
    let empty_status = match status {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    };
    Ok(if empty_status {
        json!([{"op": "add", "path": "/status", "value": {"memoryDumpRequest": new}}])
    } else if cur.is_some() {
        json!([
            {"op": "test", "path": "/status/memoryDumpRequest", "value": current},
            {"op": "replace", "path": "/status/memoryDumpRequest", "value": new},
        ])
    } else {
        json!([
            {"op": "test", "path": "/status/memoryDumpRequest", "value": null},
            {"op": "add", "path": "/status/memoryDumpRequest", "value": new},
        ])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(claim: &str, phase: &str) -> VirtualMachineMemoryDumpRequest {
        VirtualMachineMemoryDumpRequest {
            claim_name: claim.into(),
            phase: phase.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_claim_is_the_bodys_or_the_associated_one() {
        assert_eq!(claim_of(None, ""), Err((false, NO_CLAIM_NAME.into())));
        assert_eq!(claim_of(None, "a").unwrap(), "a");
        let c = req("a", phase::COMPLETED);
        assert_eq!(claim_of(Some(&c), "").unwrap(), "a");
        assert_eq!(claim_of(Some(&c), "a").unwrap(), "a");
        let (conflict, msg) = claim_of(Some(&c), "b").unwrap_err();
        assert!(conflict);
        assert_eq!(msg, "can't request memory dump for pvc [b] while pvc [a] is still associated as the memory dump pvc");
    }

    fn pvc(v: Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "c"}, "spec": v})).unwrap()
    }

    #[test]
    fn claims_must_be_writable_filesystems_big_enough() {
        let vmi: kubevirt_api::VirtualMachineInstanceSpec = serde_json::from_value(
            json!({"domain": {"devices": {}, "resources": {"requests": {"memory": "256Mi"}}}}),
        )
        .unwrap();
        let ok = pvc(
            json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "376Mi"}}}),
        );
        assert_eq!(check_claim(&ok, &vmi, "0.055"), Ok(()));
        let big: kubevirt_api::VirtualMachineInstanceSpec =
            serde_json::from_value(json!({"domain": {"devices": {}, "memory": {"guest": "1Gi"}}}))
                .unwrap();
        let small = pvc(json!({"resources": {"requests": {"storage": "1Gi"}}}));
        // (1024 + 100) MiB * 1.055 = 1185.8 MiB.
        assert_eq!(
            check_claim(&small, &big, "0.055"),
            Err("pvc size [1073742k] should be bigger then [1186Mi]".into())
        );
        let small = pvc(json!({"resources": {"requests": {"storage": "300M"}}}));
        assert_eq!(
            check_claim(&small, &vmi, "0.055"),
            Err("pvc size [300M] should be bigger then [376Mi]".into())
        );
        let block =
            pvc(json!({"volumeMode": "Block", "resources": {"requests": {"storage": "1Gi"}}}));
        assert_eq!(check_claim(&block, &vmi, "0"), Err(PVC_VOLUME_MODE.into()));
        let ro = pvc(
            json!({"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}),
        );
        assert_eq!(check_claim(&ro, &vmi, "0"), Err(PVC_ACCESS_MODE.into()));
    }

    #[test]
    fn a_claim_of_another_vms_dump_or_a_vmis_volume_is_refused() {
        let vm = |name: &str, req: Value| -> kubevirt_api::VirtualMachine {
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"template": {"spec": {"domain": {"devices": {}}}}},
                "status": {"memoryDumpRequest": req}})).expect("vm")
        };
        let vmi = |name: &str, volume: Value| -> kubevirt_api::VirtualMachineInstance {
            serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"domain": {"devices": {}}, "volumes": [volume]}}))
            .expect("vmi")
        };
        let vms = [
            vm(
                "a",
                json!({"claimName": "c", "phase": "Completed", "fileName": "f"}),
            ),
            vm(
                "b",
                json!({"claimName": "gone", "phase": "Dissociating", "remove": true}),
            ),
        ];
        assert_eq!(
            claim_taken("c", "x", &vms, &[]),
            Err("pvc [c] is already associated with the memory dump of vm a".into())
        );
        // Its own request, and one being removed, take nothing.
        assert_eq!(claim_taken("c", "a", &vms, &[]), Ok(()));
        assert_eq!(claim_taken("gone", "x", &vms, &[]), Ok(()));
        let vmis = [
            vmi(
                "d",
                json!({"name": "disk", "persistentVolumeClaim": {"claimName": "data"}}),
            ),
            vmi("e", json!({"name": "dv", "dataVolume": {"name": "filled"}})),
        ];
        assert_eq!(
            claim_taken("data", "x", &[], &vmis),
            Err("pvc [data] is in use as a volume of vmi d".into())
        );
        assert!(claim_taken("filled", "x", &[], &vmis).is_err());
        assert_eq!(claim_taken("free", "x", &vms, &vmis), Ok(()));
    }

    #[test]
    fn requests_follow_kubevirts_phases() {
        // First request on a VM with a status: test for none, add.
        let st = json!({"printableStatus": "Running"});
        let p = request_patch("vm", &st, "c", false).unwrap();
        assert_eq!(
            p[0],
            json!({"op": "test", "path": "/status/memoryDumpRequest", "value": null})
        );
        assert_eq!(
            p[1]["value"],
            json!({"claimName": "c", "phase": "Associating"})
        );
        // While one is in progress: refused; after it completed: replaced.
        let st = json!({"memoryDumpRequest": {"claimName": "c", "phase": "InProgress"}});
        assert_eq!(
            request_patch("vm", &st, "c", false).unwrap_err(),
            "memory dump request for pvc [c] already in progress"
        );
        let st =
            json!({"memoryDumpRequest": {"claimName": "c", "phase": "Completed", "fileName": "f"}});
        let p = request_patch("vm", &st, "c", false).unwrap();
        assert_eq!(p[1]["op"], "replace");
        assert_eq!(
            p[1]["value"],
            json!({"claimName": "c", "phase": "Associating"})
        );
        // Removal: Dissociating with remove, once.
        let p = request_patch("vm", &st, "", true).unwrap();
        assert_eq!(
            p[1]["value"],
            json!({"claimName": "c", "phase": "Dissociating", "remove": true})
        );
        let st = json!({"memoryDumpRequest": {"claimName": "c", "phase": "Dissociating", "remove": true}});
        assert_eq!(
            request_patch("vm", &st, "", true).unwrap_err(),
            "memory dump remove request for pvc [c] already exists"
        );
        assert_eq!(
            request_patch("vm", &st, "c", false).unwrap_err(),
            "can't dump memory for pvc [c] a remove memory dump request is in progress"
        );
        assert_eq!(
            request_patch("vm", &json!({}), "", true).unwrap_err(),
            "can't remove memory dump association for vm vm, no association found"
        );
        assert_eq!(kilo_string(2000), "2M");
    }
}

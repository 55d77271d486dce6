//! KubeVirt's memory dump (`virtctl memory-dump`, docs/memory-snapshots.md "Memory dump"):
//! the one owner of its subresource names, phases, the claim annotation, the dump file's name,
//! the claim size rule, and the body of our internal VMI subresource.
//!
//! - `PUT .../virtualmachines/VM/memorydump` ([`SUBRESOURCE`], body
//!   [`crate::VirtualMachineMemoryDumpRequest`] `{claimName}`) and
//!   `PUT .../virtualmachines/VM/removememorydump` ([`REMOVE_SUBRESOURCE`]): virt-api sets
//!   `status.memoryDumpRequest` (KubeVirt's pkg/virt-api/rest/memorydump.go).
//! - `PUT .../virtualmachineinstances/VMI/dumpmemory` ([`DUMP_SUBRESOURCE`], ours, body
//!   [`DumpMemory`]): the memory dump controller's call; virt-api passes it to the VMI's node
//!   agent, which has the launcher write the ELF core and moves it into the claim under
//!   [`file_name`] ([`DumpResult`]).

use serde::{Deserialize, Serialize};

/// virt-api's VirtualMachine subresource that asks for a memory dump (KubeVirt's).
pub const SUBRESOURCE: &str = "memorydump";
/// virt-api's VirtualMachine subresource that dissociates the claim (KubeVirt's).
pub const REMOVE_SUBRESOURCE: &str = "removememorydump";
/// Ours: virt-api's VMI subresource through which the controller has the node agent dump.
pub const DUMP_SUBRESOURCE: &str = "dumpmemory";
/// On the claim: the file name of its last dump, or [`ANNOTATION_FAILED`]
/// (`v1.PVCMemoryDumpAnnotation`).
pub const ANNOTATION: &str = "kubevirt.io/memory-dump";
/// [`ANNOTATION`]'s value after a failed dump (KubeVirt's pkg/storage/memorydump).
pub const ANNOTATION_FAILED: &str = "Memory dump failed";
/// The suffix of every dump file; a new dump removes the claim's older ones (KubeVirt's
/// `removePreviousMemoryDump` removes names containing `memory.dump`).
pub const SUFFIX: &str = ".memory.dump";
/// KubeVirt's `CalcExpectedMemoryDumpSize` overhead over the guest's memory request.
pub const OVERHEAD_BYTES: u64 = 100 * 1024 * 1024;
/// CDI's default filesystem overhead (`DefaultFSOverhead`), when CDIConfig has none.
pub const DEFAULT_FS_OVERHEAD: &str = "0.055";

/// `v1.MemoryDumpPhase`.
pub mod phase {
    pub const ASSOCIATING: &str = "Associating";
    pub const IN_PROGRESS: &str = "InProgress";
    pub const UNMOUNTING: &str = "Unmounting";
    pub const COMPLETED: &str = "Completed";
    pub const DISSOCIATING: &str = "Dissociating";
    pub const FAILED: &str = "Failed";
}

/// `<vm>-<claim>-<YYYYMMDD-HHMMSS>.memory.dump` (KubeVirt's `dumpTargetFile`, UTC here), or
/// why it cannot be: both names must be DNS-1123 subdomains, so the result is one plain path
/// component (no `/`, never `.` or `..`).
pub fn file_name(vm: &str, claim: &str, unix_secs: i64) -> Result<String, String> {
    if let Some(p) = crate::names::dns1123_subdomain(vm) {
        return Err(format!("virtual machine name {vm:?}: {p}"));
    }
    check_claim(claim)?;
    let (y, mo, d, h, mi, s) = civil(unix_secs);
    Ok(format!(
        "{vm}-{claim}-{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}{SUFFIX}"
    ))
}

/// A claim name must be a DNS-1123 subdomain (a PersistentVolumeClaim's name).
pub fn check_claim(claim: &str) -> Result<(), String> {
    match crate::names::dns1123_subdomain(claim) {
        None => Ok(()),
        Some(p) => Err(format!("claim name {claim:?}: {p}")),
    }
}

/// Unix seconds → (year, month, day, hour, minute, second), UTC (Howard Hinnant's algorithm).
fn civil(t: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (secs / 3600) as u32,
        (secs % 3600 / 60) as u32,
        (secs % 60) as u32,
    )
}

/// KubeVirt's `CalcExpectedMemoryDumpSize`: the VMI's memory request (else its guest memory)
/// plus [`OVERHEAD_BYTES`].
pub fn expected_dump_bytes(spec: &crate::VirtualMachineInstanceSpec) -> u64 {
    let q = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| {
        crate::quantity::Quantity::from_k8s(q)
            .ok()
            .map(|q| q.value().max(0) as u64)
    };
    let request = spec
        .domain
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("memory"))
        .and_then(q);
    let guest = spec
        .domain
        .memory
        .as_ref()
        .and_then(|m| m.guest.as_ref())
        .and_then(q);
    request.or(guest).unwrap_or(0) + OVERHEAD_BYTES
}

/// KubeVirt's `GetSizeIncludingGivenOverhead`: `(1 + overhead) * size`, aligned up to 1 MiB.
pub fn size_with_fs_overhead(bytes: u64, overhead: &str) -> Result<u64, String> {
    let o: f64 = overhead
        .trim()
        .parse()
        .map_err(|e| format!("failed to parse filesystem overhead as float: {e}"))?;
    if !(0.0..1.0).contains(&o) {
        return Err(format!("filesystem overhead {overhead} is not in [0, 1)"));
    }
    let total = (1.0 + o) * bytes as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    Ok(if total < MIB {
        MIB
    } else {
        (total / MIB).ceil() * MIB
    } as u64)
}

/// The filesystem overhead CDIConfig's status gives a Filesystem claim of `class`
/// (KubeVirt's `GetFilesystemOverhead`), else [`DEFAULT_FS_OVERHEAD`].
pub fn fs_overhead(config: Option<&crate::CDIConfig>, class: Option<&str>) -> String {
    let o = config
        .and_then(|c| c.status.as_ref())
        .and_then(|s| s.filesystem_overhead.as_ref());
    let per_class = class.and_then(|c| o?.storage_class.as_ref()?.get(c).cloned());
    per_class
        .or_else(|| o.and_then(|o| o.global.clone()))
        .unwrap_or_else(|| DEFAULT_FS_OVERHEAD.to_string())
}

/// The body of [`DUMP_SUBRESOURCE`] (virt-api → node agent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DumpMemory {
    pub claim_name: String,
}

impl DumpMemory {
    pub fn parse(body: &serde_json::Value) -> Result<DumpMemory, String> {
        let d: DumpMemory =
            serde_json::from_value(body.clone()).map_err(|e| format!("claimName: {e}"))?;
        check_claim(&d.claim_name)?;
        Ok(d)
    }
}

/// The answer of [`DUMP_SUBRESOURCE`]: the file in the claim, and when the dump ran
/// (RFC 3339, as `status.memoryDumpRequest` carries them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpResult {
    pub file_name: String,
    pub size_bytes: u64,
    pub start_timestamp: String,
    pub end_timestamp: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_kubevirts_and_one_plain_component() {
        // 2026-11-30 23:05:09 UTC.
        assert_eq!(
            file_name("demo", "dump", 1_796_079_909).unwrap(),
            "demo-dump-20261130-230509.memory.dump"
        );
        assert_eq!(
            file_name("a.b", "c", 0).unwrap(),
            "a.b-c-19700101-000000.memory.dump"
        );
        for bad in ["../x", "a/b", "..", ".", "", "A", "x\0y", "-x", "a..b"] {
            assert!(file_name("vm", bad, 0).is_err(), "claim {bad:?}");
            assert!(file_name(bad, "c", 0).is_err(), "vm {bad:?}");
            assert!(DumpMemory::parse(&serde_json::json!({"claimName": bad})).is_err());
        }
        assert!(DumpMemory::parse(&serde_json::json!({"claimName": "c", "path": "/x"})).is_err());
        assert_eq!(
            DumpMemory::parse(&serde_json::json!({"claimName": "c"})).unwrap(),
            DumpMemory {
                claim_name: "c".into()
            }
        );
    }

    #[test]
    fn claim_sizes_follow_kubevirt() {
        let spec: crate::VirtualMachineInstanceSpec = serde_json::from_value(serde_json::json!({
            "domain": {"devices": {}, "memory": {"guest": "256Mi"}}
        }))
        .unwrap();
        assert_eq!(expected_dump_bytes(&spec), 356 << 20);
        let spec: crate::VirtualMachineInstanceSpec = serde_json::from_value(serde_json::json!({
            "domain": {"devices": {}, "memory": {"guest": "1Gi"},
                "resources": {"requests": {"memory": "512Mi"}}}
        }))
        .unwrap();
        assert_eq!(expected_dump_bytes(&spec), 612 << 20);
        // 356 MiB * 1.055 = 375.58 MiB → 376 MiB.
        assert_eq!(
            size_with_fs_overhead(356 << 20, "0.055").unwrap(),
            376 << 20
        );
        assert_eq!(size_with_fs_overhead(10, "0").unwrap(), 1 << 20);
        assert!(size_with_fs_overhead(1, "x").is_err());
        assert!(size_with_fs_overhead(1, "1.5").is_err());
        assert_eq!(fs_overhead(None, Some("local-path")), "0.055");
    }
}

//! VirtualMachinePreference and VirtualMachineClusterPreference: KubeVirt's
//! pkg/instancetype/preference/webhooks/admitter.go.

use crate::field::{FieldError, Path};
use crate::validation::ValidationConfig;
use crate::{
    VirtualMachineClusterPreference, VirtualMachinePreference, VirtualMachinePreferenceSpec,
};

/// Every `preferredCPUTopology` KubeVirt knows, the deprecated `prefer*` spellings included.
pub const CPU_TOPOLOGIES: &[&str] = &[
    "sockets",
    "cores",
    "threads",
    "spread",
    "any",
    "preferSockets",
    "preferCores",
    "preferThreads",
    "preferSpread",
    "preferAny",
];
pub const SPREAD_ACROSS: &[&str] = &["CoresThreads", "SocketsCores", "SocketsCoresThreads"];

/// `ValidatePreferenceSpec`.
pub fn validate_spec(spec: &VirtualMachinePreferenceSpec, field: &Path) -> Vec<FieldError> {
    let Some(cpu) = spec.cpu.as_ref() else {
        return Vec::new();
    };
    let Some(topology) = cpu.preferred_cpu_topology.as_deref() else {
        return Vec::new();
    };
    let cpu_field = field.child("cpu");
    if !CPU_TOPOLOGIES.contains(&topology) {
        return vec![FieldError::invalid(
            cpu_field.child("preferredCPUTopology"),
            format!("unknown preferredCPUTopology {topology}"),
        )];
    }
    if topology != "spread" && topology != "preferSpread" {
        return Vec::new();
    }
    let opts = cpu.spread_options.as_ref();
    let ratio = opts.and_then(|o| o.ratio).unwrap_or(2);
    let across = opts
        .and_then(|o| o.across.as_deref())
        .unwrap_or("SocketsCores");
    let spread = cpu_field.child("spreadOptions");
    if !SPREAD_ACROSS.contains(&across) {
        return vec![FieldError::invalid(
            spread.child("across"),
            format!("across {across} is not supported"),
        )];
    }
    if across == "CoresThreads" && ratio != 2 {
        return vec![FieldError::invalid(
            spread.child("ratio"),
            "only a ratio of 2 (1 core 2 threads) is allowed when spreading vCPUs over cores and threads",
        )];
    }
    Vec::new()
}

pub fn validate(p: &VirtualMachinePreference, _cfg: &ValidationConfig) -> Vec<FieldError> {
    validate_spec(&p.spec, &Path::root("spec"))
}

pub fn validate_cluster(
    p: &VirtualMachineClusterPreference,
    _cfg: &ValidationConfig,
) -> Vec<FieldError> {
    // The cluster kind's spec is the same type under another name.
    match serde_json::to_value(&p.spec)
        .and_then(serde_json::from_value::<VirtualMachinePreferenceSpec>)
    {
        Ok(spec) => validate_spec(&spec, &Path::root("spec")),
        Err(e) => vec![FieldError::invalid("spec", e.to_string())],
    }
}

/// KubeVirt's warning for a deprecated `prefer*` topology (`checkForDeprecatedPreferredCPUTopology`).
pub fn deprecated_topology(spec: &VirtualMachinePreferenceSpec) -> Vec<String> {
    let Some(t) = spec
        .cpu
        .as_ref()
        .and_then(|c| c.preferred_cpu_topology.as_deref())
    else {
        return Vec::new();
    };
    let new = match t {
        "preferSockets" => "sockets",
        "preferCores" => "cores",
        "preferThreads" => "threads",
        "preferSpread" => "spread",
        "preferAny" => "any",
        _ => return Vec::new(),
    };
    vec![format!(
        "PreferredCPUTopology {t} is deprecated for removal in a future release, please use {new} instead"
    )]
}

pub fn warnings(p: &VirtualMachinePreference, _cfg: &ValidationConfig) -> Vec<String> {
    deprecated_topology(&p.spec)
}

pub fn warnings_cluster(
    p: &VirtualMachineClusterPreference,
    _cfg: &ValidationConfig,
) -> Vec<String> {
    serde_json::to_value(&p.spec)
        .and_then(serde_json::from_value::<VirtualMachinePreferenceSpec>)
        .map(|s| deprecated_topology(&s))
        .unwrap_or_default()
}

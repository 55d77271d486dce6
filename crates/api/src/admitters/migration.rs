//! VirtualMachineInstanceMigration: KubeVirt's migration-create-admitter.go and
//! migration-update-admitter.go.

use crate::admission::Request;
use crate::field::{CauseType, FieldError, Path};
use crate::validation::ValidationConfig;
use crate::VirtualMachineInstanceMigration;
use serde_json::Value;

/// The label that ties a migration to its VMI (`MigrationSelectorLabel`).
pub const SELECTOR_LABEL: &str = "kubevirt.io/vmi-name";
pub const DECENTRALIZED_GATE: &str = "DecentralizedLiveMigration";

fn finished(phase: Option<&str>) -> bool {
    matches!(phase, Some("Succeeded") | Some("Failed"))
}

/// Whether the user is KubeVirt's virt-controller (`hasRequestOriginatedFromVirtController`);
/// our controllers run as members of `system:masters`.
fn from_controller(req: &Request) -> bool {
    match req.user {
        None => true,
        Some(u) => {
            u.groups.iter().any(|g| g == crate::admission::MASTERS)
                || (u.is_kubevirt_component() && u.username.ends_with("kubevirt-controller"))
        }
    }
}

pub fn rules(
    new: &VirtualMachineInstanceMigration,
    old: Option<&VirtualMachineInstanceMigration>,
    req: &Request,
    cfg: &ValidationConfig,
) -> Vec<FieldError> {
    match old {
        Some(old) if req.is_update() => update(new, old),
        _ => create(new, req, cfg),
    }
}

fn create(
    m: &VirtualMachineInstanceMigration,
    req: &Request,
    cfg: &ValidationConfig,
) -> Vec<FieldError> {
    let spec = Path::root("spec");
    let vmi_name = m.spec.vmi_name.as_deref().unwrap_or("");
    if vmi_name.is_empty() {
        return vec![FieldError::required(
            spec.child("vmiName"),
            "vmiName is missing",
        )];
    }
    if m.spec.priority.is_some() && !from_controller(req) {
        return vec![FieldError::new(
            CauseType::FieldValueForbidden,
            "spec.migrationPriority",
            "Migration priority queue, only virt-controller is allowed to set priority field",
        )];
    }
    let ns = m.metadata.namespace.as_deref().unwrap_or("");
    if let Some(lookup) = req.lookup {
        let Some(vmi) = lookup.get("kubevirt.io", "virtualmachineinstances", ns, vmi_name) else {
            return vec![FieldError::invalid(
                "",
                format!("the VMI \"{ns}/{vmi_name}\" does not exist"),
            )];
        };
        if finished(vmi["status"]["phase"].as_str()) {
            return vec![FieldError::invalid(
                "",
                "Cannot migrate VMI in finalized state.",
            )];
        }
        let decentralized = m.spec.send_to.is_some() || m.spec.receive.is_some();
        for c in vmi["status"]["conditions"].as_array().into_iter().flatten() {
            if c["type"] == "LiveMigratable" && c["status"] == "False" {
                let reason = c["reason"].as_str().unwrap_or("");
                if reason == "DisksNotLiveMigratable" && decentralized {
                    continue;
                }
                return vec![FieldError::invalid(
                    "",
                    format!(
                        "Cannot migrate VMI, Reason: {reason}, Message: {}",
                        c["message"].as_str().unwrap_or("")
                    ),
                )];
            }
        }
        let in_flight = lookup
            .list("kubevirt.io", "virtualmachineinstancemigrations", ns)
            .into_iter()
            .find(|o: &Value| {
                o["metadata"]["labels"][SELECTOR_LABEL] == vmi_name
                    && !finished(o["status"]["phase"].as_str())
            });
        if let Some(o) = in_flight {
            return vec![FieldError::invalid(
                "",
                format!(
                    "in-flight migration detected. Active migration job ({}) is currently already in progress for VMI {}.",
                    o["metadata"]["uid"].as_str().unwrap_or(""),
                    o["spec"]["vmiName"].as_str().unwrap_or(vmi_name)
                ),
            )];
        }
    }
    if m.spec.send_to.is_some() || m.spec.receive.is_some() {
        if !cfg.gate(DECENTRALIZED_GATE) {
            return vec![FieldError::not_supported(
                "",
                format!("{DECENTRALIZED_GATE} feature gate is not enabled in kubevirt resource"),
            )];
        }
        if let (Some(s), Some(r)) = (&m.spec.send_to, &m.spec.receive) {
            if s.migration_id != r.migration_id {
                return vec![FieldError::invalid(
                    "",
                    format!(
                        "sendTo migrationID {} does not match receive migrationID {}",
                        s.migration_id, r.migration_id
                    ),
                )];
            }
        }
    }
    Vec::new()
}

fn update(
    new: &VirtualMachineInstanceMigration,
    old: &VirtualMachineInstanceMigration,
) -> Vec<FieldError> {
    if new.spec != old.spec {
        return vec![FieldError::not_supported(
            "",
            "update of Migration object's spec is restricted",
        )];
    }
    let phase = new.status.as_ref().and_then(|s| s.phase.as_deref());
    if !finished(phase) {
        if let Some(old_labels) = &old.metadata.labels {
            if let Some(old_label) = old_labels.get(SELECTOR_LABEL) {
                match &new.metadata.labels {
                    None => {
                        return vec![FieldError::not_supported(
                            "",
                            "selector label can't be removed from an in-flight migration",
                        )]
                    }
                    Some(l) if l.get(SELECTOR_LABEL) != Some(old_label) => {
                        return vec![FieldError::not_supported(
                            "",
                            "selector label can't be modified on an in-flight migration",
                        )]
                    }
                    _ => {}
                }
            }
        }
    }
    Vec::new()
}

//! VirtualMachineRestore: KubeVirt's pkg/storage/admitters/vmrestore.go.

use crate::admission::Request;
use crate::field::{CauseType, FieldError, Path};
use crate::validation::ValidationConfig;
use crate::VirtualMachineRestore;
use serde_json::Value;

pub const VOLUME_RESTORE_POLICIES: &[&str] = &["InPlace", "RandomizeNames", "PrefixTargetName"];
pub const VOLUME_OWNERSHIP_POLICIES: &[&str] = &["Vm", "None"];

pub fn rules(
    r: &VirtualMachineRestore,
    old: Option<&VirtualMachineRestore>,
    req: &Request,
    _cfg: &ValidationConfig,
) -> Vec<FieldError> {
    if req.is_update() {
        return match old {
            Some(o) if o.spec != r.spec => {
                vec![FieldError::invalid("spec", super::SPEC_IMMUTABLE)]
            }
            _ => Vec::new(),
        };
    }
    let spec = Path::root("spec");
    let target = spec.child("target");
    let mut errs = match r.spec.target.api_group.as_deref() {
        None => {
            return vec![FieldError::new(
                CauseType::FieldValueNotFound,
                target.child("apiGroup"),
                "missing apiGroup",
            )]
        }
        Some(super::snapshot::KUBEVIRT_GROUP) if r.spec.target.kind == "VirtualMachine" => {
            let mut errs = patches(
                r.spec.patches.as_deref().unwrap_or_default(),
                &spec.child("patches"),
            );
            errs.extend(target_vm(r, req, &spec));
            errs.extend(overrides(r, &spec));
            if let Some(p) = r.spec.volume_restore_policy.as_deref() {
                if !VOLUME_RESTORE_POLICIES.contains(&p) {
                    errs.push(FieldError::invalid(
                        spec.child("volumeRestorePolicy"),
                        format!("volume restore policy \"{p}\" doesn't exist"),
                    ));
                }
            }
            if let Some(p) = r.spec.volume_ownership_policy.as_deref() {
                if !VOLUME_OWNERSHIP_POLICIES.contains(&p) {
                    errs.push(FieldError::invalid(
                        spec.child("volumeOwnershipPolicy"),
                        format!("volume ownership policy \"{p}\" doesn't exist"),
                    ));
                }
            }
            errs
        }
        Some(super::snapshot::KUBEVIRT_GROUP) => {
            vec![FieldError::invalid(target.child("kind"), "invalid kind")]
        }
        Some(_) => vec![FieldError::invalid(
            target.child("apiGroup"),
            "invalid apiGroup",
        )],
    };
    // One restore at a time per target.
    if let Some(lookup) = req.lookup {
        let ns = r.metadata.namespace.as_deref().unwrap_or("");
        let want = serde_json::to_value(&r.spec.target).unwrap_or(Value::Null);
        for other in lookup.list("snapshot.kubevirt.io", "virtualmachinerestores", ns) {
            let complete = other["status"]["complete"].as_bool() == Some(true);
            if other["spec"]["target"] == want && !complete {
                errs.push(FieldError::invalid(
                    target.clone(),
                    format!(
                        "VirtualMachineRestore {:?} in progress",
                        other["metadata"]["name"].as_str().unwrap_or("")
                    ),
                ));
            }
        }
    }
    errs
}

/// `validatePatches`: each patch is a JSON object of `"key": value` pairs, and may only touch
/// `/spec/...`, labels and annotations.
fn patches(list: &[String], field: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for patch in list {
        // A patch that is a JSON object is read as one: its `path` (and a `move`'s `from`)
        // must be under /spec/, labels or annotations. KubeVirt splits the text on `,` and
        // `:` instead, which refuses any value with a colon, MAC addresses included (its own
        // clone's `newMacAddresses` patches); the split remains for text that is not JSON.
        if let Ok(obj) = serde_json::from_str::<serde_json::Map<String, Value>>(patch) {
            let moves = obj.get("op").and_then(Value::as_str) == Some("move");
            for key in ["path", "from"] {
                if key == "from" && !moves {
                    continue;
                }
                let Some(v) = obj.get(key) else { continue };
                let ok = v.as_str().is_some_and(|s| {
                    s.starts_with("/metadata/labels/")
                        || s.starts_with("/metadata/annotations/")
                        || s.starts_with("/spec/")
                });
                if !ok {
                    errs.push(FieldError::invalid(
                        field.clone(),
                        format!(
                            "patching is valid only for elements under /spec/ only: \"{key}\": {v}"
                        ),
                    ));
                }
            }
            continue;
        }
        let inner = patch.trim_matches(|c| c == '{' || c == '}');
        for kv in inner.split(',') {
            let parts: Vec<&str> = kv.split(':').collect();
            if parts.len() != 2 {
                errs.push(FieldError::invalid(
                    field.clone(),
                    format!("patch format is not valid - one \":\" expected in a single key-value json patch: {kv}"),
                ));
                continue;
            }
            let (key, value) = (parts[0].trim(), parts[1].trim());
            if key == "\"path\"" {
                if value.starts_with("\"/metadata/labels/")
                    || value.starts_with("\"/metadata/annotations/")
                {
                    continue;
                }
                if !value.starts_with("\"/spec/") {
                    errs.push(FieldError::invalid(
                        field.clone(),
                        format!("patching is valid only for elements under /spec/ only: {kv}"),
                    ));
                }
            }
        }
    }
    errs
}

/// `validateTargetVM`: restoring to another VM than the snapshot's is refused when the
/// snapshotted VM keeps backend storage (persistent TPM or EFI).
fn target_vm(r: &VirtualMachineRestore, req: &Request, spec: &Path) -> Vec<FieldError> {
    let Some(lookup) = req.lookup else {
        return Vec::new();
    };
    let ns = r.metadata.namespace.as_deref().unwrap_or("");
    let Some(snap) = lookup.get(
        "snapshot.kubevirt.io",
        "virtualmachinesnapshots",
        ns,
        &r.spec.virtual_machine_snapshot_name,
    ) else {
        return Vec::new();
    };
    let target = lookup.get("kubevirt.io", "virtualmachines", ns, &r.spec.target.name);
    let different = match (&target, snap["status"]["sourceUID"].as_str()) {
        (None, _) => true,
        (Some(t), Some(uid)) => t["metadata"]["uid"].as_str() != Some(uid),
        (Some(_), None) => false,
    };
    if !different {
        return Vec::new();
    }
    let Some(content) = snap["status"]["virtualMachineSnapshotContentName"]
        .as_str()
        .and_then(|c| {
            lookup.get(
                "snapshot.kubevirt.io",
                "virtualmachinesnapshotcontents",
                ns,
                c,
            )
        })
    else {
        return vec![FieldError::invalid(
            "",
            "snapshot content name is nil in vmSnapshot status",
        )];
    };
    let vm = &content["spec"]["source"]["virtualMachine"];
    let domain = &vm["spec"]["template"]["spec"]["domain"];
    let backend = domain["devices"]["tpm"]["persistent"] == true
        || domain["firmware"]["bootloader"]["efi"]["persistent"] == true;
    if backend {
        return vec![FieldError::invalid(
            spec.as_str(),
            "Restore to a different VM is not supported when snapshotted VM has backend storage (persistent TPM or EFI)",
        )];
    }
    Vec::new()
}

fn overrides(r: &VirtualMachineRestore, spec: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, o) in r.spec.volume_restore_overrides.iter().flatten().enumerate() {
        let p = spec.child("volumeRestoreOverrides").index(i);
        if o.volume_name.as_deref().unwrap_or("").is_empty() {
            errs.push(FieldError::invalid(
                p.child("volumeName"),
                "must provide a volume name",
            ));
        }
        if o.restore_name.as_deref().unwrap_or("").is_empty()
            && o.annotations.is_none()
            && o.labels.is_none()
        {
            errs.push(FieldError::invalid(
                p,
                "must provide at least one overriden field",
            ));
        }
    }
    errs
}

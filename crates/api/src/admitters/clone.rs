//! VirtualMachineClone: KubeVirt's vmclone-admitter.go. Cloning rides on snapshots: creating
//! a clone needs the Snapshot feature gate (Beta, so on unless disabled).
//!
//! Field paths are KubeVirt's, capitals included (`spec.Source.Kind`), so a user who greps
//! for KubeVirt's error finds ours.

use crate::admission::Request;
use crate::field::{FieldError, Path};
use crate::validation::ValidationConfig;
use crate::{names, VirtualMachineClone};

const VM_KIND: &str = "VirtualMachine";
const SNAPSHOT_KIND: &str = "VirtualMachineSnapshot";
pub const SNAPSHOT_GATE_OFF: &str = "snapshot feature gate is not enabled";

/// KubeVirt's clone-create-mutator `generateTargetName`: `clone-<source>-<suffix>`.
pub fn target_name_for(source: &str, suffix: &str) -> String {
    format!("clone-{source}-{suffix}")
}

/// KubeVirt's clone-create mutator: a clone without a target (or with an unnamed one) gets
/// the VirtualMachine `clone-<source>-<5 random characters>` (apimachinery's `rand.String`
/// alphabet), so the target's name is known from the start (`spec.target.name`).
pub fn on_create(c: &mut VirtualMachineClone) {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    let name = target_name_for(&c.spec.source.name, &suffix);
    match c.spec.target.as_mut() {
        None => {
            c.spec.target = Some(k8s_openapi::api::core::v1::TypedLocalObjectReference {
                api_group: Some("kubevirt.io".into()),
                kind: VM_KIND.into(),
                name,
            })
        }
        Some(t) if t.name.is_empty() => t.name = name,
        Some(_) => {}
    }
}

pub fn rules(
    c: &VirtualMachineClone,
    _old: Option<&VirtualMachineClone>,
    req: &Request,
    cfg: &ValidationConfig,
) -> Vec<FieldError> {
    if !req.is_update() && !cfg.gate("Snapshot") {
        return vec![FieldError::invalid("", SNAPSHOT_GATE_OFF)];
    }
    let spec = &c.spec;
    let mut errs = Vec::new();
    let template = spec.template.as_ref();
    filters(
        spec.annotation_filters.as_deref(),
        "spec.annotations",
        &mut errs,
    );
    filters(spec.label_filters.as_deref(), "spec.labels", &mut errs);
    filters(
        template.and_then(|t| t.annotation_filters.as_deref()),
        "spec.template.annotations",
        &mut errs,
    );
    filters(
        template.and_then(|t| t.label_filters.as_deref()),
        "spec.template.labels",
        &mut errs,
    );

    // validateSourceAndTargetKind
    let source = &spec.source;
    if ![VM_KIND, SNAPSHOT_KIND].contains(&source.kind.as_str()) {
        errs.push(FieldError::invalid(
            "spec.Source.Kind",
            "Source kind is not supported",
        ));
    }
    if let Some(t) = &spec.target {
        if t.kind != VM_KIND {
            errs.push(FieldError::invalid(
                "spec.Target.Kind",
                "Target kind is not supported",
            ));
        }
    }

    // validateSource (a missing source is refused when the object is decoded).
    if source.api_group.as_deref().unwrap_or("").is_empty() {
        errs.push(FieldError::invalid(
            "spec.Source.APIGroup",
            "Source's APIGroup cannot be empty",
        ));
    }
    if source.kind.is_empty() {
        errs.push(FieldError::invalid(
            "spec.Source",
            "Source's Kind cannot be empty",
        ));
    }
    if source.name.is_empty() {
        errs.push(FieldError::invalid(
            "spec.Source.Name",
            "Source's name cannot be empty",
        ));
    }

    // validateTarget
    if let Some(t) = &spec.target {
        if source.kind == VM_KIND && t.kind == VM_KIND && t.name == source.name {
            errs.push(FieldError::invalid(
                "spec.target.name",
                "Target name cannot be equal to source name when both are VirtualMachines",
            ));
        }
    }

    // validateNewMacAddresses: the addresses end up on the clone's interfaces, and from there
    // in QEMU's `-netdev`/`-device` options, so only well-formed ones pass.
    let macs = Path::root("spec").child("newMacAddresses");
    for (iface, mac) in spec.new_mac_addresses.iter().flatten() {
        if mac.is_empty() {
            continue;
        }
        // Go's net.ParseMAC plus KubeVirt's six-octet limit; both fail as "malformed" here.
        if names::parse_mac(mac).is_some_and(|o| o.len() == 6) {
            continue;
        }
        errs.push(FieldError::invalid(
            macs.child(iface),
            format!("interface {iface} has malformed MAC address ({mac})."),
        ));
    }

    // validatePatches
    let patches = Path::root("spec").child("patches");
    for (i, p) in spec.patches.iter().flatten().enumerate() {
        if serde_json::from_str::<serde::de::IgnoredAny>(p).is_err() {
            errs.push(FieldError::invalid(
                patches.index(i),
                format!("patch is not valid JSON ({p})"),
            ));
        }
    }
    errs
}

/// `validateFilters`: `!` only first, `*` only last; a lone `!` filters nothing.
fn filters(list: Option<&[String]>, field: &str, errs: &mut Vec<FieldError>) {
    for f in list.unwrap_or_default() {
        if f.len() == 1 {
            if f == "!" {
                errs.push(FieldError::invalid(
                    field,
                    "a negation character is not a valid filter",
                ));
            }
            continue;
        }
        let mut chars = f.chars();
        chars.next();
        if chars.as_str().contains('!') {
            errs.push(FieldError::invalid(
                field,
                format!("{field} filter {f} is invalid: cannot contain a negation character (!); FilterRules: NegationChar can be only used at the beginning of the filter"),
            ));
        }
        let mut chars = f.chars();
        chars.next_back();
        if chars.as_str().contains('*') {
            errs.push(FieldError::invalid(
                field,
                format!("{field} filter {f} is invalid: cannot contain a wildcard character (*); FilterRules: WildcardChar can be only at the end of the filter"),
            ));
        }
    }
}

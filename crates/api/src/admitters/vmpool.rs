//! VirtualMachinePool: KubeVirt's vmpool-admitter.go.

use crate::admission::Request;
use crate::field::{FieldError, Path};
use crate::validation::ValidationConfig;
use crate::VirtualMachinePool;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub fn validate(pool: &VirtualMachinePool, cfg: &ValidationConfig) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let field = Path::root("spec");
    let spec = &pool.spec;
    let Some(vm_spec) = spec.virtual_machine_template.spec.as_ref() else {
        return vec![FieldError::required(
            field.child("template"),
            "missing virtual machine template.",
        )];
    };
    super::vm::validate_vm_spec(
        vm_spec,
        pool.metadata.name.as_deref().unwrap_or(""),
        &field.child("virtualMachineTemplate").child("spec"),
        cfg,
        &mut errs,
    );
    let labels = spec
        .virtual_machine_template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    super::check_selector(&spec.selector, labels, &field, &mut errs);
    let mu = field.child("maxUnavailable");
    match &spec.max_unavailable {
        Some(IntOrString::String(s)) => match s.strip_suffix('%') {
            None => errs.push(FieldError::invalid(
                mu,
                "maxUnavailable percentage must end with %",
            )),
            Some(p) => match p.parse::<i64>() {
                Err(_) => errs.push(FieldError::invalid(
                    mu,
                    format!("maxUnavailable percentage value {p:?} is invalid: strconv.Atoi: parsing {p:?}: invalid syntax"),
                )),
                Ok(v) if v <= 0 || v > 100 => errs.push(FieldError::invalid(
                    mu,
                    format!("maxUnavailable percentage value {v} must be between 1 and 100"),
                )),
                Ok(_) => {}
            },
        },
        Some(IntOrString::Int(v)) if *v <= 0 => errs.push(FieldError::invalid(
            mu,
            "maxUnavailable must be greater than 0",
        )),
        _ => {}
    }
    if let Some(u) = &spec.update_strategy {
        exclusive(
            field.child("updateStrategy"),
            [
                ("unmanaged", u.unmanaged.is_some()),
                ("opportunistic", u.opportunistic.is_some()),
                ("proactive", u.proactive.is_some()),
            ],
            &mut errs,
        );
    }
    if let Some(s) = &spec.scale_in_strategy {
        exclusive(
            field.child("scaleInStrategy"),
            [
                ("unmanaged", s.unmanaged.is_some()),
                ("opportunistic", s.opportunistic.is_some()),
                ("proactive", s.proactive.is_some()),
            ],
            &mut errs,
        );
    }
    errs
}

fn exclusive(field: Path, set: [(&str, bool); 3], errs: &mut Vec<FieldError>) {
    let configured: Vec<&str> = set.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
    if configured.len() > 1 {
        errs.push(FieldError::invalid(
            field,
            format!(
                "only one strategy can be configured at a time: but found {} strategies",
                configured.join(", ")
            ),
        ));
    }
}

pub fn rules(
    pool: &VirtualMachinePool,
    old: Option<&VirtualMachinePool>,
    req: &Request,
    _cfg: &ValidationConfig,
) -> Vec<FieldError> {
    // The reserved labels of the VM template's VMI template (`ValidateVirtualMachineSpec`).
    let mut errs = Vec::new();
    let labels = pool
        .spec
        .virtual_machine_template
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    super::vm::template_labels(
        labels,
        &Path::root("spec")
            .child("virtualMachineTemplate")
            .child("spec")
            .child("template")
            .child("metadata"),
        req.privileged(),
        &mut errs,
    );
    if !errs.is_empty() {
        return errs;
    }
    match old {
        Some(old) if req.is_update() && old.spec.selector != pool.spec.selector => {
            vec![FieldError::invalid(
                "spec.selector",
                "selector is immutable after creation.",
            )]
        }
        _ => Vec::new(),
    }
}

//! NVIDIA Grace GPU passthrough: KubeVirt's grace_io_virtualization.go. A GPU or host device
//! whose resource the cluster permits with an NVIDIA Grace PCI selector (`10DE:2342`,
//! `10DE:2348`, `10DE:2941`) needs the Alpha `GraceIOVirtualization` gate and KubeVirt's
//! static baseline (arm64, a `virt` machine, dedicated CPUs, the PCINUMAAwareTopology and
//! IOMMUFD gates), and may not be combined with the annotations that move PCI devices to the
//! root complex or disable the 64-bit PCI hole.
//!
//! Without `permittedHostDevices.pciHostDevices` in the cluster configuration (the default)
//! none of this applies.

use super::ValidationConfig;
use crate::field::{FieldError, Path};
use crate::VirtualMachineInstanceSpec;
use std::collections::BTreeMap;

/// KubeVirt's `v1.PlacePCIDevicesOnRootComplex`.
pub const PLACE_PCI_DEVICES_ON_ROOT_COMPLEX: &str = "kubevirt.io/placePCIDevicesOnRootComplex";
/// KubeVirt's `v1.DisablePCIHole64`.
pub const DISABLE_PCI_HOLE64: &str = "kubevirt.io/disablePCIHole64";

const NVIDIA: &str = "10DE";
const GRACE_GPUS: &[&str] = &["2342", "2348", "2941"];

/// `hwutil.NormalizePCIID`.
fn normalize(id: &str) -> String {
    let id = id.trim().to_uppercase();
    id.strip_prefix("0X").map(str::to_string).unwrap_or(id)
}

fn is_hex_id(id: &str) -> bool {
    id.len() == 4
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// `hwutil.ParsePCIVendorSelector`: `vendor:device`, both 4 hex digits, the device may be `*`.
fn parse_selector(s: &str) -> Option<(String, String)> {
    let mut parts = s.split(':');
    let (Some(v), Some(d), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let (v, d) = (normalize(v), normalize(d));
    (is_hex_id(&v) && (d == "*" || is_hex_id(&d))).then_some((v, d))
}

/// A GPU or host device asking for a permitted PCI resource.
struct Request {
    path: Path,
    resource: String,
}

/// The requests for Grace GPUs, and those for NVIDIA resources permitted with a wildcard
/// device (`10DE:*`), which could be a Grace GPU or not.
fn requests(
    field: &Path,
    spec: &VirtualMachineInstanceSpec,
    cfg: &ValidationConfig,
) -> (Vec<Request>, Vec<Request>) {
    let selectors: BTreeMap<&str, &str> = cfg
        .permitted_pci_host_devices
        .iter()
        .filter(|d| !d.resource_name.is_empty() && !d.pci_vendor_selector.is_empty())
        .map(|d| (d.resource_name.as_str(), d.pci_vendor_selector.as_str()))
        .collect();
    if selectors.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let devices = field.child("domain").child("devices");
    let asked = spec
        .domain
        .devices
        .gpus
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, g)| (devices.child("gpus").index(i), &g.device_name))
        .chain(
            spec.domain
                .devices
                .host_devices
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, h)| (devices.child("hostDevices").index(i), &h.device_name)),
        );
    let (mut grace, mut ambiguous) = (Vec::new(), Vec::new());
    for (path, name) in asked {
        let Some(name) = name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let Some((vendor, device)) = selectors.get(name).and_then(|s| parse_selector(s)) else {
            continue;
        };
        let r = Request {
            path: path.child("deviceName"),
            resource: name.to_string(),
        };
        if vendor == NVIDIA && GRACE_GPUS.contains(&device.as_str()) {
            grace.push(r);
        } else if vendor == NVIDIA && device == "*" {
            ambiguous.push(r);
        }
    }
    (grace, ambiguous)
}

/// `validateGraceIOVirtualization`, part of the spec rules (VMIs and templates).
pub(super) fn validate_spec(
    spec: &VirtualMachineInstanceSpec,
    root: &Path,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let (grace, ambiguous) = requests(root, spec, cfg);
    let enabled = cfg.gate("GraceIOVirtualization");
    if enabled {
        for r in &ambiguous {
            errs.push(FieldError::invalid(
                &r.path,
                format!("GraceIOVirtualization requires an exact pciVendorSelector for NVIDIA PCI host device resource {:?}", r.resource),
            ));
        }
    }
    if grace.is_empty() {
        return;
    }
    if !enabled {
        for r in &grace {
            errs.push(FieldError::invalid(
                &r.path,
                format!("GraceIOVirtualization feature gate must be enabled for NVIDIA Grace GPU passthrough resource {:?}", r.resource),
            ));
        }
        return;
    }
    let arch = spec
        .architecture
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or("amd64");
    if arch != "arm64" {
        errs.push(FieldError::invalid(
            root.child("architecture"),
            "GraceIOVirtualization requires arm64 architecture",
        ));
    }
    let machine = spec
        .domain
        .machine
        .as_ref()
        .and_then(|m| m.r#type.as_deref())
        .filter(|m| !m.is_empty())
        .unwrap_or(if arch == "arm64" { "virt" } else { "q35" });
    let domain = root.child("domain");
    if !machine.starts_with("virt") {
        errs.push(FieldError::invalid(
            domain.child("machine").child("type"),
            "GraceIOVirtualization requires \"virt\" machine type",
        ));
    }
    if spec
        .domain
        .cpu
        .as_ref()
        .is_none_or(|c| c.dedicated_cpu_placement != Some(true))
    {
        errs.push(FieldError::required(
            domain.child("cpu").child("dedicatedCpuPlacement"),
            "GraceIOVirtualization requires dedicated CPU placement",
        ));
    }
    for gate in ["PCINUMAAwareTopology", "IOMMUFD"] {
        if !cfg.gate(gate) {
            errs.push(FieldError::invalid(
                domain.child("devices"),
                format!("{gate} feature gate must be enabled when GraceIOVirtualization is used"),
            ));
        }
    }
}

/// `validateGraceIOVirtualizationAnnotations`: at `metadata` for a VMI, at
/// `spec.template.metadata` for a VM or a VMI replica set.
pub(crate) fn validate_annotations(
    field: &Path,
    spec: &VirtualMachineInstanceSpec,
    annotations: Option<&BTreeMap<String, String>>,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    if requests(&Path::root("spec"), spec, cfg).0.is_empty() {
        return;
    }
    let set = |k: &str| {
        annotations
            .and_then(|a| a.get(k))
            .is_some_and(|v| v == "true")
    };
    let at = field.child("annotations");
    if set(PLACE_PCI_DEVICES_ON_ROOT_COMPLEX) {
        errs.push(FieldError::invalid(
            format!("{at}[{PLACE_PCI_DEVICES_ON_ROOT_COMPLEX}]"),
            "GraceIOVirtualization is not compatible with placing PCI devices on the root complex",
        ));
    }
    if set(DISABLE_PCI_HOLE64) {
        errs.push(FieldError::invalid(
            format!("{at}[{DISABLE_PCI_HOLE64}]"),
            "GraceIOVirtualization requires the 64-bit PCI hole",
        ));
    }
}

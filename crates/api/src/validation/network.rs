//! KubeVirt's network admitter (pkg/network/admitter): networks, interfaces and the bindings
//! between them, with KubeVirt's messages and field paths.

use super::{check_boot_order, ValidationConfig, INTERFACE_MODELS, MICROVM};
use crate::field::{FieldError, Path};
use crate::names;
use crate::VirtualMachineInstanceSpec;
use std::collections::BTreeSet;

pub(super) fn validate_network(
    spec: &VirtualMachineInstanceSpec,
    root: &Path,
    cfg: &ValidationConfig,
    machine: &str,
    boot_orders: &mut BTreeSet<i32>,
    errs: &mut Vec<FieldError>,
) {
    let ifaces_p = root.child("domain").child("devices").child("interfaces");
    let nets_p = root.child("networks");
    let interfaces = spec
        .domain
        .devices
        .interfaces
        .as_deref()
        .unwrap_or_default();
    let networks = spec.networks.as_deref().unwrap_or_default();

    let mut pod_networks = 0;
    let mut multus_defaults = 0;
    let mut seen_nets: BTreeSet<&str> = BTreeSet::new();
    for (i, n) in networks.iter().enumerate() {
        let np = nets_p.index(i);
        if !seen_nets.insert(&n.name) {
            errs.push(FieldError::duplicate(
                np.child("name"),
                format!("Network with name \"{}\" already exists, every network must have a unique name", n.name),
            ));
        }
        let kinds = [
            n.pod.is_some(),
            n.multus.is_some(),
            n.resource_claim.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        match kinds {
            0 => errs.push(FieldError::required(
                np.clone(),
                "should have a network type",
            )),
            1 => {}
            _ => errs.push(FieldError::required(
                np.clone(),
                "should have only one network type",
            )),
        }
        if let Some(form) = names::interface_name(&n.name) {
            errs.push(FieldError::invalid(np.child("name"), form));
        }
        if n.pod.is_some() {
            pod_networks += 1;
        }
        if let Some(m) = &n.multus {
            if m.network_name.is_empty() {
                errs.push(FieldError::required(
                    np.clone(),
                    "CNI delegating plugin must have a networkName",
                ));
            }
            if m.default == Some(true) {
                multus_defaults += 1;
            }
        }
        if !interfaces.iter().any(|iface| iface.name == n.name) {
            errs.push(FieldError::required(
                np.child("name"),
                format!("{np}.name '{}' not found.", n.name),
            ));
        }
    }
    if pod_networks > 1 {
        errs.push(FieldError::duplicate(
            root.child("interfaces"),
            format!(
                "more than one interface is connected to a pod network in {}",
                root.child("interfaces")
            ),
        ));
    }
    if multus_defaults > 1 {
        errs.push(FieldError::invalid(
            root.child("networks"),
            "Multus CNI should only have one default network",
        ));
    }
    if pod_networks > 0 && multus_defaults > 0 {
        errs.push(FieldError::invalid(
            root.child("networks"),
            "Pod network cannot be defined when Multus default network is defined",
        ));
    }

    let mut seen_ifaces: BTreeSet<&str> = BTreeSet::new();
    for (i, iface) in interfaces.iter().enumerate() {
        let ip = ifaces_p.index(i);
        if !seen_ifaces.insert(&iface.name) {
            errs.push(FieldError::duplicate(
                ip.child("name"),
                "Only one interface can be connected to one specific network",
            ));
        }
        if let Some(form) = names::interface_name(&iface.name) {
            errs.push(FieldError::invalid(ip.child("name"), form));
        }
        if let Some(mac) = iface.mac_address.as_deref().filter(|m| !m.is_empty()) {
            match names::parse_mac(mac) {
                None => errs.push(FieldError::invalid(
                    ip.child("macAddress"),
                    format!("interface {ip}.name has malformed MAC address ({mac})."),
                )),
                Some(octets) if octets.len() > 6 => errs.push(FieldError::invalid(
                    ip.child("macAddress"),
                    format!("interface {ip}.name has too long MAC address ({mac})."),
                )),
                Some(_) => {}
            }
        }
        // KubeVirt's `validateDiscontinuedBindings`: the fields stay in the API, the bindings
        // are gone (passt lives on as `passtBinding`).
        for (set, field, message) in [
            (
                iface.slirp.is_some(),
                "slirp",
                "Slirp interface support has been discontinued since v1.3",
            ),
            (
                iface.passt.is_some(),
                "passt",
                "Passt network binding has been discontinued since v1.3",
            ),
            (
                iface.macvtap.is_some(),
                "macvtap",
                "Macvtap network binding has been discontinued since v1.3",
            ),
        ] {
            if set {
                errs.push(FieldError::invalid(ip.child(field), message));
            }
        }
        let net = networks.iter().find(|n| n.name == iface.name);
        match net {
            None => errs.push(FieldError::invalid(
                ip.child("name"),
                format!("{ip}.name '{}' not found.", iface.name),
            )),
            Some(n) => {
                if iface.masquerade.is_some() && n.pod.is_none() {
                    errs.push(FieldError::invalid(
                        ip.child("name"),
                        "Masquerade interface only implemented with pod network",
                    ));
                }
                if iface.bridge.is_some() && n.pod.is_some() && !cfg.permit_bridge_on_pod_network {
                    errs.push(FieldError::invalid(
                        ip.child("name"),
                        "Bridge on pod network configuration is not enabled under kubevirt-config",
                    ));
                }
            }
        }
        if let Some(model) = iface.model.as_deref() {
            if !INTERFACE_MODELS.contains(&model) {
                errs.push(FieldError::not_supported(
                    ip.child("model"),
                    format!("interface {ip}.name uses model {model} that is not supported."),
                ));
            }
        }
        if machine == MICROVM && iface.model.as_deref().unwrap_or("virtio") != "virtio" {
            errs.push(FieldError::invalid(
                ip.child("model"),
                format!(
                    "{ip} uses model {}: machine type microvm supports only model virtio",
                    iface.model.as_deref().unwrap_or("")
                ),
            ));
        }
        if let Some(bo) = iface.boot_order {
            check_boot_order(bo, &ip, boot_orders, errs);
        }
    }
    validate_interface_details(spec, root, cfg, errs);
    validate_dra_networks(spec, root, cfg, errs);
}

/// Interface states, binding count, passt, reserved MAC, PCI address, ports, port ranges and
/// DHCP options (`validateInterfaceStateValue`, `validateInterfaceBinding`,
/// `validateInterfacesFields`).
fn validate_interface_details(
    spec: &VirtualMachineInstanceSpec,
    root: &Path,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let ifaces_p = root.child("domain").child("devices").child("interfaces");
    let networks = spec.networks.as_deref().unwrap_or_default();
    let default_net = networks
        .iter()
        .find(|n| n.pod.is_some() || n.multus.as_ref().is_some_and(|m| m.default == Some(true)));
    for (idx, iface) in spec
        .domain
        .devices
        .interfaces
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let ip = ifaces_p.index(idx);
        let net = networks.iter().find(|n| n.name == iface.name);
        let on_pod = net.is_some_and(|n| n.pod.is_some());
        let name = &iface.name;
        // State.
        let state = iface.state.as_deref().unwrap_or("");
        let sp = ip.child("state");
        if !matches!(state, "" | "absent" | "down" | "up") {
            errs.push(FieldError::invalid(
                sp.clone(),
                format!("logical {name} interface state value is unsupported: {state}"),
            ));
        }
        if iface.sriov.is_some() && matches!(state, "down" | "up") {
            errs.push(FieldError::invalid(
                sp.clone(),
                format!("{name:?} interface's state {state:?} is not supported for SR-IOV NICs"),
            ));
        }
        if state == "absent" && iface.bridge.is_none() {
            errs.push(FieldError::invalid(
                sp.clone(),
                format!(
                    "{name:?} interface's state {state:?} is supported only for bridge binding"
                ),
            ));
        }
        if state == "absent" && default_net.is_some_and(|n| n.name == *name) {
            errs.push(FieldError::invalid(
                sp,
                format!(
                    "{name:?} interface's state {state:?} is not supported on default networks"
                ),
            ));
        }
        // Exactly one binding (the discontinued ones are reported on their own).
        let bindings = [
            iface.bridge.is_some(),
            iface.masquerade.is_some(),
            iface.sriov.is_some(),
            iface.passt_binding.is_some(),
            iface.binding.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if bindings != 1 {
            errs.push(FieldError::invalid(
                ip.clone(),
                format!("logical {name} interface must have exactly one binding method or binding plugin"),
            ));
        }
        if iface.masquerade.is_some() && iface.mac_address.as_deref() == Some(RESERVED_MAC) {
            errs.push(FieldError::invalid(
                ip.child("macAddress"),
                "The requested MAC address is reserved for the in-pod bridge. Please choose another one.",
            ));
        }
        if iface.passt_binding.is_some() {
            if !cfg.gate("PasstBinding") {
                errs.push(FieldError::invalid(
                    ip.child("name"),
                    "PasstBinding feature gate is not enabled",
                ));
            }
            if net.is_some() && !on_pod {
                errs.push(FieldError::invalid(
                    ip.child("name"),
                    "PasstBinding interface only implemented with pod network",
                ));
            }
        }
        if let Some(pci) = iface.pci_address.as_deref().filter(|p| !p.is_empty()) {
            if !names::pci_address_ok(pci) {
                errs.push(FieldError::invalid(
                    ip.child("pciAddress"),
                    format!("interface {ip}.name has malformed PCI address ({pci})."),
                ));
            }
        }
        // Forwarded ports (pod network only).
        if on_pod {
            let mut port_names: BTreeSet<&str> = BTreeSet::new();
            for (pi, port) in iface.ports.iter().flatten().enumerate() {
                let pp = ip.child("ports").index(pi);
                if let Some(pn) = port.name.as_deref().filter(|n| !n.is_empty()) {
                    if !port_names.insert(pn) {
                        errs.push(FieldError::duplicate(
                            pp.child("name"),
                            format!("Duplicate name of the port: {pn}"),
                        ));
                    }
                    if !port_name_ok(pn) {
                        errs.push(FieldError::invalid(
                            pp.child("name"),
                            format!("Invalid name of the port: {pn}"),
                        ));
                    }
                }
            }
            for (pi, port) in iface.ports.iter().flatten().enumerate() {
                let pp = ip.child("ports").index(pi);
                if port.port == 0 {
                    errs.push(FieldError::required(
                        pp.child("port"),
                        "Port field is mandatory.",
                    ));
                }
                if !(0..65536).contains(&port.port) {
                    errs.push(FieldError::invalid(
                        pp.child("port"),
                        "Port field must be in range 0 < x < 65536.",
                    ));
                }
                if !matches!(port.protocol.as_deref().unwrap_or(""), "" | "TCP" | "UDP") {
                    errs.push(FieldError::invalid(
                        pp.child("protocol"),
                        "Unknown protocol, only TCP or UDP allowed",
                    ));
                }
            }
        }
        validate_port_ranges(iface, &ip, on_pod, cfg, errs);
        if let Some(dhcp) = &iface.dhcp_options {
            let private = dhcp.private_options.as_deref().unwrap_or_default();
            let unique: BTreeSet<i32> = private.iter().map(|o| o.option).collect();
            if unique.len() < private.len() {
                errs.push(FieldError::invalid(
                    root.as_str(),
                    "Found Duplicates: you have provided duplicate DHCPPrivateOptions",
                ));
            }
            for o in private {
                if !(224..=254).contains(&o.option) {
                    errs.push(FieldError::invalid(
                        root.as_str(),
                        "provided DHCPPrivateOptions are out of range, must be in range 224 to 254",
                    ));
                }
            }
            for (ni, ntp) in dhcp.ntp_servers.iter().flatten().enumerate() {
                if ntp.parse::<std::net::Ipv4Addr>().is_err() {
                    errs.push(FieldError::invalid(
                        ip.child("dhcpOptions").child("ntpServers").index(ni),
                        "NTP servers must be a list of valid IPv4 addresses.",
                    ));
                }
            }
        }
    }
}

/// KubeVirt's `link.StaticMasqueradeBridgeMAC`: the in-pod bridge's own address.
const RESERVED_MAC: &str = "02:00:00:00:00:00";

/// Kubernetes' `IsValidPortName`: at most 15 lowercase letters, digits and single inner
/// dashes, with at least one letter.
fn port_name_ok(n: &str) -> bool {
    n.len() <= 15
        && n.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && n.bytes().any(|c| c.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

fn validate_port_ranges(
    iface: &crate::Interface,
    ip: &Path,
    on_pod: bool,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let Some(ranges) = iface.port_ranges.as_ref() else {
        return;
    };
    if !cfg.gate("PortRangesSpec") {
        errs.push(FieldError::invalid(
            ip.child("name"),
            "portRanges is specified on interface but the PortRangesSpec feature gate is not enabled",
        ));
        return;
    }
    if !on_pod {
        return;
    }
    if iface.ports.is_some() {
        errs.push(FieldError::invalid(
            ip.child("name"),
            "Cannot define both ports and portRanges on interface",
        ));
    }
    if iface.masquerade.is_none() {
        errs.push(FieldError::invalid(
            ip.child("name"),
            "portRanges are only supported on masquerade interfaces",
        ));
    }
    if ranges.len() > 10 {
        errs.push(FieldError::invalid(
            ip.child("portRanges"),
            "No more than 10 portRanges are allowed",
        ));
        return;
    }
    let mut by_proto: std::collections::BTreeMap<&str, Vec<(i32, i32)>> = Default::default();
    for (ri, r) in ranges.iter().enumerate() {
        let rp = ip.child("portRanges").index(ri);
        if r.protocol != "TCP" && r.protocol != "UDP" {
            errs.push(FieldError::invalid(
                rp.child("protocol"),
                "Unknown protocol, only TCP or UDP allowed",
            ));
        } else if !(1..65536).contains(&r.start) {
            errs.push(FieldError::invalid(
                rp.child("start"),
                "Start must be a valid port number, 0 < x < 65536",
            ));
        } else if !(1..65536).contains(&r.end) {
            errs.push(FieldError::invalid(
                rp.child("end"),
                "End must be a valid port number, 0 < x < 65536",
            ));
        } else if r.start > r.end {
            errs.push(FieldError::invalid(
                rp.child("start"),
                "Start must be less than or equal to end",
            ));
        } else {
            by_proto
                .entry(&r.protocol)
                .or_default()
                .push((r.start, r.end));
        }
    }
    for (proto, mut iv) in by_proto {
        iv.sort();
        for w in iv.windows(2) {
            if w[1].0 <= w[0].1 {
                errs.push(FieldError::invalid(
                    ip.child("portRanges"),
                    format!(
                        "{proto} portRanges [{}-{}] and [{}-{}] overlap",
                        w[0].0, w[0].1, w[1].0, w[1].1
                    ),
                ));
            }
        }
    }
}

/// KubeVirt's `validateNetworkDevicesWithDRA`: networks backed by a resource claim.
fn validate_dra_networks(
    spec: &VirtualMachineInstanceSpec,
    root: &Path,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let networks = spec.networks.as_deref().unwrap_or_default();
    if !networks.iter().any(|n| n.resource_claim.is_some()) {
        return;
    }
    let nets_p = root.child("networks");
    if !cfg.gate("NetworkDevicesWithDRA") {
        errs.push(FieldError::invalid(
            nets_p,
            "vmi.spec.networks contains DRA networks but NetworkDevicesWithDRA feature gate is not enabled",
        ));
        return;
    }
    if networks.iter().any(|n| n.multus.is_some()) {
        errs.push(FieldError::invalid(
            nets_p,
            "mixing Multus and DRA resourceClaim networks in the same VMI is not supported",
        ));
        return;
    }
    let interfaces = spec
        .domain
        .devices
        .interfaces
        .as_deref()
        .unwrap_or_default();
    let claims = spec.resource_claims.as_deref().unwrap_or_default();
    let mut first: std::collections::BTreeMap<String, usize> = Default::default();
    for (idx, n) in networks.iter().enumerate() {
        let Some(rc) = &n.resource_claim else {
            continue;
        };
        let np = nets_p.index(idx);
        if let Some(iface) = interfaces.iter().find(|i| i.name == n.name) {
            if iface.sriov.is_none() && iface.binding.is_none() {
                errs.push(FieldError::invalid(
                    root.child("domain").child("devices").child("interfaces"),
                    format!(
                        "DRA network {:?} requires an SR-IOV or binding plugin interface",
                        n.name
                    ),
                ));
            }
        }
        let claim = rc.claim_name.as_deref().unwrap_or("");
        let request = rc.request_name.as_deref().unwrap_or("");
        if claim.is_empty() {
            errs.push(FieldError::required(
                np.child("resourceClaim").child("claimName"),
                "claimName is required for DRA network",
            ));
        }
        if request.is_empty() {
            errs.push(FieldError::required(
                np.child("resourceClaim").child("requestName"),
                "requestName is required for DRA network",
            ));
        }
        if claim.is_empty() || request.is_empty() {
            continue;
        }
        if !claims.iter().any(|c| c.name == claim) {
            errs.push(FieldError::new(
                crate::field::CauseType::FieldValueNotFound,
                np.child("resourceClaim").child("claimName"),
                format!("network references resourceClaim {claim:?} which is not defined in spec.resourceClaims"),
            ));
        }
        let key = format!("{claim}/{request}");
        if let std::collections::btree_map::Entry::Vacant(e) = first.entry(key.clone()) {
            e.insert(idx);
        } else {
            errs.push(FieldError::duplicate(
                np,
                format!("duplicate claimName/requestName combination {key:?}"),
            ));
        }
    }
}

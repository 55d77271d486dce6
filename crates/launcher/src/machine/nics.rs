//! `spec.domain.devices.interfaces` + `spec.networks` → [`NicSpec`]s (masquerade, bridge).

use super::*;

pub(super) fn nics(ctx: &Ctx) -> Result<Vec<NicSpec>, SpecError> {
    let (env, microvm) = (ctx.env, ctx.microvm);
    let (name, namespace) = (ctx.name, ctx.namespace);
    let spec = &ctx.vmi.spec;
    let dev = &spec.domain.devices;
    // Interfaces.
    for (i, n) in spec.networks.iter().flatten().enumerate() {
        if let Some(form) = kubevirt_api::names::interface_name(&n.name) {
            return Err(SpecError::new(format!("spec.networks[{i}].name"), form));
        }
    }
    let networks: BTreeMap<&str, &kubevirt_api::Network> = spec
        .networks
        .iter()
        .flatten()
        .map(|n| (n.name.as_str(), n))
        .collect();
    let mut nics = Vec::new();
    let mut next_port = 0u16;
    let tap_seed = format!("{namespace}/{name}");
    for (i, iface) in dev.interfaces.iter().flatten().enumerate() {
        let ip = format!("spec.domain.devices.interfaces[{i}]");
        // KubeVirt's interface name rule (also admission's): the name becomes a QEMU id.
        if let Some(form) = kubevirt_api::names::interface_name(&iface.name) {
            return Err(SpecError::new(format!("{ip}.name"), form));
        }
        let mac = match iface.mac_address.as_deref().filter(|m| !m.is_empty()) {
            None => None,
            Some(m) => Some(crate::qemu::nics::normalise_mac(m).ok_or_else(|| {
                SpecError::new(
                    format!("{ip}.macAddress"),
                    format!("{m:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
                )
            })?),
        };
        let model = match iface.model.as_deref().unwrap_or("virtio") {
            "virtio" => NicModel::Virtio,
            "e1000" => NicModel::E1000,
            "e1000e" => NicModel::E1000e,
            "rtl8139" => NicModel::Rtl8139,
            m => {
                return Err(SpecError::new(
                    format!("{ip}.model"),
                    format!("model {m} is not supported: use virtio, e1000, e1000e or rtl8139"),
                ))
            }
        };
        if microvm && model != NicModel::Virtio {
            return Err(SpecError::new(
                format!("{ip}.model"),
                "microvm supports only virtio",
            ));
        }
        let Some(net) = networks.get(iface.name.as_str()) else {
            return Err(SpecError::new(
                format!("{ip}.name"),
                format!("interface {} has no network of the same name", iface.name),
            ));
        };
        let backend = if iface.masquerade.is_some() {
            if net.pod.is_none() {
                return Err(SpecError::new(
                    format!("{ip}.masquerade"),
                    "masquerade is only allowed on the pod network",
                ));
            }
            let mut forwards = Vec::new();
            for (j, p) in iface.ports.iter().flatten().enumerate() {
                let pp = format!("{ip}.ports[{j}]");
                let guest_port =
                    u16::try_from(p.port)
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| {
                            SpecError::new(
                                format!("{pp}.port"),
                                format!("{} is not a port", p.port),
                            )
                        })?;
                let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" | "tcp" => "tcp",
                    "UDP" | "udp" => "udp",
                    x => {
                        return Err(SpecError::new(
                            format!("{pp}.protocol"),
                            format!("{x}: use TCP or UDP"),
                        ))
                    }
                };
                let host_port = match env.host_ports {
                    HostPorts::Same => guest_port,
                    HostPorts::Base(b) => b
                        .checked_add(next_port)
                        .ok_or_else(|| SpecError::new(pp.clone(), "host port out of range"))?,
                    HostPorts::Ephemeral => {
                        free_port(&env.host_port_address, protocol).map_err(|e| {
                            SpecError::new(pp.clone(), format!("no free host port: {e}"))
                        })?
                    }
                };
                next_port += 1;
                forwards.push(PortForward {
                    name: p.name.clone(),
                    protocol: protocol.into(),
                    host_address: env.host_port_address.clone(),
                    host_port,
                    guest_port,
                });
            }
            NetBackend::Masquerade {
                network: MASQUERADE_NETWORK.into(),
                gateway: MASQUERADE_GATEWAY.into(),
                guest: MASQUERADE_GUEST.into(),
                forwards,
            }
        } else if iface.bridge.is_some() {
            let bridge = match &net.multus {
                Some(m) => env.bridges.get(&m.network_name).cloned().ok_or_else(|| {
                    SpecError::new(
                        format!("{ip}.bridge"),
                        format!(
                            "network {} has no Linux bridge on this node",
                            m.network_name
                        ),
                    )
                })?,
                None => env.pod_bridge.clone(),
            };
            NetBackend::Bridge {
                tap: tap_name(&tap_seed, i),
                bridge,
            }
        } else {
            return Err(SpecError::new(
                ip,
                "only masquerade and bridge bindings are supported",
            ));
        };
        let boot_order = iface.boot_order.filter(|n| *n > 0).map(|n| n as u32);
        nics.push(NicSpec {
            name: iface.name.clone(),
            model,
            mac,
            boot_order,
            backend,
        });
    }
    Ok(nics)
}

#[cfg(test)]
mod tests {
    use super::super::convert;

    #[test]
    fn bindings_and_networks_are_checked() {
        let e = convert("  domain:\n    memory: {guest: 64Mi}\n    devices: {interfaces: [{name: n, masquerade: {}}]}\n  networks: [{name: n, multus: {networkName: x}}]\n").unwrap_err();
        assert_eq!(e.field, "spec.domain.devices.interfaces[0].masquerade");
        let e = convert("  domain:\n    memory: {guest: 64Mi}\n    devices: {interfaces: [{name: n, bridge: {}}]}\n  networks: [{name: n, multus: {networkName: x}}]\n").unwrap_err();
        assert_eq!(e.field, "spec.domain.devices.interfaces[0].bridge");
        let e = convert("  domain:\n    memory: {guest: 64Mi}\n    devices: {interfaces: [{name: n, masquerade: {}}]}\n  networks: [{name: other, pod: {}}]\n").unwrap_err();
        assert_eq!(e.field, "spec.domain.devices.interfaces[0].name");
    }

    /// What admission accepts the launcher accepts too: KubeVirt's interface names (capitals,
    /// `_`) and every MAC form Go's `net.ParseMAC` reads, given to QEMU in one form.
    #[test]
    fn kubevirt_names_and_mac_forms_pass_and_macs_are_normalised() {
        let m = convert("  domain:\n    memory: {guest: 64Mi}\n    devices: {interfaces: [{name: Pod_net-1, masquerade: {}, macAddress: DE-AD-00-00-BE-AF}]}\n  networks: [{name: Pod_net-1, pod: {}}]\n").expect("accepted");
        assert_eq!(m.nics[0].mac.as_deref(), Some("de:ad:00:00:be:af"));
        let m = convert("  domain:\n    memory: {guest: 64Mi}\n    devices: {interfaces: [{name: n, masquerade: {}, macAddress: dead.0000.beaf}]}\n  networks: [{name: n, pod: {}}]\n").expect("accepted");
        assert_eq!(m.nics[0].mac.as_deref(), Some("de:ad:00:00:be:af"));
        let e = convert("  domain:\n    memory: {guest: 64Mi}\n    devices: {interfaces: [{name: n, masquerade: {}, macAddress: \"de:ad:00:00:be:af,romfile=/x\"}]}\n  networks: [{name: n, pod: {}}]\n").unwrap_err();
        assert_eq!(e.field, "spec.domain.devices.interfaces[0].macAddress");
    }
}

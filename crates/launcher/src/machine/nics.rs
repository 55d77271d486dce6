//! `spec.domain.devices.interfaces` + `spec.networks` → [`NicSpec`]s (masquerade, bridge).

use super::*;

/// An interface or network field the QEMU backend cannot honour. Every variant carries the
/// field path (`spec.domain.devices.interfaces[i]…` or `spec.networks[i].name`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NicError {
    /// KubeVirt's interface name rule, for `spec.networks[i].name`.
    #[error("{field}: {reason}")]
    NetworkName { field: String, reason: String },
    /// KubeVirt's interface name rule: the name becomes a QEMU id.
    #[error("{field}: {reason}")]
    InterfaceName { field: String, reason: String },
    #[error("{field}: {mac:?} is not a MAC address (aa:bb:cc:dd:ee:ff)")]
    Mac { field: String, mac: String },
    #[error("{field}: model {model} is not supported: use virtio, e1000, e1000e or rtl8139")]
    Model { field: String, model: String },
    #[error("{field}: microvm supports only virtio")]
    MicrovmModel { field: String },
    /// s390x has no PCI: e1000/e1000e/rtl8139 and SR-IOV VFs (vfio-pci) cannot exist there.
    #[error("{field}: s390x has no PCI: only virtio (virtio-net-ccw) is supported")]
    S390xModel { field: String },
    #[error("{field}: s390x has no PCI for an SR-IOV virtual function (vfio-pci)")]
    S390xSriov { field: String },
    #[error("{field}: interface {interface} has no network of the same name")]
    NoNetwork { field: String, interface: String },
    #[error("{field}: masquerade is only allowed on the pod network")]
    MasqueradeNotOnPod { field: String },
    #[error("{field}: {port} is not a port")]
    Port { field: String, port: i64 },
    #[error("{field}: {protocol}: use TCP or UDP")]
    Protocol { field: String, protocol: String },
    #[error("{field}: host port out of range")]
    HostPortOutOfRange { field: String },
    #[error("{field}: no free host port: {reason}")]
    NoFreeHostPort { field: String, reason: String },
    #[error("{field}: network {network} has no Linux bridge on this node")]
    NoBridge { field: String, network: String },
    #[error("{field}: only masquerade and bridge bindings are supported")]
    Binding { field: String },
    #[error("{field}: the passt binding is only allowed on the pod network")]
    PasstNotOnPod { field: String },
    #[error(
        "{field}: the passt binding needs this node's pod network, and the node runs VMs on \
         user networking (see `kubevirt-rs server --pod-network`)"
    )]
    PasstWithoutPodNetwork { field: String },
    /// KubeVirt: "more than one interface is connected to a pod network in ..."
    #[error("{field}: more than one interface is connected to a pod network")]
    SecondPodInterface { field: String },
    #[error("{field}: network {network} was not attached by virt-handler (no pod interface)")]
    NoPodInterface { field: String, network: String },
    #[error("{field}: SR-IOV interfaces need a Multus network")]
    SriovNotOnMultus { field: String },
    #[error(
        "{field}: network {network} has no SR-IOV virtual function on this node (its \
         NetworkAttachmentDefinition needs \"type\": \"sriov\" and a \"deviceID\")"
    )]
    NoSriovDevice { field: String, network: String },
}

impl NicError {
    /// The KubeVirt field path the error is about.
    pub fn field(&self) -> &str {
        match self {
            NicError::NetworkName { field, .. }
            | NicError::InterfaceName { field, .. }
            | NicError::Mac { field, .. }
            | NicError::Model { field, .. }
            | NicError::MicrovmModel { field }
            | NicError::S390xModel { field }
            | NicError::S390xSriov { field }
            | NicError::NoNetwork { field, .. }
            | NicError::MasqueradeNotOnPod { field }
            | NicError::Port { field, .. }
            | NicError::Protocol { field, .. }
            | NicError::HostPortOutOfRange { field }
            | NicError::NoFreeHostPort { field, .. }
            | NicError::NoBridge { field, .. }
            | NicError::Binding { field }
            | NicError::SecondPodInterface { field }
            | NicError::NoPodInterface { field, .. }
            | NicError::SriovNotOnMultus { field }
            | NicError::NoSriovDevice { field, .. }
            | NicError::PasstNotOnPod { field }
            | NicError::PasstWithoutPodNetwork { field } => field,
        }
    }
}

pub(super) fn nics(ctx: &Ctx) -> Result<Vec<NicSpec>, NicError> {
    let (env, microvm) = (ctx.env, ctx.microvm);
    let (name, namespace) = (ctx.name, ctx.namespace);
    let spec = &ctx.vmi.spec;
    let dev = &spec.domain.devices;
    // Interfaces.
    for (i, n) in spec.networks.iter().flatten().enumerate() {
        if let Some(form) = kubevirt_api::names::interface_name(&n.name) {
            return Err(NicError::NetworkName {
                field: format!("spec.networks[{i}].name"),
                reason: form,
            });
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
    let mut pod_taps = 0;
    let mut pod_network_nics = 0;
    let tap_seed = format!("{namespace}/{name}");
    for (i, iface) in dev.interfaces.iter().flatten().enumerate() {
        let ip = format!("spec.domain.devices.interfaces[{i}]");
        // KubeVirt's interface name rule (also admission's): the name becomes a QEMU id.
        if let Some(form) = kubevirt_api::names::interface_name(&iface.name) {
            return Err(NicError::InterfaceName {
                field: format!("{ip}.name"),
                reason: form,
            });
        }
        let mut mac = match iface.mac_address.as_deref().filter(|m| !m.is_empty()) {
            None => None,
            Some(m) => Some(
                crate::qemu::nics::normalise_mac(m).ok_or_else(|| NicError::Mac {
                    field: format!("{ip}.macAddress"),
                    mac: m.into(),
                })?,
            ),
        };
        let model = match iface.model.as_deref().unwrap_or("virtio") {
            "virtio" => NicModel::Virtio,
            "e1000" => NicModel::E1000,
            "e1000e" => NicModel::E1000e,
            "rtl8139" => NicModel::Rtl8139,
            m => {
                return Err(NicError::Model {
                    field: format!("{ip}.model"),
                    model: m.into(),
                })
            }
        };
        if microvm && model != NicModel::Virtio {
            return Err(NicError::MicrovmModel {
                field: format!("{ip}.model"),
            });
        }
        if ctx.profile == Profile::S390Ccw && model != NicModel::Virtio {
            return Err(NicError::S390xModel {
                field: format!("{ip}.model"),
            });
        }
        let Some(net) = networks.get(iface.name.as_str()) else {
            return Err(NicError::NoNetwork {
                field: format!("{ip}.name"),
                interface: iface.name.clone(),
            });
        };
        let boot_order = iface.boot_order.filter(|n| *n > 0).map(|n| n as u32);
        if iface.sriov.is_some() {
            // SR-IOV: the network's virtual function, passed through (no pod interface).
            let field = format!("{ip}.sriov");
            if ctx.profile == Profile::S390Ccw {
                return Err(NicError::S390xSriov { field });
            }
            if net.multus.is_none() {
                return Err(NicError::SriovNotOnMultus { field });
            }
            let device = env
                .pod_network
                .as_ref()
                .and_then(|p| p.sriov_for(&net.name))
                .ok_or_else(|| NicError::NoSriovDevice {
                    field,
                    network: net.name.clone(),
                })?;
            nics.push(NicSpec {
                name: iface.name.clone(),
                model,
                mac,
                boot_order,
                backend: NetBackend::Sriov {
                    pci_address: device.pci_address.clone(),
                },
            });
            continue;
        }
        // KubeVirt allows one interface on the pod network.
        if net.pod.is_some() {
            pod_network_nics += 1;
            if pod_network_nics > 1 {
                return Err(NicError::SecondPodInterface { field: ip });
            }
        }
        // With a pod network every VMI network has its pod interface in the namespace (the
        // handler attached them all); without one, NICs use user networking or node bridges.
        let pod = match &env.pod_network {
            Some(p) => {
                Some(
                    p.interface_for(&net.name)
                        .ok_or_else(|| NicError::NoPodInterface {
                            field: format!("{ip}.name"),
                            network: net.name.clone(),
                        })?,
                )
            }
            None => None,
        };
        let backend =
            if iface.passt_binding.is_some() {
                if net.pod.is_none() {
                    return Err(NicError::PasstNotOnPod {
                        field: format!("{ip}.passtBinding"),
                    });
                }
                if pod.is_none() {
                    return Err(NicError::PasstWithoutPodNetwork {
                        field: format!("{ip}.passtBinding"),
                    });
                }
                NetBackend::Passt {
                    socket: crate::api::VmiDir::unchecked(&env.dir).passt_socket(),
                    ports: pod_ports(&ip, iface)?,
                }
            } else if let Some(pod) = pod {
                let tap = format!("tap{i}");
                let fd = TAP_FD_BASE + pod_taps;
                pod_taps += 1;
                let interface = pod.interface.clone();
                if iface.masquerade.is_some() {
                    if net.pod.is_none() {
                        return Err(NicError::MasqueradeNotOnPod {
                            field: format!("{ip}.masquerade"),
                        });
                    }
                    NetBackend::Pod {
                        tap,
                        fd,
                        interface,
                        binding: PodBinding::Masquerade {
                            ports: pod_ports(&ip, iface)?,
                        },
                    }
                } else if iface.bridge.is_some() {
                    // KubeVirt gives the guest the pod interface's MAC (the pod's own changes).
                    if mac.is_none() {
                        mac = pod
                            .mac
                            .clone()
                            .and_then(|m| crate::qemu::nics::normalise_mac(&m));
                    }
                    NetBackend::Pod {
                        tap,
                        fd,
                        interface,
                        binding: PodBinding::Bridge,
                    }
                } else {
                    return Err(NicError::Binding { field: ip });
                }
            } else if iface.masquerade.is_some() {
                if net.pod.is_none() {
                    return Err(NicError::MasqueradeNotOnPod {
                        field: format!("{ip}.masquerade"),
                    });
                }
                let mut forwards = Vec::new();
                for (j, p) in iface.ports.iter().flatten().enumerate() {
                    let pp = format!("{ip}.ports[{j}]");
                    let (protocol, guest_port) = port_of(&pp, p)?;
                    let host_port = match env.host_ports {
                        HostPorts::Same => guest_port,
                        HostPorts::Base(b) => b
                            .checked_add(next_port)
                            .ok_or_else(|| NicError::HostPortOutOfRange { field: pp.clone() })?,
                        HostPorts::Ephemeral => free_port(&env.host_port_address, protocol)
                            .map_err(|e| NicError::NoFreeHostPort {
                                field: pp.clone(),
                                reason: e.to_string(),
                            })?,
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
                    gateway: MASQUERADE_GATEWAY.to_string(),
                    guest: MASQUERADE_GUEST.to_string(),
                    forwards,
                }
            } else if iface.bridge.is_some() {
                let bridge = match &net.multus {
                    Some(m) => env.bridges.get(&m.network_name).cloned().ok_or_else(|| {
                        NicError::NoBridge {
                            field: format!("{ip}.bridge"),
                            network: m.network_name.clone(),
                        }
                    })?,
                    None => env.pod_bridge.clone(),
                };
                NetBackend::Bridge {
                    tap: tap_name(&tap_seed, i),
                    bridge,
                }
            } else {
                return Err(NicError::Binding { field: ip });
            };
        if mac.is_none() {
            // Every NIC has a MAC the launcher knows: its DHCP server hands out addresses by
            // MAC, and the guest agent's interfaces are matched to the VMI's by MAC.
            mac = Some(generated_mac(&tap_seed, &iface.name));
        }
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

/// An interface's `ports` as the pod network forwards them.
fn pod_ports(ip: &str, iface: &kubevirt_api::Interface) -> Result<Vec<PodPort>, NicError> {
    iface
        .ports
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, p)| {
            let (protocol, port) = port_of(&format!("{ip}.ports[{j}]"), p)?;
            Ok(PodPort {
                protocol: protocol.into(),
                port,
            })
        })
        .collect()
}

/// One `ports` entry: its protocol (`tcp`/`udp`) and port, or the field that is wrong.
fn port_of(field: &str, p: &kubevirt_api::Port) -> Result<(&'static str, u16), NicError> {
    let port = u16::try_from(p.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| NicError::Port {
            field: format!("{field}.port"),
            port: p.port.into(),
        })?;
    let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
        "TCP" | "tcp" => "tcp",
        "UDP" | "udp" => "udp",
        x => {
            return Err(NicError::Protocol {
                field: format!("{field}.protocol"),
                protocol: x.into(),
            })
        }
    };
    Ok((protocol, port))
}

#[cfg(test)]
mod tests {
    use super::super::{convert, parse_vmi, SpecError};
    use super::*;
    use crate::accel::Accelerator;

    /// The NIC error of a VMI with `interfaces` and `networks` (flow YAML lists).
    fn nic_err(interfaces: &str, networks: &str) -> NicError {
        let spec = format!(
            "  domain:\n    memory: {{guest: 64Mi}}\n    devices: {{interfaces: {interfaces}}}\n  networks: {networks}\n"
        );
        match convert(&spec) {
            Err(SpecError::Nic(e)) => {
                assert!(
                    e.to_string().starts_with(&format!("{}: ", e.field())),
                    "{e}"
                );
                e
            }
            other => panic!("not a NIC error: {other:?}"),
        }
    }

    #[test]
    fn bad_and_hostile_macs_are_refused() {
        for bad in [
            "de:ad:00:00:be:af,romfile=/x",
            "de:ad:00:00:be",
            "de:ad:00:00:be:zz",
            "de:ad:00:00:be:af\\u0000",
        ] {
            let e = nic_err(
                &format!("[{{name: n, masquerade: {{}}, macAddress: \"{bad}\"}}]"),
                "[{name: n, pod: {}}]",
            );
            assert!(matches!(e, NicError::Mac { .. }), "{bad}: {e}");
            assert_eq!(e.field(), "spec.domain.devices.interfaces[0].macAddress");
        }
        let e = nic_err(
            "[{name: n, masquerade: {}, macAddress: \"de:ad:00:00:be:af,romfile=/x\"}]",
            "[{name: n, pod: {}}]",
        );
        assert_eq!(
            e.to_string(),
            r#"spec.domain.devices.interfaces[0].macAddress: "de:ad:00:00:be:af,romfile=/x" is not a MAC address (aa:bb:cc:dd:ee:ff)"#
        );
    }

    #[test]
    fn hostile_interface_and_network_names_are_refused() {
        for bad in ["x,romfile=/etc/shadow", "a=b", "a/b", "..", "a\\u0000b"] {
            let e = nic_err(
                &format!("[{{name: \"{bad}\", masquerade: {{}}}}]"),
                "[{name: n, pod: {}}]",
            );
            assert!(matches!(e, NicError::InterfaceName { .. }), "{bad}: {e}");
            assert_eq!(e.field(), "spec.domain.devices.interfaces[0].name");
            assert!(e.to_string().contains("Network interface name"), "{e}");
            let e = nic_err(
                "[{name: n, masquerade: {}}]",
                &format!("[{{name: n, pod: {{}}}}, {{name: \"{bad}\", pod: {{}}}}]"),
            );
            assert!(matches!(e, NicError::NetworkName { .. }), "{bad}: {e}");
            assert_eq!(e.field(), "spec.networks[1].name");
        }
    }

    #[test]
    fn models_ports_and_bindings_say_what_is_wrong() {
        let e = nic_err(
            "[{name: n, masquerade: {}, model: ne2k_pci}]",
            "[{name: n, pod: {}}]",
        );
        assert_eq!(
            e,
            NicError::Model {
                field: "spec.domain.devices.interfaces[0].model".into(),
                model: "ne2k_pci".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "spec.domain.devices.interfaces[0].model: model ne2k_pci is not supported: use virtio, e1000, e1000e or rtl8139"
        );
        let e = nic_err(
            "[{name: n, masquerade: {}, ports: [{port: 80}, {port: 70000}]}]",
            "[{name: n, pod: {}}]",
        );
        assert_eq!(
            e.to_string(),
            "spec.domain.devices.interfaces[0].ports[1].port: 70000 is not a port"
        );
        let e = nic_err(
            "[{name: n, masquerade: {}, ports: [{port: 80, protocol: SCTP}]}]",
            "[{name: n, pod: {}}]",
        );
        assert!(matches!(e, NicError::Protocol { .. }));
        assert_eq!(
            e.to_string(),
            "spec.domain.devices.interfaces[0].ports[0].protocol: SCTP: use TCP or UDP"
        );
        let e = nic_err("[{name: n, sriov: {}}]", "[{name: n, pod: {}}]");
        assert_eq!(
            e.to_string(),
            "spec.domain.devices.interfaces[0].sriov: SR-IOV interfaces need a Multus network"
        );
        let e = nic_err(
            "[{name: n, sriov: {}}]",
            "[{name: n, multus: {networkName: sriov-net}}]",
        );
        assert!(matches!(e, NicError::NoSriovDevice { .. }), "{e}");
    }

    #[test]
    fn bindings_and_networks_are_checked() {
        let e = convert("  domain:\n    memory: {guest: 64Mi}\n    devices: {interfaces: [{name: n, masquerade: {}}]}\n  networks: [{name: n, multus: {networkName: x}}]\n").unwrap_err();
        assert_eq!(e.field(), "spec.domain.devices.interfaces[0].masquerade");
        let e = convert("  domain:\n    memory: {guest: 64Mi}\n    devices: {interfaces: [{name: n, bridge: {}}]}\n  networks: [{name: n, multus: {networkName: x}}]\n").unwrap_err();
        assert_eq!(e.field(), "spec.domain.devices.interfaces[0].bridge");
        let e = convert("  domain:\n    memory: {guest: 64Mi}\n    devices: {interfaces: [{name: n, masquerade: {}}]}\n  networks: [{name: other, pod: {}}]\n").unwrap_err();
        assert_eq!(e.field(), "spec.domain.devices.interfaces[0].name");
    }

    fn on_pod_network(interfaces: &str) -> Result<MachineSpec, SpecError> {
        on_networks(
            interfaces,
            "[{name: n, pod: {}}, {name: m, pod: {}}, {name: blue, multus: {networkName: ns/blue}}]",
        )
    }

    fn on_networks(interfaces: &str, networks: &str) -> Result<MachineSpec, SpecError> {
        use crate::api::{PodAddress, PodInterface, PodNetworkInfo};
        let yaml = format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: t, namespace: ns}}\n\
             spec:\n  domain:\n    memory: {{guest: 64Mi}}\n    devices: {{interfaces: {interfaces}}}\n  networks: {networks}\n"
        );
        let mut env = Environment::fixed(Path::new("/d"), Accelerator::Tcg);
        let pod_if = |network: &str, interface: &str, ip: &str, mac: &str| PodInterface {
            network: network.into(),
            interface: interface.into(),
            addresses: vec![PodAddress {
                ip: ip.parse().unwrap(),
                prefix: 24,
            }],
            gateway: None,
            mac: Some(mac.into()),
        };
        env.pod_network = Some(PodNetworkInfo {
            netns: "/run/netns/kvrs-x".into(),
            interfaces: vec![
                pod_if("n", "eth0", "10.244.0.9", "0A:58:0A:F4:00:09"),
                pod_if("blue", "net1", "192.168.7.3", "0A:58:C0:A8:07:03"),
            ],
            sriov: vec![crate::api::SriovDevice {
                network: "fast".into(),
                pci_address: "0000:81:10.2".into(),
            }],
        });
        MachineSpec::from_vmi(&parse_vmi(&yaml).expect("test YAML"), &env)
    }

    /// A Multus network's NIC binds to its own pod interface (`net1`); only bridge is allowed
    /// there, as in KubeVirt, and a network the handler did not attach is named.
    #[test]
    fn multus_networks_bind_their_own_pod_interface() {
        let m = on_pod_network("[{name: n, masquerade: {}}, {name: blue, bridge: {}}]").unwrap();
        match (&m.nics[0].backend, &m.nics[1].backend) {
            (
                NetBackend::Pod {
                    interface: a,
                    fd: fa,
                    ..
                },
                NetBackend::Pod {
                    interface: b,
                    fd: fb,
                    binding: PodBinding::Bridge,
                    ..
                },
            ) => {
                assert_eq!((a.as_str(), b.as_str()), ("eth0", "net1"));
                assert_eq!((*fa, *fb), (TAP_FD_BASE, TAP_FD_BASE + 1));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.nics[1].mac.as_deref(), Some("0a:58:c0:a8:07:03"));
        let m = on_networks(
            "[{name: fast, sriov: {}}]",
            "[{name: fast, multus: {networkName: ns/sriov-net}}]",
        )
        .unwrap();
        assert_eq!(
            m.nics[0].backend,
            NetBackend::Sriov {
                pci_address: "0000:81:10.2".into()
            }
        );
        let e = on_pod_network("[{name: blue, masquerade: {}}]").unwrap_err();
        assert_eq!(e.field(), "spec.domain.devices.interfaces[0].masquerade");
        let e = on_networks(
            "[{name: red, bridge: {}}]",
            "[{name: red, multus: {networkName: red}}]",
        )
        .unwrap_err();
        assert_eq!(e.field(), "spec.domain.devices.interfaces[0].name");
        assert!(e.to_string().contains("network red"), "{e}");
    }

    /// On a pod network every binding is a tap (or passt) with a MAC the DHCP server knows:
    /// the spec's, the pod's for bridge (as KubeVirt moves it), else a stable generated one.
    #[test]
    fn pod_network_bindings_get_taps_and_known_macs() {
        let m = on_pod_network("[{name: n, masquerade: {}, ports: [{port: 80}]}]").unwrap();
        match &m.nics[0].backend {
            NetBackend::Pod {
                tap,
                fd,
                interface,
                binding,
            } => {
                assert_eq!(
                    (tap.as_str(), *fd, interface.as_str()),
                    ("tap0", TAP_FD_BASE, "eth0")
                );
                assert_eq!(
                    binding,
                    &PodBinding::Masquerade {
                        ports: vec![PodPort {
                            protocol: "tcp".into(),
                            port: 80
                        }]
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        let mac = m.nics[0].mac.clone().expect("a generated MAC");
        assert!(mac.starts_with("52:54:00:"), "{mac}");
        assert_eq!(
            on_pod_network("[{name: n, masquerade: {}}]").unwrap().nics[0].mac,
            Some(mac),
            "stable for the VMI"
        );
        let m = on_pod_network("[{name: n, bridge: {}}]").unwrap();
        assert_eq!(m.nics[0].mac.as_deref(), Some("0a:58:0a:f4:00:09"));
        let m = on_pod_network("[{name: n, bridge: {}, macAddress: 02:00:00:00:00:01}]").unwrap();
        assert_eq!(m.nics[0].mac.as_deref(), Some("02:00:00:00:00:01"));
        let m = on_pod_network("[{name: n, passtBinding: {}}]").unwrap();
        assert!(
            matches!(&m.nics[0].backend, NetBackend::Passt { socket, .. } if socket.ends_with("sockets/passt.sock")),
            "{:?}",
            m.nics[0].backend
        );
        let e = on_pod_network("[{name: n, masquerade: {}}, {name: m, bridge: {}}]").unwrap_err();
        assert_eq!(e.field(), "spec.domain.devices.interfaces[1]");
        // Without a pod network passt cannot work, and says why.
        let e = convert("  domain:\n    memory: {guest: 64Mi}\n    devices: {interfaces: [{name: n, passtBinding: {}}]}\n  networks: [{name: n, pod: {}}]\n").unwrap_err();
        assert_eq!(e.field(), "spec.domain.devices.interfaces[0].passtBinding");
        assert!(e.to_string().contains("--pod-network"), "{e}");
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
        assert_eq!(e.field(), "spec.domain.devices.interfaces[0].macAddress");
    }
}

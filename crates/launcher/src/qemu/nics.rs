//! NICs: one `-netdev` (a tap the launcher opened on the pod network; without one, slirp for
//! masquerade and a named tap for bridge) and one `-device` per interface.

use super::cpu::push;
use super::opts::{Opts, OptsError};
use crate::machine::{MachineSpec, NetBackend, NicModel};

#[derive(Debug, thiserror::Error)]
pub enum NicError {
    #[error("interface {nic:?}: {source}")]
    Option {
        nic: String,
        #[source]
        source: OptsError,
    },
    #[error("interface {nic:?}: MAC address {mac:?} is not six hex octets (aa:bb:cc:dd:ee:ff)")]
    Mac { nic: String, mac: String },
}

/// `aa:bb:cc:dd:ee:ff`, lower case: the one form QEMU is given (`MachineSpec::from_vmi`
/// normalises what KubeVirt accepts into it); anything else is refused rather than escaped.
pub fn is_mac(s: &str) -> bool {
    s.len() == 17 && normalise_mac(s).as_deref() == Some(s)
}

/// A 6-octet MAC in any form KubeVirt accepts (Go's `net.ParseMAC`: `:`, `-` or `.`
/// separated) as `aa:bb:cc:dd:ee:ff`; `None` for anything else.
pub fn normalise_mac(s: &str) -> Option<String> {
    let octets = kubevirt_api::names::parse_mac(s).filter(|o| o.len() == 6)?;
    Some(
        octets
            .iter()
            .map(|o| format!("{o:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

pub fn render(spec: &MachineSpec, a: &mut Vec<String>) -> Result<(), NicError> {
    let virtio_suffix = spec.profile.virtio_transport();
    for (i, n) in spec.nics.iter().enumerate() {
        let err = |source| NicError::Option {
            nic: n.name.clone(),
            source,
        };
        let id = format!("net{i}");
        if let NetBackend::Sriov { pci_address } = &n.backend {
            // KubeVirt's hostdev for an SR-IOV interface: the VF itself, no netdev.
            let dev = Opts::new("vfio-pci")
                .set("host", pci_address)
                .set("id", format!("ua-sriov-{}", n.name))
                .set_opt("bootindex", n.boot_order.map(|b| b.to_string()));
            push(a, "-device", dev.build().map_err(err)?);
            continue;
        }
        let netdev = match &n.backend {
            NetBackend::Masquerade {
                network,
                gateway,
                guest,
                forwards,
            } => {
                let mut nd = Opts::new("user")
                    .set("id", &id)
                    .set("net", network)
                    .set("host", gateway)
                    .set("dhcpstart", guest);
                for f in forwards {
                    nd = nd.set(
                        "hostfwd",
                        format!(
                            "{}:{}:{}-:{}",
                            f.protocol, f.host_address, f.host_port, f.guest_port
                        ),
                    );
                }
                nd
            }
            NetBackend::Bridge { tap, .. } => Opts::new("tap")
                .set("id", &id)
                .set("ifname", tap)
                .set("script", "no")
                .set("downscript", "no"),
            // The launcher opened the tap and passes it down as this descriptor.
            NetBackend::Pod { fd, .. } => Opts::new("tap").set("id", &id).set("fd", fd.to_string()),
            NetBackend::Passt { socket, .. } => Opts::new("stream")
                .set("id", &id)
                .set("server", "off")
                .set("addr.type", "unix")
                .set("addr.path", socket.display().to_string()),
            NetBackend::Sriov { .. } => continue,
        };
        push(a, "-netdev", netdev.build().map_err(err)?);
        let model = match n.model {
            NicModel::Virtio => format!("virtio-net-{virtio_suffix}"),
            NicModel::E1000 => "e1000".into(),
            NicModel::E1000e => "e1000e".into(),
            NicModel::Rtl8139 => "rtl8139".into(),
        };
        if let Some(mac) = &n.mac {
            if !is_mac(mac) {
                return Err(NicError::Mac {
                    nic: n.name.clone(),
                    mac: mac.clone(),
                });
            }
        }
        let dev = Opts::new(&model)
            .set("netdev", &id)
            .set("id", format!("ua-{}", n.name))
            .set_opt("mac", n.mac.as_deref())
            .set_opt("bootindex", n.boot_order.map(|b| b.to_string()))
            // No PXE ROM probing for NICs that are not boot devices (libvirt's rom bar=off).
            // (ROM BARs are PCI's: none on microvm or s390x.)
            .set_if(
                n.boot_order.is_none() && spec.profile.has_pci(),
                "romfile",
                "",
            );
        push(a, "-device", dev.build().map_err(err)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_spec;
    use super::*;
    use crate::machine::NicSpec;

    fn nic(name: &str, mac: Option<&str>) -> NicSpec {
        NicSpec {
            name: name.into(),
            model: NicModel::E1000,
            mac: mac.map(String::from),
            boot_order: None,
            backend: NetBackend::Bridge {
                tap: "tap0".into(),
                bridge: "br0".into(),
            },
        }
    }

    #[test]
    fn the_romfile_injection_is_refused() {
        let mut s = test_spec();
        s.nics = vec![nic("x,romfile=/etc/shadow", None)];
        let e = render(&s, &mut vec![]).unwrap_err();
        assert!(
            matches!(
                &e,
                NicError::Option {
                    source: OptsError::BadId { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            r#"interface "x,romfile=/etc/shadow": id="ua-x,romfile=/etc/shadow": not a QEMU id ([A-Za-z][A-Za-z0-9_.-]*)"#
        );
        s.nics = vec![nic("x", Some("52:54:00:00:00:01,romfile=/etc/shadow"))];
        let e = render(&s, &mut vec![]).unwrap_err();
        assert!(matches!(e, NicError::Mac { .. }));
        assert_eq!(
            e.to_string(),
            r#"interface "x": MAC address "52:54:00:00:00:01,romfile=/etc/shadow" is not six hex octets (aa:bb:cc:dd:ee:ff)"#
        );
    }

    #[test]
    fn a_pod_nic_is_the_descriptor_the_launcher_passes() {
        let mut s = test_spec();
        let mut n = nic("default", Some("52:54:00:00:00:01"));
        n.model = NicModel::Virtio;
        n.backend = NetBackend::Pod {
            tap: "tap0".into(),
            fd: 3,
            interface: "eth0".into(),
            binding: crate::machine::PodBinding::Masquerade { ports: vec![] },
        };
        s.nics = vec![n];
        let mut a = vec![];
        render(&s, &mut a).unwrap();
        assert_eq!(
            a,
            [
                "-netdev",
                "tap,id=net0,fd=3",
                "-device",
                "virtio-net-pci,netdev=net0,id=ua-default,mac=52:54:00:00:00:01,romfile="
            ]
        );
    }

    #[test]
    fn a_bridge_nic_renders() {
        let mut s = test_spec();
        s.nics = vec![nic("default", Some("52:54:00:00:00:01"))];
        let mut a = vec![];
        render(&s, &mut a).unwrap();
        assert_eq!(
            a,
            [
                "-netdev",
                "tap,id=net0,ifname=tap0,script=no,downscript=no",
                "-device",
                "e1000,netdev=net0,id=ua-default,mac=52:54:00:00:00:01,romfile="
            ]
        );
    }
}

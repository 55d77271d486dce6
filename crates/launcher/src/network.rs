//! The guest's side of the pod network, inside the VMI's network namespace (virt-handler
//! starts the launcher there after CNI `ADD`): what KubeVirt's virt-launcher does for its
//! pod interface.
//!
//! - both bindings: a bridge per pod interface ([`pod_bridge`]: `k6t-eth0`, `k6t-net1` for a
//!   Multus network) and the guest NIC's tap on it, opened here and
//!   handed to QEMU as a descriptor (QEMU's user cannot open `/dev/net/tun`); the tap goes
//!   away with the last process holding it, so a dead QEMU leaves none behind;
//! - `masquerade`: the bridge is the guest's gateway [`MASQUERADE_GATEWAY`]; nftables
//!   masquerades the guest's traffic out of the pod interface and forwards the pod IP's
//!   traffic to [`MASQUERADE_GUEST`] (the interface's `ports`, or all when it lists none);
//! - `bridge`: the pod interface joins the bridge with its address removed and a new MAC,
//!   and the guest takes over the pod's address and MAC;
//! - the leases the launcher's DHCP server ([`crate::dhcp`]) hands the guest.
//!
//! Nothing from the VMI spec reaches a command line here: names are ours (`k6t-eth0`,
//! `tap<N>`), addresses are typed, ports are numbers.

use crate::api::PodNetworkInfo;
use crate::dhcp::Lease;
use crate::machine::{
    pod_bridge, MachineSpec, NetBackend, PodBinding, BRIDGE_DHCP_SERVER, MASQUERADE_GATEWAY,
    MASQUERADE_GUEST, MASQUERADE_PREFIX,
};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("the pod network has no IPv4 address on {0}")]
    NoPodAddress(String),
    #[error("tap {tap}: {source}")]
    Tap { tap: String, source: std::io::Error },
    #[error("{what}: {message}")]
    Command { what: &'static str, message: String },
    #[error("interface {nic}: MAC address {mac:?} is not six octets")]
    Mac { nic: String, mac: String },
    #[error("SR-IOV interface {nic}: PCI device {pci} {problem}")]
    HostDevice {
        nic: String,
        pci: String,
        problem: String,
    },
}

/// Where the kernel lists PCI devices.
pub const PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// Every SR-IOV interface's virtual function must be on this node and bound to `vfio-pci`
/// (binding a device to vfio-pci is how a node's admin offers it for passthrough; nothing
/// else is handed to a guest). `devices` is [`PCI_DEVICES`].
pub fn check_host_devices(
    spec: &MachineSpec,
    devices: &std::path::Path,
) -> Result<(), NetworkError> {
    for n in &spec.nics {
        let NetBackend::Sriov { pci_address } = &n.backend else {
            continue;
        };
        let fail = |problem: String| NetworkError::HostDevice {
            nic: n.name.clone(),
            pci: pci_address.clone(),
            problem,
        };
        let dev = devices.join(pci_address);
        if !dev.exists() {
            return Err(fail("is not present on this node".into()));
        }
        let driver = std::fs::read_link(dev.join("driver"))
            .ok()
            .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()));
        match driver.as_deref() {
            Some("vfio-pci") => {}
            Some(other) => {
                return Err(fail(format!(
                    "is bound to {other}, not vfio-pci: bind it to vfio-pci to pass it through"
                )))
            }
            None => {
                return Err(fail(
                    "has no driver: bind it to vfio-pci to pass it through".into(),
                ))
            }
        }
    }
    Ok(())
}

/// What the guest's side of the pod network is once set up: the taps QEMU inherits and the
/// leases to serve.
pub struct Plumbed {
    /// (the descriptor QEMU is told, the tap opened here at a high number).
    taps: Vec<(i32, OwnedFd)>,
    /// A DHCP server per bridge whose guest NIC is given an address.
    pub dhcp: Vec<DhcpPlan>,
}

/// Where a DHCP server answers and what it hands out.
pub struct DhcpPlan {
    /// The [`pod_bridge`] it listens on.
    pub bridge: String,
    /// Its address on that bridge.
    pub server: Ipv4Addr,
    pub leases: Vec<Lease>,
}

impl Plumbed {
    /// Makes the spawned QEMU inherit each tap as the descriptor its `-netdev` names.
    pub fn pass_to(&self, cmd: &mut tokio::process::Command) {
        let pairs: Vec<(i32, i32)> = self
            .taps
            .iter()
            .map(|(target, fd)| (*target, fd.as_raw_fd()))
            .collect();
        if pairs.is_empty() {
            return;
        }
        // SAFETY: runs between fork and exec and calls only dup2, which is async-signal-safe;
        // `pairs` was allocated before the fork. Sources are ≥ 64 and targets small, so no
        // dup2 overwrites a source still to be copied; dup2 clears close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                for (target, fd) in &pairs {
                    if libc::dup2(*fd, *target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}

/// Runs `program args` with `input` on its stdin; its stderr is the error.
fn run_with_input(
    what: &'static str,
    program: &str,
    args: &[&str],
    input: &str,
) -> Result<(), NetworkError> {
    let fail = |message: String| NetworkError::Command { what, message };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("{program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| fail(format!("{program}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("{program}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// `ip -batch -` with `lines`: one process for the whole setup, failing at the first line
/// that fails (its number is in the message).
fn ip_batch(what: &'static str, lines: &[String]) -> Result<(), NetworkError> {
    run_with_input(what, "ip", &["-batch", "-"], &lines.join("\n"))
}

/// `nft -f -` with `ruleset` (Debian package nftables).
fn nft(ruleset: &str) -> Result<(), NetworkError> {
    run_with_input("nftables", "nft", &["-f", "-"], ruleset)
}

/// Opens tap `name` (created by this open, gone with its last descriptor) and moves the
/// descriptor to a number ≥ 64, out of the way of the ones QEMU is told.
fn open_tap(name: &str) -> Result<OwnedFd, NetworkError> {
    let err = |source| NetworkError::Tap {
        tap: name.into(),
        source,
    };
    // SAFETY: a plain open(2) of a constant path; the result is checked.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let tun = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= ifr.ifr_name.len() {
        return Err(err(std::io::Error::other("name longer than IFNAMSIZ")));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads an ifreq, which `ifr` is, on a tun descriptor.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &ifr) } < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: F_DUPFD_CLOEXEC on a valid descriptor; the result is checked.
    let high = unsafe { libc::fcntl(tun.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 64) };
    if high < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: `high` is a descriptor we just created and own.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

/// The MTU of `ifname` in this process's network namespace (sysfs shows the namespace of
/// whoever mounted it, so ask the kernel through a socket of our own).
fn mtu_of(ifname: &str) -> Option<u16> {
    // SAFETY: plain socket(2); the result is checked and owned.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return None;
    }
    // SAFETY: `raw` is a descriptor we just opened.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if ifname.len() >= ifr.ifr_name.len() {
        return None;
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(ifname.as_bytes()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU fills the ifreq it is given.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut ifr) } < 0 {
        return None;
    }
    // SAFETY: SIOCGIFMTU set the mtu member of the union.
    u16::try_from(unsafe { ifr.ifr_ifru.ifru_mtu }).ok()
}

fn mac_octets(nic: &str, mac: &str) -> Result<[u8; 6], NetworkError> {
    let bad = || NetworkError::Mac {
        nic: nic.into(),
        mac: mac.into(),
    };
    let octets = kubevirt_api::names::parse_mac(mac).ok_or_else(bad)?;
    <[u8; 6]>::try_from(octets.as_slice()).map_err(|_| bad())
}

/// The node's name servers and search domains for the guest (`/etc/resolv.conf`, as the
/// pod's); loopback servers are left out, the guest cannot reach them.
fn resolv_conf(text: &str) -> (Vec<Ipv4Addr>, Vec<String>) {
    let (mut dns, mut search) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => {
                if let Some(ip) = f.next().and_then(|a| a.parse::<Ipv4Addr>().ok()) {
                    if !ip.is_loopback() && !ip.is_unspecified() {
                        dns.push(ip);
                    }
                }
            }
            Some("search") => search = f.map(String::from).collect(),
            _ => {}
        }
    }
    (dns, search)
}

/// A MAC for the pod interface once the guest has taken its own (bridge binding): the
/// guest's with the locally-administered bit flipped, so the two never collide.
fn moved_mac(guest: [u8; 6]) -> String {
    let mut m = guest;
    m[0] = (m[0] ^ 0x02) & 0xfe;
    m.iter()
        .map(|o| format!("{o:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The masquerade ruleset: the guest's traffic leaves as the pod IP; the pod IP's traffic
/// (the listed ports, or everything) goes to the guest, which sees it come from its gateway.
pub fn masquerade_ruleset(pod_if: &str, ports: &[crate::machine::PodPort]) -> String {
    let bridge = pod_bridge(pod_if);
    let mut dnat = Vec::new();
    if ports.is_empty() {
        dnat.push(format!(
            "iifname \"{pod_if}\" meta l4proto {{ tcp, udp }} dnat to {MASQUERADE_GUEST}"
        ));
    } else {
        for proto in ["tcp", "udp"] {
            let list: Vec<String> = ports
                .iter()
                .filter(|p| p.protocol == proto)
                .map(|p| p.port.to_string())
                .collect();
            if !list.is_empty() {
                dnat.push(format!(
                    "iifname \"{pod_if}\" {proto} dport {{ {} }} dnat to {MASQUERADE_GUEST}",
                    list.join(", ")
                ));
            }
        }
    }
    format!(
        "table ip kubevirt\n\
         flush table ip kubevirt\n\
         table ip kubevirt {{\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\t{}\n\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {MASQUERADE_GUEST} oifname \"{pod_if}\" masquerade\n\
         \t\toifname \"{bridge}\" ip daddr {MASQUERADE_GUEST} snat to {MASQUERADE_GATEWAY}\n\t}}\n\
         }}\n",
        dnat.join("\n\t\t")
    )
}

/// Sets up the guest's side of the pod network for every pod NIC of `spec`, each on its own
/// pod interface (`eth0`, Multus' `netN`) and bridge [`pod_bridge`]. Idempotent: a restarted
/// launcher rebuilds the bridges and rules.
pub fn plumb(spec: &MachineSpec, pod: &PodNetworkInfo) -> Result<Plumbed, NetworkError> {
    let mut plumbed = Plumbed {
        taps: Vec::new(),
        dhcp: Vec::new(),
    };
    let (dns, search) =
        resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    let hostname = spec.vmi.rsplit('/').next().map(String::from);
    for n in &spec.nics {
        let NetBackend::Pod {
            tap,
            fd,
            interface,
            binding,
        } = &n.backend
        else {
            continue;
        };
        let pod_if = pod
            .interfaces
            .iter()
            .find(|i| &i.interface == interface)
            .ok_or_else(|| NetworkError::NoPodAddress(interface.clone()))?;
        let name = pod_if.interface.as_str();
        let bridge = pod_bridge(name);
        let mtu = mtu_of(name).unwrap_or(1500);
        let mac = n.mac.as_deref().ok_or_else(|| NetworkError::Mac {
            nic: n.name.clone(),
            mac: String::new(),
        })?;
        let guest_mac = mac_octets(&n.name, mac)?;
        // A launcher restarted in the same namespace starts from a clean bridge (there is
        // none the first time: that failure is expected).
        let _ = ip_batch("the old pod bridge", &[format!("link del {bridge}")]);
        let mut lines = vec![format!("link add {bridge} type bridge")];
        lines.push(format!("link set {bridge} mtu {mtu}"));
        // What the guest is given (nothing when the network has no IPAM: the guest
        // configures itself, as with KubeVirt), and where the DHCP server answers from.
        let (lease, server) = match binding {
            PodBinding::Masquerade { .. } => {
                lines.push(format!(
                    "addr add {MASQUERADE_GATEWAY}/{MASQUERADE_PREFIX} dev {bridge}"
                ));
                (
                    Some((
                        MASQUERADE_GUEST,
                        MASQUERADE_PREFIX,
                        Some(MASQUERADE_GATEWAY),
                    )),
                    MASQUERADE_GATEWAY,
                )
            }
            PodBinding::Bridge => {
                lines.push(format!("link set {name} down"));
                lines.push(format!("addr flush dev {name}"));
                lines.push(format!("link set {name} address {}", moved_mac(guest_mac)));
                lines.push(format!("link set {name} master {bridge} up"));
                lines.push(format!("addr add {BRIDGE_DHCP_SERVER}/32 dev {bridge}"));
                let gateway = match pod_if.gateway {
                    Some(std::net::IpAddr::V4(g)) => Some(g),
                    _ => None,
                };
                (
                    pod_if.ipv4().map(|(ip, prefix)| (ip, prefix, gateway)),
                    BRIDGE_DHCP_SERVER,
                )
            }
        };
        if matches!(binding, PodBinding::Masquerade { .. }) && pod_if.ipv4().is_none() {
            return Err(NetworkError::NoPodAddress(name.into()));
        }
        lines.push(format!("link set {bridge} up"));
        let tap_fd = open_tap(tap)?;
        lines.push(format!("link set {tap} mtu {mtu} master {bridge} up"));
        ip_batch("the pod bridge", &lines)?;
        if let PodBinding::Masquerade { ports } = binding {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1").map_err(|e| {
                NetworkError::Command {
                    what: "IP forwarding",
                    message: e.to_string(),
                }
            })?;
            nft(&masquerade_ruleset(name, ports))?;
        }
        plumbed.taps.push((*fd, tap_fd));
        if let Some((ip, prefix, gateway)) = lease {
            plumbed.dhcp.push(DhcpPlan {
                bridge,
                server,
                leases: vec![Lease {
                    mac: guest_mac,
                    ip,
                    prefix,
                    gateway,
                    routes: vec![],
                    dns: dns.clone(),
                    search: search.clone(),
                    mtu: Some(mtu),
                    hostname: hostname.clone(),
                }],
            });
        }
    }
    Ok(plumbed)
}

/// passt's port specification for one protocol: the listed ports, everything when the
/// interface lists none (as KubeVirt forwards), or `none` when only the other protocol is
/// listed.
fn passt_ports(ports: &[crate::machine::PodPort], protocol: &str) -> String {
    if ports.is_empty() {
        return "all".into();
    }
    let list: Vec<String> = ports
        .iter()
        .filter(|p| p.protocol == protocol)
        .map(|p| p.port.to_string())
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(",")
    }
}

/// Starts passt for a passt interface of `spec` (there is at most one): in this (the pod's)
/// namespace, as QEMU's user, serving one client on the socket QEMU's netdev names, and gone
/// when QEMU disconnects (or the launcher dies). Returns once the socket exists.
pub async fn start_passt(
    spec: &MachineSpec,
    pod_if: &str,
    user: crate::confine::QemuUser,
) -> Result<Option<tokio::process::Child>, NetworkError> {
    let Some((socket, ports)) = spec.nics.iter().find_map(|n| match &n.backend {
        NetBackend::Passt { socket, ports } => Some((socket, ports)),
        _ => None,
    }) else {
        return Ok(None);
    };
    let fail = |message: String| NetworkError::Command {
        what: "passt",
        message,
    };
    let _ = std::fs::remove_file(socket);
    let mut cmd = tokio::process::Command::new("passt");
    cmd.args([
        "--foreground",
        "--one-off",
        "--quiet",
        "--interface",
        pod_if,
    ])
    .arg("--socket")
    .arg(socket)
    .args(["--tcp-ports", &passt_ports(ports, "tcp")])
    .args(["--udp-ports", &passt_ports(ports, "udp")])
    .arg("--runas")
    .arg(format!("{}:{}", user.uid, user.gid))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; passt must not outlive its launcher.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("passt: {e} (Debian package passt)")))?;
    for _ in 0..200 {
        if socket.exists() {
            return Ok(Some(child));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            return Err(fail(format!("exited ({status}): {}", err.trim())));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Err(fail(format!(
        "{} did not appear within 2 s",
        socket.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::PodPort;

    /// A fake `/sys/bus/pci/devices` (a tempdir): there is no SR-IOV hardware here, and what
    /// is checked is only what the kernel lists there.
    #[test]
    fn sriov_functions_must_be_here_and_bound_to_vfio_pci() {
        let sys = tempfile::tempdir().unwrap();
        let dev = |pci: &str, driver: Option<&str>| {
            let d = sys.path().join(pci);
            std::fs::create_dir_all(&d).unwrap();
            if let Some(drv) = driver {
                std::os::unix::fs::symlink(
                    format!("../../../bus/pci/drivers/{drv}"),
                    d.join("driver"),
                )
                .unwrap();
            }
        };
        dev("0000:81:10.2", Some("vfio-pci"));
        dev("0000:81:10.3", Some("ixgbevf"));
        dev("0000:81:10.4", None);
        let spec_with = |pci: &str| {
            let mut s = crate::qemu::test_spec();
            s.nics = vec![crate::machine::NicSpec {
                name: "sriov".into(),
                model: crate::machine::NicModel::Virtio,
                mac: None,
                boot_order: None,
                backend: NetBackend::Sriov {
                    pci_address: pci.into(),
                },
            }];
            s
        };
        assert!(check_host_devices(&spec_with("0000:81:10.2"), sys.path()).is_ok());
        for (pci, says) in [
            ("0000:81:10.3", "is bound to ixgbevf, not vfio-pci"),
            ("0000:81:10.4", "has no driver"),
            ("0000:81:10.5", "is not present on this node"),
        ] {
            let e = check_host_devices(&spec_with(pci), sys.path())
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("SR-IOV interface sriov: PCI device {pci} {says}")),
                "{e}"
            );
        }
    }

    #[test]
    fn masquerade_forwards_the_listed_ports_or_everything() {
        let all = masquerade_ruleset("eth0", &[]);
        assert!(
            all.contains("iifname \"eth0\" meta l4proto { tcp, udp } dnat to 10.0.2.2"),
            "{all}"
        );
        assert!(all.contains("ip saddr 10.0.2.2 oifname \"eth0\" masquerade"));
        assert!(all.contains("oifname \"k6t-eth0\" ip daddr 10.0.2.2 snat to 10.0.2.1"));
        let some = masquerade_ruleset(
            "eth0",
            &[
                PodPort {
                    protocol: "tcp".into(),
                    port: 80,
                },
                PodPort {
                    protocol: "tcp".into(),
                    port: 22,
                },
                PodPort {
                    protocol: "udp".into(),
                    port: 53,
                },
            ],
        );
        assert!(
            some.contains("tcp dport { 80, 22 } dnat to 10.0.2.2"),
            "{some}"
        );
        assert!(some.contains("udp dport { 53 } dnat to 10.0.2.2"), "{some}");
        assert!(!some.contains("l4proto"), "{some}");
    }

    #[test]
    fn passt_forwards_the_listed_ports_or_everything() {
        let p = |protocol: &str, port| PodPort {
            protocol: protocol.into(),
            port,
        };
        assert_eq!(passt_ports(&[], "tcp"), "all");
        let ports = [p("tcp", 80), p("tcp", 443)];
        assert_eq!(passt_ports(&ports, "tcp"), "80,443");
        assert_eq!(passt_ports(&ports, "udp"), "none");
    }

    #[test]
    fn the_guest_gets_reachable_name_servers_and_the_pod_a_distinct_mac() {
        let (dns, search) = resolv_conf(
            "# generated\nnameserver 127.0.0.53\nnameserver 10.96.0.10\nnameserver fe80::1\n\
             search default.svc.cluster.local svc.cluster.local\n",
        );
        assert_eq!(dns, [Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(search, ["default.svc.cluster.local", "svc.cluster.local"]);
        let m = moved_mac([0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(m, "50:54:00:01:02:03");
        assert_ne!(m, "52:54:00:01:02:03");
    }
}

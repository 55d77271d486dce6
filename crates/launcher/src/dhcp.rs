//! The DHCPv4 server virt-launcher runs for its guest NICs, as KubeVirt's virt-launcher does.
//!
//! KubeVirt does not rely on any DHCP server of the cluster: the launcher itself answers the
//! guest on the in-pod bridge `k6t-<pod iface>` that its tap hangs off, handing out exactly one
//! address per guest MAC with an infinite lease:
//!
//! - `masquerade` binding: the guest gets 10.0.2.2/24 with gateway 10.0.2.1 (the bridge's own
//!   address, which is also the server identifier); the launcher NATs behind the pod IP.
//! - `bridge` binding: the guest gets the pod's own IP/prefix/gateway/routes (the pod interface
//!   gave its address up to the guest), and the server answers from a fake link-local address,
//!   169.254.75.10 ([`crate::machine::BRIDGE_DHCP_SERVER`]), put on the bridge only so replies have a source.
//!
//! [`build_reply`] is the pure part (request bytes in, reply bytes out) and [`DhcpServer`] the
//! socket part. Everything that arrives comes from the guest, which is untrusted: a request is
//! checked and stripped down to the few options the server reads before `dhcproto` sees it
//! (its decoder has `debug_assert!`s, unchecked subtractions and an unchecked `hlen` slice that a
//! hostile packet can trip), and every failure is a `tracing::debug!` and a dropped packet.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use dhcproto::v4::{
    DhcpOption, DhcpOptions, Flags, HType, Message, MessageType, Opcode, OptionCode,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder, Name};

/// The server's UDP port.
pub const SERVER_PORT: u16 = 67;
/// The client's UDP port; replies go to `255.255.255.255:68`.
pub const CLIENT_PORT: u16 = 68;
/// Lease time sent in OFFER/ACK: infinite (RFC 2131 §3.3), as KubeVirt. The address is fixed
/// for the VMI's lifetime, so renewals would only be noise.
pub const INFINITE_LEASE: u32 = u32::MAX;

/// Longest hostname (option 12) sent: the option's own limit; longer ones are dropped, not cut,
/// since a cut name would be a different (wrong) name.
const MAX_HOSTNAME: usize = 255;
/// Longest domain in the search list (RFC 1035's name limit, as text).
const MAX_DOMAIN: usize = 253;
/// Fixed BOOTP header before the magic cookie.
const HEADER_LEN: usize = 236;
const MAGIC: [u8; 4] = [0x63, 0x82, 0x53, 0x63];
/// Replies are padded to the BOOTP minimum; some old clients drop shorter ones.
const MIN_REPLY_LEN: usize = 300;

/// What one guest NIC (identified by its MAC) is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The guest NIC's MAC: the only thing a request is matched on.
    pub mac: [u8; 6],
    /// `yiaddr`.
    pub ip: Ipv4Addr,
    /// Prefix length (0..=32); option 1 (subnet mask) is made from it.
    pub prefix: u8,
    /// Option 3 (router).
    pub gateway: Option<Ipv4Addr>,
    /// Option 121 (classless static routes), `(destination, prefix, via)`. Clients that
    /// understand option 121 ignore option 3 (RFC 3442), so when this is not empty and has no
    /// default route, a `0.0.0.0/0 via gateway` route is added to it.
    pub routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    /// Option 6 (DNS servers).
    pub dns: Vec<Ipv4Addr>,
    /// Option 119 (domain search). Domains that are not valid DNS names are dropped.
    pub search: Vec<String>,
    /// Option 26 (interface MTU).
    pub mtu: Option<u16>,
    /// Option 12 (hostname); KubeVirt sends the VMI name. Dropped when longer than 255 bytes
    /// or not printable ASCII, since it comes from a Kubernetes object.
    pub hostname: Option<String>,
}

/// A failure of the DHCP server (never of one guest packet: those are dropped and logged).
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error(
        "dhcp: interface name {0:?} is not a Linux interface name (1 to 15 bytes, no NUL or '/')"
    )]
    InterfaceName(String),
    #[error("dhcp: lease for {mac}: {reason}")]
    InvalidLease { mac: String, reason: String },
    #[error("dhcp: two leases for MAC {0}")]
    DuplicateMac(String),
    #[error("dhcp: {op} for the DHCP socket on {interface}: {source}")]
    Socket {
        op: &'static str,
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dhcp: receiving on {interface}: {source}")]
    Receive {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

/// What [`build_reply`] answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    Offer,
    Ack,
    Nak,
}

/// A reply to send (broadcast to `255.255.255.255:68`) and the lease it is about.
#[derive(Debug)]
pub struct Reply<'a> {
    pub kind: ReplyKind,
    pub lease: &'a Lease,
    /// The encoded BOOTREPLY.
    pub packet: Vec<u8>,
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff` (for logs and errors).
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The subnet mask of a prefix length (`prefix` ≤ 32, checked by the callers).
fn mask(prefix: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

/// The hostname to send, or `None` (with a log) when it must not be sent: it comes from a
/// Kubernetes object, and a guest's DHCP client may paste it into a shell script or a config
/// file, so only 1..=255 bytes of printable ASCII without spaces go out.
fn sendable_hostname(name: &str) -> Option<&str> {
    if name.is_empty() || name.len() > MAX_HOSTNAME || !name.bytes().all(|b| b.is_ascii_graphic()) {
        tracing::debug!(len = name.len(), "dhcp: hostname not sendable, dropped");
        return None;
    }
    Some(name)
}

/// The search domain as a fully-qualified DNS name, or `None` (with a log) when it is not a
/// valid name (same reasoning as [`sendable_hostname`]).
fn sendable_domain(domain: &str) -> Option<Name> {
    if domain.is_empty()
        || domain.len() > MAX_DOMAIN
        || !domain.bytes().all(|b| b.is_ascii_graphic())
    {
        tracing::debug!(
            len = domain.len(),
            "dhcp: search domain not sendable, dropped"
        );
        return None;
    }
    match Name::from_ascii(domain) {
        Ok(mut name) => {
            // Option 119 carries wire-format names, each ending with the root label.
            name.set_fqdn(true);
            Some(name)
        }
        Err(e) => {
            tracing::debug!(domain, error = %e, "dhcp: search domain not a DNS name, dropped");
            None
        }
    }
}

/// Checks a lease table once, so replies never carry impossible values.
fn validate(leases: &[Lease]) -> Result<(), DhcpError> {
    let mut seen = HashSet::new();
    for lease in leases {
        let mac = format_mac(&lease.mac);
        let invalid = |reason: String| DhcpError::InvalidLease {
            mac: mac.clone(),
            reason,
        };
        if lease.prefix > 32 {
            return Err(invalid(format!("prefix /{} is not 0..=32", lease.prefix)));
        }
        if let Some((dst, prefix, _)) = lease.routes.iter().find(|(_, p, _)| *p > 32) {
            return Err(invalid(format!(
                "route {dst}/{prefix}: prefix is not 0..=32"
            )));
        }
        if let Some(mtu) = lease.mtu {
            // RFC 2132 §5.1: the minimum legal value is 68.
            if mtu < 68 {
                return Err(invalid(format!("MTU {mtu} is below the minimum of 68")));
            }
        }
        if lease.mac[0] & 1 == 1 {
            return Err(invalid("multicast MAC".to_string()));
        }
        if !seen.insert(lease.mac) {
            return Err(DhcpError::DuplicateMac(mac));
        }
    }
    Ok(())
}

/// The parts of a request the server reads.
struct Request {
    msg: Message,
    mac: [u8; 6],
    msg_type: MessageType,
    requested_ip: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
}

/// Checks a request and decodes it, keeping only options 53, 50 and 54 (with their exact
/// lengths): everything else is dropped before `dhcproto` decodes the packet, so its decoder
/// never sees the options it mishandles, and `hlen` is checked to be 6 (an Ethernet MAC) before
/// `dhcproto`'s `chaddr()` slices by it.
fn parse_request(packet: &[u8]) -> Option<Request> {
    let Some(header) = packet.get(..HEADER_LEN + MAGIC.len()) else {
        tracing::debug!(
            len = packet.len(),
            "dhcp: packet shorter than a BOOTP header"
        );
        return None;
    };
    if header[0] != 1 {
        tracing::debug!(op = header[0], "dhcp: not a BOOTREQUEST");
        return None;
    }
    if header[1] != 1 || header[2] != 6 {
        tracing::debug!(
            htype = header[1],
            hlen = header[2],
            "dhcp: not an Ethernet client"
        );
        return None;
    }
    if header[HEADER_LEN..] != MAGIC {
        tracing::debug!("dhcp: no DHCP magic cookie");
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&header[28..34]);

    let mut clean = header.to_vec();
    let mut kept: Vec<u8> = Vec::with_capacity(3);
    let mut rest = &packet[HEADER_LEN + MAGIC.len()..];
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            0 => {
                rest = tail;
                continue;
            }
            255 => break,
            _ => {}
        }
        let Some((&len, tail)) = tail.split_first() else {
            tracing::debug!(code, "dhcp: option without length");
            return None;
        };
        let Some(data) = tail.get(..usize::from(len)) else {
            tracing::debug!(code, len, "dhcp: option runs past the packet");
            return None;
        };
        rest = &tail[usize::from(len)..];
        // A later copy of a kept option would be concatenated (RFC 3396) with the first
        // into something of the wrong length: keep the first only.
        if matches!((code, len), (53, 1) | (50, 4) | (54, 4)) && !kept.contains(&code) {
            kept.push(code);
            clean.extend_from_slice(&[code, len]);
            clean.extend_from_slice(data);
        }
    }
    clean.push(255);

    let msg = match Message::decode(&mut Decoder::new(&clean)) {
        Ok(msg) => msg,
        Err(e) => {
            tracing::debug!(error = %e, "dhcp: undecodable request");
            return None;
        }
    };
    let opts = msg.opts();
    let Some(msg_type) = opts.msg_type() else {
        tracing::debug!(mac = %format_mac(&mac), "dhcp: BOOTP request without DHCP message type");
        return None;
    };
    let requested_ip = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    Some(Request {
        msg,
        mac,
        msg_type,
        requested_ip,
        server_id,
    })
}

/// A BOOTREPLY skeleton for `req`, of DHCP type `kind`, from `server_ip`.
fn reply_skeleton(req: &Request, server_ip: Ipv4Addr, kind: MessageType) -> Message {
    let mut msg = Message::new_with_id(
        req.msg.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        req.msg.giaddr(),
        &req.mac,
    );
    msg.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_flags(req.msg.flags());
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(server_ip));
    msg
}

/// Puts the lease's configuration into an OFFER/ACK.
fn fill_lease(msg: &mut Message, req: &Request, lease: &Lease) {
    if req.msg_type == MessageType::Request {
        // RFC 2131 table 3: an ACK echoes the request's ciaddr.
        msg.set_ciaddr(req.msg.ciaddr());
    }
    msg.set_yiaddr(lease.ip);
    let opts: &mut DhcpOptions = msg.opts_mut();
    opts.insert(DhcpOption::AddressLeaseTime(INFINITE_LEASE));
    opts.insert(DhcpOption::SubnetMask(mask(lease.prefix)));
    if let Some(gw) = lease.gateway {
        opts.insert(DhcpOption::Router(vec![gw]));
    }
    if !lease.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(lease.dns.clone()));
    }
    if let Some(name) = lease.hostname.as_deref().and_then(sendable_hostname) {
        opts.insert(DhcpOption::Hostname(name.to_string()));
    }
    if let Some(mtu) = lease.mtu {
        opts.insert(DhcpOption::InterfaceMtu(mtu));
    }
    let search: Vec<Name> = lease
        .search
        .iter()
        .filter_map(|d| sendable_domain(d))
        .collect();
    if !search.is_empty() {
        opts.insert(DhcpOption::DomainSearch(search));
    }
    let mut routes: Vec<(ipnet::Ipv4Net, Ipv4Addr)> = lease
        .routes
        .iter()
        .filter_map(|(dst, prefix, via)| {
            // `trunc` clears host bits: the option only carries the significant octets.
            ipnet::Ipv4Net::new(*dst, *prefix)
                .ok()
                .map(|n| (n.trunc(), *via))
        })
        .collect();
    if !routes.is_empty() {
        if let Some(gw) = lease.gateway {
            if !routes.iter().any(|(n, _)| n.prefix_len() == 0) {
                routes.push((ipnet::Ipv4Net::default(), gw));
            }
        }
        opts.insert(DhcpOption::ClasslessStaticRoute(routes));
    }
}

fn encode(msg: &Message) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(MIN_REPLY_LEN);
    if let Err(e) = msg.encode(&mut Encoder::new(&mut buf)) {
        tracing::debug!(error = %e, "dhcp: cannot encode reply");
        return None;
    }
    if buf.len() < MIN_REPLY_LEN {
        buf.resize(MIN_REPLY_LEN, 0);
    }
    Some(buf)
}

/// The reply to one request packet, or `None` when the server must stay silent: a packet that
/// is not a well-formed DHCP request, an unknown MAC (another server, or none, answers it), a
/// REQUEST addressed to another server, and RELEASE/DECLINE/INFORM (the lease is static:
/// nothing to release, nothing to re-offer after a decline, and INFORM is only used by clients
/// with a configured address, which ours get from the lease itself).
///
/// DISCOVER gets an OFFER of the MAC's lease; REQUEST gets an ACK when the address it asks for
/// (option 50, else `ciaddr` when renewing) is the lease's, a NAK otherwise, so a guest that
/// remembers an old address (e.g. from another pod) drops it and starts over.
pub fn build_reply<'a>(
    server_ip: Ipv4Addr,
    leases: &'a [Lease],
    packet: &[u8],
) -> Option<Reply<'a>> {
    let req = parse_request(packet)?;
    let mac = format_mac(&req.mac);
    let Some(lease) = leases.iter().find(|l| l.mac == req.mac) else {
        tracing::debug!(mac, "dhcp: no lease for this MAC, ignored");
        return None;
    };
    let (kind, msg) = match req.msg_type {
        MessageType::Discover => {
            let mut msg = reply_skeleton(&req, server_ip, MessageType::Offer);
            fill_lease(&mut msg, &req, lease);
            (ReplyKind::Offer, msg)
        }
        MessageType::Request => {
            if let Some(id) = req.server_id {
                if id != server_ip {
                    tracing::debug!(mac, server = %id, "dhcp: REQUEST for another server, ignored");
                    return None;
                }
            }
            let asked = req.requested_ip.or_else(|| {
                let ciaddr = req.msg.ciaddr();
                (!ciaddr.is_unspecified()).then_some(ciaddr)
            });
            if asked == Some(lease.ip) {
                let mut msg = reply_skeleton(&req, server_ip, MessageType::Ack);
                fill_lease(&mut msg, &req, lease);
                (ReplyKind::Ack, msg)
            } else {
                tracing::debug!(mac, asked = ?asked, lease = %lease.ip, "dhcp: NAK");
                let mut msg = reply_skeleton(&req, server_ip, MessageType::Nak);
                // RFC 2131 §4.3.2: a NAK is broadcast; set the flag for relays and clients.
                msg.set_flags(Flags::default().set_broadcast());
                (ReplyKind::Nak, msg)
            }
        }
        other => {
            tracing::debug!(mac, msg_type = ?other, "dhcp: message type not answered");
            return None;
        }
    };
    Some(Reply {
        kind,
        lease,
        packet: encode(&msg)?,
    })
}

/// A DHCP server bound to one interface (one per guest NIC bridge, as KubeVirt).
#[derive(Debug)]
pub struct DhcpServer {
    socket: tokio::net::UdpSocket,
    interface: String,
    server_ip: Ipv4Addr,
    leases: Vec<Lease>,
}

/// `setsockopt` of an `int` option, mapped to an error naming `op`.
fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    op: &'static str,
    interface: &str,
) -> Result<(), DhcpError> {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is an open socket and `one` outlives the call; the length matches.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(DhcpError::Socket {
            op,
            interface: interface.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl DhcpServer {
    /// Binds UDP `0.0.0.0:67` on `interface` with server identifier `server_ip`.
    ///
    /// `SO_BINDTODEVICE` confines the socket to the guest's bridge, so one server per NIC can
    /// bind the same port (`SO_REUSEADDR`) and none answers a neighbour's guest or the pod
    /// network; `SO_BROADCAST` lets it send to 255.255.255.255, the only address a client
    /// without an address can receive. Must run with `CAP_NET_RAW` (for `SO_BINDTODEVICE`)
    /// and `CAP_NET_BIND_SERVICE`, and inside a Tokio runtime.
    pub fn bind(
        interface: &str,
        server_ip: Ipv4Addr,
        leases: Vec<Lease>,
    ) -> Result<DhcpServer, DhcpError> {
        if interface.is_empty()
            || interface.len() >= libc::IFNAMSIZ
            || interface.bytes().any(|b| b == 0 || b == b'/')
        {
            return Err(DhcpError::InterfaceName(interface.to_string()));
        }
        validate(&leases)?;
        for lease in &leases {
            if let Some(name) = &lease.hostname {
                if sendable_hostname(name).is_none() {
                    tracing::warn!(
                        mac = %format_mac(&lease.mac),
                        "dhcp: hostname is not printable ASCII of at most 255 bytes, not sent"
                    );
                }
            }
        }
        let err = |op: &'static str| {
            let source = std::io::Error::last_os_error();
            DhcpError::Socket {
                op,
                interface: interface.to_string(),
                source,
            }
        };
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if raw < 0 {
            return Err(err("socket"));
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        set_int_opt(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            "SO_REUSEADDR",
            interface,
        )?;
        set_int_opt(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_BROADCAST,
            "SO_BROADCAST",
            interface,
        )?;
        // SAFETY: the pointer/length pair describes `interface`'s bytes, valid for the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                interface.as_ptr().cast(),
                interface.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(err("SO_BINDTODEVICE"));
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: SERVER_PORT.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::UNSPECIFIED).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `addr` is a valid sockaddr_in and the length is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(err("bind 0.0.0.0:67"));
        }
        let socket =
            tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd)).map_err(|source| {
                DhcpError::Socket {
                    op: "register with tokio",
                    interface: interface.to_string(),
                    source,
                }
            })?;
        Ok(DhcpServer {
            socket,
            interface: interface.to_string(),
            server_ip,
            leases,
        })
    }

    /// The interface the server is bound to.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Answers requests as [`build_reply`] says, broadcasting each reply to
    /// `255.255.255.255:68` on the interface, and calls `on_ack` after each ACK sent (the
    /// guest now has its address). Runs until the future is dropped or receiving fails.
    ///
    /// A failed send is logged and skipped rather than fatal: the guest's link can be down for
    /// a moment (its tap not yet attached, a reboot), and the client retransmits.
    pub async fn serve(self, mut on_ack: impl FnMut(&Lease) + Send) -> Result<(), DhcpError> {
        let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT);
        // Larger than any Ethernet frame: a longer datagram (fragments) is truncated and then
        // rejected or read as far as it goes, never trusted beyond the buffer.
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) =
                self.socket
                    .recv_from(&mut buf)
                    .await
                    .map_err(|source| DhcpError::Receive {
                        interface: self.interface.clone(),
                        source,
                    })?;
            let Some(packet) = buf.get(..n) else {
                continue;
            };
            let Some(reply) = build_reply(self.server_ip, &self.leases, packet) else {
                continue;
            };
            let mac = format_mac(&reply.lease.mac);
            match self.socket.send_to(&reply.packet, to).await {
                Ok(_) => {
                    tracing::debug!(interface = %self.interface, %from, mac, kind = ?reply.kind, "dhcp: replied");
                    if reply.kind == ReplyKind::Ack {
                        tracing::info!(interface = %self.interface, mac, ip = %reply.lease.ip, "dhcp: lease acknowledged");
                        on_ack(reply.lease);
                    }
                }
                Err(e) => {
                    tracing::warn!(interface = %self.interface, mac, error = %e, "dhcp: sending reply failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
    const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xaa, 0xbb, 0xcc];

    fn lease() -> Lease {
        Lease {
            mac: MAC,
            ip: crate::machine::MASQUERADE_GUEST,
            prefix: 24,
            gateway: Some(crate::machine::MASQUERADE_GATEWAY),
            routes: vec![],
            dns: vec![Ipv4Addr::new(10, 96, 0, 10)],
            search: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
            mtu: Some(1400),
            hostname: Some("testvmi".into()),
        }
    }

    fn request(mac: &[u8], kind: MessageType, opts: Vec<DhcpOption>) -> Vec<u8> {
        let mut msg = Message::new_with_id(
            0x1234_5678,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            mac,
        );
        msg.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            msg.opts_mut().insert(o);
        }
        let mut buf = Vec::new();
        msg.encode(&mut Encoder::new(&mut buf)).expect("encode");
        buf
    }

    fn decode(reply: &Reply<'_>) -> Message {
        Message::decode(&mut Decoder::new(&reply.packet)).expect("reply decodes")
    }

    #[test]
    fn discover_gets_offer_with_everything() {
        let leases = vec![lease()];
        let reply = build_reply(
            SERVER,
            &leases,
            &request(&MAC, MessageType::Discover, vec![]),
        )
        .expect("offer");
        assert_eq!(reply.kind, ReplyKind::Offer);
        assert_eq!(reply.lease, &leases[0]);
        assert!(reply.packet.len() >= MIN_REPLY_LEN);
        let msg = decode(&reply);
        assert_eq!(msg.opcode(), Opcode::BootReply);
        assert_eq!(msg.xid(), 0x1234_5678);
        assert_eq!(msg.chaddr(), &MAC);
        assert_eq!(msg.yiaddr(), crate::machine::MASQUERADE_GUEST);
        let o = msg.opts();
        assert_eq!(o.msg_type(), Some(MessageType::Offer));
        assert_eq!(
            o.get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(
            o.get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(u32::MAX))
        );
        assert_eq!(
            o.get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            o.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![
                crate::machine::MASQUERADE_GATEWAY
            ]))
        );
        assert_eq!(
            o.get(OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 96, 0, 10
            )]))
        );
        assert_eq!(
            o.get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("testvmi".into()))
        );
        assert_eq!(
            o.get(OptionCode::InterfaceMtu),
            Some(&DhcpOption::InterfaceMtu(1400))
        );
        let Some(DhcpOption::DomainSearch(names)) = o.get(OptionCode::DomainSearch) else {
            panic!("no search list: {o:?}");
        };
        let names: Vec<String> = names.iter().map(|n| n.to_ascii()).collect();
        assert_eq!(names, ["default.svc.cluster.local.", "cluster.local."]);
        assert!(o.get(OptionCode::ClasslessStaticRoute).is_none());
    }

    #[test]
    fn request_for_lease_gets_ack_and_wrong_address_nak() {
        let leases = vec![lease()];
        let ack = build_reply(
            SERVER,
            &leases,
            &request(
                &MAC,
                MessageType::Request,
                vec![
                    DhcpOption::RequestedIpAddress(crate::machine::MASQUERADE_GUEST),
                    DhcpOption::ServerIdentifier(SERVER),
                ],
            ),
        )
        .expect("ack");
        assert_eq!(ack.kind, ReplyKind::Ack);
        let msg = decode(&ack);
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(msg.yiaddr(), crate::machine::MASQUERADE_GUEST);

        let nak = build_reply(
            SERVER,
            &leases,
            &request(
                &MAC,
                MessageType::Request,
                vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 2, 99))],
            ),
        )
        .expect("nak");
        assert_eq!(nak.kind, ReplyKind::Nak);
        let msg = decode(&nak);
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(msg.flags().broadcast());
        assert!(msg.opts().get(OptionCode::AddressLeaseTime).is_none());
        // Nothing asked for at all: NAK too.
        let nak = build_reply(
            SERVER,
            &leases,
            &request(&MAC, MessageType::Request, vec![]),
        );
        assert_eq!(nak.map(|r| r.kind), Some(ReplyKind::Nak));
    }

    #[test]
    fn renewal_by_ciaddr_is_acked() {
        let leases = vec![lease()];
        let mut msg = Message::new_with_id(
            7,
            crate::machine::MASQUERADE_GUEST,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        msg.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Request));
        let mut buf = Vec::new();
        msg.encode(&mut Encoder::new(&mut buf)).expect("encode");
        let reply = build_reply(SERVER, &leases, &buf).expect("ack");
        assert_eq!(reply.kind, ReplyKind::Ack);
        assert_eq!(decode(&reply).ciaddr(), crate::machine::MASQUERADE_GUEST);
    }

    #[test]
    fn silent_cases() {
        let leases = vec![lease()];
        let other = [0x02, 0, 0, 0, 0, 1];
        assert!(build_reply(
            SERVER,
            &leases,
            &request(&other, MessageType::Discover, vec![])
        )
        .is_none());
        // REQUEST that chose another server.
        let to_other = request(
            &MAC,
            MessageType::Request,
            vec![
                DhcpOption::RequestedIpAddress(crate::machine::MASQUERADE_GUEST),
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 254)),
            ],
        );
        assert!(build_reply(SERVER, &leases, &to_other).is_none());
        for kind in [
            MessageType::Release,
            MessageType::Decline,
            MessageType::Inform,
            MessageType::Offer,
        ] {
            assert!(build_reply(SERVER, &leases, &request(&MAC, kind, vec![])).is_none());
        }
    }

    #[test]
    fn garbage_and_truncation_are_dropped() {
        let leases = vec![lease()];
        let good = request(&MAC, MessageType::Discover, vec![]);
        for n in 0..good.len() {
            // Cut inside the header or the options: never a panic; an intact message-type
            // option still gets an answer.
            let _ = build_reply(SERVER, &leases, &good[..n]);
        }
        assert!(build_reply(SERVER, &leases, &good[..HEADER_LEN]).is_none());
        assert!(build_reply(SERVER, &leases, b"").is_none());
        assert!(build_reply(SERVER, &leases, &[0xff; 600]).is_none());
        // hlen 200 (dhcproto's chaddr() would slice out of bounds).
        let mut bad = good.clone();
        bad[2] = 200;
        assert!(build_reply(SERVER, &leases, &bad).is_none());
        // BOOTREPLY from a guest.
        let mut bad = good.clone();
        bad[0] = 2;
        assert!(build_reply(SERVER, &leases, &bad).is_none());
        // Options dhcproto mishandles (81 with length < 3, 94 with length != 3, 151 with
        // length 0), option overrunning the packet, and a duplicated message type.
        for opts in [
            &[81u8, 0][..],
            &[81, 1, 0],
            &[94, 0],
            &[151, 0],
            &[53, 200, 1],
            &[53, 1],
        ] {
            let mut p = good[..HEADER_LEN + 4].to_vec();
            p.extend_from_slice(&[53, 1, 1]);
            p.extend_from_slice(opts);
            p.push(255);
            let _ = build_reply(SERVER, &leases, &p);
        }
        let mut p = good[..HEADER_LEN + 4].to_vec();
        p.extend_from_slice(&[81, 0, 53, 1, 1, 53, 1, 3, 255]);
        assert_eq!(
            build_reply(SERVER, &leases, &p).map(|r| r.kind),
            Some(ReplyKind::Offer),
            "first message type wins, bad options are skipped"
        );
    }

    #[test]
    fn hostile_hostname_and_search_are_not_sent() {
        for bad in [
            "a".repeat(256),
            "vm\nrm -rf /".to_string(),
            "vm name".to_string(),
            "vm\u{0}x".to_string(),
            "vmé".to_string(),
            String::new(),
        ] {
            let mut l = lease();
            l.hostname = Some(bad.clone());
            l.search = vec![bad.clone(), "ok.example".into(), "a..b".into()];
            let leases = vec![l];
            let reply = build_reply(
                SERVER,
                &leases,
                &request(&MAC, MessageType::Discover, vec![]),
            )
            .expect("offer");
            let msg = decode(&reply);
            assert!(
                msg.opts().get(OptionCode::Hostname).is_none(),
                "{bad:?} sent"
            );
            let Some(DhcpOption::DomainSearch(names)) = msg.opts().get(OptionCode::DomainSearch)
            else {
                panic!("no search list");
            };
            let names: Vec<String> = names.iter().map(|n| n.to_ascii()).collect();
            assert_eq!(names, ["ok.example."]);
        }
        let mut l = lease();
        l.hostname = Some("a".repeat(255));
        let leases = vec![l];
        let reply = build_reply(
            SERVER,
            &leases,
            &request(&MAC, MessageType::Discover, vec![]),
        )
        .expect("offer");
        assert!(
            decode(&reply).opts().get(OptionCode::Hostname).is_some(),
            "255 bytes is allowed"
        );
    }

    #[test]
    fn routes_get_a_default_route() {
        let mut l = lease();
        l.routes = vec![(Ipv4Addr::new(192, 0, 2, 77), 24, Ipv4Addr::new(10, 0, 2, 3))];
        let leases = vec![l];
        let reply = build_reply(
            SERVER,
            &leases,
            &request(&MAC, MessageType::Discover, vec![]),
        )
        .expect("offer");
        let msg = decode(&reply);
        let Some(DhcpOption::ClasslessStaticRoute(routes)) =
            msg.opts().get(OptionCode::ClasslessStaticRoute)
        else {
            panic!("no routes");
        };
        let routes: Vec<String> = routes
            .iter()
            .map(|(n, gw)| format!("{n} via {gw}"))
            .collect();
        assert_eq!(
            routes,
            ["192.0.2.0/24 via 10.0.2.3", "0.0.0.0/0 via 10.0.2.1"]
        );
    }

    #[test]
    fn lease_table_is_validated() {
        let ok = validate(&[lease()]);
        assert!(ok.is_ok());
        let mut l = lease();
        l.prefix = 33;
        assert!(matches!(
            validate(&[l]),
            Err(DhcpError::InvalidLease { .. })
        ));
        let mut l = lease();
        l.mtu = Some(10);
        assert!(matches!(
            validate(&[l]),
            Err(DhcpError::InvalidLease { .. })
        ));
        assert!(matches!(
            validate(&[lease(), lease()]),
            Err(DhcpError::DuplicateMac(_))
        ));
        assert!(matches!(
            DhcpServer::bind("an-interface-name-too-long", SERVER, vec![]),
            Err(DhcpError::InterfaceName(_))
        ));
    }

    #[test]
    fn masks() {
        assert_eq!(mask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(mask(8), Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(mask(32), Ipv4Addr::new(255, 255, 255, 255));
    }

    proptest::proptest! {
        /// Whatever the guest sends, the server neither panics nor answers anything but a
        /// packet it can itself decode.
        #[test]
        fn never_panics_on_arbitrary_options(opts in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let leases = vec![lease()];
            let mut p = request(&MAC, MessageType::Discover, vec![])[..HEADER_LEN + 4].to_vec();
            p.extend_from_slice(&opts);
            if let Some(r) = build_reply(SERVER, &leases, &p) {
                proptest::prop_assert!(Message::decode(&mut Decoder::new(&r.packet)).is_ok());
            }
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..700)) {
            let _ = build_reply(SERVER, &[lease()], &bytes);
        }
    }
}

//! The pod network of a VMI on this node, as kubelet and a CNI plugin give KubeVirt's launcher
//! Pod one: a network namespace per VMI (`/run/netns/kvrs-<vmi uid>`), and the node's network
//! configuration run in it through [`crate::cni`] (by default the standard plugins: a `bridge`
//! on the node, `host-local` addresses from the pod CIDR, `portmap`).
//!
//! Setup and teardown are idempotent and keyed by the VMI's uid, so a restarted handler (or a
//! killed launcher) can always finish them: [`PodNetwork::teardown`] runs CNI `DEL` (which
//! succeeds when there is nothing to delete) and removes the namespace;
//! [`PodNetwork::collect_garbage`] does that for every namespace of ours whose VMI is gone.

use crate::cni::{Attachment, Cni, CniError, CniResult, NetworkConfigList};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// The prefix of our namespaces' names (`kvrs-<vmi uid>`).
pub const NETNS_PREFIX: &str = "kvrs-";
/// The pod's interface inside its namespace (kubelet's default).
pub const POD_IFNAME: &str = kubevirt_launcher::api::PodInterface::POD;

#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    #[error("VMI uid {0:?} is not a UUID")]
    Uid(String),
    #[error("network namespace {name}: {message}")]
    Netns { name: String, message: String },
    #[error(transparent)]
    Cni(#[from] CniError),
}

/// The node's pod network: its CIDR and bridge (`--pod-cidr`, the `KubeVirt` resource's
/// network settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNetwork {
    pub cidr: String,
    pub bridge: String,
    /// host-local's lease directory.
    pub ipam_dir: PathBuf,
}

impl NodeNetwork {
    pub const DEFAULT_CIDR: &'static str = "10.244.0.0/24";
    pub const DEFAULT_BRIDGE: &'static str = "kvrs0";

    /// Where host-local keeps the leases of the default network. Host-wide, like the bridge
    /// and the namespaces: every server on this machine that shares the bridge must draw from
    /// the same leases (tests run several), and like them it is gone after a reboot.
    pub const DEFAULT_IPAM_DIR: &'static str = "/run/kubevirt-rs/ipam";

    /// The default pod network with the pod CIDR `cidr` (`--pod-cidr`).
    pub fn new(cidr: &str) -> NodeNetwork {
        NodeNetwork {
            cidr: cidr.into(),
            bridge: Self::DEFAULT_BRIDGE.into(),
            ipam_dir: PathBuf::from(Self::DEFAULT_IPAM_DIR),
        }
    }

    /// The CNI configuration list of the pod network: the node's bridge as the pods' gateway,
    /// traffic to the outside masqueraded, host-local addresses, host ports through portmap.
    pub fn conflist(&self) -> Result<NetworkConfigList, CniError> {
        let conf = serde_json::json!({
            "cniVersion": crate::cni::CNI_VERSION,
            "name": "kubevirt-rs-pod-network",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    // No hairpin: a bridge-bound guest's own frames would come back through
                    // the pod interface and move its MAC away from its tap in the VMI's
                    // bridge (there are no Services to reach oneself through).
                    "hairpinMode": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.ipam_dir,
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
            ]
        });
        NetworkConfigList::parse(&conf.to_string())
    }
}

impl NodeNetwork {
    /// A Multus network's CNI configuration (a NetworkAttachmentDefinition's `spec.config`) as
    /// this node runs it: checked against what a network may ask of the node
    /// ([`kubevirt_api::multus::check_config`], as at admission: the object may predate the
    /// rule), not on the node's own bridge, and with host-local's leases in this node's
    /// lease directory.
    pub fn confine(&self, nad: &str, config: &str) -> Result<NetworkConfigList, CniError> {
        let path = kubevirt_api::field::Path::root("spec").child("config");
        let problems = kubevirt_api::multus::check_config(&path, config);
        if !problems.is_empty() {
            let why: Vec<String> = problems.into_iter().map(|p| p.message).collect();
            return Err(CniError::Config(format!("{nad}: {}", why.join("; "))));
        }
        let mut list = NetworkConfigList::parse(config)?;
        for p in &mut list.plugins {
            if p.get("bridge").and_then(|b| b.as_str()) == Some(self.bridge.as_str()) {
                return Err(CniError::Config(format!(
                    "{nad}: bridge {:?} is this node's pod network bridge; name another",
                    self.bridge
                )));
            }
            if let Some(ipam) = p.get_mut("ipam").and_then(|i| i.as_object_mut()) {
                if ipam.get("type").and_then(|t| t.as_str()) == Some("host-local") {
                    ipam.insert(
                        "dataDir".into(),
                        serde_json::Value::String(self.ipam_dir.display().to_string()),
                    );
                }
            }
        }
        Ok(list)
    }
}

/// How long a lease in an empty namespace must have existed before another server's
/// namespace counts as abandoned ([`PodNetwork::collect_garbage`]).
pub const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// One network of a VMI to attach in its namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct Attach {
    /// The VMI network it serves (`spec.networks[].name`).
    pub network: String,
    /// Its pod interface: [`kubevirt_launcher::api::PodInterface::name_for`]'s name.
    pub ifname: String,
    /// A Multus network's CNI configuration ([`NodeNetwork::confine`]d); `None` for the
    /// node's pod network.
    pub config: Option<NetworkConfigList>,
}

/// One attached network and what CNI gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub network: String,
    pub ifname: String,
    pub result: CniResult,
}

/// What a VMI's pod network is once set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetworkStatus {
    /// The namespace's path, for the launcher to enter.
    pub netns: PathBuf,
    /// In the order attached (the pod network or a Multus default first).
    pub attached: Vec<Attached>,
}

impl PodNetworkStatus {
    /// The addresses (without prefix) of the pod interface `ifname`.
    pub fn ips(&self, ifname: &str) -> Vec<String> {
        self.attached
            .iter()
            .filter(|a| a.ifname == ifname)
            .flat_map(|a| a.result.addresses_of(ifname))
            .collect()
    }

    /// What the launcher is handed (`network.json`).
    pub fn info(&self) -> kubevirt_launcher::api::PodNetworkInfo {
        use kubevirt_launcher::api::{PodAddress, PodInterface};
        let interfaces = self
            .attached
            .iter()
            .map(|a| {
                let ips: Vec<_> = a.result.ips_on(&a.ifname).collect();
                PodInterface {
                    network: a.network.clone(),
                    interface: a.ifname.clone(),
                    addresses: ips
                        .iter()
                        .filter_map(|ip| {
                            let (a, p) = ip.address.split_once('/')?;
                            Some(PodAddress {
                                ip: a.parse().ok()?,
                                prefix: p.parse().ok()?,
                            })
                        })
                        .collect(),
                    gateway: ips.iter().find_map(|ip| ip.gateway.parse().ok()),
                    mac: a.result.mac_of(&a.ifname).map(String::from),
                }
            })
            .collect();
        kubevirt_launcher::api::PodNetworkInfo {
            netns: self.netns.clone(),
            interfaces,
            sriov: Vec::new(),
        }
    }
}

/// Sets up and tears down pod networks of VMIs on this node.
#[derive(Clone, Debug)]
pub struct PodNetwork {
    pub node: NodeNetwork,
    pub cni: Cni,
    net: NetworkConfigList,
}

fn ip_cmd(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A VMI uid (a UUID: hex digits and dashes) as it may appear in a namespace name.
fn check_uid(uid: &str) -> Result<(), PodNetworkError> {
    let ok = uid.len() <= 64
        && !uid.is_empty()
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PodNetworkError::Uid(uid.to_string()))
    }
}

impl PodNetwork {
    pub fn new(node: NodeNetwork, cni: Cni) -> Result<PodNetwork, PodNetworkError> {
        let net = node.conflist()?;
        Ok(PodNetwork { node, cni, net })
    }

    /// The plugin types the node's configuration runs, in order.
    pub fn plugins(&self) -> Vec<String> {
        let mut types: Vec<String> = self
            .net
            .plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(|t| t.as_str()).map(String::from))
            .collect();
        // IPAM plugins are named inside their plugin's configuration.
        types.extend(self.net.plugins.iter().filter_map(|p| {
            p.get("ipam")
                .and_then(|i| i.get("type"))
                .and_then(|t| t.as_str())
                .map(String::from)
        }));
        types
    }

    /// The namespace name of a VMI.
    pub fn netns_name(uid: &str) -> Result<String, PodNetworkError> {
        check_uid(uid)?;
        Ok(format!("{NETNS_PREFIX}{uid}"))
    }

    fn attachment(
        uid: &str,
        namespace: &str,
        name: &str,
        ifname: &str,
    ) -> Result<Attachment, PodNetworkError> {
        let ns = Self::netns_name(uid)?;
        Ok(Attachment {
            container_id: uid.to_string(),
            netns: Path::new(NETNS_DIR).join(ns),
            ifname: ifname.into(),
            args: vec![
                ("K8S_POD_NAMESPACE".into(), namespace.into()),
                ("K8S_POD_NAME".into(), name.into()),
                ("K8S_POD_UID".into(), uid.into()),
            ],
        })
    }

    /// The node's pod network as the one network of a VMI (its `eth0`).
    pub fn default_attach(network: &str) -> Attach {
        Attach {
            network: network.into(),
            ifname: POD_IFNAME.into(),
            config: None,
        }
    }

    /// Creates the VMI's namespace (if missing) and runs CNI `ADD` in it for each network
    /// (unless an earlier `ADD` is cached). A failure leaves neither namespace nor address
    /// behind: what was attached is deleted again.
    pub async fn setup(
        &self,
        uid: &str,
        namespace: &str,
        name: &str,
        networks: &[Attach],
    ) -> Result<PodNetworkStatus, PodNetworkError> {
        let ns = Self::netns_name(uid)?;
        let netns = Path::new(NETNS_DIR).join(&ns);
        if !netns.exists() {
            ip_cmd(&["netns", "add", &ns]).map_err(|message| PodNetworkError::Netns {
                name: ns.clone(),
                message,
            })?;
        }
        // Every pod has its loopback up (the CRI's `lo`): the launcher and the migration
        // proxy use 127.0.0.1 inside the namespace.
        ip_cmd(&["-n", &ns, "link", "set", "lo", "up"]).map_err(|message| {
            PodNetworkError::Netns {
                name: ns.clone(),
                message,
            }
        })?;
        let mut attached = Vec::new();
        for n in networks {
            let at = Self::attachment(uid, namespace, name, &n.ifname)?;
            let net = n.config.as_ref().unwrap_or(&self.net);
            let added = match self.cni.cached(net, &at) {
                Ok(Some(r)) => Ok(r),
                Ok(None) => self.cni.add(net, &at).await,
                Err(e) => Err(e),
            };
            match added {
                Ok(result) => attached.push(Attached {
                    network: n.network.clone(),
                    ifname: n.ifname.clone(),
                    result,
                }),
                Err(e) => {
                    if let Err(undo) = self.teardown(uid).await {
                        tracing::warn!(%uid, error = %undo, "undoing a failed pod network setup");
                    }
                    let _ = ip_cmd(&["netns", "del", &ns]);
                    return Err(e.into());
                }
            }
        }
        Ok(PodNetworkStatus { netns, attached })
    }

    /// CNI `DEL` of every network attached for the VMI (Multus networks from the
    /// configuration cached at `ADD`, so a deleted NetworkAttachmentDefinition is no
    /// obstacle), and the namespace removed; nothing to do is no error.
    pub async fn teardown(&self, uid: &str) -> Result<(), PodNetworkError> {
        let mut cached = self.cni.cached_attachments(Some(uid));
        // Secondary networks first, the pod network's eth0 last (as they were added).
        cached.sort_by_key(|c| c.attachment.ifname == POD_IFNAME);
        let mut first_err = None;
        let mut pod_network_done = false;
        for c in cached {
            let net = match c.config {
                Some(n) => n,
                None if c.network == self.net.name => self.net.clone(),
                None => continue,
            };
            pod_network_done |= net.name == self.net.name && c.attachment.ifname == POD_IFNAME;
            let addresses: Vec<String> = c
                .result
                .ips_on(&c.attachment.ifname)
                .map(|ip| ip.address.clone())
                .collect();
            if let Err(e) = self
                .del_restoring(uid, &net, &c.attachment.ifname, &addresses)
                .await
            {
                first_err.get_or_insert(e);
            }
        }
        if !pod_network_done {
            // Idempotent: gives back what a half-done ADD of the pod network took.
            if let Err(e) = self.del_restoring(uid, &self.net, POD_IFNAME, &[]).await {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.remove_netns(uid)
    }

    fn remove_netns(&self, uid: &str) -> Result<(), PodNetworkError> {
        let ns = Self::netns_name(uid)?;
        if Path::new(NETNS_DIR).join(&ns).exists() {
            ip_cmd(&["netns", "del", &ns]).map_err(|message| PodNetworkError::Netns {
                name: ns.clone(),
                message,
            })?;
        }
        Ok(())
    }

    /// CNI `DEL` of one network, first putting `addresses` (CIDR form) back on its pod
    /// interface: the bridge binding moved the pod's address to the guest, and the bridge
    /// plugin finds what to undo (its masquerade rules) by the addresses on the interface.
    async fn del_restoring(
        &self,
        uid: &str,
        net: &NetworkConfigList,
        ifname: &str,
        addresses: &[String],
    ) -> Result<(), PodNetworkError> {
        // CNI_ARGS are not needed for DEL by the standard plugins.
        let at = Self::attachment(uid, "", "", ifname)?;
        let ns = Self::netns_name(uid)?;
        if at.netns.exists() {
            for a in addresses {
                let _ = ip_cmd(&["-n", &ns, "addr", "replace", a, "dev", ifname]);
            }
        }
        self.cni.del(net, &at).await?;
        Ok(())
    }

    /// The VMI uids this handler attached networks for (its CNI cache, which is per data
    /// directory: other servers on the machine keep theirs).
    pub fn attached(&self) -> Vec<String> {
        let mut uids: Vec<String> = self
            .cni
            .cached_attachments(None)
            .into_iter()
            .map(|c| c.attachment.container_id)
            .filter(|uid| check_uid(uid).is_ok())
            .collect();
        uids.sort();
        uids.dedup();
        uids
    }

    /// Owners of host-local leases that nobody will give back:
    /// - the namespace is gone: a namespace exists before its `ADD` takes a lease and goes
    ///   only after `DEL` gave it back, so the lease belongs to a server that died (or a
    ///   machine that rebooted);
    /// - the namespace is there, but no process is in it, the lease is older than
    ///   [`ABANDONED_AFTER`], and it is not one of this handler's (those are decided by their
    ///   VMI): a server that died with VMIs on it and whose data directory is gone (tests).
    ///   A namespace is empty for a moment only, between `ADD` and its launcher's start and
    ///   between a launcher's exit and the teardown.
    fn abandoned(&self, ours: &[String]) -> Vec<(String, String)> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.node.ipam_dir.join(&self.net.name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return vec![];
        };
        // The network namespaces processes are in, by inode.
        let in_use: std::collections::BTreeSet<u64> = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|p| std::fs::metadata(p.path().join("ns/net")).ok())
                    .map(|m| m.ino())
                    .collect()
            })
            .unwrap_or_default();
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                // Lease files are named by address; host-local's own files are not.
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
            })
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok()?;
                let owner = text.lines().next()?.trim().to_string();
                // The lease's address, with the pod CIDR's prefix, to put back before DEL.
                let prefix = self.node.cidr.split_once('/').map_or("32", |(_, p)| p);
                let address = format!("{}/{prefix}", e.file_name().to_str()?);
                let ns = Path::new(NETNS_DIR).join(Self::netns_name(&owner).ok()?);
                let Ok(meta) = std::fs::metadata(&ns) else {
                    return Some((owner, address));
                };
                let old = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > ABANDONED_AFTER);
                (old && !in_use.contains(&meta.ino()) && !ours.contains(&owner))
                    .then_some((owner, address))
            })
            .collect()
    }

    /// Tears down every pod network of ours whose VMI is not in `live`, and gives back
    /// leases nobody holds; returns the uids it removed. Errors are logged and the rest still
    /// collected.
    pub async fn collect_garbage(&self, live: &std::collections::BTreeSet<String>) -> Vec<String> {
        let ours = self.attached();
        for (uid, address) in self.abandoned(&ours) {
            // CNI DEL (without a namespace, the IPAM plugin still gives the address back).
            tracing::info!(%uid, %address, "removing an abandoned pod network");
            let removed = match self
                .del_restoring(&uid, &self.net, POD_IFNAME, &[address])
                .await
            {
                Ok(()) => self.remove_netns(&uid),
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                tracing::warn!(%uid, error = %e, "removing an abandoned pod network");
            }
        }
        let mut removed = Vec::new();
        for uid in ours {
            if live.contains(&uid) {
                continue;
            }
            match self.teardown(&uid).await {
                Ok(()) => removed.push(uid),
                Err(e) => tracing::warn!(%uid, error = %e, "removing a stale pod network"),
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_come_only_from_uuids() {
        assert_eq!(
            PodNetwork::netns_name("0b6f3c2e-1d7a-4c1e-9a53-5f2a4a0c9e11").unwrap(),
            "kvrs-0b6f3c2e-1d7a-4c1e-9a53-5f2a4a0c9e11"
        );
        for bad in ["", "../x", "a b", "x;rm", "g0", &"a".repeat(65)] {
            assert!(PodNetwork::netns_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn multus_configs_run_confined_to_the_node() {
        let n = NodeNetwork::new(NodeNetwork::DEFAULT_CIDR);
        let l = n
            .confine(
                "ns/blue",
                r#"{"cniVersion":"0.3.1","name":"blue","type":"bridge","bridge":"br-blue","ipam":{"type":"host-local","subnet":"192.168.50.0/24"}}"#,
            )
            .unwrap();
        assert_eq!(l.plugins[0]["ipam"]["dataDir"], "/run/kubevirt-rs/ipam");
        for (config, says) in [
            (
                r#"{"name":"x","type":"bridge","bridge":"kvrs0"}"#,
                "pod network bridge",
            ),
            (
                r#"{"name":"x","type":"host-device","device":"eth0"}"#,
                "not allowed",
            ),
            (
                r#"{"name":"x","type":"bridge","ipam":{"type":"host-local","dataDir":"/etc"}}"#,
                "dataDir",
            ),
        ] {
            let e = n.confine("ns/x", config).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("ns/x"), "{config}: {e}");
        }
    }

    #[test]
    fn the_pod_network_is_bridge_host_local_and_portmap() {
        let n = NodeNetwork::new(NodeNetwork::DEFAULT_CIDR);
        let l = n.conflist().unwrap();
        let types: Vec<_> = l
            .plugins
            .iter()
            .map(|p| p["type"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
        assert_eq!(
            l.plugins[0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.0.0/24"
        );
        assert_eq!(l.plugins[0]["ipam"]["dataDir"], "/run/kubevirt-rs/ipam");
    }
}

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
pub const POD_IFNAME: &str = "eth0";

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

    pub fn new(data_dir: &Path) -> NodeNetwork {
        NodeNetwork {
            cidr: Self::DEFAULT_CIDR.into(),
            bridge: Self::DEFAULT_BRIDGE.into(),
            ipam_dir: data_dir.join("cni").join("ipam"),
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
                    "hairpinMode": true,
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

/// What a VMI's pod network is once set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetworkStatus {
    /// The namespace's path, for the launcher to enter.
    pub netns: PathBuf,
    /// The pod's addresses (the first is `status.podIP`).
    pub ips: Vec<String>,
    pub mac: Option<String>,
    pub result: CniResult,
}

/// Sets up and tears down pod networks of VMIs on this node.
#[derive(Clone, Debug)]
pub struct PodNetwork {
    pub node: NodeNetwork,
    pub cni: Cni,
    net: NetworkConfigList,
}

fn ip(args: &[&str]) -> Result<(), String> {
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

    /// The namespace name of a VMI.
    pub fn netns_name(uid: &str) -> Result<String, PodNetworkError> {
        check_uid(uid)?;
        Ok(format!("{NETNS_PREFIX}{uid}"))
    }

    fn attachment(uid: &str, namespace: &str, name: &str) -> Result<Attachment, PodNetworkError> {
        let ns = Self::netns_name(uid)?;
        Ok(Attachment {
            container_id: uid.to_string(),
            netns: Path::new(NETNS_DIR).join(ns),
            ifname: POD_IFNAME.into(),
            args: vec![
                ("K8S_POD_NAMESPACE".into(), namespace.into()),
                ("K8S_POD_NAME".into(), name.into()),
                ("K8S_POD_UID".into(), uid.into()),
            ],
        })
    }

    /// Creates the VMI's namespace (if missing) and runs CNI `ADD` in it (unless an earlier
    /// `ADD` is cached). A failure leaves neither namespace nor address behind.
    pub async fn setup(
        &self,
        uid: &str,
        namespace: &str,
        name: &str,
    ) -> Result<PodNetworkStatus, PodNetworkError> {
        let at = Self::attachment(uid, namespace, name)?;
        let ns = Self::netns_name(uid)?;
        if !at.netns.exists() {
            ip(&["netns", "add", &ns]).map_err(|message| PodNetworkError::Netns {
                name: ns.clone(),
                message,
            })?;
        }
        let result = match self.cni.cached(&self.net, &at)? {
            Some(r) => r,
            None => match self.cni.add(&self.net, &at).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = ip(&["netns", "del", &ns]);
                    return Err(e.into());
                }
            },
        };
        Ok(PodNetworkStatus {
            ips: result.addresses_of(POD_IFNAME),
            mac: result.mac_of(POD_IFNAME).map(String::from),
            netns: at.netns,
            result,
        })
    }

    /// CNI `DEL` and the namespace removed; nothing to do is no error.
    pub async fn teardown(&self, uid: &str) -> Result<(), PodNetworkError> {
        // CNI_ARGS are not needed for DEL by the standard plugins.
        let at = Self::attachment(uid, "", "")?;
        let ns = Self::netns_name(uid)?;
        self.cni.del(&self.net, &at).await?;
        if at.netns.exists() {
            ip(&["netns", "del", &ns]).map_err(|message| PodNetworkError::Netns {
                name: ns.clone(),
                message,
            })?;
        }
        Ok(())
    }

    /// The VMI uids that have a namespace of ours on this node.
    pub fn existing() -> Vec<String> {
        std::fs::read_dir(NETNS_DIR)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix(NETNS_PREFIX))
                            .filter(|uid| check_uid(uid).is_ok())
                            .map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Tears down every pod network of ours whose VMI is not in `live`; returns the uids it
    /// removed. Errors are logged and the rest still collected.
    pub async fn collect_garbage(&self, live: &std::collections::BTreeSet<String>) -> Vec<String> {
        let mut removed = Vec::new();
        for uid in Self::existing() {
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
    fn the_pod_network_is_bridge_host_local_and_portmap() {
        let n = NodeNetwork::new(Path::new("/var/lib/kubevirt-rs"));
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
        assert_eq!(
            l.plugins[0]["ipam"]["dataDir"],
            "/var/lib/kubevirt-rs/cni/ipam"
        );
    }
}

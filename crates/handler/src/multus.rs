//! A VMI's networks as its namespace attaches them: the node's pod network on `eth0` (or a
//! Multus network marked `default: true` in its place), then each Multus secondary network
//! on `net1`, `net2`, ... in the order of `spec.networks`, as Multus attaches a launcher Pod's
//! networks. A Multus network's configuration is its NetworkAttachmentDefinition's, checked
//! and confined to the node ([`crate::podnet::NodeNetwork::confine`]). An SR-IOV network
//! (`"type": "sriov"`) is not attached: its virtual function (`deviceID`) is handed to the
//! launcher, which passes it through to the guest.

use crate::podnet::{Attach, NodeNetwork, PodNetwork};
use kube::{Api, Client, ResourceExt};
use kubevirt_api::multus::network_name;
use kubevirt_api::{NetworkAttachmentDefinition, VirtualMachineInstance};
use kubevirt_launcher::api::{PodInterface, SriovDevice};

/// What a VMI's networks need from the node.
#[derive(Debug)]
pub enum Networks {
    /// CNI attachments in the VMI's namespace, and SR-IOV virtual functions to pass through.
    Ready(Vec<Attach>, Vec<SriovDevice>),
    /// A NetworkAttachmentDefinition is not there (yet): KubeVirt's message, the VMI waits.
    Missing(String),
    /// A NetworkAttachmentDefinition this node will not run, and why.
    Refused(String),
}

/// Resolves the VMI's networks, reading its NetworkAttachmentDefinitions.
pub async fn resolve(
    client: &Client,
    vmi: &VirtualMachineInstance,
    node: &NodeNetwork,
) -> Result<Networks, kube::Error> {
    let vmi_ns = vmi.namespace().unwrap_or_else(|| "default".into());
    let networks = vmi.spec.networks.clone().unwrap_or_default();
    let mut attach = Vec::new();
    let mut sriov = Vec::new();
    let mut secondary = 0;
    let mut has_default = false;
    for net in &networks {
        if net.pod.is_some() {
            has_default = true;
            attach.insert(0, PodNetwork::default_attach(&net.name));
            continue;
        }
        let Some(m) = &net.multus else { continue };
        // A name no object can have is as missing as one that does not exist, and is never
        // requested.
        let Some((ns, name)) = network_name(&vmi_ns, &m.network_name) else {
            return Ok(Networks::Missing(format!(
                "failed to locate network attachment definition {}",
                m.network_name
            )));
        };
        let nad = format!("{ns}/{name}");
        let api: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), &ns);
        let found = match api.get_opt(&name).await {
            Ok(found) => found,
            // A name that cannot exist is as missing as one that does not.
            Err(kube::Error::Api(e)) if e.code == 400 || e.code == 404 => None,
            Err(e) => return Err(e),
        };
        let Some(found) = found else {
            return Ok(Networks::Missing(format!(
                "failed to locate network attachment definition {nad}"
            )));
        };
        let Some(config) = found
            .spec
            .config
            .as_deref()
            .filter(|c| !c.trim().is_empty())
        else {
            return Ok(Networks::Refused(format!(
                "network attachment definition {nad} has no spec.config"
            )));
        };
        if let Some(device) = kubevirt_api::multus::sriov_device(config) {
            // Not a CNI attachment here: the virtual function is passed through.
            match device {
                Ok(pci_address) => sriov.push(SriovDevice {
                    network: net.name.clone(),
                    pci_address,
                }),
                Err(why) => return Ok(Networks::Refused(format!("{nad}: {why}"))),
            }
            continue;
        }
        let config = match node.confine(&nad, config) {
            Ok(c) => c,
            Err(e) => return Ok(Networks::Refused(e.to_string())),
        };
        if m.default == Some(true) {
            has_default = true;
            attach.insert(
                0,
                Attach {
                    network: net.name.clone(),
                    ifname: PodInterface::name_for(None),
                    config: Some(config),
                },
            );
        } else {
            attach.push(Attach {
                network: net.name.clone(),
                ifname: PodInterface::name_for(Some(secondary)),
                config: Some(config),
            });
            secondary += 1;
        }
    }
    if !has_default {
        // A launcher Pod always has the pod network, even for a VMI without NICs on it.
        attach.insert(0, PodNetwork::default_attach(""));
    }
    Ok(Networks::Ready(attach, sriov))
}

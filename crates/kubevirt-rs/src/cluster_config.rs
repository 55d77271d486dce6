//! The cluster configuration, KubeVirt's way: the `KubeVirt` resource `kubevirt/kubevirt`.
//!
//! The single-node server creates it at first start with defaults that suit one machine
//! (emulation allowed, masquerade networking, the HostDisk gate on) and then watches it: a
//! `kubectl patch` or `kubectl edit` takes effect at once, without a restart.
//!
//! What each field does here:
//! - `developerConfiguration.useEmulation`: whether launchers may fall back to TCG (the next
//!   VMI started; the Node's `kubevirt.io/emulation` label follows at its next heartbeat).
//! - `developerConfiguration.featureGates`: validation (e.g. `HostDisk` allows hostDisk volumes).
//! - `network.defaultNetworkInterface`, `network.permitBridgeInterfaceOnPodNetwork`,
//!   `machineType` / `architectureConfiguration.amd64.machineType`: admission defaults and rules.
//! - `evictionStrategy`, `migrations`, `permittedHostDevices`: accepted and kept, reported in
//!   the log; a single node has no node to evict to or migrate to, and no device plugins.

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Client;
use kubevirt_api::admission::AdmitOptions;
use kubevirt_api::defaults::DefaultBinding;
use kubevirt_api::KubeVirt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const NAMESPACE: &str = "kubevirt";
pub const NAME: &str = "kubevirt";

/// The resource a fresh single-node server starts with.
pub fn single_node_default() -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "certificateRotateStrategy": {},
            "configuration": {
                "developerConfiguration": {
                    "useEmulation": true,
                    "featureGates": ["HostDisk"]
                },
                "network": {"defaultNetworkInterface": "masquerade"},
                "evictionStrategy": "None"
            },
            "imagePullPolicy": "IfNotPresent",
            "workloadUpdateStrategy": {}
        }
    })
}

/// The parts of `spec.configuration` that this process acts on.
#[derive(Clone, Debug, PartialEq)]
pub struct Effective {
    pub use_emulation: bool,
    pub feature_gates: Vec<String>,
    pub default_binding: DefaultBinding,
    pub permit_bridge_on_pod_network: bool,
    pub machine_type: Option<String>,
}

/// Reads the configuration; KubeVirt's defaults for what is absent.
pub fn effective(spec: &Value) -> Effective {
    let c = &spec["configuration"];
    let dev = &c["developerConfiguration"];
    let gates = dev["featureGates"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|g| g.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let binding = match c["network"]["defaultNetworkInterface"].as_str() {
        Some("masquerade") => DefaultBinding::Masquerade,
        _ => DefaultBinding::Bridge,
    };
    let machine_type = c["architectureConfiguration"]["amd64"]["machineType"]
        .as_str()
        .or(c["machineType"].as_str())
        .map(String::from);
    Effective {
        use_emulation: dev["useEmulation"].as_bool().unwrap_or(false),
        feature_gates: gates,
        default_binding: binding,
        permit_bridge_on_pod_network: c["network"]["permitBridgeInterfaceOnPodNetwork"]
            .as_bool()
            .unwrap_or(true),
        machine_type,
    }
}

/// Applies a configuration to admission and to the handler's emulation switch.
pub fn apply(e: &Effective, admission: &mut AdmitOptions, emulation: &AtomicBool) {
    admission.defaults.default_network_interface = e.default_binding;
    admission.defaults.machine_type = e.machine_type.clone();
    admission.validation.feature_gates = e.feature_gates.clone();
    admission.validation.permit_bridge_on_pod_network = e.permit_bridge_on_pod_network;
    emulation.store(e.use_emulation, Ordering::Relaxed);
}

/// Creates `kubevirt/kubevirt` unless it exists; returns its spec.
pub async fn ensure(client: &Client) -> anyhow::Result<Value> {
    let api: Api<KubeVirt> = Api::namespaced(client.clone(), NAMESPACE);
    let kv = match api.get_opt(NAME).await? {
        Some(kv) => kv,
        None => {
            let obj: KubeVirt = serde_json::from_value(single_node_default())?;
            match api.create(&PostParams::default(), &obj).await {
                Ok(kv) => {
                    tracing::info!("created the KubeVirt resource kubevirt/kubevirt");
                    kv
                }
                // Created by someone else in between.
                Err(kube::Error::Api(s)) if s.code == 409 => api.get(NAME).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let status = json!({"status": {
        "phase": "Deployed",
        "observedKubeVirtVersion": env!("CARGO_PKG_VERSION"),
        "targetKubeVirtVersion": env!("CARGO_PKG_VERSION"),
        "observedGeneration": kv.metadata.generation,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "AllComponentsReady",
             "message": "All components are ready."},
            {"type": "Progressing", "status": "False", "reason": "AllComponentsReady",
             "message": "All components are ready."},
            {"type": "Degraded", "status": "False", "reason": "AllComponentsReady",
             "message": "All components are ready."}
        ]
    }});
    if let Err(e) = api
        .patch_status(NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        tracing::warn!(error = %e, "could not write the KubeVirt resource's status");
    }
    Ok(serde_json::to_value(&kv.spec)?)
}

/// Follows `kubevirt/kubevirt` and applies every change. Deleting it keeps the last
/// configuration (KubeVirt would uninstall itself; a single-node server keeps running).
pub async fn watch(
    client: Client,
    admission: Arc<kubevirt_apiserver::ApiServer>,
    emulation: Arc<AtomicBool>,
) {
    use futures::StreamExt;
    let api: Api<KubeVirt> = Api::namespaced(client, NAMESPACE);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
    let mut last: Option<Effective> = None;
    let mut stream = std::pin::pin!(watcher(api, cfg));
    while let Some(ev) = stream.next().await {
        let kv = match ev {
            Ok(watcher::Event::Apply(kv)) | Ok(watcher::Event::InitApply(kv)) => kv,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "KubeVirt watch");
                continue;
            }
        };
        let spec = serde_json::to_value(&kv.spec).unwrap_or(Value::Null);
        let e = effective(&spec);
        if last.as_ref() == Some(&e) {
            continue;
        }
        apply(&e, &mut admission.admission.write(), &emulation);
        tracing::info!(
            use_emulation = e.use_emulation,
            feature_gates = ?e.feature_gates,
            default_network_interface = ?e.default_binding,
            eviction_strategy = spec["configuration"]["evictionStrategy"].as_str().unwrap_or("None"),
            "cluster configuration applied from kubevirt/kubevirt"
        );
        last = Some(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_single_node_default_allows_emulation_masquerade_and_host_disks() {
        let e = effective(&single_node_default()["spec"]);
        assert!(e.use_emulation);
        assert_eq!(e.feature_gates, vec!["HostDisk".to_string()]);
        assert_eq!(e.default_binding, DefaultBinding::Masquerade);
    }

    #[test]
    fn absent_fields_mean_kubevirts_defaults() {
        let e = effective(&json!({}));
        assert!(!e.use_emulation);
        assert!(e.feature_gates.is_empty());
        assert_eq!(e.default_binding, DefaultBinding::Bridge);
        assert!(e.permit_bridge_on_pod_network);
        let mut opts = AdmitOptions::default();
        let flag = AtomicBool::new(true);
        apply(&e, &mut opts, &flag);
        assert!(!flag.load(Ordering::Relaxed));
    }
}

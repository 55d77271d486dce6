//! The cluster configuration, KubeVirt's way: the `KubeVirt` resource `kubevirt/kubevirt`.
//!
//! The single-node server creates it at first start with defaults that suit one machine
//! (emulation allowed, masquerade networking, and, as KubeVirt, no feature gates) and then watches it: a
//! `kubectl patch` or `kubectl edit` takes effect at once, without a restart.
//!
//! What each field does here:
//! - `developerConfiguration.useEmulation`: whether launchers may fall back to TCG (the next
//!   VMI started; the Node's `kubevirt.io/emulation` label follows at its next heartbeat).
//! - `developerConfiguration.featureGates`: validation (e.g. `HostDisk` allows hostDisk volumes).
//! - `network.defaultNetworkInterface`, `network.permitBridgeInterfaceOnPodNetwork`,
//!   `machineType` / `architectureConfiguration.amd64.machineType`: admission defaults and rules.
//! - `evictionStrategy`: what a drain does to VMIs that set none (virt-api's eviction
//!   admitter); `migrations.parallelMigrationsPerCluster`/`parallelOutboundMigrationsPerNode`:
//!   the evacuation controller's limits.
//! - `permittedHostDevices`: accepted and kept, reported in the log; no device plugins.

use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use kube::Client;
use kubevirt_api::KubeVirt;
use kubevirt_runtime::cluster::ClusterConfig;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::watch;

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
                    "featureGates": []
                },
                "network": {"defaultNetworkInterface": "masquerade"},
                "evictionStrategy": "None"
            },
            "imagePullPolicy": "IfNotPresent",
            "workloadUpdateStrategy": {}
        }
    })
}

/// Publishes a configuration: admission follows it at once, and every other part reads it
/// from the channel when it next decides.
/// `admission` is `None` in a node process (`kubevirt-rs node`), which serves no API.
pub fn publish(
    c: &ClusterConfig,
    admission: Option<&kubevirt_apiserver::ApiServer>,
    tx: &watch::Sender<ClusterConfig>,
) {
    if let Some(a) = admission {
        c.apply_to(&mut a.admission.write());
    }
    tx.send_replace(c.clone());
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
    let status = json!({
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
    });
    if let Err(e) = kubevirt_runtime::status::write_status(&api, NAME, &status).await {
        tracing::warn!(error = %e, "could not write the KubeVirt resource's status");
    }
    Ok(serde_json::to_value(&kv.spec)?)
}

/// The configuration of `kubevirt/kubevirt` once it exists: a node (`kubevirt-rs node`)
/// follows the server's and never creates it.
pub async fn wait_for(client: &Client) -> anyhow::Result<ClusterConfig> {
    let api: Api<KubeVirt> = Api::namespaced(client.clone(), NAMESPACE);
    let mut said = false;
    loop {
        match api.get_opt(NAME).await {
            Ok(Some(kv)) => {
                let spec = serde_json::to_value(&kv.spec)?;
                return Ok(ClusterConfig::from_spec(&spec));
            }
            Ok(None) if !said => {
                eprintln!("kubevirt-rs node: waiting for the KubeVirt resource {NAMESPACE}/{NAME}");
                said = true;
            }
            Ok(None) => {}
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("reading the KubeVirt resource {NAMESPACE}/{NAME}")))
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// Follows `kubevirt/kubevirt` and applies every change. Deleting it keeps the last
/// configuration (KubeVirt would uninstall itself; a single-node server keeps running).
pub async fn watch(
    client: Client,
    admission: Option<Arc<kubevirt_apiserver::ApiServer>>,
    tx: watch::Sender<ClusterConfig>,
) {
    use futures::StreamExt;
    let api: Api<KubeVirt> = Api::namespaced(client, NAMESPACE);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
    let mut last: Option<ClusterConfig> = None;
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
        let e = ClusterConfig::from_spec(&spec);
        if last.as_ref() == Some(&e) {
            continue;
        }
        publish(&e, admission.as_deref(), &tx);
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
    use kubevirt_api::defaults::DefaultBinding;

    #[test]
    fn the_single_node_default_allows_emulation_and_masquerade_and_no_feature_gate() {
        let e = ClusterConfig::from_spec(&single_node_default()["spec"]);
        assert!(e.use_emulation);
        // As KubeVirt's default configuration: no gates, so no hostDisk volumes.
        assert!(e.feature_gates.is_empty(), "{:?}", e.feature_gates);
        assert_eq!(e.default_binding, DefaultBinding::Masquerade);
    }
}

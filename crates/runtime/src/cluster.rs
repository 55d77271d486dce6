//! The cluster configuration every component reads: the parts of the `KubeVirt` resource
//! (`kubevirt/kubevirt`, `spec.configuration`) that kubevirt-rs acts on, parsed once, and
//! handed to each part as a [`tokio::sync::watch`] channel. Whoever follows the resource sends
//! a new value; admission, virt-controller and virt-handler read the current one whenever they
//! decide, so a `kubectl patch kubevirt` reaches all of them without a restart.

use kubevirt_api::admission::AdmitOptions;
use kubevirt_api::defaults::{DefaultBinding, DefaultsConfig};
use kubevirt_api::status::EvictionStrategy;
use serde_json::Value;
use tokio::sync::watch;

/// What this process acts on from `spec.configuration`; KubeVirt's defaults for what is
/// absent (`ClusterConfig::default()` is an empty configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// `developerConfiguration.useEmulation`: launchers may fall back to TCG.
    pub use_emulation: bool,
    /// `developerConfiguration.featureGates`.
    pub feature_gates: Vec<String>,
    /// `network.defaultNetworkInterface` (KubeVirt's default: bridge).
    pub default_binding: DefaultBinding,
    /// `network.permitBridgeInterfaceOnPodNetwork` (default true).
    pub permit_bridge_on_pod_network: bool,
    /// `architectureConfiguration.amd64.machineType`, else `machineType`.
    pub machine_type: Option<String>,
    /// `vmRolloutStrategy` (KubeVirt v1.9's default: LiveUpdate).
    pub vm_rollout_strategy: RolloutStrategy,
    /// `liveUpdateConfiguration`: how far a VM can grow without a restart.
    pub live_update: LiveUpdateConfig,
    /// `evictionStrategy`: what evicting a launcher Pod does to a VMI that sets no
    /// `spec.evictionStrategy` (KubeVirt's default: None).
    pub eviction_strategy: Option<EvictionStrategy>,
    /// `migrations`: KubeVirt's `MigrationConfiguration`.
    pub migrations: MigrationConfig,
}

/// KubeVirt's `MigrationConfiguration`: the limits virt-controller applies, and the whole
/// object as written, from which the node agents take the options a migration runs with
/// (bandwidth, timeouts, post-copy, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct MigrationConfig {
    /// `parallelMigrationsPerCluster` (KubeVirt: 5): migrations past Pending at once.
    pub parallel_migrations_per_cluster: u32,
    /// `parallelOutboundMigrationsPerNode` (KubeVirt: 2): of those, leaving one node.
    pub parallel_outbound_migrations_per_node: u32,
    /// `spec.configuration.migrations` as written (`{}` when absent).
    pub raw: Value,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig::from_value(&Value::Null)
    }
}

/// KubeVirt's `ParallelMigrationsPerClusterDefault` and `ParallelOutboundMigrationsPerNodeDefault`.
pub const DEFAULT_PARALLEL_MIGRATIONS_PER_CLUSTER: u32 = 5;
pub const DEFAULT_PARALLEL_OUTBOUND_MIGRATIONS_PER_NODE: u32 = 2;

impl MigrationConfig {
    fn from_value(m: &Value) -> MigrationConfig {
        let limit = |key: &str, default: u32| {
            m[key]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        MigrationConfig {
            parallel_migrations_per_cluster: limit(
                "parallelMigrationsPerCluster",
                DEFAULT_PARALLEL_MIGRATIONS_PER_CLUSTER,
            ),
            parallel_outbound_migrations_per_node: limit(
                "parallelOutboundMigrationsPerNode",
                DEFAULT_PARALLEL_OUTBOUND_MIGRATIONS_PER_NODE,
            ),
            raw: if m.is_object() {
                m.clone()
            } else {
                Value::Object(Default::default())
            },
        }
    }
}

/// How changes to a running VM's template reach its VMI (KubeVirt's `VMRolloutStrategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutStrategy {
    /// CPU sockets, guest memory, node selector, affinity and tolerations apply to the
    /// running VMI; any other change sets the VM's RestartRequired condition.
    LiveUpdate,
    /// Every change waits for the next start (and sets RestartRequired).
    Stage,
}

/// KubeVirt's `LiveUpdateConfiguration`, with its defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveUpdateConfig {
    /// `maxHotplugRatio` (default 4): maxSockets = sockets × ratio, maxGuest = guest × ratio.
    pub max_hotplug_ratio: u32,
    /// `maxCpuSockets`: the cluster's maxSockets for VMs that set none.
    pub max_cpu_sockets: Option<u32>,
    /// `maxGuest` in bytes: the cluster's maxGuest for VMs that set none.
    pub max_guest: Option<u64>,
}

/// KubeVirt's `DefaultMaxHotplugRatio`.
pub const DEFAULT_MAX_HOTPLUG_RATIO: u32 = 4;

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig::from_spec(&Value::Null)
    }
}

/// The receiving end every component holds.
pub type ClusterConfigRx = watch::Receiver<ClusterConfig>;

impl ClusterConfig {
    /// Reads a `KubeVirt` resource's `spec`.
    pub fn from_spec(spec: &Value) -> ClusterConfig {
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
        let live = &c["liveUpdateConfiguration"];
        let live_update = LiveUpdateConfig {
            max_hotplug_ratio: live["maxHotplugRatio"]
                .as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .filter(|r| *r > 0)
                .unwrap_or(DEFAULT_MAX_HOTPLUG_RATIO),
            max_cpu_sockets: live["maxCpuSockets"]
                .as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .filter(|r| *r > 0),
            max_guest: live["maxGuest"]
                .as_str()
                .and_then(|q| kubevirt_api::quantity::Quantity::parse(q).ok())
                .and_then(|q| u64::try_from(q.value()).ok())
                .filter(|b| *b > 0),
        };
        let vm_rollout_strategy = match c["vmRolloutStrategy"].as_str() {
            Some("Stage") => RolloutStrategy::Stage,
            _ => RolloutStrategy::LiveUpdate,
        };
        ClusterConfig {
            eviction_strategy: c["evictionStrategy"]
                .as_str()
                .and_then(EvictionStrategy::parse),
            migrations: MigrationConfig::from_value(&c["migrations"]),
            vm_rollout_strategy,
            live_update,
            use_emulation: dev["useEmulation"].as_bool().unwrap_or(false),
            feature_gates: gates,
            default_binding: binding,
            permit_bridge_on_pod_network: c["network"]["permitBridgeInterfaceOnPodNetwork"]
                .as_bool()
                .unwrap_or(true),
            machine_type,
        }
    }

    /// The defaults a VMI gets under this configuration.
    pub fn defaults(&self) -> DefaultsConfig {
        DefaultsConfig {
            default_network_interface: self.default_binding,
            machine_type: self.machine_type.clone(),
            ..DefaultsConfig::default()
        }
    }

    /// Makes admission follow this configuration.
    pub fn apply_to(&self, admission: &mut AdmitOptions) {
        admission.defaults = self.defaults();
        admission.validation.feature_gates = self.feature_gates.clone();
        admission.validation.permit_bridge_on_pod_network = self.permit_bridge_on_pod_network;
    }

    /// A channel that never changes, for a component run on its own (tests, tools). Its
    /// sender is gone, so `borrow()` reads this value forever and `changed()` says so.
    pub fn fixed(self) -> ClusterConfigRx {
        watch::channel(self).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn absent_fields_mean_kubevirts_defaults() {
        let c = ClusterConfig::default();
        assert!(!c.use_emulation);
        assert!(c.feature_gates.is_empty());
        assert_eq!(c.default_binding, DefaultBinding::Bridge);
        assert!(c.permit_bridge_on_pod_network);
        assert_eq!(c.machine_type, None);
        // KubeVirt v1.9: LiveUpdate by default, maxHotplugRatio 4.
        assert_eq!(c.vm_rollout_strategy, RolloutStrategy::LiveUpdate);
        assert_eq!(c.live_update.max_hotplug_ratio, 4);
        assert_eq!(c.live_update.max_cpu_sockets, None);
        assert_eq!(c.live_update.max_guest, None);
    }

    #[test]
    fn eviction_strategy_is_read() {
        assert_eq!(ClusterConfig::default().eviction_strategy, None);
        let c = ClusterConfig::from_spec(
            &json!({"configuration": {"evictionStrategy": "LiveMigrate"}}),
        );
        assert_eq!(c.eviction_strategy, Some(EvictionStrategy::LiveMigrate));
        // Nonsense is KubeVirt's default, not a strategy of its own.
        let c =
            ClusterConfig::from_spec(&json!({"configuration": {"evictionStrategy": "Sometimes"}}));
        assert_eq!(c.eviction_strategy, None);
    }

    #[test]
    fn rollout_strategy_and_live_update_limits_are_read() {
        let c = ClusterConfig::from_spec(&json!({"configuration": {
            "vmRolloutStrategy": "Stage",
            "liveUpdateConfiguration": {"maxHotplugRatio": 2, "maxCpuSockets": 8, "maxGuest": "8Gi"}}}));
        assert_eq!(c.vm_rollout_strategy, RolloutStrategy::Stage);
        assert_eq!(c.live_update.max_hotplug_ratio, 2);
        assert_eq!(c.live_update.max_cpu_sockets, Some(8));
        assert_eq!(c.live_update.max_guest, Some(8 << 30));
        // Nonsense falls back to the defaults rather than disabling anything.
        let c = ClusterConfig::from_spec(&json!({"configuration": {
            "vmRolloutStrategy": "Sometimes",
            "liveUpdateConfiguration": {"maxHotplugRatio": 0, "maxGuest": "lots"}}}));
        assert_eq!(c.vm_rollout_strategy, RolloutStrategy::LiveUpdate);
        assert_eq!(c.live_update.max_hotplug_ratio, 4);
        assert_eq!(c.live_update.max_guest, None);
    }

    #[test]
    fn fields_are_read_and_reach_admission() {
        let c = ClusterConfig::from_spec(&json!({"configuration": {
            "developerConfiguration": {"useEmulation": true, "featureGates": ["HostDisk"]},
            "network": {"defaultNetworkInterface": "masquerade",
                        "permitBridgeInterfaceOnPodNetwork": false},
            "architectureConfiguration": {"amd64": {"machineType": "q35"}}}}));
        assert!(c.use_emulation);
        assert_eq!(c.default_binding, DefaultBinding::Masquerade);
        let mut a = AdmitOptions::default();
        c.apply_to(&mut a);
        assert_eq!(a.validation.feature_gates, vec!["HostDisk".to_string()]);
        assert!(!a.validation.permit_bridge_on_pod_network);
        assert_eq!(a.defaults.machine_type.as_deref(), Some("q35"));
        assert_eq!(
            a.defaults.default_network_interface,
            DefaultBinding::Masquerade
        );
    }

    #[test]
    fn migration_limits_default_to_kubevirts_and_nonsense_is_ignored() {
        let c = ClusterConfig::default();
        assert_eq!(c.migrations.parallel_migrations_per_cluster, 5);
        assert_eq!(c.migrations.parallel_outbound_migrations_per_node, 2);
        assert_eq!(c.migrations.raw, serde_json::json!({}));
        let c = ClusterConfig::from_spec(&serde_json::json!({"configuration": {"migrations": {
            "parallelMigrationsPerCluster": 1, "parallelOutboundMigrationsPerNode": 0,
            "bandwidthPerMigration": "64Mi"}}}));
        assert_eq!(c.migrations.parallel_migrations_per_cluster, 1);
        // 0, negative or a string would stop every migration: KubeVirt's default instead.
        assert_eq!(c.migrations.parallel_outbound_migrations_per_node, 2);
        assert_eq!(c.migrations.raw["bandwidthPerMigration"], "64Mi");
        let c = ClusterConfig::from_spec(&serde_json::json!({"configuration": {"migrations": {
            "parallelMigrationsPerCluster": -3, "parallelOutboundMigrationsPerNode": "9"}}}));
        assert_eq!(c.migrations.parallel_migrations_per_cluster, 5);
        assert_eq!(c.migrations.parallel_outbound_migrations_per_node, 2);
    }

    #[test]
    fn a_receiver_sees_each_new_value() {
        let (tx, rx) = watch::channel(ClusterConfig::default());
        tx.send_replace(ClusterConfig {
            default_binding: DefaultBinding::Masquerade,
            ..ClusterConfig::default()
        });
        assert_eq!(rx.borrow().default_binding, DefaultBinding::Masquerade);
        assert_eq!(
            ClusterConfig::default().fixed().borrow().default_binding,
            DefaultBinding::Bridge
        );
    }
}

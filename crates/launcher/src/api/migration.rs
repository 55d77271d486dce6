//! Live migration's part of the launcher protocol: the options a `migrate` carries (typed after
//! KubeVirt's `MigrationConfiguration`), the status both launchers report, and the reasons.
//!
//! The target address is never a string from a VMI spec: the node agent (handler) gives an
//! `IP:port` it chose, and it travels as a [`SocketAddr`], so nothing but an address and a port
//! can reach QEMU's migration URI.

use kubevirt_api::quantity::Quantity;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::SocketAddr;

/// KubeVirt's defaults (`MigrationConfiguration`): 150 s per GiB of guest memory to complete,
/// 150 s without progress before the migration is considered stuck.
pub const DEFAULT_COMPLETION_TIMEOUT_PER_GIB: u64 = 150;
pub const DEFAULT_PROGRESS_TIMEOUT: u64 = 150;
/// QEMU refuses a `downtime-limit` above 2000 s (KubeVirt's `maxDowntimeMs` maximum).
pub const MAX_DOWNTIME_MS: u64 = 2_000_000;

/// The reasons a launcher reports for migration outcomes (`State::reason`).
pub mod reason {
    /// The source after the guest moved away (Succeeded), the target once the guest runs
    /// there (Running): libvirt's `SHUTOFF_MIGRATED` and `RUNNING_MIGRATED`.
    pub const MIGRATED: &str = "Migrated";
    /// A target launcher whose QEMU waits for an incoming migration.
    pub const WAITING_FOR_MIGRATION: &str = "WaitingForMigration";
    /// A target whose incoming migration failed (its QEMU exits).
    pub const MIGRATION_FAILED: &str = "MigrationFailed";
}

/// KubeVirt's failure reasons (`status.migrationState.failureReason`).
pub mod failure {
    /// What KubeVirt reports for a migration cancelled on request (libvirt's "canceled by
    /// client").
    pub const ABORTED: &str = "Live migration has been aborted";
}

/// How a migration runs: `migrate` and `prepareMigrationTarget` take the same options (the
/// target needs the multifd and post-copy choices before it listens). Field names are
/// KubeVirt's `MigrationConfiguration`'s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrationOptions {
    /// Bytes per second (a Kubernetes quantity, e.g. `64Mi`, or an integer); `0` or absent:
    /// no limit, as in KubeVirt.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_bandwidth",
        deserialize_with = "de_bandwidth"
    )]
    pub bandwidth_per_migration: Option<u64>,
    /// QEMU's `auto-converge`: throttle the guest's vCPUs when it dirties memory faster than
    /// it can be sent.
    #[serde(default)]
    pub allow_auto_converge: bool,
    /// Start in pre-copy and switch to post-copy when the completion timeout is reached
    /// (with `allowWorkloadDisruption`, which defaults to this value).
    #[serde(default)]
    pub allow_post_copy: bool,
    /// At the completion timeout, switch to post-copy (if allowed) or pause the guest instead
    /// of cancelling. KubeVirt defaults it to `allowPostCopy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_workload_disruption: Option<bool>,
    /// QEMU's `multifd` with this many channels (1..=255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_migration_threads: Option<u32>,
    /// Seconds per GiB of guest memory (rounded up to whole GB, as KubeVirt does) before the
    /// migration is cancelled (or assisted, see `allowWorkloadDisruption`); 0: never.
    #[serde(
        default,
        rename = "completionTimeoutPerGiB",
        skip_serializing_if = "Option::is_none"
    )]
    pub completion_timeout_per_gib: Option<u64>,
    /// Seconds without the remaining data shrinking before the migration is cancelled; 0:
    /// never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_timeout: Option<u64>,
    /// The longest pause at switch-over QEMU may plan for, in milliseconds (1..=2000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_downtime_ms: Option<u64>,
}

fn ser_bandwidth<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_str(&b.to_string()),
        None => s.serialize_none(),
    }
}

fn de_bandwidth<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Text(String),
    }
    let q = match Raw::deserialize(d)? {
        Raw::Int(i) => Quantity::from_value(i128::from(i)),
        Raw::Text(t) => Quantity::parse(&t).map_err(D::Error::custom)?,
    };
    if q.is_negative() {
        return Err(D::Error::custom(format!(
            "bandwidthPerMigration {q} is negative"
        )));
    }
    u64::try_from(q.value())
        .map(Some)
        .map_err(|_| D::Error::custom(format!("bandwidthPerMigration {q} is too large")))
}

/// A value of [`MigrationOptions`] QEMU cannot take, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MigrationOptionsError {
    #[error("params.options.parallelMigrationThreads: {0} is not in 1..=255")]
    Threads(u32),
    #[error("params.options.maxDowntimeMs: {0} is not in 1..={MAX_DOWNTIME_MS}")]
    Downtime(u64),
    #[error("params.options.progressTimeout: {0} seconds is more than a year")]
    ProgressTimeout(u64),
    #[error("params.options.completionTimeoutPerGiB: {0} seconds is more than a year")]
    CompletionTimeout(u64),
}

const YEAR_SECONDS: u64 = 365 * 24 * 3600;

impl MigrationOptions {
    /// Refuse what QEMU would refuse (or misread) before anything is sent to it.
    pub fn validate(&self) -> Result<(), MigrationOptionsError> {
        if let Some(t) = self.parallel_migration_threads {
            if !(1..=255).contains(&t) {
                return Err(MigrationOptionsError::Threads(t));
            }
        }
        if let Some(d) = self.max_downtime_ms {
            if !(1..=MAX_DOWNTIME_MS).contains(&d) {
                return Err(MigrationOptionsError::Downtime(d));
            }
        }
        if let Some(p) = self.progress_timeout.filter(|p| *p > YEAR_SECONDS) {
            return Err(MigrationOptionsError::ProgressTimeout(p));
        }
        if let Some(c) = self
            .completion_timeout_per_gib
            .filter(|c| *c > YEAR_SECONDS)
        {
            return Err(MigrationOptionsError::CompletionTimeout(c));
        }
        Ok(())
    }

    /// The fields of KubeVirt's `MigrationConfiguration` these options mirror.
    pub const FIELDS: [&'static str; 8] = [
        "bandwidthPerMigration",
        "allowAutoConverge",
        "allowPostCopy",
        "allowWorkloadDisruption",
        "parallelMigrationThreads",
        "completionTimeoutPerGiB",
        "progressTimeout",
        "maxDowntimeMs",
    ];

    /// The options of a KubeVirt `MigrationConfiguration` (the cluster's
    /// `spec.configuration.migrations`, which virt-controller copies to the VMI's
    /// `status.migrationState.migrationConfiguration`): the [`Self::FIELDS`] it sets, the
    /// rest (limits, network, TLS, ...) left to whoever reads them. Validated.
    pub fn from_configuration(c: &serde_json::Value) -> Result<MigrationOptions, String> {
        let mut picked = serde_json::Map::new();
        for f in Self::FIELDS {
            if let Some(v) = c.get(f).filter(|v| !v.is_null()) {
                picked.insert(f.into(), v.clone());
            }
        }
        let o: MigrationOptions = serde_json::from_value(serde_json::Value::Object(picked))
            .map_err(|e| format!("migrationConfiguration: {e}"))?;
        o.validate().map_err(|e| e.to_string())?;
        Ok(o)
    }

    pub fn progress_timeout(&self) -> u64 {
        self.progress_timeout.unwrap_or(DEFAULT_PROGRESS_TIMEOUT)
    }

    pub fn completion_timeout_per_gib(&self) -> u64 {
        self.completion_timeout_per_gib
            .unwrap_or(DEFAULT_COMPLETION_TIMEOUT_PER_GIB)
    }

    pub fn allow_workload_disruption(&self) -> bool {
        self.allow_workload_disruption
            .unwrap_or(self.allow_post_copy)
    }

    /// KubeVirt's acceptable completion time: `completionTimeoutPerGiB` × the guest memory in
    /// GB, rounded up (`Quantity.ScaledValue(Giga)`: decimal GB, despite the name).
    pub fn acceptable_completion_seconds(&self, guest_memory_bytes: u64) -> u64 {
        let gb = guest_memory_bytes.div_ceil(1_000_000_000);
        self.completion_timeout_per_gib().saturating_mul(gb)
    }
}

/// Which end of a migration a launcher is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationRole {
    Source,
    Target,
}

/// KubeVirt's `MigrationMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationMode {
    #[default]
    PreCopy,
    PostCopy,
    /// The guest was paused so the migration could complete (`allowWorkloadDisruption`
    /// without post-copy).
    Paused,
}

/// KubeVirt's `MigrationAbortStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortStatus {
    Aborting,
    Succeeded,
    Failed,
}

/// A migration as one launcher sees it (`state.migration`, the `migrationStatus` reply and
/// the `Migration` event), shaped after KubeVirt's `VirtualMachineInstanceMigrationState`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    pub role: MigrationRole,
    /// Source: where the guest goes. Target: where it listens (the real port when 0 was
    /// asked for); `None` until `prepareMigrationTarget`.
    pub address: Option<SocketAddr>,
    /// QEMU's own word (`query-migrate`): none, setup, active, postcopy-active, completed,
    /// failed, cancelling, cancelled, ...
    pub qemu_status: String,
    pub mode: MigrationMode,
    pub completed: bool,
    pub failed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_status: Option<AbortStatus>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failure_reason: String,
    /// Guest memory bytes sent (source) so far, still to send, and in all.
    pub transferred_bytes: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
    pub start_timestamp: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_timestamp: Option<f64>,
    /// Block migration of the VMI's local disks (none: nothing is copied). Target: where its
    /// NBD server listens, to be given to the source's `migrate` as `blockTarget`. Source:
    /// the `blockTarget` it copies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_address: Option<SocketAddr>,
    /// The disks copied, by name (each is also its NBD export's name at the target).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_exports: Vec<String>,
    /// Source: disk bytes copied so far and in all (QEMU's mirror jobs; the total grows while
    /// the guest writes). All copied (`blockReady`) before guest memory is sent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub block_transferred_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub block_total_bytes: u64,
    /// Source: every disk is in step with the target (each mirror job is ready); from then on
    /// the guest's writes reach both.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block_ready: bool,
    /// Source, once completed: how long the guest was stopped at switch-over, in
    /// milliseconds (QEMU's `query-migrate` `downtime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Source, once completed: QEMU's `total-time`, from `migrate` to completion, in
    /// milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_time_ms: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl MigrationStatus {
    pub fn new(role: MigrationRole, address: Option<SocketAddr>, now: f64) -> MigrationStatus {
        MigrationStatus {
            role,
            address,
            qemu_status: "none".into(),
            mode: MigrationMode::PreCopy,
            completed: false,
            failed: false,
            abort_status: None,
            failure_reason: String::new(),
            transferred_bytes: 0,
            remaining_bytes: 0,
            total_bytes: 0,
            start_timestamp: now,
            end_timestamp: None,
            block_address: None,
            block_exports: Vec::new(),
            block_transferred_bytes: 0,
            block_total_bytes: 0,
            block_ready: false,
            downtime_ms: None,
            total_time_ms: None,
        }
    }

    /// Neither completed nor failed.
    pub fn in_progress(&self) -> bool {
        !self.completed && !self.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_come_from_kubevirts_migration_configuration() {
        let o = MigrationOptions::from_configuration(&json!({
            "bandwidthPerMigration": "64Mi", "allowAutoConverge": true,
            "parallelMigrationsPerCluster": 5, "network": "migration-net", "disableTLS": false,
            "progressTimeout": 20, "completionTimeoutPerGiB": null}))
        .unwrap();
        assert_eq!(o.bandwidth_per_migration, Some(64 << 20));
        assert!(o.allow_auto_converge);
        assert_eq!(o.progress_timeout, Some(20));
        assert_eq!(o.completion_timeout_per_gib, None);
        assert_eq!(
            MigrationOptions::from_configuration(&json!(null)).unwrap(),
            MigrationOptions::default()
        );
        // What QEMU could not take is refused with the field's name.
        let e = MigrationOptions::from_configuration(&json!({"parallelMigrationThreads": 0}))
            .unwrap_err();
        assert!(e.contains("parallelMigrationThreads"), "{e}");
        let e = MigrationOptions::from_configuration(&json!({"bandwidthPerMigration": "-1"}))
            .unwrap_err();
        assert!(e.contains("negative"), "{e}");
        let e = MigrationOptions::from_configuration(&json!({"allowPostCopy": "yes"})).unwrap_err();
        assert!(e.contains("migrationConfiguration"), "{e}");
    }

    #[test]
    fn options_take_kubevirts_names_and_quantities() {
        let o: MigrationOptions = serde_json::from_value(json!({
            "bandwidthPerMigration": "64Mi",
            "allowAutoConverge": true,
            "allowPostCopy": true,
            "parallelMigrationThreads": 4,
            "completionTimeoutPerGiB": 800,
            "progressTimeout": 30,
        }))
        .unwrap();
        assert_eq!(o.bandwidth_per_migration, Some(64 << 20));
        assert!(o.allow_auto_converge && o.allow_post_copy && o.allow_workload_disruption());
        assert_eq!(o.parallel_migration_threads, Some(4));
        assert_eq!(o.progress_timeout(), 30);
        o.validate().unwrap();
        // Round trip (the bandwidth as a plain number of bytes).
        let back: MigrationOptions =
            serde_json::from_value(serde_json::to_value(&o).unwrap()).unwrap();
        assert_eq!(back, o);
        let d = MigrationOptions::default();
        assert_eq!(
            (d.progress_timeout(), d.completion_timeout_per_gib()),
            (150, 150)
        );
        assert_eq!(
            serde_json::from_value::<MigrationOptions>(json!({"bandwidthPerMigration": 1048576}))
                .unwrap()
                .bandwidth_per_migration,
            Some(1 << 20)
        );
    }

    /// KubeVirt: 256Mi of guest memory is 1 GB rounded up, so the default allows 150 s.
    #[test]
    fn acceptable_completion_time_rounds_up_to_whole_gb() {
        let d = MigrationOptions::default();
        assert_eq!(d.acceptable_completion_seconds(256 << 20), 150);
        assert_eq!(d.acceptable_completion_seconds(2 << 30), 450);
        assert_eq!(d.acceptable_completion_seconds(0), 0);
        let never = MigrationOptions {
            completion_timeout_per_gib: Some(0),
            ..Default::default()
        };
        assert_eq!(never.acceptable_completion_seconds(8 << 30), 0);
    }

    #[test]
    fn hostile_option_values_are_refused_naming_the_field() {
        for (v, needle) in [
            (json!({"bandwidthPerMigration": "-1Mi"}), "negative"),
            (json!({"bandwidthPerMigration": -5}), "negative"),
            (
                json!({"bandwidthPerMigration": "lots"}),
                "quantities must match",
            ),
            (json!({"bandwidthPerMigration": "100Ei"}), "too large"),
            (json!({"progressTimeout": -1}), "invalid value"),
            (json!({"completionTimeoutPerGiB": 1.5}), "invalid type"),
            (json!({"parallelMigrationThreads": -2}), "invalid value"),
            (json!({"migrateTo": "10.0.0.1"}), "unknown field"),
        ] {
            let e = serde_json::from_value::<MigrationOptions>(v.clone()).unwrap_err();
            assert!(e.to_string().contains(needle), "{v}: {e}");
        }
        for (o, field) in [
            (
                MigrationOptions {
                    parallel_migration_threads: Some(0),
                    ..Default::default()
                },
                "parallelMigrationThreads",
            ),
            (
                MigrationOptions {
                    parallel_migration_threads: Some(256),
                    ..Default::default()
                },
                "parallelMigrationThreads",
            ),
            (
                MigrationOptions {
                    max_downtime_ms: Some(0),
                    ..Default::default()
                },
                "maxDowntimeMs",
            ),
            (
                MigrationOptions {
                    max_downtime_ms: Some(MAX_DOWNTIME_MS + 1),
                    ..Default::default()
                },
                "maxDowntimeMs",
            ),
            (
                MigrationOptions {
                    progress_timeout: Some(u64::MAX),
                    ..Default::default()
                },
                "progressTimeout",
            ),
        ] {
            let e = o.validate().unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
        // Zero bandwidth is KubeVirt's "no limit", not an error.
        let zero: MigrationOptions =
            serde_json::from_value(json!({"bandwidthPerMigration": "0"})).unwrap();
        assert_eq!(zero.bandwidth_per_migration, Some(0));
        zero.validate().unwrap();
    }
}

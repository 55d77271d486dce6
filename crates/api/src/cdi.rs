//! CDI's DataVolume status. CDI's own API package is not part of KubeVirt's OpenAPI document,
//! so these few types are written by hand from CDI's `datavolume_types.go`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// DataVolume phases CDI reports.
pub mod phase {
    pub const PENDING: &str = "Pending";
    pub const PVC_BOUND: &str = "PVCBound";
    pub const IMPORT_SCHEDULED: &str = "ImportScheduled";
    pub const IMPORT_IN_PROGRESS: &str = "ImportInProgress";
    pub const CLONE_SCHEDULED: &str = "CloneScheduled";
    pub const CLONE_IN_PROGRESS: &str = "CloneInProgress";
    pub const UPLOAD_SCHEDULED: &str = "UploadScheduled";
    pub const UPLOAD_READY: &str = "UploadReady";
    pub const WAIT_FOR_FIRST_CONSUMER: &str = "WaitForFirstConsumer";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    pub const UNKNOWN: &str = "Unknown";
}

/// `status` of a `cdi.kubevirt.io/v1beta1` DataVolume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeStatus {
    /// Name of the PersistentVolumeClaim holding the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// Current phase (Pending, ImportInProgress, Succeeded, Failed...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Transfer progress as a percentage string such as "45.34%", or "N/A".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// How many times the transfer has been restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<DataVolumeCondition>>,
}

/// A DataVolume condition (types Bound, Running, Ready).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeCondition {
    pub r#type: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heart_beat_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `spec` of CDI's cluster-wide `CDIConfig` (`cdi.kubevirt.io/v1beta1`, one object named
/// `config`), the fields of CDI's `CDIConfigSpec` a single node uses.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema, kube::CustomResource,
)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "CDIConfig",
    plural = "cdiconfigs",
    status = "CDIConfigStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "CDIConfig (cdi.kubevirt.io/v1beta1): CDI's cluster-wide configuration, object `config`."
)]
#[serde(rename_all = "camelCase")]
pub struct CDIConfigSpec {
    /// Overrides the upload proxy URL reported in `status.uploadProxyURL`.
    #[serde(
        rename = "uploadProxyURLOverride",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub upload_proxy_url_override: Option<String>,
    /// Registries (`host:port`) reached over plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_registries: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_space_storage_class: Option<String>,
    /// Fraction of a Filesystem volume reserved for the filesystem (CDI's default 0.055).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem_overhead: Option<FilesystemOverhead>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preallocation: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_gates: Option<Vec<String>>,
    #[serde(
        rename = "dataVolumeTTLSeconds",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub data_volume_ttl_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_verbosity: Option<i32>,
}

/// CDI's `FilesystemOverhead`: a global fraction and per-StorageClass ones, as decimal strings
/// (`"0.055"`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemOverhead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<std::collections::BTreeMap<String, String>>,
}

/// `spec` of CDI's `StorageProfile` (`cdi.kubevirt.io/v1beta1`, cluster-scoped, one per
/// StorageClass, named after it): the user's overrides of what CDI found out about the class.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema, kube::CustomResource,
)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "StorageProfile",
    plural = "storageprofiles",
    status = "StorageProfileStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "StorageProfile (cdi.kubevirt.io/v1beta1): how CDI provisions volumes of one StorageClass."
)]
#[serde(rename_all = "camelCase")]
pub struct StorageProfileSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_property_sets: Option<Vec<ClaimPropertySet>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_import_cron_source_format: Option<String>,
}

/// Access modes and volume mode a claim of the class can have.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimPropertySet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_modes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageProfileStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_property_sets: Option<Vec<ClaimPropertySet>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_import_cron_source_format: Option<String>,
}

/// `status` of `CDIConfig`: what CDI resolved from the spec and the installation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CDIConfigStatus {
    /// Where `virtctl image-upload` sends data.
    #[serde(
        rename = "uploadProxyURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub upload_proxy_url: Option<String>,
    #[serde(
        rename = "uploadProxyCAConfigMap",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub upload_proxy_ca_config_map: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_space_storage_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem_overhead: Option<FilesystemOverhead>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preallocation: Option<bool>,
}

//! The CSI snapshot API of kubernetes-csi/external-snapshotter (`snapshot.storage.k8s.io/v1`):
//! VolumeSnapshot (namespaced: "snapshot this claim"), VolumeSnapshotContent (cluster-scoped:
//! the snapshot on the storage, `status.snapshotHandle`) and VolumeSnapshotClass (which driver
//! takes snapshots, and what happens to them when the VolumeSnapshot goes).
//!
//! The one definition every crate uses: the API server serves them as CRDs, the local
//! snapshotter (`kubevirt-cdi-controller`) fulfils them, virt-controller's VM snapshot and
//! restore controllers create and read them. Field names, printer columns and short names are
//! external-snapshotter's (`client/config/crd/snapshot.storage.k8s.io_*.yaml`), with its rules
//! checked at admission ([`validate_volume_snapshot`], [`validate_volume_snapshot_content`]).

// `printcolumn(type_ = "string", ...)` repeated across columns reads as a duplicated
// attribute to clippy; it is kube's derive syntax.
#![allow(clippy::duplicated_attributes)]

use crate::field::{FieldError, Path};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "snapshot.storage.k8s.io";
/// The annotation that marks the default VolumeSnapshotClass of a driver.
pub const DEFAULT_SNAPSHOT_CLASS_ANNOTATION: &str =
    "snapshot.storage.kubernetes.io/is-default-class";
/// The VolumeSnapshotClass the API server creates at first start for the local-path driver.
pub const LOCAL_PATH_SNAPSHOT_CLASS: &str = "local-path-snapclass";
/// `deletionPolicy` values.
pub const DELETION_POLICY_DELETE: &str = "Delete";
pub const DELETION_POLICY_RETAIN: &str = "Retain";
/// The finalizers external-snapshotter puts on the objects it binds
/// (`pkg/utils/util.go`): a VolumeSnapshot is not removed while its content is bound, nor a
/// content while its VolumeSnapshot exists.
pub const VOLUME_SNAPSHOT_BOUND_FINALIZER: &str =
    "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection";
pub const VOLUME_SNAPSHOT_AS_SOURCE_FINALIZER: &str =
    "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection";
pub const VOLUME_SNAPSHOT_CONTENT_FINALIZER: &str =
    "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection";

/// The name external-snapshotter gives the dynamic content of a VolumeSnapshot
/// (`snapcontent-<volumesnapshot uid>`, `pkg/utils/util.go` `GetDynamicSnapshotContentNameForSnapshot`).
pub fn dynamic_content_name(volume_snapshot_uid: &str) -> String {
    format!("snapcontent-{volume_snapshot_uid}")
}

/// `spec` of a VolumeSnapshot.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshot",
    plural = "volumesnapshots",
    singular = "volumesnapshot",
    namespaced,
    status = "VolumeSnapshotStatus",
    shortname = "vs",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(
        name = "ReadyToUse",
        type_ = "boolean",
        json_path = ".status.readyToUse"
    ),
    printcolumn(
        name = "SourcePVC",
        type_ = "string",
        json_path = ".spec.source.persistentVolumeClaimName"
    ),
    printcolumn(
        name = "SourceSnapshotContent",
        type_ = "string",
        json_path = ".spec.source.volumeSnapshotContentName"
    ),
    printcolumn(
        name = "RestoreSize",
        type_ = "string",
        json_path = ".status.restoreSize"
    ),
    printcolumn(
        name = "SnapshotClass",
        type_ = "string",
        json_path = ".spec.volumeSnapshotClassName"
    ),
    printcolumn(
        name = "SnapshotContent",
        type_ = "string",
        json_path = ".status.boundVolumeSnapshotContentName"
    ),
    printcolumn(
        name = "CreationTime",
        type_ = "date",
        json_path = ".status.creationTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "VolumeSnapshot (snapshot.storage.k8s.io/v1): a user's request for a snapshot of a PersistentVolumeClaim."
)]
pub struct VolumeSnapshotSpec {
    /// Where the snapshot is taken from (a claim in the VolumeSnapshot's namespace) or which
    /// existing content it stands for. Exactly one of the two.
    pub source: VolumeSnapshotSource,
    /// The VolumeSnapshotClass; absent means the driver's default class.
    #[serde(
        rename = "volumeSnapshotClassName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub volume_snapshot_class_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeSnapshotSource {
    /// A PersistentVolumeClaim in the VolumeSnapshot's own namespace (there is no namespace
    /// field: a snapshot never reaches into another namespace).
    #[serde(
        rename = "persistentVolumeClaimName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub persistent_volume_claim_name: Option<String>,
    /// A pre-existing VolumeSnapshotContent.
    #[serde(
        rename = "volumeSnapshotContentName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub volume_snapshot_content_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeSnapshotStatus {
    #[serde(
        rename = "boundVolumeSnapshotContentName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub bound_volume_snapshot_content_name: Option<String>,
    /// When the storage took the snapshot.
    #[serde(
        rename = "creationTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub creation_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
    #[serde(
        rename = "readyToUse",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ready_to_use: Option<bool>,
    /// The minimum size of a volume restored from it (a quantity).
    #[serde(
        rename = "restoreSize",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub restore_size: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    #[serde(
        rename = "volumeGroupSnapshotName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub volume_group_snapshot_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeSnapshotError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// `spec` of a VolumeSnapshotContent.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshotContent",
    plural = "volumesnapshotcontents",
    singular = "volumesnapshotcontent",
    status = "VolumeSnapshotContentStatus",
    shortname = "vsc",
    shortname = "vscs",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(
        name = "ReadyToUse",
        type_ = "boolean",
        json_path = ".status.readyToUse"
    ),
    printcolumn(
        name = "RestoreSize",
        type_ = "integer",
        json_path = ".status.restoreSize"
    ),
    printcolumn(
        name = "DeletionPolicy",
        type_ = "string",
        json_path = ".spec.deletionPolicy"
    ),
    printcolumn(name = "Driver", type_ = "string", json_path = ".spec.driver"),
    printcolumn(
        name = "VolumeSnapshotClass",
        type_ = "string",
        json_path = ".spec.volumeSnapshotClassName"
    ),
    printcolumn(
        name = "VolumeSnapshot",
        type_ = "string",
        json_path = ".spec.volumeSnapshotRef.name"
    ),
    printcolumn(
        name = "VolumeSnapshotNamespace",
        type_ = "string",
        json_path = ".spec.volumeSnapshotRef.namespace"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "VolumeSnapshotContent (snapshot.storage.k8s.io/v1): a snapshot taken by the storage."
)]
pub struct VolumeSnapshotContentSpec {
    /// `Delete` or `Retain`: whether the snapshot on the storage goes with this object.
    #[serde(rename = "deletionPolicy", default)]
    pub deletion_policy: String,
    /// The CSI driver that took (or will take) the snapshot.
    #[serde(default)]
    pub driver: String,
    pub source: VolumeSnapshotContentSource,
    #[serde(
        rename = "sourceVolumeMode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub source_volume_mode: Option<String>,
    #[serde(
        rename = "volumeSnapshotClassName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub volume_snapshot_class_name: Option<String>,
    /// The VolumeSnapshot this content is bound to (`name`, `namespace`, `uid`).
    #[serde(rename = "volumeSnapshotRef", default)]
    pub volume_snapshot_ref: ObjectReference,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeSnapshotContentSource {
    /// An existing snapshot on the storage (pre-provisioned content).
    #[serde(
        rename = "snapshotHandle",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub snapshot_handle: Option<String>,
    /// The volume to snapshot (dynamic content).
    #[serde(
        rename = "volumeHandle",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub volume_handle: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeSnapshotContentStatus {
    /// Nanoseconds since the epoch (external-snapshotter's int64, not a date string).
    #[serde(
        rename = "creationTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub creation_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
    #[serde(
        rename = "readyToUse",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ready_to_use: Option<bool>,
    /// Bytes.
    #[serde(
        rename = "restoreSize",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub restore_size: Option<i64>,
    #[serde(
        rename = "snapshotHandle",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub snapshot_handle: Option<String>,
    #[serde(
        rename = "volumeGroupSnapshotHandle",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub volume_group_snapshot_handle: Option<String>,
}

/// A VolumeSnapshotClass: no `spec`, its fields sit beside `metadata` as in
/// external-snapshotter.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshotClass",
    plural = "volumesnapshotclasses",
    singular = "volumesnapshotclass",
    no_spec,
    shortname = "vsclass",
    shortname = "vsclasses",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Driver", type_ = "string", json_path = ".driver"),
    printcolumn(
        name = "DeletionPolicy",
        type_ = "string",
        json_path = ".deletionPolicy"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "VolumeSnapshotClass (snapshot.storage.k8s.io/v1): which driver takes snapshots, and what their deletion does."
)]
pub struct VolumeSnapshotClassFields {
    #[serde(default)]
    pub driver: String,
    #[serde(rename = "deletionPolicy", default)]
    pub deletion_policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<std::collections::BTreeMap<String, String>>,
}

fn deletion_policy(f: &Path, p: &str) -> Vec<FieldError> {
    if p == DELETION_POLICY_DELETE || p == DELETION_POLICY_RETAIN {
        Vec::new()
    } else {
        vec![FieldError::not_supported(
            f.as_str(),
            format!(
                "Unsupported value: {}: supported values: \"Delete\", \"Retain\"",
                crate::names::go_quote(p)
            ),
        )]
    }
}

fn object_name(f: &Path, name: &str) -> Vec<FieldError> {
    crate::names::dns1123_subdomain_problems(name)
        .into_iter()
        .map(|m| FieldError::invalid(f.as_str(), m))
        .collect()
}

/// external-snapshotter's rules for a VolumeSnapshot: exactly one source, and names that are
/// names (a claim name reaches the snapshotter, which looks it up in this namespace only).
pub fn validate_volume_snapshot(vs: &VolumeSnapshot) -> Vec<FieldError> {
    let src = Path::root("spec").child("source");
    let mut errs = Vec::new();
    match (
        &vs.spec.source.persistent_volume_claim_name,
        &vs.spec.source.volume_snapshot_content_name,
    ) {
        (Some(p), None) => errs.extend(object_name(&src.child("persistentVolumeClaimName"), p)),
        (None, Some(c)) => errs.extend(object_name(&src.child("volumeSnapshotContentName"), c)),
        _ => errs.push(FieldError::invalid(
            src.as_str(),
            "exactly one of volumeSnapshotContentName and persistentVolumeClaimName must be set",
        )),
    }
    if let Some(c) = &vs.spec.volume_snapshot_class_name {
        errs.extend(object_name(
            &Path::root("spec").child("volumeSnapshotClassName"),
            c,
        ));
    }
    errs
}

/// external-snapshotter's rules for a VolumeSnapshotContent: a deletion policy, a driver, a
/// bound VolumeSnapshot named with its namespace, exactly one source.
pub fn validate_volume_snapshot_content(c: &VolumeSnapshotContent) -> Vec<FieldError> {
    let spec = Path::root("spec");
    let mut errs = deletion_policy(&spec.child("deletionPolicy"), &c.spec.deletion_policy);
    if c.spec.driver.is_empty() {
        errs.push(FieldError::required(
            spec.child("driver").as_str(),
            "Required value",
        ));
    }
    let r = &c.spec.volume_snapshot_ref;
    let rf = spec.child("volumeSnapshotRef");
    match (&r.name, &r.namespace) {
        (Some(n), Some(ns)) => {
            errs.extend(object_name(&rf.child("name"), n));
            errs.extend(
                crate::names::dns1123_label_problems(ns)
                    .into_iter()
                    .map(|m| FieldError::invalid(rf.child("namespace").as_str(), m)),
            );
        }
        _ => errs.push(FieldError::required(
            rf.as_str(),
            "both spec.volumeSnapshotRef.name and spec.volumeSnapshotRef.namespace must be set",
        )),
    }
    if c.spec.source.snapshot_handle.is_some() == c.spec.source.volume_handle.is_some() {
        errs.push(FieldError::invalid(
            spec.child("source").as_str(),
            "exactly one of snapshotHandle and volumeHandle must be set",
        ));
    }
    errs
}

/// A VolumeSnapshotClass needs a driver and a deletion policy.
pub fn validate_volume_snapshot_class(c: &VolumeSnapshotClass) -> Vec<FieldError> {
    let mut errs = deletion_policy(&Path::root("deletionPolicy"), &c.spec.deletion_policy);
    if c.spec.driver.is_empty() {
        errs.push(FieldError::required("driver", "Required value"));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crds_are_external_snapshotters() {
        let vs = VolumeSnapshot::crd();
        assert_eq!(
            vs.metadata.name.as_deref(),
            Some("volumesnapshots.snapshot.storage.k8s.io")
        );
        assert_eq!(vs.spec.scope, "Namespaced");
        assert_eq!(VolumeSnapshotContent::crd().spec.scope, "Cluster");
        let class = serde_json::to_value(VolumeSnapshotClass::crd()).unwrap();
        let props = &class["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        assert!(props.get("driver").is_some(), "{props}");
        assert!(props.get("spec").is_none(), "{props}");
    }

    #[test]
    fn a_snapshot_needs_exactly_one_source_that_is_a_name() {
        let mut vs = VolumeSnapshot::new("s", VolumeSnapshotSpec::default());
        assert_eq!(validate_volume_snapshot(&vs).len(), 1);
        vs.spec.source.persistent_volume_claim_name = Some("../etc".into());
        let errs = validate_volume_snapshot(&vs);
        assert!(
            errs.iter()
                .any(|e| e.field == "spec.source.persistentVolumeClaimName"),
            "{errs:?}"
        );
        vs.spec.source.persistent_volume_claim_name = Some("disk".into());
        assert!(validate_volume_snapshot(&vs).is_empty());
        vs.spec.source.volume_snapshot_content_name = Some("c".into());
        assert_eq!(validate_volume_snapshot(&vs).len(), 1);
    }

    #[test]
    fn content_rules() {
        let mut c = VolumeSnapshotContent::new("c", VolumeSnapshotContentSpec::default());
        let errs = validate_volume_snapshot_content(&c);
        assert_eq!(errs.len(), 4, "{errs:?}");
        c.spec.deletion_policy = "Delete".into();
        c.spec.driver = "d".into();
        c.spec.volume_snapshot_ref.name = Some("s".into());
        c.spec.volume_snapshot_ref.namespace = Some("default".into());
        c.spec.source.snapshot_handle = Some("h".into());
        assert!(validate_volume_snapshot_content(&c).is_empty());
    }
}

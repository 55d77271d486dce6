//! The resources the server serves, with what discovery, OpenAPI, Table output and the
//! write path need to know about each: names, scope, subresources, printer columns, schema.

use kubevirt_api::admission::{kinds, KindInfo};
use schemars::JsonSchema;
use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    pub ty: String,
    pub json_path: String,
    pub priority: i32,
    pub description: String,
}

/// How a kind's writes are admitted.
pub enum Admission {
    /// One of the kinds the project knows: typed decoding, defaults and validation.
    Builtin(&'static KindInfo),
    /// A user's CRD: its structural schema (pruning, defaults, validation, CEL rules).
    Schema(std::sync::Arc<crate::structural::StructuralSchema>),
}

/// JSON paths (`.spec.replicas`) of a CRD's `scale` subresource.
#[derive(Clone, Debug)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status_subresource: bool,
    /// A custom resource in a real cluster: generation starts at 1, strategic merge patch is
    /// refused with 415, PUT requires a resourceVersion.
    pub custom: bool,
    pub columns: Vec<Column>,
    /// How writes are decoded, defaulted and validated.
    pub admission: Admission,
    /// Fields besides `metadata.name`/`metadata.namespace` that field selectors accept.
    pub selectable: Vec<String>,
    /// The `scale` subresource of a user CRD.
    pub scale: Option<ScalePaths>,
    /// Objects may be stored under another served version of the same CRD: responses
    /// rewrite `apiVersion` (conversion strategy `None`).
    pub multi_version: bool,
    /// OpenAPI v3 schema of the whole object, serialized (parsed only to build /openapi/v3).
    pub schema_json: bytes::Bytes,
    /// Named schemas the schema refers to (`#/components/schemas/...`), serialized.
    pub components_json: bytes::Bytes,
    /// How this kind's lists merge, for server-side apply.
    pub lists: crate::managed::ListIndex,
    /// The CRD, serialized, for the kinds that are custom resources in a cluster.
    pub crd_json: Option<bytes::Bytes>,
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `resource.group` as kube-apiserver names it in messages (`virtualmachines.kubevirt.io`).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

pub struct Registry {
    /// The built-in kinds first, then the served versions of the user's CRDs.
    pub resources: Vec<std::sync::Arc<ResourceDef>>,
    /// OpenAPI documents by group-version path, serialized, built on first use.
    pub openapi: std::sync::OnceLock<std::collections::HashMap<String, bytes::Bytes>>,
    /// The OpenAPI v2 document (JSON and protobuf), built on first use.
    pub openapi_v2: std::sync::OnceLock<crate::openapi_v2::Served>,
}

fn col(name: &str, ty: &str, path: &str, priority: i32) -> Column {
    Column {
        name: name.into(),
        ty: ty.into(),
        json_path: path.into(),
        priority,
        description: String::new(),
    }
}

/// Built-in table columns of the core kinds we serve (kube-apiserver's printers, simplified).
fn core_columns(kind: &str) -> Vec<Column> {
    match kind {
        "Namespace" => vec![col("Status", "string", ".status.phase", 0)],
        // kubectl's pod printer without Ready and Restarts (no containers run here); `-o wide`
        // shows the node.
        "Pod" => vec![
            col("Status", "string", ".status.phase", 0),
            col("IP", "string", ".status.podIP", 1),
            col("Node", "string", ".spec.nodeName", 1),
        ],
        "ConfigMap" => vec![col("Data", "string", ".data", 0)],
        "Secret" => vec![col("Type", "string", ".type", 0)],
        "PersistentVolumeClaim" => vec![
            col("Status", "string", ".status.phase", 0),
            col("Volume", "string", ".spec.volumeName", 0),
            col("Capacity", "string", ".status.capacity.storage", 0),
            col("Access Modes", "string", ".status.accessModes", 0),
            col("StorageClass", "string", ".spec.storageClassName", 0),
            col("VolumeMode", "string", ".spec.volumeMode", 1),
        ],
        "PersistentVolume" => vec![
            col("Capacity", "string", ".spec.capacity.storage", 0),
            col("Access Modes", "string", ".spec.accessModes", 0),
            col(
                "Reclaim Policy",
                "string",
                ".spec.persistentVolumeReclaimPolicy",
                0,
            ),
            col("Status", "string", ".status.phase", 0),
            col("Claim", "string", ".spec.claimRef.name", 0),
            col("StorageClass", "string", ".spec.storageClassName", 0),
        ],
        "Node" => vec![
            col(
                "Status",
                "string",
                ".status.conditions[?(@.type=='Ready')].status",
                0,
            ),
            col("Version", "string", ".status.nodeInfo.kubeletVersion", 0),
        ],
        "Event" => vec![
            col("Type", "string", ".type", 0),
            col("Reason", "string", ".reason", 0),
            col("Object", "string", ".involvedObject.name", 0),
            col("Message", "string", ".message", 0),
        ],
        "Service" => vec![
            col("Type", "string", ".spec.type", 0),
            col("Cluster-IP", "string", ".spec.clusterIP", 0),
            col("Ports", "string", ".spec.ports[*].port", 0),
        ],
        "Lease" => vec![col("Holder", "string", ".spec.holderIdentity", 0)],
        // kube-apiserver prints `ip:port` pairs; the addresses and ports, separately, here.
        "Endpoints" => vec![
            col("Endpoints", "string", ".subsets[*].addresses[*].ip", 0),
            col("Ports", "string", ".subsets[*].ports[*].port", 0),
        ],
        "EndpointSlice" => vec![
            col("AddressType", "string", ".addressType", 0),
            col("Ports", "string", ".ports[*].port", 0),
            col("Endpoints", "string", ".endpoints[*].addresses[*]", 0),
        ],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            col("Role", "string", ".roleRef.name", 0),
            col("Users", "string", ".subjects[?(@.kind==\"User\")].name", 1),
            col(
                "Groups",
                "string",
                ".subjects[?(@.kind==\"Group\")].name",
                1,
            ),
        ],
        "StorageClass" => vec![
            col("Provisioner", "string", ".provisioner", 0),
            col("ReclaimPolicy", "string", ".reclaimPolicy", 0),
            col("VolumeBindingMode", "string", ".volumeBindingMode", 0),
            col(
                "AllowVolumeExpansion",
                "boolean",
                ".allowVolumeExpansion",
                0,
            ),
        ],
        _ => Vec::new(),
    }
}

fn core_short_names(kind: &str) -> Vec<String> {
    let s: &[&str] = match kind {
        "Namespace" => &["ns"],
        "Pod" => &["po"],
        "ConfigMap" => &["cm"],
        "PersistentVolumeClaim" => &["pvc"],
        "PersistentVolume" => &["pv"],
        "Node" => &["no"],
        "Event" => &["ev"],
        "Service" => &["svc"],
        "Endpoints" => &["ep"],
        "StorageClass" => &["sc"],
        "ServiceAccount" => &["sa"],
        "CustomResourceDefinition" => &["crd", "crds"],
        _ => &[],
    };
    s.iter().map(|x| x.to_string()).collect()
}

/// The OpenAPI v3 schema of a k8s-openapi type, with its referenced definitions.
pub(crate) fn core_schema<T: JsonSchema>() -> (Value, serde_json::Map<String, Value>) {
    let settings = schemars::generate::SchemaSettings::openapi3();
    let mut generator = settings.into_generator();
    let root = generator.root_schema_for::<T>();
    let mut root = serde_json::to_value(root).unwrap_or(Value::Null);
    let defs = generator.take_definitions(true);
    if let Some(m) = root.as_object_mut() {
        m.remove("$schema");
        m.remove("components");
        m.remove("definitions");
        m.remove("$defs");
    }
    (root, defs)
}

/// The OpenAPI schema of a CRD version's objects: its `openAPIV3Schema`, with `metadata`
/// as a reference to ObjectMeta (so `kubectl explain x.metadata` shows it).
pub fn crd_openapi_schema(schema: &Value) -> (Value, serde_json::Map<String, Value>) {
    let mut s = schema.clone();
    let (meta, mut defs) =
        core_schema::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
    defs.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into(),
        meta,
    );
    if s.is_object() {
        s["properties"]["metadata"] =
            json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"});
    }
    (s, defs)
}

fn schema_for(
    kind: &KindInfo,
    crd: Option<&k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>,
) -> (Value, serde_json::Map<String, Value>) {
    use k8s_openapi::api::{coordination, core::v1 as core, events};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    if let Some(crd) = crd {
        let s = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        return crd_openapi_schema(&s);
    }
    match (kind.group, kind.kind) {
        ("", "Namespace") => core_schema::<core::Namespace>(),
        ("", "ConfigMap") => core_schema::<core::ConfigMap>(),
        ("", "Secret") => core_schema::<core::Secret>(),
        ("", "PersistentVolumeClaim") => core_schema::<core::PersistentVolumeClaim>(),
        ("", "PersistentVolume") => core_schema::<core::PersistentVolume>(),
        ("", "Node") => core_schema::<core::Node>(),
        ("", "Pod") => core_schema::<core::Pod>(),
        ("", "Service") => core_schema::<core::Service>(),
        ("", "ServiceAccount") => core_schema::<core::ServiceAccount>(),
        ("", "Endpoints") => core_schema::<core::Endpoints>(),
        ("discovery.k8s.io", "EndpointSlice") => {
            core_schema::<k8s_openapi::api::discovery::v1::EndpointSlice>()
        }
        ("rbac.authorization.k8s.io", "Role") => core_schema::<k8s_openapi::api::rbac::v1::Role>(),
        ("rbac.authorization.k8s.io", "ClusterRole") => {
            core_schema::<k8s_openapi::api::rbac::v1::ClusterRole>()
        }
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            core_schema::<k8s_openapi::api::rbac::v1::RoleBinding>()
        }
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            core_schema::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>()
        }
        ("storage.k8s.io", "StorageClass") => {
            core_schema::<k8s_openapi::api::storage::v1::StorageClass>()
        }
        ("", "Event") => core_schema::<core::Event>(),
        ("events.k8s.io", "Event") => core_schema::<events::v1::Event>(),
        ("coordination.k8s.io", "Lease") => core_schema::<coordination::v1::Lease>(),
        (_, "CustomResourceDefinition") => core_schema::<ext::CustomResourceDefinition>(),
        _ => (
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            Default::default(),
        ),
    }
}

impl Registry {
    pub fn new() -> Registry {
        let crds = kubevirt_api::crd::crds();
        let mut resources = Vec::new();
        for k in kinds() {
            let crd = crds
                .iter()
                .find(|c| c.spec.names.kind == k.kind && c.spec.group == k.group);
            let (schema, components) = schema_for(k, crd);
            let lists = crate::managed::ListIndex::build(&schema, &components);
            let schema_json = bytes::Bytes::from(serde_json::to_vec(&schema).unwrap_or_default());
            let components_json =
                bytes::Bytes::from(serde_json::to_vec(&components).unwrap_or_default());
            let crd_json = crd
                .and_then(|c| serde_json::to_vec(c).ok())
                .map(bytes::Bytes::from);
            let def = match crd {
                Some(c) => {
                    let v = &c.spec.versions[0];
                    ResourceDef {
                        group: k.group.into(),
                        version: k.version.into(),
                        kind: k.kind.into(),
                        plural: k.plural.into(),
                        singular: c
                            .spec
                            .names
                            .singular
                            .clone()
                            .unwrap_or_else(|| k.kind.to_lowercase()),
                        namespaced: k.namespaced,
                        short_names: c.spec.names.short_names.clone().unwrap_or_default(),
                        categories: c.spec.names.categories.clone().unwrap_or_default(),
                        status_subresource: kubevirt_api::crd::has_status_subresource(c),
                        custom: true,
                        columns: v
                            .additional_printer_columns
                            .iter()
                            .flatten()
                            .map(|c| Column {
                                name: c.name.clone(),
                                ty: c.type_.clone(),
                                json_path: c.json_path.clone(),
                                priority: c.priority.unwrap_or(0),
                                description: c.description.clone().unwrap_or_default(),
                            })
                            .collect(),
                        admission: Admission::Builtin(k),
                        selectable: Vec::new(),
                        scale: None,
                        multi_version: false,
                        schema_json,
                        components_json,
                        lists,
                        crd_json,
                    }
                }
                None => ResourceDef {
                    group: k.group.into(),
                    version: k.version.into(),
                    kind: k.kind.into(),
                    plural: k.plural.into(),
                    singular: k.kind.to_lowercase(),
                    namespaced: k.namespaced,
                    short_names: core_short_names(k.kind),
                    categories: Vec::new(),
                    status_subresource: matches!(
                        k.kind,
                        "Namespace"
                            | "Pod"
                            | "PersistentVolumeClaim"
                            | "PersistentVolume"
                            | "Node"
                            | "Service"
                            | "CustomResourceDefinition"
                    ),
                    custom: false,
                    columns: core_columns(k.kind),
                    admission: Admission::Builtin(k),
                    selectable: crate::selector::selectable_fields(k.group, k.plural)
                        .iter()
                        .map(|f| f.to_string())
                        .collect(),
                    scale: None,
                    multi_version: false,
                    schema_json,
                    components_json,
                    lists,
                    crd_json,
                },
            };
            resources.push(std::sync::Arc::new(def));
        }
        Registry {
            resources,
            openapi: std::sync::OnceLock::new(),
            openapi_v2: std::sync::OnceLock::new(),
        }
    }

    /// The built-in kinds and the served versions of `crds` (user CRDs as stored; those of
    /// built-in kinds, and those whose names are not accepted, are skipped).
    pub fn with_crds(&self, crds: &[crate::crd::ServedCrd]) -> Registry {
        let mut resources: Vec<_> = self
            .resources
            .iter()
            .filter(|r| matches!(r.admission, Admission::Builtin(_)))
            .cloned()
            .collect();
        for c in crds {
            resources.extend(c.defs.iter().cloned());
        }
        Registry {
            resources,
            openapi: std::sync::OnceLock::new(),
            openapi_v2: std::sync::OnceLock::new(),
        }
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceDef> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .map(|r| &**r)
    }

    /// A resource by group and plural, in any served version.
    pub fn find_any_version(&self, group: &str, plural: &str) -> Option<&ResourceDef> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.plural == plural)
            .map(|r| &**r)
    }

    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceDef> {
        self.resources
            .iter()
            .find(|r| r.kind == kind && r.api_version() == api_version)
            .map(|r| &**r)
    }

    /// Group names in the order discovery lists them (core first, then ours).
    pub fn groups(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for r in &self.resources {
            if r.group.is_empty() {
                continue;
            }
            if !out.iter().any(|(g, v)| g == &r.group && v == &r.version) {
                out.push((r.group.clone(), r.version.clone()));
            }
        }
        out
    }
}

impl Registry {
    /// Each group with its versions, the preferred one first.
    pub fn group_versions(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for (g, v) in self.groups() {
            match out.iter_mut().find(|(og, _)| *og == g) {
                Some((_, vs)) => vs.push(v),
                None => out.push((g, vec![v])),
            }
        }
        for (_, vs) in &mut out {
            vs.sort_by(|a, b| version_order(a, b));
        }
        out
    }
}

/// kube-apiserver's version priority: GA before beta before alpha, higher numbers first,
/// then versions that do not look like Kubernetes versions, alphabetically.
pub fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn key(v: &str) -> (u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, String) {
        let parse = || -> Option<(u8, u64, u64)> {
            let rest = v.strip_prefix('v')?;
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let major: u64 = rest[..digits].parse().ok()?;
            let tail = &rest[digits..];
            if tail.is_empty() {
                return Some((0, major, 0));
            }
            let (tier, n) = if let Some(n) = tail.strip_prefix("beta") {
                (1, n)
            } else if let Some(n) = tail.strip_prefix("alpha") {
                (2, n)
            } else {
                return None;
            };
            Some((tier, major, n.parse().ok()?))
        };
        match parse() {
            Some((tier, major, minor)) => (
                tier,
                std::cmp::Reverse(major),
                std::cmp::Reverse(minor),
                String::new(),
            ),
            None => (3, std::cmp::Reverse(0), std::cmp::Reverse(0), v.to_string()),
        }
    }
    key(a).cmp(&key(b))
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

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
    pub kind_info: &'static KindInfo,
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
    pub resources: Vec<ResourceDef>,
    /// OpenAPI documents by group-version path, serialized, built on first use.
    pub openapi: std::sync::OnceLock<std::collections::HashMap<String, bytes::Bytes>>,
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
        ],
        "Lease" => vec![col("Holder", "string", ".spec.holderIdentity", 0)],
        _ => Vec::new(),
    }
}

fn core_short_names(kind: &str) -> Vec<String> {
    let s: &[&str] = match kind {
        "Namespace" => &["ns"],
        "ConfigMap" => &["cm"],
        "PersistentVolumeClaim" => &["pvc"],
        "PersistentVolume" => &["pv"],
        "Node" => &["no"],
        "Event" => &["ev"],
        "Service" => &["svc"],
        "CustomResourceDefinition" => &["crd", "crds"],
        _ => &[],
    };
    s.iter().map(|x| x.to_string()).collect()
}

/// The OpenAPI v3 schema of a k8s-openapi type, with its referenced definitions.
fn core_schema<T: JsonSchema>() -> (Value, serde_json::Map<String, Value>) {
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

fn schema_for(
    kind: &KindInfo,
    crd: Option<&k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>,
) -> (Value, serde_json::Map<String, Value>) {
    use k8s_openapi::api::{coordination, core::v1 as core, events};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    if let Some(crd) = crd {
        let mut s = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        // metadata as a reference, so `kubectl explain vm.metadata` shows ObjectMeta.
        let (meta, mut defs) =
            core_schema::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
        defs.insert(
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into(),
            meta,
        );
        s["properties"]["metadata"] =
            json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"});
        return (s, defs);
    }
    match (kind.group, kind.kind) {
        ("", "Namespace") => core_schema::<core::Namespace>(),
        ("", "ConfigMap") => core_schema::<core::ConfigMap>(),
        ("", "Secret") => core_schema::<core::Secret>(),
        ("", "PersistentVolumeClaim") => core_schema::<core::PersistentVolumeClaim>(),
        ("", "PersistentVolume") => core_schema::<core::PersistentVolume>(),
        ("", "Node") => core_schema::<core::Node>(),
        ("", "Service") => core_schema::<core::Service>(),
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
                        kind_info: k,
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
                            | "PersistentVolumeClaim"
                            | "PersistentVolume"
                            | "Node"
                            | "Service"
                            | "CustomResourceDefinition"
                    ),
                    custom: false,
                    columns: core_columns(k.kind),
                    kind_info: k,
                    schema_json,
                    components_json,
                    lists,
                    crd_json,
                },
            };
            resources.push(def);
        }
        Registry {
            resources,
            openapi: std::sync::OnceLock::new(),
        }
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceDef> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceDef> {
        self.resources
            .iter()
            .find(|r| r.kind == kind && r.api_version() == api_version)
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

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

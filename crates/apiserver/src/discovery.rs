//! Discovery (`/api`, `/apis`, `/apis/<group>/<version>`) and OpenAPI v3 documents, the way
//! kubectl 1.27–1.33 and kube-rs read them.

use crate::registry::{Registry, ResourceDef};
use serde_json::{json, Map, Value};
use std::hash::{Hash, Hasher};

/// The Kubernetes version we report. kubectl's dispatcher picks its binary by it.
pub const KUBE_MINOR: &str = "32";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0+kubevirt-rs.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": "linux/amd64"
    })
}

/// A resource served by an aggregated API group: (resource[/subresource], kind, verbs).
pub type AggregatedResource = (&'static str, &'static str, &'static [&'static str]);

/// API groups served by a handler the control plane plugs in (KubeVirt's virt-api and CDI's
/// cdi-apiserver are aggregated API servers in a cluster): (group, version, resources).
pub const AGGREGATED: &[(&str, &str, &[AggregatedResource])] = &[
    ("subresources.kubevirt.io", "v1", SUBRESOURCES),
    ("upload.cdi.kubevirt.io", "v1beta1", UPLOAD),
];

/// Create-only, cluster-scoped resources the server answers itself without storing them
/// (see `http::review`): the access reviews `kubectl auth can-i` sends.
pub const REVIEWS: &[(&str, &str, &[AggregatedResource])] = &[
    (
        "authorization.k8s.io",
        "v1",
        &[
            (
                "selfsubjectaccessreviews",
                "SelfSubjectAccessReview",
                &["create"],
            ),
            (
                "selfsubjectrulesreviews",
                "SelfSubjectRulesReview",
                &["create"],
            ),
            ("subjectaccessreviews", "SubjectAccessReview", &["create"]),
        ],
    ),
    (
        "authentication.k8s.io",
        "v1",
        &[("tokenreviews", "TokenReview", &["create"])],
    ),
];

/// CDI's upload API group: a token request authorises one upload to one PVC.
pub const UPLOAD: &[AggregatedResource] =
    &[("uploadtokenrequests", "UploadTokenRequest", &["create"])];

/// The KubeVirt subresource API group (`subresources.kubevirt.io/v1`), as KubeVirt's virt-api
/// registers it.
pub const SUBRESOURCES: &[AggregatedResource] = &[
    (
        "virtualmachineinstances/console",
        "VirtualMachineInstance",
        &["get"],
    ),
    (
        "virtualmachineinstances/vnc",
        "VirtualMachineInstance",
        &["get"],
    ),
    (
        "virtualmachineinstances/pause",
        "VirtualMachineInstance",
        &["update"],
    ),
    (
        "virtualmachineinstances/unpause",
        "VirtualMachineInstance",
        &["update"],
    ),
    (
        "virtualmachineinstances/softreboot",
        "VirtualMachineInstance",
        &["update"],
    ),
    (
        "virtualmachineinstances/freeze",
        "VirtualMachineInstance",
        &["update"],
    ),
    (
        "virtualmachineinstances/unfreeze",
        "VirtualMachineInstance",
        &["update"],
    ),
    (
        "virtualmachineinstances/savememory",
        "VirtualMachineInstance",
        &["update"],
    ),
    (
        "virtualmachineinstances/resumememory",
        "VirtualMachineInstance",
        &["update"],
    ),
    (
        "virtualmachineinstances/reset",
        "VirtualMachineInstance",
        &["update"],
    ),
    (
        "virtualmachineinstances/guestosinfo",
        "VirtualMachineInstance",
        &["get"],
    ),
    (
        "virtualmachineinstances/userlist",
        "VirtualMachineInstance",
        &["get"],
    ),
    (
        "virtualmachineinstances/filesystemlist",
        "VirtualMachineInstance",
        &["get"],
    ),
    // Ours, not KubeVirt's (whose launcher logs are the Pod's): docs/observability.md.
    (
        "virtualmachineinstances/logs",
        "VirtualMachineInstance",
        &["get"],
    ),
    ("virtualmachines/start", "VirtualMachine", &["update"]),
    ("virtualmachines/stop", "VirtualMachine", &["update"]),
    ("virtualmachines/restart", "VirtualMachine", &["update"]),
    ("virtualmachines/migrate", "VirtualMachine", &["update"]),
    ("virtualmachines/addvolume", "VirtualMachine", &["update"]),
    ("virtualmachines/memorydump", "VirtualMachine", &["update"]),
    (
        "virtualmachines/removememorydump",
        "VirtualMachine",
        &["update"],
    ),
    // Ours: the memory dump controller's call (docs/memory-snapshots.md).
    (
        "virtualmachineinstances/dumpmemory",
        "VirtualMachineInstance",
        &["update"],
    ),
    (
        "virtualmachines/removevolume",
        "VirtualMachine",
        &["update"],
    ),
    (
        "virtualmachineinstances/addvolume",
        "VirtualMachineInstance",
        &["update"],
    ),
    (
        "virtualmachineinstances/removevolume",
        "VirtualMachineInstance",
        &["update"],
    ),
];

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn resource_entries(r: &ResourceDef) -> Vec<Value> {
    let mut out = vec![json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": VERBS,
        "shortNames": r.short_names,
        "categories": r.categories,
    })];
    if r.group.is_empty() && r.plural == "serviceaccounts" {
        out.push(json!({
            "name": "serviceaccounts/token", "singularName": "", "namespaced": true,
            "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest",
            "verbs": ["create"],
        }));
    }
    if r.group.is_empty() && r.plural == "pods" {
        // What `kubectl drain` looks for before it evicts instead of deleting.
        out.push(json!({
            "name": "pods/eviction", "singularName": "", "namespaced": true,
            "group": "policy", "version": "v1", "kind": "Eviction",
            "verbs": ["create"],
        }));
    }
    if r.status_subresource {
        out.push(json!({
            "name": format!("{}/status", r.plural),
            "singularName": "",
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    out
}

pub fn api_versions(addr: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}],
    })
}

pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    if let Some((_, _, list)) = AGGREGATED
        .iter()
        .chain(REVIEWS)
        .find(|(g, v, _)| *g == group && *v == version)
    {
        let namespaced = !REVIEWS.iter().any(|(g, _, _)| *g == group);
        let resources: Vec<Value> = list
            .iter()
            .map(|(name, kind, verbs)| {
                json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs})
            })
            .collect();
        return Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        );
    }
    let resources: Vec<Value> = reg
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(|r| resource_entries(r))
        .collect();
    if resources.is_empty() {
        return None;
    }
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn group_entry(group: &str, versions: &[String]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = gvs.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": gvs, "preferredVersion": preferred})
}

pub fn group_list(reg: &Registry) -> Value {
    let mut groups: Vec<Value> = reg
        .group_versions()
        .iter()
        .map(|(g, vs)| group_entry(g, vs))
        .collect();
    for (g, v, _) in AGGREGATED.iter().chain(REVIEWS) {
        groups.push(group_entry(g, &[v.to_string()]));
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(reg: &Registry, name: &str) -> Option<Value> {
    if let Some((group, version, _)) = AGGREGATED
        .iter()
        .chain(REVIEWS)
        .find(|(g, _, _)| *g == name)
    {
        let mut g = group_entry(group, &[version.to_string()]);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        return Some(g);
    }
    reg.group_versions()
        .iter()
        .find(|(g, _)| g == name)
        .map(|(g, vs)| {
            let mut e = group_entry(g, vs);
            e["kind"] = json!("APIGroup");
            e["apiVersion"] = json!("v1");
            e
        })
}

/// The schema name kubectl sees for a kind, e.g. `io.kubevirt.v1.VirtualMachine`.
fn schema_name(r: &ResourceDef) -> String {
    if r.group.is_empty() {
        return format!("io.k8s.api.core.v1.{}", r.kind);
    }
    let reversed: Vec<&str> = r.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), r.version, r.kind)
}

fn hash_of(v: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

/// Every OpenAPI v3 document, keyed by the path after `/openapi/v3/` (`""` is the index).
pub fn openapi_all(reg: &Registry) -> std::collections::HashMap<String, bytes::Bytes> {
    let bytes = |v: &Value| bytes::Bytes::from(serde_json::to_vec(v).unwrap_or_default());
    let mut out = std::collections::HashMap::new();
    out.insert(String::new(), bytes(&openapi_index(reg)));
    let mut gvs: Vec<(String, String)> = vec![(String::new(), "v1".into())];
    gvs.extend(reg.groups());
    for (g, v) in gvs {
        if let Some(doc) = openapi_doc(reg, &g, &v) {
            let path = if g.is_empty() {
                "api/v1".to_string()
            } else {
                format!("apis/{g}/{v}")
            };
            out.insert(path, bytes(&doc));
        }
    }
    out
}

/// `/openapi/v3`: one entry per group-version.
pub fn openapi_index(reg: &Registry) -> Value {
    let mut paths = Map::new();
    let mut gvs: Vec<(String, String)> = vec![(String::new(), "v1".into())];
    gvs.extend(reg.groups());
    for (g, v) in gvs {
        let path = if g.is_empty() {
            "api/v1".to_string()
        } else {
            format!("apis/{g}/{v}")
        };
        let hash = openapi_doc(reg, &g, &v)
            .map(|d| hash_of(&d))
            .unwrap_or_default();
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
        );
    }
    json!({ "paths": paths })
}

/// The OpenAPI v3 document of one group-version: schemas (with
/// `x-kubernetes-group-version-kind`, which `kubectl explain` looks for) and the operations
/// (whose PATCH lists `fieldValidation`, which tells kubectl to let the server validate).
pub fn openapi_doc(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = reg
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| &**r)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for r in &defs {
        let name = schema_name(r);
        let gvk = json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
        let mut s: Value = serde_json::from_slice(&r.schema_json).unwrap_or(Value::Null);
        s["x-kubernetes-group-version-kind"] = gvk.clone();
        let components: Map<String, Value> =
            serde_json::from_slice(&r.components_json).unwrap_or_default();
        for (k, v) in components {
            schemas.entry(k).or_insert(v);
        }
        schemas.insert(name.clone(), s);
        let list_name = format!("{name}List");
        schemas.insert(
            list_name.clone(),
            json!({"type": "object", "required": ["items"],
                   "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                  "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}},
                                  "metadata": {"type": "object"}},
                   "x-kubernetes-group-version-kind": [{"group": r.group, "version": r.version, "kind": format!("{}List", r.kind)}]}),
        );
        let prefix = if r.group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        let coll = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{prefix}/{}", r.plural)
        };
        let obj_ref = json!({"$ref": format!("#/components/schemas/{name}")});
        let op = |action: &str, params: Value| {
            json!({
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
                "parameters": params,
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": obj_ref}}}},
            })
        };
        let q = |n: &str| json!({"name": n, "in": "query", "schema": {"type": "string"}});
        let write_params = json!([q("dryRun"), q("fieldManager"), q("fieldValidation")]);
        let mut patch_params = write_params.clone();
        if let Some(a) = patch_params.as_array_mut() {
            a.push(q("force"));
        }
        paths.insert(
            coll.clone(),
            json!({
                "get": op("list", json!([q("labelSelector"), q("fieldSelector"), q("limit"), q("continue"), q("resourceVersion"), q("watch")])),
                "post": op("post", write_params.clone()),
                "delete": op("deletecollection", json!([q("labelSelector")])),
            }),
        );
        paths.insert(
            format!("{coll}/{{name}}"),
            json!({
                "get": op("get", json!([])),
                "put": op("put", write_params.clone()),
                "patch": op("patch", patch_params.clone()),
                "delete": op("delete", json!([q("propagationPolicy"), q("gracePeriodSeconds")])),
            }),
        );
        if r.status_subresource {
            paths.insert(
                format!("{coll}/{{name}}/status"),
                json!({"get": op("get", json!([])), "put": op("put", write_params), "patch": op("patch", patch_params)}),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "kubevirt-rs", "version": format!("v1.{KUBE_MINOR}.0")},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

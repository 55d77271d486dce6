//! `/openapi/v2`: one Swagger 2.0 document for every served resource, as JSON and as the
//! protobuf kubectl 1.27/1.28 ask for (gnostic's `openapi.v2.Document`,
//! github.com/google/gnostic-models `openapiv2/OpenAPIv2.proto`).
//!
//! The document is made from the OpenAPI v3 documents of [`discovery::openapi_doc`]: the same
//! operations (with `x-kubernetes-action`, `x-kubernetes-group-version-kind` and the
//! `fieldValidation` parameter that tells kubectl the server validates fields), and the
//! schemas down-converted the way apiextensions-apiserver publishes a CRD's v2 schema:
//! `oneOf`/`anyOf`/`not` and multi-element `allOf` dropped, a one-element `allOf` of a `$ref`
//! becomes the `$ref`, `x-kubernetes-preserve-unknown-fields` drops `type`, `items` and
//! `properties`, an array without items loses its type, nullable properties are not
//! required. Unlike apiextensions, a `nullable` schema keeps its type and properties (our
//! schemas mark every optional field nullable; dropping them would leave `kubectl explain`
//! nothing under `vm.spec.template.spec`). kube-openapi's v2 parser (kubectl's
//! `proto.NewOpenAPIData`) refuses a document with a dangling `$ref`, a `$ref` with a type or
//! properties, an array without exactly one item schema, or an unknown type: the conversion
//! never produces those.

use crate::discovery;
use crate::registry::Registry;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::hash::{Hash, Hasher};

/// The content type kubectl (client-go's `OpenAPISchema`) asks for.
pub const MIME_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// The other spelling kube-openapi accepts, and the content type it answers with (Go's
/// `mime.ParseMediaType`, which client-go applies to a response, refuses the `@`).
pub const MIME_PROTOBUF_OLD: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The v2 document of one registry snapshot, serialized both ways, with their ETags.
pub struct Served {
    pub json: Bytes,
    pub json_etag: String,
    pub proto: Bytes,
    pub proto_etag: String,
}

fn etag(b: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    format!("\"{:016X}{:08X}\"", h.finish(), b.len())
}

/// Builds both serializations of the snapshot's v2 document.
pub fn build(reg: &Registry) -> Served {
    let doc = document(reg);
    let json = serde_json::to_vec(&doc).unwrap_or_default();
    let proto = encode_document(&doc);
    Served {
        json_etag: etag(&json),
        proto_etag: etag(&proto),
        json: Bytes::from(json),
        proto: Bytes::from(proto),
    }
}

/// Answers `GET /openapi/v2` by the `Accept` header (protobuf or JSON; 406 for anything
/// else), with an ETag and 304 for a matching `If-None-Match`.
pub fn respond(served: &Served, headers: &HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut choice = if accept.trim().is_empty() {
        Some(false)
    } else {
        None
    };
    for part in accept.split(',') {
        if choice.is_some() {
            break;
        }
        let mut params = part.split(';');
        let mime = params.next().unwrap_or("").trim();
        let refused = params.any(|p| {
            let p = p.replace(' ', "");
            p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
        });
        if refused {
            continue;
        }
        if mime == MIME_PROTOBUF || mime == MIME_PROTOBUF_OLD {
            choice = Some(true);
        } else if mime == "application/json" || mime == "application/*" || mime == "*/*" {
            choice = Some(false);
        }
    }
    let Some(protobuf) = choice else {
        return crate::error::ApiError::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, {MIME_PROTOBUF}"
            ),
        )
        .into_response();
    };
    let (body, tag, ct) = if protobuf {
        (&served.proto, &served.proto_etag, MIME_PROTOBUF_OLD)
    } else {
        (&served.json, &served.json_etag, "application/json")
    };
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == tag || t.trim() == "*");
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, [(header::CONTENT_TYPE, ct)], body.clone()).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(tag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    resp
}

/// `io.k8s.apimachinery.pkg.apis.meta.v1` definitions every v2 document of kube-apiserver
/// has (kubectl resolves `metadata` through ObjectMeta), with what they refer to.
fn meta_definitions() -> Map<String, Value> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    let mut out = Map::new();
    let mut add = |(name, (schema, defs)): (&str, (Value, Map<String, Value>))| {
        for (k, v) in defs {
            out.entry(k).or_insert(v);
        }
        out.insert(
            format!("io.k8s.apimachinery.pkg.apis.meta.v1.{name}"),
            schema,
        );
    };
    use crate::registry::core_schema as s;
    add(("ObjectMeta", s::<meta::ObjectMeta>()));
    add(("ListMeta", s::<meta::ListMeta>()));
    add(("Status", s::<meta::Status>()));
    add(("DeleteOptions", s::<meta::DeleteOptions>()));
    add(("Patch", s::<meta::Patch>()));
    add(("LabelSelector", s::<meta::LabelSelector>()));
    add(("Condition", s::<meta::Condition>()));
    add(("APIResourceList", s::<meta::APIResourceList>()));
    add(("APIGroupList", s::<meta::APIGroupList>()));
    add(("APIVersions", s::<meta::APIVersions>()));
    out
}

/// Strategic-merge-patch metadata kube-apiserver publishes for the fields whose lists our
/// strategic merge patch (crate::patch) merges: (definition, property, strategy, merge key).
const PATCH_META: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        "merge",
        Some("uid"),
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        "merge",
        None,
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        "ports",
        "merge",
        Some("port"),
    ),
    (
        "io.k8s.api.core.v1.ServiceStatus",
        "conditions",
        "merge",
        Some("type"),
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        "merge",
        Some("type"),
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        "merge",
        Some("type"),
    ),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        "merge",
        Some("type"),
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        "merge",
        Some("type"),
    ),
];

/// The Swagger 2.0 document of every served resource.
pub fn document(reg: &Registry) -> Value {
    let mut gvs: Vec<(String, String)> = vec![(String::new(), "v1".into())];
    gvs.extend(reg.groups());
    let mut v3_schemas = Map::new();
    let mut v3_paths = Map::new();
    for (g, v) in &gvs {
        let Some(doc) = discovery::openapi_doc(reg, g, v) else {
            continue;
        };
        if let Some(Value::Object(s)) = doc.pointer("/components/schemas") {
            for (k, v) in s {
                v3_schemas.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        if let Some(Value::Object(p)) = doc.get("paths") {
            for (k, v) in p {
                v3_paths.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    for (k, v) in meta_definitions() {
        v3_schemas.entry(k).or_insert(v);
    }
    let mut definitions = Map::new();
    for (name, s) in &v3_schemas {
        definitions.insert(name.clone(), schema_v2(s));
    }
    // Lists' metadata is a ListMeta, as in kube-apiserver's document.
    for (name, d) in definitions.iter_mut() {
        if name.ends_with("List")
            && d.pointer("/properties/metadata") == Some(&json!({"type": "object"}))
        {
            d["properties"]["metadata"] =
                json!({"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"});
        }
    }
    for (def, prop, strategy, key) in PATCH_META {
        if let Some(Value::Object(p)) = definitions
            .get_mut(*def)
            .and_then(|d| d.pointer_mut(&format!("/properties/{prop}")))
        {
            p.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
            if let Some(k) = key {
                p.insert("x-kubernetes-patch-merge-key".into(), json!(k));
            }
        }
    }
    drop_dangling_refs(&mut definitions);
    let mut paths = Map::new();
    for (path, item) in &v3_paths {
        paths.insert(path.clone(), path_item_v2(path, item, &definitions));
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "kubevirt-rs", "version": format!("v1.{}.0", discovery::KUBE_MINOR)},
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {
            "BearerToken": {"type": "apiKey", "name": "authorization", "in": "header",
                            "description": "Bearer Token authentication"}
        },
        "security": [{"BearerToken": []}],
    })
}

/// A v3 `$ref` as a v2 one; `None` for a reference outside the named schemas.
fn ref_v2(r: &str) -> Option<String> {
    r.strip_prefix("#/components/schemas/")
        .or_else(|| r.strip_prefix("#/definitions/"))
        .map(|n| format!("#/definitions/{n}"))
}

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

/// One v3 schema as a v2 schema (see the module documentation).
pub fn schema_v2(s: &Value) -> Value {
    let Value::Object(m) = s else {
        return json!({});
    };
    let mut reference = m.get("$ref").and_then(Value::as_str);
    if reference.is_none() {
        if let Some(Value::Array(all)) = m.get("allOf") {
            if let [one] = all.as_slice() {
                reference = one.get("$ref").and_then(Value::as_str);
            }
        }
    }
    if let Some(r) = reference.and_then(ref_v2) {
        let mut out = Map::new();
        out.insert("$ref".into(), json!(r));
        for (k, v) in m {
            if k == "description" || k.starts_with("x-") {
                out.insert(k.clone(), v.clone());
            }
        }
        return Value::Object(out);
    }
    let mut out = Map::new();
    let mut nullable_props: Vec<&str> = Vec::new();
    for (k, v) in m {
        match k.as_str() {
            "$ref" | "nullable" | "oneOf" | "anyOf" | "allOf" | "not" | "writeOnly"
            | "deprecated" | "discriminator" | "$schema" | "xml" => {}
            "properties" => {
                let Value::Object(props) = v else { continue };
                let mut p = Map::new();
                for (name, ps) in props {
                    if ps.get("nullable") == Some(&Value::Bool(true)) {
                        nullable_props.push(name);
                    }
                    p.insert(name.clone(), schema_v2(ps));
                }
                out.insert(k.clone(), Value::Object(p));
            }
            "items" => {
                if v.is_object() {
                    out.insert(k.clone(), schema_v2(v));
                }
            }
            "additionalProperties" => match v {
                Value::Bool(_) => {
                    out.insert(k.clone(), v.clone());
                }
                Value::Object(_) => {
                    out.insert(k.clone(), schema_v2(v));
                }
                _ => {}
            },
            "type" => {
                let t = match v {
                    Value::String(t) => Some(t.as_str()),
                    Value::Array(ts) => {
                        let ts: Vec<&str> = ts
                            .iter()
                            .filter_map(Value::as_str)
                            .filter(|t| *t != "null")
                            .collect();
                        match ts.as_slice() {
                            [one] => Some(*one),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                if let Some(t) = t.filter(|t| TYPES.contains(t)) {
                    out.insert(k.clone(), json!(t));
                }
            }
            "required" => {
                if let Value::Array(r) = v {
                    let r: Vec<&Value> = r.iter().filter(|x| x.is_string()).collect();
                    out.insert(k.clone(), json!(r));
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(Value::Array(r)) = out.get_mut("required") {
        r.retain(|n| !n.as_str().is_some_and(|n| nullable_props.contains(&n)));
        if r.is_empty() {
            out.remove("required");
        }
    }
    if out.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        out.remove("type");
        out.remove("items");
        out.remove("properties");
    }
    let ty = out.get("type").and_then(Value::as_str).map(str::to_string);
    match ty.as_deref() {
        Some("array") if !out.contains_key("items") => {
            out.remove("type");
        }
        Some("array") => {}
        _ => {
            out.remove("items");
        }
    }
    Value::Object(out)
}

/// Replaces `$ref`s to definitions the document lacks by an untyped schema (kubectl refuses
/// a document with a dangling reference).
fn drop_dangling_refs(defs: &mut Map<String, Value>) {
    fn walk(v: &mut Value, names: &std::collections::HashSet<String>) {
        match v {
            Value::Object(m) => {
                let dangling = m
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| r.strip_prefix("#/definitions/"))
                    .is_some_and(|n| !names.contains(n));
                if dangling {
                    m.remove("$ref");
                }
                for (k, x) in m.iter_mut() {
                    if k == "properties" {
                        if let Value::Object(ps) = x {
                            for p in ps.values_mut() {
                                walk(p, names);
                            }
                        }
                    } else if k == "items" || k == "additionalProperties" {
                        walk(x, names);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, names)),
            _ => {}
        }
    }
    let names: std::collections::HashSet<String> = defs.keys().cloned().collect();
    for d in defs.values_mut() {
        walk(d, &names);
    }
}

fn camel(s: &str) -> String {
    s.split(['.', '-'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

/// One v3 path item as a v2 one: path parameters, a body parameter on writes, query
/// parameters with their type inline, the response schema without `content`.
fn path_item_v2(path: &str, item: &Value, defs: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    let namespaced = path.contains("/namespaces/{namespace}/");
    let status = path.ends_with("/status");
    let mut params = Vec::new();
    if path.contains("{name}") {
        params.push(
            json!({"name": "name", "in": "path", "required": true, "type": "string",
                           "uniqueItems": true, "description": "name of the object"}),
        );
    }
    if namespaced {
        params.push(json!({"name": "namespace", "in": "path", "required": true, "type": "string",
                           "uniqueItems": true,
                           "description": "object name and auth scope, such as for teams and projects"}));
    }
    if !params.is_empty() {
        out.insert("parameters".into(), Value::Array(params));
    }
    let Value::Object(ops) = item else {
        return Value::Object(out);
    };
    for (method, op) in ops {
        if !matches!(
            method.as_str(),
            "get" | "put" | "post" | "delete" | "patch" | "options" | "head"
        ) {
            continue;
        }
        let action = op
            .get("x-kubernetes-action")
            .and_then(Value::as_str)
            .unwrap_or("");
        let gvk = op
            .get("x-kubernetes-group-version-kind")
            .cloned()
            .unwrap_or(Value::Null);
        let kind = gvk.get("kind").and_then(Value::as_str).unwrap_or("");
        let group = gvk.get("group").and_then(Value::as_str).unwrap_or("");
        let version = gvk.get("version").and_then(Value::as_str).unwrap_or("");
        let obj_ref = op
            .pointer("/responses/200/content/application~1json/schema/$ref")
            .and_then(Value::as_str)
            .and_then(ref_v2);
        let list_ref = obj_ref.as_ref().map(|r| format!("{r}List")).filter(|r| {
            r.strip_prefix("#/definitions/")
                .is_some_and(|n| defs.contains_key(n))
        });
        let status_ref = "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.Status".to_string();
        let verb = match action {
            "list" => "list",
            "post" => "create",
            "deletecollection" => "deletecollection",
            "get" => "read",
            "put" => "replace",
            "patch" => "patch",
            "delete" => "delete",
            other => other,
        };
        let core = if group.is_empty() {
            "Core".to_string()
        } else {
            camel(group.trim_end_matches(".k8s.io"))
        };
        let operation_id = format!(
            "{verb}{core}{}{}{kind}{}",
            camel(version),
            if namespaced { "Namespaced" } else { "" },
            if status { "Status" } else { "" }
        );
        let mut parameters = Vec::new();
        let body_schema = match action {
            "post" | "put" => obj_ref.clone().map(|r| json!({"$ref": r})),
            "patch" => {
                Some(json!({"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}))
            }
            "delete" | "deletecollection" => Some(
                json!({"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"}),
            ),
            _ => None,
        };
        if let Some(schema) = body_schema {
            parameters.push(json!({"name": "body", "in": "body",
                                   "required": matches!(action, "post" | "put" | "patch"),
                                   "schema": schema}));
        }
        for p in op
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mut q = Map::new();
            for key in ["name", "in", "description", "required"] {
                if let Some(v) = p.get(key) {
                    q.insert(key.into(), v.clone());
                }
            }
            let ty = p
                .pointer("/schema/type")
                .and_then(Value::as_str)
                .filter(|t| TYPES.contains(t) && *t != "object" && *t != "array")
                .unwrap_or("string");
            q.insert("type".into(), json!(ty));
            q.insert("uniqueItems".into(), json!(true));
            parameters.push(Value::Object(q));
        }
        let ok_schema = match action {
            "list" => list_ref.or(obj_ref.clone()),
            "delete" | "deletecollection" => Some(status_ref),
            _ => obj_ref.clone(),
        };
        let mut ok = json!({"description": "OK"});
        if let Some(r) = ok_schema {
            ok["schema"] = json!({"$ref": r});
        }
        let consumes = if action == "patch" {
            json!([
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml"
            ])
        } else {
            json!(["*/*"])
        };
        let mut o = json!({
            "operationId": operation_id,
            "consumes": consumes,
            "produces": ["application/json", "application/yaml"],
            "schemes": ["https"],
            "parameters": parameters,
            "responses": {"200": ok, "401": {"description": "Unauthorized"}},
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        });
        if action == "list" {
            o["produces"] = json!([
                "application/json",
                "application/yaml",
                "application/json;stream=watch"
            ]);
        }
        out.insert(method.clone(), o);
    }
    Value::Object(out)
}

/// Protobuf encoding (proto3 wire format) of what [`encode_document`] needs.
pub mod pb {
    /// Appends `v` as a base-128 varint.
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// One message being written: fields in the order they are added.
    #[derive(Default)]
    pub struct Msg(pub Vec<u8>);

    impl Msg {
        fn tag(&mut self, field: u32, wire: u8) {
            varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire));
        }

        /// A length-delimited field (bytes, string, embedded message), written even if empty.
        pub fn bytes(&mut self, field: u32, b: &[u8]) {
            self.tag(field, 2);
            varint(&mut self.0, b.len() as u64);
            self.0.extend_from_slice(b);
        }

        /// A string field; the empty string is proto3's default and is left out.
        pub fn string(&mut self, field: u32, s: &str) {
            if !s.is_empty() {
                self.bytes(field, s.as_bytes());
            }
        }

        /// An embedded message (present even when empty, which the reader can tell).
        pub fn message(&mut self, field: u32, m: Msg) {
            self.bytes(field, &m.0);
        }

        /// A bool field; `false` is left out unless `always` (a member of a oneof).
        pub fn boolean(&mut self, field: u32, b: bool, always: bool) {
            if b || always {
                self.tag(field, 0);
                self.0.push(u8::from(b));
            }
        }

        /// An int64 field (negative numbers take ten bytes, as in protobuf).
        pub fn int64(&mut self, field: u32, v: i64) {
            self.tag(field, 0);
            varint(&mut self.0, v as u64);
        }

        /// A double field (fixed 64 bits, little-endian).
        pub fn double(&mut self, field: u32, v: f64) {
            self.tag(field, 1);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
}

use pb::Msg;

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// `Any{yaml}`: a JSON text is a YAML text, which is what gnostic's readers parse.
fn any(v: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(2, &serde_json::to_string(v).unwrap_or_default());
    m
}

/// `NamedAny`s of the `x-` keys of `m`.
fn vendor_extensions(out: &mut Msg, field: u32, m: &Map<String, Value>) {
    for (k, v) in m {
        if k.starts_with("x-") {
            let mut na = Msg::default();
            na.string(1, k);
            na.message(2, any(v));
            out.message(field, na);
        }
    }
}

fn strings(out: &mut Msg, field: u32, v: Option<&Value>) {
    for s in v.and_then(Value::as_array).into_iter().flatten() {
        if let Some(s) = s.as_str() {
            out.bytes(field, s.as_bytes());
        }
    }
}

fn int_of(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

/// `openapi.v2.Schema`.
pub fn encode_schema(s: &Value) -> Msg {
    let mut m = Msg::default();
    let Value::Object(o) = s else {
        return m;
    };
    let get = |k: &str| o.get(k);
    if let Some(r) = get("$ref") {
        m.string(1, str_of(r));
    }
    for (k, f) in [("format", 2), ("title", 3), ("description", 4)] {
        if let Some(v) = get(k) {
            m.string(f, str_of(v));
        }
    }
    if let Some(v) = get("default") {
        m.message(5, any(v));
    }
    for (k, f) in [("multipleOf", 6), ("maximum", 7), ("minimum", 9)] {
        if let Some(x) = get(k).and_then(Value::as_f64) {
            m.double(f, x);
        }
    }
    for (k, f) in [("exclusiveMaximum", 8), ("exclusiveMinimum", 10)] {
        if let Some(b) = get(k).and_then(Value::as_bool) {
            m.boolean(f, b, false);
        }
    }
    for (k, f) in [("maxLength", 11), ("minLength", 12)] {
        if let Some(x) = get(k).and_then(int_of) {
            m.int64(f, x);
        }
    }
    if let Some(v) = get("pattern") {
        m.string(13, str_of(v));
    }
    for (k, f) in [("maxItems", 14), ("minItems", 15)] {
        if let Some(x) = get(k).and_then(int_of) {
            m.int64(f, x);
        }
    }
    if let Some(b) = get("uniqueItems").and_then(Value::as_bool) {
        m.boolean(16, b, false);
    }
    for (k, f) in [("maxProperties", 17), ("minProperties", 18)] {
        if let Some(x) = get(k).and_then(int_of) {
            m.int64(f, x);
        }
    }
    strings(&mut m, 19, get("required"));
    for e in get("enum").and_then(Value::as_array).into_iter().flatten() {
        m.message(20, any(e));
    }
    match get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut a = Msg::default();
            a.boolean(2, *b, true);
            m.message(21, a);
        }
        Some(v @ Value::Object(_)) => {
            let mut a = Msg::default();
            a.message(1, encode_schema(v));
            m.message(21, a);
        }
        _ => {}
    }
    if let Some(t) = get("type") {
        let mut ti = Msg::default();
        match t {
            Value::String(t) => ti.string(1, t),
            Value::Array(_) => strings(&mut ti, 1, Some(t)),
            _ => {}
        }
        m.message(22, ti);
    }
    if let Some(items) = get("items") {
        let mut ii = Msg::default();
        match items {
            Value::Array(a) => a.iter().for_each(|s| ii.message(1, encode_schema(s))),
            s => ii.message(1, encode_schema(s)),
        }
        m.message(23, ii);
    }
    for s in get("allOf").and_then(Value::as_array).into_iter().flatten() {
        m.message(24, encode_schema(s));
    }
    if let Some(Value::Object(props)) = get("properties") {
        let mut p = Msg::default();
        for (name, s) in props {
            let mut ns = Msg::default();
            ns.string(1, name);
            ns.message(2, encode_schema(s));
            p.message(1, ns);
        }
        m.message(25, p);
    }
    if let Some(v) = get("discriminator") {
        m.string(26, str_of(v));
    }
    if let Some(b) = get("readOnly").and_then(Value::as_bool) {
        m.boolean(27, b, false);
    }
    if let Some(Value::Object(d)) = get("externalDocs") {
        m.message(29, external_docs(d));
    }
    if let Some(v) = get("example") {
        m.message(30, any(v));
    }
    vendor_extensions(&mut m, 31, o);
    m
}

fn external_docs(d: &Map<String, Value>) -> Msg {
    let mut m = Msg::default();
    m.string(1, d.get("description").map(str_of).unwrap_or(""));
    m.string(2, d.get("url").map(str_of).unwrap_or(""));
    vendor_extensions(&mut m, 3, d);
    m
}

/// A non-body parameter: query and form-data parameters number their fields one way,
/// path and header parameters (which have no `allowEmptyValue`) another.
fn non_body_parameter(p: &Map<String, Value>) -> Msg {
    let location = p.get("in").map(str_of).unwrap_or("");
    let query_like = matches!(location, "query" | "formData");
    let mut s = Msg::default();
    s.boolean(
        1,
        p.get("required").and_then(Value::as_bool).unwrap_or(false),
        false,
    );
    s.string(2, location);
    s.string(3, p.get("description").map(str_of).unwrap_or(""));
    s.string(4, p.get("name").map(str_of).unwrap_or(""));
    // Fields after `name`: query/formData have allow_empty_value = 5 and so are one further.
    let shift = u32::from(query_like);
    if query_like {
        if let Some(b) = p.get("allowEmptyValue").and_then(Value::as_bool) {
            s.boolean(5, b, false);
        }
    }
    s.string(5 + shift, p.get("type").map(str_of).unwrap_or(""));
    s.string(6 + shift, p.get("format").map(str_of).unwrap_or(""));
    if let Some(v) = p.get("default") {
        s.message(9 + shift, any(v));
    }
    if let Some(b) = p.get("uniqueItems").and_then(Value::as_bool) {
        s.boolean(19 + shift, b, false);
    }
    for e in p
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        s.message(20 + shift, any(e));
    }
    vendor_extensions(&mut s, 22 + shift, p);
    let which = match location {
        "header" => 1,
        "formData" => 2,
        "query" => 3,
        _ => 4,
    };
    let mut nb = Msg::default();
    nb.message(which, s);
    nb
}

/// `ParametersItem`: a `$ref` (JsonReference), a body parameter, or another parameter.
fn parameters_item(p: &Value) -> Msg {
    let mut item = Msg::default();
    let Value::Object(p) = p else {
        return item;
    };
    if let Some(r) = p.get("$ref") {
        let mut jr = Msg::default();
        jr.string(1, str_of(r));
        jr.string(2, p.get("description").map(str_of).unwrap_or(""));
        item.message(2, jr);
        return item;
    }
    let mut param = Msg::default();
    if p.get("in").map(str_of) == Some("body") {
        let mut b = Msg::default();
        b.string(1, p.get("description").map(str_of).unwrap_or(""));
        b.string(2, p.get("name").map(str_of).unwrap_or(""));
        b.string(3, "body");
        b.boolean(
            4,
            p.get("required").and_then(Value::as_bool).unwrap_or(false),
            false,
        );
        if let Some(s) = p.get("schema") {
            b.message(5, encode_schema(s));
        }
        vendor_extensions(&mut b, 6, p);
        param.message(1, b);
    } else {
        param.message(2, non_body_parameter(p));
    }
    item.message(1, param);
    item
}

fn operation(o: &Map<String, Value>) -> Msg {
    let mut m = Msg::default();
    strings(&mut m, 1, o.get("tags"));
    m.string(2, o.get("summary").map(str_of).unwrap_or(""));
    m.string(3, o.get("description").map(str_of).unwrap_or(""));
    m.string(5, o.get("operationId").map(str_of).unwrap_or(""));
    strings(&mut m, 6, o.get("produces"));
    strings(&mut m, 7, o.get("consumes"));
    for p in o
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(8, parameters_item(p));
    }
    if let Some(Value::Object(rs)) = o.get("responses") {
        let mut responses = Msg::default();
        for (code, r) in rs {
            let Value::Object(r) = r else { continue };
            let mut rv = Msg::default();
            if let Some(reference) = r.get("$ref") {
                let mut jr = Msg::default();
                jr.string(1, str_of(reference));
                rv.message(2, jr);
            } else {
                let mut resp = Msg::default();
                resp.string(1, r.get("description").map(str_of).unwrap_or(""));
                if let Some(s) = r.get("schema") {
                    let mut si = Msg::default();
                    si.message(1, encode_schema(s));
                    resp.message(2, si);
                }
                vendor_extensions(&mut resp, 5, r);
                rv.message(1, resp);
            }
            let mut named = Msg::default();
            named.string(1, code);
            named.message(2, rv);
            responses.message(1, named);
        }
        vendor_extensions(&mut responses, 2, rs);
        m.message(9, responses);
    }
    strings(&mut m, 10, o.get("schemes"));
    if let Some(b) = o.get("deprecated").and_then(Value::as_bool) {
        m.boolean(11, b, false);
    }
    vendor_extensions(&mut m, 13, o);
    m
}

fn path_item(p: &Map<String, Value>) -> Msg {
    let mut m = Msg::default();
    if let Some(r) = p.get("$ref") {
        m.string(1, str_of(r));
    }
    for (k, f) in [
        ("get", 2),
        ("put", 3),
        ("post", 4),
        ("delete", 5),
        ("options", 6),
        ("head", 7),
        ("patch", 8),
    ] {
        if let Some(Value::Object(o)) = p.get(k) {
            m.message(f, operation(o));
        }
    }
    for param in p
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(9, parameters_item(param));
    }
    vendor_extensions(&mut m, 10, p);
    m
}

/// gnostic's `openapi.v2.Document` of a Swagger 2.0 JSON document.
pub fn encode_document(doc: &Value) -> Vec<u8> {
    let mut m = Msg::default();
    let Value::Object(d) = doc else {
        return m.0;
    };
    m.string(1, d.get("swagger").map(str_of).unwrap_or("2.0"));
    if let Some(Value::Object(i)) = d.get("info") {
        let mut info = Msg::default();
        info.string(1, i.get("title").map(str_of).unwrap_or(""));
        info.string(2, i.get("version").map(str_of).unwrap_or(""));
        info.string(3, i.get("description").map(str_of).unwrap_or(""));
        vendor_extensions(&mut info, 7, i);
        m.message(2, info);
    }
    m.string(3, d.get("host").map(str_of).unwrap_or(""));
    m.string(4, d.get("basePath").map(str_of).unwrap_or(""));
    strings(&mut m, 5, d.get("schemes"));
    strings(&mut m, 6, d.get("consumes"));
    strings(&mut m, 7, d.get("produces"));
    if let Some(Value::Object(ps)) = d.get("paths") {
        let mut paths = Msg::default();
        vendor_extensions(&mut paths, 1, ps);
        for (name, item) in ps {
            let Value::Object(item) = item else { continue };
            if name.starts_with("x-") {
                continue;
            }
            let mut np = Msg::default();
            np.string(1, name);
            np.message(2, path_item(item));
            paths.message(2, np);
        }
        m.message(8, paths);
    }
    if let Some(Value::Object(ds)) = d.get("definitions") {
        let mut defs = Msg::default();
        for (name, s) in ds {
            let mut ns = Msg::default();
            ns.string(1, name);
            ns.message(2, encode_schema(s));
            defs.message(1, ns);
        }
        m.message(9, defs);
    }
    for req in d
        .get("security")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Value::Object(req) = req else { continue };
        let mut sr = Msg::default();
        for (name, scopes) in req {
            let mut sa = Msg::default();
            strings(&mut sa, 1, Some(scopes));
            let mut nsa = Msg::default();
            nsa.string(1, name);
            nsa.message(2, sa);
            sr.message(1, nsa);
        }
        m.message(12, sr);
    }
    if let Some(Value::Object(sd)) = d.get("securityDefinitions") {
        let mut defs = Msg::default();
        for (name, s) in sd {
            let Value::Object(s) = s else { continue };
            // Only API-key schemes are published (the bearer token).
            if s.get("type").map(str_of) != Some("apiKey") {
                continue;
            }
            let mut key = Msg::default();
            key.string(1, "apiKey");
            key.string(2, s.get("name").map(str_of).unwrap_or(""));
            key.string(3, s.get("in").map(str_of).unwrap_or(""));
            key.string(4, s.get("description").map(str_of).unwrap_or(""));
            vendor_extensions(&mut key, 5, s);
            let mut item = Msg::default();
            item.message(2, key);
            let mut named = Msg::default();
            named.string(1, name);
            named.message(2, item);
            defs.message(1, named);
        }
        m.message(13, defs);
    }
    vendor_extensions(&mut m, 16, d);
    m.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field as the wire has it.
    #[derive(Debug, PartialEq)]
    enum Wire {
        Varint(u64),
        Fixed64(u64),
        Bytes(Vec<u8>),
    }

    fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *buf.get(*pos).ok_or("truncated varint")?;
            *pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than ten bytes".into())
    }

    /// A minimal protobuf reader: every field of one message, in order.
    fn fields(buf: &[u8]) -> Result<Vec<(u32, Wire)>, String> {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < buf.len() {
            let key = read_varint(buf, &mut pos)?;
            let field = u32::try_from(key >> 3).map_err(|e| e.to_string())?;
            let w = match key & 7 {
                0 => Wire::Varint(read_varint(buf, &mut pos)?),
                1 => {
                    let b = buf.get(pos..pos + 8).ok_or("truncated fixed64")?;
                    pos += 8;
                    Wire::Fixed64(u64::from_le_bytes(b.try_into().map_err(|_| "fixed64")?))
                }
                2 => {
                    let len =
                        usize::try_from(read_varint(buf, &mut pos)?).map_err(|e| e.to_string())?;
                    let b = buf.get(pos..pos + len).ok_or("truncated bytes")?;
                    pos += len;
                    Wire::Bytes(b.to_vec())
                }
                other => return Err(format!("unexpected wire type {other}")),
            };
            out.push((field, w));
        }
        Ok(out)
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).expect("utf-8")
    }

    /// `Any{yaml}` back to JSON (we write JSON texts).
    fn any_value(b: &[u8]) -> Value {
        let f = fields(b).expect("Any");
        let yaml = f
            .iter()
            .find_map(|(n, w)| match (n, w) {
                (2, Wire::Bytes(b)) => Some(text(b)),
                _ => None,
            })
            .expect("yaml");
        serde_json::from_str(&yaml).expect("json yaml")
    }

    /// The subset of `openapi.v2.Schema` the round trip covers, decoded to JSON.
    fn decode_schema(b: &[u8]) -> Value {
        let mut m = Map::new();
        for (n, w) in fields(b).expect("Schema") {
            match (n, w) {
                (1, Wire::Bytes(b)) => {
                    m.insert("$ref".into(), json!(text(&b)));
                }
                (2, Wire::Bytes(b)) => {
                    m.insert("format".into(), json!(text(&b)));
                }
                (4, Wire::Bytes(b)) => {
                    m.insert("description".into(), json!(text(&b)));
                }
                (7, Wire::Fixed64(x)) => {
                    m.insert("maximum".into(), json!(f64::from_bits(x)));
                }
                (11, Wire::Varint(x)) => {
                    m.insert("maxLength".into(), json!(x as i64));
                }
                (19, Wire::Bytes(b)) => {
                    let r = m.entry("required").or_insert_with(|| json!([]));
                    if let Value::Array(a) = r {
                        a.push(json!(text(&b)));
                    }
                }
                (20, Wire::Bytes(b)) => {
                    let r = m.entry("enum").or_insert_with(|| json!([]));
                    if let Value::Array(a) = r {
                        a.push(any_value(&b));
                    }
                }
                (21, Wire::Bytes(b)) => {
                    let v = match fields(&b).expect("AdditionalPropertiesItem").as_slice() {
                        [(1, Wire::Bytes(s))] => decode_schema(s),
                        [(2, Wire::Varint(x))] => json!(*x != 0),
                        other => panic!("AdditionalPropertiesItem {other:?}"),
                    };
                    m.insert("additionalProperties".into(), v);
                }
                (22, Wire::Bytes(b)) => {
                    let ts: Vec<String> = fields(&b)
                        .expect("TypeItem")
                        .into_iter()
                        .map(|(n, w)| match (n, w) {
                            (1, Wire::Bytes(t)) => text(&t),
                            other => panic!("TypeItem {other:?}"),
                        })
                        .collect();
                    assert_eq!(ts.len(), 1, "{ts:?}");
                    m.insert("type".into(), json!(ts[0]));
                }
                (23, Wire::Bytes(b)) => {
                    let items = fields(&b).expect("ItemsItem");
                    let [(1, Wire::Bytes(s))] = items.as_slice() else {
                        panic!("ItemsItem {items:?}")
                    };
                    m.insert("items".into(), decode_schema(s));
                }
                (25, Wire::Bytes(b)) => {
                    let mut props = Map::new();
                    for (n, w) in fields(&b).expect("Properties") {
                        let (1, Wire::Bytes(ns)) = (n, w) else {
                            panic!("Properties field {n}")
                        };
                        let named = fields(&ns).expect("NamedSchema");
                        let [(1, Wire::Bytes(name)), (2, Wire::Bytes(s))] = named.as_slice() else {
                            panic!("NamedSchema {named:?}")
                        };
                        props.insert(text(name), decode_schema(s));
                    }
                    m.insert("properties".into(), Value::Object(props));
                }
                (31, Wire::Bytes(b)) => {
                    let named = fields(&b).expect("NamedAny");
                    let [(1, Wire::Bytes(name)), (2, Wire::Bytes(a))] = named.as_slice() else {
                        panic!("NamedAny {named:?}")
                    };
                    m.insert(text(name), any_value(a));
                }
                (n, w) => panic!("unexpected Schema field {n}: {w:?}"),
            }
        }
        Value::Object(m)
    }

    #[test]
    fn openapi_v2_varints_and_length_framing() {
        let enc = |v: u64| {
            let mut b = Vec::new();
            pb::varint(&mut b, v);
            b
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(1), [1]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
        for v in [0, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            assert_eq!(read_varint(&enc(v), &mut 0), Ok(v));
        }
        let mut m = Msg::default();
        m.string(1, "hi");
        assert_eq!(m.0, [0x0a, 0x02, b'h', b'i']);
        // An empty string is proto3's default and is left out; an empty message is not.
        let mut m = Msg::default();
        m.string(3, "");
        m.message(22, Msg::default());
        assert_eq!(m.0, [0xb2, 0x01, 0x00]);
        // Lengths past 127 take two bytes; field numbers past 15 take a two-byte key.
        let long = "x".repeat(200);
        let mut m = Msg::default();
        m.string(25, &long);
        assert_eq!(&m.0[..4], &[0xca, 0x01, 0xc8, 0x01]);
        assert_eq!(m.0.len(), 4 + 200);
        // Negative int64s are ten-byte varints; doubles are little-endian fixed64.
        let mut m = Msg::default();
        m.int64(11, -1);
        m.double(7, 1.5);
        assert_eq!(
            fields(&m.0),
            Ok(vec![
                (11, Wire::Varint(u64::MAX)),
                (7, Wire::Fixed64(1.5f64.to_bits()))
            ])
        );
    }

    #[test]
    fn openapi_v2_schema_with_nested_properties_round_trips() {
        let schema = json!({
            "type": "object",
            "description": "a widget",
            "required": ["spec"],
            "x-kubernetes-group-version-kind": [{"group": "example.com", "kind": "Widget", "version": "v1"}],
            "properties": {
                "metadata": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
                "spec": {
                    "type": "object",
                    "properties": {
                        "color": {"type": "string", "enum": ["red", "green"], "maxLength": 10},
                        "ports": {
                            "type": "array",
                            "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["port"],
                            "x-kubernetes-patch-merge-key": "port",
                            "x-kubernetes-patch-strategy": "merge",
                            "items": {"type": "object", "properties": {"port": {"type": "integer", "format": "int32", "maximum": 65535.0}}}
                        },
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "anything": {"x-kubernetes-preserve-unknown-fields": true},
                        "extra": {"type": "object", "additionalProperties": false},
                        "port": {"x-kubernetes-int-or-string": true}
                    }
                }
            }
        });
        let encoded = encode_schema(&schema);
        assert_eq!(decode_schema(&encoded.0), schema);
    }

    #[test]
    fn openapi_v2_schemas_are_down_converted_as_apiextensions_does() {
        let v3 = json!({
            "type": "object",
            "required": ["a", "b"],
            "properties": {
                "a": {"type": "string", "nullable": true},
                "b": {"allOf": [{"$ref": "#/components/schemas/X"}], "description": "d"},
                "q": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": true},
                "u": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                      "properties": {"k": {"type": "string"}}},
                "l": {"type": "array"},
                "t": {"type": ["string", "null"]},
                "r": {"$ref": "#/components/schemas/X", "type": "object", "properties": {"z": {}}}
            }
        });
        assert_eq!(
            schema_v2(&v3),
            json!({
                "type": "object",
                "required": ["b"],
                "properties": {
                    "a": {"type": "string"},
                    "b": {"$ref": "#/definitions/X", "description": "d"},
                    "q": {"x-kubernetes-int-or-string": true},
                    "u": {"x-kubernetes-preserve-unknown-fields": true},
                    "l": {},
                    "t": {"type": "string"},
                    "r": {"$ref": "#/definitions/X"}
                }
            })
        );
    }

    /// What kube-openapi's `proto.NewOpenAPIData` (kubectl's v2 parser) refuses.
    fn check_kubectl_parses(path: &str, s: &Value, defs: &Map<String, Value>) {
        let Value::Object(m) = s else {
            panic!("{path}: not an object")
        };
        if let Some(r) = m.get("$ref") {
            let name = r
                .as_str()
                .and_then(|r| r.strip_prefix("#/definitions/"))
                .unwrap_or_else(|| panic!("{path}: reference {r}"));
            assert!(defs.contains_key(name), "{path}: dangling {name}");
            assert!(
                !m.contains_key("type") && !m.contains_key("properties"),
                "{path}"
            );
            return;
        }
        let ty = m.get("type").map(|t| t.as_str().expect("one type"));
        if let Some(t) = ty {
            assert!(TYPES.contains(&t), "{path}: type {t}");
        }
        if ty == Some("array") || (ty.is_none() && m.contains_key("items")) {
            assert_eq!(ty, Some("array"), "{path}: items without type");
            check_kubectl_parses(&format!("{path}[]"), &m["items"], defs);
        }
        if let Some(Value::Object(props)) = m.get("properties") {
            for (k, p) in props {
                check_kubectl_parses(&format!("{path}.{k}"), p, defs);
            }
        }
        if let Some(a @ Value::Object(_)) = m.get("additionalProperties") {
            check_kubectl_parses(&format!("{path}{{}}"), a, defs);
        }
    }

    #[test]
    fn openapi_v2_document_of_the_builtin_kinds_parses_as_kubectl_parses_it() {
        let reg = Registry::new();
        let doc = document(&reg);
        assert_eq!(doc["swagger"], "2.0");
        let Some(Value::Object(defs)) = doc.get("definitions") else {
            panic!("no definitions")
        };
        for (name, s) in defs {
            check_kubectl_parses(name, s, defs);
        }
        for name in [
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
            "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
            "io.kubevirt.v1.VirtualMachine",
            "io.k8s.api.core.v1.Service",
        ] {
            assert!(defs.contains_key(name), "{name}");
        }
        assert_eq!(
            defs["io.kubevirt.v1.VirtualMachine"]["x-kubernetes-group-version-kind"],
            json!([{"group": "kubevirt.io", "kind": "VirtualMachine", "version": "v1"}])
        );
        assert_eq!(
            defs["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"]
                ["x-kubernetes-patch-merge-key"],
            "port"
        );
        // Every write says it takes fieldValidation (kubectl's test for server-side
        // validation), under the kind's group-version-kind.
        let patch = &doc["paths"]
            ["/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "kubevirt.io", "kind": "VirtualMachine", "version": "v1"})
        );
        let Some(Value::Object(paths)) = doc.get("paths") else {
            panic!("no paths")
        };
        for (p, item) in paths {
            for m in ["post", "put", "patch"] {
                if let Some(op) = item.get(m) {
                    let params = op["parameters"].as_array().expect("parameters");
                    assert!(
                        params.iter().any(|x| x["name"] == "fieldValidation"
                            && x["in"] == "query"
                            && x["type"] == "string"),
                        "{m} {p}"
                    );
                }
            }
        }
        // And the protobuf says the same: the first definition decodes, the document's
        // top-level fields are where OpenAPIv2.proto puts them.
        let proto = encode_document(&doc);
        let top = fields(&proto).expect("Document");
        assert_eq!(top[0], (1, Wire::Bytes(b"2.0".to_vec())));
        let Some((_, Wire::Bytes(defs_pb))) = top.iter().find(|(n, _)| *n == 9) else {
            panic!("no definitions field")
        };
        let named = fields(defs_pb).expect("Definitions");
        assert_eq!(named.len(), defs.len());
        assert!(top.iter().any(|(n, _)| *n == 8), "paths");
    }

    #[test]
    fn openapi_v2_negotiates_and_answers_304() {
        let served = Served {
            json: Bytes::from_static(b"{}"),
            json_etag: "\"J\"".into(),
            proto: Bytes::from_static(b"\x0a\x032.0"),
            proto_etag: "\"P\"".into(),
        };
        let req = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            respond(&served, &h)
        };
        let r = req(&[("accept", MIME_PROTOBUF)]);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], MIME_PROTOBUF_OLD);
        assert_eq!(r.headers()["etag"], "\"P\"");
        let r = req(&[("accept", "application/json, */*")]);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(req(&[]).headers()["etag"], "\"J\"");
        assert_eq!(
            req(&[("if-none-match", "\"J\"")]).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            req(&[("accept", "application/yaml")]).status(),
            StatusCode::NOT_ACCEPTABLE
        );
    }
}

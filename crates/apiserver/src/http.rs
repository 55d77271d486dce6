//! The HTTP surface: routing of Kubernetes REST paths onto [`ApiServer`], content negotiation
//! (JSON, YAML bodies, Table and PartialObjectMetadata output), watch streams, auth.

use crate::discovery;
use crate::error::{ApiError, ApiResult};
use crate::jsonpath;
use crate::limits::Format;
use crate::objects::{filter_event, ApiServer, ListResult, Query, Written};
use crate::patch::PatchType;
use crate::registry::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{EventType, Key, Stored};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted (kube-apiserver's limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Serves an aggregated API group (see [`discovery::AGGREGATED`]) or the CDI upload proxy;
/// plugged in by the control plane. Defined in `kubevirt_runtime::subresource`, so that the
/// handlers need not depend on the API server.
pub use kubevirt_runtime::subresource::SubresourceHandler;

pub struct AppState {
    pub api: Arc<ApiServer>,
    /// Who a bearer token stands for.
    pub auth: Arc<crate::auth::Authenticator>,
    /// The audit log of writes (`audit.log` in the data directory).
    pub audit: Option<crate::audit::AuditLog>,
    pub address: String,
    /// Handlers of aggregated API groups, by group name.
    pub aggregated:
        parking_lot::RwLock<std::collections::HashMap<String, Arc<dyn SubresourceHandler>>>,
    /// CDI's upload proxy (`/v1beta1/upload...`): authorised by its own upload token, not by
    /// the API token.
    pub upload_proxy: parking_lot::RwLock<Option<Arc<dyn SubresourceHandler>>>,
    /// KubeVirt's VirtualMachineExport server (`/api/export.kubevirt.io/...`, the path shape
    /// of KubeVirt's external export proxy): authorised by the export's own token, not by the
    /// API token.
    pub export_server: parking_lot::RwLock<Option<Arc<dyn SubresourceHandler>>>,
    /// virt-api's decision on Pod evictions (KubeVirt's eviction webhook); without one every
    /// eviction deletes its Pod.
    pub eviction: parking_lot::RwLock<Option<Arc<dyn EvictionAdmitter>>>,
}

pub use kubevirt_runtime::subresource::{EvictionAdmitter, EvictionVerdict};

/// The group of KubeVirt's export proxy paths, `/api/export.kubevirt.io/<version>/...`: not an
/// API group of `/apis`, but the path KubeVirt's `status.links.external` URLs have.
const EXPORT_GROUP: &str = "export.kubevirt.io";

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

fn bytes_response(code: StatusCode, b: Bytes) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], b).into_response()
}

fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - {}", json!(w));
        if let Ok(v) = HeaderValue::from_str(&text) {
            r.headers_mut().append("Warning", v);
        }
    }
    r
}

/// What the client asked to get back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum As {
    Object,
    Table,
    PartialMetadata,
}

fn negotiate(headers: &HeaderMap) -> As {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The first acceptable type wins, as in kube-apiserver.
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("as=Table") {
            return As::Table;
        }
        if p.contains("as=PartialObjectMetadata") {
            return As::PartialMetadata;
        }
        if p.starts_with("application/json") || p.starts_with("*/*") {
            return As::Object;
        }
    }
    As::Object
}

/// Decodes a request body by its content type, within the limits of [`crate::limits`]
/// (nesting depth checked before parsing; large bodies parsed off the async workers).
async fn decode_body(headers: &HeaderMap, body: Bytes) -> ApiResult<Value> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if body.is_empty() {
        return Ok(Value::Null);
    }
    let format =
        if ct.starts_with("application/yaml") || ct.starts_with("application/apply-patch+yaml") {
            Format::Yaml
        } else if ct.starts_with("application/vnd.kubernetes.protobuf") {
            let v = crate::proto::decode(&body).map_err(ApiError::unsupported_media_type)?;
            crate::limits::check_object(&v).map_err(|e| ApiError::bad_request(e.to_string()))?;
            return Ok(v);
        } else {
            Format::Json
        };
    let head = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    crate::limits::decode(body, format)
        .await
        .map_err(|e| e.into_api(|| format!("Object 'Kind' is missing in '{head}': ")))
}

fn partial_metadata(v: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": v["metadata"]})
}

fn column_defs(def: &ResourceDef) -> Vec<Value> {
    let mut cols = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    for c in &def.columns {
        cols.push(json!({"name": c.name, "type": c.ty, "format": "", "description": c.description, "priority": c.priority}));
    }
    if !def.columns.iter().any(|c| c.name == "Age") {
        cols.push(json!({"name": "Age", "type": "date", "format": "", "description": "CreationTimestamp", "priority": 0}));
    }
    cols
}

/// kube-apiserver's `duration.HumanDuration`, as table cells of type `date` show it.
pub fn human_age(ts: &str) -> String {
    let Ok(t) = ts.parse::<k8s_openapi::jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (k8s_openapi::jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", secs % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        format!("{}y{}d", d / 365, d % 365)
    } else {
        format!("{}y", d / 365)
    }
}

fn table_row(def: &ResourceDef, v: &Value, include: &str) -> Value {
    let mut cells = vec![v["metadata"]["name"].clone()];
    for c in &def.columns {
        let cell = jsonpath::cell(v, &c.json_path);
        cells.push(match (c.ty.as_str(), cell) {
            (_, Value::Null) => json!("<none>"),
            ("date", Value::String(ts)) => json!(human_age(&ts)),
            ("string", Value::Object(m)) => json!(m.len()),
            ("string", Value::Array(a)) => json!(a
                .iter()
                .map(|x| x
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string()))
                .collect::<Vec<_>>()
                .join(",")),
            (_, other) => other,
        });
    }
    if !def.columns.iter().any(|c| c.name == "Age") {
        cells.push(json!(human_age(
            v["metadata"]["creationTimestamp"].as_str().unwrap_or("")
        )));
    }
    let object = match include {
        "Object" => v.clone(),
        "None" => Value::Null,
        _ => partial_metadata(v),
    };
    json!({"cells": cells, "object": object})
}

fn table(def: &ResourceDef, items: &[Value], rv: &str, cont: Option<&str>, include: &str) -> Value {
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": column_defs(def),
        "rows": items.iter().map(|v| table_row(def, v, include)).collect::<Vec<_>>(),
    })
}

/// A resolved resource path.
struct Target<'a> {
    def: &'a ResourceDef,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn resolve<'a>(
    reg: &'a crate::registry::Registry,
    group: &str,
    version: &str,
    segs: &[&str],
) -> ApiResult<Target<'a>> {
    let nf = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let find = |plural: &str| reg.find(group, version, plural);
    match segs {
        ["namespaces", ns, plural, rest @ ..]
            if group.is_empty()
                && find("namespaces").is_some()
                && find(plural).is_some_and(|d| d.namespaced)
                || (!group.is_empty() && find(plural).is_some_and(|d| d.namespaced)) =>
        {
            let def = find(plural).ok_or_else(nf)?;
            match rest {
                [] => Ok(Target {
                    def,
                    namespace: Some(ns.to_string()),
                    name: None,
                    subresource: None,
                }),
                [name] => Ok(Target {
                    def,
                    namespace: Some(ns.to_string()),
                    name: Some(name.to_string()),
                    subresource: None,
                }),
                [name, sub] => Ok(Target {
                    def,
                    namespace: Some(ns.to_string()),
                    name: Some(name.to_string()),
                    subresource: Some(sub.to_string()),
                }),
                _ => Err(nf()),
            }
        }
        [plural, rest @ ..] => {
            let def = find(plural).ok_or_else(nf)?;
            match rest {
                [] => Ok(Target {
                    def,
                    namespace: None,
                    name: None,
                    subresource: None,
                }),
                [name] if !def.namespaced => Ok(Target {
                    def,
                    namespace: None,
                    name: Some(name.to_string()),
                    subresource: None,
                }),
                [name, sub] if !def.namespaced => Ok(Target {
                    def,
                    namespace: None,
                    name: Some(name.to_string()),
                    subresource: Some(sub.to_string()),
                }),
                _ => Err(nf()),
            }
        }
        _ => Err(nf()),
    }
}

pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let query = Query::parse(parts.uri.query());
    let headers = parts.headers.clone();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if let [v @ ("v1beta1" | "v1alpha1"), rest @ ..] = segs.as_slice() {
        if rest.first().is_some_and(|r| r.starts_with("upload")) {
            let handler = state.upload_proxy.read().clone();
            return match handler {
                Some(h) => {
                    let path = std::iter::once(*v)
                        .chain(rest.iter().copied())
                        .map(str::to_string)
                        .collect();
                    h.handle(method, path, query, headers, body).await
                }
                None => ApiError::new(503, "ServiceUnavailable", "the upload proxy is not running")
                    .into_response(),
            };
        }
    }
    if let ["api", EXPORT_GROUP, rest @ ..] = segs.as_slice() {
        let handler = state.export_server.read().clone();
        return match handler {
            Some(h) => {
                let path = rest.iter().map(|s| s.to_string()).collect();
                h.handle(method, path, query, headers, body).await
            }
            None => ApiError::new(
                503,
                "ServiceUnavailable",
                "the export server is not running",
            )
            .into_response(),
        };
    }
    let public = method == Method::GET
        && matches!(
            path.as_str(),
            "/version" | "/healthz" | "/livez" | "/readyz"
        );
    let Some(user) = (if public {
        Some(crate::auth::User {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        })
    } else {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| state.auth.authenticate(t.trim(), &state.api))
    }) else {
        return ApiError::unauthorized().into_response();
    };
    let user = match impersonate(&state, user, &headers) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let attrs = crate::rbac::Attributes::of(&method, &path, &segs, &query);
    let apply = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
    let mutating = !matches!(method, Method::GET | Method::HEAD);
    let resp = if public || state.api.allows(&user, &attrs) {
        crate::objects::REQUEST_USER
            .scope(
                user.clone(),
                serve(&state, &user, &method, &segs, query, headers, parts, body),
            )
            .await
    } else {
        attrs.forbidden(&user).into_response()
    };
    if mutating {
        if let Some(a) = &state.audit {
            a.record(&user, &attrs, resp.status().as_u16());
        }
    }
    crate::metrics::observe_request(
        &attrs,
        &segs,
        apply,
        resp.status().as_u16(),
        started.elapsed(),
    );
    tracing::debug!(%method, %path, user = %user.name, status = resp.status().as_u16(), "request");
    resp
}

/// `Impersonate-User` / `Impersonate-Group` (`kubectl --as`, `--as-group`): the request
/// acts as that user if the caller may `impersonate` the user and each group, as in
/// kube-apiserver.
fn impersonate(
    state: &AppState,
    caller: crate::auth::User,
    headers: &HeaderMap,
) -> ApiResult<crate::auth::User> {
    let Some(name) = headers
        .get("Impersonate-User")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(caller);
    };
    let groups: Vec<String> = headers
        .get_all("Impersonate-Group")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let check = |resource: &str, name: &str| {
        let a = crate::rbac::Attributes {
            verb: "impersonate".into(),
            resource_request: true,
            resource: resource.into(),
            name: name.into(),
            ..Default::default()
        };
        if state.api.allows(&caller, &a) {
            Ok(())
        } else {
            Err(a.forbidden(&caller))
        }
    };
    check("users", name)?;
    for g in &groups {
        check("groups", g)?;
    }
    let mut all = groups;
    all.push(crate::auth::AUTHENTICATED.into());
    Ok(crate::auth::User {
        name: name.to_string(),
        uid: String::new(),
        groups: all,
    })
}

/// Serves an authenticated, authorized request.
#[allow(clippy::too_many_arguments)]
async fn serve(
    state: &Arc<AppState>,
    user: &crate::auth::User,
    method: &Method,
    segs: &[&str],
    query: Query,
    headers: HeaderMap,
    parts: http::request::Parts,
    body: Body,
) -> Response {
    let method = method.clone();
    if let Some(kind) = review_kind(segs) {
        return review(state, user, kind, &method, segs, &headers, body)
            .await
            .unwrap_or_else(|e| e.into_response());
    }
    if let ["apis", g, v, rest @ ..] = segs {
        let aggregated = discovery::AGGREGATED
            .iter()
            .any(|(ag, av, _)| ag == g && av == v);
        if aggregated && !rest.is_empty() && !matches!(rest, ["version"] | ["healthz"]) {
            let handler = state.aggregated.read().get(*g).cloned();
            return match handler {
                Some(h) => {
                    let path = rest.iter().map(|s| s.to_string()).collect();
                    h.handle_request(path, query, Request::from_parts(parts, body))
                        .await
                }
                None => ApiError::new(
                    503,
                    "ServiceUnavailable",
                    format!("the {g} API is not running"),
                )
                .into_response(),
            };
        }
    }
    let started = std::time::Instant::now();
    let mut resp = match dispatch(state, &method, segs, &query, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    // The unread rest of an oversize body makes the connection unusable: close it, so the
    // client does not send its next request into it.
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    tracing::trace!(
        elapsed_us = started.elapsed().as_micros() as u64,
        "dispatched"
    );
    resp
}

/// Which create-only resource a path names: the access reviews (`kubectl auth can-i`) and
/// TokenRequest (`kubectl create token`), answered from the caller's identity and the RBAC
/// policy rather than stored.
fn review_kind(segs: &[&str]) -> Option<&'static str> {
    match segs {
        ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"] => {
            Some("SelfSubjectAccessReview")
        }
        ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"] => {
            Some("SubjectAccessReview")
        }
        ["apis", "authorization.k8s.io", "v1", "selfsubjectrulesreviews"] => {
            Some("SelfSubjectRulesReview")
        }
        ["api", "v1", "namespaces", _, "serviceaccounts", _, "token"] => Some("TokenRequest"),
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] => Some("TokenReview"),
        _ => None,
    }
}

async fn review(
    state: &AppState,
    user: &crate::auth::User,
    kind: &str,
    method: &Method,
    segs: &[&str],
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    if method != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {kind}; use POST"
        )));
    }
    let mut obj = decode_body(headers, read_body(body).await?).await?;
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body must be a {kind} object"
        )));
    }
    let api = &state.api;
    match kind {
        "SelfSubjectAccessReview" | "SubjectAccessReview" => {
            let spec = &obj["spec"];
            let subject = if kind == "SubjectAccessReview" {
                crate::auth::User {
                    name: spec["user"].as_str().unwrap_or("").to_string(),
                    uid: spec["uid"].as_str().unwrap_or("").to_string(),
                    groups: spec["groups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|g| g.as_str().map(str::to_string))
                        .collect(),
                }
            } else {
                user.clone()
            };
            if spec["resourceAttributes"].is_null() && spec["nonResourceAttributes"].is_null() {
                return Err(ApiError::invalid(
                    kind,
                    "authorization.k8s.io",
                    "",
                    &format!("{kind}.authorization.k8s.io \"\" is invalid: "),
                    &[kubevirt_api::FieldError::invalid(
                        "spec.resourceAttributes",
                        "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
                    )],
                ));
            }
            let attrs = crate::rbac::review_attributes(spec);
            let allowed = api.allows(&subject, &attrs);
            obj["apiVersion"] = json!("authorization.k8s.io/v1");
            obj["kind"] = json!(kind);
            obj["status"] = if allowed {
                json!({"allowed": true, "reason": "allowed by RBAC"})
            } else {
                json!({"allowed": false})
            };
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        "TokenReview" => {
            // kube-apiserver's `tokenreview` storage: an empty token is a bad request; any
            // other answer is 201 with `status.authenticated`.
            let token = obj["spec"]["token"].as_str().unwrap_or("").to_string();
            if token.is_empty() {
                return Err(ApiError::bad_request(
                    "token is required for TokenReview in authentication",
                ));
            }
            let audiences: Vec<Value> = obj["spec"]["audiences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            obj["apiVersion"] = json!("authentication.k8s.io/v1");
            obj["kind"] = json!(kind);
            obj["status"] = match state.auth.authenticate(&token, api) {
                Some(u) => {
                    let audiences = if audiences.is_empty() {
                        vec![json!(crate::auth::ISSUER)]
                    } else {
                        audiences
                    };
                    json!({"authenticated": true, "user": u.info(), "audiences": audiences})
                }
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        "SelfSubjectRulesReview" => {
            let ns = obj["spec"]["namespace"].as_str().unwrap_or("").to_string();
            let (resource, non_resource) = api.rules_for(user, &ns);
            obj["apiVersion"] = json!("authorization.k8s.io/v1");
            obj["kind"] = json!(kind);
            obj["status"] = json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false});
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        _ => {
            let (ns, name) = match segs {
                [_, _, _, ns, _, name, _] => (*ns, *name),
                _ => return Err(ApiError::bad_request("malformed TokenRequest path")),
            };
            let sa = api
                .store
                .get(&crate::store::Key::new("", "serviceaccounts", ns, name))
                .ok_or_else(|| ApiError::not_found("serviceaccounts", "", name))?;
            let uid = sa.value()["metadata"]["uid"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let audiences: Vec<String> = obj["spec"]["audiences"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let seconds = obj["spec"]["expirationSeconds"]
                .as_i64()
                .unwrap_or(crate::auth::DEFAULT_TOKEN_SECONDS);
            if seconds < 600 {
                return Err(ApiError::invalid(
                    "TokenRequest",
                    "authentication.k8s.io",
                    name,
                    &format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: "),
                    &[kubevirt_api::FieldError::invalid(
                        "spec.expirationSeconds",
                        format!("Invalid value: {seconds}: may not specify a duration less than 10 minutes"),
                    )],
                ));
            }
            let (token, exp) = state.auth.issue(ns, name, &uid, &audiences, seconds);
            let expires = k8s_openapi::jiff::Timestamp::from_second(exp)
                .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_default();
            obj["apiVersion"] = json!("authentication.k8s.io/v1");
            obj["kind"] = json!("TokenRequest");
            obj["metadata"] =
                json!({"name": name, "namespace": ns, "creationTimestamp": crate::objects::now()});
            obj["spec"]["expirationSeconds"] = json!(seconds.min(crate::auth::MAX_TOKEN_SECONDS));
            obj["spec"]["audiences"] = json!(if audiences.is_empty() {
                vec![crate::auth::ISSUER.to_string()]
            } else {
                audiences
            });
            obj["status"] = json!({"token": token, "expirationTimestamp": expires});
            Ok(json_response(StatusCode::CREATED, &obj))
        }
    }
}

/// events.k8s.io Events are also kept as core/v1 Events (see [`crate::events`]).
async fn mirror_event(api: &ApiServer, def: &ResourceDef, q: &Query, w: &Written) {
    if def.group == "events.k8s.io" && !q.dry_run() {
        crate::events::mirror(api, &w.value()).await;
    }
}

async fn read_body(body: Body) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than {MAX_BODY} bytes"),
        )
    })
}

async fn dispatch(
    state: &AppState,
    method: &Method,
    segs: &[&str],
    q: &Query,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let api = &state.api;
    let registry = api.registry();
    let reg = &*registry;
    if method == Method::GET {
        match segs {
            ["version"] | ["apis", "subresources.kubevirt.io", "v1", "version"] => {
                return Ok(json_response(StatusCode::OK, &discovery::version()))
            }
            ["metrics"] => return crate::metrics::serve().await,
            ["healthz"]
            | ["livez"]
            | ["readyz"]
            | ["apis", "subresources.kubevirt.io", "v1", "healthz"] => {
                return Ok((StatusCode::OK, "ok").into_response())
            }
            ["api"] => {
                return Ok(json_response(
                    StatusCode::OK,
                    &discovery::api_versions(&state.address),
                ))
            }
            ["apis"] => return Ok(json_response(StatusCode::OK, &discovery::group_list(reg))),
            ["api", "v1"] => {
                return discovery::resource_list(reg, "", "v1")
                    .map(|v| json_response(StatusCode::OK, &v))
                    .ok_or_else(|| ApiError::new(404, "NotFound", "not found"))
            }
            ["apis", g] => {
                return discovery::group(reg, g)
                    .map(|v| json_response(StatusCode::OK, &v))
                    .ok_or_else(|| {
                        ApiError::new(
                            404,
                            "NotFound",
                            "the server could not find the requested resource",
                        )
                    })
            }
            ["apis", g, v] => {
                return discovery::resource_list(reg, g, v)
                    .map(|v| json_response(StatusCode::OK, &v))
                    .ok_or_else(|| {
                        ApiError::new(
                            404,
                            "NotFound",
                            "the server could not find the requested resource",
                        )
                    })
            }
            ["openapi", "v3", rest @ ..] => {
                let docs = reg.openapi.get_or_init(|| discovery::openapi_all(reg));
                let key = rest.join("/");
                return docs
                    .get(&key)
                    .map(|v| bytes_response(StatusCode::OK, v.clone()))
                    .ok_or_else(|| ApiError::new(404, "NotFound", "not found"));
            }
            ["openapi", "v2"] => {
                let served = reg.openapi_v2.get_or_init(|| crate::openapi_v2::build(reg));
                return Ok(crate::openapi_v2::respond(served, headers));
            }
            ["openapi", ..] => return Err(ApiError::new(404, "NotFound", "not found")),
            _ => {}
        }
    }
    let (group, version, rest) = match segs {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ))
        }
    };
    let t = resolve(reg, group, version, rest)?;
    let def = t.def;
    let ns = t.namespace.clone().unwrap_or_default();
    let ns = if def.namespaced && ns.is_empty() && t.name.is_some() {
        "default".to_string()
    } else {
        ns
    };
    if def.group.is_empty() && def.plural == "pods" && t.subresource.as_deref() == Some("eviction")
    {
        return match &t.name {
            Some(name) if method == Method::POST => {
                evict(state, def, &ns, name, headers, body, q).await
            }
            _ => Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on pods/eviction; use POST"
            ))),
        };
    }
    if let Some(sub) = &t.subresource {
        let ok = (sub == "status" && def.status_subresource)
            || (sub == "scale" && def.scale.is_some())
            || (def.kind == "Namespace" && sub == "finalize");
        if !ok {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("{} has no subresource {sub}", def.qualified()),
            ));
        }
    }
    let sub = t
        .subresource
        .as_deref()
        .map(|s| if s == "finalize" { "status" } else { s });
    let as_ = negotiate(headers);
    let include = q.get("includeObject").unwrap_or("Metadata").to_string();
    if let (Some("scale"), Some(name), Some(paths)) = (sub, &t.name, &def.scale) {
        return scale(api, def, paths, &ns, name, method.clone(), headers, body, q).await;
    }
    match (method.clone(), &t.name) {
        (Method::GET, None) if q.flag("watch") => {
            watch(api.clone(), def, t.namespace.as_deref(), q, as_)
        }
        (Method::GET, None) => {
            let list = api.list(def, t.namespace.as_deref(), q)?;
            Ok(list_response(def, &list, as_, &include))
        }
        (Method::GET, Some(name)) => {
            let o = api.get(def, &ns, name)?;
            Ok(match as_ {
                As::Table => json_response(
                    StatusCode::OK,
                    &table(def, &[o.value()], &o.rv.to_string(), None, &include),
                ),
                As::PartialMetadata => json_response(StatusCode::OK, &partial_metadata(&o.value())),
                As::Object => bytes_response(StatusCode::OK, ApiServer::object_json(def, &o)),
            })
        }
        (Method::POST, None) => {
            let ns = if def.namespaced {
                t.namespace.clone().ok_or_else(|| {
                    ApiError::method_not_allowed("create needs a namespace in the path")
                })?
            } else {
                String::new()
            };
            let body = decode_body(headers, read_body(body).await?).await?;
            let w = api.create(def, &ns, body, q).await?;
            mirror_event(api, def, q, &w).await;
            Ok(written(w, StatusCode::CREATED, as_, def))
        }
        (Method::PUT, Some(name)) => {
            let body = decode_body(headers, read_body(body).await?).await?;
            let w = api.update(def, &ns, name, body, q, sub).await?;
            mirror_event(api, def, q, &w).await;
            Ok(written(w, StatusCode::OK, as_, def))
        }
        (Method::PATCH, Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let ty = PatchType::from_content_type(ct).ok_or_else(|| {
                ApiError::unsupported_media_type(format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"))
            })?;
            let bytes = read_body(body).await?;
            let w = api.patch(def, &ns, name, ty, &bytes, q, sub).await?;
            mirror_event(api, def, q, &w).await;
            let code = if w.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(written(w, code, as_, def))
        }
        (Method::DELETE, Some(name)) => {
            let options = decode_body(headers, read_body(body).await?).await?;
            let v = api.delete(def, &ns, name, &options, q).await?;
            Ok(json_response(StatusCode::OK, &v))
        }
        (Method::DELETE, None) => {
            let v = api
                .delete_collection(def, t.namespace.as_deref(), q)
                .await?;
            Ok(json_response(StatusCode::OK, &v))
        }
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported on this path"
        ))),
    }
}

/// `POST /api/v1/namespaces/NS/pods/NAME/eviction` (`policy/v1` or `policy/v1beta1`
/// Eviction), as kube-apiserver's eviction REST: the body must name the Pod of the URL; virt-api
/// ([`EvictionAdmitter`]) may refuse it, as KubeVirt's webhook does for launcher Pods; else the
/// Pod is deleted with the Eviction's `deleteOptions` and the answer is a 201 Success Status.
/// There are no PodDisruptionBudgets here to consult.
async fn evict(
    state: &AppState,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    body: Body,
    q: &Query,
) -> ApiResult<Response> {
    let eviction = decode_body(headers, read_body(body).await?).await?;
    let api_version = eviction["apiVersion"].as_str().unwrap_or("");
    let kind = eviction["kind"].as_str().unwrap_or("");
    if kind != "Eviction" || !matches!(api_version, "policy/v1" | "policy/v1beta1") {
        return Err(ApiError::bad_request(format!(
            "the body must be a policy/v1 Eviction (got apiVersion {api_version:?}, kind {kind:?})"
        )));
    }
    if eviction["metadata"]["name"].as_str() != Some(name) {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    if eviction["metadata"]["namespace"]
        .as_str()
        .is_some_and(|n| !n.is_empty() && n != ns)
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let api = &state.api;
    let pod = api.get(def, ns, name)?;
    let options = match &eviction["deleteOptions"] {
        Value::Object(o) => Value::Object(o.clone()),
        _ => Value::Null,
    };
    let dry_run = q.dry_run()
        || options["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    let admitter = state.eviction.read().clone();
    if let Some(admitter) = admitter {
        if let EvictionVerdict::Deny {
            webhook,
            code,
            message,
        } = admitter.admit(&pod.value(), &eviction, dry_run).await
        {
            // As kube-apiserver relays a webhook's denial: its code, its message after
            // "admission webhook ... denied the request".
            let reason = match code {
                429 => "TooManyRequests",
                403 => "Forbidden",
                400 => "BadRequest",
                _ => "InternalError",
            };
            return Err(ApiError::new(
                code.max(400),
                reason,
                format!("admission webhook \"{webhook}\" denied the request: {message}"),
            ));
        }
    }
    let mut q = q.clone();
    if dry_run {
        q.0.insert("dryRun".into(), "All".into());
    }
    api.delete(def, ns, name, &options, &q).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

fn written(w: Written, code: StatusCode, as_: As, def: &ResourceDef) -> Response {
    let response = match as_ {
        As::Table => {
            let object = w.value().into_owned();
            let rv = object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            json_response(
                code,
                &table(def, std::slice::from_ref(&object), &rv, None, "Metadata"),
            )
        }
        _ => bytes_response(code, w.json()),
    };
    with_warnings(response, &w.warnings)
}

fn list_response(def: &ResourceDef, list: &ListResult, as_: As, include: &str) -> Response {
    match as_ {
        As::Object => bytes_response(StatusCode::OK, ApiServer::list_body(def, list)),
        As::Table => {
            let items: Vec<Value> = list.items.iter().map(|o| o.value()).collect();
            json_response(
                StatusCode::OK,
                &table(
                    def,
                    &items,
                    &list.rv.to_string(),
                    list.continue_token.as_deref(),
                    include,
                ),
            )
        }
        As::PartialMetadata => {
            let items: Vec<Value> = list
                .items
                .iter()
                .map(|o| partial_metadata(&o.value()))
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                        "metadata": {"resourceVersion": list.rv.to_string()}, "items": items}),
            )
        }
    }
}

fn event_line(kind: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

fn render_event(def: &ResourceDef, kind: EventType, obj: &Stored, as_: As) -> Bytes {
    match as_ {
        As::Object => event_line(kind.as_str(), &ApiServer::object_json(def, obj)),
        As::PartialMetadata => event_line(
            kind.as_str(),
            &serde_json::to_vec(&partial_metadata(&obj.value())).unwrap_or_default(),
        ),
        As::Table => {
            let t = table(def, &[obj.value()], &obj.rv.to_string(), None, "Metadata");
            event_line(kind.as_str(), &serde_json::to_vec(&t).unwrap_or_default())
        }
    }
}

fn watch(
    api: Arc<ApiServer>,
    def: &ResourceDef,
    ns: Option<&str>,
    q: &Query,
    as_: As,
) -> ApiResult<Response> {
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let selectable: Vec<&str> = def.selectable.iter().map(String::as_str).collect();
    let fields = FieldSelector::parse_with(q.get("fieldSelector").unwrap_or(""), &selectable)
        .map_err(ApiError::bad_request)?;
    let prefix = Key::prefix(
        &def.group,
        &def.plural,
        if def.namespaced { ns } else { None },
    );
    let send_initial = q.flag("sendInitialEvents");
    let since = match q.get("resourceVersion") {
        None | Some("0") if !send_initial => None,
        None | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let since = if send_initial { None } else { since };
    let bookmarks = q.flag("allowWatchBookmarks");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let api_version = def.api_version();
    let kind = def.kind.clone();
    let bookmark = move |rv: u64, initial_end: bool| -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &serde_json::to_vec(
                &json!({"apiVersion": api_version, "kind": kind, "metadata": meta}),
            )
            .unwrap_or_default(),
        )
    };
    let def_key = (def.group.clone(), def.version.clone(), def.plural.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    match api.store.watch(&prefix, since) {
        Err(_) => {
            // Too old: answered in-stream, as kube-apiserver does, so watchers relist.
            let status =
                ApiError::expired(format!("too old resource version: {} ", since.unwrap_or(0)))
                    .to_status();
            let line = event_line("ERROR", &serde_json::to_vec(&status).unwrap_or_default());
            return Ok(stream_response(
                futures::stream::once(async move { line }).boxed(),
            ));
        }
        Ok(start) => {
            tokio::spawn(async move {
                let reg = api.registry();
                let Some(def) = reg.find(&def_key.0, &def_key.1, &def_key.2) else {
                    return;
                };
                let mut last_rv = start.rv;
                for e in &start.initial {
                    let shown = if since.is_none() {
                        (labels.matches(&e.object.labels) && fields.matches_stored(&e.object))
                            .then_some(EventType::Added)
                    } else {
                        filter_event(e.kind, &e.object, e.prev_labels.as_ref(), &labels, &fields)
                    };
                    if let Some(k) = shown {
                        if tx.send(render_event(def, k, &e.object, as_)).await.is_err() {
                            return;
                        }
                    }
                }
                if send_initial && tx.send(bookmark(start.rv, true)).await.is_err() {
                    return;
                }
                let mut rx = start.rx;
                let deadline = tokio::time::sleep(timeout);
                tokio::pin!(deadline);
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = &mut deadline => return,
                        _ = tick.tick(), if bookmarks => {
                            if tx.send(bookmark(last_rv, false)).await.is_err() { return; }
                        }
                        _ = tx.closed() => return,
                        ev = rx.recv() => match ev {
                            Ok(e) => {
                                if e.object.rv <= start.rv || !e.object.key.as_str().starts_with(&prefix) {
                                    continue;
                                }
                                last_rv = e.object.rv;
                                if let Some(k) = filter_event(e.kind, &e.object, e.prev_labels.as_ref(), &labels, &fields) {
                                    if tx.send(render_event(def, k, &e.object, as_)).await.is_err() { return; }
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                let status = ApiError::expired("the watch fell behind; list again").to_status();
                                let _ = tx.send(event_line("ERROR", &serde_json::to_vec(&status).unwrap_or_default())).await;
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                }
            });
        }
    }
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).boxed();
    Ok(stream_response(stream))
}

fn stream_response(stream: futures::stream::BoxStream<'static, Bytes>) -> Response {
    let body = Body::from_stream(stream.map(Ok::<_, std::convert::Infallible>));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .unwrap_or_else(|_| ApiError::internal("building the watch response").into_response())
}

/// The `autoscaling/v1` Scale of a custom resource, read through its CRD's scale paths.
fn scale_of(paths: &crate::registry::ScalePaths, v: &Value) -> Value {
    let at = |p: &str| {
        p.trim_start_matches('.')
            .split('.')
            .try_fold(v, |cur, k| cur.get(k))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut status = json!({"replicas": at(&paths.status_replicas).as_i64().unwrap_or(0)});
    if let Some(sel) = paths.label_selector.as_deref().map(at) {
        if sel.is_string() {
            status["selector"] = sel;
        }
    }
    let m = &v["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                     "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": at(&paths.spec_replicas).as_i64().unwrap_or(0)},
        "status": status,
    })
}

/// `GET|PUT|PATCH .../{name}/scale` of a custom resource: the write sets the object's
/// `specReplicasPath` and goes through the object's own admission.
#[allow(clippy::too_many_arguments)]
async fn scale(
    api: &ApiServer,
    def: &ResourceDef,
    paths: &crate::registry::ScalePaths,
    ns: &str,
    name: &str,
    method: Method,
    headers: &HeaderMap,
    body: Body,
    q: &Query,
) -> ApiResult<Response> {
    let o = api.get(def, ns, name)?;
    let current = scale_of(paths, &o.value());
    let desired = match method {
        Method::GET => return Ok(json_response(StatusCode::OK, &current)),
        Method::PUT => decode_body(headers, read_body(body).await?).await?,
        Method::PATCH => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let patch: Value = serde_json::from_slice(&read_body(body).await?)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let mut doc = current.clone();
            match PatchType::from_content_type(ct) {
                Some(PatchType::Merge) => crate::patch::merge(&mut doc, &patch),
                Some(PatchType::Json) => crate::patch::json_patch(&mut doc, &patch)
                    .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?,
                _ => {
                    return Err(ApiError::unsupported_media_type(format!(
                        "the scale subresource accepts application/merge-patch+json and application/json-patch+json (got {ct:?})"
                    )))
                }
            }
            doc
        }
        m => {
            return Err(ApiError::method_not_allowed(format!(
                "{m} is not supported on the scale subresource"
            )))
        }
    };
    let replicas = desired["spec"]["replicas"]
        .as_i64()
        .filter(|r| *r >= 0 && *r <= i32::MAX as i64);
    let Some(replicas) = replicas else {
        return Err(ApiError::invalid(
            "Scale",
            "autoscaling",
            name,
            &format!("Scale.autoscaling \"{name}\" is invalid: "),
            &[kubevirt_api::FieldError::invalid(
                "spec.replicas",
                format!(
                    "Invalid value: {}: must be a non-negative 32-bit integer",
                    desired["spec"]["replicas"]
                ),
            )],
        ));
    };
    if let Some(rv) = desired["metadata"]["resourceVersion"].as_str() {
        if rv.parse::<u64>().ok() != Some(o.rv) {
            return Err(ApiError::conflict(&def.plural, &def.group, name));
        }
    }
    let mut obj = o.value();
    let mut cur = &mut obj;
    let segs: Vec<&str> = paths
        .spec_replicas
        .trim_start_matches('.')
        .split('.')
        .collect();
    for (i, seg) in segs.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        if i + 1 == segs.len() {
            cur[*seg] = json!(replicas);
            break;
        }
        cur = &mut cur[*seg];
    }
    obj["metadata"]["resourceVersion"] = json!(o.rv.to_string());
    let w = api.update(def, ns, name, obj, q, None).await?;
    Ok(with_warnings(
        json_response(StatusCode::OK, &scale_of(paths, &w.value())),
        &w.warnings,
    ))
}

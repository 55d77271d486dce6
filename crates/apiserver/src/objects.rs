//! Object semantics: create, get, list, update, patch, apply, delete, watch — what
//! kube-apiserver's generic registry does, over [`Store`].

use crate::error::{ApiError, ApiResult};
use crate::managed::{self, Schema};
use crate::patch::{self, PatchType};
use crate::registry::{Registry, ResourceDef};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Change, EventType, Key, Precondition, Store, StoreError, Stored};
use base64::Engine;
use bytes::Bytes;
use kubevirt_api::admission::{AdmitOptions, FieldValidation};
use kubevirt_api::CauseType;
use parking_lot::RwLock;
use serde_json::{json, Value};
use std::sync::Arc;

/// Query parameters of a request, as given (defined in `kubevirt_runtime::subresource`, which
/// the subresource handlers share).
pub use kubevirt_runtime::subresource::Query;

tokio::task_local! {
    /// The authenticated user of the request being served (set by the HTTP layer around
    /// each request), for the admitters that decide by user. Writes outside a request (the
    /// server's own bootstrap objects) have none and are trusted.
    pub static REQUEST_USER: crate::auth::User;
}

/// Admitters read other objects straight from the store.
struct StoreLookup<'a>(&'a Store);

impl kubevirt_api::admission::Lookup for StoreLookup<'_> {
    fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.0
            .get(&Key::new(group, plural, namespace, name))
            .map(|o| o.value())
    }

    fn list(&self, group: &str, plural: &str, namespace: &str) -> Vec<Value> {
        self.0
            .list(&Key::prefix(group, plural, Some(namespace)))
            .0
            .iter()
            .map(|o| o.value())
            .collect()
    }
}

/// The `fieldValidation` parameter of a write.
fn field_validation(q: &Query) -> ApiResult<FieldValidation> {
    match q.get("fieldValidation") {
        None | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation parameter unsupported: {other}"
        ))),
    }
}

/// The result of a write: the object and the warnings to send as `Warning` headers.
pub struct Written {
    object: WrittenObject,
    pub warnings: Vec<String>,
    pub created: bool,
}

/// A written object: as stored (its JSON is the response as it is, never parsed again
/// unless a caller needs the value), or a value (dry runs, deletions).
enum WrittenObject {
    Value(Value),
    Stored(Arc<Stored>),
}

impl Written {
    fn new(object: Value, warnings: Vec<String>, created: bool) -> Self {
        Self {
            object: WrittenObject::Value(object),
            warnings,
            created,
        }
    }

    fn stored(stored: Arc<Stored>, warnings: Vec<String>, created: bool) -> Self {
        Self {
            object: WrittenObject::Stored(stored),
            warnings,
            created,
        }
    }

    /// The object as a JSON value.
    pub fn value(&self) -> std::borrow::Cow<'_, Value> {
        match &self.object {
            WrittenObject::Value(v) => std::borrow::Cow::Borrowed(v),
            WrittenObject::Stored(s) => std::borrow::Cow::Owned(s.value()),
        }
    }

    /// The object's JSON, as a response body.
    pub fn json(&self) -> Bytes {
        match &self.object {
            WrittenObject::Value(v) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            WrittenObject::Stored(s) => s.json.clone(),
        }
    }

    fn set_value(&mut self, v: Value) {
        self.object = WrittenObject::Value(v);
    }
}

pub struct ListResult {
    pub items: Vec<Arc<Stored>>,
    pub rv: u64,
    pub continue_token: Option<String>,
    pub remaining: usize,
}

pub struct ApiServer {
    pub store: Arc<Store>,
    /// What is served: the built-in kinds and the user's CRDs, swapped as CRDs change.
    registry: RwLock<Arc<Registry>>,
    /// Defaulting/validation settings, from the `KubeVirt` resource.
    pub admission: RwLock<AdmitOptions>,
    /// Held by Service writes while they allocate addresses from the other Services.
    service_writes: tokio::sync::Mutex<()>,
    /// The RBAC policy, reloaded after a write of an RBAC object.
    rbac: crate::rbac::PolicyCache,
}

fn is_crd(def: &ResourceDef) -> bool {
    def.group == crate::crd::GROUP && def.plural == crate::crd::PLURAL
}

fn is_service(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.plural == "services"
}

pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn store_err(def: &ResourceDef, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AlreadyExists => ApiError::already_exists(&def.plural, &def.group, name),
        StoreError::NotFound => ApiError::not_found(&def.plural, &def.group, name),
        StoreError::Conflict => ApiError::conflict(&def.plural, &def.group, name),
        StoreError::Invalid(e) => limit_error(def, name, &e),
        other => ApiError::internal(other.to_string()),
    }
}

/// 422 Invalid for an object over a limit of [`crate::limits`].
fn limit_error(def: &ResourceDef, name: &str, e: &crate::limits::LimitError) -> ApiError {
    let prefix = if def.group.is_empty() {
        format!("{} \"{name}\" is invalid: ", def.kind)
    } else {
        format!("{}.{} \"{name}\" is invalid: ", def.kind, def.group)
    };
    ApiError::invalid(
        &def.kind,
        &def.group,
        name,
        &prefix,
        &[kubevirt_api::FieldError::invalid("", e.to_string())],
    )
}

/// The limits every object must satisfy to be stored, checked on the object as it would be
/// written (so also for dry runs).
fn check_limits(def: &ResourceDef, name: &str, obj: &Value) -> ApiResult<()> {
    crate::limits::check_object(obj).map_err(|e| limit_error(def, name, &e))
}

/// kube-apiserver's path segment name rule (RBAC objects), narrowed to printable ASCII:
/// never `.` or `..`, never `/` or `%`, at most 253 characters.
fn path_segment_problem(n: &str) -> Option<String> {
    match n {
        "." | ".." => Some(format!("may not be '{n}'")),
        _ if n.contains('/') => Some("may not contain '/'".into()),
        _ if n.contains('%') => Some("may not contain '%'".into()),
        _ if n.len() > 253 => Some("must be no more than 253 characters".into()),
        _ if !n.bytes().all(|b| b.is_ascii_graphic()) => {
            Some("must consist of printable ASCII characters other than space".into())
        }
        _ => None,
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Everything outside `metadata` (and `status`, when status is a subresource): a change here
/// bumps `metadata.generation`.
fn generation_relevant(v: &Value, status_subresource: bool) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
        if status_subresource {
            m.remove("status");
        }
    }
    v
}

/// Two versions of an object that differ only in resourceVersion and managedFields times.
fn same_object(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            if let Some(Value::Array(mf)) = m.get_mut("managedFields") {
                for e in mf {
                    if let Some(e) = e.as_object_mut() {
                        e.remove("time");
                    }
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

impl ApiServer {
    pub fn new(store: Arc<Store>) -> ApiServer {
        ApiServer {
            store,
            registry: RwLock::new(Arc::new(Registry::new())),
            admission: RwLock::new(AdmitOptions::default()),
            service_writes: tokio::sync::Mutex::new(()),
            rbac: Default::default(),
        }
    }

    /// The resources served now (a snapshot: a CRD write swaps in a new registry).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.read().clone()
    }

    /// Serves the stored user CRDs: a new registry with their resources. A deleted CRD's
    /// objects are deleted by its cleanup (`gc`) before the CRD goes; any still stored when it
    /// is gone (its cleanup finalizer stripped by hand, a create that raced the cleanup) are
    /// deleted here.
    pub async fn refresh_crds(&self) {
        let base = self.registry();
        let (stored, _) =
            self.store
                .list(&Key::prefix(crate::crd::GROUP, crate::crd::PLURAL, None));
        let builtin = |g: &str, p: &str| {
            base.find_any_version(g, p)
                .is_some_and(|d| matches!(d.admission, crate::registry::Admission::Builtin(_)))
        };
        let served: Vec<crate::crd::ServedCrd> = stored
            .iter()
            .map(|o| o.value())
            .filter(|v| {
                !builtin(
                    v["spec"]["group"].as_str().unwrap_or(""),
                    v["spec"]["names"]["plural"].as_str().unwrap_or(""),
                )
            })
            .filter_map(|v| crate::crd::served(&v))
            .collect();
        // Resources whose CRD is gone (not merely unserved while its names conflict).
        let kept: Vec<(String, String)> = stored
            .iter()
            .map(|o| o.value())
            .map(|v| {
                (
                    v["spec"]["group"].as_str().unwrap_or("").to_string(),
                    v["spec"]["names"]["plural"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect();
        let gone: Vec<(String, String)> = base
            .resources
            .iter()
            .filter(|r| matches!(r.admission, crate::registry::Admission::Schema(_)))
            .map(|r| (r.group.clone(), r.plural.clone()))
            .filter(|gp| !kept.contains(gp))
            .collect();
        let next = Arc::new(base.with_crds(&served));
        *self.registry.write() = next;
        for (group, plural) in gone {
            let (objects, _) = self.store.list(&Key::prefix(&group, &plural, None));
            tracing::info!(%group, %plural, objects = objects.len(), "CRD deleted: deleting its objects");
            for o in objects {
                if let Err(e) = self
                    .store
                    .write(o.key.clone(), Change::Delete, Precondition::Exists)
                    .await
                {
                    tracing::warn!(key = ?o.key, error = %e, "deleting an object of a deleted CRD");
                }
            }
        }
    }

    /// After a write: serve what a CRD change changed; reload RBAC after an RBAC change.
    async fn crd_written(&self, def: &ResourceDef) {
        if def.group == crate::crd::GROUP && def.plural == crate::crd::PLURAL {
            self.refresh_crds().await;
        }
        if def.group == crate::rbac::GROUP {
            self.rbac.invalidate();
        }
    }

    /// Whether `user` may do what `a` describes (members of `system:masters` may do
    /// anything, as in kube-apiserver).
    pub fn allows(&self, user: &crate::auth::User, a: &crate::rbac::Attributes) -> bool {
        user.groups.iter().any(|g| g == crate::auth::MASTERS)
            || self.rbac.get(&self.store).allows(user, a)
    }

    /// The rules that apply to `user` in `namespace` (SelfSubjectRulesReview).
    pub fn rules_for(&self, user: &crate::auth::User, namespace: &str) -> (Vec<Value>, Vec<Value>) {
        if user.groups.iter().any(|g| g == crate::auth::MASTERS) {
            return (
                vec![json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})],
                vec![json!({"verbs": ["*"], "nonResourceURLs": ["*"]})],
            );
        }
        self.rbac.get(&self.store).rules_for(user, namespace)
    }

    pub fn key(def: &ResourceDef, ns: &str, name: &str) -> Key {
        Key::new(
            &def.group,
            &def.plural,
            if def.namespaced { ns } else { "" },
            name,
        )
    }

    fn schema(def: &ResourceDef) -> Schema<'_> {
        Schema::new(&def.lists)
    }

    pub fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> ApiResult<Arc<Stored>> {
        self.store
            .get(&Self::key(def, ns, name))
            .ok_or_else(|| ApiError::not_found(&def.plural, &def.group, name))
    }

    /// Decode, prune or refuse unknown fields, default and validate an object of our kinds.
    fn admit(
        &self,
        def: &ResourceDef,
        value: Value,
        old: Option<&Value>,
        subresource: Option<&str>,
        q: &Query,
    ) -> ApiResult<(Value, Vec<String>)> {
        let mut opts = self.admission.read().clone();
        opts.field_validation = field_validation(q)?;
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let prefix = if def.group.is_empty() {
            format!("{} \"{name}\" is invalid: ", def.kind)
        } else {
            format!("{}.{} \"{name}\" is invalid: ", def.kind, def.group)
        };
        let kind_info = match &def.admission {
            crate::registry::Admission::Builtin(k) => *k,
            crate::registry::Admission::Schema(schema) => {
                let mut value = value;
                let outcome = schema.admit(&mut value, old);
                if !outcome.errors.is_empty() {
                    return Err(ApiError::invalid(
                        &def.kind,
                        &def.group,
                        &name,
                        &prefix,
                        &outcome.errors,
                    ));
                }
                let unknown: Vec<String> = outcome
                    .pruned
                    .iter()
                    .map(|p| format!("unknown field \"{}\"", p.trim_start_matches('.')))
                    .collect();
                return match opts.field_validation {
                    FieldValidation::Strict if !unknown.is_empty() => Err(ApiError::bad_request(
                        format!("strict decoding error: {}", unknown.join(", ")),
                    )),
                    FieldValidation::Warn => Ok((value, unknown)),
                    _ => Ok((value, Vec::new())),
                };
            }
        };
        let is_crd = def.group == crate::crd::GROUP && def.plural == crate::crd::PLURAL;
        let user = REQUEST_USER
            .try_with(|u| kubevirt_api::UserInfo {
                username: u.name.clone(),
                groups: u.groups.clone(),
            })
            .ok();
        let lookup = StoreLookup(&self.store);
        let req = kubevirt_api::Request {
            operation: if old.is_some() {
                kubevirt_api::Operation::Update
            } else {
                kubevirt_api::Operation::Create
            },
            old,
            user: user.as_ref(),
            subresource,
            lookup: Some(&lookup),
        };
        match kind_info.admit_request(&value, &req, &opts) {
            Ok(mut a) if is_crd => {
                let errs = crate::crd::check(&a.value, old);
                if !errs.is_empty() {
                    return Err(ApiError::invalid(
                        &def.kind, &def.group, &name, &prefix, &errs,
                    ));
                }
                crate::crd::set_status(&mut a.value, old, &self.registry());
                Ok((a.value, a.warnings))
            }
            Ok(a) => Ok((a.value, a.warnings)),
            Err(errs) => {
                if errs
                    .iter()
                    .all(|e| e.reason == CauseType::FieldValueUnknown)
                {
                    let msg = errs
                        .iter()
                        .map(|e| e.message.clone())
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {msg}"
                    )));
                }
                let type_error = errs
                    .iter()
                    .any(|e| e.reason == CauseType::FieldValueTypeInvalid);
                if def.group.ends_with("kubevirt.io") && !type_error {
                    // As kube-apiserver relays a KubeVirt/CDI webhook denial: the webhook's
                    // causes, without kind and name (kubectl prints "The request is invalid").
                    let webhook = format!(
                        "{}-validator.{}",
                        def.plural,
                        if def.group.starts_with("cdi.") {
                            "cdi.kubevirt.io"
                        } else {
                            "kubevirt.io"
                        }
                    );
                    let mut e = ApiError::invalid(
                        &def.kind,
                        &def.group,
                        &name,
                        &format!("admission webhook \"{webhook}\" denied the request: "),
                        &errs,
                    );
                    if let Some(d) = e.details.as_mut().and_then(Value::as_object_mut) {
                        d.remove("kind");
                        d.remove("name");
                        d.remove("group");
                    }
                    return Err(e);
                }
                Err(ApiError::invalid(
                    &def.kind, &def.group, &name, &prefix, &errs,
                ))
            }
        }
    }

    fn check_namespace(&self, def: &ResourceDef, ns: &str) -> ApiResult<()> {
        if !def.namespaced {
            return Ok(());
        }
        let reg = self.registry();
        let ns_def = reg
            .find("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("namespaces are not registered"))?;
        match self.store.get(&Self::key(ns_def, "", ns)) {
            None => Err(ApiError::not_found("namespaces", "", ns)),
            Some(n) if n.value()["metadata"]["deletionTimestamp"].is_string() => Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    def.qualified(),
                    "",
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// A user CRD being deleted refuses new objects. Read from the store, not from `def`
    /// (a registry snapshot that may predate the delete); a create that passes this just
    /// before the delete lands is removed by the cleanup, which looks at the store again.
    fn check_crd_not_terminating(&self, def: &ResourceDef) -> ApiResult<()> {
        if !matches!(def.admission, crate::registry::Admission::Schema(_)) {
            return Ok(());
        }
        let key = Key::new(
            crate::crd::GROUP,
            crate::crd::PLURAL,
            "",
            &format!("{}.{}", def.plural, def.group),
        );
        match self.store.get(&key) {
            Some(crd) if crd.deleting => Err(crate::crd::create_refused(&def.group, &def.plural)),
            _ => Ok(()),
        }
    }

    pub async fn create(
        &self,
        def: &ResourceDef,
        ns: &str,
        mut body: Value,
        q: &Query,
    ) -> ApiResult<Written> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let body_ns = body["metadata"]["namespace"].as_str().unwrap_or("");
        if def.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if let Some(av) = body["apiVersion"].as_str() {
            if av != def.api_version() || body["kind"].as_str().is_some_and(|k| k != def.kind) {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({})",
                    def.api_version()
                )));
            }
        }
        body["apiVersion"] = json!(def.api_version());
        body["kind"] = json!(def.kind);
        if !body["metadata"].is_object() {
            body["metadata"] = json!({});
        }
        let mut name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
        if name.is_empty() {
            match body["metadata"]["generateName"].as_str() {
                // kube-apiserver's SimpleNameGenerator: at most 58 characters of the prefix,
                // so a generated name fits 63 (a long VMI's `virt-launcher-<vmi>-`).
                Some(g) if !g.is_empty() => {
                    let base: String = g.chars().take(58).collect();
                    name = format!("{base}{}", random_suffix())
                }
                _ => {
                    return Err(ApiError::invalid(
                        &def.kind,
                        &def.group,
                        "",
                        &format!("{} \"\" is invalid: ", def.kind),
                        &[kubevirt_api::FieldError::required(
                            "metadata.name",
                            "name or generateName is required",
                        )],
                    ))
                }
            }
        }
        let name_problem = if def.group == crate::rbac::GROUP {
            // RBAC objects take path-segment names (`system:basic-user`).
            path_segment_problem(&name)
        } else {
            // Kubernetes' rule and words, from the one owner of name rules: every dot-separated
            // part a label (`a..b` and `a.-b` are refused), at most 253 characters.
            kubevirt_api::names::dns1123_subdomain(&name)
        };
        if let Some(why) = name_problem {
            return Err(ApiError::invalid(
                &def.kind,
                &def.group,
                &name,
                &format!("{} \"{name}\" is invalid: ", def.kind),
                &[kubevirt_api::FieldError::invalid(
                    "metadata.name",
                    format!("Invalid value: {name:?}: {why}"),
                )],
            ));
        }
        self.check_namespace(def, ns)?;
        self.check_crd_not_terminating(def)?;
        let m = body["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        m.insert("name".into(), json!(name));
        if def.namespaced {
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now()));
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            m.remove(k);
        }
        if def.custom {
            m.insert("generation".into(), json!(1));
        }
        if def.status_subresource && def.custom {
            if let Some(o) = body.as_object_mut() {
                o.remove("status");
            }
        }
        if def.kind == "Namespace" {
            body["status"] = json!({"phase": "Active"});
            body["spec"]["finalizers"] = json!(["kubernetes"]);
        }
        let _service = match is_service(def) {
            true => Some(self.service_writes.lock().await),
            false => None,
        };
        let (mut obj, warnings) = self.admit(def, body, None, None, q)?;
        if is_service(def) {
            crate::services::allocate(&self.store, &mut obj, None)?;
        }
        managed::record_update(
            None,
            &mut obj,
            q.get("fieldManager").unwrap_or("unknown"),
            None,
            &Self::schema(def),
            &now(),
            &def.api_version(),
        );
        check_limits(def, &name, &obj)?;
        if q.dry_run() {
            return Ok(Written::new(obj, warnings, true));
        }
        let stored = self
            .store
            .write(
                Self::key(def, ns, &name),
                Change::Put(obj),
                Precondition::Absent,
            )
            .await
            .map_err(|e| store_err(def, &name, e))?;
        self.crd_written(def).await;
        Ok(Written::stored(stored, warnings, true))
    }

    /// Prepares `new` as the next version of `old` and writes it if it differs. `subresource`
    /// is `Some("status")` for writes to `/status`.
    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        old: &Stored,
        mut new: Value,
        q: &Query,
        subresource: Option<&str>,
        manager_op: ManagerOp<'_>,
    ) -> ApiResult<Written> {
        let old_v = old.value();
        if !new.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if let Some(n) = new["metadata"]["name"].as_str() {
            if n != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
        if subresource == Some("status") {
            let status = new.get("status").cloned();
            new = old_v.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        } else if def.status_subresource {
            match old_v.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        new["apiVersion"] = json!(def.api_version());
        new["kind"] = json!(def.kind);
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        // Fields the server owns.
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_v["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        // Once deleting, finalizers can only be removed.
        // A status write is admitted like any other write: the same decoding, unknown-field
        // handling and validation of the whole object.
        let _service = match is_service(def) {
            true => Some(self.service_writes.lock().await),
            false => None,
        };
        let (mut obj, warnings) = self.admit(def, new, Some(&old_v), subresource, q)?;
        if is_service(def) {
            crate::services::allocate(&self.store, &mut obj, Some(&old_v))?;
        }
        if def.custom
            && generation_relevant(&obj, def.status_subresource)
                != generation_relevant(&old_v, def.status_subresource)
        {
            let g = old_v["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            obj["metadata"]["generation"] = json!(g);
        }
        match manager_op {
            ManagerOp::Update(manager) => managed::record_update(
                Some(&old_v),
                &mut obj,
                manager,
                subresource,
                &Self::schema(def),
                &now(),
                &def.api_version(),
            ),
            ManagerOp::Applied => {}
        }
        check_limits(def, name, &obj)?;
        if same_object(&obj, &old_v) {
            return Ok(Written::new(old_v, warnings, false));
        }
        if q.dry_run() {
            return Ok(Written::new(obj, warnings, false));
        }
        let deleting = obj["metadata"]["deletionTimestamp"].is_string();
        let no_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
        let key = Self::key(def, ns, name);
        if deleting && no_finalizers && def.kind != "Namespace" {
            // The last finalizer is gone: the deletion completes.
            self.store
                .write(
                    key.clone(),
                    Change::Put(obj),
                    Precondition::Revision(old.rv),
                )
                .await
                .map_err(|e| store_err(def, name, e))?;
            let gone = self
                .store
                .write(key, Change::Delete, Precondition::Exists)
                .await
                .map_err(|e| store_err(def, name, e))?;
            self.crd_written(def).await;
            return Ok(Written::new(gone.value(), warnings, false));
        }
        let stored = self
            .store
            .write(key, Change::Put(obj), Precondition::Revision(old.rv))
            .await
            .map_err(|e| store_err(def, name, e))?;
        self.crd_written(def).await;
        Ok(Written::stored(stored, warnings, false))
    }

    pub async fn update(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        body: Value,
        q: &Query,
        subresource: Option<&str>,
    ) -> ApiResult<Written> {
        let old = self.get(def, ns, name)?;
        let body_rv = body["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if body_rv.is_empty() && def.custom {
            return Err(ApiError::invalid(
                &def.kind,
                &def.group,
                name,
                &format!("{}.{} \"{name}\" is invalid: ", def.kind, def.group),
                &[kubevirt_api::FieldError::invalid(
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                )],
            ));
        }
        if !body_rv.is_empty() && body_rv.parse::<u64>().ok() != Some(old.rv) {
            return Err(ApiError::conflict(&def.plural, &def.group, name));
        }
        let manager = q.get("fieldManager").unwrap_or("unknown").to_string();
        self.replace(
            def,
            ns,
            name,
            &old,
            body,
            q,
            subresource,
            ManagerOp::Update(&manager),
        )
        .await
    }

    /// Applies a patch to the current object, retrying when another writer got in between.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        ty: PatchType,
        body: &[u8],
        q: &Query,
        subresource: Option<&str>,
    ) -> ApiResult<Written> {
        if ty == PatchType::Strategic && def.custom {
            return Err(ApiError::unsupported_media_type(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        let format = match ty {
            PatchType::Apply => crate::limits::Format::Yaml,
            _ => crate::limits::Format::Json,
        };
        let patch = crate::limits::decode(Bytes::copy_from_slice(body), format)
            .await
            .map_err(|e| e.into_api(|| "error decoding patch: ".to_string()))?;
        if ty == PatchType::Apply {
            return self.apply(def, ns, name, patch, q, subresource).await;
        }
        let manager = q.get("fieldManager").unwrap_or("unknown").to_string();
        for _ in 0..16 {
            let old = self.get(def, ns, name)?;
            let mut doc = old.value();
            match ty {
                PatchType::Merge => patch::merge(&mut doc, &patch),
                PatchType::Json => patch::json_patch(&mut doc, &patch).map_err(|e| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ),
                    )
                })?,
                PatchType::Strategic => {
                    patch::strategic_merge(&mut doc, &patch).map_err(ApiError::bad_request)?
                }
                PatchType::Apply => unreachable!("handled above"),
            }
            // A resourceVersion in the patch is a precondition.
            if let Some(rv) = doc["metadata"]["resourceVersion"].as_str() {
                if rv.parse::<u64>().ok() != Some(old.rv) {
                    return Err(ApiError::conflict(&def.plural, &def.group, name));
                }
            }
            match self
                .replace(
                    def,
                    ns,
                    name,
                    &old,
                    doc,
                    q,
                    subresource,
                    ManagerOp::Update(&manager),
                )
                .await
            {
                Err(e)
                    if e.reason == "Conflict" && patch["metadata"]["resourceVersion"].is_null() =>
                {
                    continue
                }
                other => return other,
            }
        }
        Err(ApiError::conflict(&def.plural, &def.group, name))
    }

    async fn apply(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        applied: Value,
        q: &Query,
        subresource: Option<&str>,
    ) -> ApiResult<Written> {
        let Some(manager) = q.get("fieldManager") else {
            return Err(ApiError::bad_request(
                "PATCH requests with apply content type must set the fieldManager query parameter",
            ));
        };
        if !applied.is_object() {
            return Err(ApiError::bad_request("an apply patch must be an object"));
        }
        let force = q.flag("force");
        for _ in 0..16 {
            let Some(old) = self.store.get(&Self::key(def, ns, name)) else {
                let mut body = applied.clone();
                body["metadata"]["name"] = json!(name);
                let mut w = self.create(def, ns, body, q).await;
                if let Ok(written) = &mut w {
                    // Creation by apply: the manager owns what it applied.
                    let mut obj = written.value().into_owned();
                    let set = managed::fields_of(&applied, &Self::schema(def));
                    managed::write_entries(
                        &mut obj,
                        &[managed::Entry {
                            manager: manager.to_string(),
                            operation: "Apply".into(),
                            api_version: def.api_version(),
                            time: now(),
                            fields: set,
                            subresource: None,
                        }],
                    );
                    if !q.dry_run() {
                        let rv = obj["metadata"]["resourceVersion"]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        if let Ok(s) = self
                            .store
                            .write(
                                Self::key(def, ns, name),
                                Change::Put(obj.clone()),
                                Precondition::Revision(rv),
                            )
                            .await
                        {
                            obj = s.value();
                        }
                    }
                    written.set_value(obj);
                }
                return w;
            };
            let live = old.value();
            let new = managed::apply(&live, &applied, manager, force, &Self::schema(def), &now(), &def.api_version())
                .map_err(|conflicts| {
                    let causes: Vec<Value> = conflicts
                        .iter()
                        .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.path}))
                        .collect();
                    let mut e = ApiError::new(
                        409,
                        "Conflict",
                        format!(
                            "Apply failed with {} conflict{}: {}",
                            conflicts.len(),
                            if conflicts.len() == 1 { "" } else { "s" },
                            conflicts
                                .iter()
                                .map(|c| format!("conflict with \"{}\": {}", c.manager, c.path))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                    e.details = Some(json!({"name": name, "group": def.group, "kind": def.plural, "causes": causes}));
                    e
                })?;
            match self
                .replace(def, ns, name, &old, new, q, subresource, ManagerOp::Applied)
                .await
            {
                Err(e)
                    if e.reason == "Conflict"
                        && e.details.as_ref().is_none_or(|d| d.get("causes").is_none()) =>
                {
                    continue
                }
                other => return other,
            }
        }
        Err(ApiError::conflict(&def.plural, &def.group, name))
    }

    /// Deletes an object. A client precondition (uid, resourceVersion) that fails is a 409; a
    /// write that raced this one is retried against the new version, as kube-apiserver does.
    pub async fn delete(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        options: &Value,
        q: &Query,
    ) -> ApiResult<Value> {
        let conditional = options["preconditions"].is_object();
        let mut attempt = 0;
        loop {
            match self.delete_once(def, ns, name, options, q).await {
                Err(e) if e.reason == "Conflict" && !conditional && attempt < 16 => attempt += 1,
                other => return other,
            }
        }
    }

    async fn delete_once(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        options: &Value,
        q: &Query,
    ) -> ApiResult<Value> {
        let old = self.get(def, ns, name)?;
        let mut obj = old.value();
        if let Some(uid) = options["preconditions"]["uid"].as_str() {
            if obj["metadata"]["uid"].as_str() != Some(uid) {
                return Err(ApiError::conflict(&def.plural, &def.group, name));
            }
        }
        if let Some(rv) = options["preconditions"]["resourceVersion"].as_str() {
            if rv.parse::<u64>().ok() != Some(old.rv) {
                return Err(ApiError::conflict(&def.plural, &def.group, name));
            }
        }
        let policy = options["propagationPolicy"]
            .as_str()
            .or_else(|| q.get("propagationPolicy"))
            .or(if options["orphanDependents"] == json!(true) {
                Some("Orphan")
            } else {
                None
            })
            .unwrap_or("Background")
            .to_string();
        let mut finalizers: Vec<Value> = obj["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let extra = match policy.as_str() {
            "Foreground" => Some("foregroundDeletion"),
            "Orphan" => Some("orphan"),
            _ => None,
        };
        if let Some(f) = extra {
            if !finalizers.iter().any(|x| x == f) {
                finalizers.push(json!(f));
            }
        }
        // A CRD goes only after its objects (apiextensions' registry: the first delete adds
        // the cleanup finalizer and marks the CRD Terminating; `gc` deletes the objects).
        let is_crd = is_crd(def);
        if is_crd
            && !obj["metadata"]["deletionTimestamp"].is_string()
            && !finalizers
                .iter()
                .any(|x| x == crate::crd::CLEANUP_FINALIZER)
        {
            finalizers.push(json!(crate::crd::CLEANUP_FINALIZER));
        }
        let graceful = !finalizers.is_empty() || def.kind == "Namespace";
        if q.dry_run() {
            return Ok(obj);
        }
        if graceful {
            if obj["metadata"]["deletionTimestamp"].is_string() && extra.is_none() {
                return Ok(obj);
            }
            obj["metadata"]["finalizers"] = json!(finalizers);
            if !obj["metadata"]["deletionTimestamp"].is_string() {
                obj["metadata"]["deletionTimestamp"] = json!(now());
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            if def.kind == "Namespace" {
                obj["status"]["phase"] = json!("Terminating");
            }
            if is_crd {
                crate::crd::set_terminating(&mut obj, crate::crd::Termination::Pending);
            }
            let stored = self
                .store
                .write(
                    Self::key(def, ns, name),
                    Change::Put(obj),
                    Precondition::Revision(old.rv),
                )
                .await
                .map_err(|e| store_err(def, name, e))?;
            self.crd_written(def).await;
            return Ok(stored.value());
        }
        let gone = self
            .store
            .write(
                Self::key(def, ns, name),
                Change::Delete,
                Precondition::Revision(old.rv),
            )
            .await
            .map_err(|e| store_err(def, name, e))?;
        self.crd_written(def).await;
        Ok(gone.value())
    }

    pub async fn delete_collection(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        q: &Query,
    ) -> ApiResult<Value> {
        let list = self.list(
            def,
            ns,
            &Query(
                q.0.iter()
                    .filter(|(k, _)| *k != "limit")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
        )?;
        let mut items = Vec::new();
        for o in list.items {
            let key = &o.key;
            match self
                .delete(def, key.namespace(), key.name(), &Value::Null, q)
                .await
            {
                Ok(v) => items.push(v),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(
            json!({"apiVersion": def.api_version(), "kind": format!("{}List", def.kind), "metadata": {}, "items": items}),
        )
    }

    pub fn list(&self, def: &ResourceDef, ns: Option<&str>, q: &Query) -> ApiResult<ListResult> {
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
        let (all, rv) = self.store.list(&prefix);
        let limit: usize = match q.get("limit") {
            None => 0,
            Some(l) => l
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        };
        let start_after = match q.get("continue") {
            None => None,
            Some(c) => Some(decode_continue(c)?),
        };
        let mut items = Vec::new();
        let mut remaining = 0;
        let mut continue_token = None;
        for o in all {
            if let Some(after) = &start_after {
                if o.key.as_str() <= after.as_str() {
                    continue;
                }
            }
            if !labels.matches(&o.labels) || !fields.matches_stored(&o) {
                continue;
            }
            if limit > 0 && items.len() == limit {
                remaining += 1;
                continue;
            }
            items.push(o);
        }
        if remaining > 0 {
            if let Some(last) = items.last() {
                continue_token = Some(encode_continue(last.key.as_str(), rv));
            }
        }
        Ok(ListResult {
            items,
            rv,
            continue_token,
            remaining,
        })
    }

    /// An object's JSON as `def`'s version shows it: the stored bytes, or for a CRD with
    /// several served versions, the object under this version's `apiVersion` (conversion
    /// strategy `None`).
    pub fn object_json(def: &ResourceDef, o: &Stored) -> Bytes {
        if !def.multi_version {
            return o.json.clone();
        }
        let mut v = o.value();
        if v["apiVersion"].as_str() == Some(def.api_version().as_str()) {
            return o.json.clone();
        }
        v["apiVersion"] = json!(def.api_version());
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    }

    /// A list response body, assembled from the stored JSON without re-encoding each object.
    pub fn list_body(def: &ResourceDef, list: &ListResult) -> Bytes {
        let mut out =
            Vec::with_capacity(list.items.iter().map(|i| i.json.len() + 1).sum::<usize>() + 256);
        let mut meta = json!({"resourceVersion": list.rv.to_string()});
        if let Some(c) = &list.continue_token {
            meta["continue"] = json!(c);
            meta["remainingItemCount"] = json!(list.remaining);
        }
        out.extend_from_slice(
            format!(
                "{{\"apiVersion\":{},\"kind\":\"{}List\",\"metadata\":{},\"items\":[",
                json!(def.api_version()),
                def.kind,
                meta
            )
            .as_bytes(),
        );
        for (i, o) in list.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&Self::object_json(def, o));
        }
        out.extend_from_slice(b"]}");
        Bytes::from(out)
    }
}

/// Who owns the fields a write changes.
enum ManagerOp<'a> {
    Update(&'a str),
    /// Server-side apply already recorded ownership.
    Applied,
}

fn encode_continue(key: &str, rv: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rv, "start": key}).to_string())
}

fn decode_continue(c: &str) -> ApiResult<String> {
    let bad = || ApiError::bad_request("continue key is not valid: malformed");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    v["start"].as_str().map(str::to_string).ok_or_else(bad)
}

/// Whether an event is visible through a selector, and as what: an object that starts matching
/// is ADDED, one that stops matching is DELETED.
pub fn filter_event(
    kind: EventType,
    obj: &Stored,
    prev: Option<&std::collections::BTreeMap<String, String>>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<EventType> {
    if !fields.matches_stored(obj) {
        return None;
    }
    if labels.is_empty() {
        return Some(kind);
    }
    let now = labels.matches(&obj.labels);
    let before = prev.is_some_and(|p| labels.matches(p));
    match kind {
        EventType::Added => now.then_some(EventType::Added),
        EventType::Deleted => before.then_some(EventType::Deleted),
        EventType::Modified => match (before, now) {
            (true, true) => Some(EventType::Modified),
            (false, true) => Some(EventType::Added),
            (true, false) => Some(EventType::Deleted),
            (false, false) => None,
        },
    }
}

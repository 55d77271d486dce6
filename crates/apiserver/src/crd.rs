//! User CustomResourceDefinitions: what apiextensions-apiserver checks on a CRD write, the
//! status it reports (`NamesAccepted`, `Established`, `acceptedNames`, `storedVersions`),
//! and the resources a CRD serves (one [`ResourceDef`] per served version, admitted through
//! its structural schema).
//!
//! Names from a CRD become URL segments and store keys, so every one of them is checked
//! against the DNS form kube-apiserver requires before anything is served.

use crate::registry::{Admission, Column, Registry, ResourceDef, ScalePaths};
use crate::structural::StructuralSchema;
use kubevirt_api::names::{dns1123_label, dns1123_subdomain};
use kubevirt_api::FieldError;
use serde_json::{json, Value};
use std::sync::Arc;

/// The group and plural of the CRD kind itself.
pub const GROUP: &str = "apiextensions.k8s.io";
pub const PLURAL: &str = "customresourcedefinitions";

/// The finalizer a CRD gets when it is deleted: it stays until every object of the CRD is
/// gone (apiextensions' `CustomResourceCleanupFinalizer`).
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// The condition a deleted CRD reports while its objects go.
pub const TERMINATING: &str = "Terminating";

/// kube-apiserver's answer to a create while the CRD is being deleted (405, as
/// apiextensions' handler builds it from `NewMethodNotSupported`).
pub fn create_refused(group: &str, plural: &str) -> crate::error::ApiError {
    let mut e = crate::error::ApiError::method_not_allowed(
        "create not allowed while custom resource definition is terminating",
    );
    e.details = Some(json!({"group": group, "kind": plural}));
    e
}

/// The `Terminating` condition apiextensions reports, step by step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// Set by the delete request itself.
    Pending,
    /// The cleanup controller is deleting the objects (some may wait on their finalizers).
    InProgress,
    /// Every object is gone; the finalizer is removed next.
    Completed,
    /// The CRD never served anything: nothing to delete.
    NeverEstablished,
    /// The CRD describes one of the server's built-in kinds: their objects are not the CRD's
    /// to delete.
    OverlappingBuiltIn,
}

impl Termination {
    /// status, reason and message, as apiextensions-apiserver words them
    /// (`pkg/registry/customresourcedefinition/etcd.go`, `pkg/controller/finalizer`).
    pub fn condition(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Termination::Pending => (
                "True",
                "InstanceDeletionPending",
                "CustomResourceDefinition marked for deletion; CustomResource deletion will begin soon",
            ),
            Termination::InProgress => (
                "True",
                "InstanceDeletionInProgress",
                "CustomResource deletion is in progress",
            ),
            Termination::Completed => ("False", "InstanceDeletionCompleted", "removed all instances"),
            Termination::NeverEstablished => {
                ("False", "NeverEstablished", "resource was never established")
            }
            Termination::OverlappingBuiltIn => (
                "False",
                "OverlappingBuiltInResource",
                "instances overlap with built-in resources in storage",
            ),
        }
    }
}

/// Sets (or replaces) the CRD's `Terminating` condition; the transition time moves only
/// when the status does. Returns whether anything changed.
pub fn set_terminating(crd: &mut Value, t: Termination) -> bool {
    let (status, reason, message) = t.condition();
    if !crd["status"].is_object() {
        crd["status"] = json!({});
    }
    if !crd["status"]["conditions"].is_array() {
        crd["status"]["conditions"] = json!([]);
    }
    let Some(conds) = crd["status"]["conditions"].as_array_mut() else {
        return false;
    };
    let old = conds.iter().position(|c| c["type"] == TERMINATING);
    if let Some(i) = old {
        let c = &conds[i];
        if c["status"] == status && c["reason"] == reason && c["message"] == message {
            return false;
        }
    }
    let since = match old {
        Some(i) if conds[i]["status"] == status => conds[i]["lastTransitionTime"].clone(),
        _ => json!(crate::objects::now()),
    };
    let cond = json!({"type": TERMINATING, "status": status, "lastTransitionTime": since,
                      "reason": reason, "message": message});
    match old {
        Some(i) => conds[i] = cond,
        None => conds.push(cond),
    }
    true
}

/// The resources one stored CRD serves.
pub struct ServedCrd {
    pub name: String,
    pub group: String,
    pub plural: String,
    pub defs: Vec<Arc<ResourceDef>>,
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(v, |cur, k| cur.get(*k))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// A kind name: `^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$` as a DNS-1035 label that may have
/// mixed case.
fn kind_ok(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// A DNS-1035 label (version names): lower case, starting with a letter.
fn dns1035_ok(v: &str) -> bool {
    dns1123_label(v).is_none() && v.starts_with(|c: char| c.is_ascii_lowercase())
}

const DNS1035_FORM: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn label_error(field: &str, value: &str) -> Option<FieldError> {
    dns1123_label(value)
        .map(|why| FieldError::invalid(field, format!("Invalid value: \"{value}\": {why}")))
}

/// Checks a CRD as apiextensions-apiserver validates it (and refuses what we do not serve:
/// webhook conversion). `old` is the stored CRD on update.
pub fn check(crd: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &crd["spec"];
    let group = s(spec, &["group"]);
    let plural = s(spec, &["names", "plural"]);
    let kind = s(spec, &["names", "kind"]);
    let name = s(crd, &["metadata", "name"]);
    if group.is_empty() {
        errs.push(FieldError::required("spec.group", "Required value"));
    } else if let Some(why) = dns1123_subdomain(group) {
        errs.push(FieldError::invalid(
            "spec.group",
            format!("Invalid value: \"{group}\": {why}"),
        ));
    } else if !group.contains('.') {
        errs.push(FieldError::invalid(
            "spec.group",
            format!("Invalid value: \"{group}\": should be a domain with at least one dot"),
        ));
    }
    if plural.is_empty() {
        errs.push(FieldError::required("spec.names.plural", "Required value"));
    } else if let Some(e) = label_error("spec.names.plural", plural) {
        errs.push(e);
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    if kind.is_empty() {
        errs.push(FieldError::required("spec.names.kind", "Required value"));
    } else if !kind_ok(kind) {
        errs.push(FieldError::invalid(
            "spec.names.kind",
            format!("Invalid value: \"{kind}\": may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?"),
        ));
    }
    for field in ["singular", "listKind"] {
        let v = s(spec, &["names", field]);
        if v.is_empty() {
            continue;
        }
        let bad = if field == "listKind" {
            (!kind_ok(v)).then(|| {
                "may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?"
                    .to_string()
            })
        } else {
            dns1123_label(v)
        };
        if let Some(why) = bad {
            errs.push(FieldError::invalid(
                format!("spec.names.{field}"),
                format!("Invalid value: \"{v}\": {why}"),
            ));
        }
    }
    for list in ["shortNames", "categories"] {
        for (i, v) in spec["names"][list]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let v = v.as_str().unwrap_or("");
            if let Some(e) = label_error(&format!("spec.names.{list}[{i}]"), v) {
                errs.push(e);
            }
        }
    }
    match s(spec, &["scope"]) {
        "Namespaced" | "Cluster" => {}
        "" => errs.push(FieldError::required("spec.scope", "Required value")),
        other => errs.push(FieldError::not_supported(
            "spec.scope",
            format!(
                "Unsupported value: \"{other}\": supported values: \"Cluster\", \"Namespaced\""
            ),
        )),
    }
    match s(spec, &["conversion", "strategy"]) {
        "" | "None" => {}
        other => errs.push(FieldError::not_supported(
            "spec.conversion.strategy",
            format!("Unsupported value: \"{other}\": supported values: \"None\" (kubevirt-rs serves every version of a CRD from the same stored object and has no conversion webhooks; remove spec.conversion or set strategy: None)"),
        )),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        errs.push(FieldError::required(
            "spec.versions",
            "Required value: must have exactly one version marked as storage version",
        ));
    }
    let storage = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        errs.push(FieldError::invalid(
            "spec.versions",
            format!(
                "Invalid value: {}: must have exactly one version marked as storage version",
                Value::Array(versions.clone())
            ),
        ));
    }
    if !versions.is_empty() && !versions.iter().any(|v| v["served"].as_bool() == Some(true)) {
        errs.push(FieldError::invalid(
            "spec.versions",
            "Invalid value: \"[...]\": must have at least one served version",
        ));
    }
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let base = format!("spec.versions[{i}]");
        let vname = s(v, &["name"]);
        if !dns1035_ok(vname) {
            errs.push(FieldError::invalid(
                format!("{base}.name"),
                format!("Invalid value: \"{vname}\": {DNS1035_FORM}"),
            ));
        } else if seen.contains(&vname) {
            errs.push(FieldError::duplicate(
                format!("{base}.name"),
                format!("Duplicate value: \"{vname}\""),
            ));
        }
        seen.push(vname);
        match v.pointer("/schema/openAPIV3Schema") {
            None | Some(Value::Null) => errs.push(FieldError::required(
                format!("{base}.schema.openAPIV3Schema"),
                "Required value: schemas are required",
            )),
            Some(schema) => {
                if let Err(e) =
                    StructuralSchema::compile(schema, &format!("{base}.schema.openAPIV3Schema"))
                {
                    errs.extend(e);
                }
            }
        }
        for (j, c) in v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let path = s(c, &["jsonPath"]);
            if crate::jsonpath::select(&Value::Null, path).is_err() {
                errs.push(FieldError::invalid(
                    format!("{base}.additionalPrinterColumns[{j}].jsonPath"),
                    format!("Invalid value: \"{path}\": must be a simple json path"),
                ));
            }
        }
        for (j, f) in v["selectableFields"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let path = s(f, &["jsonPath"]);
            if !simple_path(path) {
                errs.push(FieldError::invalid(
                    format!("{base}.selectableFields[{j}].jsonPath"),
                    format!("Invalid value: \"{path}\": must be a simple field path such as .spec.color"),
                ));
            }
        }
        if let Some(scale) = v.pointer("/subresources/scale") {
            for field in ["specReplicasPath", "statusReplicasPath"] {
                let p = s(scale, &[field]);
                let ok = simple_path(p)
                    && if field == "specReplicasPath" {
                        p.starts_with(".spec.")
                    } else {
                        p.starts_with(".status.")
                    };
                if !ok {
                    errs.push(FieldError::invalid(
                        format!("{base}.subresources.scale.{field}"),
                        format!(
                            "Invalid value: \"{p}\": should be a json path under .{}",
                            if field == "specReplicasPath" {
                                "spec"
                            } else {
                                "status"
                            }
                        ),
                    ));
                }
            }
            let sel = s(scale, &["labelSelectorPath"]);
            if !sel.is_empty()
                && !(simple_path(sel) && (sel.starts_with(".spec.") || sel.starts_with(".status.")))
            {
                errs.push(FieldError::invalid(
                    format!("{base}.subresources.scale.labelSelectorPath"),
                    format!("Invalid value: \"{sel}\": should be a json path under either .spec or .status"),
                ));
            }
        }
    }
    if let Some(old) = old {
        for (field, path) in [("spec.scope", "scope"), ("spec.group", "group")] {
            let (a, b) = (s(&old["spec"], &[path]), s(spec, &[path]));
            if a != b {
                errs.push(FieldError::invalid(
                    field,
                    format!("Invalid value: \"{b}\": field is immutable"),
                ));
            }
        }
        for (i, sv) in old["status"]["storedVersions"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let sv = sv.as_str().unwrap_or("");
            if !versions.iter().any(|v| s(v, &["name"]) == sv) {
                errs.push(FieldError::invalid(
                    format!("status.storedVersions[{i}]"),
                    format!("Invalid value: \"{sv}\": must appear in spec.versions"),
                ));
            }
        }
    }
    errs
}

/// `.a.b.c` with plain field names: the only paths selectable fields and scale accept.
fn simple_path(p: &str) -> bool {
    p.strip_prefix('.').is_some_and(|rest| {
        !rest.is_empty()
            && rest.split('.').all(|seg| {
                !seg.is_empty()
                    && seg
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
    })
}

/// Sets the CRD's status as apiextensions' controllers would: the accepted names, whether
/// they conflict with another resource of the group, `Established`, and the stored
/// versions (kept from `old`, plus the storage version).
pub fn set_status(crd: &mut Value, old: Option<&Value>, reg: &Registry) {
    let spec = crd["spec"].clone();
    let group = s(&spec, &["group"]).to_string();
    let plural = s(&spec, &["names", "plural"]).to_string();
    let kind = s(&spec, &["names", "kind"]).to_string();
    let mut names = spec["names"].clone();
    if s(&names, &["singular"]).is_empty() {
        names["singular"] = json!(kind.to_lowercase());
    }
    if s(&names, &["listKind"]).is_empty() {
        names["listKind"] = json!(format!("{kind}List"));
    }
    // Conflicts with resources served by something other than this CRD.
    let conflict = reg
        .resources
        .iter()
        .filter(|r| r.group == group && r.plural != plural)
        .find_map(|r| {
            if r.kind == kind {
                Some(("KindConflict", format!("{kind:?} is already in use")))
            } else if r.singular == s(&names, &["singular"]) {
                Some((
                    "SingularConflict",
                    format!("{:?} is already in use", r.singular),
                ))
            } else {
                None
            }
        })
        .or_else(|| {
            // A built-in kind that is not itself a CRD (ours are: their stored CRDs
            // describe them).
            reg.find_any_version(&group, &plural)
                .filter(|r| matches!(r.admission, Admission::Builtin(_)) && r.crd_json.is_none())
                .map(|_| ("PluralConflict", format!("{plural:?} is already in use")))
        });
    let now = crate::objects::now();
    let old_status = old.map(|o| &o["status"]).unwrap_or(&Value::Null);
    let cond = |t: &str, ok: bool, reason: &str, message: &str| -> Value {
        let status = if ok { "True" } else { "False" };
        let since = kubevirt_runtime::status::transition_time(
            kubevirt_runtime::status::previous_json(old_status),
            t,
            status,
            Value::String(now.clone()),
        );
        json!({"type": t, "status": status, "lastTransitionTime": since, "reason": reason, "message": message})
    };
    let (accepted, established) = match &conflict {
        None => (
            cond("NamesAccepted", true, "NoConflicts", "no conflicts found"),
            cond(
                "Established",
                true,
                "InitialNamesAccepted",
                "the initial names have been accepted",
            ),
        ),
        Some((reason, message)) => (
            cond("NamesAccepted", false, reason, message),
            cond(
                "Established",
                false,
                "NotAccepted",
                "not all names are accepted",
            ),
        ),
    };
    let mut stored: Vec<String> = old
        .and_then(|o| o["status"]["storedVersions"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    if let Some(v) = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["storage"].as_bool() == Some(true))
    {
        let name = s(v, &["name"]).to_string();
        if !stored.contains(&name) {
            stored.push(name);
        }
    }
    // The Terminating condition belongs to the deletion, not to the names: kept as written
    // on updates (a new CRD has none).
    let mut conditions = vec![accepted, established];
    if old.is_some() {
        conditions.extend(
            crd["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["type"] == TERMINATING)
                .cloned(),
        );
    }
    crd["status"] = json!({
        "acceptedNames": if conflict.is_none() { names } else { json!({"plural": "", "kind": ""}) },
        "conditions": conditions,
        "storedVersions": stored,
    });
}

/// Whether a stored CRD's status says its names were accepted.
pub fn established(crd: &Value) -> bool {
    crd["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Established" && c["status"] == "True")
}

/// The resources a stored user CRD serves, or `None` when it serves nothing (names not
/// accepted, or a schema that no longer compiles). A CRD being deleted is still served, as
/// kube-apiserver serves it: its objects can be read, patched (to remove their finalizers)
/// and deleted until the last one is gone; only creates are refused.
pub fn served(crd: &Value) -> Option<ServedCrd> {
    if !established(crd) {
        return None;
    }
    let spec = &crd["spec"];
    let group = s(spec, &["group"]).to_string();
    let names = &spec["names"];
    let plural = s(names, &["plural"]).to_string();
    let kind = s(names, &["kind"]).to_string();
    let versions = spec["versions"].as_array()?;
    let served: Vec<&Value> = versions
        .iter()
        .filter(|v| v["served"].as_bool() == Some(true))
        .collect();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    let mut defs = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        if v["served"].as_bool() != Some(true) {
            continue;
        }
        let raw = v.pointer("/schema/openAPIV3Schema")?;
        let structural = match StructuralSchema::compile(
            raw,
            &format!("spec.versions[{i}].schema.openAPIV3Schema"),
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(crd = s(crd, &["metadata", "name"]), errors = ?e, "stored CRD schema does not compile; not serving it");
                return None;
            }
        };
        let (schema, components) = crate::registry::crd_openapi_schema(raw);
        let lists = crate::managed::ListIndex::build(&schema, &components);
        let scale = v.pointer("/subresources/scale").map(|sc| ScalePaths {
            spec_replicas: s(sc, &["specReplicasPath"]).to_string(),
            status_replicas: s(sc, &["statusReplicasPath"]).to_string(),
            label_selector: Some(s(sc, &["labelSelectorPath"]).to_string())
                .filter(|p| !p.is_empty()),
        });
        defs.push(Arc::new(ResourceDef {
            group: group.clone(),
            version: s(v, &["name"]).to_string(),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: Some(s(names, &["singular"]).to_string())
                .filter(|x| !x.is_empty())
                .unwrap_or_else(|| kind.to_lowercase()),
            namespaced: s(spec, &["scope"]) == "Namespaced",
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            status_subresource: v.pointer("/subresources/status").is_some(),
            custom: true,
            columns: v["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| Column {
                    name: s(c, &["name"]).to_string(),
                    ty: s(c, &["type"]).to_string(),
                    json_path: s(c, &["jsonPath"]).to_string(),
                    priority: c["priority"].as_i64().unwrap_or(0) as i32,
                    description: s(c, &["description"]).to_string(),
                })
                .collect(),
            admission: Admission::Schema(Arc::new(structural)),
            selectable: v["selectableFields"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| s(f, &["jsonPath"]).trim_start_matches('.').to_string())
                .collect(),
            scale,
            multi_version: served.len() > 1,
            schema_json: bytes::Bytes::from(serde_json::to_vec(&schema).unwrap_or_default()),
            components_json: bytes::Bytes::from(
                serde_json::to_vec(&components).unwrap_or_default(),
            ),
            lists,
            crd_json: None,
        }));
    }
    defs.sort_by(|a, b| crate::registry::version_order(&a.version, &b.version));
    Some(ServedCrd {
        name: s(crd, &["metadata", "name"]).to_string(),
        group,
        plural,
        defs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}},
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
                    "selectableFields": [{"jsonPath": ".spec.color"}]
                }]
            }
        })
    }

    fn fields(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn a_valid_crd_passes_and_serves_its_version() {
        assert!(check(&crd(), None).is_empty(), "{:?}", check(&crd(), None));
        let mut c = crd();
        set_status(&mut c, None, &Registry::new());
        assert_eq!(c["status"]["conditions"][1]["status"], "True");
        assert_eq!(c["status"]["acceptedNames"]["listKind"], "WidgetList");
        assert_eq!(c["status"]["storedVersions"], json!(["v1"]));
        let served = served(&c).expect("served");
        assert_eq!(served.defs.len(), 1);
        let d = &served.defs[0];
        assert!(d.namespaced && d.status_subresource && d.scale.is_some());
        assert_eq!(d.selectable, vec!["spec.color".to_string()]);
    }

    #[test]
    fn hostile_names_are_refused_with_the_field() {
        let mut c = crd();
        c["spec"]["names"]["plural"] = json!("../etc");
        c["spec"]["group"] = json!("example");
        c["spec"]["names"]["kind"] = json!("Wid get");
        c["spec"]["names"]["shortNames"] = json!(["a/b"]);
        c["spec"]["versions"][0]["name"] = json!("V1/../x");
        let f = fields(&check(&c, None));
        for want in [
            "spec.names.plural",
            "spec.group",
            "spec.names.kind",
            "spec.names.shortNames[0]",
            "spec.versions[0].name",
            "metadata.name",
        ] {
            assert!(f.iter().any(|x| x == want), "{want} not in {f:?}");
        }
    }

    #[test]
    fn webhook_conversion_and_missing_schema_and_two_storage_versions_are_refused() {
        let mut c = crd();
        c["spec"]["conversion"] = json!({"strategy": "Webhook"});
        let errs = check(&c, None);
        assert!(
            errs[0].message.contains("supported values: \"None\""),
            "{errs:?}"
        );
        let mut c = crd();
        c["spec"]["versions"][0]["schema"] = Value::Null;
        let mut v2 = crd()["spec"]["versions"][0].clone();
        v2["name"] = json!("v2");
        c["spec"]["versions"]
            .as_array_mut()
            .expect("array")
            .push(v2);
        let f = fields(&check(&c, None));
        assert!(
            f.contains(&"spec.versions[0].schema.openAPIV3Schema".to_string()),
            "{f:?}"
        );
        assert!(f.contains(&"spec.versions".to_string()), "{f:?}");
    }

    #[test]
    fn scope_is_immutable_and_stored_versions_must_stay() {
        let mut old = crd();
        set_status(&mut old, None, &Registry::new());
        let mut new = crd();
        new["spec"]["scope"] = json!("Cluster");
        new["spec"]["versions"][0]["name"] = json!("v2");
        let f = fields(&check(&new, Some(&old)));
        assert!(f.contains(&"spec.scope".to_string()), "{f:?}");
        assert!(f.contains(&"status.storedVersions[0]".to_string()), "{f:?}");
    }

    #[test]
    fn a_crd_that_takes_a_built_in_kind_is_not_accepted() {
        let mut c = crd();
        c["metadata"]["name"] = json!("vms.kubevirt.io");
        c["spec"]["group"] = json!("kubevirt.io");
        c["spec"]["names"] = json!({"plural": "vms", "kind": "VirtualMachine"});
        set_status(&mut c, None, &Registry::new());
        assert_eq!(c["status"]["conditions"][0]["reason"], "KindConflict");
        assert_eq!(c["status"]["conditions"][1]["status"], "False");
        assert!(served(&c).is_none());
    }

    #[test]
    fn versions_sort_as_kubernetes_prefers_them() {
        let mut v = vec![
            "v1alpha1", "v2beta1", "v1", "foo", "v2", "v1beta2", "v1beta1",
        ];
        v.sort_by(|a, b| crate::registry::version_order(a, b));
        assert_eq!(
            v,
            vec!["v2", "v1", "v2beta1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
    }
}

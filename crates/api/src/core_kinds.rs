//! kube-apiserver's defaulting and validation for the core kinds we serve: what a client of a
//! real cluster finds on objects it reads back (a Secret's `type: Opaque`, a Node's `spec`, a
//! Service's type, ports and policies) and the names it may not use (ConfigMap and Secret
//! keys become file names when a volume projects them, so `../x` is refused here).
//!
//! Address allocation (a Service's `clusterIP`, `nodePort`) needs the other Services and is
//! done by the API server (`kubevirt_apiserver::services`).

use crate::defaults::DefaultsConfig;
use crate::validation::ValidationConfig;
use crate::FieldError;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    NodeSpec, PersistentVolume, PersistentVolumeClaim, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// kube-apiserver's limit on the total size of a Secret's or ConfigMap's data.
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

const KEY_FORM: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// `Some(problem)` unless `k` may be a ConfigMap or Secret key (and so a file name).
pub fn config_key(k: &str) -> Option<String> {
    if k.is_empty() {
        return Some(KEY_FORM.into());
    }
    if k.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    if !k
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Some(KEY_FORM.into());
    }
    match k {
        "." => Some("must not be '.'".into()),
        ".." => Some("must not be '..'".into()),
        _ if k.starts_with("..") => Some("must not start with '..'".into()),
        _ => None,
    }
}

fn check_keys<'a>(field: &str, keys: impl Iterator<Item = &'a String>, errs: &mut Vec<FieldError>) {
    for k in keys {
        if let Some(why) = config_key(k) {
            errs.push(FieldError::invalid(
                format!("{field}[{k}]"),
                format!("Invalid value: {k:?}: {why}"),
            ));
        }
    }
}

/// Whether PersistentVolume `pv` is bound to claim `pvc`: its `claimRef` names the claim's
/// namespace and name (and uid, when it records one). A claim's `spec.volumeName` alone is a
/// user's word: whoever reads a claim's data through its volume checks this first, so a
/// claim naming another namespace's volume reaches nothing.
pub fn pv_bound_to(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    pvc.metadata.name.is_some()
        && r.name == pvc.metadata.name
        && r.namespace == pvc.metadata.namespace
        && (r.uid.is_none() || r.uid == pvc.metadata.uid)
}

/// Whether `node` satisfies `sel` (Kubernetes' `MatchNodeSelectorTerms`): its
/// `nodeSelectorTerms` are ORed; within a term the `matchExpressions` (on the node's labels)
/// and `matchFields` (only `metadata.name`, with In or NotIn) are ANDed; an empty term, and an
/// empty list of terms, match no node.
pub fn node_selector_matches(sel: &NodeSelector, node: &Node) -> bool {
    let empty = std::collections::BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    sel.node_selector_terms
        .iter()
        .any(|t| term_matches(t, labels, name))
}

fn term_matches(
    term: &NodeSelectorTerm,
    labels: &std::collections::BTreeMap<String, String>,
    name: &str,
) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_holds(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == "metadata.name"
                && matches!(r.operator.as_str(), "In" | "NotIn")
                && requirement_holds(r, Some(name))
        })
}

fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let listed = |v: &str| values.iter().any(|x| x == v);
    match r.operator.as_str() {
        "In" => value.is_some_and(listed),
        "NotIn" => !value.is_some_and(listed),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let [bound] = values else { return false };
            let (Some(v), Ok(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                bound.parse::<i64>(),
            ) else {
                return false;
            };
            if op == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether PersistentVolume `pv` can be used on `node` (Kubernetes' `CheckNodeAffinity`, what
/// kube-scheduler's VolumeBinding filter and the kubelet check): a volume without
/// `spec.nodeAffinity.required` is reachable from every node; one with it (a local volume,
/// pinned to the node that holds its data) only from the nodes its terms match.
pub fn pv_fits_node(pv: &PersistentVolume, node: &Node) -> bool {
    pv.spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .is_none_or(|sel| node_selector_matches(sel, node))
}

/// `pv.kubernetes.io/provisioned-by`, as external-provisioner annotates the volumes it made.
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// A volume of our local-path provisioner: a `local` volume it made (its annotation), whose
/// data is one directory or file on the node it is pinned to.
pub fn local_path_volume(pv: &PersistentVolume) -> bool {
    pv.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_PROVISIONED_BY))
        .is_some_and(|p| p == LOCAL_PATH_PROVISIONER)
        && pv.spec.as_ref().is_some_and(|s| s.local.is_some())
}

/// The one node a volume is pinned to by name, as the local-path provisioner pins them: a
/// required node affinity of exactly one term with exactly `kubernetes.io/hostname In [node]`.
pub fn pinned_host(pv: &PersistentVolume) -> Option<&str> {
    let sel = pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?;
    let [term] = sel.node_selector_terms.as_slice() else {
        return None;
    };
    if term.match_fields.as_ref().is_some_and(|f| !f.is_empty()) {
        return None;
    }
    let [r] = term.match_expressions.as_deref()? else {
        return None;
    };
    let [host] = r.values.as_deref()? else {
        return None;
    };
    (r.key == "kubernetes.io/hostname" && r.operator == "In").then_some(host.as_str())
}

/// `spec.nodeAffinity` pinning a volume to node `host` (by its hostname label), as the
/// local-path provisioner writes it and a migration re-pins it.
pub fn pinned_to(host: &str) -> serde_json::Value {
    serde_json::json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}
    ]}]}})
}

/// The Node a node agent or controller judges volumes for when it cannot read its Node object
/// (not registered yet): its name and the `kubernetes.io/hostname` label every node carries.
pub fn bare_node(name: &str) -> Node {
    Node {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            labels: Some([("kubernetes.io/hostname".to_string(), name.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// kube-apiserver's conversion and defaults of a written Secret: `stringData` is write-only,
/// merged into `data` (its values win over `data`'s for the same key) and never stored, so a
/// reader finds every key base64-encoded under `data`; `type` defaults to `Opaque`.
pub fn default_secret(s: &mut Secret, _: &DefaultsConfig) {
    if let Some(string_data) = s.string_data.take().filter(|d| !d.is_empty()) {
        let data = s.data.get_or_insert_with(Default::default);
        for (k, v) in string_data {
            data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
        }
    }
    if s.type_.as_deref().is_none_or(str::is_empty) {
        s.type_ = Some("Opaque".into());
    }
}

/// Keys, total size, and the keys each well-known Secret type requires.
pub fn validate_secret(s: &Secret, _: &ValidationConfig) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let data = s.data.as_ref();
    let string_data = s.string_data.as_ref();
    check_keys("data", data.into_iter().flat_map(|d| d.keys()), &mut errs);
    check_keys(
        "stringData",
        string_data.into_iter().flat_map(|d| d.keys()),
        &mut errs,
    );
    let size: usize = data
        .into_iter()
        .flatten()
        .map(|(k, v)| k.len() + v.0.len())
        .chain(
            string_data
                .into_iter()
                .flatten()
                .map(|(k, v)| k.len() + v.len()),
        )
        .sum();
    if size > MAX_DATA_BYTES {
        errs.push(FieldError::new(
            crate::CauseType::FieldValueTooLong,
            "data",
            format!("Too long: may not be more than {MAX_DATA_BYTES} bytes"),
        ));
    }
    let has = |k: &str| {
        data.is_some_and(|d| d.contains_key(k)) || string_data.is_some_and(|d| d.contains_key(k))
    };
    let required: &[&str] = match s.type_.as_deref().unwrap_or("Opaque") {
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        _ => &[],
    };
    for k in required {
        if !has(k) {
            errs.push(FieldError::required(format!("data[{k}]"), "Required value"));
        }
    }
    if s.type_.as_deref() == Some("kubernetes.io/service-account-token")
        && s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/service-account.name"))
            .is_none_or(String::is_empty)
    {
        errs.push(FieldError::required(
            "metadata.annotations[kubernetes.io/service-account.name]",
            "Required value",
        ));
    }
    errs
}

pub fn validate_configmap(c: &ConfigMap, _: &ValidationConfig) -> Vec<FieldError> {
    let mut errs = Vec::new();
    check_keys("data", c.data.iter().flat_map(|d| d.keys()), &mut errs);
    check_keys(
        "binaryData",
        c.binary_data.iter().flat_map(|d| d.keys()),
        &mut errs,
    );
    if let (Some(d), Some(b)) = (&c.data, &c.binary_data) {
        for k in d.keys().filter(|k| b.contains_key(*k)) {
            errs.push(FieldError::invalid(
                format!("data[{k}]"),
                format!("Invalid value: {k:?}: duplicate of key present in binaryData"),
            ));
        }
    }
    let size: usize = c
        .data
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len())
        .chain(
            c.binary_data
                .iter()
                .flatten()
                .map(|(k, v)| k.len() + v.0.len()),
        )
        .sum();
    if size > MAX_DATA_BYTES {
        errs.push(FieldError::new(
            crate::CauseType::FieldValueTooLong,
            "",
            format!("Too long: must have at most {MAX_DATA_BYTES} bytes"),
        ));
    }
    errs
}

/// kube-apiserver's namespace strategy: every Namespace carries the immutable label
/// `kubernetes.io/metadata.name` with its name (set on create and update, whatever the
/// request says), so selectors (NetworkPolicy, MigrationPolicy's `namespaceSelector`) can
/// name a namespace.
pub fn default_namespace(n: &mut Namespace, _: &DefaultsConfig) {
    if let Some(name) = n.metadata.name.clone() {
        n.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(NAMESPACE_NAME_LABEL.into(), name);
    }
}

/// The label kube-apiserver puts on every Namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A Node always has a `spec` (kube-apiserver serializes the empty struct).
pub fn default_node(n: &mut Node, _: &DefaultsConfig) {
    if n.spec.is_none() {
        n.spec = Some(NodeSpec::default());
    }
}

/// kube-apiserver's PersistentVolumeClaim defaults (`pkg/apis/core/v1/defaults.go`): phase
/// `Pending` until the binder binds it, `volumeMode: Filesystem`.
pub fn default_pvc(c: &mut PersistentVolumeClaim, _: &DefaultsConfig) {
    let status = c.status.get_or_insert_with(Default::default);
    if status.phase.as_deref().is_none_or(str::is_empty) {
        status.phase = Some("Pending".into());
    }
    let spec = c.spec.get_or_insert_with(Default::default);
    if spec.volume_mode.as_deref().is_none_or(str::is_empty) {
        spec.volume_mode = Some("Filesystem".into());
    }
}

/// kube-apiserver's PersistentVolume defaults: phase `Pending` (the binder makes it
/// `Available`), reclaim policy `Retain`, `volumeMode: Filesystem`.
pub fn default_pv(v: &mut PersistentVolume, _: &DefaultsConfig) {
    let status = v.status.get_or_insert_with(Default::default);
    if status.phase.as_deref().is_none_or(str::is_empty) {
        status.phase = Some("Pending".into());
    }
    let spec = v.spec.get_or_insert_with(Default::default);
    if spec
        .persistent_volume_reclaim_policy
        .as_deref()
        .is_none_or(str::is_empty)
    {
        spec.persistent_volume_reclaim_policy = Some("Retain".into());
    }
    if spec.volume_mode.as_deref().is_none_or(str::is_empty) {
        spec.volume_mode = Some("Filesystem".into());
    }
}

/// kube-apiserver's Service defaults (`pkg/apis/core/v1/defaults.go`), except the addresses.
pub fn default_service(s: &mut Service, _: &DefaultsConfig) {
    let spec = s.spec.get_or_insert_with(Default::default);
    // An empty string is unset (typed clients send Go's zero values).
    for f in [
        &mut spec.type_,
        &mut spec.session_affinity,
        &mut spec.internal_traffic_policy,
        &mut spec.external_traffic_policy,
    ] {
        if f.as_deref() == Some("") {
            *f = None;
        }
    }
    let ty = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
    if ty == "ExternalName" {
        return;
    }
    spec.session_affinity.get_or_insert_with(|| "None".into());
    spec.internal_traffic_policy
        .get_or_insert_with(|| "Cluster".into());
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        spec.external_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
    }
    if ty == "LoadBalancer" {
        spec.allocate_load_balancer_node_ports.get_or_insert(true);
    }
    for p in spec.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
        if p.target_port.is_none() {
            p.target_port = Some(IntOrString::Int(p.port));
        }
    }
}

pub fn validate_service(s: &Service, _: &ValidationConfig) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(spec) = &s.spec else {
        return errs;
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        errs.push(FieldError::not_supported(
            "spec.type",
            format!("Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        ));
        return errs;
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ty == "ExternalName" {
        if spec.external_name.as_deref().is_none_or(str::is_empty) {
            errs.push(FieldError::required("spec.externalName", "Required value"));
        }
        return errs;
    }
    for (k, v) in spec.selector.iter().flatten() {
        // kube-apiserver's ValidateLabels: the selector is a map of label keys and values.
        for m in crate::names::qualified_name_problems(k) {
            errs.push(FieldError::invalid(
                "spec.selector",
                format!("Invalid value: {}: {m}", crate::names::go_quote(k)),
            ));
        }
        for m in crate::names::label_value_problems(v) {
            errs.push(FieldError::invalid(
                format!("spec.selector.{k}"),
                format!("Invalid value: {}: {m}", crate::names::go_quote(v)),
            ));
        }
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if ports.is_empty() && !headless {
        errs.push(FieldError::required("spec.ports", "Required value"));
    }
    if headless && ty != "ClusterIP" {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            "Invalid value: \"None\": may only be set to 'None' for ClusterIP services",
        ));
    }
    if let Some(ip) = spec.cluster_ip.as_deref() {
        if !ip.is_empty() && !headless && ip.parse::<std::net::IpAddr>().is_err() {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                format!("Invalid value: {ip:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"),
            ));
        }
    }
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let base = format!("spec.ports[{i}]");
        match p.name.as_deref() {
            None | Some("") if ports.len() > 1 => errs.push(FieldError::required(
                format!("{base}.name"),
                "Required value",
            )),
            Some(n) if !n.is_empty() => {
                if let Some(why) = crate::names::dns1123_label(n) {
                    errs.push(FieldError::invalid(
                        format!("{base}.name"),
                        format!("Invalid value: {n:?}: {why}"),
                    ));
                }
                if names.contains(&n) {
                    errs.push(FieldError::duplicate(
                        format!("{base}.name"),
                        format!("Duplicate value: {n:?}"),
                    ));
                }
                names.push(n);
            }
            _ => {}
        }
        if !(1..=65535).contains(&p.port) {
            errs.push(FieldError::invalid(
                format!("{base}.port"),
                format!(
                    "Invalid value: {}: must be between 1 and 65535, inclusive",
                    p.port
                ),
            ));
        }
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            errs.push(FieldError::not_supported(
                format!("{base}.protocol"),
                format!(
                    "Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                ),
            ));
        }
        if let Some(np) = p.node_port {
            if ty == "ClusterIP" && np != 0 {
                errs.push(FieldError::new(
                    crate::CauseType::FieldValueForbidden,
                    format!("{base}.nodePort"),
                    "Forbidden: may not be used when `type` is 'ClusterIP'",
                ));
            } else if !(0..=65535).contains(&np) {
                errs.push(FieldError::invalid(
                    format!("{base}.nodePort"),
                    format!("Invalid value: {np}: must be between 1 and 65535, inclusive"),
                ));
            }
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) if !(1..=65535).contains(t) => {
                errs.push(FieldError::invalid(
                    format!("{base}.targetPort"),
                    format!("Invalid value: {t}: must be between 1 and 65535, inclusive"),
                ))
            }
            Some(IntOrString::String(n)) if crate::names::dns1123_label(n).is_some() || n.len() > 15 => {
                errs.push(FieldError::invalid(
                    format!("{base}.targetPort"),
                    format!("Invalid value: {n:?}: must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), at most 15 characters"),
                ))
            }
            _ => {}
        }
    }
    errs
}

/// kube-apiserver's `ValidateNonSpecialIP` plus the address check of an endpoint: a valid
/// address that a Service may forward to. `Some(message)` when it is not.
pub fn endpoint_ip_problem(ip: &str) -> Option<String> {
    use std::net::IpAddr;
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return Some("must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".into());
    };
    if addr.is_unspecified() {
        return Some(format!("may not be unspecified ({addr})"));
    }
    if addr.is_loopback() {
        return Some("may not be in the loopback range (127.0.0.0/8, ::1/128)".into());
    }
    let (link_local, ll_multicast) = match addr {
        IpAddr::V4(a) => (a.is_link_local(), a.octets()[..3] == [224, 0, 0]),
        IpAddr::V6(a) => (
            (a.segments()[0] & 0xffc0) == 0xfe80,
            (a.segments()[0] & 0xff0f) == 0xff02,
        ),
    };
    if link_local {
        return Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)".into());
    }
    if ll_multicast {
        return Some(
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)".into(),
        );
    }
    None
}

/// Port checks shared by Endpoints and EndpointSlices: names unique DNS labels (required when
/// there are several, for Endpoints), numbers 1–65535, a known protocol.
fn validate_endpoint_port(
    base: &str,
    name: Option<&str>,
    port: Option<i32>,
    protocol: Option<&str>,
    names: &mut Vec<String>,
    errs: &mut Vec<FieldError>,
) {
    if let Some(n) = name.filter(|n| !n.is_empty()) {
        if let Some(why) = crate::names::dns1123_label(n) {
            errs.push(FieldError::invalid(
                format!("{base}.name"),
                format!("Invalid value: {}: {why}", crate::names::go_quote(n)),
            ));
        }
        if names.iter().any(|x| x == n) {
            errs.push(FieldError::duplicate(
                format!("{base}.name"),
                format!("Duplicate value: {}", crate::names::go_quote(n)),
            ));
        }
        names.push(n.to_string());
    }
    if let Some(p) = port {
        if !(1..=65535).contains(&p) {
            errs.push(FieldError::invalid(
                format!("{base}.port"),
                format!("Invalid value: {p}: must be between 1 and 65535, inclusive"),
            ));
        }
    }
    match protocol {
        None => errs.push(FieldError::required(
            format!("{base}.protocol"),
            "Required value",
        )),
        Some("TCP" | "UDP" | "SCTP") => {}
        Some(p) => errs.push(FieldError::not_supported(
            format!("{base}.protocol"),
            format!(
                "Unsupported value: {}: supported values: \"SCTP\", \"TCP\", \"UDP\"",
                crate::names::go_quote(p)
            ),
        )),
    }
}

/// kube-apiserver's `SetDefaults_Endpoints`: a port's protocol is TCP.
pub fn default_endpoints(e: &mut Endpoints, _: &DefaultsConfig) {
    for p in e
        .subsets
        .iter_mut()
        .flatten()
        .flat_map(|s| s.ports.iter_mut().flatten())
    {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
}

/// kube-apiserver's `SetDefaults_EndpointPort` (discovery): protocol TCP, name `""`.
pub fn default_endpoint_slice(s: &mut EndpointSlice, _: &DefaultsConfig) {
    for p in s.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
        p.name.get_or_insert_with(String::new);
    }
}

/// kube-apiserver's `ValidateEndpoints`: what a user (or a controller) may write.
pub fn validate_endpoints(e: &Endpoints, _: &ValidationConfig) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, ss) in e.subsets.iter().flatten().enumerate() {
        let base = format!("subsets[{i}]");
        let ready = ss.addresses.as_deref().unwrap_or_default();
        let not_ready = ss.not_ready_addresses.as_deref().unwrap_or_default();
        if ready.is_empty() && not_ready.is_empty() {
            errs.push(FieldError::required(
                base.clone(),
                "must specify `addresses` or `notReadyAddresses`",
            ));
        }
        for (field, list) in [("addresses", ready), ("notReadyAddresses", not_ready)] {
            for (j, a) in list.iter().enumerate() {
                let at = format!("{base}.{field}[{j}]");
                if let Some(m) = endpoint_ip_problem(&a.ip) {
                    errs.push(FieldError::invalid(
                        format!("{at}.ip"),
                        format!("Invalid value: {}: {m}", crate::names::go_quote(&a.ip)),
                    ));
                }
                if let Some(h) = a.hostname.as_deref().filter(|h| !h.is_empty()) {
                    if let Some(why) = crate::names::dns1123_label(h) {
                        errs.push(FieldError::invalid(
                            format!("{at}.hostname"),
                            format!("Invalid value: {}: {why}", crate::names::go_quote(h)),
                        ));
                    }
                }
                if let Some(n) = a.node_name.as_deref().filter(|n| !n.is_empty()) {
                    if let Some(why) = crate::names::dns1123_subdomain(n) {
                        errs.push(FieldError::invalid(
                            format!("{at}.nodeName"),
                            format!("Invalid value: {}: {why}", crate::names::go_quote(n)),
                        ));
                    }
                }
            }
        }
        let ports = ss.ports.as_deref().unwrap_or_default();
        let mut names = Vec::new();
        for (j, p) in ports.iter().enumerate() {
            let at = format!("{base}.ports[{j}]");
            if ports.len() > 1 && p.name.as_deref().is_none_or(str::is_empty) {
                errs.push(FieldError::required(format!("{at}.name"), "Required value"));
            }
            validate_endpoint_port(
                &at,
                p.name.as_deref(),
                Some(p.port),
                p.protocol.as_deref(),
                &mut names,
                &mut errs,
            );
        }
    }
    errs
}

/// kube-apiserver's `ValidateEndpointSlice`: address type, addresses of that type, ports.
pub fn validate_endpoint_slice(s: &EndpointSlice, _: &ValidationConfig) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let ty = s.address_type.as_str();
    if !matches!(ty, "IPv4" | "IPv6" | "FQDN") {
        errs.push(FieldError::not_supported(
            "addressType",
            format!(
                "Unsupported value: {}: supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
                crate::names::go_quote(ty)
            ),
        ));
    }
    if s.endpoints.len() > 1000 {
        errs.push(FieldError::new(
            crate::CauseType::FieldValueTooMany,
            "endpoints",
            format!(
                "Too many: {}: must have at most 1000 items",
                s.endpoints.len()
            ),
        ));
    }
    for (i, ep) in s.endpoints.iter().enumerate() {
        let at = format!("endpoints[{i}].addresses");
        if ep.addresses.is_empty() || ep.addresses.len() > 100 {
            errs.push(FieldError::invalid(
                at.clone(),
                format!(
                    "Invalid value: {}: must contain at least 1 and at most 100 addresses",
                    ep.addresses.len()
                ),
            ));
        }
        for (j, a) in ep.addresses.iter().enumerate() {
            let problem = match ty {
                "IPv4" if a.parse::<std::net::Ipv4Addr>().is_err() => {
                    Some("must be a valid IPv4 address".to_string())
                }
                "IPv6" if a.parse::<std::net::Ipv6Addr>().is_err() => {
                    Some("must be a valid IPv6 address".to_string())
                }
                "IPv4" | "IPv6" => endpoint_ip_problem(a),
                "FQDN" => crate::names::dns1123_subdomain(a),
                _ => None,
            };
            if let Some(m) = problem {
                errs.push(FieldError::invalid(
                    format!("{at}[{j}]"),
                    format!("Invalid value: {}: {m}", crate::names::go_quote(a)),
                ));
            }
        }
        if let Some(h) = ep.hostname.as_deref() {
            if let Some(why) = crate::names::dns1123_label(h) {
                errs.push(FieldError::invalid(
                    format!("endpoints[{i}].hostname"),
                    format!("Invalid value: {}: {why}", crate::names::go_quote(h)),
                ));
            }
        }
    }
    let ports = s.ports.as_deref().unwrap_or_default();
    if ports.len() > 100 {
        errs.push(FieldError::new(
            crate::CauseType::FieldValueTooMany,
            "ports",
            format!("Too many: {}: must have at most 100 items", ports.len()),
        ));
    }
    let mut names = Vec::new();
    for (j, p) in ports.iter().enumerate() {
        validate_endpoint_port(
            &format!("ports[{j}]"),
            p.name.as_deref(),
            p.port,
            p.protocol.as_deref(),
            &mut names,
            &mut errs,
        );
    }
    errs
}

/// The StorageClass of this node's local-path volumes, created at first start as the
/// default class.
pub const LOCAL_PATH_CLASS: &str = "local-path";
/// The provisioner of our local-path volumes, as a StorageClass names it.
pub const LOCAL_PATH_PROVISIONER: &str = "kubevirt-rs.io/local-path";
/// The annotation that marks the default StorageClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

pub fn default_storage_class(c: &mut StorageClass, _: &DefaultsConfig) {
    c.reclaim_policy.get_or_insert_with(|| "Delete".into());
    c.volume_binding_mode
        .get_or_insert_with(|| "Immediate".into());
}

pub fn validate_storage_class(c: &StorageClass, _: &ValidationConfig) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if c.provisioner.is_empty() {
        errs.push(FieldError::required("provisioner", "Required value"));
    } else if crate::names::dns1123_subdomain(&c.provisioner.replace('/', ".")).is_some()
        && !c.provisioner.contains('/')
    {
        errs.push(FieldError::invalid(
            "provisioner",
            format!(
                "Invalid value: {:?}: must be a qualified name",
                c.provisioner
            ),
        ));
    }
    if let Some(p) = c.reclaim_policy.as_deref() {
        if !matches!(p, "Delete" | "Retain") {
            errs.push(FieldError::not_supported(
                "reclaimPolicy",
                format!("Unsupported value: {p:?}: supported values: \"Delete\", \"Retain\""),
            ));
        }
    }
    if let Some(m) = c.volume_binding_mode.as_deref() {
        if !matches!(m, "Immediate" | "WaitForFirstConsumer") {
            errs.push(FieldError::not_supported(
                "volumeBindingMode",
                format!("Unsupported value: {m:?}: supported values: \"Immediate\", \"WaitForFirstConsumer\""),
            ));
        }
    }
    errs
}

fn validate_rules(rules: Option<&Vec<PolicyRule>>, errs: &mut Vec<FieldError>) {
    for (i, r) in rules.into_iter().flatten().enumerate() {
        if r.verbs.is_empty() {
            errs.push(FieldError::required(
                format!("rules[{i}].verbs"),
                "Required value: verbs must contain at least one value",
            ));
        }
        let non_resource = r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty());
        let resources = r.resources.as_ref().is_some_and(|u| !u.is_empty());
        if non_resource && resources {
            errs.push(FieldError::invalid(
                format!("rules[{i}].nonResourceURLs"),
                "Invalid value: rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        if !non_resource && r.api_groups.as_ref().is_none_or(Vec::is_empty) {
            errs.push(FieldError::required(
                format!("rules[{i}].apiGroups"),
                "Required value: resource rules must supply at least one api group",
            ));
        }
    }
}

pub fn validate_role(r: &Role, _: &ValidationConfig) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_rules(r.rules.as_ref(), &mut errs);
    if r.rules
        .iter()
        .flatten()
        .any(|r| r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()))
    {
        errs.push(FieldError::invalid(
            "rules",
            "Invalid value: namespaced rules cannot apply to non-resource URLs",
        ));
    }
    errs
}

pub fn validate_cluster_role(r: &ClusterRole, _: &ValidationConfig) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_rules(r.rules.as_ref(), &mut errs);
    errs
}

fn validate_binding(
    role_ref: &RoleRef,
    subjects: Option<&Vec<Subject>>,
    namespaced: bool,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&role_ref.kind.as_str()) {
        errs.push(FieldError::not_supported(
            "roleRef.kind",
            format!(
                "Unsupported value: {:?}: supported values: {}",
                role_ref.kind,
                kinds
                    .iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if role_ref.api_group != "rbac.authorization.k8s.io" {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            format!(
                "Unsupported value: {:?}: supported values: \"rbac.authorization.k8s.io\"",
                role_ref.api_group
            ),
        ));
    }
    if role_ref.name.is_empty() {
        errs.push(FieldError::required("roleRef.name", "Required value"));
    }
    for (i, s) in subjects.into_iter().flatten().enumerate() {
        match s.kind.as_str() {
            "User" | "Group" => {}
            "ServiceAccount" => {
                if let Some(why) = crate::names::dns1123_subdomain(&s.name) {
                    errs.push(FieldError::invalid(
                        format!("subjects[{i}].name"),
                        format!("Invalid value: {:?}: {why}", s.name),
                    ));
                }
                if !namespaced && s.namespace.as_deref().is_none_or(str::is_empty) {
                    errs.push(FieldError::required(format!("subjects[{i}].namespace"), "Required value"));
                }
            }
            other => errs.push(FieldError::not_supported(
                format!("subjects[{i}].kind"),
                format!("Unsupported value: {other:?}: supported values: \"Group\", \"ServiceAccount\", \"User\""),
            )),
        }
        if s.name.is_empty() {
            errs.push(FieldError::required(
                format!("subjects[{i}].name"),
                "Required value",
            ));
        }
    }
    errs
}

pub fn validate_role_binding(b: &RoleBinding, _: &ValidationConfig) -> Vec<FieldError> {
    validate_binding(&b.role_ref, b.subjects.as_ref(), true)
}

pub fn validate_cluster_role_binding(
    b: &ClusterRoleBinding,
    _: &ValidationConfig,
) -> Vec<FieldError> {
    validate_binding(&b.role_ref, b.subjects.as_ref(), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(v: serde_json::Value) -> Secret {
        serde_json::from_value(v).expect("secret")
    }

    #[test]
    fn a_local_path_volume_is_pinned_to_one_host_by_name() {
        let pv =
            |v: serde_json::Value| -> PersistentVolume { serde_json::from_value(v).expect("pv") };
        let ours = pv(json!({"metadata": {"name": "p", "annotations": {
                ANN_PROVISIONED_BY: LOCAL_PATH_PROVISIONER}},
            "spec": {"local": {"path": "/v/p"}, "nodeAffinity": pinned_to("node01")}}));
        assert!(local_path_volume(&ours));
        assert_eq!(pinned_host(&ours), Some("node01"));
        assert!(pv_fits_node(&ours, &bare_node("node01")));
        assert!(!pv_fits_node(&ours, &bare_node("node02")));
        // Another provisioner's, or not local: not ours to move.
        let theirs = pv(json!({"metadata": {"name": "p", "annotations": {
                ANN_PROVISIONED_BY: "example.com/nfs"}},
            "spec": {"local": {"path": "/v/p"}}}));
        assert!(!local_path_volume(&theirs));
        // Two hosts, another key or operator: not pinned to one host.
        for affinity in [
            json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["a", "b"]}]}]}}),
            json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a"]}]}]}}),
            json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["a"]}]}]}}),
            json!({"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]},
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["b"]}]}]}}),
        ] {
            let v = pv(json!({"metadata": {"name": "p"}, "spec": {"nodeAffinity": affinity}}));
            assert_eq!(pinned_host(&v), None, "{affinity}");
        }
    }

    #[test]
    fn a_pinned_volume_fits_only_the_nodes_its_affinity_matches() {
        let pv = |spec: serde_json::Value| -> PersistentVolume {
            serde_json::from_value(json!({"metadata": {"name": "pv"}, "spec": spec})).expect("pv")
        };
        let host = |h: &str| {
            pv(
                json!({"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [h]}]}]}}}),
            )
        };
        let node01 = bare_node("node01");
        assert!(pv_fits_node(&host("node01"), &node01));
        assert!(!pv_fits_node(&host("node02"), &node01));
        // No affinity: shared storage, every node; an empty required selector: no node.
        assert!(pv_fits_node(&pv(json!({})), &node01));
        assert!(pv_fits_node(&pv(json!({"nodeAffinity": {}})), &node01));
        assert!(!pv_fits_node(
            &pv(json!({"nodeAffinity": {"required": {"nodeSelectorTerms": []}}})),
            &node01
        ));
        // A label the bare node lacks (a zone) does not match until the Node says so.
        let zoned = pv(
            json!({"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]}]}}}),
        );
        assert!(!pv_fits_node(&zoned, &node01));
        let mut labelled = bare_node("node01");
        labelled
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("topology.kubernetes.io/zone".into(), "a".into());
        assert!(pv_fits_node(&zoned, &labelled));
    }

    #[test]
    fn a_secret_defaults_to_opaque_and_refuses_path_like_keys() {
        let mut s = secret(json!({"metadata": {"name": "s"}, "stringData": {"a": "b"}}));
        default_secret(&mut s, &DefaultsConfig::default());
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        for bad in ["../etc", "..", ".", "a/b", "", "..x"] {
            let s = secret(json!({"metadata": {"name": "s"}, "stringData": {bad: "x"}}));
            let errs = validate_secret(&s, &ValidationConfig::default());
            assert_eq!(errs.len(), 1, "{bad:?}: {errs:?}");
            assert_eq!(errs[0].field, format!("stringData[{bad}]"));
            // Once defaulted (as every write is, before validation) the key is data's.
            let mut s = s;
            default_secret(&mut s, &DefaultsConfig::default());
            let errs = validate_secret(&s, &ValidationConfig::default());
            assert_eq!(errs[0].field, format!("data[{bad}]"));
        }
        let ok = secret(
            json!({"metadata": {"name": "s"}, "stringData": {".dotfile": "x", "a-b_c.d": "y"}}),
        );
        assert!(validate_secret(&ok, &ValidationConfig::default()).is_empty());
    }

    #[test]
    fn a_volume_is_bound_only_to_the_claim_its_claim_ref_names() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "a", "uid": "u1"},
            "spec": {"volumeName": "pv-b"}}))
        .expect("pvc");
        let pv = |claim_ref: serde_json::Value| -> PersistentVolume {
            serde_json::from_value(json!({"metadata": {"name": "pv-b"},
                "spec": {"claimRef": claim_ref}}))
            .expect("pv")
        };
        assert!(pv_bound_to(
            &pv(json!({"namespace": "a", "name": "data", "uid": "u1"})),
            &pvc
        ));
        assert!(pv_bound_to(
            &pv(json!({"namespace": "a", "name": "data"})),
            &pvc
        ));
        for other in [
            json!({"namespace": "b", "name": "data", "uid": "u1"}),
            json!({"namespace": "a", "name": "other"}),
            json!({"namespace": "a", "name": "data", "uid": "u2"}),
            json!({"name": "data"}),
        ] {
            assert!(!pv_bound_to(&pv(other.clone()), &pvc), "{other}");
        }
        let unbound: PersistentVolume =
            serde_json::from_value(json!({"metadata": {"name": "pv-b"}, "spec": {}})).expect("pv");
        assert!(!pv_bound_to(&unbound, &pvc));
    }

    #[test]
    fn string_data_is_merged_into_data_and_not_kept() {
        // "b" is in both: stringData's value wins, as kube-apiserver's conversion does.
        let mut s = secret(json!({"metadata": {"name": "s"},
            "data": {"a": "YQ==", "b": "b2xk"}, "stringData": {"b": "new", "c": "cloud-config\n"}}));
        default_secret(&mut s, &DefaultsConfig::default());
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(v.get("stringData"), None, "{v}");
        assert_eq!(
            v["data"],
            json!({"a": "YQ==", "b": "bmV3", "c": "Y2xvdWQtY29uZmlnCg=="})
        );
    }

    #[test]
    fn typed_secrets_need_their_keys() {
        let s = secret(
            json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls", "stringData": {"tls.crt": "x"}}),
        );
        let errs = validate_secret(&s, &ValidationConfig::default());
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "data[tls.key]");
        let big = "x".repeat(MAX_DATA_BYTES + 1);
        let s = secret(json!({"metadata": {"name": "s"}, "stringData": {"k": big}}));
        assert!(validate_secret(&s, &ValidationConfig::default())[0]
            .message
            .starts_with("Too long"));
    }

    #[test]
    fn a_service_gets_kube_apiservers_defaults_and_port_checks() {
        let mut s: Service = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "ports": [{"port": 80}]}
        }))
        .expect("service");
        default_service(&mut s, &DefaultsConfig::default());
        let spec = s.spec.as_ref().expect("spec");
        assert_eq!(spec.session_affinity.as_deref(), Some("None"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
        let p = &spec.ports.as_ref().expect("ports")[0];
        assert_eq!(p.protocol.as_deref(), Some("TCP"));
        assert_eq!(p.target_port, Some(IntOrString::Int(80)));
        let bad: Service = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"ports": [{"port": 0, "nodePort": 31000}, {"port": 80, "protocol": "ICMP"}]}
        }))
        .expect("service");
        let fields: Vec<String> = validate_service(&bad, &ValidationConfig::default())
            .into_iter()
            .map(|e| e.field)
            .collect();
        for want in [
            "spec.ports[0].name",
            "spec.ports[0].port",
            "spec.ports[0].nodePort",
            "spec.ports[1].name",
            "spec.ports[1].protocol",
        ] {
            assert!(fields.iter().any(|f| f == want), "{want} not in {fields:?}");
        }
    }

    #[test]
    fn a_namespace_always_carries_its_name_as_a_label() {
        let mut n: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a",
            "labels": {"kubernetes.io/metadata.name": "forged", "keep": "x"}}}))
        .expect("namespace");
        default_namespace(&mut n, &DefaultsConfig::default());
        assert_eq!(
            serde_json::to_value(&n).expect("json")["metadata"]["labels"],
            json!({"keep": "x", "kubernetes.io/metadata.name": "team-a"})
        );
    }

    #[test]
    fn a_node_always_has_a_spec() {
        let mut n: Node = serde_json::from_value(json!({"metadata": {"name": "n"}})).expect("node");
        default_node(&mut n, &DefaultsConfig::default());
        assert_eq!(serde_json::to_value(&n).expect("json")["spec"], json!({}));
    }
}

//! Authorization: kube-apiserver's RBAC authorizer over the stored Roles, ClusterRoles,
//! RoleBindings and ClusterRoleBindings (aggregated ClusterRoles included), the request
//! attributes it decides on, the default roles every cluster has (and KubeVirt's
//! `kubevirt.io:admin|edit|view`), and access reviews (`kubectl auth can-i`).

use crate::auth::User;
use crate::error::ApiError;
use crate::objects::Query;
use crate::selector::LabelSelector;
use crate::store::{Key, Store};
use http::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub const GROUP: &str = "rbac.authorization.k8s.io";

/// What a request asks to do, as kube-apiserver's `authorizer.Attributes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    /// A resource request (`/api/...`, `/apis/g/v/...` naming a resource), or a non-resource
    /// request for `path`.
    pub resource_request: bool,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
}

impl Attributes {
    /// The attributes of a request, from its method, path segments and query.
    pub fn of(method: &Method, path: &str, segs: &[&str], q: &Query) -> Attributes {
        let rest: &[&str] = match segs {
            ["api", "v1", rest @ ..] => rest,
            ["apis", _, _, rest @ ..] => rest,
            _ => &[],
        };
        let group = match segs {
            ["apis", g, ..] => g.to_string(),
            _ => String::new(),
        };
        let http_verb = method.as_str().to_ascii_lowercase();
        if rest.is_empty() {
            return Attributes {
                verb: http_verb,
                path: path.to_string(),
                ..Default::default()
            };
        }
        let (namespace, rest): (String, &[&str]) = match rest {
            ["namespaces", ns, more @ ..] if !more.is_empty() => (ns.to_string(), more),
            _ => (String::new(), rest),
        };
        let (resource, name, subresource) = match rest {
            [r] => (r.to_string(), String::new(), String::new()),
            [r, n] => (r.to_string(), n.to_string(), String::new()),
            [r, n, sub @ ..] => (r.to_string(), n.to_string(), sub.join("/")),
            [] => (String::new(), String::new(), String::new()),
        };
        // `/api/v1/namespaces/x` names the namespace x, in namespace x.
        let (resource, name, namespace) = match (segs, rest.is_empty()) {
            (["api", "v1", "namespaces", ns], _) => {
                ("namespaces".to_string(), ns.to_string(), ns.to_string())
            }
            (["api", "v1", "namespaces", ns, sub], _) if *sub == "status" || *sub == "finalize" => {
                ("namespaces".to_string(), ns.to_string(), ns.to_string())
            }
            _ => (resource, name, namespace),
        };
        let subresource = match segs {
            ["api", "v1", "namespaces", _, sub @ ("status" | "finalize")] => sub.to_string(),
            _ => subresource,
        };
        let verb = match *method {
            Method::GET | Method::HEAD if name.is_empty() && q.flag("watch") => "watch",
            Method::GET | Method::HEAD if name.is_empty() => "list",
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if name.is_empty() => "deletecollection",
            Method::DELETE => "delete",
            _ => http_verb.as_str(),
        }
        .to_string();
        Attributes {
            verb,
            resource_request: true,
            group,
            resource,
            subresource,
            namespace,
            name,
            path: path.to_string(),
        }
    }

    /// kube-apiserver's Forbidden message for `user`.
    pub fn forbidden(&self, user: &User) -> ApiError {
        let who = format!("User {:?}", user.name);
        if !self.resource_request {
            return ApiError::new(
                403,
                "Forbidden",
                format!("forbidden: {who} cannot {} path {:?}", self.verb, self.path),
            );
        }
        let qualified = if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        let resource = if self.subresource.is_empty() {
            format!("resource {:?}", self.resource)
        } else {
            format!("resource \"{}/{}\"", self.resource, self.subresource)
        };
        let name = if self.name.is_empty() {
            String::new()
        } else {
            format!("{:?} ", self.name)
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", self.namespace)
        };
        let mut e = ApiError::new(
            403,
            "Forbidden",
            format!(
                "{qualified} {name}is forbidden: {who} cannot {} {resource} in API group {:?} {scope}",
                self.verb, self.group
            ),
        );
        e.details = Some(json!({"name": self.name, "group": self.group, "kind": self.resource}));
        e
    }
}

#[derive(Clone, Debug, Default)]
struct Rule {
    verbs: Vec<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    names: Vec<String>,
    urls: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

impl Rule {
    fn parse(v: &Value) -> Rule {
        Rule {
            verbs: strings(&v["verbs"]),
            groups: strings(&v["apiGroups"]),
            resources: strings(&v["resources"]),
            names: strings(&v["resourceNames"]),
            urls: strings(&v["nonResourceURLs"]),
        }
    }

    fn allows(&self, a: &Attributes) -> bool {
        if !self.verbs.iter().any(|v| v == "*" || *v == a.verb) {
            return false;
        }
        if !a.resource_request {
            return self.urls.iter().any(|u| {
                u == "*"
                    || *u == a.path
                    || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
            });
        }
        let combined = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        self.groups.iter().any(|g| g == "*" || *g == a.group)
            && self.resources.iter().any(|r| {
                r == "*"
                    || *r == combined
                    || (!a.subresource.is_empty()
                        && r.strip_prefix("*/") == Some(a.subresource.as_str()))
            })
            && (self.names.is_empty() || self.names.contains(&a.name))
    }
}

#[derive(Clone, Debug)]
struct Binding {
    /// Empty for a ClusterRoleBinding.
    namespace: String,
    subjects: Vec<(String, String, String)>,
    role_kind: String,
    role_name: String,
}

impl Binding {
    fn names(&self, user: &User) -> bool {
        self.subjects
            .iter()
            .any(|(kind, name, ns)| match kind.as_str() {
                "User" => *name == user.name,
                "Group" => user.groups.iter().any(|g| g == name),
                "ServiceAccount" => {
                    let ns = if ns.is_empty() { &self.namespace } else { ns };
                    user.name == format!("system:serviceaccount:{ns}:{name}")
                }
                _ => false,
            })
    }
}

/// The stored RBAC objects, parsed once per change.
pub struct Policy {
    cluster_roles: HashMap<String, Vec<Rule>>,
    roles: HashMap<(String, String), Vec<Rule>>,
    bindings: Vec<Binding>,
}

impl Policy {
    pub fn load(store: &Store) -> Policy {
        let list = |plural: &str| -> Vec<Value> {
            store
                .list(&Key::prefix(GROUP, plural, None))
                .0
                .iter()
                .map(|o| o.value())
                .collect()
        };
        let cluster_role_objs = list("clusterroles");
        let mut cluster_roles: HashMap<String, Vec<Rule>> = HashMap::new();
        for cr in &cluster_role_objs {
            let name = cr["metadata"]["name"].as_str().unwrap_or("").to_string();
            let rules = cr["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(Rule::parse);
            cluster_roles.entry(name).or_default().extend(rules);
        }
        // Aggregation: a ClusterRole with an aggregationRule also has the rules of every
        // ClusterRole its selectors match (one level, as kube's controller fills in).
        for cr in &cluster_role_objs {
            let Some(selectors) = cr["aggregationRule"]["clusterRoleSelectors"].as_array() else {
                continue;
            };
            let name = cr["metadata"]["name"].as_str().unwrap_or("").to_string();
            let mut extra = Vec::new();
            for sel in selectors {
                let Ok(sel) = LabelSelector::from_json(sel) else {
                    continue;
                };
                for other in &cluster_role_objs {
                    let other_name = other["metadata"]["name"].as_str().unwrap_or("");
                    if other_name == name || !sel.matches_value(&other["metadata"]["labels"]) {
                        continue;
                    }
                    extra.extend(
                        other["rules"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(Rule::parse),
                    );
                }
            }
            cluster_roles.entry(name).or_default().extend(extra);
        }
        let mut roles = HashMap::new();
        for r in list("roles") {
            let key = (
                r["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                r["metadata"]["name"].as_str().unwrap_or("").to_string(),
            );
            roles.insert(
                key,
                r["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(Rule::parse)
                    .collect(),
            );
        }
        let mut bindings = Vec::new();
        for (plural, namespaced) in [("rolebindings", true), ("clusterrolebindings", false)] {
            for b in list(plural) {
                bindings.push(Binding {
                    namespace: if namespaced {
                        b["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or("")
                            .to_string()
                    } else {
                        String::new()
                    },
                    subjects: b["subjects"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| {
                            (
                                s["kind"].as_str().unwrap_or("").to_string(),
                                s["name"].as_str().unwrap_or("").to_string(),
                                s["namespace"].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect(),
                    role_kind: b["roleRef"]["kind"].as_str().unwrap_or("").to_string(),
                    role_name: b["roleRef"]["name"].as_str().unwrap_or("").to_string(),
                });
            }
        }
        Policy {
            cluster_roles,
            roles,
            bindings,
        }
    }

    fn rules_of(&self, b: &Binding) -> &[Rule] {
        let rules = match b.role_kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&b.role_name),
            "Role" => self.roles.get(&(b.namespace.clone(), b.role_name.clone())),
            _ => None,
        };
        rules.map(Vec::as_slice).unwrap_or_default()
    }

    /// Whether `user` may do `a`.
    pub fn allows(&self, user: &User, a: &Attributes) -> bool {
        self.bindings.iter().any(|b| {
            // A RoleBinding grants only within its namespace.
            (b.namespace.is_empty() || (a.resource_request && b.namespace == a.namespace))
                && b.names(user)
                && self.rules_of(b).iter().any(|r| r.allows(a))
        })
    }

    /// The rules that apply to `user` in `namespace`, as SelfSubjectRulesReview reports them.
    pub fn rules_for(&self, user: &User, namespace: &str) -> (Vec<Value>, Vec<Value>) {
        let mut resource = Vec::new();
        let mut non_resource = Vec::new();
        for b in &self.bindings {
            if !(b.namespace.is_empty() || b.namespace == namespace) || !b.names(user) {
                continue;
            }
            for r in self.rules_of(b) {
                if r.urls.is_empty() {
                    let mut v =
                        json!({"verbs": r.verbs, "apiGroups": r.groups, "resources": r.resources});
                    if !r.names.is_empty() {
                        v["resourceNames"] = json!(r.names);
                    }
                    resource.push(v);
                } else if b.namespace.is_empty() {
                    non_resource.push(json!({"verbs": r.verbs, "nonResourceURLs": r.urls}));
                }
            }
        }
        (resource, non_resource)
    }
}

/// The attributes a SubjectAccessReview/SelfSubjectAccessReview spec asks about.
pub fn review_attributes(spec: &Value) -> Attributes {
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        Attributes {
            verb: s("verb"),
            resource_request: true,
            group: s("group"),
            resource: s("resource"),
            subresource: s("subresource"),
            namespace: s("namespace"),
            name: s("name"),
            path: String::new(),
        }
    } else {
        let n = &spec["nonResourceAttributes"];
        Attributes {
            verb: n["verb"].as_str().unwrap_or("").to_string(),
            path: n["path"].as_str().unwrap_or("").to_string(),
            ..Default::default()
        }
    }
}

/// A cached [`Policy`], dropped whenever an RBAC object is written.
#[derive(Default)]
pub struct PolicyCache(parking_lot::RwLock<Option<Arc<Policy>>>);

impl PolicyCache {
    pub fn get(&self, store: &Store) -> Arc<Policy> {
        if let Some(p) = self.0.read().clone() {
            return p;
        }
        let p = Arc::new(Policy::load(store));
        *self.0.write() = Some(p.clone());
        p
    }

    pub fn invalidate(&self) {
        *self.0.write() = None;
    }
}

const ALL: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];
const READ: &[&str] = &["get", "list", "watch"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    let mut l = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    if let (Some(m), Some(extra)) = (l.as_object_mut(), labels.as_object()) {
        m.extend(extra.clone());
    }
    json!({"metadata": {"name": name, "labels": l}, "rules": rules})
}

fn aggregated(name: &str, to: &str, labels: Value) -> Value {
    let mut c = cluster_role(name, labels, vec![]);
    c["aggregationRule"] = json!({"clusterRoleSelectors": [
        {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"}}
    ]});
    c
}

fn agg_label(to: &str) -> Value {
    json!({format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"})
}

fn binding(name: &str, role: &str, group: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": GROUP, "kind": "Group", "name": group}],
    })
}

/// KubeVirt's and CDI's roles, from their one definition in [`kubevirt_api::rbac`] (which
/// `kubevirt-rs crds --with-rbac` also prints for a real cluster).
fn kubevirt_roles() -> Vec<Value> {
    kubevirt_api::rbac::cluster_roles()
        .iter()
        .filter_map(|r| serde_json::to_value(r).ok())
        .collect()
}

/// The ClusterRoles and ClusterRoleBindings every server has (kube-apiserver's bootstrap
/// policy, reduced to the kinds served here, and KubeVirt's roles).
pub fn default_cluster_roles() -> Vec<Value> {
    let core_write = [
        "pods",
        "configmaps",
        "secrets",
        "services",
        "persistentvolumeclaims",
        "serviceaccounts",
    ];
    let mut roles = vec![
        json!({"metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
               "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                         {"nonResourceURLs": ["*"], "verbs": ["*"]}]}),
        aggregated("admin", "admin", json!({})),
        aggregated("edit", "edit", agg_label("admin")),
        aggregated("view", "view", agg_label("edit")),
        cluster_role(
            "system:aggregate-to-admin",
            agg_label("admin"),
            vec![rule(&[GROUP], &["roles", "rolebindings"], ALL)],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            agg_label("edit"),
            vec![
                rule(&[""], &core_write, ALL),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(&[""], &["pods/eviction"], &["create"]),
                rule(&[""], &["events"], READ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            agg_label("view"),
            vec![
                rule(
                    &[""],
                    &[
                        "pods",
                        "configmaps",
                        "services",
                        "endpoints",
                        "persistentvolumeclaims",
                        "serviceaccounts",
                        "events",
                    ],
                    READ,
                ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(&[""], &["namespaces"], &["get"]),
                rule(&["events.k8s.io"], &["events"], READ),
            ],
        ),
        cluster_role(
            "system:discovery",
            json!({}),
            vec![
                json!({"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/version", "/version/", "/openapi", "/openapi/*"], "verbs": ["get"]}),
            ],
        ),
        // kube-apiserver's bootstrap role for scraping `/metrics` and the health endpoints.
        cluster_role(
            "system:monitoring",
            json!({}),
            vec![
                json!({"nonResourceURLs": ["/healthz", "/healthz/*", "/livez", "/livez/*", "/metrics", "/metrics/slis", "/readyz", "/readyz/*"], "verbs": ["get"]}),
            ],
        ),
        // kube-apiserver's bootstrap role for delegated authentication and authorization
        // (kube-rbac-proxy, a node agent's `/metrics`): bound to nobody by default.
        cluster_role(
            "system:auth-delegator",
            json!({}),
            vec![
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![rule(
                &["authorization.k8s.io"],
                &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                &["create"],
            )],
        ),
    ];
    roles.extend(kubevirt_roles());
    roles
}

pub fn default_cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", "cluster-admin", crate::auth::MASTERS),
        binding(
            "system:discovery",
            "system:discovery",
            crate::auth::AUTHENTICATED,
        ),
        binding(
            "system:monitoring",
            "system:monitoring",
            "system:monitoring",
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            crate::auth::AUTHENTICATED,
        ),
    ]
    .into_iter()
    .chain(
        kubevirt_api::rbac::cluster_role_bindings()
            .iter()
            .filter_map(|b| serde_json::to_value(b).ok()),
    )
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: Method, path: &str, query: Option<&str>) -> Attributes {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        Attributes::of(&method, path, &segs, &Query::parse(query))
    }

    #[test]
    fn request_paths_become_kube_attributes() {
        let a = attrs(
            Method::GET,
            "/apis/kubevirt.io/v1/namespaces/a/virtualmachines",
            None,
        );
        assert_eq!(
            (
                a.verb.as_str(),
                a.group.as_str(),
                a.resource.as_str(),
                a.namespace.as_str()
            ),
            ("list", "kubevirt.io", "virtualmachines", "a")
        );
        let a = attrs(
            Method::GET,
            "/apis/kubevirt.io/v1/virtualmachines",
            Some("watch=true"),
        );
        assert_eq!((a.verb.as_str(), a.namespace.as_str()), ("watch", ""));
        let a = attrs(
            Method::PUT,
            "/apis/subresources.kubevirt.io/v1/namespaces/a/virtualmachines/vm/start",
            None,
        );
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.subresource.as_str(),
                a.name.as_str()
            ),
            ("update", "virtualmachines", "start", "vm")
        );
        let a = attrs(Method::GET, "/apis/subresources.kubevirt.io/v1/namespaces/a/virtualmachineinstances/v/vnc/screenshot", None);
        assert_eq!(a.subresource, "vnc/screenshot");
        let a = attrs(Method::DELETE, "/api/v1/namespaces/b", None);
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.name.as_str(),
                a.namespace.as_str()
            ),
            ("delete", "namespaces", "b", "b")
        );
        let a = attrs(Method::GET, "/apis", None);
        assert!(!a.resource_request);
        assert_eq!(a.path, "/apis");
        let a = attrs(Method::GET, "/api/v1/nodes/n1", None);
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.namespace.as_str()),
            ("nodes", "n1", "")
        );
    }

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn rules_match_as_kube_rbac_matches_them() {
        let r = Rule::parse(&rule(
            &["kubevirt.io"],
            &["virtualmachines", "*/status"],
            &["get"],
        ));
        let mut a = attrs(
            Method::GET,
            "/apis/kubevirt.io/v1/namespaces/a/virtualmachines/x",
            None,
        );
        assert!(r.allows(&a));
        a.verb = "delete".into();
        assert!(!r.allows(&a));
        let a = attrs(
            Method::GET,
            "/apis/kubevirt.io/v1/namespaces/a/virtualmachineinstances/x/status",
            None,
        );
        assert!(r.allows(&a), "*/status");
        let a = attrs(
            Method::GET,
            "/apis/kubevirt.io/v1/namespaces/a/virtualmachineinstances/x",
            None,
        );
        assert!(!r.allows(&a));
        let n = Rule::parse(&json!({"nonResourceURLs": ["/apis/*"], "verbs": ["get"]}));
        assert!(n.allows(&attrs(Method::GET, "/apis/kubevirt.io", None)));
        assert!(!n.allows(&attrs(Method::GET, "/version", None)));
        let named = Rule::parse(
            &json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"], "verbs": ["get"]}),
        );
        assert!(named.allows(&attrs(
            Method::GET,
            "/api/v1/namespaces/a/configmaps/one",
            None
        )));
        assert!(!named.allows(&attrs(
            Method::GET,
            "/api/v1/namespaces/a/configmaps/two",
            None
        )));
        let _ = user("x", &[]);
    }
}

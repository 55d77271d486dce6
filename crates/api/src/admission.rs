//! Admission of one object: decode it into its kind's type, find fields the schema does not
//! have, default it, validate it. The API server and `kubevirt-rs validate` both go through
//! [`admit`], so an object that passes offline passes the server and vice versa.

use crate::admitters;
use crate::defaults::{self, DefaultsConfig};
use crate::field::{CauseType, FieldError};
use crate::validation::{self, ValidationConfig};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// What to do with fields the schema does not know (`fieldValidation` in Kubernetes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Refuse the object, as `kubectl --validate=strict` does.
    #[default]
    Strict,
    /// Drop them and return a warning for each.
    Warn,
    /// Drop them silently.
    Ignore,
}

#[derive(Clone, Debug, Default)]
pub struct AdmitOptions {
    pub field_validation: FieldValidation,
    pub defaults: DefaultsConfig,
    pub validation: ValidationConfig,
}

/// What a write does: KubeVirt's admitters check some rules only on create, others (which
/// fields are immutable) only on update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Operation {
    #[default]
    Create,
    Update,
}

/// The user a request comes from, as the API server authenticated it (Kubernetes
/// `UserInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub groups: Vec<String>,
}

/// The group whose members may do anything (kube-apiserver's superusers); our own
/// controllers and handlers authenticate as its members.
pub const MASTERS: &str = "system:masters";
/// KubeVirt's own service accounts (namespace `kubevirt`), which its admitters trust to change
/// what users may not (VMI specs for hotplug, migration priority).
pub const KUBEVIRT_SERVICE_ACCOUNTS: &[&str] = &[
    "system:serviceaccount:kubevirt:kubevirt-controller",
    "system:serviceaccount:kubevirt:kubevirt-handler",
    "system:serviceaccount:kubevirt:kubevirt-apiserver",
    "system:serviceaccount:kubevirt:kubevirt-operator",
];

impl UserInfo {
    /// Whether KubeVirt would treat this user as one of its own components: one of its service
    /// accounts, or here also a member of `system:masters` (our in-process controllers and
    /// handler, and the cluster admin).
    pub fn is_kubevirt_component(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS)
            || KUBEVIRT_SERVICE_ACCOUNTS.contains(&self.username.as_str())
    }
}

/// Read access to other stored objects, for the admitters that look them up (a migration's
/// VMI, a restore's snapshot). Implemented by the API server over its store.
pub trait Lookup: Sync {
    /// The object `name` of `group`/`plural` in `namespace` ("" for cluster-scoped ones).
    fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value>;
    /// Every object of `group`/`plural` in `namespace`.
    fn list(&self, group: &str, plural: &str, namespace: &str) -> Vec<Value>;
}

/// One write as an admitter sees it (Kubernetes `AdmissionRequest`). The default is a create
/// with no user and no store: offline validation (`kubevirt-rs validate`), which trusts its
/// caller like an in-process component.
#[derive(Clone, Copy, Default)]
pub struct Request<'a> {
    pub operation: Operation,
    /// The stored object, on update.
    pub old: Option<&'a Value>,
    /// Who asks; `None` for the server's own writes and offline validation.
    pub user: Option<&'a UserInfo>,
    /// `Some("status")` for writes to `/status`.
    pub subresource: Option<&'a str>,
    pub lookup: Option<&'a dyn Lookup>,
}

impl Request<'_> {
    /// Whether the request comes from a KubeVirt component (see
    /// [`UserInfo::is_kubevirt_component`]); requests without a user are the server's own.
    pub fn privileged(&self) -> bool {
        self.user.is_none_or(UserInfo::is_kubevirt_component)
    }

    pub fn username(&self) -> &str {
        self.user.map(|u| u.username.as_str()).unwrap_or("")
    }

    pub fn is_update(&self) -> bool {
        self.operation == Operation::Update
    }
}

/// Rules that need more than the object: the old object, the user, other objects.
pub type RulesFn<K> = fn(&K, Option<&K>, &Request, &ValidationConfig) -> Vec<FieldError>;

/// The warnings an admitter returns with an accepted object (KubeVirt's
/// `AdmissionResponse.Warnings`, e.g. a deprecated field); the API server sends each as a
/// `Warning: 299` header.
pub type WarnFn<K> = fn(&K, &ValidationConfig) -> Vec<String>;

/// The object as it will be stored: typed fields only, defaults applied.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub value: Value,
    /// Kubernetes-style warnings (e.g. unknown fields under `Warn`).
    pub warnings: Vec<String>,
}

type AdmitFn = fn(&Value, &Request, &AdmitOptions) -> Result<Admitted, Vec<FieldError>>;

/// A kind the project knows: its REST names and how to admit it.
pub struct KindInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    admit: AdmitFn,
    roundtrip: fn(&Value) -> Result<Value, String>,
    /// The CRD, for the kinds that are custom resources in a real cluster.
    pub crd: Option<fn() -> CustomResourceDefinition>,
}

impl KindInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Admit a create with no user: offline validation.
    pub fn admit(&self, value: &Value, opts: &AdmitOptions) -> Result<Admitted, Vec<FieldError>> {
        (self.admit)(value, &Request::default(), opts)
    }

    /// Admit one write as the API server sees it (operation, old object, user).
    pub fn admit_request(
        &self,
        value: &Value,
        req: &Request,
        opts: &AdmitOptions,
    ) -> Result<Admitted, Vec<FieldError>> {
        (self.admit)(value, req, opts)
    }

    /// Decode into the kind's type and encode again, with no defaulting: what survives is
    /// exactly what the types model.
    pub fn roundtrip(&self, value: &Value) -> Result<Value, String> {
        (self.roundtrip)(value)
    }
}

fn no_default<K>(_: &mut K, _: &DefaultsConfig) {}
fn no_validate<K>(_: &K, _: &ValidationConfig) -> Vec<FieldError> {
    Vec::new()
}

/// A built-in Kubernetes kind: decoded with k8s-openapi's type, no KubeVirt admission.
macro_rules! core {
    ($ty:ty, $kind:expr, $group:expr, $plural:expr, $ns:expr) => {
        core!($ty, $kind, $group, $plural, $ns, no_default, no_validate)
    };
    ($ty:ty, $kind:expr, $group:expr, $plural:expr, $ns:expr, $default:expr, $validate:expr) => {
        KindInfo {
            group: $group,
            version: "v1",
            kind: $kind,
            plural: $plural,
            namespaced: $ns,
            admit: |v, r, o| {
                admit_typed::<$ty>(
                    v,
                    r,
                    o,
                    Hooks {
                        default: $default,
                        on_create: None,
                        validate: $validate,
                        rules: None,
                        warn: None,
                    },
                )
            },
            roundtrip: roundtrip::<$ty>,
            crd: None,
        }
    };
}

macro_rules! custom {
    ($ty:ident, $default:expr, $validate:expr) => {
        custom!($ty, $default, $validate, None)
    };
    ($ty:ident, $default:expr, $validate:expr, $rules:expr) => {
        custom!($ty, $default, $validate, $rules, None)
    };
    ($ty:ident, $default:expr, $validate:expr, $rules:expr, $warn:expr) => {
        custom!($ty, $default, None, $validate, $rules, $warn)
    };
    ($ty:ident, $default:expr, $on_create:expr, $validate:expr, $rules:expr, $warn:expr) => {
        KindInfo {
            group: <crate::$ty as kube::Resource>::group(&())
                .into_owned()
                .leak(),
            version: <crate::$ty as kube::Resource>::version(&())
                .into_owned()
                .leak(),
            kind: stringify!($ty),
            plural: <crate::$ty as kube::Resource>::plural(&())
                .into_owned()
                .leak(),
            namespaced: <crate::$ty as CustomResourceExt>::crd().spec.scope == "Namespaced",
            admit: |v, r, o| {
                admit_typed::<crate::$ty>(
                    v,
                    r,
                    o,
                    Hooks {
                        default: $default,
                        on_create: $on_create,
                        validate: $validate,
                        rules: $rules,
                        warn: $warn,
                    },
                )
            },
            roundtrip: roundtrip::<crate::$ty>,
            crd: Some(|| <crate::$ty as CustomResourceExt>::crd()),
        }
    };
}

/// Every kind the project models: KubeVirt's and CDI's custom resources, then the core kinds
/// our users touch.
pub fn kinds() -> &'static [KindInfo] {
    use crate::core_kinds;
    use k8s_openapi::api::coordination::v1 as coordination;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::events::v1 as events;
    use k8s_openapi::api::rbac::v1 as rbac;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    static KINDS: std::sync::OnceLock<Vec<KindInfo>> = std::sync::OnceLock::new();
    KINDS.get_or_init(|| {
        vec![
            custom!(
                VirtualMachineInstance,
                defaults::default_vmi,
                validation::validate_vmi,
                Some(admitters::vmi_update::rules)
            ),
            custom!(
                VirtualMachine,
                defaults::default_vm,
                no_validate,
                Some(admitters::vm::rules),
                Some(admitters::vm::warnings)
            ),
            custom!(
                VirtualMachineInstanceMigration,
                no_default,
                Some(defaults::label_migration),
                no_validate,
                Some(admitters::migration::rules),
                None
            ),
            custom!(
                VirtualMachineInstanceReplicaSet,
                no_default,
                admitters::vmirs::validate,
                Some(admitters::vmirs::rules)
            ),
            custom!(KubeVirt, no_default, no_validate),
            custom!(
                VirtualMachineInstancetype,
                no_default,
                admitters::instancetype::validate,
                None,
                Some(admitters::instancetype::warnings)
            ),
            custom!(
                VirtualMachineClusterInstancetype,
                no_default,
                admitters::instancetype::validate_cluster,
                None,
                Some(admitters::instancetype::warnings_cluster)
            ),
            custom!(
                VirtualMachinePreference,
                no_default,
                admitters::preference::validate,
                None,
                Some(admitters::preference::warnings)
            ),
            custom!(
                VirtualMachineClusterPreference,
                no_default,
                admitters::preference::validate_cluster,
                None,
                Some(admitters::preference::warnings_cluster)
            ),
            custom!(DataVolume, defaults::default_dv, |dv, _| {
                validation::validate_dv(dv)
            }),
            custom!(CDIConfig, no_default, no_validate),
            custom!(StorageProfile, no_default, no_validate),
            custom!(
                VirtualMachineSnapshot,
                no_default,
                no_validate,
                Some(admitters::snapshot::rules)
            ),
            custom!(VirtualMachineSnapshotContent, no_default, no_validate),
            custom!(
                VirtualMachineRestore,
                no_default,
                no_validate,
                Some(admitters::restore::rules)
            ),
            custom!(
                MigrationPolicy,
                no_default,
                no_validate,
                Some(admitters::migration_policy::rules)
            ),
            custom!(
                VirtualMachinePool,
                no_default,
                admitters::vmpool::validate,
                Some(admitters::vmpool::rules)
            ),
            custom!(
                VirtualMachineClone,
                no_default,
                Some(admitters::clone::on_create),
                no_validate,
                Some(admitters::clone::rules),
                None
            ),
            custom!(
                VirtualMachineExport,
                no_default,
                no_validate,
                Some(admitters::export::rules)
            ),
            custom!(NetworkAttachmentDefinition, no_default, |nad, _| {
                crate::multus::validate_nad(nad)
            }),
            custom!(VolumeSnapshot, no_default, |vs, _| {
                crate::volumesnapshot::validate_volume_snapshot(vs)
            }),
            custom!(VolumeSnapshotContent, no_default, |c, _| {
                crate::volumesnapshot::validate_volume_snapshot_content(c)
            }),
            custom!(VolumeSnapshotClass, no_default, |c, _| {
                crate::volumesnapshot::validate_volume_snapshot_class(c)
            }),
            core!(
                core::Namespace,
                "Namespace",
                "",
                "namespaces",
                false,
                core_kinds::default_namespace,
                no_validate
            ),
            core!(
                core::ConfigMap,
                "ConfigMap",
                "",
                "configmaps",
                true,
                no_default,
                core_kinds::validate_configmap
            ),
            core!(
                core::Secret,
                "Secret",
                "",
                "secrets",
                true,
                core_kinds::default_secret,
                core_kinds::validate_secret
            ),
            core!(
                core::PersistentVolumeClaim,
                "PersistentVolumeClaim",
                "",
                "persistentvolumeclaims",
                true,
                core_kinds::default_pvc,
                no_validate
            ),
            core!(
                core::PersistentVolume,
                "PersistentVolume",
                "",
                "persistentvolumes",
                false,
                core_kinds::default_pv,
                no_validate
            ),
            core!(
                core::Node,
                "Node",
                "",
                "nodes",
                false,
                core_kinds::default_node,
                no_validate
            ),
            core!(core::Pod, "Pod", "", "pods", true),
            core!(
                core::Service,
                "Service",
                "",
                "services",
                true,
                core_kinds::default_service,
                core_kinds::validate_service
            ),
            core!(
                core::Endpoints,
                "Endpoints",
                "",
                "endpoints",
                true,
                core_kinds::default_endpoints,
                core_kinds::validate_endpoints
            ),
            core!(
                k8s_openapi::api::discovery::v1::EndpointSlice,
                "EndpointSlice",
                "discovery.k8s.io",
                "endpointslices",
                true,
                core_kinds::default_endpoint_slice,
                core_kinds::validate_endpoint_slice
            ),
            core!(
                k8s_openapi::api::storage::v1::StorageClass,
                "StorageClass",
                "storage.k8s.io",
                "storageclasses",
                false,
                core_kinds::default_storage_class,
                core_kinds::validate_storage_class
            ),
            core!(
                k8s_openapi::api::apps::v1::ControllerRevision,
                "ControllerRevision",
                "apps",
                "controllerrevisions",
                true
            ),
            core!(core::Event, "Event", "", "events", true),
            core!(events::Event, "Event", "events.k8s.io", "events", true),
            core!(
                coordination::Lease,
                "Lease",
                "coordination.k8s.io",
                "leases",
                true
            ),
            core!(
                core::ServiceAccount,
                "ServiceAccount",
                "",
                "serviceaccounts",
                true
            ),
            core!(
                rbac::Role,
                "Role",
                "rbac.authorization.k8s.io",
                "roles",
                true,
                no_default,
                core_kinds::validate_role
            ),
            core!(
                rbac::ClusterRole,
                "ClusterRole",
                "rbac.authorization.k8s.io",
                "clusterroles",
                false,
                no_default,
                core_kinds::validate_cluster_role
            ),
            core!(
                rbac::RoleBinding,
                "RoleBinding",
                "rbac.authorization.k8s.io",
                "rolebindings",
                true,
                no_default,
                core_kinds::validate_role_binding
            ),
            core!(
                rbac::ClusterRoleBinding,
                "ClusterRoleBinding",
                "rbac.authorization.k8s.io",
                "clusterrolebindings",
                false,
                no_default,
                core_kinds::validate_cluster_role_binding
            ),
            core!(
                apiextensions::CustomResourceDefinition,
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                false
            ),
        ]
    })
}

/// The kind an object declares with `apiVersion` and `kind`.
pub fn kind_of(api_version: &str, kind: &str) -> Option<&'static KindInfo> {
    kinds()
        .iter()
        .find(|k| k.kind == kind && k.api_version() == api_version)
}

/// Admit an object whose kind is found from its own `apiVersion`/`kind`.
pub fn admit(value: &Value, opts: &AdmitOptions) -> Result<Admitted, Vec<FieldError>> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version.is_empty() || kind.is_empty() {
        return Err(vec![FieldError::required(
            if api_version.is_empty() {
                "apiVersion"
            } else {
                "kind"
            },
            "apiVersion and kind must be set",
        )]);
    }
    match kind_of(api_version, kind) {
        Some(k) => k.admit(value, opts),
        None if api_version == "kubevirt.io/v1alpha3" => Err(vec![FieldError::new(
            CauseType::FieldValueNotSupported,
            "apiVersion",
            "kubevirt.io/v1alpha3 is KubeVirt's deprecated alias of kubevirt.io/v1: write apiVersion: kubevirt.io/v1",
        )]),
        None if kind == "VirtualMachineInstancePreset" => Err(vec![FieldError::new(
            CauseType::FieldValueNotSupported,
            "kind",
            "VirtualMachineInstancePreset is deprecated in KubeVirt and not served here: use a \
             VirtualMachineInstancetype and VirtualMachinePreference (instancetype.kubevirt.io/v1beta1)",
        )]),
        None => Err(vec![FieldError::new(
            CauseType::FieldValueNotSupported,
            "kind",
            format!("no kind \"{kind}\" is registered for version \"{api_version}\""),
        )]),
    }
}

fn roundtrip<K: DeserializeOwned + Serialize>(value: &Value) -> Result<Value, String> {
    let typed: K = serde_path_to_error::deserialize(value).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// What a kind's admission does, in order: defaults, create-only mutations (KubeVirt's mutators
/// that run on create only), validation of the object alone, rules that see the request, and
/// warnings.
struct Hooks<K> {
    default: fn(&mut K, &DefaultsConfig),
    on_create: Option<fn(&mut K)>,
    validate: fn(&K, &ValidationConfig) -> Vec<FieldError>,
    rules: Option<RulesFn<K>>,
    warn: Option<WarnFn<K>>,
}

fn admit_typed<K: DeserializeOwned + Serialize>(
    value: &Value,
    req: &Request,
    opts: &AdmitOptions,
    hooks: Hooks<K>,
) -> Result<Admitted, Vec<FieldError>> {
    let mut typed: K = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        vec![FieldError::new(
            CauseType::FieldValueTypeInvalid,
            if path == "." { String::new() } else { path },
            e.into_inner().to_string(),
        )]
    })?;
    let mut warnings = Vec::new();
    if opts.field_validation != FieldValidation::Ignore {
        let decoded = serde_json::to_value(&typed).map_err(|e| {
            vec![FieldError::invalid(
                "",
                format!("cannot encode object: {e}"),
            )]
        })?;
        let mut unknown = Vec::new();
        unknown_fields(value, &decoded, "", &mut unknown);
        if !unknown.is_empty() {
            if opts.field_validation == FieldValidation::Strict {
                return Err(unknown
                    .into_iter()
                    .map(|f| {
                        FieldError::new(
                            CauseType::FieldValueUnknown,
                            f.clone(),
                            format!("unknown field \"{f}\""),
                        )
                    })
                    .collect());
            }
            warnings.extend(
                unknown
                    .into_iter()
                    .map(|f| format!("unknown field \"{f}\"")),
            );
        }
    }
    let Hooks {
        default,
        on_create,
        validate,
        rules,
        warn,
    } = hooks;
    default(&mut typed, &opts.defaults);
    // KubeVirt's mutators that run on create only (a create has no stored object).
    if let (Some(mutate), None) = (on_create, req.old) {
        mutate(&mut typed);
    }
    let mut errs = validate(&typed, &opts.validation);
    if let Some(rules) = rules {
        // The stored object was admitted (and defaulted) when it was written.
        // One that no longer decodes (written by an older version) gives no old object.
        let old: Option<K> = req
            .old
            .and_then(|o| serde_json::from_value::<K>(o.clone()).ok());
        errs.extend(rules(&typed, old.as_ref(), req, &opts.validation));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    if let Some(warn) = warn {
        warnings.extend(warn(&typed, &opts.validation));
    }
    let value = serde_json::to_value(&typed).map_err(|e| {
        vec![FieldError::invalid(
            "",
            format!("cannot encode object: {e}"),
        )]
    })?;
    Ok(Admitted { value, warnings })
}

/// Paths present in `input` that decoding dropped: the fields the schema does not have.
/// (A `null` the decoder dropped is not unknown: it means "unset".)
pub fn unknown_fields(input: &Value, decoded: &Value, path: &str, out: &mut Vec<String>) {
    match (input, decoded) {
        (Value::Object(i), Value::Object(d)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match d.get(k) {
                    Some(dv) => unknown_fields(v, dv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(d)) => {
            for (n, (iv, dv)) in i.iter().zip(d).enumerate() {
                unknown_fields(iv, dv, &format!("{path}[{n}]"), out);
            }
        }
        // A free-form value (RawExtension, preserve-unknown-fields) keeps everything.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vmi(spec: Value) -> Value {
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
               "metadata": {"name": "t"}, "spec": spec})
    }

    #[test]
    fn strict_validation_names_every_unknown_field() {
        let v = vmi(
            json!({"domain": {"devices": {"disks": [{"name": "a", "bogus": 1}]},
                                     "memory": {"guest": "64Mi"}, "colour": "red"},
                           "volumes": [{"name": "a", "emptyDisk": {"capacity": "1Gi"}}]}),
        );
        let errs = admit(&v, &AdmitOptions::default()).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.domain.colour", "spec.domain.devices.disks[0].bogus"]
        );
        assert_eq!(
            errs[1].message,
            "unknown field \"spec.domain.devices.disks[0].bogus\""
        );

        let warn = AdmitOptions {
            field_validation: FieldValidation::Warn,
            ..Default::default()
        };
        let ok = admit(&v, &warn).unwrap();
        assert_eq!(ok.warnings.len(), 2);
        assert!(
            ok.value["spec"]["domain"].get("colour").is_none(),
            "unknown fields are pruned"
        );
    }

    #[test]
    fn a_wrong_type_is_reported_with_its_path() {
        let v = vmi(json!({"domain": {"devices": {}, "memory": {"guest": true}}}));
        let errs = admit(&v, &AdmitOptions::default()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.domain.memory.guest");
        assert_eq!(errs[0].reason, CauseType::FieldValueTypeInvalid);
    }

    #[test]
    fn an_unknown_kind_is_refused() {
        let errs = admit(
            &json!({"apiVersion": "kubevirt.io/v1", "kind": "Nope"}),
            &AdmitOptions::default(),
        )
        .unwrap_err();
        assert!(errs[0].message.contains("no kind \"Nope\""));
    }

    #[test]
    fn admission_defaults_the_object() {
        let v =
            vmi(json!({"domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}}}));
        let ok = admit(&v, &AdmitOptions::default()).unwrap();
        assert_eq!(ok.value["spec"]["domain"]["machine"]["type"], "q35");
        assert_eq!(ok.value["spec"]["domain"]["memory"]["guest"], "64Mi");
    }
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    #[test]
    fn every_kind_is_found_by_its_api_version_and_kind() {
        for k in kinds() {
            let found = kind_of(&k.api_version(), k.kind).map(|f| (f.group, f.plural));
            assert_eq!(
                found,
                Some((k.group, k.plural)),
                "{} {}",
                k.api_version(),
                k.kind
            );
        }
        assert_eq!(
            kind_of("v1", "ConfigMap").map(|k| k.plural),
            Some("configmaps")
        );
        assert_eq!(
            kind_of("events.k8s.io/v1", "Event").map(|k| k.group),
            Some("events.k8s.io")
        );
        assert_eq!(kind_of("v1", "Event").map(|k| k.group), Some(""));
    }
}

//! Generates `crates/api/src/generated.rs` from KubeVirt's OpenAPI v2 document.
//!
//! Why a generator: KubeVirt's schema has ~400 definitions, and a hand-typed subset silently
//! drops fields users write. This program is the single place that decides how a swagger
//! definition becomes a Rust type (the way `kopium` does for CRD schemas); the output is
//! checked in so it can be reviewed, and a test fails when the two drift apart.
//!
//! Usage: `cargo run -p kubevirt-api-gen -- [--check]` from the workspace root.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

/// One custom resource kind the `api` crate exposes with `#[derive(CustomResource)]`.
struct Root {
    kind: &'static str,
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    /// Swagger definition of the spec. Several kinds share one (namespaced and cluster
    /// instancetypes); each kind still gets its own Rust spec struct.
    spec_def: &'static str,
    /// Rust type of the status, if any.
    status: Option<&'static str>,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    /// (name, type, jsonPath, priority)
    columns: &'static [(&'static str, &'static str, &'static str, u8)],
    /// Scale subresource paths (spec replicas, status replicas, label selector).
    scale: Option<(&'static str, &'static str, &'static str)>,
}

const AGE: (&str, &str, &str, u8) = ("Age", "date", ".metadata.creationTimestamp", 0);

/// The kinds we serve, with KubeVirt's names, short names and printer columns
/// (pkg/virt-operator/resource/generate/components/crds.go in KubeVirt; CDI's datavolume_types.go).
const ROOTS: &[Root] = &[
    Root {
        kind: "VirtualMachineInstance",
        group: "kubevirt.io",
        version: "v1",
        plural: "virtualmachineinstances",
        spec_def: "v1.VirtualMachineInstanceSpec",
        status: Some("VirtualMachineInstanceStatus"),
        namespaced: true,
        short_names: &["vmi", "vmis"],
        categories: &["all"],
        columns: &[
            AGE,
            ("Phase", "string", ".status.phase", 0),
            ("IP", "string", ".status.interfaces[0].ipAddress", 0),
            ("NodeName", "string", ".status.nodeName", 0),
            (
                "Ready",
                "string",
                ".status.conditions[?(@.type=='Ready')].status",
                0,
            ),
            (
                "Live-Migratable",
                "string",
                ".status.conditions[?(@.type=='LiveMigratable')].status",
                1,
            ),
            (
                "Paused",
                "string",
                ".status.conditions[?(@.type=='Paused')].status",
                1,
            ),
        ],
        scale: None,
    },
    Root {
        kind: "VirtualMachine",
        group: "kubevirt.io",
        version: "v1",
        plural: "virtualmachines",
        spec_def: "v1.VirtualMachineSpec",
        status: Some("VirtualMachineStatus"),
        namespaced: true,
        short_names: &["vm", "vms"],
        categories: &["all"],
        columns: &[
            AGE,
            ("Status", "string", ".status.printableStatus", 0),
            (
                "Ready",
                "string",
                ".status.conditions[?(@.type=='Ready')].status",
                0,
            ),
        ],
        scale: None,
    },
    Root {
        kind: "VirtualMachineInstanceMigration",
        group: "kubevirt.io",
        version: "v1",
        plural: "virtualmachineinstancemigrations",
        spec_def: "v1.VirtualMachineInstanceMigrationSpec",
        status: Some("VirtualMachineInstanceMigrationStatus"),
        namespaced: true,
        short_names: &["vmim", "vmims"],
        categories: &["all"],
        columns: &[
            ("Phase", "string", ".status.phase", 0),
            ("VMI", "string", ".spec.vmiName", 0),
        ],
        scale: None,
    },
    Root {
        kind: "VirtualMachineInstanceReplicaSet",
        group: "kubevirt.io",
        version: "v1",
        plural: "virtualmachineinstancereplicasets",
        spec_def: "v1.VirtualMachineInstanceReplicaSetSpec",
        status: Some("VirtualMachineInstanceReplicaSetStatus"),
        namespaced: true,
        short_names: &["vmirs", "vmirss"],
        categories: &["all"],
        columns: &[
            ("Desired", "integer", ".spec.replicas", 0),
            ("Current", "integer", ".status.replicas", 0),
            ("Ready", "integer", ".status.readyReplicas", 0),
            AGE,
        ],
        scale: Some((
            ".spec.replicas",
            ".status.replicas",
            ".status.labelSelector",
        )),
    },
    Root {
        kind: "KubeVirt",
        group: "kubevirt.io",
        version: "v1",
        plural: "kubevirts",
        spec_def: "v1.KubeVirtSpec",
        status: Some("KubeVirtStatus"),
        namespaced: true,
        short_names: &["kv", "kvs"],
        categories: &["all"],
        columns: &[AGE, ("Phase", "string", ".status.phase", 0)],
        scale: None,
    },
    Root {
        kind: "VirtualMachineInstancetype",
        group: "instancetype.kubevirt.io",
        version: "v1beta1",
        plural: "virtualmachineinstancetypes",
        spec_def: "v1beta1.VirtualMachineInstancetypeSpec",
        status: None,
        namespaced: true,
        short_names: &["vminstancetype", "vminstancetypes", "vmf", "vmfs"],
        categories: &[],
        columns: &[],
        scale: None,
    },
    Root {
        kind: "VirtualMachineClusterInstancetype",
        group: "instancetype.kubevirt.io",
        version: "v1beta1",
        plural: "virtualmachineclusterinstancetypes",
        spec_def: "v1beta1.VirtualMachineInstancetypeSpec",
        status: None,
        namespaced: false,
        short_names: &[
            "vmclusterinstancetype",
            "vmclusterinstancetypes",
            "vmcf",
            "vmcfs",
        ],
        categories: &[],
        columns: &[],
        scale: None,
    },
    Root {
        kind: "VirtualMachinePreference",
        group: "instancetype.kubevirt.io",
        version: "v1beta1",
        plural: "virtualmachinepreferences",
        spec_def: "v1beta1.VirtualMachinePreferenceSpec",
        status: None,
        namespaced: true,
        short_names: &["vmpref", "vmprefs", "vmp", "vmps"],
        categories: &[],
        columns: &[],
        scale: None,
    },
    Root {
        kind: "VirtualMachineClusterPreference",
        group: "instancetype.kubevirt.io",
        version: "v1beta1",
        plural: "virtualmachineclusterpreferences",
        spec_def: "v1beta1.VirtualMachinePreferenceSpec",
        status: None,
        namespaced: false,
        short_names: &["vmcp", "vmcps"],
        categories: &[],
        columns: &[],
        scale: None,
    },
    Root {
        kind: "DataVolume",
        group: "cdi.kubevirt.io",
        version: "v1beta1",
        plural: "datavolumes",
        spec_def: "v1beta1.DataVolumeSpec",
        status: Some("crate::cdi::DataVolumeStatus"),
        namespaced: true,
        short_names: &["dv", "dvs"],
        categories: &["all"],
        columns: &[
            ("Phase", "string", ".status.phase", 0),
            ("Progress", "string", ".status.progress", 0),
            ("Restarts", "integer", ".status.restartCount", 0),
            AGE,
        ],
        scale: None,
    },
    Root {
        kind: "VirtualMachineSnapshot",
        group: "snapshot.kubevirt.io",
        version: "v1beta1",
        plural: "virtualmachinesnapshots",
        spec_def: "v1beta1.VirtualMachineSnapshotSpec",
        status: Some("VirtualMachineSnapshotStatus"),
        namespaced: true,
        short_names: &["vmsnapshot", "vmsnapshots"],
        categories: &["all"],
        columns: &[
            ("SourceKind", "string", ".spec.source.kind", 0),
            ("SourceName", "string", ".spec.source.name", 0),
            ("Phase", "string", ".status.phase", 0),
            ("ReadyToUse", "boolean", ".status.readyToUse", 0),
            ("CreationTime", "date", ".status.creationTime", 0),
            ("Error", "string", ".status.error.message", 0),
        ],
        scale: None,
    },
    Root {
        kind: "VirtualMachineSnapshotContent",
        group: "snapshot.kubevirt.io",
        version: "v1beta1",
        plural: "virtualmachinesnapshotcontents",
        spec_def: "v1beta1.VirtualMachineSnapshotContentSpec",
        status: Some("VirtualMachineSnapshotContentStatus"),
        namespaced: true,
        short_names: &["vmsnapshotcontent", "vmsnapshotcontents"],
        categories: &["all"],
        columns: &[
            ("ReadyToUse", "boolean", ".status.readyToUse", 0),
            ("CreationTime", "date", ".status.creationTime", 0),
            ("Error", "string", ".status.error.message", 0),
        ],
        scale: None,
    },
    Root {
        kind: "VirtualMachineRestore",
        group: "snapshot.kubevirt.io",
        version: "v1beta1",
        plural: "virtualmachinerestores",
        spec_def: "v1beta1.VirtualMachineRestoreSpec",
        status: Some("VirtualMachineRestoreStatus"),
        namespaced: true,
        short_names: &["vmrestore", "vmrestores"],
        categories: &["all"],
        columns: &[
            ("TargetKind", "string", ".spec.target.kind", 0),
            ("TargetName", "string", ".spec.target.name", 0),
            ("Complete", "boolean", ".status.complete", 0),
            ("RestoreTime", "date", ".status.restoreTime", 0),
            ("Error", "string", ".status.error.message", 0),
        ],
        scale: None,
    },
    Root {
        kind: "MigrationPolicy",
        group: "migrations.kubevirt.io",
        version: "v1alpha1",
        plural: "migrationpolicies",
        spec_def: "v1alpha1.MigrationPolicySpec",
        status: Some("MigrationPolicyStatus"),
        namespaced: false,
        short_names: &[],
        categories: &["all"],
        columns: &[],
        scale: None,
    },
    Root {
        kind: "VirtualMachinePool",
        group: "pool.kubevirt.io",
        version: "v1beta1",
        plural: "virtualmachinepools",
        spec_def: "v1beta1.VirtualMachinePoolSpec",
        status: Some("VirtualMachinePoolStatus"),
        namespaced: true,
        short_names: &["vmpool", "vmpools"],
        categories: &["all"],
        columns: &[
            ("Desired", "integer", ".spec.replicas", 0),
            ("Current", "integer", ".status.replicas", 0),
            ("Ready", "integer", ".status.readyReplicas", 0),
            AGE,
        ],
        scale: Some((
            ".spec.replicas",
            ".status.replicas",
            ".status.labelSelector",
        )),
    },
    Root {
        kind: "VirtualMachineClone",
        group: "clone.kubevirt.io",
        version: "v1beta1",
        plural: "virtualmachineclones",
        spec_def: "v1beta1.VirtualMachineCloneSpec",
        status: Some("VirtualMachineCloneStatus"),
        namespaced: true,
        short_names: &["vmclone", "vmclones"],
        categories: &["all"],
        columns: &[
            ("Phase", "string", ".status.phase", 0),
            ("SourceVirtualMachine", "string", ".spec.source.name", 0),
            ("TargetVirtualMachine", "string", ".spec.target.name", 0),
        ],
        scale: None,
    },
    Root {
        kind: "VirtualMachineExport",
        group: "export.kubevirt.io",
        version: "v1",
        plural: "virtualmachineexports",
        spec_def: "v1.VirtualMachineExportSpec",
        status: Some("VirtualMachineExportStatus"),
        namespaced: true,
        short_names: &["vmexport", "vmexports"],
        categories: &["all"],
        columns: &[
            ("SourceKind", "string", ".spec.source.kind", 0),
            ("SourceName", "string", ".spec.source.name", 0),
            ("Phase", "string", ".status.phase", 0),
        ],
        scale: None,
    },
];

/// Definitions whose short name collides with another one; the key keeps KubeVirt's name.
const RENAMES: &[(&str, &str)] = &[
    ("v1beta1.Condition", "SnapshotCondition"),
    ("v1beta1.VirtualMachine", "SnapshotVirtualMachine"),
    ("v1beta1.DataVolumeSource", "CdiDataVolumeSource"),
    (
        "v1beta1.VolumeSnapshotStatus",
        "SnapshotVolumeSnapshotStatus",
    ),
];

/// Fields CDI has that KubeVirt's vendored copy of CDI's API lacks: `insecureSkipVerify`, used
/// by CDI's own examples (manifests/example/import-kubevirt-datavolume-skip-tls.yaml), and
/// `checksum` of newer CDI releases.
const EXTRA_PROPERTIES: &[(&str, &str, &str)] = &[
    (
        "v1beta1.DataVolumeSourceHTTP",
        "insecureSkipVerify",
        r#"{"type": "boolean", "description": "InsecureSkipVerify skips TLS verification of the HTTP server's certificate. Use only for testing."}"#,
    ),
    (
        "v1beta1.DataVolumeSourceHTTP",
        "checksum",
        r#"{"type": "string", "description": "Checksum is the expected checksum of the file, \"algorithm:hash\" (md5, sha1, sha256, sha512); the import fails if the downloaded content does not match."}"#,
    ),
];

/// Swagger definitions for Kubernetes' own types map onto `k8s-openapi`.
fn k8s_type(def: &str) -> Option<String> {
    let map = [
        ("k8s.io.api.core.v1.", "k8s_openapi::api::core::v1::"),
        (
            "k8s.io.apimachinery.pkg.apis.meta.v1.",
            "k8s_openapi::apimachinery::pkg::apis::meta::v1::",
        ),
        (
            "k8s.io.apimachinery.pkg.api.resource.",
            "k8s_openapi::apimachinery::pkg::api::resource::",
        ),
        (
            "k8s.io.apimachinery.pkg.util.intstr.",
            "k8s_openapi::apimachinery::pkg::util::intstr::",
        ),
        (
            "k8s.io.apimachinery.pkg.runtime.",
            "k8s_openapi::apimachinery::pkg::runtime::",
        ),
    ];
    // metav1.Duration is a string on the wire ("5m0s"); k8s-openapi has no type for it.
    if def == "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" {
        return Some("String".into());
    }
    map.iter()
        .find_map(|(p, r)| def.strip_prefix(p).map(|n| format!("{r}{n}")))
}

struct Gen<'a> {
    defs: &'a Map<String, Value>,
    out: String,
}

fn rust_name(def: &str) -> String {
    if let Some((_, n)) = RENAMES.iter().find(|(d, _)| *d == def) {
        return (*n).to_string();
    }
    def.rsplit('.').next().unwrap_or(def).to_string()
}

fn ref_name(v: &Value) -> Option<&str> {
    v.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/definitions/"))
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_ascii_uppercase();
            if i > 0 && (prev_lower || (prev_upper && next_lower)) {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if *c == '-' || *c == '.' {
            out.push('_');
        } else {
            out.push(*c);
        }
    }
    const KEYWORDS: &[&str] = &[
        "type", "ref", "override", "async", "await", "box", "crate", "enum", "fn", "impl", "in",
        "loop", "match", "mod", "move", "mut", "pub", "self", "static", "struct", "super", "trait",
        "use", "where", "while", "yield", "abstract", "final", "macro", "priv", "typeof",
        "unsized", "virtual", "do", "try", "dyn", "let", "const", "continue", "break", "else",
        "extern", "false", "true", "for", "if", "return", "unsafe", "become", "gen",
    ];
    if KEYWORDS.contains(&out.as_str()) {
        format!("r#{out}")
    } else {
        out
    }
}

fn doc_lines(out: &mut String, indent: &str, desc: Option<&str>) {
    if let Some(d) = desc {
        for line in d.trim().lines() {
            let line = line.trim_end();
            if line.is_empty() {
                let _ = writeln!(out, "{indent}///");
            } else {
                let _ = writeln!(out, "{indent}/// {line}");
            }
        }
    }
}

impl Gen<'_> {
    fn def(&self, name: &str) -> Result<&Value> {
        self.defs
            .get(name)
            .with_context(|| format!("swagger has no definition {name}"))
    }

    /// The Rust type of a property schema (without the outer Option).
    fn ty(&self, owner: &str, prop: &str, s: &Value) -> Result<String> {
        if let Some(r) = ref_name(s) {
            if let Some(k) = k8s_type(r) {
                return Ok(k);
            }
            return Ok(rust_name(r));
        }
        let ty = match s.get("type") {
            Some(Value::String(t)) => t.as_str(),
            // ["string","null"]: KubeVirt's condition timestamps.
            Some(Value::Array(ts)) if ts.iter().any(|t| t == "null") => {
                return Ok("k8s_openapi::apimachinery::pkg::apis::meta::v1::Time".into())
            }
            // ["string","number"]: a port given by name or number.
            Some(Value::Array(_)) => {
                return Ok("k8s_openapi::apimachinery::pkg::util::intstr::IntOrString".into())
            }
            None => return Ok("serde_json::Value".into()),
            Some(other) => bail!("{owner}.{prop}: unexpected type {other}"),
        };
        let format = s.get("format").and_then(Value::as_str);
        Ok(match (ty, format) {
            ("string", _) => "String".into(),
            ("boolean", _) => "bool".into(),
            ("integer", Some("int32")) => "i32".into(),
            ("integer", Some("byte")) => "u8".into(),
            ("integer", _) => "i64".into(),
            ("number", _) => "f64".into(),
            ("array", _) => {
                let items = s
                    .get("items")
                    .with_context(|| format!("{owner}.{prop}: array without items"))?;
                format!("Vec<{}>", self.ty(owner, prop, items)?)
            }
            ("object", _) => match s.get("additionalProperties") {
                Some(ap) => format!(
                    "std::collections::BTreeMap<String, {}>",
                    self.ty(owner, prop, ap)?
                ),
                None => "serde_json::Value".into(),
            },
            (t, f) => bail!("{owner}.{prop}: unsupported type {t} {f:?}"),
        })
    }

    fn emit_struct(&mut self, def_name: &str, rust: &str, root: Option<&Root>) -> Result<()> {
        let def = self.def(def_name)?.clone();
        let mut props = def
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (d, name, schema) in EXTRA_PROPERTIES {
            if *d == def_name {
                props.insert((*name).to_string(), serde_json::from_str(schema)?);
            }
        }
        let required: BTreeSet<&str> = def
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut out = String::new();
        doc_lines(&mut out, "", def.get("description").and_then(Value::as_str));
        let _ = writeln!(out, "///\n/// Generated from `{def_name}`.");
        let _ = writeln!(
            out,
            "#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema{})]",
            if root.is_some() {
                ", CustomResource"
            } else {
                ""
            }
        );
        if let Some(r) = root {
            let mut k = format!(
                "#[kube(group = \"{}\", version = \"{}\", kind = \"{}\", plural = \"{}\"",
                r.group, r.version, r.kind, r.plural
            );
            if r.namespaced {
                k.push_str(", namespaced");
            }
            if let Some(s) = r.status {
                let _ = write!(k, ", status = \"{s}\"");
            }
            k.push_str(", derive = \"PartialEq\", derive = \"Default\"");
            for s in r.short_names {
                let _ = write!(k, ", shortname = \"{s}\"");
            }
            for c in r.categories {
                let _ = write!(k, ", category = \"{c}\"");
            }
            for (name, ty, path, prio) in r.columns {
                let _ = write!(
                    k,
                    ", printcolumn(name = \"{name}\", type_ = \"{ty}\", json_path = \"{path}\"{})",
                    if *prio > 0 {
                        format!(", priority = \"{prio}\"")
                    } else {
                        String::new()
                    }
                );
            }
            if let Some((spec, status, sel)) = r.scale {
                let _ = write!(
                    k,
                    ", scale(spec_replicas_path = \"{spec}\", status_replicas_path = \"{status}\", label_selector_path = \"{sel}\")"
                );
            }
            let _ = write!(
                k,
                ", doc = \"{} ({}/{}), as served by kubevirt-rs.\"",
                r.kind, r.group, r.version
            );
            k.push_str(")]");
            let _ = writeln!(out, "{k}");
        }
        let _ = writeln!(out, "pub struct {rust} {{");
        for (pname, p) in &props {
            // The root struct generated by kube carries apiVersion/kind/metadata itself.
            let field = snake(pname);
            let ty = self.ty(def_name, pname, p)?;
            doc_lines(
                &mut out,
                "    ",
                p.get("description").and_then(Value::as_str),
            );
            let mut serde_attrs: Vec<String> = Vec::new();
            if field.trim_start_matches("r#") != pname {
                serde_attrs.push(format!("rename = \"{pname}\""));
            }
            let is_required = required.contains(pname.as_str());
            let full_ty = if is_required {
                if p.get("default").is_some() {
                    serde_attrs.push("default".into());
                }
                ty
            } else {
                serde_attrs.push("default".into());
                serde_attrs.push("skip_serializing_if = \"Option::is_none\"".into());
                format!("Option<{ty}>")
            };
            if !serde_attrs.is_empty() {
                let _ = writeln!(out, "    #[serde({})]", serde_attrs.join(", "));
            }
            let mut ext: Vec<String> = Vec::new();
            if let Some(lt) = p.get("x-kubernetes-list-type").and_then(Value::as_str) {
                ext.push(format!("\"x-kubernetes-list-type\" = \"{lt}\""));
            }
            if let Some(keys) = p
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
            {
                let keys: Vec<String> = keys
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|k| format!("\"{k}\""))
                    .collect();
                ext.push(format!(
                    "\"x-kubernetes-list-map-keys\" = [{}]",
                    keys.join(", ")
                ));
            }
            if !ext.is_empty() {
                let _ = writeln!(out, "    #[schemars(extend({}))]", ext.join(", "));
            }
            let _ = writeln!(out, "    pub {field}: {full_ty},");
        }
        let _ = writeln!(out, "}}\n");
        self.out.push_str(&out);
        Ok(())
    }
}

/// Every non-Kubernetes definition reachable from `start`.
fn reachable(defs: &Map<String, Value>, start: &[&str]) -> BTreeSet<String> {
    fn walk(v: &Value, acc: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = ref_name(v) {
                    acc.push(r.to_string());
                }
                for x in m.values() {
                    walk(x, acc);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, acc)),
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = start.iter().map(|s| s.to_string()).collect();
    while let Some(d) = todo.pop() {
        if k8s_type(&d).is_some() || !seen.insert(d.clone()) {
            continue;
        }
        if let Some(v) = defs.get(&d) {
            let mut refs = Vec::new();
            walk(v, &mut refs);
            todo.extend(refs);
        }
    }
    seen
}

fn generate(swagger: &Value) -> Result<String> {
    let defs = swagger
        .get("definitions")
        .and_then(Value::as_object)
        .context("swagger has no definitions")?;
    let mut starts: Vec<&str> = ROOTS.iter().map(|r| r.spec_def).collect();
    let statuses: Vec<String> = ROOTS
        .iter()
        .filter_map(|r| r.status)
        .filter(|s| !s.contains("::"))
        .map(|s| {
            // Status definitions live in the same version prefix as the spec.
            let prefix = ROOTS
                .iter()
                .find(|r| r.status == Some(s))
                .map(|r| r.spec_def.split('.').next().unwrap_or("v1"))
                .unwrap_or("v1");
            format!("{prefix}.{s}")
        })
        .collect();
    starts.extend(statuses.iter().map(String::as_str));
    let all = reachable(defs, &starts);

    // Spec structs of root kinds are emitted per kind (with the derive); everything else once.
    let root_specs: BTreeMap<&str, Vec<&Root>> = ROOTS.iter().fold(BTreeMap::new(), |mut m, r| {
        m.entry(r.spec_def).or_default().push(r);
        m
    });

    let mut g = Gen {
        defs,
        out: String::new(),
    };
    g.out.push_str(
        "// @generated by crates/api-gen from crates/api/openapi/kubevirt-swagger.json.\n\
         // Do not edit by hand: change the generator and run `cargo run -p kubevirt-api-gen`.\n\n\
         #![allow(clippy::all, missing_docs, rustdoc::all)]\n\n\
         use kube::CustomResource;\n\
         use schemars::JsonSchema;\n\
         use serde::{Deserialize, Serialize};\n\n",
    );
    // Names must be unique in the flat module.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for d in &all {
        let n = rust_name(d);
        if let Some(prev) = names.insert(n.clone(), d.clone()) {
            bail!("{d} and {prev} both map to {n}: add a RENAMES entry");
        }
    }
    for d in &all {
        match root_specs.get(d.as_str()) {
            Some(roots) => {
                for r in roots {
                    g.emit_struct(d, &format!("{}Spec", r.kind), Some(r))?;
                }
                // Keep the shared swagger name too when other definitions refer to it.
                if !roots
                    .iter()
                    .any(|r| format!("{}Spec", r.kind) == rust_name(d))
                {
                    g.emit_struct(d, &rust_name(d), None)?;
                }
            }
            None => g.emit_struct(d, &rust_name(d), None)?,
        }
    }
    Ok(g.out)
}

fn main() -> Result<()> {
    let check = std::env::args().any(|a| a == "--check");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../api");
    let swagger_path = root.join("openapi/kubevirt-swagger.json");
    let swagger: Value = serde_json::from_slice(
        &std::fs::read(&swagger_path)
            .with_context(|| format!("reading {}", swagger_path.display()))?,
    )?;
    let code = generate(&swagger)?;
    let target = root.join("src/generated.rs");
    if check {
        let current = std::fs::read_to_string(&target).unwrap_or_default();
        if current != code {
            bail!(
                "{} is out of date: run `cargo run -p kubevirt-api-gen`",
                target.display()
            );
        }
        println!("{} is up to date", target.display());
    } else {
        std::fs::write(&target, code)?;
        println!("wrote {}", target.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in types are exactly what the generator makes of the checked-in swagger.
    #[test]
    fn generated_types_are_up_to_date() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../api");
        let swagger: Value = serde_json::from_slice(
            &std::fs::read(root.join("openapi/kubevirt-swagger.json")).expect("swagger"),
        )
        .expect("swagger json");
        let code = generate(&swagger).expect("generate");
        let current = std::fs::read_to_string(root.join("src/generated.rs")).expect("generated.rs");
        assert!(
            code == current,
            "crates/api/src/generated.rs is stale: run `cargo run -p kubevirt-api-gen`"
        );
    }

    #[test]
    fn field_names_become_snake_case_idents() {
        assert_eq!(snake("bootOrder"), "boot_order");
        assert_eq!(snake("pciAddress"), "pci_address");
        assert_eq!(snake("type"), "r#type");
        assert_eq!(snake("EFI"), "efi");
        assert_eq!(snake("userDataBase64"), "user_data_base64");
    }
}

//! The generated CustomResourceDefinitions: KubeVirt's names, printer columns and
//! subresources, and schemas a real API server accepts (structural) and enforces.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kubevirt_api::crd::{crds, has_status_subresource};
use serde_json::{json, Value};

fn crd(kind: &str) -> CustomResourceDefinition {
    crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
}

fn schema(kind: &str) -> Value {
    let c = crd(kind);
    serde_json::to_value(
        c.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("schema json")
}

#[test]
fn names_and_short_names_match_kubevirt() {
    let expect: &[(&str, &str, &[&str], &str)] = &[
        (
            "VirtualMachineInstance",
            "virtualmachineinstances",
            &["vmi", "vmis"],
            "Namespaced",
        ),
        (
            "VirtualMachine",
            "virtualmachines",
            &["vm", "vms"],
            "Namespaced",
        ),
        (
            "VirtualMachineInstanceMigration",
            "virtualmachineinstancemigrations",
            &["vmim", "vmims"],
            "Namespaced",
        ),
        ("DataVolume", "datavolumes", &["dv", "dvs"], "Namespaced"),
        (
            "VirtualMachineClusterInstancetype",
            "virtualmachineclusterinstancetypes",
            &[
                "vmclusterinstancetype",
                "vmclusterinstancetypes",
                "vmcf",
                "vmcfs",
            ],
            "Cluster",
        ),
        ("MigrationPolicy", "migrationpolicies", &[], "Cluster"),
        (
            "VirtualMachineClone",
            "virtualmachineclones",
            &["vmclone", "vmclones"],
            "Namespaced",
        ),
        (
            "VirtualMachineExport",
            "virtualmachineexports",
            &["vmexport", "vmexports"],
            "Namespaced",
        ),
        ("CDIConfig", "cdiconfigs", &[], "Cluster"),
        (
            "NetworkAttachmentDefinition",
            "network-attachment-definitions",
            &["net-attach-def"],
            "Namespaced",
        ),
        ("VolumeSnapshot", "volumesnapshots", &["vs"], "Namespaced"),
        (
            "VolumeSnapshotContent",
            "volumesnapshotcontents",
            &["vsc", "vscs"],
            "Cluster",
        ),
        (
            "VolumeSnapshotClass",
            "volumesnapshotclasses",
            &["vsclass", "vsclasses"],
            "Cluster",
        ),
    ];
    for (kind, plural, short, scope) in expect {
        let c = crd(kind);
        assert_eq!(c.spec.names.plural, *plural);
        assert_eq!(
            c.spec.names.short_names.clone().unwrap_or_default(),
            *short,
            "{kind}"
        );
        assert_eq!(c.spec.scope, *scope, "{kind}");
        assert_eq!(
            c.metadata.name.as_deref(),
            Some(format!("{plural}.{}", c.spec.group).as_str())
        );
    }
    assert_eq!(crds().len(), 23);
}

#[test]
fn vmi_has_no_status_subresource_but_vm_and_dv_do() {
    assert!(!has_status_subresource(&crd("VirtualMachineInstance")));
    assert!(has_status_subresource(&crd("VirtualMachine")));
    assert!(has_status_subresource(&crd("DataVolume")));
}

#[test]
fn printer_columns_match_kubevirt() {
    let cols = |kind: &str| -> Vec<(String, String)> {
        crd(kind).spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.name, c.json_path))
            .collect()
    };
    let vmi = cols("VirtualMachineInstance");
    let names: Vec<&str> = vmi.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "Age",
            "Phase",
            "IP",
            "NodeName",
            "Ready",
            "Live-Migratable",
            "Paused"
        ]
    );
    assert_eq!(vmi[2].1, ".status.interfaces[0].ipAddress");
    let vm: Vec<String> = cols("VirtualMachine").into_iter().map(|c| c.0).collect();
    assert_eq!(vm, ["Age", "Status", "Ready"]);
    let dv: Vec<String> = cols("DataVolume").into_iter().map(|c| c.0).collect();
    assert_eq!(dv, ["Phase", "Progress", "Restarts", "Age"]);
    let clone: Vec<String> = cols("VirtualMachineClone")
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(
        clone,
        ["Phase", "SourceVirtualMachine", "TargetVirtualMachine"]
    );
    let export: Vec<String> = cols("VirtualMachineExport")
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(export, ["SourceKind", "SourceName", "Phase"]);
}

/// The rules of a structural schema (Kubernetes `apiextensions` structural schema checks):
/// every node has a type unless it is int-or-string or preserves unknown fields; no $ref,
/// no `additionalProperties` beside `properties`.
fn structural_problems(s: &Value, path: &str, out: &mut Vec<String>) {
    let Some(m) = s.as_object() else { return };
    let free = m.get("x-kubernetes-int-or-string") == Some(&json!(true))
        || m.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if !free && !m.contains_key("type") {
        out.push(format!("{path}: no type"));
    }
    if m.contains_key("$ref") {
        out.push(format!("{path}: $ref"));
    }
    if m.contains_key("properties")
        && m.get("additionalProperties")
            .is_some_and(|a| a != &json!(false))
    {
        out.push(format!("{path}: properties and additionalProperties"));
    }
    let int_or_string = json!([{"type": "integer"}, {"type": "string"}]);
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(alts)) = m.get(key) {
            // The one typed alternative Kubernetes allows: int-or-string spelled out.
            if key == "anyOf" && m.get("anyOf") == Some(&int_or_string) {
                continue;
            }
            for a in alts {
                if a.get("type").is_some() || a.get("properties").is_some() {
                    out.push(format!("{path}: {key} declares types"));
                }
            }
        }
    }
    if let Some(Value::Object(props)) = m.get("properties") {
        for (k, v) in props {
            structural_problems(v, &format!("{path}.{k}"), out);
        }
    }
    if let Some(items) = m.get("items") {
        structural_problems(items, &format!("{path}[]"), out);
    }
    if let Some(ap @ Value::Object(_)) = m.get("additionalProperties") {
        structural_problems(ap, &format!("{path}{{}}"), out);
    }
}

#[test]
fn every_schema_is_structural() {
    let mut problems = Vec::new();
    for c in crds() {
        let s = serde_json::to_value(&c.spec.versions[0].schema).expect("json");
        structural_problems(&s["openAPIV3Schema"], &c.spec.names.kind, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn vmi_example() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/compat/kubevirt-examples/vmi-nocloud.yaml"
    ))
    .expect("example");
    serde_yaml::from_str(&text).expect("yaml")
}

#[test]
fn the_vmi_schema_accepts_an_example_and_rejects_a_wrong_type() {
    let validator =
        jsonschema::validator_for(&schema("VirtualMachineInstance")).expect("schema compiles");
    let good = vmi_example();
    let errs: Vec<String> = validator
        .iter_errors(&good)
        .map(|e| e.to_string())
        .collect();
    assert!(errs.is_empty(), "{errs:?}");

    let mut bad = good.clone();
    bad["spec"]["domain"]["memory"] = json!({"guest": true});
    let errs: Vec<(String, String)> = validator
        .iter_errors(&bad)
        .map(|e| (e.instance_path.to_string(), e.to_string()))
        .collect();
    assert!(
        errs.iter().any(|(p, _)| p == "/spec/domain/memory/guest"),
        "memory.guest: true must be refused at its path, got {errs:?}"
    );

    let mut bad = good;
    bad["spec"]["domain"]["devices"]["disks"][0]["bootOrder"] = json!("first");
    assert!(!validator.is_valid(&bad), "bootOrder must be an integer");
}

//! Every public KubeVirt and CDI example of a kind we model parses, round-trips without losing
//! or changing a field, and passes defaulting + validation, except the ones KubeVirt itself
//! rejects (listed below with the reason).

use kubevirt_api::admission::{kind_of, AdmitOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Examples KubeVirt's own webhooks refuse, with why. Keyed by "file:kind/name".
const REJECTED_BY_KUBEVIRT: &[(&str, &str)] = &[(
    "clone-datavolume.yaml:DataVolume/cloned-datavolume",
    "`storage:` is null; the API server prunes a null non-nullable field, so CDI's webhook sees \
     neither pvc nor storage and answers 'Missing Data volume PVC or Storage' (write `storage: {}`)",
)];

/// The cluster KubeVirt's examples are written for: the Alpha gates its examples need, which
/// KubeVirt refuses them without (see tests/validation.rs and tests/admitter_vmi_create.rs):
/// HostDisk (`vmi-host-disk.yaml`), HostDevices (`vmi-usb.yaml`) and Sidecar (the
/// `vmi-with-sidecar-hook*.yaml` annotations).
fn examples_cluster() -> AdmitOptions {
    let mut opts = AdmitOptions::default();
    opts.validation.feature_gates = vec!["HostDisk".into(), "HostDevices".into(), "Sidecar".into()];
    opts
}

fn compat_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    let mut files = Vec::new();
    for dir in ["kubevirt-examples", "cdi-examples"] {
        for e in std::fs::read_dir(root.join(dir)).expect("compat dir") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(
        files.len() > 60,
        "compat corpus is missing: {}",
        files.len()
    );
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read example");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Every non-null leaf of `a` is present in `b` with the same value.
fn lost_or_changed(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    Some(w) => lost_or_changed(v, w, &p, out),
                    None if v.is_null() => {}
                    None => out.push(format!("{p}: lost")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                lost_or_changed(v, w, &format!("{path}[{i}]"), out);
            }
        }
        (x, y) if x == y => {}
        // YAML integers that a float field keeps as 1.0 are the same number.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        (x, y) => out.push(format!("{path}: {x} became {y}")),
    }
}

#[test]
fn every_example_of_a_modelled_kind_round_trips_and_validates() {
    let mut modelled = 0;
    let mut failures = Vec::new();
    for file in compat_files() {
        let fname = file.file_name().unwrap().to_string_lossy().to_string();
        for doc in documents(&file) {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            let kind = doc["kind"].as_str().unwrap_or_default();
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            let Some(info) = kind_of(api_version, kind) else {
                continue;
            };
            modelled += 1;
            let key = format!("{fname}:{kind}/{name}");
            match info.roundtrip(&doc) {
                Err(e) => failures.push(format!("{key}: does not parse: {e}")),
                Ok(back) => {
                    let mut diffs = Vec::new();
                    lost_or_changed(&doc, &back, "", &mut diffs);
                    for d in diffs {
                        failures.push(format!("{key}: round trip: {d}"));
                    }
                }
            }
            let expected_reject = REJECTED_BY_KUBEVIRT.iter().find(|(k, _)| *k == key);
            match (info.admit(&doc, &examples_cluster()), expected_reject) {
                (Ok(_), None) | (Err(_), Some(_)) => {}
                (Ok(_), Some((_, why))) => {
                    failures.push(format!("{key}: accepted, but KubeVirt rejects it ({why})"))
                }
                (Err(errs), None) => {
                    for e in errs {
                        failures.push(format!("{key}: invalid: {e}"));
                    }
                }
            }
        }
    }
    assert!(
        modelled >= 55,
        "only {modelled} documents of modelled kinds"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

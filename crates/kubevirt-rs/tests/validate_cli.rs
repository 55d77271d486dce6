//! `kubevirt-rs validate` as a user runs it: files, directories, stdin, exit codes.

use std::io::Write;
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kubevirt-rs"))
}

fn run_stdin(args: &[&str], input: &str) -> (i32, String) {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubevirt-rs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

const VALID: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: good
spec:
  domain:
    devices: {}
    resources:
      requests:
        memory: 64Mi
"#;

const INVALID: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: bad
spec:
  running: true
  runStrategy: Always
  template:
    spec:
      domain:
        devices:
          disks:
          - name: root
            disk: {bus: ide}
        memory: {guest: 64Mi}
      volumes:
      - name: root
        containerDisk: {image: demo}
"#;

#[test]
fn valid_objects_print_ok_and_exit_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("vmi.yaml");
    std::fs::write(&file, VALID).expect("write");
    let out = bin()
        .args(["validate", "-f"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "OK VirtualMachineInstance/good\n"
    );
}

#[test]
fn every_error_is_printed_with_its_path_and_exit_is_one() {
    let (code, out) = run_stdin(&["validate", "-f", "-"], &format!("{VALID}---{INVALID}"));
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "OK VirtualMachineInstance/good");
    assert!(lines.contains(
        &"VirtualMachine/bad: spec.running: Running and RunStrategy are mutually exclusive. Note that Running is deprecated, please use RunStrategy instead"
    ), "{out}");
    assert!(lines.contains(
        &"VirtualMachine/bad: spec.template.spec.domain.devices.disks[0].disk.bus: IDE bus is not supported"
    ), "{out}");
}

#[test]
fn unknown_fields_are_errors_unless_told_otherwise() {
    let doc = VALID.replace("devices: {}", "devices: {}\n    colour: red");
    let (code, out) = run_stdin(&["validate", "-f", "-"], &doc);
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "VirtualMachineInstance/good: spec.domain.colour: unknown field \"spec.domain.colour\""
        ),
        "{out}"
    );
    let (code, out) = run_stdin(&["validate", "--validate=ignore", "-f", "-"], &doc);
    assert_eq!(
        (code, out.as_str()),
        (0, "OK VirtualMachineInstance/good\n")
    );
}

#[test]
fn output_yaml_prints_the_defaulted_object() {
    let (code, out) = run_stdin(&["validate", "-o", "yaml", "-f", "-"], VALID);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_yaml::from_str(&out).expect("yaml output");
    assert_eq!(v["spec"]["domain"]["machine"]["type"], "q35");
    assert_eq!(v["spec"]["domain"]["memory"]["guest"], "64Mi");
    assert_eq!(v["spec"]["terminationGracePeriodSeconds"], 30);
    assert_eq!(v["spec"]["networks"][0]["name"], "default");
}

#[test]
fn a_directory_of_kubevirt_examples_validates() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../api/tests/compat/kubevirt-examples"
    );
    // KubeVirt's examples are written for its CI cluster, which enables the gates they use.
    let out = bin()
        .args([
            "validate",
            "--feature-gates=HostDisk,Sidecar,HostDevices",
            "-f",
            dir,
        ])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // PriorityClass, ResourceClaimTemplate and the deprecated VirtualMachineInstancePreset are
    // not kinds we serve: those lines, and only those, are errors.
    let errors: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("OK ")).collect();
    assert!(
        errors.iter().all(|l| l.starts_with("PriorityClass/")
            || l.starts_with("ResourceClaimTemplate/")
            || l.starts_with("VirtualMachineInstancePreset/vmi-preset-small: kind: VirtualMachineInstancePreset is deprecated")),
        "{stdout}"
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.lines().filter(|l| l.starts_with("OK ")).count() >= 40,
        "{stdout}"
    );
    // As a KubeVirt cluster without feature gates (the default): the hostDisk example is refused.
    let out = bin()
        .args(["validate", "-f"])
        .arg(format!("{dir}/vmi-host-disk.yaml"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("spec.volumes[0]: HostDisk feature gate is not enabled"),
        "{stdout}"
    );
}

#[test]
fn malformed_yaml_is_a_clear_error() {
    let (code, _) = run_stdin(&["validate", "-f", "-"], "kind: [unclosed");
    assert_eq!(code, 2);
}

#[test]
fn crds_prints_every_crd() {
    let out = bin().arg("crds").output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .collect();
    assert_eq!(docs.len(), kubevirt_api::crd::crds().len());
    assert!(docs.len() >= 16, "{}", docs.len());
    assert!(docs.iter().all(|d| d["kind"] == "CustomResourceDefinition"));
}

/// `crds --with-rbac`: the CRDs, then KubeVirt's and CDI's ClusterRoles and bindings, with the
/// aggregation labels and exactly the rules the embedded server serves (both come from
/// `kubevirt_api::rbac`; `crates/apiserver/tests/rbac.rs` checks the served side).
#[test]
fn crds_with_rbac_prints_kubevirts_aggregated_roles() {
    let out = bin().args(["crds", "--with-rbac"]).output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .collect();
    let crds = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .count();
    assert_eq!(crds, kubevirt_api::crd::crds().len());
    let role = |name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no ClusterRole {name}"))
            .clone()
    };
    for (name, to) in [
        ("kubevirt.io:admin", "admin"),
        ("kubevirt.io:edit", "edit"),
        ("kubevirt.io:view", "view"),
        ("cdi.kubevirt.io:admin", "admin"),
        ("cdi.kubevirt.io:edit", "edit"),
        ("cdi.kubevirt.io:view", "view"),
    ] {
        let r = role(name);
        assert_eq!(r["apiVersion"], "rbac.authorization.k8s.io/v1", "{name}");
        assert_eq!(
            r["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{to}")],
            "true",
            "{name}"
        );
    }
    for want in kubevirt_api::rbac::cluster_roles() {
        let want = serde_json::to_value(&want).expect("role");
        let name = want["metadata"]["name"].as_str().expect("name");
        assert_eq!(role(name)["rules"], want["rules"], "{name}");
    }
    let bindings = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding")
        .count();
    assert_eq!(bindings, kubevirt_api::rbac::cluster_role_bindings().len());
    // Without the flag: CRDs only.
    let out = bin().arg("crds").output().expect("run");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("kind: ClusterRole"));
}

/// `--log-format json`: a server writes one JSON object a line with KubeVirt's fields
/// (`timestamp`, `level`, `component`, `msg`); the API server's own lines name it. A format
/// that is neither `text` nor `json` is refused by `server`, `node` and `launcher`.
#[test]
fn log_format_json_writes_a_json_object_per_line() {
    for args in [
        &["server", "--log-format", "xml"][..],
        &[
            "node",
            "--log-format",
            "JSON",
            "--kubeconfig",
            "k",
            "--node-name",
            "n",
            "--data-dir",
            "d",
        ],
        &["launcher", "run", "--log-format", "", "--dir", "d"],
    ] {
        let out = bin().args(args).output().expect("run kubevirt-rs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("is not a log format: use text or json"),
            "{args:?}: {err}"
        );
    }

    // A node agent's --metrics-port is a port number.
    for bad in ["70000", "-1", "x", ""] {
        let out = bin()
            .args([
                "node",
                "--kubeconfig",
                "k",
                "--node-name",
                "n",
                "--data-dir",
                "d",
            ])
            .arg(format!("--metrics-port={bad}"))
            .output()
            .expect("run kubevirt-rs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("--metrics-port"), "{bad}: {err}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut child = bin()
        .args([
            "server",
            "--api-only",
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("KUBEVIRT_RS_LOG", "kubevirt_apiserver=trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubevirt-rs server");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // JSON lines, and the banner (plain text, for whoever waits on it); a request makes the
    // API server log one more ("dispatched", at trace).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut found = None;
    let mut asked = false;
    while found.is_none() && std::time::Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(1)) else {
            continue;
        };
        seen.push(line.clone());
        if line.starts_with("kubevirt-rs server: API on") {
            let _ = Command::new("kubectl")
                .args(["get", "namespaces"])
                .env("KUBECONFIG", data.join("kubeconfig"))
                .output();
            asked = true;
            continue;
        }
        if line.starts_with("  export KUBECONFIG=") {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if asked && v["component"] == "kube-apiserver" && v["msg"] == "dispatched" {
            found = Some(v);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let v = found.unwrap_or_else(|| panic!("no JSON line of the API server:\n{}", seen.join("\n")));
    assert_eq!(v["level"], "trace", "{v}");
    assert!(
        v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
}

//! The embedded API server driven by the real, unmodified kubectl, as a KubeVirt user drives
//! kube-apiserver.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const VM: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: testvm
  labels: {app: demo}
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        devices:
          disks:
          - {name: root, disk: {bus: virtio}}
        resources: {requests: {memory: 128Mi}}
      volumes:
      - {name: root, containerDisk: {image: demo}}
"#;

#[test]
fn create_every_served_compat_example() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    let mut created = 0;
    for dir in ["kubevirt-examples", "cdi-examples"] {
        for e in std::fs::read_dir(compat_dir().join(dir)).expect("compat") {
            let path = e.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read");
            // Kinds we do not serve (PriorityClass, CDIConfig, presets...) are skipped.
            let served = [
                "VirtualMachine\n",
                "VirtualMachineInstance\n",
                "DataVolume\n",
                "VirtualMachineInstancetype\n",
                "VirtualMachineClusterInstancetype\n",
                "VirtualMachinePreference\n",
                "VirtualMachinePool\n",
                "VirtualMachineInstanceReplicaSet\n",
                "VirtualMachineInstanceMigration\n",
                "MigrationPolicy\n",
                "ConfigMap\n",
                "Secret\n",
                "PersistentVolume\n",
            ];
            let kinds: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("kind: "))
                .collect();
            if kinds.is_empty()
                || !kinds
                    .iter()
                    .all(|k| served.contains(&format!("{k}\n").as_str()))
            {
                continue;
            }
            // kubevirt.io/v1alpha3 is KubeVirt's deprecated alias of v1; we serve v1 only.
            if text.contains("kubevirt.io/v1alpha3") {
                continue;
            }
            if path.ends_with("clone-datavolume.yaml") {
                continue; // refused by CDI itself, see crates/api/tests/compat.rs
            }
            // Several examples share a name: one namespace per file.
            // Files that name their namespace get it.
            let ns = text
                .lines()
                .find_map(|l| l.strip_prefix("  namespace: "))
                .map(|n| n.trim().trim_matches('"').to_string())
                .unwrap_or_else(|| format!("ex{created}"));
            let _ = s.kubectl(&["create", "namespace", &ns]);
            let out = s.kubectl(&["create", "-n", &ns, "-f", path.to_str().expect("utf8")]);
            // Examples KubeVirt's webhooks refuse on their own: those that need a gate its
            // default configuration leaves off (HostDisk, HostDevices and Sidecar are Alpha),
            // and a migration of a VMI that does not exist.
            let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
            let gated = match file {
                "vmi-host-disk.yaml" => {
                    Some("spec.volumes[0]: HostDisk feature gate is not enabled")
                }
                "vmi-usb.yaml" => {
                    Some("Host Devices feature gate is not enabled in kubevirt-config")
                }
                // KubeVirt's migration admitter wants the VMI to exist; the example's is in
                // another file (and namespace here).
                "migration-job.yaml" => Some("the VMI \""),
                f if f.contains("with-sidecar-hook") => {
                    Some("sidecar feature gate is not enabled in kubevirt-config")
                }
                _ => None,
            };
            if let Some(want) = gated {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    !out.status.success() && err.contains(want),
                    "{file} must be refused with {want:?}: {err}"
                );
                continue;
            }
            assert!(
                out.status.success(),
                "kubectl create -f {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            created += 1;
        }
    }
    assert!(created >= 40, "only {created} examples created");
    let vms = s.ok(&["get", "vm", "-A", "-o", "name"]);
    assert!(vms.lines().count() >= 10, "{vms}");
    let table = s.ok(&["get", "vmi", "-A", "-o", "wide"]);
    let header = table.lines().next().unwrap_or("");
    for col in [
        "NAME",
        "AGE",
        "PHASE",
        "IP",
        "NODENAME",
        "READY",
        "LIVE-MIGRATABLE",
        "PAUSED",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let dvs = s.ok(&["get", "dv", "-A"]);
    assert!(
        dvs.lines().next().unwrap_or("").contains("PROGRESS"),
        "{dvs}"
    );
}

#[test]
fn the_crud_flow_of_a_vm() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(VM));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "virtualmachine.kubevirt.io/testvm created"
    );
    // A second apply of the same manifest changes nothing.
    let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(VM));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "virtualmachine.kubevirt.io/testvm unchanged"
    );

    let yaml = s.ok(&["get", "vm", "testvm", "-o", "yaml"]);
    assert!(
        yaml.contains("type: q35"),
        "defaulted machine type:\n{yaml}"
    );
    assert!(yaml.contains("uid:") && yaml.contains("creationTimestamp:"));
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "vm", "testvm", "-o", "json"])).expect("json");
    assert_eq!(json["metadata"]["generation"], 1);

    s.ok(&[
        "patch",
        "vm",
        "testvm",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"runStrategy":"Manual"}}"#,
    ]);
    s.ok(&[
        "patch",
        "vm",
        "testvm",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/runStrategy","value":"Always"}]"#,
    ]);
    let rs = s.ok(&[
        "get",
        "vm",
        "testvm",
        "-o",
        "jsonpath={.spec.runStrategy} {.metadata.generation}",
    ]);
    assert_eq!(rs, "Always 3");

    s.ok(&["label", "vm", "testvm", "tier=gold"]);
    s.ok(&["annotate", "vm", "testvm", "note=hello"]);
    assert!(s
        .ok(&["get", "vm", "-l", "tier=gold", "-o", "name"])
        .contains("testvm"));
    assert!(s
        .ok(&["get", "vm", "-l", "tier!=gold", "-o", "name"])
        .is_empty());

    // Strategic merge patch is refused for custom resources, as kube-apiserver does.
    let out = s.kubectl(&[
        "patch",
        "vm",
        "testvm",
        "--type",
        "strategic",
        "-p",
        r#"{"spec":{}}"#,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("415")
            || String::from_utf8_lossy(&out.stderr).contains("unknown format")
    );

    // kubectl edit, with a scripted editor.
    let editor = s.dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/runStrategy: Always/runStrategy: Halted/' \"$1\"\n",
    )
    .expect("editor");
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = Command::new("kubectl")
        .args(["edit", "vm", "testvm"])
        .env("KUBECONFIG", s.kubeconfig())
        .env("KUBE_EDITOR", &editor)
        .output()
        .expect("edit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        s.ok(&["get", "vm", "testvm", "-o", "jsonpath={.spec.runStrategy}"]),
        "Halted"
    );

    let describe = s.ok(&["describe", "vm", "testvm"]);
    assert!(
        describe.contains("Name:")
            && describe.contains("testvm")
            && describe.contains("Run Strategy"),
        "{describe}"
    );

    // Status through the status subresource, then wait for the condition.
    s.ok(&["patch", "vm", "testvm", "--subresource=status", "--type", "merge", "-p",
        r#"{"status":{"printableStatus":"Stopped","conditions":[{"type":"Ready","status":"True"}]}}"#]);
    s.ok(&[
        "wait",
        "vm/testvm",
        "--for=condition=Ready",
        "--timeout=10s",
    ]);
    let table = s.ok(&["get", "vm", "testvm"]);
    assert!(
        table.contains("Stopped") && table.contains("True"),
        "{table}"
    );

    s.ok(&["delete", "vm", "testvm", "--wait=false"]);
    s.ok(&["wait", "vm/testvm", "--for=delete", "--timeout=10s"]);
    let out = s.kubectl(&["get", "vm", "testvm"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound")
            || String::from_utf8_lossy(&out.stderr).contains("not found")
    );
}

#[test]
fn invalid_manifests_get_kubevirt_messages() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    let bad = VM.replace("bus: virtio", "bus: ide");
    let out = s.kubectl_with("kubectl", &["create", "-f", "-"], Some(&bad));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.template.spec.domain.devices.disks[0].disk.bus")
            && err.contains("IDE bus is not supported"),
        "{err}"
    );

    let unknown = VM.replace("runStrategy: Halted", "runStrategy: Halted\n  colour: red");
    let out = s.kubectl_with("kubectl", &["create", "-f", "-"], Some(&unknown));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field") && err.contains("colour"),
        "{err}"
    );

    let wrong_type = VM.replace("memory: 128Mi", "memory: {a: 1}");
    let out = s.kubectl_with(
        "kubectl",
        &["create", "--validate=false", "-f", "-"],
        Some(&wrong_type),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("spec.template.spec.domain.resources.requests.memory"));
}

#[test]
fn explain_and_server_side_apply() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    let explain = s.ok(&["explain", "vmi.spec.domain.devices.disks"]);
    assert!(
        explain.contains("bootOrder")
            && explain.contains("KIND:")
            && explain.contains("VirtualMachineInstance"),
        "{explain}"
    );
    assert!(s
        .ok(&["explain", "vm.spec.runStrategy"])
        .contains("runStrategy"));
    assert!(s.ok(&["explain", "configmap.data"]).contains("data"));

    let out = s.kubectl_with("kubectl", &["apply", "--server-side", "-f", "-"], Some(VM));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("serverside-applied"));
    // Re-applying without the label removes it: the applier owned it.
    let no_label = VM.replace("  labels: {app: demo}\n", "");
    s.kubectl_with(
        "kubectl",
        &["apply", "--server-side", "-f", "-"],
        Some(&no_label),
    );
    let labels = s.ok(&["get", "vm", "testvm", "-o", "jsonpath={.metadata.labels}"]);
    assert!(!labels.contains("demo"), "{labels}");
    let managers = s.ok(&[
        "get",
        "vm",
        "testvm",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert!(managers.contains("kubectl"), "{managers}");
}

#[test]
fn get_watch_prints_new_objects() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    let mut watch = Command::new("kubectl")
        .args(["get", "vm", "-w"])
        .env("KUBECONFIG", s.kubeconfig())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("watch");
    std::thread::sleep(Duration::from_millis(1500));
    s.kubectl_with("kubectl", &["create", "-f", "-"], Some(VM));
    let stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l.starts_with("testvm") => break true,
            Ok(l) => seen.push(l),
            Err(_) => break false,
        }
    };
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(found, "kubectl get -w never showed testvm: {seen:?}");
}

#[track_caller]
fn expect_ok(bin: &str, what: &str, out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{bin} {what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every kubectl 1.27–1.33 on this machine, each against its own server: 1.27 and 1.28
/// download the protobuf OpenAPI v2 document for client-side validation (and 1.27 explains
/// from it), 1.29 and later read OpenAPI v3.
#[test]
fn every_kubectl_from_1_27_to_1_33_works() {
    const DIR: &str = "/usr/lib/google-cloud-sdk/bin";
    let mut ran = 0;
    for minor in 27..=33 {
        let bin = format!("{DIR}/kubectl.1.{minor}");
        if !std::path::Path::new(&bin).exists() {
            eprintln!("SKIPPED: {bin} is not on this machine");
            continue;
        }
        ran += 1;
        let s = Server::start();
        let run = |args: &[&str], stdin: Option<&str>| s.kubectl_with(&bin, args, stdin);

        // Client-side apply with the default validation (strict).
        let out = expect_ok(&bin, "apply", &run(&["apply", "-f", "-"], Some(VM)));
        assert!(out.contains("created"), "{bin}: {out}");
        // An unknown field is refused, by name.
        let bad = VM.replace("name: testvm", "name: badvm").replace(
            "  runStrategy: Halted\n",
            "  runStrategy: Halted\n  bogusField: 1\n",
        );
        let out = run(&["apply", "-f", "-"], Some(&bad));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("bogusField"),
            "{bin} apply of an unknown field: {err}"
        );
        // Server-side apply of the same manifest.
        let out = expect_ok(
            &bin,
            "apply --server-side",
            &run(&["apply", "--server-side", "-f", "-"], Some(VM)),
        );
        assert!(out.contains("serverside-applied"), "{bin}: {out}");
        let out = expect_ok(
            &bin,
            "explain",
            &run(&["explain", "vm.spec.template"], None),
        );
        assert!(
            out.contains("VirtualMachine") && out.contains("spec"),
            "{bin}: {out}"
        );
        let out = expect_ok(
            &bin,
            "get -o wide",
            &run(&["get", "vm", "-o", "wide"], None),
        );
        assert!(out.contains("testvm"), "{bin}: {out}");
        expect_ok(
            &bin,
            "patch --type=merge",
            &run(
                &[
                    "patch",
                    "vm",
                    "testvm",
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"labels":{"patched":"yes"}}}"#,
                ],
                None,
            ),
        );
        let labels = expect_ok(
            &bin,
            "get labels",
            &run(
                &["get", "vm", "testvm", "-o", "jsonpath={.metadata.labels}"],
                None,
            ),
        );
        assert!(labels.contains("patched"), "{bin}: {labels}");
        // kubectl's typed client sends this Service as protobuf.
        let out = expect_ok(
            &bin,
            "create service clusterip",
            &run(
                &["create", "service", "clusterip", "web", "--tcp=80:8080"],
                None,
            ),
        );
        assert!(out.contains("service/web created"), "{bin}: {out}");
        let out = expect_ok(
            &bin,
            "get --raw /openapi/v2",
            &run(&["get", "--raw", "/openapi/v2"], None),
        );
        assert!(out.contains("\"swagger\":\"2.0\""), "{bin}");
        // Access reviews (sent as protobuf): the admin may, an unknown user may not.
        let out = expect_ok(
            &bin,
            "auth can-i",
            &run(&["auth", "can-i", "create", "vm"], None),
        );
        assert_eq!(out.trim(), "yes", "{bin}");
        let out = run(&["auth", "can-i", "list", "nodes", "--as=nobody"], None);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "{bin}");

        if minor == 27 {
            // A CRD created now is in the v2 document at once, and kubectl 1.27 explains it
            // from the protobuf.
            let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              color: {type: string, description: the widget's colour}
"#;
            expect_ok(&bin, "create crd", &run(&["create", "-f", "-"], Some(crd)));
            let found = wait_until(Duration::from_secs(10), || {
                run(&["get", "--raw", "/openapi/v2"], None)
                    .stdout
                    .windows(22)
                    .any(|w| w == b"com.example.v1.Widget\"")
            });
            assert!(found, "the CRD's schema never appeared in /openapi/v2");
            let out = expect_ok(
                &bin,
                "explain widget.spec",
                &run(
                    &["explain", "widget.spec", "--output=plaintext-openapiv2"],
                    None,
                ),
            );
            assert!(out.contains("color"), "{bin}: {out}");
        }
    }
    if ran == 0 {
        eprintln!("SKIPPED: no kubectl.1.NN under {DIR}");
    }
}

#[test]
fn requests_without_the_token_are_refused() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    let kc = std::fs::read_to_string(s.kubeconfig()).expect("kubeconfig");
    let token_line = kc
        .lines()
        .find(|l| l.trim_start().starts_with("token:"))
        .expect("token")
        .to_string();
    let anon = s.dir.path().join("anon-kubeconfig");
    std::fs::write(&anon, kc.replace(&token_line, "    token: wrong")).expect("write");
    let out = Command::new("kubectl")
        .args(["get", "vm"])
        .env("KUBECONFIG", &anon)
        .output()
        .expect("kubectl");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unauthorized") || err.contains("must be logged in"),
        "{err}"
    );
    let mode = std::fs::metadata(s.kubeconfig()).expect("meta");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
}

/// `kubevirt-rs crds | kubectl apply --dry-run=client -f -` against a server that knows
/// CustomResourceDefinitions: kubectl accepts every generated CRD.
#[test]
fn kubectl_accepts_the_generated_crds() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    let docs: Vec<String> = kubevirt_api::crd::crds()
        .iter()
        .map(|c| serde_yaml::to_string(c).expect("yaml"))
        .collect();
    let yaml = docs.join("---\n");
    for mode in ["--dry-run=client", "--dry-run=server"] {
        let out = s.kubectl_with("kubectl", &["apply", mode, "-f", "-"], Some(&yaml));
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().count(), docs.len(), "{stdout}");
        assert!(
            stdout.contains("virtualmachineinstances.kubevirt.io"),
            "{stdout}"
        );
    }
}

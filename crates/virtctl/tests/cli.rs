//! virtctl without a server: argument parsing, `create vm` manifests (admitted by the same
//! `kubevirt_api::admit` the API server uses), the wire bodies, and the error text and exit
//! status of commands that fail before any request.

use clap::Parser;
use kubevirt_api::{admit, AdmitOptions};
use kubevirt_virtctl::create_vm::{build, to_yaml, VmArgs};
use kubevirt_virtctl::{Cli, Command};
use serde_json::{json, Value};
use std::process::Command as Process;

fn parse(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("virtctl").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn vm_args(args: &[&str]) -> VmArgs {
    let mut full = vec!["create", "vm"];
    full.extend_from_slice(args);
    match parse(&full).command {
        Command::Create(c) => match c.kind {
            kubevirt_virtctl::create_vm::CreateKind::Vm(a) => *a,
        },
        other => panic!("parsed as {other:?}"),
    }
}

/// `create vm ARGS` as YAML, decoded back, and admitted by the API server's admission.
fn create_admitted(args: &[&str]) -> Value {
    let built = build(&vm_args(args), None).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let yaml = to_yaml(&built.vm).expect("yaml");
    let back: Value = serde_yaml::from_str(&yaml).expect("the output is YAML");
    assert_eq!(back, built.vm, "YAML round trip");
    if let Err(errors) = admit(&back, &AdmitOptions::default()) {
        panic!("{args:?} was refused: {errors:?}\n{yaml}");
    }
    back
}

fn virtctl(args: &[&str]) -> (i32, String, String) {
    let out = Process::new(env!("CARGO_BIN_EXE_virtctl"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run virtctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn create_vm_defaults_match_kubevirt() {
    let vm = create_admitted(&["--name", "my-vm"]);
    assert_eq!(
        vm,
        json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"creationTimestamp": null, "name": "my-vm"},
            "spec": {
                "runStrategy": "Always",
                "template": {
                    "metadata": {"creationTimestamp": null},
                    "spec": {
                        "domain": {"devices": {}, "memory": {"guest": "512Mi"}, "resources": {}},
                        "terminationGracePeriodSeconds": 180
                    }
                }
            },
            "status": {}
        })
    );
    let yaml = to_yaml(&vm).expect("yaml");
    assert!(
        yaml.starts_with("apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  creationTimestamp: null\n  name: my-vm\nspec:\n  runStrategy: Always\n"),
        "keys sorted as Go's YAML encoder sorts them:\n{yaml}"
    );
}

#[test]
fn create_vm_random_name_uses_kubernetes_alphabet() {
    let vm = create_admitted(&[]);
    let name = vm["metadata"]["name"].as_str().expect("name");
    assert_eq!(name.len(), 8, "{name}");
    assert!(name.starts_with("vm-"), "{name}");
    assert!(name[3..]
        .chars()
        .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
}

#[test]
fn create_vm_containerdisk_cloud_init_user_and_ssh_key() {
    let vm = create_admitted(&[
        "--name",
        "demo",
        "--run-strategy",
        "Manual",
        "--memory",
        "256Mi",
        "--termination-grace-period",
        "0",
        "--volume-containerdisk",
        "src:kubevirt-rs/demo-guest:latest",
        "--user",
        "cloud-user",
        "--ssh-key",
        "ssh-ed25519 AAAAkey1 me@host",
    ]);
    let spec = &vm["spec"]["template"]["spec"];
    assert_eq!(vm["spec"]["runStrategy"], "Manual");
    assert_eq!(spec["terminationGracePeriodSeconds"], 0);
    assert_eq!(spec["domain"]["memory"]["guest"], "256Mi");
    assert_eq!(
        spec["volumes"],
        json!([
            {"containerDisk": {"image": "kubevirt-rs/demo-guest:latest"}, "name": "demo-containerdisk-0"},
            {"cloudInitNoCloud": {"userData": "#cloud-config\nuser: cloud-user\nssh_authorized_keys:\n  - ssh-ed25519 AAAAkey1 me@host"}, "name": "cloudinitdisk"}
        ])
    );
    // A containerdisk is no source to infer an instancetype from: implicit inference is skipped.
    assert!(vm["spec"].get("instancetype").is_none());
    assert!(vm["spec"].get("preference").is_none());
}

#[test]
fn create_vm_instancetype_preference_and_imports() {
    let vm = create_admitted(&[
        "--name",
        "big",
        "--instancetype",
        "virtualmachineinstancetype/u1.medium",
        "--preference",
        "fedora",
        "--volume-import",
        "type:ds,src:os-images/fedora,size:30Gi,name:root",
        "--volume-import",
        "type:blank,size:1Gi,name:scratch,bootorder:2",
        "--volume-pvc",
        "src:data",
    ]);
    let spec = &vm["spec"];
    assert_eq!(
        spec["instancetype"],
        json!({"kind": "virtualmachineinstancetype", "name": "u1.medium"})
    );
    assert_eq!(spec["preference"], json!({"name": "fedora"}));
    assert!(
        spec["template"]["spec"]["domain"].get("memory").is_none(),
        "an instancetype brings the memory"
    );
    assert_eq!(
        spec["dataVolumeTemplates"],
        json!([
            {"metadata": {"creationTimestamp": null, "name": "root"},
             "spec": {"sourceRef": {"kind": "DataSource", "name": "fedora", "namespace": "os-images"},
                      "storage": {"resources": {"requests": {"storage": "30Gi"}}}}},
            {"metadata": {"creationTimestamp": null, "name": "scratch"},
             "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}}}
        ])
    );
    let names: Vec<&str> = spec["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["data", "root", "scratch"], "PVC > imported volumes");
    assert_eq!(
        spec["template"]["spec"]["domain"]["devices"]["disks"],
        json!([{"bootOrder": 2, "name": "scratch"}])
    );
}

#[test]
fn create_vm_infers_from_the_first_pvc() {
    let vm = create_admitted(&["--name", "x", "--volume-pvc", "src:golden"]);
    assert_eq!(
        vm["spec"]["instancetype"],
        json!({"inferFromVolume": "golden", "inferFromVolumeFailurePolicy": "Ignore"})
    );
    assert_eq!(
        vm["spec"]["preference"],
        json!({"inferFromVolume": "golden", "inferFromVolumeFailurePolicy": "Ignore"})
    );
}

#[test]
fn create_vm_namespace_only_with_dash_n() {
    let cli = parse(&["-n", "team-a", "create", "vm", "--name", "x"]);
    let (Command::Create(c), ns) = (cli.command, cli.global.namespace) else {
        panic!("not create")
    };
    let kubevirt_virtctl::create_vm::CreateKind::Vm(a) = c.kind;
    let vm = build(&a, ns.as_deref()).expect("build").vm;
    assert_eq!(vm["metadata"]["namespace"], "team-a");
}

#[test]
fn create_vm_refuses_bad_flags_with_kubevirt_messages() {
    let err = |args: &[&str]| {
        build(&vm_args(args), None)
            .err()
            .unwrap_or_else(|| panic!("{args:?} was accepted"))
            .to_string()
    };
    assert_eq!(
        err(&["--run-strategy", "Sometimes"]),
        "failed to parse \"--run-strategy\" flag: invalid RunStrategy \"Sometimes\", supported values are: Always, Manual, Halted, Once, RerunOnFailure"
    );
    assert!(err(&["--memory", "lots"])
        .starts_with("failed to parse \"--memory\" flag: quantities must match"));
    assert_eq!(
        err(&["--volume-containerdisk", "name:x"]),
        "failed to parse \"--volume-containerdisk\" flag: src must be specified"
    );
    assert_eq!(
        err(&["--volume-containerdisk", "src:a,colour:red"]),
        "failed to parse \"--volume-containerdisk\" flag: unknown param(s): colour:red"
    );
    assert_eq!(
        err(&["--volume-pvc", "src:ns/claim"]),
        "failed to parse \"--volume-pvc\" flag: not allowed to specify namespace of pvc 'claim'"
    );
    assert_eq!(
        err(&["--volume-import", "type:blank,name:b"]),
        "failed to parse \"--volume-import\" flag: size must be specified"
    );
    assert_eq!(
        err(&[
            "--volume-containerdisk",
            "src:a,name:v",
            "--volume-pvc",
            "src:v"
        ]),
        "failed to parse \"--volume-pvc\" flag: there is already a volume with name 'v'"
    );
    assert_eq!(
        err(&[
            "--volume-containerdisk",
            "src:a,bootorder:1",
            "--volume-pvc",
            "src:b,bootorder:1"
        ]),
        "failed to parse \"--volume-pvc\" flag: bootorder 1 was specified multiple times"
    );
    assert_eq!(
        err(&["--infer-instancetype"]),
        "at least one volume is needed to infer an instance type or preference"
    );
    // Mutually exclusive flags are refused by the parser, as cobra refuses them.
    assert!(Cli::try_parse_from([
        "virtctl",
        "create",
        "vm",
        "--memory",
        "1Gi",
        "--instancetype",
        "u1"
    ])
    .is_err());
    assert!(Cli::try_parse_from([
        "virtctl",
        "create",
        "vm",
        "--user",
        "u",
        "--cloud-init-user-data",
        "I2Nsb3Vk"
    ])
    .is_err());
}

#[test]
fn start_stop_restart_bodies_are_kubevirts_options() {
    use kubevirt_virtctl::lifecycle::{check_force, start_options, stop_options};
    assert_eq!(start_options(false, false), json!({}));
    assert_eq!(
        start_options(true, true),
        json!({"paused": true, "dryRun": ["All"]})
    );
    let Command::Stop(stop) = parse(&["stop", "vm1", "--force", "--grace-period", "0"]).command
    else {
        panic!("not stop")
    };
    check_force(&stop).expect("--force with --grace-period");
    assert_eq!(
        stop_options(&stop, "gracePeriod"),
        json!({"gracePeriod": 0})
    );
    let Command::Restart(r) = parse(&[
        "restart",
        "vm1",
        "--force=true",
        "--grace-period=5",
        "--dry-run",
    ])
    .command
    else {
        panic!("not restart")
    };
    assert_eq!(
        stop_options(&r, "gracePeriodSeconds"),
        json!({"gracePeriodSeconds": 5, "dryRun": ["All"]})
    );
    let Command::Stop(plain) = parse(&["stop", "vm1"]).command else {
        panic!("not stop")
    };
    assert_eq!(stop_options(&plain, "gracePeriod"), json!({}));
    let Command::Start(s) = parse(&["start", "--paused", "vm1"]).command else {
        panic!("not start")
    };
    assert!(s.paused, "--paused without a value");
    assert_eq!(s.name, "vm1");
}

#[test]
fn global_flags_go_anywhere() {
    let cli = parse(&[
        "start",
        "vm1",
        "-n",
        "ns1",
        "--context",
        "c1",
        "--kubeconfig",
        "/tmp/kc",
    ]);
    assert_eq!(cli.global.namespace.as_deref(), Some("ns1"));
    assert_eq!(cli.global.context.as_deref(), Some("c1"));
    assert_eq!(
        cli.global.kubeconfig.as_deref(),
        Some(std::path::Path::new("/tmp/kc"))
    );
}

#[test]
fn pause_takes_vm_or_vmi() {
    use kubevirt_virtctl::lifecycle::pause_target_is_vm;
    assert!(pause_target_is_vm("VM").expect("vm"));
    assert!(!pause_target_is_vm("virtualmachineinstance").expect("vmi"));
    let e = pause_target_is_vm("pod").expect_err("pod");
    assert!(e.to_string().contains("vm (VirtualMachine) or vmi"), "{e}");
}

#[test]
fn console_escape_is_ctrl_close_bracket() {
    use kubevirt_virtctl::console::split_escape;
    assert_eq!(split_escape(b"ls\r"), (&b"ls\r"[..], false));
    assert_eq!(split_escape(b"ab\x1dcd"), (&b"ab"[..], true));
}

#[test]
fn upload_objects_and_urls() {
    use kubevirt_virtctl::upload::{data_volume, upload_pvc, upload_url, validate};
    let Command::ImageUpload(a) = parse(&[
        "image-upload",
        "dv",
        "disk1",
        "--size=1Gi",
        "--image-path=/tmp/x.img",
        "--storage-class",
        "local",
        "--volume-mode",
        "block",
        "--force-bind",
    ])
    .command
    else {
        panic!("not image-upload")
    };
    validate(&a).expect("valid");
    let dv = data_volume(&a, "ns1", "1Gi");
    assert_eq!(
        dv,
        json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1",
            "kind": "DataVolume",
            "metadata": {"name": "disk1", "namespace": "ns1",
                         "annotations": {"cdi.kubevirt.io/storage.bind.immediate.requested": ""}},
            "spec": {"contentType": "kubevirt", "source": {"upload": {}},
                     "storage": {"resources": {"requests": {"storage": "1Gi"}},
                                 "storageClassName": "local", "volumeMode": "Block"}}
        })
    );
    admit(&dv, &AdmitOptions::default()).expect("the DataVolume is admitted");
    let pvc = upload_pvc(&a, "ns1", "1Gi");
    assert_eq!(
        pvc["metadata"]["annotations"]["cdi.kubevirt.io/storage.upload.target"],
        ""
    );
    assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(
        upload_url("https://10.0.0.1:6443", false),
        "https://10.0.0.1:6443/v1beta1/upload"
    );
    assert_eq!(
        upload_url("proxy.example:443/", true),
        "https://proxy.example:443/v1beta1/upload-async"
    );
    assert_eq!(
        upload_url("https://p/v1beta1/upload", false),
        "https://p/v1beta1/upload",
        "a URL that already names the endpoint is kept"
    );
    let Command::ImageUpload(bad) = parse(&[
        "image-upload",
        "dv",
        "d",
        "--image-path=/x",
        "--volume-mode=disk",
    ])
    .command
    else {
        panic!("not image-upload")
    };
    assert_eq!(
        validate(&bad).expect_err("bad volume mode").to_string(),
        "Invalid volume mode 'disk'. Valid values are 'block' and 'filesystem'."
    );
}

#[test]
fn stop_force_without_grace_period_fails_before_connecting() {
    let (code, _, err) = virtctl(&["stop", "vm1", "--force"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "Must both use --force=true and set --grace-period."
    );
}

#[test]
fn vnc_without_proxy_only_says_what_to_do() {
    let (code, _, err) = virtctl(&["vnc", "vm1"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("launching a VNC viewer is not supported"),
        "{err}"
    );
    assert!(err.contains("--proxy-only"), "{err}");
}

#[test]
fn no_kubeconfig_is_a_clear_error() {
    let (code, _, err) = virtctl(&["start", "vm1"]);
    assert_eq!(code, 1);
    assert!(err.contains("no kubeconfig found"), "{err}");
    assert!(err.contains("KUBECONFIG"), "{err}");
}

#[test]
fn unreachable_server_names_the_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: t\n",
    )
    .expect("write kubeconfig");
    let kc = kc.to_str().expect("utf8");
    let (code, _, err) = virtctl(&["--kubeconfig", kc, "start", "vm1"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "Error starting VirtualMachine cannot reach the API server at https://127.0.0.1:1"
        ),
        "{err}"
    );
}

#[test]
fn version_client_only_needs_no_server() {
    let (code, out, _) = virtctl(&["version", "--client"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("Client Version: version.Info{GitVersion:\"v"),
        "{out}"
    );
}

#[test]
fn create_vm_needs_no_kubeconfig_and_prints_yaml() {
    let (code, out, err) = virtctl(&[
        "create",
        "vm",
        "--name",
        "offline",
        "--volume-blank",
        "size:1Gi,name:b",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("Flag --volume-blank has been deprecated, use flag --volume-import instead"),
        "{err}"
    );
    let vm: Value = serde_yaml::from_str(&out).expect("yaml");
    assert_eq!(vm["metadata"]["name"], "offline");
    admit(&vm, &AdmitOptions::default()).expect("admitted");
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, err) = virtctl(&["start"]);
    assert_eq!(code, 2);
    assert!(err.contains("<VM>"), "{err}");
}

//! The host boundary (issue 10, docs/security.md), tried as a hostile API user would: a real
//! `kubevirt-rs server`, unmodified kubectl, and for the confinement test real QEMU whose argv
//! and credentials are read from `/proc`. One test per class of finding:
//!
//! 1. option injection: names that would reach QEMU's option parser are refused at the door;
//!    what QEMU runs with has every spec value escaped;
//! 2. path traversal: names that would become paths are refused; PersistentVolume paths reach
//!    only the provisioner's volumes or an administrator's `--host-path-root`; the reclaimer
//!    deletes only its own volumes;
//! 3. a store that cannot restart: a status write nested past the limit is refused and the
//!    server restarts with every object;
//! 5. host access by default: no feature gate on a fresh server (`tests/cluster_config.rs`),
//!    and no host path outside the roots even with the gate on;
//! 6. QEMU runs as an unprivileged user, without capabilities, under seccomp.
//!
//! Class 4 (denial of service) is covered at the API server's level in
//! `crates/apiserver/tests/limits.rs`.

use kubevirt_testsupport::{have_kubectl, wait_for, Server};
use std::path::Path;
use std::time::Duration;

const HOSTILE: &str = "x,romfile=/etc/shadow";

/// A server in `dir`; containerDisks from `images` (the demo guest's), or none.
fn server_with(dir: &Path, images: Option<&Path>, extra: &[String]) -> Server {
    let mut s = Server::new(
        env!("CARGO_BIN_EXE_kubevirt-rs"),
        dir.join("data"),
        images.map_or_else(|| dir.join("images"), Path::to_path_buf),
    );
    s.extra_args = extra.to_vec();
    s.start();
    s
}

fn server(dir: &Path, extra: &[String]) -> Server {
    server_with(dir, None, extra)
}

fn apply(s: &Server, dir: &Path, file: &str, yaml: &str) -> String {
    let f = dir.join(file);
    std::fs::write(&f, yaml).expect("write manifest");
    s.kubectl(&["apply", "-f", f.to_str().expect("utf8")])
}

fn vmi(name: &str, iface: &str, disk: &str, extra_iface: &str, cpu: &str) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
spec:
  domain:
    {cpu}
    devices:
      disks:
      - name: "{disk}"
        disk: {{bus: virtio}}
      interfaces:
      - name: "{iface}"
        masquerade: {{}}
        {extra_iface}
    resources:
      requests:
        memory: 64Mi
  networks:
  - name: "{iface}"
    pod: {{}}
  volumes:
  - name: "{disk}"
    containerDisk:
      image: kubevirt-rs/demo-guest:latest
"#
    )
}

#[test]
fn hostile_names_are_refused_before_anything_reaches_the_host() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let s = server(dir.path(), &[]);
    let cases = [
        (
            vmi("nic", HOSTILE, "root", "", ""),
            "spec.domain.devices.interfaces[0].name",
            "Network interface name can only contain alphabetical characters",
        ),
        (
            vmi(
                "mac",
                "default",
                "root",
                "macAddress: \"de:ad:be:ef:00:01,romfile=/etc/shadow\"",
                "",
            ),
            "spec.domain.devices.interfaces[0].macAddress",
            "has malformed MAC address",
        ),
        (
            vmi("disk", "default", "../../../etc", "", ""),
            "spec.volumes[0].name",
            "is not a valid volume name: a lowercase RFC 1123 label",
        ),
        (
            vmi(
                "cpu",
                "default",
                "root",
                "",
                "cpu: {features: [{name: \"pcid,romfile=/etc/shadow\"}]}",
            ),
            "spec.domain.cpu.features[0].name",
            "is not a CPU feature name",
        ),
    ];
    for (i, (yaml, field, msg)) in cases.iter().enumerate() {
        let out = apply(&s, dir.path(), &format!("case{i}.yaml"), yaml);
        assert!(
            out.contains(field) && out.contains(msg),
            "case {i}: expected {field}: {msg}\ngot: {out}"
        );
    }
    // Nothing was admitted, so nothing was created on the host.
    assert!(s.kubectl(&["get", "vmi", "-o", "name"]).trim().is_empty());
    let vms = kubevirt_launcher::api::VmiDir::root(&s.data).expect("vms root");
    let entries = std::fs::read_dir(&vms).map(|d| d.count()).unwrap_or(0);
    assert_eq!(entries, 0, "VMI directories were created under {vms:?}");
    assert!(!dir.path().join("etc").exists());
}

/// A PVC bound (by hand, as an administrator or a static binder would) to a PersistentVolume.
fn bound_claim(s: &Server, dir: &Path, name: &str, local_path: &str) {
    bound_claim_with(s, dir, name, local_path, "")
}

/// [`bound_claim`] with more of the PersistentVolume's spec (YAML lines indented by two).
fn bound_claim_with(s: &Server, dir: &Path, name: &str, local_path: &str, pv_spec: &str) {
    let out = apply(
        s,
        dir,
        &format!("{name}-pv.yaml"),
        &format!(
            r#"apiVersion: v1
kind: PersistentVolume
metadata:
  name: {name}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  local: {{path: "{local_path}"}}
  claimRef: {{namespace: default, name: {name}}}
{pv_spec}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {name}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: {name}
  resources: {{requests: {{storage: 1Gi}}}}
"#
        ),
    );
    assert!(out.contains("created"), "{out}");
    let out = s.kubectl(&[
        "patch",
        "pvc",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Bound"}}"#,
    ]);
    assert!(out.contains("patched"), "{out}");
}

#[test]
fn persistent_volumes_reach_only_allowed_host_paths() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("disk.img"), b"host secret").expect("canary");
    let allowed = dir.path().join("allowed");
    std::fs::create_dir_all(&allowed).expect("mkdir");
    let s = server(
        dir.path(),
        &["--host-path-root".into(), allowed.display().to_string()],
    );
    let data = s.data.canonicalize().expect("data dir");
    let cases = [
        (
            "outside",
            outside.display().to_string(),
            "is not beneath an allowed host path root",
        ),
        (
            "datadir",
            data.display().to_string(),
            "is inside the server's data directory",
        ),
        (
            "dotdot",
            format!("{}/volumes/../../outside", data.display()),
            "must be normalised",
        ),
    ];
    for (name, path, why) in &cases {
        bound_claim(&s, dir.path(), name, path);
        let vm = format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
spec:
  domain:
    devices:
      disks:
      - name: data
        disk: {{bus: virtio}}
    resources:
      requests:
        memory: 64Mi
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: {name}}}
"#
        );
        let out = apply(&s, dir.path(), &format!("{name}-vmi.yaml"), &vm);
        assert!(out.contains("created"), "{out}");
        let msg = || {
            s.jsonpath(
                "vmi",
                name,
                "{.status.phase} {.status.conditions[?(@.type==\"Ready\")].message}",
            )
        };
        assert!(
            wait_for(Duration::from_secs(30), || msg().starts_with("Failed")),
            "{name}: {}",
            msg()
        );
        let m = msg();
        assert!(m.contains(why), "{name}: {m}");
        assert!(m.contains("spec.local.path"), "{name}: {m}");
    }
    assert_eq!(
        std::fs::read(outside.join("disk.img")).expect("canary"),
        b"host secret"
    );

    // A claim that names another claim's volume (`spec.volumeName` by hand, marked Bound by
    // someone allowed to write claim status) reaches nothing of it: the volume's claimRef
    // names its own claim.
    let theirs = allowed.join("theirs");
    std::fs::create_dir_all(&theirs).expect("mkdir");
    std::fs::write(theirs.join("disk.img"), b"their disk").expect("canary");
    bound_claim(&s, dir.path(), "theirs", &theirs.display().to_string());
    let out = apply(
        &s,
        dir.path(),
        "thief.yaml",
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: thief
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: theirs
  resources: {requests: {storage: 1Gi}}
---
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: thief
spec:
  domain:
    devices:
      disks:
      - name: data
        disk: {bus: virtio}
    resources:
      requests:
        memory: 64Mi
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: thief}
"#,
    );
    assert!(out.contains("created"), "{out}");
    let out = s.kubectl(&[
        "patch",
        "pvc",
        "thief",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Bound"}}"#,
    ]);
    assert!(out.contains("patched"), "{out}");
    let msg = || {
        s.jsonpath(
            "vmi",
            "thief",
            "{.status.phase} {.status.conditions[?(@.type==\"Ready\")].message}",
        )
    };
    assert!(
        wait_for(Duration::from_secs(30), || msg().starts_with("Failed")),
        "{}",
        msg()
    );
    assert!(
        msg().contains(
            "PersistentVolume theirs is not bound to PersistentVolumeClaim default/thief"
        ),
        "{}",
        msg()
    );
    // Nor can a DataVolume clone it through that claim: CDI's import, upload and clone paths
    // check the same binding.
    let out = apply(
        &s,
        dir.path(),
        "stolen.yaml",
        r#"apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: stolen
spec:
  source:
    pvc: {namespace: default, name: thief}
  storage:
    resources: {requests: {storage: 1Gi}}
"#,
    );
    assert!(out.contains("created"), "{out}");
    let running = || {
        s.jsonpath(
            "dv",
            "stolen",
            "{.status.conditions[?(@.type==\"Running\")].message}",
        )
    };
    assert!(
        wait_for(Duration::from_secs(60), || running().contains(
            "PersistentVolume theirs is not bound to PersistentVolumeClaim default/thief"
        )),
        "{}",
        s.kubectl(&["get", "dv", "stolen", "-o", "yaml"])
    );
    assert_eq!(
        std::fs::read(theirs.join("disk.img")).expect("canary"),
        b"their disk"
    );

    // A volume pinned to another node (its nodeAffinity) holds its data there; the same path
    // here is something else. No node takes a VMI on it, and CDI on this node does not clone
    // from it.
    let elsewhere = allowed.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    std::fs::write(elsewhere.join("disk.img"), b"not node09's disk").expect("canary");
    bound_claim_with(
        &s,
        dir.path(),
        "elsewhere",
        &elsewhere.display().to_string(),
        "  nodeAffinity: {required: {nodeSelectorTerms: [{matchExpressions: \
         [{key: kubernetes.io/hostname, operator: In, values: [node09]}]}]}}",
    );
    let out = apply(
        &s,
        dir.path(),
        "elsewhere-users.yaml",
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: stranded
spec:
  domain:
    devices:
      disks:
      - name: data
        disk: {bus: virtio}
    resources:
      requests:
        memory: 64Mi
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: elsewhere}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: faraway
spec:
  source:
    pvc: {namespace: default, name: elsewhere}
  storage:
    resources: {requests: {storage: 1Gi}}
"#,
    );
    assert!(out.contains("created"), "{out}");
    let scheduled = || {
        s.jsonpath(
            "vmi",
            "stranded",
            "{.status.phase} {.status.conditions[?(@.type==\"PodScheduled\")].message}",
        )
    };
    assert!(
        wait_for(Duration::from_secs(30), || {
            scheduled()
            == "Scheduling 0/1 nodes are available: 1 node(s) had volume node affinity conflict."
        }),
        "{}",
        scheduled()
    );
    let running = || {
        s.jsonpath(
            "dv",
            "faraway",
            "{.status.conditions[?(@.type==\"Running\")].message}",
        )
    };
    assert!(
        wait_for(Duration::from_secs(60), || running().contains(
            "PersistentVolume elsewhere is not reachable from node"
        )),
        "{}",
        s.kubectl(&["get", "dv", "faraway", "-o", "yaml"])
    );
    assert_eq!(
        std::fs::read(elsewhere.join("disk.img")).expect("canary"),
        b"not node09's disk"
    );
}

#[test]
fn the_reclaimer_deletes_only_the_provisioners_own_volumes() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(&victim).expect("mkdir");
    std::fs::write(victim.join("precious"), b"keep me").expect("canary");
    let s = server(dir.path(), &[]);
    let data = s.data.canonicalize().expect("data dir");
    std::fs::create_dir_all(data.join("volumes")).expect("volumes dir");
    // PersistentVolumes that claim to be the provisioner's, whose claim is gone, with reclaim
    // policy Delete: the reclaimer runs for them, and must not follow their paths out.
    let paths = [
        format!("{}/volumes/../../victim", data.display()),
        victim.display().to_string(),
    ];
    for (i, path) in paths.iter().enumerate() {
        let out = apply(
            &s,
            dir.path(),
            &format!("pv{i}.yaml"),
            &format!(
                r#"apiVersion: v1
kind: PersistentVolume
metadata:
  name: evil{i}
  annotations: {{pv.kubernetes.io/provisioned-by: kubevirt-rs.io/local-path}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  storageClassName: local
  local: {{path: "{path}"}}
  claimRef: {{namespace: default, name: gone{i}, uid: 00000000-0000-0000-0000-00000000000{i}}}
"#
            ),
        );
        assert!(out.contains("created"), "{out}");
    }
    // The reclaimer deletes the PersistentVolume objects (their claims are gone)...
    assert!(
        wait_for(Duration::from_secs(30), || s
            .kubectl(&["get", "pv", "-o", "name"])
            .trim()
            .is_empty()),
        "{}",
        s.kubectl(&["get", "pv"])
    );
    // ...but not the host directories they pointed at.
    assert_eq!(
        std::fs::read(victim.join("precious")).expect("the victim directory survives"),
        b"keep me"
    );
}

#[test]
fn a_status_nested_past_the_limit_is_refused_and_the_store_restarts() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = server(dir.path(), &[]);
    let out = apply(
        &s,
        dir.path(),
        "vm.yaml",
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: deep
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        devices: {}
        resources:
          requests:
            memory: 64Mi
"#,
    );
    assert!(out.contains("created"), "{out}");
    // 100 levels: under serde_json's own limit of 128, so only our depth limit refuses it.
    let deep = format!(
        r#"{{"status":{{"x":{}1{}}}}}"#,
        r#"{"a":"#.repeat(100),
        "}".repeat(100)
    );
    for _ in 0..3 {
        let out = s.kubectl(&[
            "patch",
            "vm",
            "deep",
            "--subresource=status",
            "--type=merge",
            "-p",
            &deep,
        ]);
        assert!(
            out.contains("Error") && !out.contains("patched"),
            "a deeply nested status was accepted: {out}"
        );
    }
    s.kill9();
    s.start();
    assert!(
        wait_for(Duration::from_secs(20), || s.jsonpath(
            "vm",
            "deep",
            "{.metadata.name}"
        ) == "deep"),
        "{}",
        s.kubectl(&["get", "vm", "deep"])
    );
}

/// `Uid:`/`Gid:`/`CapEff:`/`Seccomp:` lines of `/proc/PID/status`.
fn nix_is_root() -> bool {
    proc_status(std::process::id(), "Uid")
        .split_whitespace()
        .nth(1)
        .is_some_and(|euid| euid == "0")
}

fn proc_status(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

#[test]
fn qemu_runs_unprivileged_under_seccomp() {
    if !have_kubectl() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = server_with(dir.path(), Some(&guest.join("oci")), &[]);
    let out = apply(
        &s,
        dir.path(),
        "vmi.yaml",
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: confined
spec:
  startStrategy: Paused
  domain:
    cpu: {features: [{name: pcid, policy: disable}]}
    devices:
      disks:
      - name: rootdisk
        disk: {bus: virtio}
        serial: serial-1.a_b+c
      interfaces:
      - name: default
        masquerade: {}
        macAddress: "02:00:00:00:00:01"
    resources:
      requests:
        memory: 128Mi
  networks:
  - name: default
    pod: {}
  volumes:
  - name: rootdisk
    containerDisk:
      image: kubevirt-rs/demo-guest:latest
"#,
    );
    assert!(out.contains("created"), "{out}");
    let pid = || s.qemu_pid("default", "confined");
    assert!(
        wait_for(Duration::from_secs(60), || pid().is_some()
            && s.jsonpath("vmi", "confined", "{.status.phase}") == "Running"),
        "{}",
        s.kubectl(&["get", "vmi", "confined", "-o", "yaml"])
    );
    let pid = pid().expect("qemu pid");
    // Real uid/effective/saved/fs uid: all unprivileged; no capability; seccomp filter mode.
    let uids = proc_status(pid, "Uid");
    assert!(
        uids.split_whitespace().all(|u| u != "0") && !uids.is_empty(),
        "QEMU runs with uids {uids}"
    );
    let gids = proc_status(pid, "Gid");
    assert!(gids.split_whitespace().all(|g| g != "0"), "gids {gids}");
    assert_eq!(proc_status(pid, "CapEff"), "0000000000000000");
    assert_eq!(proc_status(pid, "Seccomp"), "2");
    // The argv QEMU really runs with: sandboxed, no defaults, and every spec value in its place.
    let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .expect("cmdline")
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let after = |flag: &str| -> Vec<&String> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| &w[1])
            .collect()
    };
    assert!(
        after("-sandbox").iter().any(|v| v.starts_with("on,")
            && v.contains("spawn=deny")
            && v.contains("elevateprivileges=deny")),
        "{argv:?}"
    );
    assert!(argv.iter().any(|a| a == "-nodefaults"), "{argv:?}");
    assert!(argv.iter().any(|a| a == "-no-user-config"), "{argv:?}");
    let devices = after("-device");
    assert!(
        devices
            .iter()
            .any(|d| d.contains("id=ua-rootdisk") && d.contains("serial=serial-1.a_b+c")),
        "{devices:?}"
    );
    assert!(
        devices
            .iter()
            .any(|d| d.contains("id=ua-default") && d.contains("mac=02:00:00:00:00:01")),
        "{devices:?}"
    );
    assert!(
        after("-cpu").iter().any(|c| c.contains("-pcid")),
        "{argv:?}"
    );
    assert!(!argv.iter().any(|a| a.contains("romfile=/")), "{argv:?}");
    // The launcher (root) keeps only what it needs: neither it nor anything it executes can
    // mount, load modules, trace, reboot or reach raw devices; it can still chown QEMU's files,
    // switch QEMU's user and create tap devices.
    if nix_is_root() {
        let launcher = s.launcher_pid("default", "confined").expect("launcher pid");
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            let hex = proc_status(launcher, set);
            let caps = u64::from_str_radix(&hex, 16).unwrap_or(u64::MAX);
            for (bit, name) in [
                (16, "CAP_SYS_MODULE"),
                (17, "CAP_SYS_RAWIO"),
                (19, "CAP_SYS_PTRACE"),
                (21, "CAP_SYS_ADMIN"),
                (22, "CAP_SYS_BOOT"),
                (27, "CAP_MKNOD"),
            ] {
                assert_eq!(
                    caps & (1 << bit),
                    0,
                    "the launcher's {set} {hex} has {name}"
                );
            }
            for (bit, name) in [
                (0, "CAP_CHOWN"),
                (6, "CAP_SETGID"),
                (7, "CAP_SETUID"),
                (12, "CAP_NET_ADMIN"),
            ] {
                assert_ne!(
                    caps & (1 << bit),
                    0,
                    "the launcher's {set} {hex} lacks {name}"
                );
            }
        }
        assert_eq!(proc_status(launcher, "CapInh"), "0000000000000000");
    } else {
        eprintln!("SKIP launcher capability checks: the tests do not run as root");
    }
    let out = s.kubectl(&["delete", "vmi", "confined", "--wait=true", "--timeout=60s"]);
    assert!(out.contains("deleted"), "{out}");
    s.kill9();
}

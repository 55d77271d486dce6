//! Cloud-init data from Secrets and SSH keys from `spec.accessCredentials`, end to end: real
//! kubectl against `kubevirt-rs server`, real QEMU (TCG) booting the demo guest, one boot.
//!
//! - A VM whose `cloudInitNoCloud.secretRef` Secret does not exist yet is not started: its VMI
//!   says why with kubelet's message (`MountVolume.SetUp failed for volume "cloudinit-udata" :
//!   secret "ci-userdata" not found`), as a `Synchronized` condition and a `FailedMount`
//!   event. Every Secret it names must exist (the `sshPublicKey` one too) before it starts.
//! - Once the Secrets exist it boots: the user data script from the Secret runs (its marker on
//!   the console), and the `noCloud`-propagated keys are in the guest's
//!   /root/.ssh/authorized_keys (the script prints the file).
//! - A Secret of the same name in another namespace is never used: that VM keeps waiting.

use kubevirt_testsupport::{have_kubectl, wait_for, Server};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

fn vm_manifest(name: &str, namespace: &str, user_data_secret: &str, keys_secret: &str) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
  namespace: {namespace}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        devices:
          disks:
          - name: rootdisk
            disk: {{bus: virtio}}
          - name: cloudinit
            disk: {{bus: virtio}}
        resources:
          requests:
            memory: 128Mi
      terminationGracePeriodSeconds: 5
      accessCredentials:
      - sshPublicKey:
          source:
            secret:
              secretName: {keys_secret}
          propagationMethod:
            noCloud: {{}}
      volumes:
      - name: rootdisk
        containerDisk:
          image: kubevirt-rs/demo-guest:latest
      - name: cloudinit
        cloudInitNoCloud:
          secretRef:
            name: {user_data_secret}
"#
    )
}

fn sync_message(s: &Server, ns: &str, name: &str) -> String {
    s.kubectl(&[
        "get",
        "vmi",
        name,
        "-n",
        ns,
        "-o",
        r#"jsonpath={.status.phase} {.status.conditions[?(@.type=="Synchronized")].message}"#,
    ])
}

#[test]
fn a_vm_waits_for_its_cloud_init_secret_then_boots_with_its_user_data_and_ssh_keys() {
    if !have_kubectl() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);
    let apply = |file: &str, text: &str| {
        let path = s.data.join(file);
        std::fs::write(&path, text).expect("write manifest");
        s.kubectl(&["apply", "-f", path.to_str().expect("utf8")])
    };

    // The VM first, its Secrets later.
    let out = apply(
        "vm.yaml",
        &vm_manifest("secretvm", "default", "ci-userdata", "ci-keys"),
    );
    assert!(out.contains("created"), "{out}");
    // Another namespace holds Secrets of the names a VM in `default` asks for: never used.
    let out = s.kubectl(&["create", "namespace", "other"]);
    assert!(out.contains("created"), "{out}");
    for (name, key) in [("ci-other", "userdata"), ("ci-other-keys", "k")] {
        let out = s.kubectl(&[
            "create",
            "secret",
            "generic",
            name,
            "-n",
            "other",
            &format!("--from-literal={key}=#!/bin/sh\necho other-namespace-secret-used"),
        ]);
        assert!(out.contains("created"), "{out}");
    }
    let out = apply(
        "cross.yaml",
        &vm_manifest("crossvm", "default", "ci-other", "ci-other-keys"),
    );
    assert!(out.contains("created"), "{out}");

    let want =
        r#"MountVolume.SetUp failed for volume "cloudinit-udata" : secret "ci-userdata" not found"#;
    let mut last = String::new();
    assert!(
        wait_for(Duration::from_secs(60), || {
            last = sync_message(&s, "default", "secretvm");
            last.contains(want)
        }),
        "the VMI never said its Secret is missing: {last:?}\n{}",
        s.kubectl(&["get", "vmi", "secretvm", "-o", "yaml"])
    );
    assert!(!last.starts_with("Running"), "{last}");
    let events = s.kubectl(&[
        "get",
        "events",
        "-o",
        r#"jsonpath={range .items[*]}{.reason}: {.message}{"\n"}{end}"#,
    ]);
    assert!(
        events.contains(&format!("FailedMount: {want}")),
        "no FailedMount event: {events}"
    );

    // The user data Secret comes; the keys Secret is still missing, and now named.
    let script = s.data.join("userdata.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho secret-user-data-ran\nsed 's/^/AK: /' /root/.ssh/authorized_keys\necho ak-end\n",
    )
    .expect("write script");
    let out = s.kubectl(&[
        "create",
        "secret",
        "generic",
        "ci-userdata",
        &format!("--from-file=userdata={}", script.display()),
    ]);
    assert!(out.contains("created"), "{out}");
    let want =
        r#"MountVolume.SetUp failed for volume "ci-keys-access-cred" : secret "ci-keys" not found"#;
    assert!(
        wait_for(Duration::from_secs(60), || {
            last = sync_message(&s, "default", "secretvm");
            last.contains(want)
        }),
        "the VMI never named the missing keys Secret: {last:?}"
    );
    assert!(!s.vmi_dir("default", "secretvm").serial_log().exists());

    let out = s.kubectl(&[
        "create",
        "secret",
        "generic",
        "ci-keys",
        "--from-literal=key1=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKEY1 alice@example",
        "--from-literal=key2=ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQKEY2 bob@example",
    ]);
    assert!(out.contains("created"), "{out}");

    let serial = || std::fs::read_to_string(s.vmi_dir("default", "secretvm").serial_log());
    assert!(
        wait_for(BOOT, || serial().is_ok_and(|c| c.contains("ak-end"))),
        "the Secret's user data never ran: {:?}\n{}",
        serial(),
        s.kubectl(&["get", "vmi", "secretvm", "-o", "yaml"])
    );
    let console = serial().unwrap_or_default();
    assert!(console.contains("secret-user-data-ran"), "{console}");
    // Both keys, in the Secret's key order, as KubeVirt numbers them in the meta-data.
    let keys: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("AK: "))
        .collect();
    assert_eq!(
        keys,
        [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKEY1 alice@example",
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQKEY2 bob@example",
        ],
        "{console}"
    );
    assert!(
        wait_for(Duration::from_secs(60), || s.jsonpath(
            "vmi",
            "secretvm",
            "{.status.phase}"
        ) == "Running"),
        "{}",
        s.kubectl(&["get", "vmi", "secretvm", "-o", "yaml"])
    );

    // The VM whose Secrets exist only in another namespace is still waiting for them.
    let cross = sync_message(&s, "default", "crossvm");
    assert!(
        cross.contains(r#"secret "ci-other" not found"#),
        "{cross}\n{}",
        s.kubectl(&["get", "vmi", "crossvm", "-o", "yaml"])
    );
    assert!(!s.vmi_dir("default", "crossvm").serial_log().exists());
}

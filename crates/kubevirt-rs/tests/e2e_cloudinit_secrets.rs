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
//! - `qemuGuestAgent` propagation: the agent writes the user `demo`'s authorized_keys
//!   (`guest-ssh-add-authorized-keys`) and sets its password (`guest-set-user-password`);
//!   `AccessCredentialsSynchronized` turns True; a changed Secret replaces the keys in the
//!   running guest. A guest-side loop prints the file and checks the password hash.
//! - A Secret of the same name in another namespace is never used: that VM keeps waiting. A
//!   `secretRef` name like `../other/x` is never looked up: that VMI fails to start.

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
      - sshPublicKey:
          source:
            secret:
              secretName: ci-agent-keys
          propagationMethod:
            qemuGuestAgent:
              users: [demo]
      - userPassword:
          source:
            secret:
              secretName: ci-password
          propagationMethod:
            qemuGuestAgent: {{}}
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

    // A hostile name: as a URL path it would reach the Secret in `other`. It is never looked
    // up; the VMI fails to start, saying which field.
    let out = apply(
        "hostile.yaml",
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: hostile
spec:
  domain:
    devices:
      disks:
      - name: cloudinit
        disk: {bus: virtio}
    resources:
      requests:
        memory: 128Mi
  volumes:
  - name: cloudinit
    cloudInitNoCloud:
      secretRef:
        name: ../other/ci-other
"#,
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
        concat!(
            "#!/bin/sh\n",
            "echo secret-user-data-ran\n",
            "sed 's/^/AK: /' /root/.ssh/authorized_keys\n",
            "echo ak-end\n",
            // What the guest agent does, as it happens.
            "(last=; pw=; while :; do\n",
            "  c=$(tr '\\n' '|' </home/demo/.ssh/authorized_keys 2>/dev/null)\n",
            "  [ \"$c\" != \"$last\" ] && echo \"QGA-AK: $c\" && last=$c\n",
            "  h=$(awk -F: '$1==\"demo\"{print $2}' /etc/shadow 2>/dev/null)\n",
            "  s=$(echo \"$h\" | cut -d'$' -f3)\n",
            "  if [ -n \"$s\" ] && [ \"$(printf %s 'pa55 w:rd' | mkpasswd -m sha512 -P 0 -S \"$s\")\" = \"$h\" ]; then\n",
            "    [ -z \"$pw\" ] && echo QGA-PW: match && pw=1\n",
            "  fi\n",
            "  sleep 1\n",
            "done) &\n",
        ),
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
    for args in [
        [
            "ci-agent-keys",
            "--from-literal=a=ssh-ed25519 AGENTKEY1 first@example",
        ],
        ["ci-password", "--from-literal=demo=pa55 w:rd"],
    ] {
        let out = s.kubectl(&["create", "secret", "generic", args[0], args[1]]);
        assert!(out.contains("created"), "{out}");
    }

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

    // The guest agent's part: keys for `demo`, its password, the condition. The guest loop
    // prints the whole file on one line (`|` between lines).
    let has_line = |want: &str| {
        serial().is_ok_and(|c| c.lines().any(|l| l.trim_end_matches(['\r', '|']) == want))
    };
    assert!(
        wait_for(BOOT, || has_line(
            "QGA-AK: ssh-ed25519 AGENTKEY1 first@example"
        ) && has_line("QGA-PW: match")),
        "the guest agent never set the keys and password: {:?}\n{}",
        serial(),
        s.kubectl(&["get", "vmi", "secretvm", "-o", "yaml"])
    );
    let cond = || {
        s.jsonpath(
            "vmi",
            "secretvm",
            r#"{.status.conditions[?(@.type=="AccessCredentialsSynchronized")].status}"#,
        )
    };
    assert!(
        wait_for(Duration::from_secs(60), || cond() == "True"),
        "{}",
        s.kubectl(&["get", "vmi", "secretvm", "-o", "yaml"])
    );
    // A changed Secret replaces the keys in the running guest (the old key is gone).
    let out = s.kubectl(&[
        "patch",
        "secret",
        "ci-agent-keys",
        "--type=merge",
        "-p",
        // base64 of "ssh-ed25519 AGENTKEY2 second@example"
        r#"{"data":{"a":"c3NoLWVkMjU1MTkgQUdFTlRLRVkyIHNlY29uZEBleGFtcGxl"}}"#,
    ]);
    assert!(out.contains("patched"), "{out}");
    assert!(
        wait_for(Duration::from_secs(90), || has_line(
            "QGA-AK: ssh-ed25519 AGENTKEY2 second@example"
        )),
        "the changed Secret never reached the guest: {:?}",
        serial()
    );
    let events = s.kubectl(&[
        "get",
        "events",
        "-o",
        r#"jsonpath={range .items[*]}{.reason}: {.message}{"\n"}{end}"#,
    ]);
    assert!(
        events.contains("AccessCredentialsSyncSuccess: Access credentials sync successful."),
        "{events}"
    );

    let hostile = s.jsonpath(
        "vmi",
        "hostile",
        r#"{.status.phase} {.status.conditions[?(@.type=="Ready")].message}"#,
    );
    assert!(
        hostile.starts_with("Failed ")
            && hostile.contains(
                r#"spec.volumes[0].cloudInitNoCloud.secretRef.name: "../other/ci-other" is not a valid Secret name"#
            ),
        "{hostile}"
    );
    assert!(!s.vmi_dir("default", "hostile").serial_log().exists());

    // The VM whose Secrets exist only in another namespace is still waiting for them.
    let cross = sync_message(&s, "default", "crossvm");
    assert!(
        cross.contains(r#"secret "ci-other" not found"#),
        "{cross}\n{}",
        s.kubectl(&["get", "vmi", "crossvm", "-o", "yaml"])
    );
    assert!(!s.vmi_dir("default", "crossvm").serial_log().exists());
}

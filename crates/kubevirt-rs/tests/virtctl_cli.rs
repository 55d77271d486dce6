//! virtctl against the real `kubevirt-rs server`, run as a user runs it: through a link named
//! `virtctl` to the multi-call binary (so the argv[0] dispatch is what is tested), with the
//! server's kubeconfig in `KUBECONFIG`, next to unmodified kubectl.
//!
//! User stories: `virtctl create vm | kubectl apply -f -` is accepted; `virtctl version` shows
//! both sides; KubeVirt's refusals reach the user with KubeVirt's words; `virtctl console`
//! from a pipe shows the guest booting and runs a command in it; `virtctl vnc --proxy-only`
//! gives a local port that speaks RFB. (VM lifecycle through start/stop/pause is proven by
//! the virt-api e2e tests.)

use kubevirt_testsupport::{have_kubectl, wait_for, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A directory with `virtctl` -> the kubevirt-rs binary.
fn virtctl_link(dir: &Path) -> PathBuf {
    let link = dir.join("virtctl");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kubevirt-rs"), &link).expect("symlink");
    link
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(s: &Server, virtctl: &Path, args: &[&str]) -> Out {
    let out = s
        .command(virtctl)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run virtctl");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `virtctl ARGS | kubectl apply -f -`.
fn create_and_apply(s: &Server, virtctl: &Path, args: &[&str]) -> String {
    let out = run(s, virtctl, args);
    assert_eq!(out.code, 0, "virtctl {args:?}: {}", out.stderr);
    let mut kubectl = Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .env("KUBECONFIG", s.kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    kubectl
        .stdin
        .take()
        .expect("stdin")
        .write_all(out.stdout.as_bytes())
        .expect("write manifest");
    let res = kubectl.wait_with_output().expect("kubectl apply");
    String::from_utf8_lossy(&res.stdout).into_owned() + &String::from_utf8_lossy(&res.stderr)
}

#[test]
fn virtctl_commands_reach_the_server_and_report_its_refusals() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dir.path().join("no-images");
    std::fs::create_dir_all(&images).expect("images dir");
    let mut s = Server::new(
        env!("CARGO_BIN_EXE_kubevirt-rs"),
        dir.path().join("data"),
        &images,
    );
    s.start();
    let virtctl = virtctl_link(dir.path());

    // version: the client line, and the server's answer to subresources.kubevirt.io/v1/version.
    let v = run(&s, &virtctl, &["version"]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    let lines: Vec<&str> = v.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", v.stdout);
    assert!(
        lines[0].starts_with("Client Version: version.Info{GitVersion:\"v"),
        "{}",
        v.stdout
    );
    assert!(
        lines[1].starts_with("Server Version: version.Info{GitVersion:\"v1."),
        "{}",
        v.stdout
    );
    assert!(lines[1].contains("kubevirt-rs"), "{}", v.stdout);
    // The same through `kubevirt-rs virtctl`.
    let again = run(
        &s,
        Path::new(env!("CARGO_BIN_EXE_kubevirt-rs")),
        &["virtctl", "version"],
    );
    assert_eq!(again.stdout, v.stdout, "{}", again.stderr);

    // create vm | kubectl apply -f -
    let applied = create_and_apply(
        &s,
        &virtctl,
        &[
            "create",
            "vm",
            "--name",
            "cli-vm",
            "--volume-containerdisk",
            "src:example.org/not-here:latest",
            "--user",
            "cloud-user",
            "--ssh-key",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey me@host",
        ],
    );
    assert!(
        applied.contains("virtualmachine.kubevirt.io/cli-vm created"),
        "{applied}"
    );
    assert_eq!(
        s.jsonpath("vm", "cli-vm", "{.spec.template.spec.volumes[1].name}"),
        "cloudinitdisk"
    );

    // KubeVirt's refusals of a manual start on runStrategy Always, with KubeVirt's words: while
    // its VMI is active, "VM is already running"; once the VMI failed (its image does not
    // exist), the runStrategy's own refusal.
    let already = "Error starting VirtualMachine Operation cannot be fulfilled on virtualmachine.kubevirt.io \"cli-vm\": VM is already running";
    let refused = "Error starting VirtualMachine Operation cannot be fulfilled on virtualmachine.kubevirt.io \"cli-vm\": Always does not support manual start requests";
    let mut answers = Vec::new();
    let got_refusal = wait_for(Duration::from_secs(90), || {
        let start = run(&s, &virtctl, &["start", "cli-vm"]);
        assert_eq!(start.code, 1, "{}{}", start.stdout, start.stderr);
        let msg = start.stderr.trim().to_string();
        assert!(msg == already || msg == refused, "{msg}");
        answers.push(msg.clone());
        msg == refused
    });
    assert!(got_refusal, "{answers:?}");

    // Missing objects: the API's NotFound message, a non-zero exit.
    let stop = run(&s, &virtctl, &["stop", "nope"]);
    assert_eq!(stop.code, 1);
    assert!(
        stop.stderr.starts_with("error stopping VirtualMachine ")
            && stop.stderr.contains("\"nope\" not found"),
        "{}",
        stop.stderr
    );
    let pause = run(&s, &virtctl, &["pause", "vm", "nope"]);
    assert_eq!(pause.code, 1);
    assert!(
        pause
            .stderr
            .starts_with("Error getting VirtualMachine nope: ")
            && pause.stderr.contains("not found"),
        "{}",
        pause.stderr
    );
    let t0 = Instant::now();
    let console = run(&s, &virtctl, &["console", "nope", "--timeout", "1"]);
    assert_eq!(console.code, 1);
    assert!(
        console.stderr.contains("Can't connect to websocket (404)"),
        "{}",
        console.stderr
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "a missing VMI is not waited for"
    );
    let vnc = run(&s, &virtctl, &["vnc", "--proxy-only", "nope"]);
    assert_eq!(vnc.code, 1);
    assert!(
        vnc.stderr.starts_with("Can't access VMI nope: "),
        "{}",
        vnc.stderr
    );
    // migrate: a VM whose VMI is not running is refused with KubeVirt's conflict; a malformed
    // node selector is a usage error; a missing migration cannot be cancelled.
    let m = run(&s, &virtctl, &["migrate", "cli-vm"]);
    assert_eq!(m.code, 1);
    assert!(
        m.stderr.starts_with("Error migrating VirtualMachine ")
            && (m.stderr.contains("VM is not running")
                || m.stderr
                    .contains("virtualmachineinstance.kubevirt.io \"cli-vm\" not found")),
        "{}",
        m.stderr
    );
    let bad = run(
        &s,
        &virtctl,
        &["migrate", "cli-vm", "--addedNodeSelector=zone"],
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("zone must be formatted as key=value"),
        "{}",
        bad.stderr
    );
    // A hostile name stays one label selector (it cannot add `&watch=true` to the query).
    let hostile = run(&s, &virtctl, &["migrate-cancel", "x&watch=true"]);
    assert_eq!(hostile.code, 1);
    assert!(
        hostile
            .stderr
            .starts_with("Error fetching virtual machine instance migration list ")
            && hostile
                .stderr
                .contains("invalid label selector \"kubevirt.io/vmi-name==x&watch=true\""),
        "{}",
        hostile.stderr
    );

    // -n is honoured: the VM exists in `default` only.
    let other_ns = run(&s, &virtctl, &["-n", "kube-public", "start", "cli-vm"]);
    assert_eq!(other_ns.code, 1);
    assert!(other_ns.stderr.contains("not found"), "{}", other_ns.stderr);
}

/// Collects a child's stdout on a thread.
fn collect(child: &mut Child) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().expect("stdout");
    let sink = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().expect("lock").extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().expect("lock")).into_owned()
}

#[test]
fn console_from_a_pipe_and_vnc_proxy_reach_the_demo_guest() {
    if !have_kubectl() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);
    let virtctl = virtctl_link(dir.path());

    // The VM from `virtctl create vm`, booted for real.
    // base64 of: #!/bin/sh \n echo "hello from cloud-init on $(hostname)"
    let user_data = "IyEvYmluL3NoCmVjaG8gImhlbGxvIGZyb20gY2xvdWQtaW5pdCBvbiAkKGhvc3RuYW1lKSIK";
    let applied = create_and_apply(
        &s,
        &virtctl,
        &[
            "create",
            "vm",
            "--name",
            "demo",
            "--memory",
            "256Mi",
            "--termination-grace-period",
            "0",
            "--volume-containerdisk",
            "src:kubevirt-rs/demo-guest:latest,name:rootdisk",
            "--cloud-init-user-data",
            user_data,
        ],
    );
    assert!(
        applied.contains("virtualmachine.kubevirt.io/demo created"),
        "{applied}"
    );
    assert!(
        wait_for(Duration::from_secs(60), || !s
            .kubectl(&["get", "vmi", "-o", "name"])
            .trim()
            .is_empty()),
        "no VMI: {}",
        s.kubectl(&["get", "vm", "demo", "-o", "yaml"])
    );

    // The console is opened while the VMI may still be starting: virtctl waits for it.
    let mut console = s
        .command(&virtctl)
        .args(["console", "demo", "--timeout", "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("virtctl console");
    let out = collect(&mut console);
    let booted = wait_for(Duration::from_secs(240), || {
        text(&out).contains("hello from cloud-init on demo")
    });
    if !booted {
        let _ = console.kill();
        let mut err = String::new();
        if let Some(mut e) = console.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        panic!(
            "the console never showed the cloud-init line.\nconsole: {}\nstderr: {err}\nvmi: {}",
            text(&out),
            s.kubectl(&["get", "vmi", "demo", "-o", "yaml"])
        );
    }
    let mut stdin = console.stdin.take().expect("stdin");
    let answered = wait_for(Duration::from_secs(60), || {
        let _ = stdin.write_all(b"echo virtctl-says-$((6*7))\n");
        std::thread::sleep(Duration::from_secs(2));
        text(&out).contains("virtctl-says-42")
    });
    assert!(answered, "the guest shell did not answer: {}", text(&out));
    // End of stdin: virtctl exits once the console is quiet.
    drop(stdin);
    assert!(
        wait_for(Duration::from_secs(30), || matches!(
            console.try_wait(),
            Ok(Some(_))
        )),
        "virtctl console did not exit after stdin ended"
    );
    let status = console.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    if let Some(mut e) = console.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        err.contains("Successfully connected to demo console. The escape sequence is ^]"),
        "{err}"
    );

    // Interactive, on a terminal (a pty from script(1)): raw mode, Ctrl+] leaves, and the
    // terminal is back in cooked mode afterwards (stty runs on the same pty after virtctl).
    if kubevirt_testsupport::have("script", &["--version"], "apt-get install util-linux") {
        let cmd = format!("{} console demo; stty -a", virtctl.display());
        let mut tty = s
            .command("script")
            .args(["-qfec", &cmd, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("script");
        let out = collect(&mut tty);
        let mut keys = tty.stdin.take().expect("stdin");
        assert!(
            wait_for(Duration::from_secs(30), || text(&out)
                .contains("The escape sequence is ^]")),
            "{}",
            text(&out)
        );
        let answered = wait_for(Duration::from_secs(60), || {
            let _ = keys.write_all(b"echo pty-$((2*21))\r");
            std::thread::sleep(Duration::from_secs(2));
            text(&out).contains("pty-42")
        });
        assert!(answered, "no answer through the pty: {}", text(&out));
        keys.write_all(&[0x1d]).expect("Ctrl+]");
        assert!(
            wait_for(Duration::from_secs(20), || matches!(
                tty.try_wait(),
                Ok(Some(_))
            )),
            "Ctrl+] did not leave the console: {}",
            text(&out)
        );
        let after = text(&out);
        let stty = after.rsplit("pty-42").next().unwrap_or("");
        assert!(
            stty.contains(" icanon") && stty.contains(" echo ") && !stty.contains("-icanon"),
            "the terminal was not restored: {stty}"
        );
        drop(keys);
    }

    // vnc --proxy-only: {"port":N} on stdout, and the port speaks RFB.
    let mut vnc = s
        .command(&virtctl)
        .args(["vnc", "--proxy-only", "demo"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("virtctl vnc");
    let mut line = String::new();
    BufReader::new(vnc.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("port line");
    let port: serde_json::Value = serde_json::from_str(line.trim()).expect("{\"port\":N}");
    let port = port["port"].as_u64().expect("port") as u16;
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut hello = [0u8; 12];
    tcp.read_exact(&mut hello).expect("RFB greeting");
    assert_eq!(&hello, b"RFB 003.008\n");
    // A second client gets its own stream.
    let mut tcp2 = std::net::TcpStream::connect(("127.0.0.1", port)).expect("second client");
    tcp2.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut hello2 = [0u8; 12];
    let second = tcp2.read_exact(&mut hello2).map(|_| hello2);
    let _ = vnc.kill();
    let _ = vnc.wait();
    drop(tcp);
    assert_eq!(
        second.ok().as_ref().map(|h| &h[..]),
        Some(&b"RFB 003.008\n"[..]),
        "a second VNC client gets the greeting too"
    );

    // migrate: virt-api creates KubeVirt's VirtualMachineInstanceMigration for the running
    // VMI, labelled with its name; migrate-cancel deletes the migration that has not finished.
    let dry = run(&s, &virtctl, &["migrate", "demo", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(
        dry.stdout,
        "Dry Run execution\nVM demo was scheduled to migrate\n"
    );
    assert_eq!(s.kubectl(&["get", "vmim", "-o", "name"]).trim(), "");
    let m = run(
        &s,
        &virtctl,
        &["migrate", "demo", "--addedNodeSelector=zone=a,tier=gold"],
    );
    assert_eq!(m.code, 0, "{}", m.stderr);
    assert_eq!(m.stdout, "VM demo was scheduled to migrate\n");
    let name = s.kubectl(&[
        "get",
        "vmim",
        "-l",
        "kubevirt.io/vmi-name=demo",
        "-o",
        "name",
    ]);
    assert!(
        name.trim()
            .starts_with("virtualmachineinstancemigration.kubevirt.io/kubevirt-migrate-vm-"),
        "{name}"
    );
    let vmim = name
        .trim()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        s.jsonpath(
            "vmim",
            &vmim,
            "{.spec.vmiName} {.spec.addedNodeSelector.tier}"
        ),
        "demo gold"
    );
    let cancel = run(&s, &virtctl, &["migrate-cancel", "demo"]);
    assert_eq!(cancel.code, 0, "{}", cancel.stderr);
    assert_eq!(cancel.stdout, "VM demo was scheduled to migrate-cancel\n");
    assert!(
        wait_for(Duration::from_secs(30), || s
            .kubectl(&["get", "vmim", "-o", "name"])
            .trim()
            .is_empty()),
        "the cancelled migration is still there"
    );
    let none = run(&s, &virtctl, &["migrate-cancel", "demo"]);
    assert_eq!(none.code, 1);
    assert_eq!(none.stderr.trim(), "Found no migration to cancel for demo");
}

/// Needs the CDI DataVolume controller, PVC provisioner and upload proxy in `kubevirt-rs
/// server` (crates/cdi-controller); no QEMU.
#[test]
fn image_upload_fills_a_datavolume_and_a_pvc() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dir.path().join("no-images");
    std::fs::create_dir_all(&images).expect("images dir");
    let mut s = Server::new(
        env!("CARGO_BIN_EXE_kubevirt-rs"),
        dir.path().join("data"),
        &images,
    );
    s.start();
    let virtctl = virtctl_link(dir.path());
    // A raw image with recognisable content, larger than one upload chunk.
    let image = dir.path().join("disk.raw");
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&image, &data).expect("image");
    let image = image.to_str().expect("utf8");

    let dv = run(
        &s,
        &virtctl,
        &[
            "image-upload",
            "dv",
            "up-dv",
            "--size=8Mi",
            "--image-path",
            image,
        ],
    );
    assert_eq!(dv.code, 0, "{}{}", dv.stdout, dv.stderr);
    assert!(
        dv.stdout.contains("DataVolume default/up-dv created"),
        "{}",
        dv.stdout
    );
    assert!(
        dv.stdout
            .contains(&format!("Uploading {image} completed successfully")),
        "{}",
        dv.stdout
    );
    assert_eq!(s.jsonpath("dv", "up-dv", "{.status.phase}"), "Succeeded");
    let pv_dir = s.kubectl(&[
        "get",
        "pv",
        "-o",
        "jsonpath={.items[?(@.spec.claimRef.name==\"up-dv\")].spec.local.path}",
    ]);
    let stored =
        std::fs::read(Path::new(pv_dir.trim()).join("disk.img")).expect("the volume's disk.img");
    assert_eq!(
        &stored[..data.len()],
        &data[..],
        "the volume holds the uploaded bytes"
    );

    let pvc = run(
        &s,
        &virtctl,
        &[
            "image-upload",
            "pvc",
            "up-pvc",
            "--size=8Mi",
            "--image-path",
            image,
            "--async",
        ],
    );
    assert_eq!(pvc.code, 0, "{}{}", pvc.stdout, pvc.stderr);
    assert!(
        pvc.stdout
            .contains("PersistentVolumeClaim default/up-pvc created"),
        "{}",
        pvc.stdout
    );

    // KubeVirt's refusals.
    let again = run(
        &s,
        &virtctl,
        &[
            "image-upload",
            "dv",
            "up-dv",
            "--size=8Mi",
            "--image-path",
            image,
        ],
    );
    assert_eq!(again.code, 1);
    assert_eq!(
        again.stderr.trim(),
        "PVC up-dv already successfully imported/cloned/updated"
    );
    let missing = run(
        &s,
        &virtctl,
        &[
            "image-upload",
            "dv",
            "nope",
            "--no-create",
            "--image-path",
            image,
        ],
    );
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("\"nope\" not found"),
        "{}",
        missing.stderr
    );
    let no_size = run(
        &s,
        &virtctl,
        &["image-upload", "dv", "new", "--image-path", image],
    );
    assert_eq!(no_size.code, 1);
    assert!(
        no_size.stderr.contains("the size must be specified"),
        "{}",
        no_size.stderr
    );
    let no_file = run(
        &s,
        &virtctl,
        &[
            "image-upload",
            "dv",
            "new",
            "--size=1Mi",
            "--image-path",
            "/nonexistent.img",
        ],
    );
    assert_eq!(no_file.code, 1);
    assert!(
        no_file
            .stderr
            .starts_with("failed to open image file /nonexistent.img"),
        "{}",
        no_file.stderr
    );
}

/// The QEMU guest agent in the demo guest: once it answers, the VMI is `AgentConnected`, its
/// `guestOSInfo` is the guest's os-release, its interface carries the guest's name for it,
/// and `virtctl guestosinfo|userlist|fslist` show what the guest reports (a filesystem the
/// guest mounted included). Without ACPI, `virtctl soft-reboot` reboots the guest through its
/// agent. A VMI that is gone gives virtctl's error.
#[test]
fn guest_agent_reports_through_the_vmi_status_and_virtctl() {
    if !have_kubectl() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);
    let virtctl = virtctl_link(dir.path());
    let manifest = dir.path().join("ga.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: ga
spec:
  terminationGracePeriodSeconds: 0
  domain:
    features:
      acpi: {enabled: false}
    devices:
      disks:
      - name: rootdisk
        disk: {bus: virtio}
      - name: scratch
        disk: {bus: virtio}
      - name: cloudinit
        disk: {bus: virtio}
      interfaces:
      - name: default
        masquerade: {}
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
  - name: scratch
    emptyDisk:
      capacity: 16Mi
  - name: cloudinit
    cloudInitNoCloud:
      userData: |
        #!/bin/sh
        mkdosfs /dev/vdb && mkdir -p /data && mount -t vfat /dev/vdb /data
",
    )
    .expect("write manifest");
    let out = s.kubectl(&["apply", "-f", manifest.to_str().expect("utf8")]);
    assert!(out.contains("created"), "{out}");

    let mut seen = String::new();
    let connected = wait_for(Duration::from_secs(240), || {
        seen = s.jsonpath(
            "vmi",
            "ga",
            "{.status.phase} {.status.conditions[?(@.type=='AgentConnected')].status}",
        );
        seen == "Running True"
    });
    assert!(
        connected,
        "ga never had its agent connected: {seen}\n{}\nserial.log:\n{}",
        s.kubectl(&["get", "vmi", "ga", "-o", "yaml"]),
        std::fs::read_to_string(s.vmi_dir("default", "ga").serial_log()).unwrap_or_default()
    );
    assert_eq!(
        s.jsonpath("vmi", "ga", "{.status.guestOSInfo.id}"),
        "kubevirt-rs-demo"
    );
    assert_eq!(
        s.jsonpath("vmi", "ga", "{.status.guestOSInfo.machine}"),
        "x86_64"
    );
    assert_eq!(
        s.jsonpath(
            "vmi",
            "ga",
            "{.status.interfaces[0].interfaceName} {.status.interfaces[0].infoSource}"
        ),
        "eth0 domain, guest-agent"
    );

    let info = run(&s, &virtctl, &["guestosinfo", "ga"]);
    assert_eq!(info.code, 0, "{}", info.stderr);
    let info: serde_json::Value = serde_json::from_str(&info.stdout).expect("JSON");
    assert_eq!(info["hostname"], "ga", "{info:#}");
    assert_eq!(info["os"]["id"], "kubevirt-rs-demo");
    assert!(
        info["supportedCommands"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "guest-ping")),
        "{info:#}"
    );
    // cloud-init mounts the scratch disk after boot: wait for the agent to see it.
    let mut fs = serde_json::Value::Null;
    assert!(
        wait_for(Duration::from_secs(60), || {
            let out = run(&s, &virtctl, &["fslist", "ga"]);
            fs = serde_json::from_str(&out.stdout).unwrap_or_default();
            fs["items"]
                .as_array()
                .is_some_and(|i| i.iter().any(|f| f["mountPoint"] == "/data"))
        }),
        "no /data in fslist: {fs:#}"
    );
    let data = fs["items"]
        .as_array()
        .and_then(|i| i.iter().find(|f| f["mountPoint"] == "/data"))
        .cloned()
        .unwrap_or_default();
    assert!(
        data["totalBytes"].as_u64().is_some_and(|b| b > 8 << 20),
        "{data:#}"
    );
    let users = run(&s, &virtctl, &["userlist", "ga"]);
    assert_eq!(users.code, 0, "{}", users.stderr);
    let users: serde_json::Value = serde_json::from_str(&users.stdout).expect("JSON");
    assert!(users["items"].is_array(), "{users:#}");

    // Without ACPI, a soft reboot goes through the guest agent: the guest reboots (its boot
    // banner twice in the serial log) and its agent answers again.
    let rebooted = run(&s, &virtctl, &["soft-reboot", "ga"]);
    assert_eq!(rebooted.code, 0, "{}", rebooted.stderr);
    let serial = s.vmi_dir("default", "ga").serial_log();
    let mut log = String::new();
    assert!(
        wait_for(Duration::from_secs(120), || {
            log = std::fs::read_to_string(&serial).unwrap_or_default();
            log.matches("kubevirt-rs demo guest: booted").count() >= 2
        }),
        "no second boot after the soft reboot:\n{log}"
    );
    assert!(log.contains("demo guest: reboot requested"), "{log}");
    assert!(
        wait_for(Duration::from_secs(120), || run(
            &s,
            &virtctl,
            &["guestosinfo", "ga"]
        )
        .stdout
        .contains("kubevirt-rs-demo")),
        "the agent did not answer after the reboot"
    );
    assert_eq!(s.jsonpath("vmi", "ga", "{.status.phase}"), "Running");

    // Once the VMI is gone there is nothing to ask, and virtctl says what failed.
    s.kubectl(&["delete", "vmi", "ga", "--wait=true", "--timeout=60s"]);
    let gone = run(&s, &virtctl, &["guestosinfo", "ga"]);
    assert_ne!(gone.code, 0);
    assert!(
        gone.stderr.contains("error getting guestosinfo"),
        "{}",
        gone.stderr
    );
    s.kill9();
}

/// `curl` against an export link: (HTTP status, body). `extra` are curl's own flags.
fn curl(ca: &Path, url: &str, extra: &[&str]) -> (u16, Vec<u8>) {
    let body = tempfile::NamedTempFile::new().expect("body file");
    let out = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(ca)
        .arg("-o")
        .arg(body.path())
        .args(["-w", "%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (code, std::fs::read(body.path()).unwrap_or_default())
}

/// `qemu-img compare` of two raw images (byte equality where qemu-img is missing).
fn assert_same_image(a: &Path, b: &Path) {
    if kubevirt_testsupport::have("qemu-img", &["--version"], "apt-get install qemu-utils") {
        let out = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(a)
            .arg(b)
            .output()
            .expect("qemu-img compare");
        assert!(
            out.status.success(),
            "qemu-img compare {} {}: {}{}",
            a.display(),
            b.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        assert!(std::fs::read(a).expect("a") == std::fs::read(b).expect("b"));
    }
}

/// KubeVirt's VirtualMachineExport through `virtctl vmexport`, against the real server: a
/// DataVolume (filled by image-upload) downloads byte-identical as raw and as gzip; the links
/// answer only the export's token (not the API's), refuse `..`, other namespaces and unknown
/// volumes with 404 and a reason, serve byte ranges; a VM source gives its manifests; a
/// snapshot source waits with a reason; an export whose TTL passed is deleted and its links
/// answer 404. Needs CDI in `kubevirt-rs server`, curl; no QEMU.
#[test]
fn vmexport_downloads_a_volume_byte_identical_with_its_token_only() {
    if !have_kubectl()
        || !kubevirt_testsupport::have("curl", &["--version"], "apt-get install curl")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dir.path().join("no-images");
    std::fs::create_dir_all(&images).expect("images dir");
    let mut s = Server::new(
        env!("CARGO_BIN_EXE_kubevirt-rs"),
        dir.path().join("data"),
        &images,
    );
    s.start();
    let virtctl = virtctl_link(dir.path());
    let data: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, &data).expect("image");
    let up = run(
        &s,
        &virtctl,
        &[
            "image-upload",
            "dv",
            "src",
            "--size=4Mi",
            "--image-path",
            image.to_str().expect("utf8"),
        ],
    );
    assert_eq!(up.code, 0, "{}{}", up.stdout, up.stderr);
    let pv_dir = s.kubectl(&[
        "get",
        "pv",
        "-o",
        "jsonpath={.items[?(@.spec.claimRef.name==\"src\")].spec.local.path}",
    ]);
    let volume = Path::new(pv_dir.trim()).join("disk.img");
    // Started now, so that it has expired by the end of the test.
    let ttl = run(
        &s,
        &virtctl,
        &["vmexport", "create", "expttl", "--pvc=src", "--ttl=20s"],
    );
    assert_eq!(ttl.code, 0, "{}{}", ttl.stdout, ttl.stderr);

    // Download with a source: the export is created, waited for, downloaded from and
    // deleted; `--format=raw` gunzips the gzip link on the fly, as KubeVirt's virtctl does.
    let raw = dir.path().join("src.raw");
    let dl = run(
        &s,
        &virtctl,
        &[
            "vmexport",
            "download",
            "exp1",
            "--pvc=src",
            "--format=raw",
            "--output",
            raw.to_str().expect("utf8"),
        ],
    );
    assert_eq!(dl.code, 0, "{}{}", dl.stdout, dl.stderr);
    for line in [
        "VirtualMachineExport 'default/exp1' created successfully",
        "Download finished successfully",
        "VirtualMachineExport 'default/exp1' deleted successfully",
    ] {
        assert!(dl.stdout.contains(line), "{line}: {}", dl.stdout);
    }
    assert_same_image(&raw, &volume);
    assert!(
        s.kubectl(&["get", "vmexport", "exp1"]).contains("NotFound"),
        "the export made for the download is deleted after it"
    );

    // The export with a TTL is Ready too: its link and token, for after it expired.
    assert!(
        wait_for(Duration::from_secs(10), || s.jsonpath(
            "vmexport",
            "expttl",
            "{.status.phase}"
        ) == "Ready"),
        "{}",
        s.kubectl(&["get", "vmexport", "expttl", "-o", "yaml"])
    );
    let ttl_url = s.jsonpath(
        "vmexport",
        "expttl",
        "{.status.links.external.volumes[0].formats[0].url}",
    );
    let ttl_token = s.kubectl(&[
        "get",
        "secret",
        "secret-expttl",
        "-o",
        "go-template={{.data.token|base64decode}}",
    ]);
    assert!(
        ttl_url.starts_with("https://"),
        "expttl has links: {ttl_url}"
    );

    // An export made beforehand: its gzip link, kept afterwards.
    let c = run(&s, &virtctl, &["vmexport", "create", "exp2", "--pvc=src"]);
    assert_eq!(c.code, 0, "{}{}", c.stdout, c.stderr);
    let gz = dir.path().join("src.img.gz");
    let dl = run(
        &s,
        &virtctl,
        &[
            "vmexport",
            "download",
            "exp2",
            "--output",
            gz.to_str().expect("utf8"),
        ],
    );
    assert_eq!(dl.code, 0, "{}{}", dl.stdout, dl.stderr);
    assert!(!dl.stdout.contains("deleted"), "{}", dl.stdout);
    let gunzipped = dir.path().join("src.gunzipped");
    let unz = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -dc '{}' > '{}'",
            gz.display(),
            gunzipped.display()
        ))
        .status()
        .expect("gzip");
    assert!(unz.success(), "the gzip link is a whole gzip stream");
    assert_same_image(&gunzipped, &volume);
    assert_eq!(s.jsonpath("vmexport", "exp2", "{.status.phase}"), "Ready");
    assert_eq!(
        s.jsonpath("vmexport", "exp2", "{.status.tokenSecretRef}"),
        "secret-exp2"
    );

    // The links themselves: the CA in the status verifies the server; only the export's
    // token opens them.
    let ca = dir.path().join("export-ca.pem");
    std::fs::write(
        &ca,
        s.jsonpath("vmexport", "exp2", "{.status.links.external.cert}"),
    )
    .expect("ca");
    let url = s.jsonpath(
        "vmexport",
        "exp2",
        "{.status.links.external.volumes[0].formats[?(@.format==\"raw\")].url}",
    );
    assert!(
        url.ends_with("/api/export.kubevirt.io/v1/namespaces/default/virtualmachineexports/exp2/volumes/src/disk.img"),
        "{url}"
    );
    let token = s.kubectl(&[
        "get",
        "secret",
        "secret-exp2",
        "-o",
        "go-template={{.data.token|base64decode}}",
    ]);
    assert_eq!(token.len(), 20, "{token}");
    let header = format!("x-kubevirt-export-token: {token}");
    let api_token = s.kubectl(&[
        "config",
        "view",
        "--raw",
        "-o",
        "jsonpath={.users[0].user.token}",
    ]);
    for (why, extra) in [
        ("no token", vec![]),
        (
            "a wrong token",
            vec!["-H", "x-kubevirt-export-token: AAAAAAAAAAAAAAAAAAAA"],
        ),
        ("a token prefix", vec!["-H", &header[..header.len() - 1]]),
    ] {
        let (code, body) = curl(&ca, &url, &extra);
        assert_eq!(code, 401, "{why}");
        assert!(
            String::from_utf8_lossy(&body).contains("a valid export token is required"),
            "{why}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let bearer = format!("Authorization: Bearer {}", api_token.trim());
    assert_eq!(
        curl(&ca, &url, &["-H", &bearer]).0,
        401,
        "the API token opens no export"
    );
    let (code, body) = curl(
        &ca,
        &format!("{url}?x-kubevirt-export-token={token}"),
        &["-H", "Range: bytes=1000-1009"],
    );
    assert_eq!(code, 206, "the token as a query parameter, a byte range");
    assert_eq!(body, data[1000..1010]);
    let refused = |u: &str, want: &str| {
        let (code, body) = curl(&ca, u, &["--path-as-is", "-H", &header]);
        let text = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(code, 404, "{u}: {text}");
        assert!(text.contains(want), "{u}: {text}");
    };
    refused(
        &url.replace(
            "/exp2/volumes/src/",
            "/exp2/volumes/../../exp1/volumes/src/",
        ),
        "no \".\" or \"..\" segments",
    );
    refused(
        &url.replace("/namespaces/default/", "/namespaces/kube-system/"),
        "VirtualMachineExport kube-system/exp2 not found",
    );
    refused(
        &url.replace("/volumes/src/", "/volumes/other/"),
        "has no volume \"other\"",
    );

    // A VirtualMachine source (stopped): its manifests, importing from the export.
    let vm = dir.path().join("vm.yaml");
    std::fs::write(
        &vm,
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: vmx\nspec:\n  runStrategy: Halted\n  template:\n    spec:\n      domain:\n        devices:\n          disks:\n          - name: root\n            disk: {bus: virtio}\n        resources:\n          requests: {memory: 64Mi}\n      volumes:\n      - name: root\n        dataVolume: {name: src}\n",
    )
    .expect("vm");
    let applied = s.kubectl(&["apply", "-f", vm.to_str().expect("utf8")]);
    assert!(applied.contains("created"), "{applied}");
    let m = run(
        &s,
        &virtctl,
        &[
            "vmexport",
            "download",
            "expvm",
            "--vm=vmx",
            "--manifest",
            "--include-secret",
        ],
    );
    assert_eq!(m.code, 0, "{}{}", m.stdout, m.stderr);
    for want in [
        "kind: VirtualMachine",
        "kind: DataVolume",
        "kind: ConfigMap",
        "name: export-ca-cm-expvm",
        "/virtualmachineexports/expvm/volumes/src/disk.img.gz",
        "header-secret-expvm",
        "x-kubevirt-export-token:",
    ] {
        assert!(m.stdout.contains(want), "{want}: {}", m.stdout);
    }

    // A snapshot source is not exported (yet): Pending, with the reason.
    let snap = run(
        &s,
        &virtctl,
        &["vmexport", "create", "expsnap", "--snapshot=snap1"],
    );
    assert_eq!(snap.code, 0, "{}{}", snap.stdout, snap.stderr);
    assert!(
        wait_for(Duration::from_secs(10), || s
            .jsonpath("vmexport", "expsnap", "{.status.conditions[0].message}")
            .contains("does not export VirtualMachineSnapshot sources yet")),
        "{}",
        s.kubectl(&["get", "vmexport", "expsnap", "-o", "yaml"])
    );
    assert_eq!(
        s.jsonpath("vmexport", "expsnap", "{.status.phase}"),
        "Pending"
    );

    // TTL: the export goes away with its links.
    assert!(
        wait_for(Duration::from_secs(30), || s
            .kubectl(&["get", "vmexport", "expttl"])
            .contains("NotFound")),
        "an export is deleted once its TTL has passed"
    );
    let h = format!("x-kubevirt-export-token: {ttl_token}");
    let (code, body) = curl(&ca, &ttl_url, &["-H", &h]);
    assert_eq!(code, 404, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("VirtualMachineExport default/expttl not found")
    );
}

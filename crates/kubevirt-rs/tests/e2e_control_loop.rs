//! The main job, end to end, with real parts: `kubevirt-rs server` (API server, controller,
//! handler), unmodified kubectl as the user, real QEMU (TCG here) booting the demo guest.
//!
//! User story: apply a VirtualMachine → it runs, with the guest's IP in its status and its
//! cloud-init output on the console → the server is killed with SIGKILL and restarted → the VM
//! is still running, same QEMU process → deleting the VM stops the guest and removes its VMI.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn guest() -> Option<PathBuf> {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
        return None;
    }
    if Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_err()
    {
        eprintln!("SKIP: kubectl is not installed");
        return None;
    }
    // Shared with the launcher's e2e tests (same workspace target dir), built once under a lock.
    let out = std::env::var_os("KUBEVIRT_RS_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guest"));
    std::fs::create_dir_all(&out).ok()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/build.sh");
    let status = Command::new("flock")
        .arg(out.join(".build.lock"))
        .arg(&script)
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => Some(out),
        other => {
            eprintln!("SKIP: guest/build.sh {} failed: {other:?}", out.display());
            None
        }
    }
}

struct Server {
    data: PathBuf,
    images: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn start(&mut self) {
        let _ = std::fs::remove_file(self.data.join("kubeconfig"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_kubevirt-rs"))
            .arg("server")
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen", "127.0.0.1:0", "--node-name", "node01"])
            .arg("--image-store")
            .arg(&self.images)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubevirt-rs server");
        // The server prints its address once it serves.
        let stderr = child.stderr.take().expect("stderr");
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        reader.read_line(&mut line).expect("server banner");
        assert!(line.contains("API on"), "server did not start: {line}");
        std::thread::spawn(move || for _ in reader.lines().map_while(Result::ok) {});
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", self.data.join("kubeconfig"))
            .output()
            .expect("kubectl");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        // Launchers outlive the server by design; stop what this test started.
        let vms = self.data.join("vms");
        for pid in std::fs::read_dir(&vms)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|ns| std::fs::read_dir(ns.path()).into_iter().flatten().flatten())
            .filter_map(|d| std::fs::read_to_string(d.path().join("launcher.pid")).ok())
        {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    false
}

fn qemu_pid(data: &Path) -> Option<u32> {
    let s = std::fs::read_to_string(data.join("vms/default/demo/state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&s).ok()?;
    v["qemuPid"].as_u64().map(|p| p as u32)
}

#[test]
fn apply_a_vm_it_runs_survives_a_server_crash_and_delete_stops_it() {
    let Some(guest) = guest() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server {
        data: dir.path().join("data"),
        images: guest.join("oci"),
        child: None,
    };
    s.start();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/vm-demo.yaml");
    let out = s.kubectl(&["apply", "-f", manifest.to_str().expect("utf8")]);
    assert!(
        out.contains("virtualmachine.kubevirt.io/demo created"),
        "{out}"
    );

    let running = wait_for(Duration::from_secs(180), || {
        s.kubectl(&[
            "get",
            "vmi",
            "demo",
            "-o",
            "jsonpath={.status.phase} {.status.interfaces[0].ipAddress}",
        ]) == "Running 10.0.2.2"
    });
    assert!(
        running,
        "VMI never ran with its IP: {}",
        s.kubectl(&["get", "vmi", "demo", "-o", "yaml"])
    );
    assert!(wait_for(Duration::from_secs(30), || s
        .kubectl(&["get", "vm", "demo"])
        .contains("Running")));
    let serial = s.data.join("vms/default/demo/serial.log");
    assert!(
        wait_for(Duration::from_secs(60), || std::fs::read_to_string(&serial)
            .is_ok_and(|l| l.contains("hello from cloud-init on demo"))),
        "cloud-init output never reached the console"
    );
    let emulation = s.kubectl(&[
        "get",
        "vmi",
        "demo",
        "-o",
        "jsonpath={.status.conditions[?(@.type=='SoftwareEmulation')].status}",
    ]);
    assert_eq!(
        emulation, "True",
        "TCG is reported as KubeVirt's SoftwareEmulation condition"
    );
    let pid = qemu_pid(&s.data).expect("QEMU pid");

    // A crash of the whole server does not touch the VM, and the restarted server adopts it.
    s.kill9();
    s.start();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        s.kubectl(&["get", "vmi", "demo", "-o", "jsonpath={.status.phase}"]),
        "Running",
        "after the restart"
    );
    assert_eq!(qemu_pid(&s.data), Some(pid), "the same QEMU process");
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU kept running"
    );

    s.kubectl(&["delete", "vm", "demo", "--wait=false"]);
    assert!(
        wait_for(Duration::from_secs(90), || s
            .kubectl(&["get", "vmi", "-o", "name"])
            .trim()
            .is_empty()),
        "the VMI was not removed: {}",
        s.kubectl(&["get", "vmi", "-o", "yaml"])
    );
    assert!(
        wait_for(Duration::from_secs(30), || !Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()),
        "QEMU still runs after the VM was deleted"
    );
}

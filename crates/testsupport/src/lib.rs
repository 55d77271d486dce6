//! Helpers for the end-to-end tests of several crates: building the demo guest once per target
//! dir, running `kubevirt-rs server` as a child process, and driving it with unmodified
//! `kubectl`. Test-only; not part of the product.

use kubevirt_launcher::api::VmiDir;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when `cmd args` runs; otherwise prints a loud SKIP line naming what is missing.
pub fn have(cmd: &str, args: &[&str], install_hint: &str) -> bool {
    if Command::new(cmd).args(args).output().is_ok() {
        return true;
    }
    eprintln!("SKIP: {cmd} is not installed ({install_hint})");
    false
}

/// True when QEMU can be run (loud SKIP otherwise).
pub fn have_qemu() -> bool {
    have(
        "qemu-system-x86_64",
        &["--version"],
        "apt-get install qemu-system-x86",
    )
}

/// True when kubectl can be run (loud SKIP otherwise).
pub fn have_kubectl() -> bool {
    have("kubectl", &["version", "--client"], "see scripts/deps.sh")
}

/// Where the demo guest (`guest/build.sh`) is kept: `$KUBEVIRT_RS_GUEST_DIR`, else
/// `target_tmpdir/guest`. `scripts/test.sh` builds it there too, while the tests compile.
pub fn guest_dir(target_tmpdir: &str) -> PathBuf {
    std::env::var_os("KUBEVIRT_RS_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(target_tmpdir).join("guest"))
}

/// Where the arm64 demo guest (`guest/build.sh --arch arm64`) is kept: [`guest_dir`] with
/// `-arm64` appended (`target_tmpdir/guest-arm64`). `scripts/test.sh` builds it there too.
pub fn guest_dir_arm64(target_tmpdir: &str) -> PathBuf {
    let mut dir = guest_dir(target_tmpdir).into_os_string();
    dir.push("-arm64");
    PathBuf::from(dir)
}

/// Builds the demo guest into [`guest_dir`], or finds it up to date, under a file lock
/// (`.build.lock` in it): test processes running at the same time (nextest runs one per test)
/// build it once, and none reads it half written. Needs the build's tools, not QEMU (the CDI
/// tests import its disks). `Err` names the failure.
pub fn build_guest(target_tmpdir: &str) -> Result<PathBuf, String> {
    run_build(&guest_dir(target_tmpdir), &[])
}

/// Where the s390x demo guest (`guest/build.sh --arch s390x`) is kept: [`guest_dir`] with
/// `-s390x` appended (`target_tmpdir/guest-s390x`). `scripts/test.sh` builds it there too.
pub fn guest_dir_s390x(target_tmpdir: &str) -> PathBuf {
    let mut dir = guest_dir(target_tmpdir).into_os_string();
    dir.push("-s390x");
    PathBuf::from(dir)
}

/// [`build_guest`] for the s390x demo guest, into [`guest_dir_s390x`].
pub fn build_guest_s390x(target_tmpdir: &str) -> Result<PathBuf, String> {
    run_build(&guest_dir_s390x(target_tmpdir), &["--arch", "s390x"])
}

/// [`build_guest`] for the arm64 demo guest, into [`guest_dir_arm64`].
pub fn build_guest_arm64(target_tmpdir: &str) -> Result<PathBuf, String> {
    run_build(&guest_dir_arm64(target_tmpdir), &["--arch", "arm64"])
}

fn run_build(out: &Path, args: &[&str]) -> Result<PathBuf, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/build.sh");
    match Command::new("flock")
        .arg(out.join(".build.lock"))
        .arg(&script)
        .args(args)
        .arg(out)
        .status()
    {
        Ok(s) if s.success() => Ok(out.to_path_buf()),
        Ok(s) => Err(format!(
            "guest/build.sh {} {} failed: {s}",
            args.join(" "),
            out.display()
        )),
        Err(e) => Err(format!("flock guest/build.sh {}: {e}", out.display())),
    }
}

/// The demo guest ([`build_guest`]) for tests that boot it. `None` (after a loud SKIP line)
/// when QEMU is missing or the build fails.
///
/// Call with `env!("CARGO_TARGET_TMPDIR")`.
pub fn guest(target_tmpdir: &str) -> Option<PathBuf> {
    if !have_qemu() {
        return None;
    }
    build_guest(target_tmpdir)
        .map_err(|e| eprintln!("SKIP: {e}"))
        .ok()
}

/// The arm64 demo guest ([`build_guest_arm64`]) for tests that boot it. `None` (after a loud
/// SKIP line) when `qemu-system-aarch64` is missing or the build fails (e.g. no arm64 apt
/// lists: `scripts/deps.sh` adds them).
///
/// Call with `env!("CARGO_TARGET_TMPDIR")`.
pub fn guest_arm64(target_tmpdir: &str) -> Option<PathBuf> {
    if !have(
        "qemu-system-aarch64",
        &["--version"],
        "apt-get install qemu-system-arm",
    ) {
        return None;
    }
    build_guest_arm64(target_tmpdir)
        .map_err(|e| eprintln!("\n!!!!! SKIPPED: the arm64 demo guest: {e} !!!!!\n"))
        .ok()
}

/// The s390x demo guest ([`build_guest_s390x`]) for tests that boot it. `None` (after a loud
/// SKIPPED line) when `qemu-system-s390x` or its s390-ccw firmware is missing, or the build
/// fails (e.g. no s390x apt lists: `scripts/deps.sh` adds them).
///
/// Call with `env!("CARGO_TARGET_TMPDIR")`.
pub fn guest_s390x(target_tmpdir: &str) -> Option<PathBuf> {
    let skip = |why: String| eprintln!("\n!!!!! SKIPPED: the s390x guest: {why} !!!!!\n");
    let emulator = Command::new("qemu-system-s390x")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !emulator.is_ok_and(|s| s.success()) {
        skip("qemu-system-s390x is not installed (apt-get install qemu-system-misc)".into());
        return None;
    }
    build_guest_s390x(target_tmpdir).map_err(skip).ok()
}

/// One OCI image layout at `dir` holding the images of several demo guests' `oci/` layouts
/// (e.g. amd64's ref `latest` and arm64's ref `arm64`), for a server that runs both: a merged
/// `index.json` and `blobs/sha256/` entries linking to the guests' blobs. Panics on I/O
/// errors (test helper).
pub fn merged_image_store(dir: &Path, guests: &[&Path]) -> PathBuf {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).expect("create the merged store");
    let mut manifests = Vec::new();
    for g in guests {
        let oci = g.join("oci");
        let index = oci.join("index.json");
        let text = std::fs::read(&index).unwrap_or_else(|e| panic!("{}: {e}", index.display()));
        let index: serde_json::Value =
            serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", index.display()));
        manifests.extend(index["manifests"].as_array().cloned().unwrap_or_default());
        for e in std::fs::read_dir(oci.join("blobs").join("sha256")).expect("read blobs") {
            let e = e.expect("blob entry");
            let link = blobs.join(e.file_name());
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(e.path(), &link).expect("link a blob");
            }
        }
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("write index.json");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");
    dir.to_path_buf()
}

/// Polls `f` every 250 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `kubevirt-rs server` as a child process, with its own data dir. Dropping it kills the
/// server and every launcher it started (launchers outlive the server by design).
pub struct Server {
    pub bin: PathBuf,
    pub data: PathBuf,
    pub images: PathBuf,
    pub extra_args: Vec<String>,
    /// The API's `--listen` address (default `127.0.0.1:0`, any free loopback port); a node
    /// in another network namespace needs an address it can reach.
    pub listen: String,
    child: Option<Child>,
}

impl Server {
    /// A server (not yet started) keeping its state in `data`, resolving containerDisks from
    /// the OCI layout `images`. `bin` is `env!("CARGO_BIN_EXE_kubevirt-rs")`.
    pub fn new(
        bin: impl Into<PathBuf>,
        data: impl Into<PathBuf>,
        images: impl Into<PathBuf>,
    ) -> Self {
        Server {
            bin: bin.into(),
            data: data.into(),
            images: images.into(),
            extra_args: Vec::new(),
            listen: "127.0.0.1:0".into(),
            child: None,
        }
    }

    /// A started server keeping its state in `dir/data` and resolving containerDisks from the
    /// demo guest's OCI layout (`guest/oci`): what most end-to-end tests begin with.
    pub fn started_with_guest(bin: impl Into<PathBuf>, dir: &Path, guest: &Path) -> Self {
        let mut s = Server::new(bin, dir.join("data"), guest.join("oci"));
        s.start();
        s
    }

    /// Starts it and waits until it serves (its first stderr line names the address).
    pub fn start(&mut self) {
        let _ = std::fs::remove_file(self.kubeconfig());
        // QEMU runs as an unprivileged user that must pass through the data directory's
        // parent; a test's tempdir is 0700 (a real data directory sits in /var/lib).
        if let Some(parent) = self.data.parent() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711));
        }
        let mut child = Command::new(&self.bin)
            .arg("server")
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen", &self.listen, "--node-name", "node01"])
            .arg("--image-store")
            .arg(&self.images)
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubevirt-rs server");
        let stderr = child.stderr.take().expect("stderr");
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        reader.read_line(&mut line).expect("server banner");
        assert!(line.contains("API on"), "server did not start: {line}");
        // Keep draining (and echo, so a failing test shows the server's log).
        std::thread::spawn(move || {
            for l in reader.lines().map_while(Result::ok) {
                eprintln!("[server] {l}");
            }
        });
        self.child = Some(child);
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data.join("kubeconfig")
    }

    /// Runs kubectl against this server; stdout followed by stderr.
    pub fn kubectl(&self, args: &[&str]) -> String {
        run_output(
            Command::new("kubectl")
                .args(args)
                .env("KUBECONFIG", self.kubeconfig()),
        )
    }

    /// Sets VirtualMachine `vm`'s `spec.runStrategy` (a merge patch, as `virtctl start/stop`
    /// would leave it) and panics with kubectl's answer unless it was patched.
    pub fn set_run_strategy(&self, vm: &str, strategy: &str) {
        let patch = serde_json::json!({"spec": {"runStrategy": strategy}}).to_string();
        let out = self.kubectl(&["patch", "vm", vm, "--type=merge", "-p", &patch]);
        assert!(
            out.contains("patched"),
            "runStrategy {strategy} on vm {vm}: {out}"
        );
    }

    /// `kubectl get KIND NAME -o jsonpath=PATH`.
    pub fn jsonpath(&self, kind: &str, name: &str, path: &str) -> String {
        self.kubectl(&["get", kind, name, "-o", &format!("jsonpath={path}")])
    }

    /// A command run with this server's kubeconfig in the environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("KUBECONFIG", self.kubeconfig());
        c
    }

    /// Runs our `virtctl` (the multi-call binary through a link named `virtctl`, made beside
    /// the data directory on first use) against this server; stdout followed by stderr.
    pub fn virtctl(&self, args: &[&str]) -> String {
        let link = self.data.parent().unwrap_or(&self.data).join("virtctl");
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(&self.bin, &link).expect("link virtctl");
        }
        run_output(self.command(&link).args(args))
    }

    /// The directory the handler keeps a VMI's launcher files in (`serial_log()`,
    /// `launcher_log()`, ...). Panics on a name Kubernetes would refuse.
    pub fn vmi_dir(&self, namespace: &str, name: &str) -> VmiDir {
        VmiDir::new(&self.data, namespace, name)
            .unwrap_or_else(|e| panic!("VMI directory of {namespace}/{name}: {e}"))
    }

    /// The QEMU pid the VMI's launcher reports, if it has one.
    pub fn qemu_pid(&self, namespace: &str, name: &str) -> Option<u32> {
        self.vmi_dir(namespace, name).read_state().ok()?.qemu_pid
    }

    /// The launcher's pid for a VMI, if it has one.
    pub fn launcher_pid(&self, namespace: &str, name: &str) -> Option<u32> {
        self.vmi_dir(namespace, name).launcher_pid()
    }

    /// Types `command` on the serial console of VMI `default/vmi` (`launcher console`) until
    /// its output contains `want` on a line that is not the command's echo (or, with `absent`,
    /// no longer contains it); panics after 120 s. Returns the last output. The command may
    /// run more than once: make it idempotent, and make `want` differ from its text (e.g.
    /// `echo ok-$((6*7))` prints `ok-42`).
    pub fn on_console(&self, vmi: &str, command: &str, want: &str, absent: bool) -> String {
        use std::io::Write;
        let dir = self.vmi_dir("default", vmi);
        let mut last = String::new();
        let found = wait_for(Duration::from_secs(120), || {
            let mut console = Command::new(&self.bin)
                .args(["launcher", "console", "--timeout", "4", "--dir"])
                .arg(dir.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("launcher console");
            if let Some(mut stdin) = console.stdin.take() {
                std::thread::sleep(Duration::from_millis(300));
                let _ = stdin.write_all(format!("\n{command}\n").as_bytes());
            }
            let out = console.wait_with_output().expect("console output");
            last = String::from_utf8_lossy(&out.stdout).replace('\r', "");
            // The echo of the command itself is on a line starting with the prompt.
            let hit = last
                .lines()
                .filter(|l| !l.contains(command))
                .any(|l| l.contains(want));
            hit != absent
        });
        assert!(
            found,
            "{vmi}: `{command}` {} {want:?}; last:\n{last}",
            if absent {
                "still printed"
            } else {
                "never printed"
            }
        );
        last
    }
}

/// stdout followed by stderr of a command (empty if it could not run).
pub fn run_output(cmd: &mut Command) -> String {
    match cmd.output() {
        Ok(out) => {
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)
        }
        Err(e) => format!("could not run {cmd:?}: {e}"),
    }
}

/// True while a process exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends SIGTERM to every launcher with a VMI directory under the data directory `data` (what
/// a test leaves behind when it ends while VMs run).
pub fn stop_launchers(data: &Path) {
    for pid in VmiDir::all(data).iter().filter_map(VmiDir::launcher_pid) {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        stop_launchers(&self.data);
    }
}

/// A real registry (Debian's `docker-registry`) serving on a free loopback port, with its
/// storage in a temporary directory; killed on drop.
pub struct DockerRegistry {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    _dir: TempDir,
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const REGISTRY: &str = "/usr/bin/docker-registry";

/// Starts a registry and waits until `GET /v2/` answers 200. `None`, after a loud SKIP line,
/// when the package is not installed.
pub fn docker_registry() -> Option<DockerRegistry> {
    if !Path::new(REGISTRY).exists() {
        eprintln!(
            "\n!!!!! SKIPPED: {REGISTRY} is missing (apt-get install docker-registry); \
             the registry import tests did not run !!!!!\n"
        );
        return None;
    }
    let dir = TempDir::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = dir.0.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.0.join("data").display()
        ),
    )
    .expect("write the registry config");
    let child = Command::new(REGISTRY)
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start docker-registry");
    let reg = DockerRegistry {
        child,
        addr,
        _dir: dir,
    };
    let ready = wait_for(Duration::from_secs(10), || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&reg.addr) else {
            return false;
        };
        let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
    });
    assert!(ready, "docker-registry did not come up on {}", reg.addr);
    Some(reg)
}

/// A directory removed on drop (this crate has no dependencies to spare).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("kubevirt-rs-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create a temporary directory");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

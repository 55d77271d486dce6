//! Several nodes on one machine (issue 14), end to end with unmodified kubectl and real QEMU
//! (TCG): `kubevirt-rs server` (node01) and a `kubevirt-rs node` process (node02) joining it
//! with the server's kubeconfig and its own data directory, as KubeVirt's virt-handler
//! DaemonSet puts one handler on each node.
//!
//! - node02 registers its Node: Ready, `kubevirt.io/schedulable=true`, a heartbeat;
//! - a VMI selecting `kubernetes.io/hostname: node02` runs there: `status.nodeName`, its
//!   launcher directory under node02's data directory (none under the server's), Running;
//!   virt-api unpauses and pauses it through node02's handler endpoint (mutual TLS), and the
//!   migration test reads the console of its guest while it runs on node02 the same way;
//! - `kubectl cordon node02`: a new VMI selecting node02 waits in Scheduling with
//!   `PodScheduled=False`, reason `Unschedulable`, and kube-scheduler's message;
//! - node02's process killed (SIGKILL): after the heartbeat timeout virt-controller marks it
//!   `kubevirt.io/schedulable=false`, Ready `Unknown`; the VM it ran keeps running (its
//!   launcher outlives the handler); a restarted node process adopts it and takes the waiting
//!   VMI once uncordoned;
//! - each running VMI has a launcher Pod record on its node (`kubectl get pods -o wide`);
//!   `kubectl drain node01` evicts the launcher Pod of a VM whose evictionStrategy is None: the
//!   Pod goes, the VMI stops, and the VM's new VMI runs on node02; the eviction of a launcher
//!   Pod of a VMI with evictionStrategy External or LiveMigrate is refused with 429 and
//!   KubeVirt's message, marking the VMI `status.evacuationNodeName` (and, once it can
//!   migrate, creating its VirtualMachineInstanceMigration); evictions that name another Pod,
//!   another namespace or no Pod are refused, and a Pod only dressed as a launcher is evicted
//!   as any Pod;
//! - node names that are not DNS-1123 subdomains are refused by the CLI.
//!
//! VMIs start paused (`startStrategy: Paused`): QEMU is set up but no guest boots, which is all
//! placement needs.

use kubevirt_launcher::api::VmiDir;
use kubevirt_testsupport::{have_kubectl, run_output, wait_for, Server};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_kubevirt-rs");
const START: Duration = Duration::from_secs(180);
/// The heartbeat timeout the server runs with here (KubeVirt: 300 s), and the heartbeat
/// interval of both handlers (KubeVirt: 60 s).
const HEARTBEAT_TIMEOUT: &str = "15";
const HEARTBEAT_INTERVAL: &str = "2";

/// A `kubevirt-rs node` process; dropping it kills it and the launchers it started.
struct NodeProcess {
    child: Option<Child>,
    data: PathBuf,
}

impl NodeProcess {
    /// A node in the network namespace of `net`, with its address there (`--node-address`):
    /// what it sends to another node crosses `net`'s veth pair.
    fn start_in(
        net: &NodeNetwork,
        server: &Server,
        name: &str,
        data: &Path,
        images: &Path,
    ) -> NodeProcess {
        let address = net.node_ip.to_string();
        Self::spawn(
            server,
            name,
            data,
            images,
            &["--node-address", &address],
            net,
            None,
        )
    }

    /// [`NodeProcess::start_in`], also in a mount namespace of its own where the server's data
    /// directory path is `data`: the node runs with the server's `--data-dir`, as every node
    /// of a cluster has the same one, yet what it keeps there (a local-path volume's copy at
    /// the same `local.path`) is its own, as on another machine. `data` is where the test
    /// finds it.
    fn start_private(
        net: &NodeNetwork,
        server: &Server,
        name: &str,
        data: &Path,
        images: &Path,
    ) -> NodeProcess {
        let address = net.node_ip.to_string();
        std::fs::create_dir_all(data).expect("node data directory");
        Self::spawn(
            server,
            name,
            data,
            images,
            &["--node-address", &address],
            net,
            Some(&server.data),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        server: &Server,
        name: &str,
        data: &Path,
        images: &Path,
        extra: &[&str],
        net: &NodeNetwork,
        private_at: Option<&Path>,
    ) -> NodeProcess {
        let mut cmd = Command::new(BIN);
        net.enter_on_exec(&mut cmd);
        // The server's kubeconfig is in its data directory, which a private node does not see.
        let kubeconfig = data.with_extension("kubeconfig");
        std::fs::copy(server.kubeconfig(), &kubeconfig).expect("copying the kubeconfig");
        let data_arg = match private_at {
            Some(at) => {
                bind_on_exec(&mut cmd, data, at);
                at.to_path_buf()
            }
            None => data.to_path_buf(),
        };
        let mut child = cmd
            .arg("node")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--node-name", name])
            .arg("--data-dir")
            .arg(&data_arg)
            .arg("--image-store")
            .arg(images)
            // Two pod networks on one machine would share a bridge; user networking suffices.
            .args(["--pod-network", "user"])
            .args(["--heartbeat-interval", HEARTBEAT_INTERVAL])
            .args(extra)
            .env("KUBEVIRT_RS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubevirt-rs node");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let label = name.to_string();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if l.contains("handler running") {
                    let _ = tx.send(());
                }
                eprintln!("[{label}] {l}");
            }
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(60)).is_ok(),
            "kubevirt-rs node {name} did not start"
        );
        NodeProcess {
            child: Some(child),
            data: data.to_path_buf(),
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn vmi_dir(&self, name: &str) -> VmiDir {
        VmiDir::new(&self.data, "default", name).expect("VMI directory")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
        kubevirt_testsupport::stop_launchers(&self.data);
    }
}

/// Runs `cmd` in a mount namespace of its own where directory `src` is mounted over `dst`
/// (nothing propagates back to the machine's namespace).
fn bind_on_exec(cmd: &mut Command, src: &Path, dst: &Path) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let cstr = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).expect("no NUL");
    let (src, dst, root, none) = (
        cstr(src),
        cstr(dst),
        cstr(Path::new("/")),
        cstr(Path::new("none")),
    );
    // SAFETY: unshare(2) and mount(2) are async-signal-safe; the strings live in the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                none.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                private,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A network namespace of its own for a node, joined to the machine's by a veth pair on a
/// private /30: the host end (`host_ip`, where node01 and the API server listen) and the
/// node's end (`node_ip`, its `--node-address`). The name is unique per test run; dropping it
/// deletes the pair and the namespace, and a new one first removes what runs that were
/// killed left behind.
struct NodeNetwork {
    ns: String,
    host_if: String,
    host_ip: std::net::Ipv4Addr,
    node_ip: std::net::Ipv4Addr,
}

const NETNS_PREFIX: &str = "kvnode-";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NodeNetwork {
    /// `None` (the test is skipped, saying so) when this is not root: making namespaces needs
    /// it. As root, failing to make one fails the test.
    fn new() -> Option<NodeNetwork> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: network namespaces for the nodes need root");
            return None;
        }
        Self::remove_stale();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ns = format!("{NETNS_PREFIX}{pid}-{n}");
        // Interface names have at most 15 bytes: "kvh" + pid (at most 7 digits) + "x" + n.
        let host_if = format!("kvh{pid}x{n}");
        let node_if = format!("kvn{pid}x{n}");
        // A /30 of 10.253.0.0/16 no interface of this machine is in yet.
        let used = run_output(Command::new("ip").args(["-o", "-4", "addr", "show"]));
        let base = (0..16384u32)
            .map(|i| (pid.wrapping_mul(8).wrapping_add(n).wrapping_add(i)) % 16384)
            .map(|i| u32::from(std::net::Ipv4Addr::new(10, 253, 0, 0)) + i * 4)
            .find(|b| {
                (1..=2).all(|k| {
                    let a = std::net::Ipv4Addr::from(b + k).to_string();
                    !used.contains(&format!(" {a}/"))
                })
            })
            .expect("a free /30 in 10.253.0.0/16");
        let net = NodeNetwork {
            ns: ns.clone(),
            host_if: host_if.clone(),
            host_ip: std::net::Ipv4Addr::from(base + 1),
            node_ip: std::net::Ipv4Addr::from(base + 2),
        };
        let host_cidr = format!("{}/30", net.host_ip);
        let node_cidr = format!("{}/30", net.node_ip);
        let made = ip(&["netns", "add", &ns])
            .and_then(|()| {
                ip(&[
                    "link", "add", &host_if, "type", "veth", "peer", "name", &node_if, "netns", &ns,
                ])
            })
            .and_then(|()| ip(&["addr", "add", &host_cidr, "dev", &host_if]))
            .and_then(|()| ip(&["link", "set", &host_if, "up"]))
            .and_then(|()| ip(&["-n", &ns, "addr", "add", &node_cidr, "dev", &node_if]))
            .and_then(|()| ip(&["-n", &ns, "link", "set", &node_if, "up"]))
            .and_then(|()| ip(&["-n", &ns, "link", "set", "lo", "up"]));
        if let Err(e) = made {
            drop(net);
            panic!("making the node's network namespace: {e}");
        }
        Some(net)
    }

    /// Namespaces (and their host ends) of test runs whose process is gone.
    fn remove_stale() {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((pid, n)) = name
                .strip_prefix(NETNS_PREFIX)
                .and_then(|r| r.split_once('-'))
                .and_then(|(p, n)| Some((p.parse::<u32>().ok()?, n.to_string())))
            else {
                continue;
            };
            if !kubevirt_testsupport::alive(pid) {
                let _ = ip(&["link", "del", &format!("kvh{pid}x{n}")]);
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }

    /// Makes `cmd` run in this namespace (its network only: files and processes stay the
    /// machine's, as a node's agent sees its host).
    fn enter_on_exec(&self, cmd: &mut Command) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        // Close-on-exec: the child has it only until it runs the node binary; the command
        // owns it until then.
        let file = std::fs::File::open(format!("/run/netns/{}", self.ns)).expect("open netns");
        // SAFETY: setns(2) is async-signal-safe; the descriptor is open while `cmd` lives.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// The API server's `--listen` on the host's end, reachable from the node's namespace
    /// (and from the machine itself, also while the link is down).
    fn listen(&self) -> String {
        format!("{}:0", self.host_ip)
    }

    /// Cuts the link between the namespaces (the host's end down): nothing passes either way
    /// and no connection is told so, as when a cable is pulled.
    fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]).expect("cutting the link");
    }

    fn restore(&self) {
        ip(&["link", "set", &self.host_if, "up"]).expect("restoring the link");
    }
}

impl Drop for NodeNetwork {
    fn drop(&mut self) {
        // Deleting one end deletes the pair.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// The server (node01) on the host's end of `net`: its API and node01's migrations listen
/// there, where node02 in its namespace reaches them.
fn on_host_end(server: &mut Server, net: &NodeNetwork) {
    server.listen = net.listen();
    server
        .extra_args
        .extend(["--node-address".to_string(), net.host_ip.to_string()]);
}

fn vmi_manifest(name: &str, node: &str) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
spec:
  startStrategy: Paused
  nodeSelector:
    kubernetes.io/hostname: {node}
  domain:
    devices:
      disks:
      - name: rootdisk
        disk: {{bus: virtio}}
    resources:
      requests:
        memory: 64Mi
  terminationGracePeriodSeconds: 0
  volumes:
  - name: rootdisk
    containerDisk:
      image: kubevirt-rs/demo-guest:latest
"#
    )
}

fn apply(server: &Server, name: &str, manifest: &str) {
    let file = server.data.join(format!("{name}.yaml"));
    std::fs::write(&file, manifest).expect("write manifest");
    let out = server.kubectl(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(out.contains("created"), "{out}");
}

fn node_label(server: &Server, node: &str) -> String {
    server.jsonpath("node", node, "{.metadata.labels.kubevirt\\.io/schedulable}")
}

fn node_ready(server: &Server, node: &str) -> String {
    server.jsonpath(
        "node",
        node,
        "{.status.conditions[?(@.type=='Ready')].status}",
    )
}

fn vmi(server: &Server, name: &str, path: &str) -> String {
    server.jsonpath("vmi", name, path)
}

fn unschedulable_message(server: &Server, name: &str) -> String {
    vmi(
        server,
        name,
        "{.status.phase}/{.status.conditions[?(@.type=='PodScheduled')].reason}/{.status.conditions[?(@.type=='PodScheduled')].message}",
    )
}

#[test]
fn a_second_node_joins_runs_its_vmis_and_is_fenced_when_it_goes_silent() {
    if !have_kubectl() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let Some(net) = NodeNetwork::new() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::new(BIN, dir.path().join("data"), guest.join("oci"));
    server.extra_args = vec![
        "--heartbeat-interval".into(),
        HEARTBEAT_INTERVAL.into(),
        "--node-heartbeat-timeout".into(),
        HEARTBEAT_TIMEOUT.into(),
    ];
    on_host_end(&mut server, &net);
    server.start();
    let node02_data = dir.path().join("node02");
    let mut node02 =
        NodeProcess::start_in(&net, &server, "node02", &node02_data, &guest.join("oci"));

    // node02 registers itself as KubeVirt's handler keeps a Node.
    let joined = wait_for(Duration::from_secs(60), || {
        node_ready(&server, "node02") == "True" && node_label(&server, "node02") == "true"
    });
    assert!(
        joined,
        "node02 did not become Ready and schedulable: {}",
        server.kubectl(&["get", "node", "node02", "-o", "yaml"])
    );
    let nodes = server.kubectl(&["get", "nodes", "-o", "name"]);
    assert!(
        nodes.contains("node/node01") && nodes.contains("node/node02"),
        "{nodes}"
    );
    assert!(
        !server
            .jsonpath(
                "node",
                "node02",
                "{.metadata.annotations.kubevirt\\.io/heartbeat}"
            )
            .is_empty(),
        "node02 has no heartbeat"
    );

    // A VMI selecting node02 runs there, from node02's data directory.
    apply(&server, "on-node02", &vmi_manifest("on-node02", "node02"));
    let running = wait_for(START, || {
        vmi(&server, "on-node02", "{.status.phase}") == "Running"
    });
    assert!(
        running,
        "on-node02 did not run: {}",
        server.kubectl(&["get", "vmi", "on-node02", "-o", "yaml"])
    );
    assert_eq!(vmi(&server, "on-node02", "{.status.nodeName}"), "node02");
    assert_eq!(
        vmi(
            &server,
            "on-node02",
            "{.metadata.labels.kubevirt\\.io/nodeName}"
        ),
        "node02"
    );
    let launcher = node02
        .vmi_dir("on-node02")
        .launcher_pid()
        .expect("a launcher in node02's data directory");
    assert!(kubevirt_testsupport::alive(launcher));
    assert!(
        !server.vmi_dir("default", "on-node02").path().exists(),
        "node01's data directory has a directory for a VMI of node02"
    );

    // virt-api (in the server) reaches node02's launcher through node02's handler endpoint
    // (mutual TLS, published on its Node): unpause, and pause again.
    let paused = || {
        vmi(
            &server,
            "on-node02",
            "{.status.conditions[?(@.type=='Paused')].status}",
        )
    };
    assert_eq!(paused(), "True");
    for (verb, want) in [("unpause", ""), ("pause", "True")] {
        let out = server.virtctl(&[verb, "vmi", "on-node02"]);
        assert!(
            out.contains(&format!("was scheduled to {verb}")),
            "{verb}: {out}"
        );
        assert!(
            wait_for(Duration::from_secs(30), || paused() == want),
            "{verb}: Paused is {:?}",
            paused()
        );
    }

    // node02's own `/metrics` (HTTPS, bearer token) carries its VMI's series.
    node02_metrics(&server);
    // And its logs, read by node02's agent for virt-api (`virtctl logs`).
    node02_logs(&server);

    // Cordoned: a new VMI selecting node02 waits, saying why.
    let out = server.kubectl(&["cordon", "node02"]);
    assert!(out.contains("cordoned"), "{out}");
    apply(&server, "waits", &vmi_manifest("waits", "node02"));
    let expected = "Scheduling/Unschedulable/0/2 nodes are available: \
         1 node(s) didn't match Pod's node affinity/selector, 1 node(s) were unschedulable.";
    let waiting = wait_for(Duration::from_secs(30), || {
        unschedulable_message(&server, "waits") == expected
    });
    assert!(
        waiting,
        "waits: {} (wanted {expected})",
        unschedulable_message(&server, "waits")
    );
    assert_eq!(vmi(&server, "waits", "{.status.nodeName}"), "");
    let events = server.kubectl(&[
        "get",
        "events",
        "-o",
        "jsonpath={range .items[*]}{.involvedObject.name}:{.reason}:{.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains("waits:FailedScheduling:0/2 nodes are available"),
        "{events}"
    );

    // node02's handler dies: virt-controller fences the node after the heartbeat timeout.
    node02.kill9();
    let fenced = wait_for(Duration::from_secs(90), || {
        node_label(&server, "node02") == "false"
    });
    assert!(
        fenced,
        "node02 was not marked unschedulable: {}",
        server.kubectl(&["get", "node", "node02", "-o", "yaml"])
    );
    assert!(wait_for(Duration::from_secs(10), || {
        node_ready(&server, "node02") == "Unknown"
    }));
    // Its VM is not touched: the launcher outlives the handler, the VMI keeps its phase.
    assert!(kubevirt_testsupport::alive(launcher));
    assert_eq!(vmi(&server, "on-node02", "{.status.phase}"), "Running");
    // Uncordoned but silent: still nowhere to go.
    let out = server.kubectl(&["uncordon", "node02"]);
    assert!(out.contains("uncordoned"), "{out}");
    let still = wait_for(Duration::from_secs(30), || {
        let m = unschedulable_message(&server, "waits");
        m.starts_with("Scheduling/Unschedulable/0/2 nodes are available:")
            && !m.contains("were unschedulable")
    });
    assert!(still, "waits: {}", unschedulable_message(&server, "waits"));

    // node02 comes back: it adopts its running launcher and takes the waiting VMI.
    let node02 = NodeProcess::start_in(&net, &server, "node02", &node02_data, &guest.join("oci"));
    let taken = wait_for(START, || {
        vmi(&server, "waits", "{.status.phase}") == "Running"
    });
    assert!(
        taken,
        "waits did not run on the returning node02: {}",
        server.kubectl(&["get", "vmi", "waits", "-o", "yaml"])
    );
    assert_eq!(vmi(&server, "waits", "{.status.nodeName}"), "node02");
    assert_eq!(node_label(&server, "node02"), "true");
    assert_eq!(
        node02.vmi_dir("on-node02").launcher_pid(),
        Some(launcher),
        "the restarted node did not adopt the running launcher"
    );
    assert_eq!(vmi(&server, "on-node02", "{.status.phase}"), "Running");

    // Deleting a VMI of node02 goes through node02's handler.
    let out = server.kubectl(&[
        "delete",
        "vmi",
        "on-node02",
        "--wait=true",
        "--timeout=120s",
    ]);
    assert!(out.contains("deleted"), "{out}");
    assert!(wait_for(Duration::from_secs(30), || {
        !kubevirt_testsupport::alive(launcher)
    }));

    drain_and_evictions(&server);
}

/// `virtctl logs`: on-node02's launcher log (its state lines) through virt-api and node02's
/// endpoint, the last lines only with `--tail`; a container that is not one of the three is
/// refused by virtctl and, sent raw, by the server.
fn node02_logs(server: &Server) {
    let all = server.virtctl(&["logs", "on-node02"]);
    assert!(all.contains("state: "), "{all}");
    let last = server.virtctl(&[
        "logs",
        "on-node02",
        "--container",
        "launcher",
        "--tail",
        "1",
    ]);
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(all.ends_with(&last), "{last:?} is not the end of {all:?}");
    let qemu = server.virtctl(&["logs", "on-node02", "-c", "qemu"]);
    assert!(!qemu.contains("error"), "{qemu}");
    let bad = server.virtctl(&["logs", "on-node02", "--container", "../state.json"]);
    assert!(bad.contains("invalid value"), "{bad}");
    let raw = server.kubectl(&[
        "get",
        "--raw",
        "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/on-node02/logs?container=..%2Fstate.json",
    ]);
    assert!(
        raw.contains("is not one of launcher, qemu, serial"),
        "{raw}"
    );
}

/// `curl` of node02's `/metrics` at the endpoint its Node publishes, trusting the cluster CA
/// only: (HTTP status, body).
fn scrape_node02(server: &Server, token: Option<&str>) -> (String, String) {
    let endpoint = server.jsonpath(
        "node",
        "node02",
        r"{.metadata.annotations.kubevirt-rs\.io/handler-metrics-endpoint}",
    );
    assert!(
        endpoint.parse::<std::net::SocketAddr>().is_ok(),
        "node02 publishes no metrics endpoint: {endpoint:?}"
    );
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(server.data.join("kubevirt-ca.crt"))
    .arg(format!("https://{endpoint}/metrics"));
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = run_output(&mut cmd);
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", &out));
    (code.to_string(), body.to_string())
}

/// node02's `/metrics`: 401 without a token, 403 with a token whose user may not `get`
/// `/metrics`, and with one bound to `system:monitoring` its VMI's per-VMI series (labelled
/// with node02) and its handler's readiness, nothing of the control plane.
fn node02_metrics(server: &Server) {
    let (code, body) = scrape_node02(server, None);
    assert_eq!(code, "401", "{body}");
    for sa in ["scraper", "nobody"] {
        let out = server.kubectl(&["create", "serviceaccount", sa]);
        assert!(out.contains("created"), "{out}");
    }
    let out = server.kubectl(&[
        "create",
        "clusterrolebinding",
        "scraper-monitoring",
        "--clusterrole=system:monitoring",
        "--serviceaccount=default:scraper",
    ]);
    assert!(out.contains("created"), "{out}");
    let token = |sa: &str| server.kubectl(&["create", "token", sa]).trim().to_string();
    let (code, body) = scrape_node02(server, Some(&token("nobody")));
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("user=system:serviceaccount:default:nobody"),
        "{body}"
    );
    let (code, body) = scrape_node02(server, Some("not-a-token"));
    assert_eq!(code, "401", "{body}");
    let scraper = token("scraper");
    let vmi = r#"namespace="default",name="on-node02""#;
    let mut last = String::new();
    let complete = wait_for(Duration::from_secs(30), || {
        let (code, body) = scrape_node02(server, Some(&scraper));
        last = format!("{code}\n{body}");
        code == "200"
            && body.lines().any(|l| {
                l.starts_with("kubevirt_vmi_vcpu_seconds_total{node=\"node02\",") && l.contains(vmi)
            })
            && body.lines().any(|l| {
                l.starts_with("kubevirt_vmi_memory_domain_bytes{node=\"node02\",")
                    && l.contains(vmi)
                    && l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok())
                        == Some(67108864.0)
            })
    });
    assert!(
        complete,
        "node02's /metrics lacks on-node02's series:\n{last}"
    );
    assert!(
        last.lines()
            .any(|l| l == "kubevirt_virt_handler_ready_status 1"),
        "{last}"
    );
    assert!(
        !last.contains("kubevirt_virt_controller_ready_status"),
        "{last}"
    );
}

fn vm_manifest(name: &str, strategy: &str) -> String {
    let vmi = vmi_manifest(name, "any");
    let spec: String = vmi
        .split_once("spec:\n")
        .map(|(_, s)| s)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains("nodeSelector") && !l.contains("kubernetes.io/hostname"))
        .map(|l| format!("    {l}\n"))
        .collect();
    format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: {name}\nspec:\n  \
         runStrategy: Always\n  template:\n    spec:\n      evictionStrategy: {strategy}\n{spec}"
    )
}

/// The launcher Pod of a VMI: `name node` of the Pod its `status.activePods` records.
fn launcher_pod(server: &Server, vmi: &str) -> Option<(String, String)> {
    let uid = server.jsonpath("vmi", vmi, "{.metadata.uid}");
    if uid.is_empty() || uid.contains("NotFound") {
        return None;
    }
    let out = server.kubectl(&[
        "get",
        "pods",
        "-l",
        &format!("kubevirt.io/created-by={uid}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.uid} {.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
    ]);
    let active = server.jsonpath("vmi", vmi, "{.status.activePods}");
    out.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (uid, name, node) = (f.next()?, f.next()?, f.next()?);
        active
            .contains(uid)
            .then(|| (name.to_string(), node.to_string()))
    })
}

/// POSTs a policy/v1 Eviction for `pod` (named `body_name` in the body) through kubectl.
fn evict(server: &Server, ns: &str, pod: &str, body_name: &str, body_ns: &str) -> String {
    let file = server.data.join("eviction.json");
    let body = serde_json::json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": body_name, "namespace": body_ns}});
    std::fs::write(&file, body.to_string()).expect("write eviction");
    server.kubectl(&[
        "create",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/pods/{pod}/eviction"),
        "-f",
        file.to_str().expect("utf8"),
    ])
}

/// node01 drained under a VM with evictionStrategy None; evictions refused for External and
/// LiveMigrate VMIs on node02; hostile evictions.
fn drain_and_evictions(server: &Server) {
    // A VM lands on node01 (node02 already runs "waits"): its launcher Pod record is there.
    apply(server, "mover", &vm_manifest("mover", "None"));
    let placed = wait_for(START, || {
        vmi(server, "mover", "{.status.phase}") == "Running"
            && launcher_pod(server, "mover").is_some()
    });
    assert!(
        placed,
        "mover did not run with a launcher pod: {}",
        server.kubectl(&["get", "vmi,pods", "-o", "wide"])
    );
    let (pod, node) = launcher_pod(server, "mover").expect("launcher pod");
    assert_eq!(
        node,
        "node01",
        "{}",
        server.kubectl(&["get", "vmi", "-o", "wide"])
    );
    assert!(pod.starts_with("virt-launcher-mover-"), "{pod}");
    let wide = server.kubectl(&["get", "pods", "-o", "wide"]);
    assert!(
        wide.lines()
            .any(|l| l.contains(&pod) && l.contains("Running") && l.contains("node01")),
        "{wide}"
    );
    let first_uid = server.jsonpath("vmi", "mover", "{.metadata.uid}");

    // kubectl drain: cordon, evict (strategy None: the Pod goes), wait for it to be gone.
    let out = server.kubectl(&[
        "drain",
        "node01",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=120s",
    ]);
    assert!(
        out.contains(&format!("evicting pod default/{pod}")) && out.contains("node/node01 drained"),
        "{out}"
    );
    // The VMI stops; the VM's next one runs on node02, with its Pod there.
    let moved = wait_for(START, || {
        let uid = server.jsonpath("vmi", "mover", "{.metadata.uid}");
        !uid.is_empty()
            && uid != first_uid
            && vmi(server, "mover", "{.status.phase}") == "Running"
            && launcher_pod(server, "mover").is_some_and(|(_, n)| n == "node02")
    });
    assert!(
        moved,
        "mover did not move to node02: {}",
        server.kubectl(&["get", "vmi,pods", "-o", "wide"])
    );
    assert_eq!(vmi(server, "mover", "{.status.nodeName}"), "node02");

    // External and LiveMigrate VMIs on node02: an eviction is refused with 429.
    let external = vmi_manifest("external", "node02").replace(
        "  startStrategy: Paused\n",
        "  startStrategy: Paused\n  evictionStrategy: External\n",
    );
    let live = vmi_manifest("live", "node02").replace(
        "  startStrategy: Paused\n",
        "  startStrategy: Paused\n  evictionStrategy: LiveMigrate\n",
    );
    apply(server, "external", &external);
    apply(server, "live", &live);
    let up = wait_for(START, || {
        ["external", "live"].iter().all(|v| {
            vmi(server, v, "{.status.phase}") == "Running" && launcher_pod(server, v).is_some()
        })
    });
    assert!(up, "{}", server.kubectl(&["get", "vmi,pods", "-o", "wide"]));

    let (ext_pod, _) = launcher_pod(server, "external").expect("pod");
    let out = evict(server, "default", &ext_pod, &ext_pod, "default");
    assert!(
        out.contains("TooManyRequests")
            && out.contains(
                "admission webhook \"virt-launcher-eviction-interceptor.kubevirt.io\" denied the request: \
                 Eviction triggered evacuation of VMI \"default/external\""
            ),
        "{out}"
    );
    assert_eq!(
        vmi(server, "external", "{.status.evacuationNodeName}"),
        "node02"
    );
    let out = evict(server, "default", &ext_pod, &ext_pod, "default");
    assert!(
        out.contains(
            "Evacuation in progress: Eviction triggered evacuation of VMI \"default/external\""
        ),
        "{out}"
    );
    assert!(
        launcher_pod(server, "external").is_some(),
        "the refused eviction deleted the pod"
    );

    let (live_pod, _) = launcher_pod(server, "live").expect("pod");
    // "live" gets the cluster's default interface (masquerade here): live-migratable. Its
    // eviction marks it and makes an evacuation migration, which waits while node01 is
    // cordoned (kube-scheduler's verdict in its event).
    assert!(
        wait_for(Duration::from_secs(30), || vmi(
            server,
            "live",
            "{.status.conditions[?(@.type=='LiveMigratable')].status}"
        ) == "True"),
        "{}",
        server.kubectl(&["get", "vmi", "live", "-o", "yaml"])
    );
    let out = evict(server, "default", &live_pod, &live_pod, "default");
    assert!(out.contains("TooManyRequests"), "{out}");
    assert!(
        out.contains("Eviction triggered evacuation of VMI \"default/live\""),
        "{out}"
    );
    assert_eq!(
        vmi(server, "live", "{.status.evacuationNodeName}"),
        "node02"
    );
    let migration = wait_for(Duration::from_secs(30), || {
        server
            .kubectl(&[
                "get",
                "vmim",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}:{.spec.vmiName}:{.metadata.annotations.kubevirt\\.io/evacuationMigration}:{.status.phase}{\"\\n\"}{end}",
            ])
            .lines()
            .any(|l| l.starts_with("kubevirt-evacuation-") && l.ends_with(":live:node02:Scheduling"))
    });
    assert!(
        migration,
        "{}",
        server.kubectl(&["get", "vmim", "-o", "yaml"])
    );

    // Hostile evictions: another Pod in the body, another namespace, no such Pod.
    let out = evict(server, "default", &ext_pod, &live_pod, "default");
    assert!(
        out.contains("name in URL does not match name in Eviction object"),
        "{out}"
    );
    let out = evict(server, "default", &ext_pod, &ext_pod, "kube-system");
    assert!(
        out.contains(
            "the namespace of the provided object does not match the namespace sent on the request"
        ),
        "{out}"
    );
    let out = evict(
        server,
        "default",
        "virt-launcher-nothing-abcde",
        "virt-launcher-nothing-abcde",
        "default",
    );
    assert!(
        out.contains("NotFound") || out.contains("not found"),
        "{out}"
    );
    // A Pod dressed as the launcher of "external" but owned by nothing is an ordinary Pod: its
    // eviction deletes it and marks nothing.
    let fake = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "virt-launcher-external-fake1", "namespace": "default",
            "labels": {"kubevirt.io": "virt-launcher"},
            "annotations": {"kubevirt.io/domain": "live"}},
        "spec": {"nodeName": "node02", "containers": [{"name": "compute", "image": "x"}]}});
    let file = server.data.join("fake-pod.json");
    std::fs::write(&file, fake.to_string()).expect("write pod");
    let out = server.kubectl(&["create", "-f", file.to_str().expect("utf8")]);
    assert!(out.contains("created"), "{out}");
    let out = evict(
        server,
        "default",
        "virt-launcher-external-fake1",
        "virt-launcher-external-fake1",
        "default",
    );
    assert!(
        out.contains("\"status\":\"Success\"") || out.contains("Success"),
        "{out}"
    );
    assert!(server
        .kubectl(&["get", "pod", "virt-launcher-external-fake1"])
        .contains("NotFound"));

    // kubectl drain of node02 with a LiveMigrate VM on it: the eviction marks the VMI, the
    // evacuation migration moves it to node01 (uncordoned), the source Pod goes, and the
    // drain completes. VMIs that could never leave (External, not migratable) go first.
    let out = server.kubectl(&["delete", "vmi", "external", "live", "--wait=true"]);
    assert!(out.contains("deleted"), "{out}");
    // A running guest without a NIC (see docs/migration.md on migrating between nodes with
    // and without a pod network).
    let drainme = vm_manifest("drainme", "LiveMigrate")
        .replace("      startStrategy: Paused\n", "")
        .replace(
            "      domain:\n        devices:\n",
            "      domain:\n        devices:\n          autoattachPodInterface: false\n",
        );
    assert!(
        drainme.contains("autoattachPodInterface") && !drainme.contains("Paused"),
        "{drainme}"
    );
    apply(server, "drainme", &drainme);
    assert!(
        wait_for(START, || vmi(
            server,
            "drainme",
            "{.status.nodeName}/{.status.conditions[?(@.type=='LiveMigratable')].status}"
        ) == "node02/True"),
        "{}",
        server.kubectl(&["get", "vmi", "drainme", "-o", "yaml"])
    );
    let out = server.kubectl(&["uncordon", "node01"]);
    assert!(out.contains("uncordoned"), "{out}");
    let out = server.kubectl(&[
        "drain",
        "node02",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--pod-selector=kubevirt.io=virt-launcher",
        "--timeout=180s",
    ]);
    assert!(
        out.contains("node/node02 drained"),
        "{out}\n{}\n{}",
        server.kubectl(&["get", "vmi,vmim,pods", "-o", "wide"]),
        server.kubectl(&["get", "vmim", "-o", "yaml"])
    );
    assert_eq!(
        vmi(
            server,
            "drainme",
            "{.status.nodeName} {.status.phase} {.status.evacuationNodeName}"
        ),
        "node01 Running "
    );
    let evacuation = server.kubectl(&[
        "get",
        "vmim",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}:{.spec.vmiName}:{.status.phase}{\"\\n\"}{end}",
    ]);
    assert!(
        evacuation
            .lines()
            .any(|l| l.starts_with("kubevirt-evacuation-") && l.ends_with(":drainme:Succeeded")),
        "{evacuation}"
    );
    assert!(launcher_pod(server, "drainme").is_some_and(|(_, n)| n == "node01"));
    let out = server.kubectl(&["uncordon", "node02"]);
    assert!(out.contains("uncordoned"), "{out}");
}

#[test]
fn node_names_that_are_not_dns1123_subdomains_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let long = "n".repeat(254);
    for bad in [
        "Node02", "node_02", "../node", "a/b", "-node", "", "no de", &long,
    ] {
        let out = run_output(
            Command::new(BIN)
                .arg("node")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                // `=`: a name starting with `-` is still the flag's value.
                .arg(format!("--node-name={bad}"))
                .arg("--data-dir")
                .arg(dir.path().join("d")),
        );
        assert!(out.contains("not a valid node name"), "{bad:?}: {out}");
        assert!(
            !dir.path().join("d").exists(),
            "{bad:?} created the data directory"
        );
    }
    let out = run_output(
        Command::new(BIN)
            .arg("server")
            .args(["--node-name", "UPPER", "--data-dir"])
            .arg(dir.path().join("s")),
    );
    assert!(out.contains("not a valid node name"), "{out}");

    // The address other nodes send migrations to: one they can connect to, never a
    // wildcard, a group or a name that would be resolved later.
    for (bad, says) in [
        ("0.0.0.0", "cannot be connected to"),
        ("::", "cannot be connected to"),
        ("224.0.0.1", "cannot be connected to"),
        ("255.255.255.255", "cannot be connected to"),
        ("node02", "is not an IP address"),
        ("127.0.0.1:49152", "is not an IP address"),
        ("127.0.0.1 --x", "is not an IP address"),
        ("", "is not an IP address"),
    ] {
        let out = run_output(
            Command::new(BIN)
                .arg("node")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["--node-name", "node02"])
                .arg(format!("--node-address={bad}"))
                .arg("--data-dir")
                .arg(dir.path().join("d")),
        );
        assert!(out.contains(says), "{bad:?}: {out}");
        assert!(
            !dir.path().join("d").exists(),
            "{bad:?} created the data directory"
        );
    }
}

/// The demo guest printing its uptime and boot id every second on its console.
fn counting_vm(name: &str) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        memory: {{guest: 256Mi}}
        devices:
          autoattachPodInterface: false
          disks:
          - name: rootdisk
            disk: {{bus: virtio}}
          - name: cloudinit
            disk: {{bus: virtio}}
          - name: scratch
            serial: scratch
            disk: {{bus: virtio}}
      terminationGracePeriodSeconds: 0
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
            d=$(for b in /sys/block/vd*; do [ "$(cat $b/serial)" = scratch ] && echo /dev/${{b##*/}}; done)
            printf disk-marker | dd of=$d bs=512 count=1 conv=sync,fsync 2>/dev/null
            while :; do
              echo 1 > /proc/sys/vm/drop_caches
              m=$(dd if=$d bs=512 count=1 2>/dev/null | tr -d '\000')
              echo "tick $(cut -d' ' -f1 /proc/uptime) boot=$(cat /proc/sys/kernel/random/boot_id) $m"
              sleep 1
            done &
"#
    )
}

/// The `tick UPTIME boot=ID` lines of a serial log: (uptime, boot id).
fn ticks(dir: &VmiDir) -> Vec<(f64, String)> {
    let log = std::fs::read_to_string(dir.serial_log()).unwrap_or_default();
    // Whole lines only: the guest may be writing the last one.
    let whole = log.rfind('\n').map_or("", |end| &log[..end]);
    whole
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("tick ")? + 5..];
            let (up, boot) = rest.split_once(" boot=")?;
            // The boot id, then what the guest read back from its emptyDisk.
            Some((up.trim().parse().ok()?, boot.trim().to_string()))
        })
        .collect()
}

/// Whether `virtctl console` (through virt-api, then the VMI's node agent) shows `want`
/// within 30 s.
fn console_shows(server: &Server, vmi: &str, want: &str) -> bool {
    use std::io::Read;
    // The link Server::virtctl makes, for a virtctl that keeps running.
    let link = server.data.parent().unwrap_or(&server.data).join("virtctl");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(&server.bin, &link).expect("link virtctl");
    }
    let mut child = server
        .command(&link)
        .args(["console", vmi, "--timeout", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("virtctl console");
    let mut stdout = child.stdout.take().expect("stdout");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().expect("lock").extend_from_slice(&chunk[..n]);
        }
    });
    let shown = wait_for(Duration::from_secs(30), || {
        String::from_utf8_lossy(&seen.lock().expect("lock")).contains(want)
    });
    let _ = child.kill();
    let _ = child.wait();
    shown
}

/// node01 (`kubevirt-rs server` with `server_args`) and node02 (`kubevirt-rs node` in a
/// network namespace of its own, so what goes between them crosses a veth pair), node02
/// joined and Ready. None when kubectl, the demo guest or network namespaces are missing
/// (each of those says so). Keep it whole and borrow its fields (`let TwoNodes { .. } =
/// &mut nodes`): a struct's fields are dropped in declaration order, so the node agents
/// (and the launchers they stop) go before the data directory and the network they use.
struct TwoNodes {
    node02: NodeProcess,
    server: Server,
    guest: PathBuf,
    dir: tempfile::TempDir,
    net: NodeNetwork,
}

impl TwoNodes {
    fn start(server_args: &[&str]) -> Option<TwoNodes> {
        Self::start_with(server_args, false)
    }

    /// node02 with the server's data directory path, private to it
    /// ([`NodeProcess::start_private`]).
    fn start_private(server_args: &[&str]) -> Option<TwoNodes> {
        Self::start_with(server_args, true)
    }

    fn start_with(server_args: &[&str], private: bool) -> Option<TwoNodes> {
        if !have_kubectl() {
            return None;
        }
        let guest = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR"))?;
        let net = NodeNetwork::new()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Server::new(BIN, dir.path().join("data"), guest.join("oci"));
        server.extra_args = server_args.iter().map(|a| a.to_string()).collect();
        on_host_end(&mut server, &net);
        server.start();
        let start = if private {
            NodeProcess::start_private
        } else {
            NodeProcess::start_in
        };
        let node02 = start(
            &net,
            &server,
            "node02",
            &dir.path().join("node02"),
            &guest.join("oci"),
        );
        assert!(
            wait_for(Duration::from_secs(60), || node_ready(&server, "node02")
                == "True"),
            "node02 did not join"
        );
        Some(TwoNodes {
            node02,
            server,
            guest,
            dir,
            net,
        })
    }
}

fn migration_of(server: &Server, vmi: &str, path: &str) -> String {
    run_output(server.command("kubectl").args([
        "get",
        "vmim",
        "-l",
        &format!("kubevirt.io/vmi-name={vmi}"),
        "--sort-by=.metadata.creationTimestamp",
        "-o",
        &format!("jsonpath={{.items[-1:]{path}}}"),
    ]))
}

#[test]
fn a_running_guest_migrates_to_the_other_node_and_cancels_and_failures_leave_it_running() {
    const MIGRATE: Duration = Duration::from_secs(240);
    // node02 listens for migrations on its address in its own network namespace: the guest
    // crosses the veth pair between the namespaces.
    let Some(mut nodes) = TwoNodes::start(&[]) else {
        return;
    };
    let TwoNodes {
        node02,
        server,
        net,
        ..
    } = &mut nodes;
    assert_eq!(
        server.jsonpath(
            "node",
            "node02",
            "{.status.addresses[?(@.type=='InternalIP')].address}"
        ),
        net.node_ip.to_string()
    );
    let dir_on = |node: &str, name: &str| -> VmiDir {
        if node == "node02" {
            node02.vmi_dir(name)
        } else {
            server.vmi_dir("default", name)
        }
    };
    apply(server, "mover", &counting_vm("mover"));
    assert!(
        wait_for(START, || vmi(server, "mover", "{.status.phase}")
            == "Running"),
        "{}",
        server.kubectl(&["get", "vmi", "mover", "-o", "yaml"])
    );
    let source = vmi(server, "mover", "{.status.nodeName}");
    let target = if source == "node01" {
        "node02"
    } else {
        "node01"
    };
    let src_dir = dir_on(&source, "mover");
    assert!(
        wait_for(START, || !ticks(&src_dir).is_empty()),
        "the guest never counted on {source}: {}",
        std::fs::read_to_string(src_dir.serial_log()).unwrap_or_default()
    );
    let src_qemu = src_dir
        .read_state()
        .expect("state")
        .qemu_pid
        .expect("qemu pid");
    // The console of the guest on node02 reaches virt-api through node02's agent (mTLS).
    if source == "node02" {
        assert!(console_shows(server, "mover", "tick "), "no console output");
    }

    // --- A migration moves the running guest: same boot, the count goes on.
    // (The source's directory goes with the migration: its ticks are read before.)
    let before = ticks(&src_dir);
    let (last_up, boot) = before.last().cloned().expect("ticks at the source");
    let out = server.virtctl(&["migrate", "mover"]);
    assert!(out.contains("was scheduled to migrate"), "{out}");
    let done = wait_for(MIGRATE, || {
        matches!(
            migration_of(server, "mover", ".status.phase").as_str(),
            "Succeeded" | "Failed"
        )
    });
    assert!(
        done && migration_of(server, "mover", ".status.phase") == "Succeeded",
        "{}\n{}",
        server.kubectl(&["get", "vmim", "-o", "yaml"]),
        server.kubectl(&["get", "vmi", "mover", "-o", "yaml"])
    );
    assert_eq!(vmi(server, "mover", "{.status.nodeName}"), target);
    assert_eq!(
        vmi(server, "mover", "{.metadata.labels.kubevirt\\.io/nodeName}"),
        target
    );
    assert_eq!(
        vmi(
            server,
            "mover",
            "{.metadata.labels.kubevirt\\.io/migrationTargetNodeName}"
        ),
        "",
        "the target label goes when the migration ends"
    );
    assert_eq!(
        vmi(
            server,
            "mover",
            "{.status.migrationState.sourceNode}>{.status.migrationState.targetNode} completed={.status.migrationState.completed} failed={.status.migrationState.failed}"
        ),
        format!("{source}>{target} completed=true failed=")
    );
    let phases = migration_of(
        server,
        "mover",
        ".status.phaseTransitionTimestamps[*].phase",
    );
    assert_eq!(
        phases,
        "Pending Scheduling Scheduled PreparingTarget TargetReady Running Succeeded"
    );
    assert_eq!(vmi(server, "mover", "{.status.phase}"), "Running");
    let dst_dir = dir_on(target, "mover");
    assert!(
        wait_for(Duration::from_secs(60), || ticks(&dst_dir).len() >= 2),
        "the guest does not count on {target}: {}",
        std::fs::read_to_string(dst_dir.serial_log()).unwrap_or_default()
    );
    let after = ticks(&dst_dir);
    assert!(
        after.iter().all(|(up, b)| *b == boot && *up > last_up),
        "not the same boot, or the count restarted: before {before:?}, after {after:?}"
    );
    // The emptyDisk came along (block migration): the guest reads its marker back from the
    // target's copy, past its page cache.
    assert!(
        boot.ends_with(" disk-marker") && after.iter().all(|(_, b)| b.ends_with(" disk-marker")),
        "the disk marker is not read back: before {before:?}, after {after:?}"
    );
    // Nothing of it is left on the source.
    assert!(
        wait_for(Duration::from_secs(30), || !src_dir.path().exists()),
        "{} is still there",
        src_dir.path().display()
    );
    assert!(
        !kubevirt_testsupport::alive(src_qemu),
        "the source QEMU is gone"
    );
    if target == "node02" {
        assert!(console_shows(server, "mover", "tick "), "no console output");
    }

    // --- A cancelled migration leaves the guest where it is.
    let patch = r#"{"spec":{"configuration":{"migrations":{"bandwidthPerMigration":"1Mi"}}}}"#;
    let out = server.kubectl(&[
        "patch", "kubevirt", "kubevirt", "-n", "kubevirt", "--type", "merge", "-p", patch,
    ]);
    assert!(out.contains("patched"), "{out}");
    // The cluster configuration reaches the controller through its watch.
    std::thread::sleep(Duration::from_secs(2));
    let here = target.to_string();
    let there = source.clone();
    let here_dir = dst_dir;
    let out = server.virtctl(&["migrate", "mover"]);
    assert!(out.contains("was scheduled to migrate"), "{out}");
    assert!(
        wait_for(MIGRATE, || migration_of(server, "mover", ".status.phase")
            == "Running"),
        "{}",
        server.kubectl(&["get", "vmim", "-o", "yaml"])
    );
    let out = server.virtctl(&["migrate-cancel", "mover"]);
    assert!(out.contains("cancel"), "{out}");
    assert!(
        wait_for(MIGRATE, || server
            .kubectl(&[
                "get",
                "vmim",
                "-l",
                "kubevirt.io/vmi-name=mover",
                "-o",
                "name"
            ])
            .lines()
            .count()
            == 1),
        "the cancelled migration was not released: {}",
        server.kubectl(&["get", "vmim", "-o", "yaml"])
    );
    assert_eq!(vmi(server, "mover", "{.status.nodeName}"), here);
    assert_eq!(
        vmi(server, "mover", "{.status.migrationState.failed} {.status.migrationState.abortStatus} {.status.migrationState.failureReason}"),
        "true Succeeded Live migration has been aborted"
    );
    let n = ticks(&here_dir).len();
    assert!(
        wait_for(Duration::from_secs(30), || ticks(&here_dir).len() >= n + 2),
        "the guest stopped counting after the cancel"
    );
    let there_dir = dir_on(&there, "mover");
    assert!(
        wait_for(Duration::from_secs(30), || !there_dir.path().exists()),
        "the cancelled target's directory {} is still there",
        there_dir.path().display()
    );

    // --- A target that dies mid-migration: the migration fails, the guest keeps running.
    let out = server.virtctl(&["migrate", "mover"]);
    assert!(out.contains("was scheduled to migrate"), "{out}");
    assert!(
        wait_for(MIGRATE, || migration_of(server, "mover", ".status.phase")
            == "Running"),
        "{}",
        server.kubectl(&["get", "vmim", "-o", "yaml"])
    );
    let target_qemu = there_dir
        .read_state()
        .ok()
        .and_then(|s| s.qemu_pid)
        .expect("target QEMU");
    // SAFETY: kill(2) on a pid this test's server started.
    unsafe { libc::kill(target_qemu as i32, libc::SIGKILL) };
    assert!(
        wait_for(MIGRATE, || migration_of(server, "mover", ".status.phase")
            == "Failed"),
        "{}",
        server.kubectl(&["get", "vmim", "-o", "yaml"])
    );
    assert_eq!(
        vmi(server, "mover", "{.status.nodeName} {.status.phase}"),
        format!("{here} Running")
    );
    let n = ticks(&here_dir).len();
    assert!(
        wait_for(Duration::from_secs(30), || ticks(&here_dir).len() >= n + 2),
        "the guest stopped counting after its target died"
    );
    assert!(
        wait_for(Duration::from_secs(30), || !there_dir.path().exists()),
        "the dead target's directory is still there"
    );

    // Hostile: VMIs have no status subresource, so whoever may update one could write a
    // migration state sending the guest anywhere. The source's agent sends it only to an
    // address the target Node reports.
    let forged = format!(
        r#"[{{"op":"replace","path":"/status/migrationState","value":{{"migrationUid":"forged","sourceNode":"{here}","targetNode":"{there}","targetNodeAddress":"10.255.255.1","targetDirectMigrationNodePorts":{{"9":49152}}}}}}]"#
    );
    let out = server.kubectl(&["patch", "vmi", "mover", "--type", "json", "-p", &forged]);
    assert!(out.contains("patched"), "{out}");
    assert!(
        wait_for(Duration::from_secs(30), || vmi(
            server,
            "mover",
            "{.status.migrationState.failed} {.status.migrationState.failureReason}"
        ) == format!(
            "true targetNodeAddress 10.255.255.1 is not an address of node {there:?}"
        )),
        "{}",
        server.kubectl(&["get", "vmi", "mover", "-o", "yaml"])
    );
    assert_eq!(
        vmi(server, "mover", "{.status.nodeName} {.status.phase}"),
        format!("{here} Running")
    );
}

/// The counting guest without its emptyDisk: its migration moves memory only (no block copy
/// first), so a fault injected once the migration runs hits the guest's memory stream.
fn counting_vm_memory_only(name: &str) -> String {
    let vm = counting_vm(name)
        .replace(
            "          - name: scratch\n            serial: scratch\n            disk: {bus: virtio}\n",
            "",
        )
        .replace(
            "      - name: scratch\n        emptyDisk:\n          capacity: 16Mi\n",
            "",
        );
    assert!(
        !vm.contains("emptyDisk") && !vm.contains("serial: scratch"),
        "{vm}"
    );
    vm
}

/// Merges `migrations` into the KubeVirt CR's `spec.configuration.migrations` and gives the
/// controller's watch a moment to see it (it is copied to each migration when scheduled).
fn set_migrations(server: &Server, migrations: serde_json::Value) {
    let patch = serde_json::json!({"spec": {"configuration": {"migrations": migrations}}});
    let out = server.kubectl(&[
        "patch",
        "kubevirt",
        "kubevirt",
        "-n",
        "kubevirt",
        "--type",
        "merge",
        "-p",
        &patch.to_string(),
    ]);
    assert!(out.contains("patched"), "{out}");
    std::thread::sleep(Duration::from_secs(2));
}

/// Starts the VM `name` (the `manifest`) on `node` by keeping the other node cordoned until
/// it runs there (the VM itself may go anywhere, so it can migrate).
fn run_on(server: &Server, node: &str, other: &str, name: &str, manifest: &str) {
    let out = server.kubectl(&["cordon", other]);
    assert!(out.contains("cordoned"), "{out}");
    apply(server, name, manifest);
    assert!(
        wait_for(START, || vmi(
            server,
            name,
            "{.status.phase}/{.status.nodeName}"
        ) == format!("Running/{node}")),
        "{}",
        server.kubectl(&["get", "vmi", name, "-o", "yaml"])
    );
    let out = server.kubectl(&["uncordon", other]);
    assert!(out.contains("uncordoned"), "{out}");
}

/// Waits until the guest's count went on by two ticks on `dir` and returns the last tick;
/// every tick since `since` has the boot id `boot`.
fn counts_on(dir: &VmiDir, since: f64, boot: &str, what: &str) -> f64 {
    let n = ticks(dir).len();
    assert!(
        wait_for(Duration::from_secs(30), || ticks(dir).len() >= n + 2),
        "the guest stopped counting {what}: {}",
        std::fs::read_to_string(dir.serial_log()).unwrap_or_default()
    );
    let t = ticks(dir);
    let later: Vec<_> = t.iter().filter(|(up, _)| *up > since).collect();
    assert!(
        !later.is_empty() && later.iter().all(|(_, b)| b == boot),
        "not the same boot {what}: {boot} before, {later:?}"
    );
    t.last().map(|(up, _)| *up).unwrap_or(since)
}

/// `virtctl migrate VMI`, then waits until the migration runs and the source's QEMU has sent
/// some of the guest's memory: the moment a fault injected mid-migration is meant for.
fn migrate_until_memory_flows(server: &Server, vmi: &str, src: &VmiDir) {
    let out = server.virtctl(&["migrate", vmi]);
    assert!(out.contains("was scheduled to migrate"), "{out}");
    migration_phase_is(server, vmi, "Running", Duration::from_secs(120));
    assert!(
        wait_for(Duration::from_secs(30), || src
            .read_state()
            .ok()
            .and_then(|s| s.migration)
            .is_some_and(|m| m.transferred_bytes > 0)),
        "no memory sent: {:?}",
        src.read_state().map(|s| s.migration)
    );
}

fn migration_phase_is(server: &Server, vmi: &str, phase: &str, timeout: Duration) {
    assert!(
        wait_for(timeout, || migration_of(server, vmi, ".status.phase")
            == phase),
        "the migration of {vmi} is not {phase}: {}\n{}",
        server.kubectl(&["get", "vmim", "-o", "yaml"]),
        server.kubectl(&["get", "vmi", vmi, "-o", "yaml"])
    );
}

/// The migration's failure as its object reports it: `phase reason`.
fn migration_failure(server: &Server, vmi: &str) -> String {
    format!(
        "{} {}",
        migration_of(server, vmi, ".status.phase"),
        migration_of(server, vmi, ".status.migrationState.failureReason")
    )
}

#[test]
fn a_network_cut_between_the_nodes_fails_the_migration_and_the_guest_runs_on_at_the_source() {
    let Some(mut nodes) = TwoNodes::start(&[]) else {
        return;
    };
    let TwoNodes {
        node02,
        server,
        net,
        ..
    } = &mut nodes;
    // Slow enough to be cut in the middle (1 MiB/s), and given up 10 s after the stream
    // stalls (KubeVirt's default progressTimeout is 150 s).
    set_migrations(
        server,
        serde_json::json!({"bandwidthPerMigration": "1Mi", "progressTimeout": 10}),
    );
    run_on(
        server,
        "node01",
        "node02",
        "cut",
        &counting_vm_memory_only("cut"),
    );
    let src = server.vmi_dir("default", "cut");
    assert!(wait_for(START, || !ticks(&src).is_empty()), "no ticks");
    let (mut last, boot) = ticks(&src).last().cloned().expect("a tick");
    let src_qemu = src.read_state().expect("state").qemu_pid.expect("QEMU");

    // The guest's memory is on its way to node02 (over the veth pair) ...
    migrate_until_memory_flows(server, "cut", &src);
    // ... when the cable is pulled.
    net.cut();
    let cut_at = std::time::Instant::now();
    // The source's QEMU sees no progress for progressTimeout and gives up; node01's agent
    // reports it and the migration fails, all while node02 is unreachable.
    migration_phase_is(server, "cut", "Failed", Duration::from_secs(60));
    let failure = migration_failure(server, "cut");
    assert!(
        failure.starts_with("Failed Live migration has been aborted: stuck for ")
            && failure.ends_with(" seconds (progressTimeout 10)"),
        "{failure}"
    );
    let events = server.kubectl(&[
        "get",
        "events",
        "-o",
        "jsonpath={range .items[*]}{.reason}:{.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains(
            "FailedMigration:source node reported migration failed: Live migration has been aborted: stuck for"
        ),
        "{events}"
    );
    eprintln!(
        "the cut migration failed {:?} after the cut",
        cut_at.elapsed()
    );
    // One running copy: the source's, same QEMU, same boot, still node01's.
    assert_eq!(
        vmi(server, "cut", "{.status.nodeName} {.status.phase}"),
        "node01 Running"
    );
    assert!(kubevirt_testsupport::alive(src_qemu));
    last = counts_on(&src, last, &boot, "at the source during the cut");
    // node02's target never got the guest: its QEMU still waits for it, or has given up the
    // silent link (NODE_LINK_TIMEOUT after the cut).
    let target = node02.vmi_dir("cut");
    let waiting = target.read_state().map(|s| s.phase);
    assert!(
        !matches!(
            waiting,
            Ok(kubevirt_launcher::api::Phase::Running | kubevirt_launcher::api::Phase::Paused)
        ),
        "the target on node02: {waiting:?}"
    );

    // The link comes back: node02's agent learns the migration failed and removes its target.
    net.restore();
    assert!(
        wait_for(Duration::from_secs(60), || !target.path().exists()),
        "the target's leftovers on node02 are still there: {}",
        target.path().display()
    );
    last = counts_on(&src, last, &boot, "at the source after the link came back");

    // With KubeVirt's default progress timeout (150 s) it is the link's own timeout that ends
    // a migration over a cut link: TCP keepalive and TCP_USER_TIMEOUT on the node agents'
    // connection (60 s), whose end reaches the source's QEMU.
    set_migrations(
        server,
        serde_json::json!({"bandwidthPerMigration": "1Mi", "progressTimeout": null}),
    );
    migrate_until_memory_flows(server, "cut", &src);
    net.cut();
    let cut_at = std::time::Instant::now();
    migration_phase_is(server, "cut", "Failed", Duration::from_secs(120));
    let failure = migration_failure(server, "cut");
    assert!(!failure.contains("progressTimeout"), "{failure}");
    eprintln!(
        "with the default progress timeout the cut migration failed {:?} after the cut: {failure}",
        cut_at.elapsed()
    );
    assert_eq!(
        vmi(server, "cut", "{.status.nodeName} {.status.phase}"),
        "node01 Running"
    );
    assert!(kubevirt_testsupport::alive(src_qemu));
    last = counts_on(&src, last, &boot, "at the source after the second cut");
    net.restore();
    assert!(
        wait_for(Duration::from_secs(60), || !target.path().exists()),
        "the second target's leftovers on node02 are still there: {}",
        target.path().display()
    );

    // A new migration (at full speed) moves it.
    set_migrations(server, serde_json::json!({"bandwidthPerMigration": null}));
    let out = server.virtctl(&["migrate", "cut"]);
    assert!(out.contains("was scheduled to migrate"), "{out}");
    migration_phase_is(server, "cut", "Succeeded", Duration::from_secs(120));
    // It ran with the cluster's settings of now, not the failed ones'.
    let config = migration_of(
        server,
        "cut",
        ".status.migrationState.migrationConfiguration",
    );
    assert!(
        !config.contains("progressTimeout") && !config.contains("bandwidthPerMigration"),
        "{config}"
    );
    assert_eq!(
        vmi(server, "cut", "{.status.nodeName} {.status.phase}"),
        "node02 Running"
    );
    counts_on(
        &node02.vmi_dir("cut"),
        last,
        &boot,
        "after moving to node02",
    );
    assert!(
        wait_for(Duration::from_secs(30), || !src.path().exists()),
        "the source's directory is still there"
    );
    assert!(!kubevirt_testsupport::alive(src_qemu));
}

#[test]
fn a_source_node_agent_that_dies_mid_migration_leaves_the_guest_running_at_the_source() {
    let Some(mut nodes) = TwoNodes::start(&[
        "--heartbeat-interval",
        HEARTBEAT_INTERVAL,
        "--node-heartbeat-timeout",
        HEARTBEAT_TIMEOUT,
    ]) else {
        return;
    };
    let TwoNodes {
        node02,
        server,
        guest,
        dir,
        net,
        ..
    } = &mut nodes;
    // Slow (1 MiB/s) through a MigrationPolicy that selects this VM's VMI by its label and
    // namespace, as KubeVirt matches policies; the cluster's settings stay at full speed.
    apply(
        server,
        "policies",
        r#"apiVersion: migrations.kubevirt.io/v1alpha1
kind: MigrationPolicy
metadata: {name: slow}
spec:
  bandwidthPerMigration: 1Mi
  selectors:
    namespaceSelector: {kubernetes.io/metadata.name: default}
    virtualMachineInstanceSelector: {migration: slow}
---
apiVersion: migrations.kubevirt.io/v1alpha1
kind: MigrationPolicy
metadata: {name: other-namespace}
spec:
  bandwidthPerMigration: 2Mi
  selectors:
    namespaceSelector: {kubernetes.io/metadata.name: elsewhere}
    virtualMachineInstanceSelector: {migration: slow}
"#,
    );
    let vm = counting_vm_memory_only("orphan").replace(
        "  template:\n    spec:\n",
        "  template:\n    metadata:\n      labels: {migration: slow}\n    spec:\n",
    );
    assert!(vm.contains("migration: slow"), "{vm}");
    run_on(server, "node02", "node01", "orphan", &vm);
    let src = node02.vmi_dir("orphan");
    assert!(wait_for(START, || !ticks(&src).is_empty()), "no ticks");
    let (last, boot) = ticks(&src).last().cloned().expect("a tick");
    let launcher = src.launcher_pid().expect("launcher");
    let src_qemu = src.read_state().expect("state").qemu_pid.expect("QEMU");

    migrate_until_memory_flows(server, "orphan", &src);
    assert_eq!(
        migration_of(
            server,
            "orphan",
            ".status.migrationState.migrationPolicyName"
        ),
        "slow"
    );
    assert_eq!(
        migration_of(
            server,
            "orphan",
            ".status.migrationState.migrationConfiguration.bandwidthPerMigration"
        ),
        "1Mi"
    );
    // The source's agent dies (SIGKILL): the proxy carrying the guest to node01 goes with it.
    node02.kill9();
    // Its launcher and QEMU live on; QEMU sees the stream break and keeps the guest.
    assert!(
        wait_for(Duration::from_secs(30), || src
            .read_state()
            .ok()
            .and_then(|s| s.migration)
            .is_some_and(|m| m.failed)),
        "the source QEMU did not see its migration fail: {:?}",
        src.read_state().map(|s| s.migration)
    );
    assert!(kubevirt_testsupport::alive(launcher) && kubevirt_testsupport::alive(src_qemu));
    let last = counts_on(&src, last, &boot, "at the source while its agent is down");
    // node01's target never got the guest: it ends, and node01's agent removes it.
    let target = server.vmi_dir("default", "orphan");
    assert!(
        wait_for(Duration::from_secs(60), || !target.path().exists()),
        "node01's target is still there: {:?}",
        target.read_state()
    );
    assert_eq!(
        vmi(server, "orphan", "{.status.nodeName} {.status.phase}"),
        "node02 Running"
    );
    // The agent stays down past the heartbeat timeout: virt-controller fails the migration
    // itself (nothing else would report it), naming the silent node; the guest stays there.
    migration_phase_is(
        server,
        "orphan",
        "Failed",
        Duration::from_secs(HEARTBEAT_TIMEOUT.parse::<u64>().expect("seconds") + 45),
    );
    assert_eq!(
        migration_failure(server, "orphan"),
        format!(
            "Failed the source node node02 stopped reporting (no virt-handler heartbeat for \
             more than {HEARTBEAT_TIMEOUT} s); the guest stays on node02"
        )
    );
    assert!(kubevirt_testsupport::alive(launcher) && kubevirt_testsupport::alive(src_qemu));
    let last = counts_on(&src, last, &boot, "while its agent stays down");

    // The agent comes back: it adopts the launcher, which kept the guest.
    let node02 = NodeProcess::start_in(
        net,
        server,
        "node02",
        &dir.path().join("node02"),
        &guest.join("oci"),
    );
    assert!(
        wait_for(Duration::from_secs(60), || node_ready(server, "node02")
            == "True"),
        "node02 did not come back"
    );
    assert!(
        src.read_state()
            .ok()
            .and_then(|s| s.migration)
            .is_some_and(|m| m.failed && !m.failure_reason.is_empty()),
        "the source QEMU's own outcome: {:?}",
        src.read_state().map(|s| s.migration)
    );
    assert_eq!(
        vmi(
            server,
            "orphan",
            "{.status.nodeName} {.status.phase} {.status.migrationState.failed}"
        ),
        "node02 Running true"
    );
    assert_eq!(node02.vmi_dir("orphan").launcher_pid(), Some(launcher));
    counts_on(&src, last, &boot, "after its agent came back");
    assert!(!target.path().exists());
}

/// `vm.unprivileged_userfaultfd=1` while it lives; the value it found is written back on drop.
struct UnprivilegedUserfaultfd {
    before: String,
}

impl UnprivilegedUserfaultfd {
    const PATH: &'static str = "/proc/sys/vm/unprivileged_userfaultfd";

    fn enable() -> Option<Self> {
        let before = match std::fs::read_to_string(Self::PATH) {
            Ok(v) => v.trim().to_string(),
            Err(e) => {
                eprintln!("SKIPPED: post-copy needs {} ({e})", Self::PATH);
                return None;
            }
        };
        if let Err(e) = std::fs::write(Self::PATH, "1") {
            eprintln!(
                "SKIPPED: post-copy needs userfaultfd for an unprivileged QEMU; cannot set {} to 1: {e}",
                Self::PATH
            );
            return None;
        }
        Some(Self { before })
    }
}

impl Drop for UnprivilegedUserfaultfd {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.before);
    }
}

/// A guest that fills 32 MiB of its RAM (tmpfs `/run`) with random bytes, then ticks with the
/// checksum of them: at 1 MiB/s pre-copy cannot move it within the completion time, and
/// after the move the checksum says every page arrived.
fn random_memory_vm(name: &str) -> String {
    let vm = counting_vm_memory_only(name);
    let old = "            while :; do\n";
    assert!(vm.contains(old), "{vm}");
    vm.replace(
        old,
        "            dd if=/dev/urandom of=/run/random bs=1M count=32 2>/dev/null\n            sum=$(md5sum /run/random | cut -c1-12)\n            while :; do\n              m=\"sum=$sum now=$(md5sum /run/random | cut -c1-12)\"\n",
    )
    .replace(
        "              m=$(dd if=$d bs=512 count=1 2>/dev/null | tr -d '\\000')\n",
        "",
    )
}

#[test]
fn a_migration_past_its_completion_time_switches_to_post_copy_and_the_guest_arrives_whole() {
    // The target's QEMU (uid 107, no capabilities) needs userfaultfd for post-copy, which the
    // kernel gives it only with vm.unprivileged_userfaultfd=1, what a node's administrator
    // sets for post-copy (docs/migration.md). Set for this test, put back after it (after
    // the nodes are gone: it is declared first).
    let Some(_uffd) = UnprivilegedUserfaultfd::enable() else {
        return;
    };
    let Some(mut nodes) = TwoNodes::start(&[]) else {
        return;
    };
    let TwoNodes { node02, server, .. } = &mut nodes;
    // 1 MiB/s: pre-copy of 32 MiB of random pages would take half a minute; after 3 s
    // (completionTimeoutPerGiB 3, a 256 MiB guest counts as 1 GiB) the source switches to
    // post-copy, and the guest runs at the target while its pages follow.
    set_migrations(
        server,
        serde_json::json!({"allowPostCopy": true, "completionTimeoutPerGiB": 3,
            "bandwidthPerMigration": "1Mi"}),
    );
    run_on(server, "node01", "node02", "pc", &random_memory_vm("pc"));
    let src = server.vmi_dir("default", "pc");
    assert!(
        wait_for(START, || ticks(&src)
            .last()
            .is_some_and(|(_, b)| b.contains("sum="))),
        "no ticks with the checksum: {}",
        std::fs::read_to_string(src.serial_log()).unwrap_or_default()
    );
    let (last, boot) = ticks(&src).last().cloned().expect("a tick");
    // The checksum of the pages as written, and as read now: the same.
    let sums: Vec<&str> = boot
        .split_whitespace()
        .filter_map(|w| w.split_once('=').map(|(_, v)| v))
        .collect();
    assert!(sums.len() == 2 && sums[0] == sums[1], "{boot}");
    let src_qemu = src.read_state().expect("state").qemu_pid.expect("QEMU");

    let started = std::time::Instant::now();
    let out = server.virtctl(&["migrate", "pc"]);
    assert!(out.contains("was scheduled to migrate"), "{out}");
    migration_phase_is(server, "pc", "Succeeded", Duration::from_secs(120));
    eprintln!("the post-copy migration took {:?}", started.elapsed());
    assert_eq!(
        migration_of(server, "pc", ".status.migrationState.mode"),
        "PostCopy",
        "{}",
        server.kubectl(&["get", "vmim", "-o", "yaml"])
    );
    assert_eq!(
        vmi(
            server,
            "pc",
            "{.status.nodeName} {.status.phase} {.status.migrationState.mode}"
        ),
        "node02 Running PostCopy"
    );
    // The same boot at node02, and the random pages read back with the checksum they were
    // written with: every page arrived, those sent before the switch and those fetched after.
    counts_on(
        &node02.vmi_dir("pc"),
        last,
        &boot,
        "after post-copy to node02",
    );
    assert!(
        wait_for(Duration::from_secs(30), || !src.path().exists()),
        "the source's directory is still there"
    );
    assert!(!kubevirt_testsupport::alive(src_qemu));
}

/// Beyond KubeVirt (which refuses to migrate a VMI whose claim is not ReadWriteMany): a VM
/// whose disk is a local-path claim, on node01 where the provisioner made its volume, moves
/// to node02 and its volume with it. node02 has the same data directory path, private to it,
/// so the volume's `local.path` names two different files, as on two machines. A migration
/// cancelled mid-copy leaves the source's copy only. Then the guest moves and counts on with
/// the same boot, reading back from its volume, past its page cache, what it wrote there on
/// node01; the PersistentVolume is pinned to node02 afterwards, node01's copy goes, and
/// deleting the claim reclaims node02's copy and the PersistentVolume.
#[test]
fn a_local_path_volume_moves_to_the_other_node_with_its_vm() {
    let Some(mut nodes) = TwoNodes::start_private(&[]) else {
        return;
    };
    let TwoNodes {
        node02,
        server,
        dir,
        ..
    } = &mut nodes;
    let vm = counting_vm("carrier").replace(
        "      - name: scratch\n        emptyDisk:\n          capacity: 16Mi\n",
        "      - name: scratch\n        persistentVolumeClaim:\n          claimName: carrier-data\n",
    );
    assert!(vm.contains("claimName: carrier-data"), "{vm}");
    let claim = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: carrier-data\n\
                 spec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 16Mi}}\n---\n";
    apply(server, "carrier", &format!("{claim}{vm}"));
    // Placed where its volume is: node01 (the server's provisioner made it there).
    assert!(
        wait_for(START, || vmi(
            server,
            "carrier",
            "{.status.phase}/{.status.nodeName}"
        ) == "Running/node01"),
        "{}",
        server.kubectl(&["get", "vmi", "carrier", "-o", "yaml"])
    );
    let pv = server.jsonpath("pvc", "carrier-data", "{.spec.volumeName}");
    let pinned = |server: &Server| {
        server.jsonpath(
            "pv",
            &pv,
            "{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values}",
        )
    };
    assert_eq!(pinned(server), r#"["node01"]"#);
    let local = PathBuf::from(server.jsonpath("pv", &pv, "{.spec.local.path}"));
    let on_node01 = local.join("disk.img");
    let on_node02 = dir
        .path()
        .join("node02")
        .join(
            local
                .strip_prefix(&server.data)
                .expect("beneath the data directory"),
        )
        .join("disk.img");
    let src = server.vmi_dir("default", "carrier");
    assert!(
        wait_for(START, || !ticks(&src).is_empty()),
        "the guest never counted: {}",
        std::fs::read_to_string(src.serial_log()).unwrap_or_default()
    );
    let head = |p: &Path| {
        std::fs::read(p)
            .map(|b| b.into_iter().take(11).collect::<Vec<u8>>())
            .unwrap_or_default()
    };
    assert_eq!(
        head(&on_node01),
        b"disk-marker",
        "the guest's write on node01"
    );
    assert!(!on_node02.exists());
    // Migratable, though ReadWriteOnce: its local volume is copied.
    assert!(
        wait_for(Duration::from_secs(60), || vmi(
            server,
            "carrier",
            "{.status.conditions[?(@.type=='LiveMigratable')].status}"
        ) == "True"),
        "{}",
        server.kubectl(&["get", "vmi", "carrier", "-o", "yaml"])
    );
    let (last_up, boot) = ticks(&src).last().cloned().expect("a tick");
    assert!(boot.ends_with(" disk-marker"), "{boot}");

    // A migration cancelled while the volume is on its way (1 MiB/s) leaves one copy: the
    // source's, still node01's; what node02 made for it goes.
    set_migrations(server, serde_json::json!({"bandwidthPerMigration": "1Mi"}));
    let out = server.virtctl(&["migrate", "carrier"]);
    assert!(out.contains("was scheduled to migrate"), "{out}");
    migration_phase_is(server, "carrier", "Running", Duration::from_secs(120));
    assert!(
        wait_for(Duration::from_secs(60), || on_node02.exists()),
        "node02 made no copy: {}",
        on_node02.display()
    );
    // migrate-cancel deletes the migration; the VMI says how it ended.
    let out = server.virtctl(&["migrate-cancel", "carrier"]);
    assert!(out.contains("cancel"), "{out}");
    assert!(
        wait_for(Duration::from_secs(120), || vmi(
            server,
            "carrier",
            "{.status.migrationState.failed} {.status.migrationState.abortStatus}"
        ) == "true Succeeded"),
        "{}",
        server.kubectl(&["get", "vmi", "carrier", "-o", "yaml"])
    );
    assert!(
        wait_for(Duration::from_secs(60), || !on_node02.exists()),
        "the cancelled migration's copy on node02 is still there"
    );
    assert_eq!(pinned(server), r#"["node01"]"#);
    assert_eq!(vmi(server, "carrier", "{.status.nodeName}"), "node01");
    assert_eq!(
        head(&on_node01),
        b"disk-marker",
        "node01's copy after the cancel"
    );
    let last_up = counts_on(&src, last_up, &boot, "at the source after the cancel");
    set_migrations(server, serde_json::json!({"bandwidthPerMigration": null}));

    let out = server.virtctl(&["migrate", "carrier"]);
    assert!(out.contains("was scheduled to migrate"), "{out}");
    migration_phase_is(server, "carrier", "Succeeded", Duration::from_secs(240));
    assert_eq!(vmi(server, "carrier", "{.status.nodeName}"), "node02");
    // The volume is node02's now, its copy there holds what the guest wrote.
    assert_eq!(pinned(server), r#"["node02"]"#);
    assert_eq!(head(&on_node02), b"disk-marker", "node02's copy");
    let dst = node02.vmi_dir("carrier");
    counts_on(&dst, last_up, &boot, "on node02");
    assert!(
        ticks(&dst).iter().all(|(_, b)| b.ends_with(" disk-marker")),
        "the guest does not read its volume back on node02: {:?}",
        ticks(&dst)
    );
    // node01's copy goes once the volume is pinned away.
    assert!(
        wait_for(Duration::from_secs(30), || !local.exists()),
        "node01's copy is still there: {}",
        local.display()
    );
    // A new VMI of the VM would go where the volume is: node02.
    assert_eq!(
        vmi(
            server,
            "carrier",
            "{.status.conditions[?(@.type=='LiveMigratable')].status}"
        ),
        "True"
    );

    // The VM and its claim go: node02 reclaims its copy, then the PersistentVolume.
    let out = server.kubectl(&["delete", "vm", "carrier", "--wait=true", "--timeout=120s"]);
    assert!(out.contains("deleted"), "{out}");
    let out = server.kubectl(&[
        "delete",
        "pvc",
        "carrier-data",
        "--wait=true",
        "--timeout=60s",
    ]);
    assert!(out.contains("deleted"), "{out}");
    assert!(
        wait_for(Duration::from_secs(60), || !on_node02.exists()
            && server
                .kubectl(&["get", "pv", "-o", "name"])
                .trim()
                .is_empty()),
        "node02's copy or the PersistentVolume is still there: {} {}",
        on_node02.display(),
        server.kubectl(&["get", "pv"])
    );
}

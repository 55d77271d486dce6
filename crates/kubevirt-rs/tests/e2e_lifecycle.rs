//! VM lifecycle end to end, as a KubeVirt user drives it: unmodified kubectl and our virtctl
//! (the multi-call binary through a link named `virtctl`) against `kubevirt-rs server`, real
//! QEMU (TCG here) booting the demo guest.
//!
//! - `virtctl pause/unpause/stop/start` move the VM through Paused, Stopped and Running, and a
//!   VM whose guest powers itself off is started again under runStrategy Always.
//! - Faults: `kill -9` of one VM's QEMU, then of its launcher, then of the whole server: each
//!   has its documented outcome (docs/lifecycle.md) and the other VM is never touched.
//! - Deletion ordering: a VM carries KubeVirt's controller finalizer, so `kubectl delete vm`
//!   (which waits by default) returns only once the VMI and its QEMU are gone.
//! - Metrics (docs/observability.md), on the running VM of the deletion test: `/metrics`
//!   read with `kubectl get --raw` and with a ServiceAccount token bound to
//!   `system:monitoring` carries KubeVirt's series for the VMI and the phase-transition
//!   histogram counted it; a token without the role gets 403; `promtool check metrics`
//!   accepts the exposition and a real Prometheus scrapes it and evaluates the shipped rules
//!   (`deploy/monitoring/kubevirt-rules.yaml`, also checked by `promtool check rules`); the
//!   node agent's measured `kubevirt_vmi_launcher_memory_overhead_bytes` is among the series.
//!   The shipped alerts' own cases run with `promtool test rules`
//!   (`deploy/monitoring/kubevirt-rules-test.yaml`).
//! - Architectures (docs/architectures.md): an arm64 VM (qemu-system-aarch64, TCG) and an
//!   x86_64 VM from one `kubectl apply` run side by side, each printing its `uname -m`.

use kubevirt_api::status::finalizer;
use kubevirt_testsupport::{alive, have_kubectl, wait_for, Server};
use std::path::Path;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);

struct Env {
    server: Server,
    _dir: tempfile::TempDir,
}

fn env() -> Option<Env> {
    if !have_kubectl() {
        return None;
    }
    let guest = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR"))?;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);
    Some(Env { server, _dir: dir })
}

impl Env {
    fn virtctl(&self, args: &[&str]) -> String {
        self.server.virtctl(args)
    }

    /// A VM of the demo guest; `user_data` is its cloud-init script.
    fn apply_vm(&self, name: &str, run_strategy: &str, user_data: &str) {
        let manifest = format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: {run_strategy}
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
      volumes:
      - name: rootdisk
        containerDisk:
          image: kubevirt-rs/demo-guest:latest
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
            #!/bin/sh
            {user_data}
"#
        );
        let file = self.server.data.join(format!("{name}.yaml"));
        std::fs::write(&file, manifest).expect("write manifest");
        let out = self
            .server
            .kubectl(&["apply", "-f", file.to_str().expect("utf8")]);
        assert!(out.contains("created"), "{out}");
    }

    fn vm_status(&self, name: &str) -> String {
        self.server
            .jsonpath("vm", name, "{.status.printableStatus}")
    }

    fn vmi_uid_phase(&self, name: &str) -> (String, String) {
        let s = self
            .server
            .jsonpath("vmi", name, "{.metadata.uid} {.status.phase}");
        let mut it = s.split_whitespace();
        (
            it.next().unwrap_or("").to_string(),
            it.next().unwrap_or("").to_string(),
        )
    }

    #[track_caller]
    fn wait_vm(&self, name: &str, want: &str, timeout: Duration) {
        assert!(
            wait_for(timeout, || self.vm_status(name) == want),
            "VM {name} never reached {want}: {}\n{}",
            self.vm_status(name),
            self.server.kubectl(&["get", "vm,vmi", "-o", "yaml"])
        );
    }

    /// Waits for a Running VMI of `name` whose uid is not `old`; returns its uid.
    #[track_caller]
    fn wait_new_running_vmi(&self, name: &str, old: &str) -> String {
        let mut uid = String::new();
        let ok = wait_for(BOOT, || {
            let (u, p) = self.vmi_uid_phase(name);
            uid = u;
            !uid.is_empty() && uid != old && p == "Running"
        });
        assert!(
            ok,
            "no new Running VMI for {name}: {}",
            self.server.kubectl(&["get", "vmi", name, "-o", "yaml"])
        );
        uid
    }

    fn serial(&self, name: &str) -> String {
        std::fs::read_to_string(self.server.vmi_dir("default", name).serial_log())
            .unwrap_or_default()
    }
}

/// The processes whose command line names `needle` (a /proc scan: QEMU is given the VMI's
/// QMP socket path).
fn pids_mentioning(needle: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

#[test]
fn virtctl_pause_stop_start_and_always_restarts_a_guest_that_powers_off() {
    let Some(e) = env() else { return };
    e.apply_vm("demo", "Always", "echo lifecycle-ready");
    e.wait_vm("demo", "Running", BOOT);
    assert!(
        wait_for(Duration::from_secs(120), || e
            .serial("demo")
            .contains("lifecycle-ready")),
        "cloud-init output never reached the console"
    );

    // KubeVirt's rules: a VM under Always cannot be started by hand.
    let out = e.virtctl(&["start", "demo"]);
    assert!(
        out.contains("VM is already running") || out.contains("does not support manual start"),
        "{out}"
    );

    let out = e.virtctl(&["pause", "vm", "demo"]);
    assert!(!out.contains("rror"), "virtctl pause: {out}");
    e.wait_vm("demo", "Paused", Duration::from_secs(30));
    assert_eq!(
        e.server.jsonpath(
            "vmi",
            "demo",
            "{.status.conditions[?(@.type=='Paused')].status}"
        ),
        "True"
    );
    let out = e.virtctl(&["pause", "vm", "demo"]);
    assert!(out.contains("VMI is already paused"), "{out}");
    e.virtctl(&["unpause", "vm", "demo"]);
    e.wait_vm("demo", "Running", Duration::from_secs(30));

    let pid = e.server.qemu_pid("default", "demo").expect("QEMU pid");
    let out = e.virtctl(&["stop", "demo"]);
    assert!(!out.contains("rror"), "virtctl stop: {out}");
    e.wait_vm("demo", "Stopped", Duration::from_secs(90));
    assert!(e
        .server
        .kubectl(&["get", "vmi", "-o", "name"])
        .trim()
        .is_empty());
    assert!(
        wait_for(Duration::from_secs(30), || !alive(pid)),
        "QEMU still runs after stop"
    );
    assert_eq!(
        e.server.jsonpath("vm", "demo", "{.spec.runStrategy}"),
        "Halted"
    );
    let out = e.virtctl(&["stop", "demo"]);
    assert!(
        out.contains("VM is not running") || out.contains("Halted only supports"),
        "{out}"
    );

    e.virtctl(&["start", "demo"]);
    e.wait_vm("demo", "Running", BOOT);
    assert_eq!(
        e.server.jsonpath("vm", "demo", "{.spec.runStrategy}"),
        "Always"
    );

    // A guest that powers itself off is started again (a new VMI) under Always.
    e.apply_vm("blinker", "Always", "sleep 2; poweroff -f");
    e.wait_vm("blinker", "Running", BOOT);
    let (first, _) = e.vmi_uid_phase("blinker");
    let second = e.wait_new_running_vmi("blinker", &first);
    assert_ne!(first, second);
    e.server
        .kubectl(&["delete", "vm", "blinker", "--wait=false"]);

    // Deleting the VM removes its VMI and stops its launcher.
    let pid = e.server.qemu_pid("default", "demo").expect("QEMU pid");
    e.server.kubectl(&["delete", "vm", "demo", "--wait=false"]);
    assert!(
        wait_for(Duration::from_secs(90), || !alive(pid)
            && !e
                .server
                .kubectl(&["get", "vmi", "-o", "name"])
                .contains("demo")),
        "the VM's VMI or QEMU outlived the VM"
    );
}

#[test]
fn kill9_of_qemu_launcher_or_server_has_its_documented_outcome_and_spares_the_other_vm() {
    let Some(mut e) = env() else { return };
    e.apply_vm("victim", "Always", "echo victim-ready");
    e.apply_vm("bystander", "Always", "echo bystander-ready");
    e.wait_vm("victim", "Running", BOOT);
    e.wait_vm("bystander", "Running", BOOT);
    let bystander = e.server.qemu_pid("default", "bystander").expect("pid");
    let bystander_uid = e.vmi_uid_phase("bystander").0;

    // 1. QEMU killed: the launcher reports the crash, the VMI fails, Always starts a new one.
    let (uid1, _) = e.vmi_uid_phase("victim");
    let qemu = e.server.qemu_pid("default", "victim").expect("pid");
    assert!(Path::new(&format!("/proc/{qemu}")).exists());
    let _ = std::process::Command::new("kill")
        .args(["-9", &qemu.to_string()])
        .status();
    let uid2 = e.wait_new_running_vmi("victim", &uid1);

    // 2. Launcher killed: its QEMU goes with it; the handler reports the VMI Failed
    //    (LauncherExited) and Always starts a new one.
    let launcher = e
        .server
        .launcher_pid("default", "victim")
        .expect("launcher pid");
    let qemu = e.server.qemu_pid("default", "victim").expect("pid");
    let _ = std::process::Command::new("kill")
        .args(["-9", &launcher.to_string()])
        .status();
    assert!(
        wait_for(Duration::from_secs(10), || !alive(qemu)),
        "QEMU outlived its launcher"
    );
    let uid3 = e.wait_new_running_vmi("victim", &uid2);

    // 3. Server killed: both VMs keep running; the restarted server adopts them.
    let victim = e.server.qemu_pid("default", "victim").expect("pid");
    e.server.kill9();
    e.server.start();
    std::thread::sleep(Duration::from_secs(3));
    for (name, pid) in [("victim", victim), ("bystander", bystander)] {
        assert_eq!(e.server.qemu_pid("default", name), Some(pid), "{name}");
        assert!(alive(pid), "{name}'s QEMU stopped");
        e.wait_vm(name, "Running", Duration::from_secs(30));
    }
    assert_eq!(
        e.vmi_uid_phase("victim").0,
        uid3,
        "no restart after a server crash"
    );

    // The bystander was never touched: same VMI, same QEMU, all along.
    assert_eq!(e.vmi_uid_phase("bystander").0, bystander_uid);
    assert!(alive(bystander));
}

#[test]
fn kubectl_delete_vm_waits_until_the_vmi_and_its_qemu_are_gone() {
    let Some(e) = env() else { return };
    e.apply_vm("doomed", "Always", "echo doomed-ready");
    e.wait_vm("doomed", "Running", BOOT);
    let (uid, phase) = e.vmi_uid_phase("doomed");
    assert_eq!(phase, "Running");
    assert!(!uid.is_empty());
    let fins = e.server.jsonpath("vm", "doomed", "{.metadata.finalizers}");
    assert!(
        fins.contains(finalizer::VM_CONTROLLER),
        "the running VM lacks {}: {fins}",
        finalizer::VM_CONTROLLER
    );
    let vmi_fins = e.server.jsonpath("vmi", "doomed", "{.metadata.finalizers}");
    assert!(vmi_fins.contains(finalizer::VMI), "{vmi_fins}");
    check_metrics(&e, "doomed");
    let pid = e.server.qemu_pid("default", "doomed").expect("QEMU pid");
    let qmp = e.server.vmi_dir("default", "doomed").qmp_socket();
    let qmp = qmp.to_str().expect("utf8");
    assert!(alive(pid));
    assert!(
        pids_mentioning(qmp).contains(&pid),
        "the /proc scan does not find QEMU {pid} by {qmp}"
    );

    // kubectl's default: --wait=true, background cascade.
    let started = Instant::now();
    let out = e.server.kubectl(&["delete", "vm", "doomed"]);
    let took = started.elapsed();
    eprintln!("kubectl delete vm took {took:?}: {out}");
    assert!(out.contains("deleted"), "{out}");
    // No waiting from here on: all of it must already be true when kubectl returns.
    let vmi = e
        .server
        .kubectl(&["get", "vmi", "doomed", "--ignore-not-found", "-o", "name"]);
    assert!(
        vmi.trim().is_empty(),
        "the VMI outlived kubectl delete: {vmi}"
    );
    assert!(!alive(pid), "QEMU {pid} outlived kubectl delete");
    let left = pids_mentioning(qmp);
    assert!(left.is_empty(), "QEMU of VMI {uid} still runs: {left:?}");
    let vm = e
        .server
        .kubectl(&["get", "vm", "doomed", "--ignore-not-found", "-o", "name"]);
    assert!(vm.trim().is_empty(), "{vm}");
}

/// The value of the sample `series` (exact name and labels) in a Prometheus exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `/metrics` as docs/observability.md promises it, for the Running VMI `name`.
fn check_metrics(e: &Env, name: &str) {
    let started = Instant::now();
    let server = &e.server;
    // kubectl with the admin kubeconfig: a real client's `get --raw`.
    let text = server.kubectl(&["get", "--raw", "/metrics"]);
    let node = server.jsonpath("vmi", name, "{.status.nodeName}");
    let info = format!(
        "kubevirt_vmi_info{{node=\"{node}\",namespace=\"default\",name=\"{name}\",phase=\"running\"}}"
    );
    assert_eq!(sample(&text, &info), Some(1.0), "{info} missing:\n{text}");
    let vm = format!(
        "kubevirt_vm_info{{name=\"{name}\",namespace=\"default\",machine_type=\"q35\",status=\"running\",status_group=\"running\"}}"
    );
    assert_eq!(sample(&text, &vm), Some(1.0), "{vm} missing:\n{text}");
    let running =
        "kubevirt_vmi_phase_transition_time_from_creation_seconds_count{phase=\"Running\"}";
    assert!(
        sample(&text, running).is_some_and(|n| n >= 1.0),
        "the phase-transition histogram did not count the Running VMI:\n{text}"
    );
    for up in [
        "kubevirt_virt_controller_ready_status",
        "kubevirt_virt_api_ready_status",
        "kubevirt_virt_handler_ready_status",
    ] {
        assert_eq!(sample(&text, up), Some(1.0), "{up}:\n{text}");
    }
    assert!(
        text.lines().any(|l| l.starts_with(
            "apiserver_request_total{verb=\"GET\",group=\"kubevirt.io\",version=\"v1\",resource=\"virtualmachineinstances\",subresource=\"\",scope=\"resource\",component=\"apiserver\",code=\"200\"}"
        )),
        "no apiserver_request_total for the VMI GETs:\n{text}"
    );
    assert!(
        sample(&text, "apiserver_storage_commit_duration_seconds_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    // Per-VMI series from the launcher's statistics (QMP and /proc), labelled as KubeVirt's.
    let vmi = format!("node=\"{node}\",namespace=\"default\",name=\"{name}\"");
    let vcpu = format!("kubevirt_vmi_vcpu_seconds_total{{{vmi},id=\"0\",state=\"running\"}}");
    assert!(
        sample(&text, &vcpu).is_some_and(|s| s > 0.0),
        "{vcpu} missing or 0 for a booted guest:\n{text}"
    );
    let domain = format!("kubevirt_vmi_memory_domain_bytes{{{vmi}}}");
    assert_eq!(
        sample(&text, &domain),
        Some(128.0 * 1024.0 * 1024.0),
        "{text}"
    );
    let rss = format!("kubevirt_vmi_memory_resident_bytes{{{vmi}}}");
    assert!(
        sample(&text, &rss).is_some_and(|b| b > 1e6),
        "{rss}:\n{text}"
    );
    // Measured by the node agent from the launcher's and QEMU's /proc: some MiB of launcher
    // and QEMU, less than QEMU's whole RSS plus a launcher.
    let overhead = format!("kubevirt_vmi_launcher_memory_overhead_bytes{{{vmi}}}");
    assert!(
        sample(&text, &overhead).is_some_and(|b| b > 1e6 && b < 1e9),
        "{overhead}:\n{text}"
    );
    for (family, drive) in [
        ("kubevirt_vmi_storage_read_traffic_bytes_total", "rootdisk"),
        ("kubevirt_vmi_storage_iops_read_total", "rootdisk"),
    ] {
        let series = format!("{family}{{{vmi},drive=\"{drive}\"}}");
        assert!(
            sample(&text, &series).is_some_and(|b| b > 0.0),
            "{series}: the guest read its disks:\n{text}"
        );
    }
    let write =
        format!("kubevirt_vmi_storage_write_traffic_bytes_total{{{vmi},drive=\"rootdisk\"}}");
    assert!(sample(&text, &write).is_some(), "{write}:\n{text}");
    // The default interface is a tap on the pod network: its counters from the guest's side.
    for family in [
        "kubevirt_vmi_network_receive_bytes_total",
        "kubevirt_vmi_network_transmit_bytes_total",
        "kubevirt_vmi_network_receive_packets_total",
    ] {
        let series = format!("{family}{{{vmi},interface=\"default\"}}");
        assert!(sample(&text, &series).is_some(), "{series}:\n{text}");
    }

    // A ServiceAccount bound to kube-apiserver's `system:monitoring` may read it; one
    // without a role may not (403 from the same RBAC as every request).
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
    let (scraper, nobody) = (token("scraper"), token("nobody"));
    let url = server.kubectl(&[
        "config",
        "view",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let ca = server.data.join("ca.crt");
    assert!(ca.exists(), "{} missing", ca.display());
    let curl = |token: &str| {
        kubevirt_testsupport::run_output(std::process::Command::new("curl").args([
            "-sS",
            "--cacert",
            ca.to_str().expect("utf8"),
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-w",
            "\n%{http_code}",
            &format!("{url}/metrics"),
        ]))
    };
    let ok = curl(&scraper);
    assert!(ok.ends_with("\n200") && ok.contains(&info), "{ok}");
    let denied = curl(&nobody);
    assert!(denied.ends_with("\n403"), "{denied}");
    assert!(
        denied.contains("forbidden") && denied.contains("/metrics"),
        "{denied}"
    );
    let out = server.kubectl(&["--token", &nobody, "get", "--raw", "/metrics"]);
    assert!(
        out.contains("Forbidden") || out.contains("forbidden"),
        "{out}"
    );

    if !kubevirt_testsupport::have("promtool", &["--version"], "see scripts/deps.sh") {
        eprintln!("SKIPPED: promtool/prometheus are not installed (scripts/deps.sh installs them)");
        return;
    }
    let dir = server
        .data
        .parent()
        .unwrap_or(&server.data)
        .join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let exposition = dir.join("metrics.txt");
    std::fs::write(&exposition, &text).expect("write exposition");
    let check = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", exposition.display()))
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring/kubevirt-rules.yaml");
    let check = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    scrape_with_prometheus(&dir, &url, &ca, &scraper, &rules, &node, name);
    eprintln!("metrics checks took {:?}", started.elapsed());
}

/// The shipped alerts fire for the VMs they describe and spare the others:
/// `promtool test rules` on `deploy/monitoring/kubevirt-rules-test.yaml` (input series and
/// the alerts expected at given times, a positive and a negative case for each alert).
#[test]
fn promtool_rules_tests_fire_and_spare_the_right_vms() {
    if !kubevirt_testsupport::have("promtool", &["--version"], "see scripts/deps.sh") {
        eprintln!("SKIPPED: promtool is not installed (scripts/deps.sh installs it)");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring");
    let out = std::process::Command::new("promtool")
        .args(["test", "rules", "kubevirt-rules-test.yaml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules: {said}");
    assert!(said.contains("SUCCESS"), "{said}");
}

/// Starts Debian's Prometheus on loopback scraping the server every second with the
/// scraper's token and the shipped rules, and asserts through its query API that the VMI's
/// series and a recording rule over them exist.
fn scrape_with_prometheus(
    dir: &Path,
    url: &str,
    ca: &Path,
    token: &str,
    rules: &Path,
    node: &str,
    name: &str,
) {
    let target = url.trim_start_matches("https://");
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).expect("token file");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
scrape_configs:
  - job_name: kubevirt-rs
    scheme: https
    tls_config: {{ca_file: "{ca}"}}
    authorization: {{credentials_file: "{token}"}}
    static_configs: [{{targets: ["{target}"]}}]
"#,
        rules = rules.display(),
        ca = ca.display(),
        token = token_file.display(),
    );
    let config_file = dir.join("prometheus.yml");
    std::fs::write(&config_file, config).expect("prometheus config");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
    let mut child = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config_file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let query = |q: &str| -> Vec<serde_json::Value> {
        let out = kubevirt_testsupport::run_output(std::process::Command::new("curl").args([
            "-sS",
            "--get",
            &format!("http://127.0.0.1:{port}/api/v1/query"),
            "--data-urlencode",
            &format!("query={q}"),
        ]));
        serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    };
    let series = [
        format!("kubevirt_vmi_info{{namespace=\"default\",name=\"{name}\",node=\"{node}\",phase=\"running\"}}"),
        "kubevirt_vmi_phase_transition_time_from_creation_seconds_count{phase=\"Running\"} >= 1".to_string(),
        format!("node:kubevirt_vmi_phase:sum{{node=\"{node}\",phase=\"running\"}} >= 1"),
        "cluster:kubevirt_virt_controller_up:sum == 1".to_string(),
        // The VM controller started this VMI: its queue processed items.
        "kubevirt_workqueue_adds_total{name=\"virt-controller-vm\"} >= 1".to_string(),
        "kubevirt_workqueue_work_duration_seconds_count{name=\"virt-controller-vmi\"} >= 1".to_string(),
        format!("kubevirt_vmi_vcpu_seconds_total{{name=\"{name}\",node=\"{node}\",id=\"0\"}} > 0"),
        format!("kubevirt_vmi_memory_resident_bytes{{name=\"{name}\"}} > 0"),
        format!("kubevirt_vmi_launcher_memory_overhead_bytes{{name=\"{name}\",node=\"{node}\"}} > 0"),
        format!("kubevirt_vmi_vcpu_delay_seconds_total{{name=\"{name}\",id=\"0\"}} >= 0"),
        format!("kubevirt_vmi_storage_read_traffic_bytes_total{{name=\"{name}\",drive=\"rootdisk\"}} > 0"),
        "up{job=\"kubevirt-rs\"} == 1".to_string(),
    ];
    let mut missing = Vec::new();
    let ok = wait_for(Duration::from_secs(60), || {
        missing = series
            .iter()
            .filter(|q| query(q).is_empty())
            .cloned()
            .collect();
        missing.is_empty()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ok,
        "Prometheus has no result for {missing:?}; its log:\n{}",
        std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
    );
}

/// The kernel command line `key=` of the demo guest's `guest/cmdline`.
fn guest_cmdline(key: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/cmdline");
    let text = std::fs::read_to_string(&file).expect("guest/cmdline");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("guest/cmdline has no {key}= line"))
        .to_string()
}

/// With `qemu-system-s390x` and the s390x guest (`guest/build.sh --arch s390x`) at hand, an
/// s390x VM (`s390-ccw-virtio`, SCLP console) runs beside them from the same `kubectl apply`;
/// without them that part is skipped loudly and the other two still run.
#[test]
fn an_arm64_vm_and_an_x86_64_vm_run_side_by_side_and_print_their_uname_m() {
    if !have_kubectl() {
        return;
    }
    let tmp = env!("CARGO_TARGET_TMPDIR");
    let Some(amd64) = kubevirt_testsupport::guest(tmp) else {
        return;
    };
    let Some(arm64) = kubevirt_testsupport::guest_arm64(tmp) else {
        return;
    };
    // (guest_s390x says SKIPPED and why when it returns None.)
    let s390x = kubevirt_testsupport::guest_s390x(tmp);
    let dir = tempfile::tempdir().expect("tempdir");
    // One image store with every guest: amd64's ref `latest`, arm64's ref `arm64`, s390x's
    // ref `s390x`.
    let mut guests = vec![amd64.as_path(), arm64.as_path()];
    guests.extend(s390x.as_deref());
    let images = kubevirt_testsupport::merged_image_store(&dir.path().join("images"), &guests);
    let mut server = Server::new(
        env!("CARGO_BIN_EXE_kubevirt-rs"),
        dir.path().join("data"),
        images,
    );
    server.start();
    // Both boot their kernel directly from the image (kernelBoot): arm64 has no disk to boot.
    let vm = |name: &str, arch: &str, kernel: &str, cmdline: &str, image: &str, memory: &str| {
        format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Always
  template:
    spec:
      architecture: {arch}
      domain:
        memory: {{guest: {memory}}}
        firmware:
          kernelBoot:
            kernelArgs: {cmdline}
            container: {{image: "kubevirt-rs/demo-guest:{image}", kernelPath: /boot/{kernel}, initrdPath: /boot/initrd.img}}
        devices:
          autoattachGraphicsDevice: false
          autoattachPodInterface: false
          disks:
          - name: cloudinit
            disk: {{bus: virtio}}
      terminationGracePeriodSeconds: 0
      volumes:
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
            #!/bin/sh
            echo "uname -m: $(uname -m)"
"#
        )
    };
    let mut manifest = vec![
        vm(
            "arm",
            "arm64",
            "vmlinuz",
            &guest_cmdline("arm64"),
            "arm64",
            "256Mi",
        ),
        vm(
            "x86",
            "amd64",
            "vmlinux",
            &guest_cmdline("q35"),
            "latest",
            "128Mi",
        ),
    ];
    if s390x.is_some() {
        manifest.push(vm(
            "z",
            "s390x",
            "vmlinuz",
            &guest_cmdline("s390x"),
            "s390x",
            "256Mi",
        ));
    }
    let manifest = manifest.join("---\n");
    let file = dir.path().join("arches.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    let start = Instant::now();
    let out = server.kubectl(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(
        out.contains("virtualmachine.kubevirt.io/arm created"),
        "{out}"
    );
    assert!(
        out.contains("virtualmachine.kubevirt.io/x86 created"),
        "{out}"
    );
    let serial = |name: &str| {
        std::fs::read_to_string(server.vmi_dir("default", name).serial_log()).unwrap_or_default()
    };
    let mut expected = vec![("arm", "uname -m: aarch64"), ("x86", "uname -m: x86_64")];
    if s390x.is_some() {
        expected.push(("z", "uname -m: s390x"));
    }
    let mut seen = vec![None; expected.len()];
    let ok = wait_for(BOOT, || {
        for (i, &(name, want)) in expected.iter().enumerate() {
            if seen[i].is_none() && serial(name).contains(want) {
                seen[i] = Some(start.elapsed());
            }
        }
        seen.iter().all(Option::is_some)
    });
    assert!(
        ok,
        "arm64 console:\n{}\nx86_64 console:\n{}\ns390x console:\n{}\n{}",
        serial("arm"),
        serial("x86"),
        serial("z"),
        server.kubectl(&["get", "vmi", "-o", "yaml"])
    );
    eprintln!(
        "uname -m printed after kubectl apply: arm64 {:?}, x86_64 {:?}, s390x {:?}",
        seen[0],
        seen[1],
        seen.get(2)
    );
    // Side by side: both Running at once, each with its own emulator, and the arm64 one
    // says it is emulated.
    assert_eq!(
        server.kubectl(&["get", "vmi", "-o", "jsonpath={.items[*].status.phase}"]),
        vec!["Running"; expected.len()].join(" ")
    );
    let cmdline = |name: &str| {
        let pid = server.qemu_pid("default", name).expect("a QEMU pid");
        std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
    };
    assert!(String::from_utf8_lossy(&cmdline("arm")).contains("qemu-system-aarch64"));
    assert!(String::from_utf8_lossy(&cmdline("x86")).contains("qemu-system-x86_64"));
    assert_eq!(
        server.jsonpath(
            "vmi",
            "arm",
            "{.status.conditions[?(@.type==\"SoftwareEmulation\")].status}"
        ),
        "True"
    );
    assert!(!serial("arm").contains("x86_64") && !serial("x86").contains("aarch64"));
    if s390x.is_some() {
        assert!(String::from_utf8_lossy(&cmdline("z")).contains("qemu-system-s390x"));
        assert_eq!(
            server.jsonpath(
                "vmi",
                "z",
                "{.status.conditions[?(@.type==\"SoftwareEmulation\")].status}"
            ),
            "True"
        );
    }
    // The node advertises both guest architectures.
    let labels = server.kubectl(&["get", "node", "node01", "-o", "jsonpath={.metadata.labels}"]);
    for label in [
        r#""guest-arch.node.kubevirt.io/amd64":"true""#,
        r#""guest-arch.node.kubevirt.io/arm64":"true""#,
        r#""kubernetes.io/arch":"amd64""#,
    ] {
        assert!(labels.contains(label), "{label} not in {labels}");
    }
    if s390x.is_some() {
        let label = r#""guest-arch.node.kubevirt.io/s390x":"true""#;
        assert!(labels.contains(label), "{label} not in {labels}");
    }
}

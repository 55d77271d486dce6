//! VM networking end to end, with real parts: `kubevirt-rs server` gives each VMI a network
//! namespace on the node's bridge through Debian's CNI plugins; the launcher bridges the guest
//! into it (masquerade with nftables, or bridge), serves it DHCP, and reports the addresses in
//! `status.interfaces`; unmodified kubectl is the user; QEMU (TCG here) boots the demo guest.
//!
//! User story: a masquerade VMI serves a port; a bridge VMI without cloud-init gets the pod's
//! address (in its status and in the guest) and reaches the first VMI at the address in its
//! status; the host reaches the declared port at `podIP:port` and not an undeclared one; a
//! passt VMI serves its declared port at its pod address; a launcher killed with SIGKILL and
//! deleted VMIs leave no namespace and no address behind. Multus: a NetworkAttachmentDefinition
//! gives two VMIs a secondary network with its own addresses, over which they talk.

use kubevirt_testsupport::{have_kubectl, wait_for, Server};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The pod network needs root, the CNI plugins, `ip` and `nft`; without them the server runs
/// VMs on user networking and this test has nothing to check.
fn pod_network_possible() -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP e2e_network: the pod network needs root");
        return false;
    }
    for (what, ok) in [
        (
            "the CNI plugins (containernetworking-plugins)",
            Path::new("/usr/lib/cni/bridge").exists(),
        ),
        (
            "ip (iproute2)",
            Command::new("ip").arg("-V").output().is_ok(),
        ),
        (
            "nft (nftables)",
            Command::new("nft").arg("-v").output().is_ok(),
        ),
        (
            "passt",
            Command::new("passt").arg("--version").output().is_ok(),
        ),
    ] {
        if !ok {
            eprintln!("SKIP e2e_network: {what} missing (scripts/deps.sh installs it)");
            return false;
        }
    }
    true
}

/// Types `command` on the VMI's serial console until its output contains `want`.
fn on_console(s: &Server, vmi: &str, command: &str, want: &str, timeout: Duration) -> String {
    let dir = s.vmi_dir("default", vmi);
    let mut last = String::new();
    let found = wait_for(timeout, || {
        let mut console = Command::new(&s.bin)
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
        last.contains(want)
    });
    assert!(
        found,
        "{vmi}: `{command}` never printed {want:?}; last:\n{last}"
    );
    last
}

fn vmi(name: &str, binding: &str, extra_iface: &str, user_data: Option<&str>) -> String {
    vmi_on(name, binding, extra_iface, user_data, None)
}

/// [`vmi`], with a second NIC (`blue`, bridge binding) on the Multus network `multus`.
fn vmi_on(
    name: &str,
    binding: &str,
    extra_iface: &str,
    user_data: Option<&str>,
    multus: Option<&str>,
) -> String {
    let (multus_iface, multus_net) = match multus {
        Some(n) => (
            "\n      - name: blue\n        bridge: {}".to_string(),
            format!("\n  - name: blue\n    multus:\n      networkName: {n}"),
        ),
        None => (String::new(), String::new()),
    };
    let (cloud_disk, cloud_volume) = match user_data {
        Some(script) => (
            "\n      - name: cloudinit\n        disk: {bus: virtio}".to_string(),
            format!(
                "\n  - name: cloudinit\n    cloudInitNoCloud:\n      userData: |\n        #!/bin/sh\n{}",
                script
                    .lines()
                    .map(|l| format!("        {l}\n"))
                    .collect::<String>()
            ),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    devices:
      disks:
      - name: rootdisk
        disk: {{bus: virtio}}{cloud_disk}
      interfaces:
      - name: default
        {binding}: {{}}{extra_iface}{multus_iface}
    resources:
      requests:
        memory: 128Mi
  networks:
  - name: default
    pod: {{}}{multus_net}
  volumes:
  - name: rootdisk
    containerDisk:
      image: kubevirt-rs/demo-guest:latest{cloud_volume}
"
    )
}

fn apply(s: &Server, dir: &Path, name: &str, yaml: &str) {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).expect("write manifest");
    let out = s.kubectl(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(out.contains("created"), "{out}");
}

/// The VMI's address once it runs (`status.interfaces[0].ipAddress`).
fn running_ip(s: &Server, name: &str) -> String {
    let mut ip = String::new();
    let ok = wait_for(Duration::from_secs(180), || {
        let out = s.jsonpath(
            "vmi",
            name,
            "{.status.phase} {.status.interfaces[0].ipAddress}",
        );
        match out.split_once(' ') {
            Some(("Running", a)) if !a.is_empty() => {
                ip = a.to_string();
                true
            }
            _ => false,
        }
    });
    assert!(
        ok,
        "{name} never ran with an address: {}",
        s.kubectl(&["get", "vmi", name, "-o", "yaml"])
    );
    ip
}

fn netns_of(s: &Server, name: &str) -> String {
    format!(
        "/run/netns/kvrs-{}",
        s.jsonpath("vmi", name, "{.metadata.uid}")
    )
}

/// A TCP connection from the host: what the peer sent, if it accepted.
fn fetch(addr: &str) -> Option<String> {
    use std::io::Read;
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    // Nothing to send: say so, as `nc </dev/null` does (the guest's `nc -l` waits for it).
    c.shutdown(std::net::Shutdown::Write).ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn vmis_on_the_pod_network_reach_each_other_and_the_host_reaches_declared_ports() {
    if !have_kubectl() || !pod_network_possible() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);

    // A masquerade VMI that declares port 8080 and also listens on 9090.
    let serve = "while :; do echo served-by-$(hostname) | busybox nc -l -p 8080; done &\n\
                 while :; do echo undeclared | busybox nc -l -p 9090; done &";
    apply(
        &s,
        dir.path(),
        "srv",
        &vmi(
            "srv",
            "masquerade",
            "\n        ports:\n        - {name: http, port: 8080}",
            Some(serve),
        ),
    );
    // A bridge VMI without cloud-init: its address comes from the network, not the guest.
    apply(&s, dir.path(), "cli", &vmi("cli", "bridge", "", None));

    let srv_ip = running_ip(&s, "srv");
    let cli_ip = running_ip(&s, "cli");
    assert_ne!(srv_ip, cli_ip);
    for ip in [&srv_ip, &cli_ip] {
        assert!(ip.starts_with("10.244.0."), "a pod CIDR address: {ip}");
    }
    // The bridge binding hands the pod's address to the guest.
    on_console(
        &s,
        "cli",
        "ip -4 addr show eth0",
        &format!("inet {cli_ip}/24"),
        Duration::from_secs(120),
    );
    // Guest to guest, at the address in the status.
    on_console(
        &s,
        "cli",
        &format!("busybox nc -w 3 {srv_ip} 8080 </dev/null"),
        "served-by-srv",
        Duration::from_secs(120),
    );
    // From the host: the declared port is forwarded, the undeclared one is not.
    let mut got = None;
    assert!(
        wait_for(Duration::from_secs(30), || {
            got = fetch(&format!("{srv_ip}:8080"));
            got.as_deref().is_some_and(|g| g.contains("served-by-srv"))
        }),
        "host → {srv_ip}:8080: {got:?}"
    );
    assert_eq!(
        fetch(&format!("{srv_ip}:9090")).filter(|g| !g.is_empty()),
        None,
        "port 9090 is not in the interface's ports"
    );

    // passt (`passtBinding`): the guest takes the pod's address through passt, which
    // forwards the declared port.
    apply(
        &s,
        dir.path(),
        "pst",
        &vmi(
            "pst",
            "passtBinding",
            "\n        ports:\n        - {port: 8080}",
            Some("while :; do echo served-by-$(hostname) | busybox nc -l -p 8080; done &"),
        ),
    );
    let pst_ip = running_ip(&s, "pst");
    assert!(pst_ip.starts_with("10.244.0."), "{pst_ip}");
    assert!(
        wait_for(Duration::from_secs(120), || {
            got = fetch(&format!("{pst_ip}:8080"));
            got.as_deref().is_some_and(|g| g.contains("served-by-pst"))
        }),
        "host → {pst_ip}:8080 through passt: {got:?}\nlauncher.log:\n{}\nserial.log:\n{}",
        std::fs::read_to_string(s.vmi_dir("default", "pst").launcher_log()).unwrap_or_default(),
        std::fs::read_to_string(s.vmi_dir("default", "pst").serial_log()).unwrap_or_default()
    );
    on_console(
        &s,
        "pst",
        "ip -4 addr show eth0",
        &format!("inet {pst_ip}/"),
        Duration::from_secs(60),
    );

    // kill -9 of a launcher (QEMU dies with it): the VMI fails and its network goes.
    let srv_ns = netns_of(&s, "srv");
    assert!(Path::new(&srv_ns).exists(), "{srv_ns}");
    let leases = Path::new("/run/kubevirt-rs/ipam/kubevirt-rs-pod-network");
    assert!(leases.join(&srv_ip).exists(), "srv holds its lease");
    let launcher = s.launcher_pid("default", "srv").expect("launcher pid");
    // SAFETY: kill(2) on a pid we read; at worst it fails.
    unsafe { libc::kill(launcher as i32, libc::SIGKILL) };
    assert!(
        wait_for(Duration::from_secs(60), || s.jsonpath(
            "vmi",
            "srv",
            "{.status.phase}"
        ) == "Failed"),
        "srv did not fail after its launcher was killed"
    );
    assert!(
        wait_for(Duration::from_secs(30), || !Path::new(&srv_ns).exists()
            && !leases.join(&srv_ip).exists()),
        "srv's namespace or lease stayed behind"
    );

    // Deleting a VMI removes its network too.
    let cli_ns = netns_of(&s, "cli");
    s.kubectl(&["delete", "vmi", "cli", "srv", "pst", "--wait=false"]);
    assert!(
        wait_for(Duration::from_secs(90), || s
            .kubectl(&["get", "vmi", "-o", "name"])
            .trim()
            .is_empty()),
        "the VMIs were not removed"
    );
    assert!(!Path::new(&cli_ns).exists(), "cli's namespace stayed");
    assert!(!leases.join(&cli_ip).exists(), "cli's lease stayed");
    s.kill9();
}

/// Multus: a NetworkAttachmentDefinition (a bridge with host-local addresses) attaches a
/// secondary NIC to two VMIs; each gets an address from the NAD's range, reported with
/// `infoSource: domain, multus-status`, and the guests reach each other over it. A VMI whose
/// NAD is missing waits with KubeVirt's message; a NAD that would reach the host is refused
/// at admission; an SR-IOV virtual function that is not on the node fails the VMI, named.
#[test]
fn multus_secondary_networks_connect_guests_and_missing_ones_are_named() {
    if !have_kubectl() || !pod_network_possible() {
        return;
    }
    let Some(guest) = kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    // The bridge plugin makes the NAD's bridge on the host; it goes at the end.
    struct Bridge(&'static str);
    impl Drop for Bridge {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", self.0]).status();
        }
    }
    let _bridge = Bridge("kvrs-e2e-blue");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::started_with_guest(env!("CARGO_BIN_EXE_kubevirt-rs"), dir.path(), &guest);

    // A NAD that names a host path is refused, with the key named.
    let bad = dir.path().join("bad-nad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {name: bad}\n\
         spec:\n  config: '{\"cniVersion\":\"0.3.1\",\"name\":\"bad\",\"type\":\"bridge\",\"ipam\":{\"type\":\"host-local\",\"subnet\":\"10.9.0.0/24\",\"dataDir\":\"/etc\"}}'\n",
    )
    .expect("write");
    let out = s.kubectl(&["apply", "-f", bad.to_str().expect("utf8")]);
    assert!(
        out.contains("is invalid") && out.contains("spec.config") && out.contains("dataDir"),
        "{out}"
    );

    let nad = "apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: blue
spec:
  config: '{\"cniVersion\":\"0.3.1\",\"name\":\"e2e-blue\",\"type\":\"bridge\",\"bridge\":\"kvrs-e2e-blue\",\"ipam\":{\"type\":\"host-local\",\"subnet\":\"10.251.7.0/24\"}}'
";
    apply(&s, dir.path(), "blue", nad);
    assert!(s
        .kubectl(&["get", "net-attach-def", "-o", "name"])
        .contains("blue"));
    let with_blue = |name: &str, network: &str, user_data: &str| {
        vmi_on(name, "masquerade", "", Some(user_data), Some(network))
    };
    // A missing NAD: the VMI waits, and says which.
    apply(&s, dir.path(), "lost", &with_blue("lost", "nosuch", "true"));
    let mut cond = String::new();
    assert!(
        wait_for(Duration::from_secs(60), || {
            cond = s.jsonpath(
                "vmi",
                "lost",
                "{.status.conditions[?(@.type=='Synchronized')].message}",
            );
            cond.contains("failed to locate network attachment definition default/nosuch")
        }),
        "lost: {cond}\n{}",
        s.kubectl(&["get", "vmi", "lost", "-o", "yaml"])
    );
    assert_ne!(s.jsonpath("vmi", "lost", "{.status.phase}"), "Running");
    s.kubectl(&["delete", "vmi", "lost", "--wait=false"]);

    // SR-IOV: the NAD names a virtual function; one that is not on this node fails the VMI
    // at start with the device named (there is no SR-IOV hardware here; the rendering is
    // covered by the launcher's golden argv test).
    apply(
        &s,
        dir.path(),
        "fast",
        "apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: fast
spec:
  config: '{\"cniVersion\":\"0.3.1\",\"name\":\"fast\",\"type\":\"sriov\",\"deviceID\":\"0000:ff:1f.7\"}'
",
    );
    apply(
        &s,
        dir.path(),
        "vf",
        &vmi_on("vf", "masquerade", "", None, Some("fast")).replace(
            "      - name: blue\n        bridge: {}",
            "      - name: blue\n        sriov: {}",
        ),
    );
    let mut events = String::new();
    assert!(
        wait_for(Duration::from_secs(60), || {
            events = s.kubectl(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=vf",
            ]);
            s.jsonpath("vmi", "vf", "{.status.phase}") == "Failed"
                && events.contains("PCI device 0000:ff:1f.7 is not present on this node")
        }),
        "vf: {events}\n{}",
        s.kubectl(&["get", "vmi", "vf", "-o", "yaml"])
    );
    s.kubectl(&["delete", "vmi", "vf", "--wait=false"]);

    apply(
        &s,
        dir.path(),
        "ma",
        &with_blue(
            "ma",
            "blue",
            "while :; do echo over-blue-from-$(hostname) | busybox nc -l -p 7070; done &",
        ),
    );
    apply(
        &s,
        dir.path(),
        "mb",
        &with_blue("mb", "default/blue", "true"),
    );
    let blue_ip = |name: &str| {
        let mut got = String::new();
        let ok = wait_for(Duration::from_secs(180), || {
            got = s.jsonpath(
                "vmi",
                name,
                "{.status.phase} {.status.interfaces[?(@.name=='blue')].ipAddress} {.status.interfaces[?(@.name=='blue')].infoSource}",
            );
            got.starts_with("Running 10.251.7.")
        });
        assert!(
            ok,
            "{name}: {got}\n{}",
            s.kubectl(&["get", "vmi", name, "-o", "yaml"])
        );
        assert!(got.ends_with("domain, multus-status"), "{got}");
        got.split(' ').nth(1).unwrap_or_default().to_string()
    };
    let (a, b) = (blue_ip("ma"), blue_ip("mb"));
    assert_ne!(a, b);
    // The guest holds the NAD's address on its second NIC, and reaches the other guest there.
    on_console(
        &s,
        "mb",
        "ip -4 addr show eth1",
        &format!("inet {b}/24"),
        Duration::from_secs(120),
    );
    on_console(
        &s,
        "mb",
        &format!("busybox nc -w 3 {a} 7070 </dev/null"),
        "over-blue-from-ma",
        Duration::from_secs(120),
    );
    // Deleting them (and the NAD first: the cached configuration is what DEL runs) gives
    // the secondary addresses back.
    let leases = Path::new("/run/kubevirt-rs/ipam/e2e-blue");
    assert!(leases.join(&a).exists(), "ma holds its blue lease");
    s.kubectl(&["delete", "net-attach-def", "blue"]);
    s.kubectl(&["delete", "vmi", "ma", "mb", "--wait=false"]);
    assert!(
        wait_for(Duration::from_secs(90), || s
            .kubectl(&["get", "vmi", "-o", "name"])
            .trim()
            .is_empty()),
        "the VMIs were not removed"
    );
    assert!(
        !leases.join(&a).exists() && !leases.join(&b).exists(),
        "a blue lease stayed behind"
    );
    s.kill9();
}

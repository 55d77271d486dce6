//! The DHCP server against a real client: busybox `udhcpc` in a network namespace, on the
//! far end of a veth pair whose near end the server is bound to (the shape of a guest tap on
//! `k6t-<iface>`). Needs root, `ip` and `busybox`; skips loudly otherwise.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubevirt_launcher::dhcp::{DhcpServer, Lease};

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether this test can run here; prints why not.
fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root (network namespaces, veth, port 67)");
        return false;
    }
    for cmd in ["ip", "busybox"] {
        if !have(cmd) {
            eprintln!("SKIPPED {test}: `{cmd}` is not installed");
            return false;
        }
    }
    true
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace with the client end of a veth pair; deleted on drop, panic or not.
struct Net {
    ns: String,
    host: String,
    client: String,
    host_ip: Ipv4Addr,
}

impl Net {
    /// `tag` tells the tests apart (names ≤ 15 bytes: `dh<pid><tag>s`).
    fn new(tag: char, subnet: u8, client_mac: &str) -> Net {
        let pid = std::process::id();
        let net = Net {
            ns: format!("kvrs-dhcptest-{pid}{tag}"),
            host: format!("dh{pid}{tag}s"),
            client: format!("dh{pid}{tag}c"),
            host_ip: Ipv4Addr::new(10, subnet, (pid % 250) as u8, 1),
        };
        net.cleanup();
        run(&["ip", "netns", "add", &net.ns]);
        run(&[
            "ip",
            "link",
            "add",
            &net.host,
            "type",
            "veth",
            "peer",
            "name",
            &net.client,
        ]);
        run(&["ip", "link", "set", &net.client, "address", client_mac]);
        run(&["ip", "link", "set", &net.client, "netns", &net.ns]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.host_ip),
            "dev",
            &net.host,
        ]);
        run(&["ip", "link", "set", &net.host, "up"]);
        run(&[
            "ip",
            "netns",
            "exec",
            &net.ns,
            "ip",
            "link",
            "set",
            &net.client,
            "up",
        ]);
        run(&[
            "ip", "netns", "exec", &net.ns, "ip", "link", "set", "lo", "up",
        ]);
        net
    }

    fn cleanup(&self) {
        for args in [
            &["ip", "netns", "del", &self.ns][..],
            &["ip", "link", "del", &self.host][..],
        ] {
            let _ = Command::new(args[0])
                .args(&args[1..])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Prints what udhcpc hands its script on `bound`, one `key=value` a line.
const SCRIPT: &str = r#"#!/bin/sh
case "$1" in
bound|renew)
    for v in ip subnet mask router dns hostname mtu search staticroutes lease serverid; do
        eval "echo $v=\$$v"
    done
    ;;
esac
"#;

/// Runs udhcpc in `net`'s namespace; returns (success, stdout, stderr).
async fn udhcpc(net: &Net, tries: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("script.sh");
    std::fs::write(&script, SCRIPT).expect("write script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let child = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.ns,
            "busybox",
            "udhcpc",
            "-i",
            &net.client,
        ])
        .args(["-n", "-q", "-f", "-t", tries, "-T", "1", "-A", "1", "-s"])
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn udhcpc");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("udhcpc did not finish in 30 s")
        .expect("udhcpc output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn value<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("udhcpc script printed no {key}: {stdout}"))
}

#[tokio::test]
async fn udhcpc_gets_its_lease() {
    if !can_run("udhcpc_gets_its_lease") {
        return;
    }
    let mac = [0x02, 0x4b, 0x56, 0x00, 0x00, 0x01];
    let net = Net::new('a', 77, "02:4b:56:00:00:01");
    let lease = Lease {
        mac,
        ip: Ipv4Addr::new(10, 77, net.host_ip.octets()[2], 2),
        prefix: 24,
        gateway: Some(net.host_ip),
        routes: vec![(Ipv4Addr::new(192, 0, 2, 0), 24, net.host_ip)],
        dns: vec![Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(10, 96, 0, 11)],
        search: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
        mtu: Some(1400),
        hostname: Some("testvmi".into()),
    };
    let server = DhcpServer::bind(&net.host, net.host_ip, vec![lease.clone()]).expect("bind");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let sink = acked.clone();
    let task = tokio::spawn(server.serve(move |l: &Lease| {
        sink.lock().expect("lock").push(l.clone());
    }));

    let (ok, stdout, stderr) = udhcpc(&net, "5").await;
    task.abort();
    eprintln!("udhcpc script output:\n{stdout}");
    assert!(ok, "udhcpc failed:\n{stdout}\n{stderr}");
    assert_eq!(value(&stdout, "ip"), lease.ip.to_string());
    assert_eq!(value(&stdout, "subnet"), "255.255.255.0");
    assert_eq!(value(&stdout, "router"), net.host_ip.to_string());
    assert_eq!(
        value(&stdout, "dns").split_whitespace().collect::<Vec<_>>(),
        ["10.96.0.10", "10.96.0.11"]
    );
    assert_eq!(value(&stdout, "hostname"), "testvmi");
    assert_eq!(value(&stdout, "mtu"), "1400");
    assert_eq!(value(&stdout, "serverid"), net.host_ip.to_string());
    assert_eq!(value(&stdout, "lease"), u32::MAX.to_string());
    assert_eq!(
        value(&stdout, "staticroutes"),
        format!("192.0.2.0/24 {gw} 0.0.0.0/0 {gw}", gw = net.host_ip)
    );
    // Option 119 is decoded only by busybox built with RFC 3397 support; check it when there.
    let search = value(&stdout, "search");
    if !search.is_empty() {
        assert_eq!(search, "default.svc.cluster.local cluster.local");
    }
    let acked = acked.lock().expect("lock");
    assert!(!acked.is_empty(), "on_ack was not called");
    assert!(acked.iter().all(|l| *l == lease), "on_ack got {acked:?}");
}

#[tokio::test]
async fn unknown_mac_gets_nothing() {
    if !can_run("unknown_mac_gets_nothing") {
        return;
    }
    let net = Net::new('b', 78, "02:4b:56:00:00:02");
    let lease = Lease {
        mac: [0x02, 0x4b, 0x56, 0x00, 0x00, 0x99],
        ip: Ipv4Addr::new(10, 78, net.host_ip.octets()[2], 2),
        prefix: 24,
        gateway: Some(net.host_ip),
        routes: vec![],
        dns: vec![],
        search: vec![],
        mtu: None,
        hostname: None,
    };
    let server = DhcpServer::bind(&net.host, net.host_ip, vec![lease]).expect("bind");
    let acked = Arc::new(Mutex::new(0usize));
    let sink = acked.clone();
    let task = tokio::spawn(server.serve(move |_: &Lease| {
        *sink.lock().expect("lock") += 1;
    }));

    let (ok, stdout, stderr) = udhcpc(&net, "3").await;
    task.abort();
    assert!(
        !ok,
        "udhcpc got a lease it should not have:\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains("ip="),
        "script was called with bound: {stdout}"
    );
    assert_eq!(*acked.lock().expect("lock"), 0);
}

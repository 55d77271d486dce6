//! The CNI runtime against Debian's real plugins (`containernetworking-plugins`: bridge,
//! host-local, portmap) in real network namespaces. Needs root and the plugins; without them
//! every test says so on stderr and passes without running.

use kubevirt_handler::cni::{Attachment, Cni, CniError, NetworkConfigList};
use std::path::{Path, PathBuf};
use std::process::Command;

fn ready(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {test}: needs root (network namespaces, bridges)");
        return false;
    }
    if !Path::new("/usr/lib/cni/bridge").exists() {
        eprintln!("SKIP {test}: /usr/lib/cni/bridge missing (apt-get install containernetworking-plugins)");
        return false;
    }
    true
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A named network namespace, deleted when dropped (with the bridge the test used).
struct Netns {
    name: String,
    bridge: String,
}

impl Netns {
    fn new(name: &str, bridge: &str) -> Netns {
        let _ = ip(&["netns", "del", name]);
        let out = ip(&["netns", "add", name]);
        assert!(out.trim().is_empty(), "ip netns add {name}: {out}");
        Netns {
            name: name.into(),
            bridge: bridge.into(),
        }
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }
    fn exec(&self, args: &[&str]) -> String {
        let mut a = vec!["netns", "exec", &self.name];
        a.extend_from_slice(args);
        ip(&a)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

fn conflist(bridge: &str, subnet: &str, ipam_dir: &Path) -> NetworkConfigList {
    NetworkConfigList::parse(&format!(
        r#"{{"cniVersion":"1.0.0","name":"kvrs-test","plugins":[
          {{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,
            "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{subnet}"}}]],
                    "routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}"}}}},
          {{"type":"portmap","capabilities":{{"portMappings":true}},"snat":false}}]}}"#,
        ipam_dir.display()
    ))
    .expect("conflist")
}

/// ADD gives the namespace an address from the range (the one the result reports), CHECK
/// agrees, DEL removes the interface and frees the address, and DEL again is no error.
#[tokio::test]
async fn add_check_del_with_the_standard_plugins() {
    if !ready("add_check_del_with_the_standard_plugins") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ns = Netns::new("kvrs-cni-t1", "kvrs-t1");
    let net = conflist("kvrs-t1", "10.250.1.0/24", &tmp.path().join("ipam"));
    let cni = Cni::new(tmp.path().join("cache"));
    let at = Attachment {
        container_id: "vmi-uid-1".into(),
        netns: ns.path(),
        ifname: "eth0".into(),
        args: vec![
            ("K8S_POD_NAMESPACE".into(), "default".into()),
            ("K8S_POD_NAME".into(), "vm1".into()),
        ],
    };
    let t0 = std::time::Instant::now();
    let r = cni.add(&net, &at).await.expect("ADD");
    eprintln!(
        "CNI ADD (bridge + host-local + portmap): {:?}",
        t0.elapsed()
    );
    let addrs = r.addresses_of("eth0");
    assert_eq!(addrs.len(), 1, "{r:?}");
    assert!(addrs[0].starts_with("10.250.1."), "{addrs:?}");
    let shown = ns.exec(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(shown.contains(&format!("{}/24", addrs[0])), "{shown}");
    let mac = r.mac_of("eth0").expect("mac").to_string();
    assert!(ns.exec(&["ip", "link", "show", "eth0"]).contains(&mac));
    assert_eq!(cni.cached(&net, &at).unwrap().as_ref(), Some(&r));
    cni.check(&net, &at).await.expect("CHECK");
    // The address is leased in host-local's directory.
    let lease = tmp.path().join("ipam/kvrs-test").join(&addrs[0]);
    assert!(lease.exists(), "{}", lease.display());

    cni.del(&net, &at).await.expect("DEL");
    assert!(!lease.exists(), "the lease is freed");
    assert!(
        ns.exec(&["ip", "link", "show", "eth0"])
            .contains("does not exist"),
        "eth0 is gone"
    );
    assert_eq!(cni.cached(&net, &at).unwrap(), None);
    cni.del(&net, &at).await.expect("DEL is idempotent");
}

/// A plugin that fails reports its own message, and the ADD is undone: no interface in the
/// namespace, no lease.
#[tokio::test]
async fn a_failing_plugin_reports_its_message_and_leaves_nothing_behind() {
    if !ready("a_failing_plugin_reports_its_message_and_leaves_nothing_behind") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ns = Netns::new("kvrs-cni-t2", "kvrs-t2");
    let ipam = tmp.path().join("ipam");
    // bridge + host-local succeed, then portmap is given a configuration it refuses.
    let net = NetworkConfigList::parse(&format!(
        r#"{{"cniVersion":"1.0.0","name":"kvrs-test","plugins":[
          {{"type":"bridge","bridge":"kvrs-t2",
            "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.250.2.0/24"}}]],"dataDir":"{}"}}}},
          {{"type":"portmap","capabilities":{{"portMappings":true}},"runtimeConfig":{{"portMappings":[{{"hostPort":-1,"containerPort":80,"protocol":"tcp"}}]}}}}]}}"#,
        ipam.display()
    ))
    .unwrap();
    let cni = Cni::new(tmp.path().join("cache"));
    let at = Attachment {
        container_id: "vmi-uid-2".into(),
        netns: ns.path(),
        ifname: "eth0".into(),
        args: vec![],
    };
    let e = cni.add(&net, &at).await.expect_err("portmap must refuse");
    match &e {
        CniError::Plugin {
            plugin,
            command,
            msg,
            ..
        } => {
            assert_eq!((plugin.as_str(), *command), ("portmap", "ADD"), "{e}");
            assert!(!msg.is_empty(), "{e}");
        }
        other => panic!("not the plugin's error: {other}"),
    }
    assert!(
        ns.exec(&["ip", "link", "show", "eth0"])
            .contains("does not exist"),
        "the failed ADD was undone"
    );
    let leases: Vec<_> = std::fs::read_dir(ipam.join("kvrs-test"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(leases.is_empty(), "leases left: {leases:?}");
    assert_eq!(cni.cached(&net, &at).unwrap(), None);
}

/// A plugin type that is not installed is named, with where it was looked for.
#[tokio::test]
async fn a_missing_plugin_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cni = Cni::new(tmp.path().join("cache"));
    cni.plugin_dirs = vec![tmp.path().join("plugins")];
    let net = NetworkConfigList::parse(r#"{"name":"n","type":"no-such-plugin"}"#).unwrap();
    let at = Attachment {
        container_id: "c".into(),
        netns: "/var/run/netns/none".into(),
        ifname: "eth0".into(),
        args: vec![],
    };
    let e = cni.add(&net, &at).await.unwrap_err().to_string();
    assert!(e.contains("no-such-plugin") && e.contains("plugins"), "{e}");
}

/// The pod network of two VMIs: each namespace gets an address from the node's CIDR, the two
/// exchange TCP data over the node bridge at those addresses, and a namespace whose VMI is
/// gone is collected (CNI DEL, namespace removed, lease freed).
#[tokio::test]
async fn two_pod_networks_talk_and_stale_ones_are_collected() {
    use kubevirt_handler::podnet::{Attach, NodeNetwork, PodNetwork};
    if !ready("two_pod_networks_talk_and_stale_ones_are_collected") {
        return;
    }
    if Command::new("busybox")
        .arg("nc")
        .arg("--help")
        .output()
        .is_err()
    {
        eprintln!("SKIP two_pod_networks_talk_and_stale_ones_are_collected: busybox missing");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeNetwork {
        cidr: "10.250.3.0/24".into(),
        bridge: "kvrs-t3".into(),
        ipam_dir: tmp.path().join("ipam"),
    };
    let pods = PodNetwork::new(node, Cni::new(tmp.path().join("cache"))).unwrap();
    let a_uid = "00000000-0000-4000-8000-00000000000a";
    let b_uid = "00000000-0000-4000-8000-00000000000b";
    // Whatever happens, nothing stays behind.
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = ip(&["netns", "del", n]);
            }
            let _ = ip(&["link", "del", "kvrs-t3"]);
            let _ = ip(&["link", "del", "kvrs-t3b"]);
        }
    }
    let _cleanup = Cleanup(vec![
        PodNetwork::netns_name(a_uid).unwrap(),
        PodNetwork::netns_name(b_uid).unwrap(),
    ]);
    // The pod network on eth0 and a Multus-style secondary network (its own bridge and
    // range, confined as a NetworkAttachmentDefinition's configuration is) on net1.
    let blue = pods
        .node
        .confine(
            "default/blue",
            r#"{"cniVersion":"0.3.1","name":"blue-t3","type":"bridge","bridge":"kvrs-t3b","ipam":{"type":"host-local","subnet":"10.250.4.0/24"}}"#,
        )
        .expect("a bridge NAD is allowed");
    let networks = [
        PodNetwork::default_attach("default"),
        Attach {
            network: "blue".into(),
            ifname: "net1".into(),
            config: Some(blue),
        },
    ];
    let t0 = std::time::Instant::now();
    let a = pods
        .setup(a_uid, "default", "a", &networks)
        .await
        .expect("setup a");
    eprintln!("pod network setup (netns + 2 CNI ADD): {:?}", t0.elapsed());
    let b = pods
        .setup(b_uid, "default", "b", &networks)
        .await
        .expect("setup b");
    let (a_ips, b_ips) = (a.ips("eth0"), b.ips("eth0"));
    assert!(a_ips[0].starts_with("10.250.3.") && b_ips[0].starts_with("10.250.3."));
    assert_ne!(a_ips, b_ips);
    assert!(a.ips("net1")[0].starts_with("10.250.4."), "{a:?}");
    let info = a.info();
    assert_eq!(
        info.interfaces
            .iter()
            .map(|i| (i.network.as_str(), i.interface.as_str()))
            .collect::<Vec<_>>(),
        [("default", "eth0"), ("blue", "net1")]
    );
    // Setup again is a no-op that reports the same network.
    assert_eq!(
        pods.setup(a_uid, "default", "a", &networks).await.unwrap(),
        a
    );

    let a_ns = PodNetwork::netns_name(a_uid).unwrap();
    let b_ns = PodNetwork::netns_name(b_uid).unwrap();
    // b reaches a over both networks.
    for to in [a_ips[0].clone(), a.ips("net1")[0].clone()] {
        let server = Command::new("ip")
            .args(["netns", "exec", &a_ns, "busybox", "nc", "-l", "-p", "5555"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut sent = false;
        for _ in 0..50 {
            let st = Command::new("ip")
                .args(["netns", "exec", &b_ns, "sh", "-c"])
                .arg(format!("echo hello-from-b | busybox nc -w 2 {to} 5555"))
                .status()
                .unwrap();
            if st.success() {
                sent = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(sent, "b could not connect to {to}:5555");
        let out = server.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello-from-b");
    }

    // b's VMI is gone: its network is collected, a's stays.
    let live = std::collections::BTreeSet::from([a_uid.to_string()]);
    let removed = pods.collect_garbage(&live).await;
    assert!(removed.contains(&b_uid.to_string()), "{removed:?}");
    assert!(!removed.contains(&a_uid.to_string()), "{removed:?}");
    assert!(!Path::new("/run/netns").join(&b_ns).exists());
    let lease = |net: &str, ip: &str| tmp.path().join("ipam").join(net).join(ip).exists();
    assert!(!lease("kubevirt-rs-pod-network", &b_ips[0]));
    assert!(
        !lease("blue-t3", &b.ips("net1")[0]),
        "the secondary lease went too"
    );
    assert!(lease("kubevirt-rs-pod-network", &a_ips[0]));
    assert!(lease("blue-t3", &a.ips("net1")[0]));
    pods.teardown(a_uid).await.expect("teardown a");
    pods.teardown(a_uid).await.expect("teardown is idempotent");
    assert!(!Path::new("/run/netns").join(&a_ns).exists());
    assert!(!lease("blue-t3", &a.ips("net1")[0]));

    // A secondary network whose plugin fails: the plugin's message, and nothing left (the
    // pod network attached before it is undone).
    let broken = pods
        .node
        .confine(
            "default/broken",
            r#"{"cniVersion":"0.3.1","name":"broken-t3","type":"macvlan","master":"nosuchlink0","ipam":{"type":"host-local","subnet":"10.250.5.0/24"}}"#,
        )
        .unwrap();
    let e = pods
        .setup(
            a_uid,
            "default",
            "a",
            &[
                PodNetwork::default_attach("default"),
                Attach {
                    network: "broken".into(),
                    ifname: "net1".into(),
                    config: Some(broken),
                },
            ],
        )
        .await
        .expect_err("macvlan on a missing link fails")
        .to_string();
    // The plugin's own message (macvlan: "Link not found").
    assert!(e.contains("CNI plugin macvlan failed (ADD)"), "{e}");
    assert!(!Path::new("/run/netns").join(&a_ns).exists());
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("ipam/kubevirt-rs-pod-network"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| n
            .to_str()
            .is_some_and(|n| n.parse::<std::net::IpAddr>().is_err())),
        "no pod network lease left: {left:?}"
    );
    assert!(pods.attached().is_empty(), "{:?}", pods.attached());
}

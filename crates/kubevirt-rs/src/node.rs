//! virt-handler's wiring, shared by `kubevirt-rs server` (its own node) and `kubevirt-rs node`
//! (another node joining a server, as KubeVirt's virt-handler DaemonSet runs one handler per
//! node). The node process runs the handler and its launchers only; the API server,
//! virt-controller (placement) and virt-api stay in the server.

use crate::cluster_config;
use anyhow::{Context, Result};
use kube::Client;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The handler's flags, the same for `server` and `node`.
#[derive(clap::Args, Debug, Clone)]
pub struct HandlerArgs {
    /// OCI image layout that containerDisk images are resolved from
    /// (default: DATA_DIR/images).
    #[arg(long)]
    pub image_store: Option<PathBuf>,
    /// A host directory that PersistentVolume `local.path`s and hostDisk paths may point
    /// beneath (repeatable). Without one, VMs reach only the provisioner's own volumes.
    #[arg(long = "host-path-root", value_name = "DIR")]
    pub host_path_roots: Vec<PathBuf>,
    /// The user QEMU runs as (KubeVirt's `qemu`, 107); 0 keeps QEMU as root, for hosts whose
    /// /dev/kvm or hugepages only root may open.
    #[arg(long, default_value_t = kubevirt_launcher::confine::QemuUser::KUBEVIRT.uid)]
    pub qemu_uid: u32,
    /// QEMU's group (107).
    #[arg(long, default_value_t = kubevirt_launcher::confine::QemuUser::KUBEVIRT.gid)]
    pub qemu_gid: u32,
    /// The node's pod network: `auto` gives every VMI a network namespace on the node's
    /// bridge through the standard CNI plugins when this host can (root, plugins, `ip`,
    /// `nft`), else QEMU user networking; `user` always uses user networking.
    #[arg(long, default_value = "auto", value_parser = ["auto", "user"])]
    pub pod_network: String,
    /// The pod CIDR VMIs on this node take their addresses from (host-local IPAM).
    #[arg(long, default_value = kubevirt_handler::podnet::NodeNetwork::DEFAULT_CIDR,
          value_parser = parse_ipv4_cidr)]
    pub pod_cidr: String,
    /// Seconds between the handler's Node heartbeats (KubeVirt: 60).
    #[arg(long, value_name = "SECONDS", default_value_t = kubevirt_handler::HEARTBEAT_INTERVAL.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_interval: u64,
    /// The address other nodes reach this node's agent at (the Node's `InternalIP`): live
    /// migrations into this node arrive there. Several nodes on one machine can each take a
    /// loopback address of their own (127.0.0.2, ...).
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_node_address)]
    pub node_address: std::net::IpAddr,
    /// The port of this node agent's mutual-TLS endpoint on --node-address, through which
    /// virt-api reaches the node's VMIs (KubeVirt's virt-handler uses 8186). The default, 0,
    /// takes any free port, as several nodes may share an address on one machine; the Node
    /// publishes the one taken.
    #[arg(long, default_value_t = 0)]
    pub handler_port: u16,
}

/// A node address must be one other nodes can connect to: not unspecified, multicast or
/// broadcast.
pub fn parse_node_address(s: &str) -> Result<std::net::IpAddr, String> {
    let ip: std::net::IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address"))?;
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(format!(
            "{ip} cannot be connected to: give the address other nodes reach this one at"
        ));
    }
    Ok(ip)
}

/// `kubevirt-rs node`.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// Log lines on stderr: `text`, or `json` (one object a line; docs/observability.md).
    /// The launchers this node starts log the same way.
    #[arg(long, default_value = "text", value_parser = kubevirt_launcher::logging::LogFormat::parse)]
    pub log_format: kubevirt_launcher::logging::LogFormat,
    /// The kubeconfig of the server this node joins (e.g. the server's DATA_DIR/kubeconfig).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// This node's name: the Node object it registers, and what VMIs select with
    /// `kubernetes.io/hostname` (a DNS-1123 subdomain).
    #[arg(long, value_parser = parse_node_name)]
    node_name: String,
    /// Where this node keeps its VMI directories; not the server's data directory, nor
    /// another node's.
    #[arg(long)]
    data_dir: PathBuf,
    /// The port of this node agent's `/metrics` on --node-address (HTTPS with the node's
    /// certificate, a bearer token allowed to `get` `/metrics`; KubeVirt's virt-handler uses
    /// 8443). The default, 0, takes any free port; the Node publishes the one taken
    /// (annotation `kubevirt-rs.io/handler-metrics-endpoint`).
    #[arg(long, default_value_t = 0)]
    metrics_port: u16,
    #[command(flatten)]
    handler: HandlerArgs,
}

/// A Node's name must be a DNS-1123 subdomain (Kubernetes' rule for Node names).
pub fn parse_node_name(s: &str) -> Result<String, String> {
    match kubevirt_api::names::dns1123_subdomain(s) {
        None => Ok(s.to_string()),
        Some(problem) => Err(format!(
            "{s:?} is not a valid node name: a DNS-1123 subdomain {problem}"
        )),
    }
}

/// An IPv4 network in CIDR form with room for the gateway and pods (a prefix of at most 30).
pub fn parse_ipv4_cidr(s: &str) -> Result<String, String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: use CIDR form, e.g. 10.244.0.0/24"))?;
    let ip: std::net::Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .ok_or_else(|| format!("prefix /{prefix}: use /8 to /30"))?;
    let mask = u32::MAX << (32 - prefix);
    if u32::from(ip) & !mask != 0 {
        return Err(format!(
            "{s}: host bits are set; the network is {}/{prefix}",
            std::net::Ipv4Addr::from(u32::from(ip) & mask)
        ));
    }
    Ok(s.to_string())
}

/// Starts virt-handler for `node` (its heartbeat, its launchers) on the async runtime and
/// returns its configuration. `volumes_dir` is the local-path provisioner's directory the
/// host-path policy admits besides `--host-path-root`.
pub fn start_handler(
    client: Client,
    node: &str,
    data_dir: &Path,
    volumes_dir: &Path,
    args: &HandlerArgs,
    cluster: kubevirt_runtime::cluster::ClusterConfigRx,
    metrics_port: Option<u16>,
) -> Result<kubevirt_handler::Config> {
    // The data directory is 0700; QEMU's user must be able to pass through it to its VMI
    // directory (search only: it cannot list or read what is not its own).
    let qemu_user = kubevirt_launcher::confine::QemuUser {
        uid: args.qemu_uid,
        gid: args.qemu_gid,
    };
    qemu_user
        .ensure_reachable(data_dir)
        .context("QEMU's user must reach the data directory (see --qemu-uid)")?;
    let host_paths = kubevirt_runtime::host_path::HostPathPolicy::new(
        &args.host_path_roots,
        data_dir,
        volumes_dir,
    )
    .context("--host-path-root")?;
    let pod_network = match args.pod_network.as_str() {
        "user" => None,
        _ => match kubevirt_handler::pod_network(
            data_dir,
            kubevirt_handler::podnet::NodeNetwork::new(&args.pod_cidr),
        ) {
            Ok(n) => Some(Arc::new(n)),
            Err(why) => {
                tracing::warn!(%why, "no pod network on this node: VMs get QEMU user networking");
                eprintln!(
                    "kubevirt-rs: no pod network on node {node} ({why}); VMs get QEMU user networking"
                );
                None
            }
        },
    };
    let config = kubevirt_handler::Config {
        node_name: node.to_string(),
        data_dir: data_dir.to_path_buf(),
        image_store: Some(
            args.image_store
                .clone()
                .unwrap_or_else(|| data_dir.join("images")),
        ),
        launcher_bin: std::env::current_exe()?,
        cluster,
        qemu_user,
        host_paths,
        pod_network,
        heartbeat_interval: Duration::from_secs(args.heartbeat_interval),
        node_address: args.node_address,
        handler_port: args.handler_port,
        // A node apart from the server (which serves its own /metrics and runs the
        // provisioner that reclaims its node's volumes) reclaims its volumes itself.
        reclaim_local_volumes: metrics_port.is_some(),
        metrics_port,
    };
    let handler = tokio::spawn(kubevirt_handler::run(client, config.clone()));
    tokio::spawn(async move {
        if let Ok(Err(e)) = handler.await {
            tracing::error!(error = %e, "handler stopped");
        }
    });
    Ok(config)
}

/// Waits for SIGINT or SIGTERM.
pub async fn terminated() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

pub fn run(args: NodeArgs) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)
            .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        let client = Client::try_from(cfg)?;
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating {}", args.data_dir.display()))?;
        let volumes_dir = args.data_dir.join("volumes");
        std::fs::create_dir_all(&volumes_dir)
            .with_context(|| format!("creating {}", volumes_dir.display()))?;
        // The server owns the cluster configuration; a node follows it.
        let initial = cluster_config::wait_for(&client).await?;
        let (cluster_tx, cluster) = tokio::sync::watch::channel(initial);
        tokio::spawn(cluster_config::watch(client.clone(), None, cluster_tx));
        let config = start_handler(
            client.clone(),
            &args.node_name,
            &args.data_dir,
            &volumes_dir,
            &args.handler,
            cluster,
            Some(args.metrics_port),
        )?;
        eprintln!(
            "kubevirt-rs node: handler running for node {} (data {})",
            args.node_name,
            args.data_dir.display()
        );
        terminated().await?;
        // KubeVirt's handler labels its node unschedulable when it stops; its launchers keep
        // running and a restarted node adopts them.
        let marked = tokio::time::timeout(
            Duration::from_secs(5),
            kubevirt_handler::mark_unschedulable(client, &config),
        )
        .await;
        if !matches!(marked, Ok(Ok(()))) {
            tracing::warn!("could not mark the node unschedulable on the way out");
        }
        eprintln!("kubevirt-rs node: stopping (running VMs keep running)");
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn pod_cidrs_must_be_ipv4_networks() {
        assert_eq!(
            super::parse_ipv4_cidr("10.244.0.0/24").as_deref(),
            Ok("10.244.0.0/24")
        );
        for bad in [
            "10.244.0.0",
            "10.244.0.1/24",
            "10.244.0.0/31",
            "fd00::/64",
            "x/24",
        ] {
            assert!(super::parse_ipv4_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_names_must_be_dns1123_subdomains() {
        for good in ["node02", "worker-1.example.com", "a"] {
            assert_eq!(super::parse_node_name(good).as_deref(), Ok(good));
        }
        let long = "n".repeat(254);
        for bad in [
            "", "Node02", "node_02", "-node", "node-", "../etc", "a/b", "a..b", " node", "node\n",
            &long,
        ] {
            let e = super::parse_node_name(bad).expect_err(bad);
            assert!(e.contains("not a valid node name"), "{e}");
        }
    }
}

//! `kubevirt-rs server`: the single-node server. The embedded API server, virt-controller and
//! virt-handler run in this process; launchers run in their own sessions and outlive it.

use crate::cluster_config;
use anyhow::{Context, Result};
use kubevirt_api::defaults::DefaultBinding;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Where objects, certificates, the kubeconfig and VM files live.
    #[arg(long, default_value = "/var/lib/kubevirt-rs")]
    data_dir: PathBuf,
    /// Address of the HTTPS API (port 0: any free port; the kubeconfig names it).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// OCI image layout that containerDisk images are resolved from
    /// (default: DATA_DIR/images).
    #[arg(long)]
    image_store: Option<PathBuf>,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Run only the API server, no controller or handler.
    #[arg(long)]
    api_only: bool,
    /// A host directory that PersistentVolume `local.path`s and hostDisk paths may point
    /// beneath (repeatable). Without one, VMs reach only the provisioner's own volumes.
    #[arg(long = "host-path-root", value_name = "DIR")]
    host_path_roots: Vec<PathBuf>,
    /// The user QEMU runs as (KubeVirt's `qemu`, 107); 0 keeps QEMU as root, for hosts whose
    /// /dev/kvm or hugepages only root may open.
    #[arg(long, default_value_t = kubevirt_launcher::confine::QemuUser::KUBEVIRT.uid)]
    qemu_uid: u32,
    /// QEMU's group (107).
    #[arg(long, default_value_t = kubevirt_launcher::confine::QemuUser::KUBEVIRT.gid)]
    qemu_gid: u32,
    /// The node's pod network: `auto` gives every VMI a network namespace on the node's
    /// bridge through the standard CNI plugins when this host can (root, plugins, `ip`,
    /// `nft`), else QEMU user networking; `user` always uses user networking.
    #[arg(long, default_value = "auto", value_parser = ["auto", "user"])]
    pod_network: String,
    /// The pod CIDR VMIs on this node take their addresses from (host-local IPAM).
    #[arg(long, default_value = kubevirt_handler::podnet::NodeNetwork::DEFAULT_CIDR,
          value_parser = parse_ipv4_cidr)]
    pod_cidr: String,
    /// Start with an empty object store although the data directory already has content
    /// (a missing or empty store.redb there is refused otherwise).
    #[arg(long)]
    init: bool,
}

/// An IPv4 network in CIDR form with room for the gateway and pods (a prefix of at most 30).
fn parse_ipv4_cidr(s: &str) -> Result<String, String> {
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

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node01".into())
}

pub fn run(args: ServerArgs) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let running = kubevirt_apiserver::start(kubevirt_apiserver::Config {
            data_dir: args.data_dir.clone(),
            listen: args.listen,
            init: args.init,
            limits: kubevirt_apiserver::Limits::default(),
        })
        .await?;
        // One machine, no pod network: VMs sit behind QEMU's user-mode NAT (KubeVirt's
        // masquerade), so that is the default binding here.
        running
            .api
            .admission
            .write()
            .defaults
            .default_network_interface = DefaultBinding::Masquerade;
        eprintln!(
            "kubevirt-rs server: API on https://{}, kubeconfig {}",
            running.addr,
            running.kubeconfig.display()
        );
        eprintln!("  export KUBECONFIG={}", running.kubeconfig.display());
        if !args.api_only {
            // The data directory is 0700; QEMU's user must be able to pass through it to its
            // VMI directory (search only: it cannot list or read what is not its own).
            let qemu_user = kubevirt_launcher::confine::QemuUser {
                uid: args.qemu_uid,
                gid: args.qemu_gid,
            };
            qemu_user
                .ensure_reachable(&args.data_dir)
                .context("QEMU's user must reach the data directory (see --qemu-uid)")?;
            let kc = kube::config::Kubeconfig::read_from(&running.kubeconfig)?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            let client = kube::Client::try_from(cfg)?;
            running.set_subresource_handler(kubevirt_virtapi::VirtApi::new(
                client.clone(),
                args.data_dir.clone(),
            ));
            // The cluster configuration: kubevirt/kubevirt, created with single-node defaults
            // at first start, then followed; every part reads it from one channel.
            let spec = cluster_config::ensure(&client)
                .await
                .context("creating the KubeVirt resource kubevirt/kubevirt")?;
            let initial = kubevirt_runtime::cluster::ClusterConfig::from_spec(&spec);
            let (cluster_tx, cluster) = tokio::sync::watch::channel(initial.clone());
            cluster_config::publish(&initial, &running.api, &cluster_tx);
            tokio::spawn(cluster_config::watch(
                client.clone(),
                running.api.clone(),
                cluster_tx,
            ));
            let node = args.node_name.clone().unwrap_or_else(hostname);
            let cdi_config =
                kubevirt_cdi_controller::Config::single_node(node.clone(), args.data_dir.clone());
            let host_paths = kubevirt_runtime::host_path::HostPathPolicy::new(
                &args.host_path_roots,
                &args.data_dir,
                &cdi_config.volumes_dir(),
            )
            .context("--host-path-root")?;
            // CDI: local-path provisioner, DataVolume controller, upload token + upload proxy.
            let cdi = kubevirt_cdi_controller::Context::new(client.clone(), cdi_config);
            running.set_group_handler(
                "upload.cdi.kubevirt.io",
                Arc::new(kubevirt_cdi_controller::upload::TokenHandler(cdi.clone())),
            );
            running.set_upload_proxy(Arc::new(kubevirt_cdi_controller::upload::UploadProxy(
                cdi.clone(),
            )));
            let proxy_url = match running.addr {
                a if a.ip().is_unspecified() => format!("https://127.0.0.1:{}", a.port()),
                a => format!("https://{a}"),
            };
            kubevirt_cdi_controller::ensure_cdi_config(&client, &proxy_url)
                .await
                .context("creating CDIConfig config")?;
            tokio::spawn(kubevirt_cdi_controller::run(cdi));
            let mut ctl = kubevirt_controller::Config::single_node(node.clone());
            ctl.cluster = cluster.clone();
            let controller = tokio::spawn(kubevirt_controller::run(client.clone(), ctl));
            let pod_network = match args.pod_network.as_str() {
                "user" => None,
                _ => match kubevirt_handler::pod_network(
                    &args.data_dir,
                    kubevirt_handler::podnet::NodeNetwork::new(&args.pod_cidr),
                ) {
                    Ok(n) => Some(Arc::new(n)),
                    Err(why) => {
                        tracing::warn!(%why, "no pod network on this node: VMs get QEMU user networking");
                        eprintln!("kubevirt-rs server: no pod network ({why}); VMs get QEMU user networking");
                        None
                    }
                },
            };
            let handler = tokio::spawn(kubevirt_handler::run(
                client,
                kubevirt_handler::Config {
                    node_name: node.clone(),
                    data_dir: args.data_dir.clone(),
                    image_store: Some(
                        args.image_store
                            .clone()
                            .unwrap_or_else(|| args.data_dir.join("images")),
                    ),
                    launcher_bin: std::env::current_exe()?,
                    cluster,
                    qemu_user,
                    host_paths,
                    pod_network,
                },
            ));
            eprintln!("kubevirt-rs server: controller and handler running for node {node}");
            tokio::spawn(async move {
                if let Ok(Err(e)) = controller.await {
                    tracing::error!(error = %e, "controller stopped");
                }
            });
            tokio::spawn(async move {
                if let Ok(Err(e)) = handler.await {
                    tracing::error!(error = %e, "handler stopped");
                }
            });
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        // Launchers are left running: a restarted server adopts them.
        eprintln!("kubevirt-rs server: stopping (running VMs keep running)");
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
}

//! `kubevirt-rs server`: the single-node server. The embedded API server, virt-controller and
//! virt-handler run in this process; launchers run in their own sessions and outlive it.

use crate::{cluster_config, node};
use anyhow::{Context, Result};
use kubevirt_api::defaults::DefaultBinding;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Log lines on stderr: `text`, or `json` (one object a line with `component`,
    /// `namespace`, `name`, `uid`, `reason`; docs/observability.md).
    #[arg(long, default_value = "text", value_parser = kubevirt_launcher::logging::LogFormat::parse)]
    pub log_format: kubevirt_launcher::logging::LogFormat,
    /// Where objects, certificates, the kubeconfig and VM files live.
    #[arg(long, default_value = "/var/lib/kubevirt-rs")]
    data_dir: PathBuf,
    /// Address of the HTTPS API (port 0: any free port; the kubeconfig names it).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// This node's name (default: the host name).
    #[arg(long, value_parser = node::parse_node_name)]
    node_name: Option<String>,
    /// Run only the API server, no controller or handler.
    #[arg(long)]
    api_only: bool,
    /// Start with an empty object store although the data directory already has content
    /// (a missing or empty store.redb there is refused otherwise).
    #[arg(long)]
    init: bool,
    /// Seconds after which virt-controller marks a Node whose handler stopped heartbeating
    /// `kubevirt.io/schedulable=false` (KubeVirt: 300).
    #[arg(long, value_name = "SECONDS",
          default_value_t = kubevirt_controller::node::HEARTBEAT_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    node_heartbeat_timeout: u64,
    #[command(flatten)]
    handler: node::HandlerArgs,
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
        register_control_plane_metrics(&running.api.store);
        if !args.api_only {
            let client = running.client().await?;
            let node = args.node_name.clone().unwrap_or_else(hostname);
            // The cluster CA (virt-operator's kubevirt-ca): node agents' certificates, issued
            // into Secrets as Nodes appear, and virt-api's client certificate.
            let ca = Arc::new(
                kubevirt_handler::tls::ClusterCa::load_or_create(&args.data_dir)
                    .context("the cluster CA")?,
            );
            let virt_api_tls = ca
                .issue(&kubevirt_handler::tls::Identity::VirtApi)
                .and_then(|c| c.client_config())
                .context("virt-api's certificate")?;
            tokio::spawn(kubevirt_handler::tls::issue_node_certificates(
                client.clone(),
                ca,
            ));
            running.set_subresource_handler(kubevirt_virtapi::VirtApi::new(
                client.clone(),
                kubevirt_handler::rest::HandlerClient::new(virt_api_tls),
            ));
            kubevirt_runtime::metrics::components().api_ready.set(1);
            tokio::spawn(kubevirt_runtime::metrics::watch_vmi_phase_transitions(
                client.clone(),
            ));
            // The cluster configuration: kubevirt/kubevirt, created with single-node defaults
            // at first start, then followed; every part reads it from one channel.
            let spec = cluster_config::ensure(&client)
                .await
                .context("creating the KubeVirt resource kubevirt/kubevirt")?;
            let initial = kubevirt_runtime::cluster::ClusterConfig::from_spec(&spec);
            let (cluster_tx, cluster) = tokio::sync::watch::channel(initial.clone());
            cluster_config::publish(&initial, Some(&running.api), &cluster_tx);
            tokio::spawn(cluster_config::watch(
                client.clone(),
                Some(running.api.clone()),
                cluster_tx,
            ));
            // virt-api's eviction webhook: a drain of a VMI's node migrates it when its
            // eviction strategy says so.
            running.set_eviction_admitter(Arc::new(
                kubevirt_virtapi::eviction::PodEvictionAdmitter::new(
                    client.clone(),
                    cluster.clone(),
                ),
            ));
            let mut cdi_config =
                kubevirt_cdi_controller::Config::single_node(node.clone(), args.data_dir.clone());
            let volumes_dir = cdi_config.volumes_dir();
            std::fs::create_dir_all(&volumes_dir)
                .with_context(|| format!("creating {}", volumes_dir.display()))?;
            cdi_config.host_paths = Some(
                kubevirt_runtime::host_path::HostPathPolicy::new(
                    &args.handler.host_path_roots,
                    &args.data_dir,
                    &volumes_dir,
                )
                .context("--host-path-root")?,
            );
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
            let cdi_export = cdi.clone();
            tokio::spawn(kubevirt_cdi_controller::run(cdi));
            // This machine's own node: the same handler `kubevirt-rs node` runs elsewhere. Its
            // Node is registered before the controller places the first VMI.
            let handler = node::start_handler(
                client.clone(),
                &node,
                &args.data_dir,
                &volumes_dir,
                &args.handler,
                cluster.clone(),
                None,
            )?;
            // KubeVirt's VirtualMachineExport: the controller, and the export server on this
            // listener at the path of KubeVirt's external export proxy. Volumes are found
            // through the handler's host-path policy.
            let export_config = kubevirt_cdi_controller::export::ExportConfig {
                base_url: proxy_url.clone(),
                ca_pem: running.ca_pem.clone(),
                host_paths: kubevirt_runtime::host_path::HostPathPolicy::new(
                    &args.handler.host_path_roots,
                    &args.data_dir,
                    &volumes_dir,
                )
                .context("--host-path-root")?,
            };
            running.set_export_server(Arc::new(
                kubevirt_cdi_controller::export::ExportServer::new(
                    cdi_export.clone(),
                    export_config.clone(),
                ),
            ));
            tokio::spawn(kubevirt_cdi_controller::export::run(
                cdi_export,
                export_config,
            ));
            if let Err(e) = kubevirt_handler::register_node(client.clone(), &handler).await {
                tracing::warn!(error = %e, "registering the node");
            }
            kubevirt_runtime::metrics::handler_ready().set(1);
            kubevirt_handler::metrics::NodeStats::register(&args.data_dir, &node);
            let mut ctl = kubevirt_controller::Config::new();
            ctl.cluster = cluster;
            ctl.node_heartbeat_timeout = Duration::from_secs(args.node_heartbeat_timeout);
            let controller = tokio::spawn(kubevirt_controller::run(client, ctl));
            let components = kubevirt_runtime::metrics::components();
            components.controller_ready.set(1);
            components.controller_leading.set(1);
            eprintln!("kubevirt-rs server: controller and handler running for node {node}");
            tokio::spawn(async move {
                if let Ok(Err(e)) = controller.await {
                    tracing::error!(error = %e, "controller stopped");
                }
            });
        }
        node::terminated().await?;
        // Launchers are left running: a restarted server adopts them.
        eprintln!("kubevirt-rs server: stopping (running VMs keep running)");
        Ok(0)
    })
}

/// KubeVirt's control-plane metrics on the server's `/metrics`, computed on each scrape from
/// the store's in-memory objects (no API or QMP call).
fn register_control_plane_metrics(store: &Arc<kubevirt_apiserver::store::Store>) {
    use kubevirt_apiserver::store::Key;
    let store = store.clone();
    let objects = move |resource: &str| -> Vec<kubevirt_runtime::metrics::Object> {
        let (items, _) = store.list(&Key::prefix("kubevirt.io", resource, None));
        items
            .iter()
            .map(|s| kubevirt_runtime::metrics::Object {
                uid: s.uid.clone(),
                version: s.rv,
                json: s.json.clone(),
            })
            .collect()
    };
    kubevirt_runtime::metrics::register_collector(Box::new(
        kubevirt_runtime::metrics::ControlPlane::new(move || kubevirt_runtime::metrics::Snapshot {
            vmis: objects("virtualmachineinstances"),
            vms: objects("virtualmachines"),
            migrations: objects("virtualmachineinstancemigrations"),
        }),
    ));
}

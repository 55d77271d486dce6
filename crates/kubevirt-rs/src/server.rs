//! `kubevirt-rs server`: the single-node server.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Where objects, certificates, the kubeconfig and VM files live.
    #[arg(long, default_value = "/var/lib/kubevirt-rs")]
    data_dir: PathBuf,
    /// Address of the HTTPS API.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
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
        })
        .await?;
        eprintln!(
            "kubevirt-rs server: API on https://{}, kubeconfig {}",
            running.addr,
            running.kubeconfig.display()
        );
        eprintln!("  export KUBECONFIG={}", running.kubeconfig.display());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("kubevirt-rs server: stopping");
        Ok(0)
    })
}

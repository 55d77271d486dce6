//! The embedded API server on its own (what `kubevirt-rs server` runs, without the VM
//! control plane): for tests, benchmarks, and users who only want the API.

/// mimalloc, tuned before its first allocation ([`kubevirt_runtime::alloc`]).
#[global_allocator]
static ALLOC: kubevirt_runtime::alloc::ByRole = kubevirt_runtime::alloc::ByRole::new(always);

fn always(_: &[u8]) -> bool {
    true
}

use std::net::SocketAddr;
use std::path::PathBuf;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBEVIRT_RS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut data_dir = PathBuf::from("/var/lib/kubevirt-rs");
    let mut listen: SocketAddr = ([127, 0, 0, 1], 6443).into();
    let mut init = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--init" {
            init = true;
            continue;
        }
        match (a.as_str(), args.next()) {
            ("--data-dir", Some(v)) => data_dir = v.into(),
            ("--listen", Some(v)) => match v.parse() {
                Ok(l) => listen = l,
                Err(e) => {
                    eprintln!("error: --listen {v}: {e}");
                    std::process::exit(2);
                }
            },
            _ => {
                eprintln!(
                    "usage: kubevirt-apiserver [--data-dir DIR] [--listen ADDR:PORT] [--init]"
                );
                std::process::exit(2);
            }
        }
    }
    let cfg = kubevirt_apiserver::Config {
        init,
        ..kubevirt_apiserver::Config::new(data_dir, listen)
    };
    match kubevirt_apiserver::start(cfg).await {
        Ok(r) => {
            println!(
                "listening on https://{} kubeconfig {}",
                r.addr,
                r.kubeconfig.display()
            );
            let _ = tokio::signal::ctrl_c().await;
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

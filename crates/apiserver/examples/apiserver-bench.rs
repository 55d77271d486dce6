//! Benchmark of the embedded API server, run by hand (not in CI):
//!
//! ```sh
//! cargo build --release -p kubevirt-apiserver --bins --examples
//! target/release/examples/apiserver-bench [N_VMIS=10000]
//! ```
//!
//! It starts the release `kubevirt-apiserver` as its own process and measures, through kube-rs:
//! create throughput (64 concurrent clients), GET latency, LIST of every VMI, watch delivery
//! latency to 100 concurrent watchers, and the server's RSS with every VMI stored.

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kubevirt_api::VirtualMachineInstance;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn vmi(name: &str) -> VirtualMachineInstance {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "labels": {"bench": "yes"}},
        "spec": {
            "domain": {
                "devices": {
                    "disks": [{"name": "root", "disk": {"bus": "virtio"}}, {"name": "cloudinit", "disk": {"bus": "virtio"}}],
                    "interfaces": [{"name": "default", "masquerade": {}}]
                },
                "resources": {"requests": {"memory": "256Mi"}}
            },
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [
                {"name": "root", "containerDisk": {"image": "kubevirt-rs/demo-guest:latest"}},
                {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#!/bin/sh\necho hello\n"}}
            ]
        }
    }))
    .expect("vmi")
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let exe = std::env::current_exe()?;
    let server_bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("kubevirt-apiserver"))
        .ok_or_else(|| {
            anyhow::anyhow!("cannot locate kubevirt-apiserver next to {}", exe.display())
        })?;
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(&server_bin)
        .args([
            "--data-dir",
            dir.path().to_str().unwrap_or("."),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .read_line(&mut line)?;
    let pid = child.id();
    let idle_rss = rss_kib(pid, "VmRSS:");
    let kc = kube::config::Kubeconfig::read_from(dir.path().join("kubeconfig"))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(cfg)?;
    let api: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");

    // Create throughput.
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &vmi(&format!("vmi-{i:05}")))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    let create_secs = t.elapsed().as_secs_f64();

    // GET latency.
    let mut gets = Vec::new();
    for i in 0..2000 {
        let name = format!("vmi-{:05}", (i * 7919) % n);
        let t = Instant::now();
        api.get(&name).await?;
        gets.push(t.elapsed());
    }

    // LIST of everything.
    let mut lists = Vec::new();
    let mut listed = 0;
    for _ in 0..5 {
        let t = Instant::now();
        listed = api.list(&ListParams::default()).await?.items.len();
        lists.push(t.elapsed());
    }

    // Watch delivery to 100 watchers: each update carries its round number in a label; the
    // latency of a delivery counts from the moment the update request was sent.
    let rv = api
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let updates = 200usize;
    let sent: Arc<Vec<parking_lot::Mutex<Option<Instant>>>> = Arc::new(
        (0..updates)
            .map(|_| parking_lot::Mutex::new(None))
            .collect(),
    );
    let delivered: Arc<parking_lot::Mutex<Vec<Duration>>> = Default::default();
    let receipts: Arc<Vec<parking_lot::Mutex<Vec<Instant>>>> = Arc::new(
        (0..updates)
            .map(|_| parking_lot::Mutex::new(Vec::new()))
            .collect(),
    );
    let mut tasks = Vec::new();
    let mut acks = Vec::new();
    for _ in 0..100 {
        let api = api.clone();
        let rv = rv.clone();
        let sent = sent.clone();
        let delivered = delivered.clone();
        let receipts = receipts.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            // A raw watch stream, decoding only the label we need: the client's own JSON work
            // would otherwise dominate the measurement on a 2-core machine.
            #[derive(serde::Deserialize)]
            struct Ev {
                object: Obj,
            }
            #[derive(serde::Deserialize)]
            struct Obj {
                metadata: Meta,
            }
            #[derive(serde::Deserialize)]
            struct Meta {
                #[serde(default)]
                labels: std::collections::BTreeMap<String, String>,
            }
            let _ = &api;
            let req = http::Request::get(format!(
                "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances?watch=1&resourceVersion={rv}&timeoutSeconds=120"
            ))
            .body(Vec::new())
            .map_err(|e| kube::Error::Service(e.into()))?;
            let mut lines = client.request_stream(req).await?;
            let mut buf = Vec::new();
            let mut seen = 0;
            use futures::AsyncBufReadExt;
            loop {
                buf.clear();
                if lines.read_until(b'\n', &mut buf).await.map_err(|e| kube::Error::Service(e.into()))? == 0 {
                    break;
                }
                let now = Instant::now();
                let Ok(ev) = serde_json::from_slice::<Ev>(&buf) else { continue };
                let round: Option<usize> = ev.object.metadata.labels.get("round").and_then(|r| r.parse().ok());
                if let Some(t0) = round.and_then(|r| sent.get(r)).and_then(|m| *m.lock()) {
                    delivered.lock().push(now.duration_since(t0));
                    if let Some(r) = round.and_then(|r| receipts.get(r)) {
                        r.lock().push(now);
                    }
                    seen += 1;
                    if seen == updates {
                        break;
                    }
                }
            }
            Ok::<(), kube::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for (i, slot) in sent.iter().enumerate() {
        let name = format!("vmi-{:05}", i % n);
        let t0 = Instant::now();
        *slot.lock() = Some(t0);
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"round": i.to_string()}}})),
        )
        .await?;
        acks.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    let mut watch_lat = delivered.lock().clone();
    // Fan-out: from the first watcher's receipt of an event to each other watcher's.
    let mut fanout: Vec<Duration> = receipts
        .iter()
        .flat_map(|r| {
            let r = r.lock().clone();
            let first = r.iter().min().copied();
            r.into_iter()
                .filter_map(move |t| first.map(|f| t.duration_since(f)))
        })
        .collect();

    // The server hands memory freed by the bursts back every 10 s; measure after that.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let rss = rss_kib(pid, "VmRSS:");
    let hwm = rss_kib(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();

    println!("| measurement | value | target |");
    println!("|---|---|---|");
    println!("| create {n} VMIs, 64 concurrent clients | {:.0} creates/s ({create_secs:.2} s) | 2,000/s |", n as f64 / create_secs);
    println!(
        "| GET p50 / p99 | {:.2} ms / {:.2} ms | |",
        percentile(&mut gets, 0.5).as_secs_f64() * 1e3,
        percentile(&mut gets, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| LIST {listed} VMIs (median of 5) | {:.0} ms | |",
        percentile(&mut lists, 0.5).as_secs_f64() * 1e3
    );
    println!(
        "| watch delivery, 100 watchers x {updates} updates: p50 / p99 ({} deliveries) | {:.2} ms / {:.2} ms | p99 < 5 ms |",
        watch_lat.len(),
        percentile(&mut watch_lat, 0.5).as_secs_f64() * 1e3,
        percentile(&mut watch_lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| watch fan-out (first watcher → each of the 100): p50 / p99 | {:.2} ms / {:.2} ms | |",
        percentile(&mut fanout, 0.5).as_secs_f64() * 1e3,
        percentile(&mut fanout, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| the same updates' write latency (request → durable ack): p50 / p99 | {:.2} ms / {:.2} ms | |",
        percentile(&mut acks, 0.5).as_secs_f64() * 1e3,
        percentile(&mut acks, 0.99).as_secs_f64() * 1e3
    );
    println!("| server RSS idle / with {n} VMIs (peak) | {:.1} MiB / {:.1} MiB ({:.1} MiB) | < 100 MiB |", idle_rss as f64 / 1024.0, rss as f64 / 1024.0, hwm as f64 / 1024.0);
    Ok(())
}

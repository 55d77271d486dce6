//! Benchmark of the embedded API server, run by hand (not in CI):
//!
//! ```sh
//! cargo build --release -p kubevirt-apiserver --bins --examples
//! target/release/examples/apiserver-bench [N_VMIS=10000]
//! ```
//!
//! It starts the release `kubevirt-apiserver` as its own process and measures, through kube-rs:
//! create throughput (64 concurrent clients), GET latency, LIST of every VMI, watch delivery
//! latency to 100 concurrent watchers, and the server's RSS with every VMI stored. Then, if
//! `etcd` is installed (Debian: `apt-get install etcd-server`; or set `ETCD=/path/to/etcd`),
//! it starts etcd on loopback and measures raw puts of values the size of a stored VMI with
//! the same concurrency, and prints both in one table.

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, Patch, PatchParams};
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

/// Concurrent clients for the write-throughput measurement, for both systems.
const CLIENTS: usize = 64;

struct EtcdResult {
    version: String,
    secs: f64,
    p50: Duration,
    p99: Duration,
    seq_p50: Duration,
    seq_p99: Duration,
    /// Delivery of the sequential puts to 100 watchers (etcd's own watch), request → receipt.
    watch: Vec<Duration>,
}

/// Starts `etcd` (from `$ETCD`, else `PATH`; Debian: `apt-get install etcd-server`) on loopback
/// in a temporary directory and measures puts through its JSON gRPC gateway
/// (`POST /v3/kv/put`, base64 key and value): `n` puts of `value_len`-byte values from
/// [`CLIENTS`] concurrent clients, then 200 sequential puts 5 ms apart with 100 watchers of
/// the keys' prefix attached (`POST /v3/watch`), as ours has 100 watchers of the VMIs.
async fn etcd_bench(n: usize, value_len: usize) -> anyhow::Result<EtcdResult> {
    use base64::Engine as _;
    let bin = std::env::var("ETCD").unwrap_or_else(|_| "etcd".into());
    let version = Command::new(&bin).arg("--version").output().map_err(|e| {
        anyhow::anyhow!("cannot run `{bin}`: {e}; install it with `apt-get install etcd-server`")
    })?;
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().last())
        .map(|v| format!("etcd {v}"))
        .unwrap_or_else(|| "etcd".into());
    let dir = tempfile::tempdir()?;
    let free_port = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (cport, pport) = (free_port()?, free_port()?);
    let curl = format!("http://127.0.0.1:{cport}");
    let purl = format!("http://127.0.0.1:{pport}");
    let mut child = Command::new(&bin)
        .args([
            "--name",
            "bench",
            "--data-dir",
            dir.path().join("etcd").to_str().unwrap_or("etcd"),
            "--listen-client-urls",
            &curl,
            "--advertise-client-urls",
            &curl,
            "--listen-peer-urls",
            &purl,
            "--initial-advertise-peer-urls",
            &purl,
            "--initial-cluster",
            &format!("bench={purl}"),
            "--logger",
            "zap",
            "--log-level",
            "error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(CLIENTS)
            .build()?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let value = b64.encode(vec![b'x'; value_len]);
        let put = |key: String| {
            let http = http.clone();
            let body = json!({"key": b64.encode(key), "value": value});
            let url = format!("{curl}/v3/kv/put");
            async move {
                let t0 = Instant::now();
                let r = http.post(url).json(&body).send().await?;
                anyhow::ensure!(r.status().is_success(), "etcd put: {}", r.status());
                r.bytes().await?;
                Ok::<Duration, anyhow::Error>(t0.elapsed())
            }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while put("/bench/ready".into()).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "etcd did not start within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let t = Instant::now();
        let mut lat = futures::stream::iter(0..n)
            .map(|i| {
                put(format!(
                    "/registry/kubevirt.io/virtualmachineinstances/default/vmi-{i:05}"
                ))
            })
            .buffer_unordered(CLIENTS)
            .try_collect::<Vec<Duration>>()
            .await?;
        let secs = t.elapsed().as_secs_f64();
        // 100 watchers of the prefix, each on its own connection, reading etcd's stream of
        // JSON lines and decoding each event's key, as ours decode each event's label.
        let updates = 200usize.min(n);
        let prefix = "/registry/kubevirt.io/virtualmachineinstances/default/";
        let sent: Arc<Vec<parking_lot::Mutex<Option<Instant>>>> = Arc::new(
            (0..updates)
                .map(|_| parking_lot::Mutex::new(None))
                .collect(),
        );
        let delivered: Arc<parking_lot::Mutex<Vec<Duration>>> = Default::default();
        // Watches etcd has confirmed (`"created": true`): the puts wait for all of them, as
        // ours start from a resourceVersion and miss nothing.
        let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut watchers = Vec::new();
        for _ in 0..100 {
            let (sent, delivered, created) = (sent.clone(), delivered.clone(), created.clone());
            let http = reqwest::Client::new();
            let body = json!({"create_request": {
                "key": b64.encode(prefix),
                "range_end": b64.encode("/registry/kubevirt.io/virtualmachineinstances/default0"),
            }});
            let url = format!("{curl}/v3/watch");
            watchers.push(tokio::spawn(async move {
                #[derive(serde::Deserialize)]
                struct Line {
                    result: Option<Res>,
                }
                #[derive(serde::Deserialize)]
                struct Res {
                    #[serde(default)]
                    created: bool,
                    #[serde(default)]
                    events: Vec<Ev>,
                }
                #[derive(serde::Deserialize)]
                struct Ev {
                    kv: Kv,
                }
                #[derive(serde::Deserialize)]
                struct Kv {
                    key: String,
                }
                let mut r = http.post(url).json(&body).send().await?;
                let mut buf: Vec<u8> = Vec::new();
                let mut seen = 0;
                while let Some(chunk) = r.chunk().await? {
                    let now = Instant::now();
                    buf.extend_from_slice(&chunk);
                    while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=end).collect();
                        let Ok(l) = serde_json::from_slice::<Line>(&line) else {
                            continue;
                        };
                        if l.result.as_ref().is_some_and(|r| r.created) {
                            created.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        for ev in l.result.map(|r| r.events).unwrap_or_default() {
                            let key = base64::engine::general_purpose::STANDARD
                                .decode(&ev.kv.key)
                                .unwrap_or_default();
                            let round: Option<usize> = std::str::from_utf8(&key)
                                .ok()
                                .and_then(|k| k.rsplit("vmi-").next())
                                .and_then(|i| i.parse().ok());
                            if let Some(t0) =
                                round.and_then(|r| sent.get(r)).and_then(|m| *m.lock())
                            {
                                delivered.lock().push(now.duration_since(t0));
                                seen += 1;
                            }
                        }
                    }
                    if seen == updates {
                        break;
                    }
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while created.load(std::sync::atomic::Ordering::SeqCst) < 100 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "etcd's watches were not all created within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut seq = Vec::new();
        for (i, slot) in sent.iter().enumerate() {
            let key = format!("{prefix}vmi-{i:05}");
            *slot.lock() = Some(Instant::now());
            seq.push(put(key).await?);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for w in watchers {
            let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
        }
        let watch = delivered.lock().clone();
        Ok::<_, anyhow::Error>(EtcdResult {
            version,
            secs,
            p50: percentile(&mut lat, 0.5),
            p99: percentile(&mut lat, 0.99),
            seq_p50: percentile(&mut seq, 0.5),
            seq_p99: percentile(&mut seq, 0.99),
            watch,
        })
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
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

    // Create throughput, and each create's latency (request → durable ack).
    let create_lat: Arc<parking_lot::Mutex<Vec<Duration>>> = Default::default();
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            let create_lat = create_lat.clone();
            // The client's side as etcd's: a JSON body sent, the answer read as bytes (kube-rs's
            // typed `create` would decode every answer into a VMI, on the same 2 cores).
            let body = serde_json::to_vec(&vmi(&format!("vmi-{i:05}")));
            async move {
                let body = body?;
                let t0 = Instant::now();
                let req = http::Request::post(
                    "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances",
                )
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)?;
                let r = client.request_text(req).await.map(|_| ());
                create_lat.lock().push(t0.elapsed());
                r.map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(CLIENTS)
        .try_collect::<Vec<()>>()
        .await?;
    let create_secs = t.elapsed().as_secs_f64();
    let mut create_lat = create_lat.lock().clone();
    // The size of one stored VMI as the server returns it: etcd gets values of this size.
    let value_len = client
        .request_text(
            http::Request::get(
                "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/vmi-00000",
            )
            .body(Vec::new())?,
        )
        .await?
        .len();

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

    // etcd, on the same machine after our server has stopped, with the same load.
    let etcd = match etcd_bench(n, value_len).await {
        Ok(r) => Some(r),
        Err(e) => {
            println!("etcd: skipped ({e:#})");
            None
        }
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let e_watch = match &etcd {
        Some(r) if !r.watch.is_empty() => {
            let mut w = r.watch.clone();
            format!(
                "{:.2} ms / {:.2} ms ({} deliveries)",
                ms(percentile(&mut w, 0.5)),
                ms(percentile(&mut w, 0.99)),
                w.len()
            )
        }
        _ => "—".into(),
    };
    let (e_ver, e_rate, e_p50, e_p99, e_seq50, e_seq99) = match &etcd {
        Some(r) => (
            r.version.clone(),
            format!("{:.0} puts/s ({:.2} s)", n as f64 / r.secs, r.secs),
            format!("{:.2} ms", ms(r.p50)),
            format!("{:.2} ms", ms(r.p99)),
            format!("{:.2} ms", ms(r.seq_p50)),
            format!("{:.2} ms", ms(r.seq_p99)),
        ),
        None => (
            "etcd (skipped)".to_string(),
            "—".into(),
            "—".into(),
            "—".into(),
            "—".into(),
            "—".into(),
        ),
    };

    let (c50, c99) = (
        percentile(&mut create_lat, 0.5),
        percentile(&mut create_lat, 0.99),
    );
    let (a50, a99) = (percentile(&mut acks, 0.5), percentile(&mut acks, 0.99));
    println!("| measurement | kubevirt-apiserver | {e_ver} | target |");
    println!("|---|---|---|---|");
    println!(
        "| {n} writes, {CLIENTS} concurrent clients: throughput (creates of VMIs / raw puts of {value_len}-byte values) | {:.0} creates/s ({create_secs:.2} s) | {e_rate} | ≥ etcd |",
        n as f64 / create_secs
    );
    println!(
        "| the same writes' latency (request → durable ack): p50 | {:.2} ms | {e_p50} | |",
        ms(c50)
    );
    println!(
        "| the same writes' latency: p99 | {:.2} ms | {e_p99} | ≤ etcd |",
        ms(c99)
    );
    println!(
        "| {updates} sequential writes, 5 ms apart (label patches / puts), 100 watchers attached to each: p50 | {:.2} ms | {e_seq50} | |",
        ms(a50)
    );
    println!(
        "| the same sequential writes: p99 | {:.2} ms | {e_seq99} | ≤ etcd |",
        ms(a99)
    );
    println!(
        "| GET p50 / p99 | {:.2} ms / {:.2} ms | | |",
        ms(percentile(&mut gets, 0.5)),
        ms(percentile(&mut gets, 0.99))
    );
    println!(
        "| LIST {listed} VMIs (median of 5) | {:.0} ms | | |",
        ms(percentile(&mut lists, 0.5))
    );
    println!(
        "| watch delivery, 100 watchers x {updates} updates (request start → receipt): p50 / p99 ({} deliveries) | {:.2} ms / {:.2} ms | {e_watch} | p99 < 5 ms |",
        watch_lat.len(),
        ms(percentile(&mut watch_lat, 0.5)),
        ms(percentile(&mut watch_lat, 0.99))
    );
    println!(
        "| watch fan-out (first watcher → each of the 100): p50 / p99 | {:.2} ms / {:.2} ms | | |",
        ms(percentile(&mut fanout, 0.5)),
        ms(percentile(&mut fanout, 0.99))
    );
    println!(
        "| server RSS idle / with {n} VMIs (peak) | {:.1} MiB / {:.1} MiB ({:.1} MiB) | | < 100 MiB |",
        idle_rss as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "load average after the run: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}

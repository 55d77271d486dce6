//! `/metrics` scrape benchmark (by hand, not in CI; issue 15's targets: < 50 ms a scrape,
//! < 5 MiB of server RSS growth with 200 VMIs):
//!
//!   cargo build --release -p kubevirt-rs --bins
//!   target/release/metrics-bench [VMIS] [SCRAPES]
//!
//! Starts a real `kubevirt-rs server --api-only` (the binary beside this one) in a temporary
//! data directory, creates VMIS VMIs (default 200) and as many VMs through the API, gives the
//! VMIs a status (phases Running/Scheduled/Failed on three nodes, guest OS info), then scrapes
//! `/metrics` SCRAPES times (default 200; first 10 are warm-up) with the admin kubeconfig.
//! Control-plane families are computed from the store on each scrape, so no QEMU runs.
//! Prints the scrape latency p50/p99/max, the exposition's size and series count, and the
//! server's RSS (VmRSS) at start, after the objects, and after the scrapes.

use anyhow::{bail, Context, Result};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn kubevirt_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "kubevirt.io".into(),
        version: "v1".into(),
        api_version: "kubevirt.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let vmis: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let scrapes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    if scrapes < 20 {
        bail!("give at least 20 scrapes");
    }
    let bin = std::env::current_exe()?
        .parent()
        .context("the binary's directory")?
        .join("kubevirt-rs");
    let data = std::env::temp_dir().join(format!("metrics-bench-{}", std::process::id()));
    let mut server = Command::new(&bin)
        .args([
            "server",
            "--api-only",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = server.id();
    let result = bench(pid, &data, server.stderr.take(), vmis, scrapes).await;
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&data);
    result
}

async fn bench(
    pid: u32,
    data: &std::path::Path,
    stderr: Option<std::process::ChildStderr>,
    vmis: usize,
    scrapes: usize,
) -> Result<()> {
    let mut banner = String::new();
    let mut reader = std::io::BufReader::new(stderr.context("stderr")?);
    reader.read_line(&mut banner)?;
    if !banner.contains("API on") {
        bail!("the server did not start: {banner}");
    }
    // Keep reading its stderr: a closed pipe would end the server at its next line.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    let kc = kube::config::Kubeconfig::read_from(data.join("kubeconfig"))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(cfg)?;
    let scrape = || {
        let client = client.clone();
        async move {
            let req = http::Request::get("/metrics").body(Vec::new())?;
            Ok::<_, anyhow::Error>(client.request_text(req).await?)
        }
    };
    // One scrape before the objects: the registry's families exist, the baseline is fair.
    scrape().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_start = rss_kib(pid)?;

    let vmi_api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kubevirt_resource("VirtualMachineInstance", "virtualmachineinstances"),
    );
    let vm_api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kubevirt_resource("VirtualMachine", "virtualmachines"),
    );
    let t0 = Instant::now();
    let spec = serde_json::json!({
        "domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}}
    });
    for i in 0..vmis {
        let name = format!("bench-{i:04}");
        let vm: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name, "annotations": {"vm.kubevirt.io/os": "linux"}},
            "spec": {"runStrategy": "Halted", "template": {"spec": spec}},
        }))?;
        vm_api.create(&PostParams::default(), &vm).await?;
        let vmi: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "annotations": {"vm.kubevirt.io/workload": "server"}},
            "spec": spec,
        }))?;
        vmi_api.create(&PostParams::default(), &vmi).await?;
        let phase = ["Running", "Running", "Scheduled", "Failed"][i % 4];
        let status = serde_json::json!({"status": {
            "phase": phase,
            "nodeName": format!("node{:02}", i % 3 + 1),
            "guestOSInfo": {"kernelRelease": "6.1.0", "name": "Debian GNU/Linux", "versionId": "12"},
            "machine": {"type": "q35"},
        }});
        // A VMI has no status subresource (as KubeVirt's): its status is patched in place.
        vmi_api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    let created = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_objects = rss_kib(pid)?;

    let mut times = Vec::with_capacity(scrapes);
    let mut text = String::new();
    let mut rss_warm = 0;
    for i in 0..scrapes {
        if i == 10 {
            rss_warm = rss_kib(pid)?;
        }
        let t = Instant::now();
        text = scrape().await?;
        if i >= 10 {
            times.push(t.elapsed());
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_scraped = rss_kib(pid)?;
    times.sort();
    let vmi_info = text
        .lines()
        .filter(|l| l.starts_with("kubevirt_vmi_info{"))
        .count();
    if vmi_info != vmis {
        bail!("the scrape has {vmi_info} kubevirt_vmi_info series for {vmis} VMIs");
    }
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    println!("metrics-bench: {vmis} VMIs + {vmis} VMs created in {created:.1?}");
    println!(
        "exposition: {} bytes, {series} series ({vmi_info} kubevirt_vmi_info)",
        text.len()
    );
    println!(
        "scrape latency over {} scrapes: p50 {:.2?}, p99 {:.2?}, max {:.2?} (target < 50 ms)",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1],
    );
    println!(
        "server RSS: {:.1} MiB at start, {:.1} MiB with the objects (+{:.1}), {:.1} MiB after 10 scrapes (+{:.1}), {:.1} MiB after {scrapes} (+{:.1} from scraping; target < 5 MiB growth)",
        mib(rss_start),
        mib(rss_objects),
        mib(rss_objects.saturating_sub(rss_start)),
        mib(rss_warm),
        mib(rss_warm.saturating_sub(rss_objects)),
        mib(rss_scraped),
        mib(rss_scraped.saturating_sub(rss_objects)),
    );
    Ok(())
}

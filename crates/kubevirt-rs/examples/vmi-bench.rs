//! Issue 5's benchmark: N VMIs started paused (`startStrategy: Paused`, so no guest code
//! runs) on one `kubevirt-rs server`; time from create to `Running` for each, and the memory
//! of everything we add beside QEMU.
//!
//! ```text
//! cargo build --release -p kubevirt-rs --examples
//! guest/build.sh target/guest        # the demo guest's containerDisk (OCI layout)
//! target/release/examples/vmi-bench [N=50] [--images target/guest/oci]
//! ```
//!
//! Memory is PSS (`/proc/PID/smaps_rollup`): pages shared between the launchers (the binary's
//! text) count once in total, as they take memory once. Per-VM overhead is the sum of launcher
//! PSS plus the server's growth over its idle PSS, divided by N. The server holds the API
//! server, virt-controller and virt-handler. QEMU is shown for reference and not counted.

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use kubevirt_api::VirtualMachineInstance;
use kubevirt_launcher::api::VmiDir;
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn pss(pid: u32) -> u64 {
    kib(pid, "smaps_rollup", "Pss:")
}

fn rss(pid: u32) -> u64 {
    kib(pid, "status", "VmRSS:")
}

fn mib(k: u64) -> String {
    format!("{:.1}", k as f64 / 1024.0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn vmi(name: &str) -> VirtualMachineInstance {
    let v = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "labels": {"bench": "paused"}},
        "spec": {
            "startStrategy": "Paused",
            "domain": {
                "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                "resources": {"requests": {"memory": "64Mi"}}
            },
            "terminationGracePeriodSeconds": 0,
            "volumes": [{"name": "root", "containerDisk": {"image": "kubevirt-rs/demo-guest:latest"}}]
        }
    });
    serde_json::from_value(v).unwrap_or_default()
}

fn launcher_pids(data: &Path) -> Vec<u32> {
    VmiDir::all(data)
        .iter()
        .filter_map(VmiDir::launcher_pid)
        .collect()
}

fn qemu_pids(data: &Path) -> Vec<u32> {
    VmiDir::all(data)
        .iter()
        .filter_map(|d| d.read_state().ok()?.qemu_pid)
        .collect()
}

fn main() -> Result<()> {
    let mut n = 50usize;
    let mut images: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--images" => images = args.next().map(PathBuf::from),
            other => {
                n = other
                    .parse()
                    .context("usage: vmi-bench [N] [--images OCI_DIR]")?
            }
        }
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("kubevirt-rs"))
        .context("locating kubevirt-rs beside the example")?;
    if !bin.exists() {
        bail!(
            "{} is missing: cargo build --release -p kubevirt-rs",
            bin.display()
        );
    }
    let images = images.unwrap_or_else(|| PathBuf::from("target/guest/oci"));
    if !images.join("index.json").exists() {
        bail!(
            "{} is not an OCI layout: run guest/build.sh target/guest first",
            images.display()
        );
    }
    let dir = tempfile::tempdir()?;
    // QEMU's unprivileged user passes through it to the VMI directories.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )?;
    let data = dir.path().join("data");
    let mut server = Command::new(&bin)
        .arg("server")
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--node-name", "bench"])
        .arg("--image-store")
        .arg(&images)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut reader = BufReader::new(server.stderr.take().context("stderr")?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    std::thread::spawn(move || for _ in reader.lines() {});
    let server_pid = server.id();

    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(data.join("kubeconfig"))?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        let client = kube::Client::try_from(cfg)?;
        let api: Api<VirtualMachineInstance> = Api::namespaced(client, "default");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle_pss = pss(server_pid);
        let idle_rss = rss(server_pid);

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
        let watch_api = api.clone();
        tokio::spawn(async move {
            let mut s = std::pin::pin!(watcher(watch_api, watcher::Config::default()));
            while let Some(ev) = s.next().await {
                if let Ok(watcher::Event::Apply(v) | watcher::Event::InitApply(v)) = ev {
                    let running =
                        v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                    if running {
                        let _ =
                            tx.send((v.metadata.name.clone().unwrap_or_default(), Instant::now()));
                    }
                }
            }
        });

        let start = Instant::now();
        let mut created: HashMap<String, Instant> = HashMap::new();
        for i in 0..n {
            let name = format!("bench-{i:03}");
            created.insert(name.clone(), Instant::now());
            api.create(&PostParams::default(), &vmi(&name)).await?;
        }
        let mut running: HashMap<String, Duration> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60 + 5 * n as u64);
        while running.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some((name, at))) => {
                    if let Some(c) = created.get(&name) {
                        running.entry(name).or_insert(at.duration_since(*c));
                    }
                }
                _ => {
                    for i in 0..n {
                        let name = format!("bench-{i:03}");
                        if running.contains_key(&name) {
                            continue;
                        }
                        let v = api.get_opt(&name).await.ok().flatten();
                        let st = v.and_then(|v| v.status).unwrap_or_default();
                        let log = VmiDir::new(&data, "default", &name)
                            .ok()
                            .and_then(|d| std::fs::read_to_string(d.launcher_log()).ok())
                            .unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(3).collect();
                        eprintln!(
                            "{name}: phase {:?} reason {:?}; launcher.log: {tail:?}",
                            st.phase, st.reason
                        );
                    }
                    bail!("only {} of {n} VMIs reached Running", running.len())
                }
            }
        }
        let total = start.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;

        let launchers = launcher_pids(&data);
        let qemus = qemu_pids(&data);
        let l_pss: u64 = launchers.iter().map(|p| pss(*p)).sum();
        let l_rss: u64 = launchers.iter().map(|p| rss(*p)).sum();
        let q_rss: u64 = qemus.iter().map(|p| rss(*p)).sum();
        let s_pss = pss(server_pid);
        let s_rss = rss(server_pid);
        let mut lat: Vec<Duration> = running.values().copied().collect();
        lat.sort();
        let per_vm = (l_pss + s_pss.saturating_sub(idle_pss)) / n as u64;
        let per_vm_all = (l_pss + s_pss) / n as u64;
        println!("| {n} VMIs, startStrategy Paused | value |");
        println!("|---|---|");
        println!(
            "| create → Running p50 | {} ms |",
            pct(&lat, 0.5).as_millis()
        );
        println!(
            "| create → Running p95 | {} ms |",
            pct(&lat, 0.95).as_millis()
        );
        println!(
            "| create → Running max | {} ms |",
            pct(&lat, 1.0).as_millis()
        );
        println!("| all {n} Running after | {:.2} s |", total.as_secs_f64());
        println!(
            "| launchers: {} processes, PSS total / RSS each | {} MiB / {} MiB |",
            launchers.len(),
            mib(l_pss),
            mib(l_rss / launchers.len().max(1) as u64)
        );
        println!(
            "| server (API + controller + handler) PSS idle → loaded | {} → {} MiB (RSS {} → {}) |",
            mib(idle_pss),
            mib(s_pss),
            mib(idle_rss),
            mib(s_rss)
        );
        println!(
            "| **per-VM overhead** (launcher + server growth) | **{} MiB** |",
            mib(per_vm)
        );
        println!(
            "| per-VM, counting the whole server | {} MiB |",
            mib(per_vm_all)
        );
        println!(
            "| QEMU RSS each (reference, not counted) | {} MiB |",
            mib(q_rss / qemus.len().max(1) as u64)
        );

        let _ = api
            .delete_collection(
                &DeleteParams::default(),
                &kube::api::ListParams::default().labels("bench=paused"),
            )
            .await;
        let gone = Instant::now();
        while !api.list(&Default::default()).await?.items.is_empty()
            && gone.elapsed() < Duration::from_secs(120)
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    });
    let _ = server.kill();
    let _ = server.wait();
    for p in launcher_pids(&data) {
        let _ = Command::new("kill").arg(p.to_string()).status();
    }
    result
}

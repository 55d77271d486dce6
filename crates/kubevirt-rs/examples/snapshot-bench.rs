//! Issue 16's benchmark, through the API as a user drives it: one `kubevirt-rs server` (API
//! server, virt-controller, virt-handler, CDI, the local-path snapshotter), the demo guest,
//! kube-rs requests, the guest's serial console through virt-api's `console` websocket.
//!
//! ```text
//! cargo build -p kubevirt-rs --examples
//! guest/build.sh target/tmp/guest          # the demo guest, where the e2e tests keep it
//! target/debug/examples/snapshot-bench [RUNS=3] [--only volume|memory]
//! ```
//!
//! `KUBEVIRT_RS_GUEST_DIR` names another guest directory; `KUBEVIRT_RS_LOG` (e.g.
//! `kubevirt_controller=debug,kubevirt_handler=debug`) reaches the server, whose log lines go
//! to stderr as `[server] ...` beside the bench's own `[bench HH:MM:SS.mmm] ...` lines (UTC,
//! the server's clock), so a slow step can be found in the log. The table goes to stdout.
//! Medians over RUNS; each run's values are shown too.
//!
//! a) A VM with a 1 GiB local-path volume (a blank DataVolume of 1Gi, then filled with
//!    non-zero bytes by the bench, straight into the volume's `disk.img` on the host: a filled
//!    volume, not a sparse one, so every snapshot and restore copies all of it):
//!    VirtualMachineSnapshot of the stopped VM create → `readyToUse`; VirtualMachineRestore
//!    create → `complete` and → the restored claim `Bound` (its data copied); then the VM
//!    running: online snapshot create → `readyToUse`.
//! b) Memory restore: the demo VM (kernelBoot, 256 MiB, cloud-init, no NIC) running; a
//!    memory snapshot (`snapshot.kubevirt-rs.io/memory: "true"`); the VM stopped; then from
//!    the VirtualMachineRestore create request to `complete`, to the VMI `Running`, and to the
//!    guest answering `echo ready-$((6*7))` on its console (typed every 250 ms until `ready-42`
//!    appears). The restore completes with the VM stopped; the bench then starts it
//!    (`runStrategy: Always`) at once: that start is inside the timed span. The guest's boot id
//!    is checked afterwards: the same as before the snapshot (it was restored, not booted).
//! c) A cold boot of the same VM: start (`runStrategy: Always`) → VMI `Running` → the same
//!    echo (boot id checked: a new one).

use anyhow::{anyhow, bail, Context as _, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::runtime::watcher;
use kubevirt_api::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineRestore, VirtualMachineSnapshot,
};
use kubevirt_testsupport::Server;
use kubevirt_virtctl::client::Conn;
use kubevirt_virtctl::stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ECHO: &str = "echo ready-$((6*7))";
const READY: &str = "ready-42";
const BOOT_ID: &str = "echo B=$(cat /proc/sys/kernel/random/boot_id)=E$((6*7))";
const DEMO: &str = "demo";
const VOL: &str = "vol";

/// UTC wall clock, `HH:MM:SS.mmm`, to line the bench's steps up with the server's log.
fn clock() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

macro_rules! note {
    ($($t:tt)*) => { eprintln!("[bench {}] {}", clock(), format!($($t)*)) };
}

fn obj<K: DeserializeOwned>(v: Value) -> Result<K> {
    serde_json::from_value(v).context("building a request object")
}

/// The JSON at `pointer` in `o` (`Null` when absent).
fn field<K: Serialize>(o: Option<&K>, pointer: &str) -> Value {
    o.and_then(|o| serde_json::to_value(o).ok())
        .and_then(|v| v.pointer(pointer).cloned())
        .unwrap_or(Value::Null)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `median (run1, run2, ...)` in seconds, or milliseconds with `ms`.
fn cell(v: &[f64], ms: bool) -> String {
    let f = |x: f64| {
        if ms {
            format!("{:.0}", x * 1000.0)
        } else {
            format!("{x:.2}")
        }
    };
    let each: Vec<String> = v.iter().map(|x| f(*x)).collect();
    format!("**{}** ({})", f(median(v)), each.join(", "))
}

/// A VMI phase as the bench's watch first saw it.
struct Seen {
    name: String,
    uid: String,
    phase: String,
    at: Instant,
}

struct Bench {
    conn: Conn,
    vms: Api<VirtualMachine>,
    vmis: Api<VirtualMachineInstance>,
    snaps: Api<VirtualMachineSnapshot>,
    restores: Api<VirtualMachineRestore>,
    claims: Api<PersistentVolumeClaim>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Waits (through a watch) until `cond` holds for `name`; when it did.
async fn until<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    limit: Duration,
    cond: impl Fn(Option<&K>) -> bool,
) -> Result<Instant>
where
    K: Clone + std::fmt::Debug + Send + DeserializeOwned + kube::Resource + 'static,
{
    tokio::time::timeout(limit, await_condition(api.clone(), name, cond))
        .await
        .map_err(|_| anyhow!("{what}: not within {} s", limit.as_secs()))?
        .with_context(|| what.to_string())?;
    Ok(Instant::now())
}

impl Bench {
    async fn new(kubeconfig: &Path) -> Result<Bench> {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
        let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        // The console websocket stays quiet while the guest is.
        config.read_timeout = None;
        let client = kube::Client::try_from(config.clone())?;
        let ns = "default";
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let (record, api) = (seen.clone(), vmis.clone());
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
            while let Some(ev) = events.next().await {
                let Ok(watcher::Event::Apply(v) | watcher::Event::InitApply(v)) = ev else {
                    continue;
                };
                let at = Instant::now();
                let name = v.metadata.name.clone().unwrap_or_default();
                let uid = v.metadata.uid.clone().unwrap_or_default();
                let phase = field(Some(&v), "/status/phase")
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let mut seen = record.lock().unwrap_or_else(|e| e.into_inner());
                if !seen.iter().any(|s| s.uid == uid && s.phase == phase) {
                    seen.push(Seen {
                        name,
                        uid,
                        phase,
                        at,
                    });
                }
            }
        });
        Ok(Bench {
            conn: Conn {
                client: client.clone(),
                config,
                namespace: ns.into(),
            },
            vms: Api::namespaced(client.clone(), ns),
            vmis,
            snaps: Api::namespaced(client.clone(), ns),
            restores: Api::namespaced(client.clone(), ns),
            claims: Api::namespaced(client, ns),
            seen,
        })
    }

    /// When the watch first saw VMI `name` (the one with `uid`) in `phase` ("" = no phase
    /// yet, "*" = at all).
    fn first_seen(&self, name: &str, uid: &str, phase: &str) -> Option<Instant> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter()
            .filter(|s| s.name == name && s.uid == uid && (phase == "*" || s.phase == phase))
            .map(|s| s.at)
            .min()
    }

    /// Creates a VirtualMachineSnapshot of `vm` and waits for it to be ready: create → ready.
    async fn snapshot(&self, name: &str, vm: &str, memory: bool) -> Result<Duration> {
        let mut meta = json!({ "name": name });
        if memory {
            meta["annotations"] = json!({ kubevirt_api::memsnap::MEMORY: "true" });
        }
        let s: VirtualMachineSnapshot = obj(json!({
            "apiVersion": "snapshot.kubevirt.io/v1beta1",
            "kind": "VirtualMachineSnapshot",
            "metadata": meta,
            "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm}},
        }))?;
        let t0 = Instant::now();
        self.snaps.create(&PostParams::default(), &s).await?;
        let done = until(
            &self.snaps,
            name,
            &format!("snapshot {name}"),
            Duration::from_secs(600),
            |o| {
                field(o, "/status/readyToUse") == json!(true)
                    || field(o, "/status/phase") == json!("Failed")
            },
        )
        .await?;
        let got = self.snaps.get(name).await?;
        if field(Some(&got), "/status/readyToUse") != json!(true) {
            bail!(
                "snapshot {name} failed: {}",
                field(Some(&got), "/status/error")
            );
        }
        // The VM is unlocked just after (KubeVirt's order too); until then admission refuses
        // a change of its run strategy. Not counted.
        until(
            &self.vms,
            vm,
            &format!("{vm} unlocked after {name}"),
            Duration::from_secs(60),
            |o| field(o, "/status/snapshotInProgress").is_null(),
        )
        .await?;
        Ok(done - t0)
    }

    /// Creates a VirtualMachineRestore of `snapshot` onto `vm`; when it was asked for, when it
    /// was complete, and its uid.
    async fn restore(
        &self,
        name: &str,
        vm: &str,
        snapshot: &str,
    ) -> Result<(Instant, Instant, String)> {
        let r: VirtualMachineRestore = obj(json!({
            "apiVersion": "snapshot.kubevirt.io/v1beta1",
            "kind": "VirtualMachineRestore",
            "metadata": {"name": name},
            "spec": {
                "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm},
                "virtualMachineSnapshotName": snapshot,
            },
        }))?;
        let t0 = Instant::now();
        let created = self.restores.create(&PostParams::default(), &r).await?;
        let uid = created.metadata.uid.clone().unwrap_or_default();
        let done = until(
            &self.restores,
            name,
            &format!("restore {name}"),
            Duration::from_secs(120),
            |o| field(o, "/status/complete") == json!(true),
        )
        .await;
        match done {
            Ok(done) => Ok((t0, done, uid)),
            Err(e) => {
                let got = self.restores.get(name).await.ok();
                bail!("{e}: {}", field(got.as_ref(), "/status/conditions"))
            }
        }
    }

    async fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.snaps
            .delete(name, &Default::default())
            .await
            .with_context(|| format!("deleting snapshot {name}"))?;
        until(
            &self.snaps,
            name,
            &format!("snapshot {name} gone"),
            Duration::from_secs(120),
            |o| o.is_none(),
        )
        .await?;
        Ok(())
    }

    async fn run_strategy(&self, vm: &str, strategy: &str) -> Result<()> {
        self.vms
            .patch(
                vm,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"runStrategy": strategy}})),
            )
            .await
            .with_context(|| format!("runStrategy {strategy} for {vm}"))?;
        Ok(())
    }

    async fn stop(&self, vm: &str) -> Result<()> {
        self.run_strategy(vm, "Halted").await?;
        until(
            &self.vmis,
            vm,
            &format!("VMI {vm} gone"),
            Duration::from_secs(120),
            |o| o.is_none(),
        )
        .await?;
        Ok(())
    }

    /// Waits for the VMI to be Running and not paused; when, and its uid.
    async fn running(&self, vm: &str) -> Result<(Instant, String)> {
        let at = until(
            &self.vmis,
            vm,
            &format!("VMI {vm} Running"),
            Duration::from_secs(300),
            |o| {
                let paused = field(o, "/status/conditions").as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Paused" && c["status"] == "True")
                });
                field(o, "/status/phase") == json!("Running") && !paused
            },
        )
        .await;
        let at = match at {
            Ok(at) => at,
            Err(e) => {
                let got = self.vmis.get_opt(vm).await.ok().flatten();
                bail!("{e}: {}", field(got.as_ref(), "/status"))
            }
        };
        let uid = self
            .vmis
            .get(vm)
            .await?
            .metadata
            .uid
            .clone()
            .unwrap_or_default();
        Ok((at, uid))
    }

    /// Opens the VMI's console through virt-api's websocket (again every 50 ms while it
    /// refuses) and types `cmd` every 250 ms until `want` appears; when it did, and the output.
    async fn console(
        &self,
        vmi: &str,
        cmd: &str,
        want: &str,
        limit: Duration,
    ) -> Result<(Instant, String)> {
        let deadline = tokio::time::Instant::now() + limit;
        // virt-api refuses (409) until the VMI is Running.
        let ws = loop {
            match stream::open(&self.conn, vmi, "console").await {
                Ok(ws) => break ws,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => bail!("{vmi}'s console: {}", e.error),
            }
        };
        let (mine, theirs) = tokio::io::duplex(1 << 16);
        let pump = tokio::spawn(stream::splice(ws, theirs));
        let (mut rd, mut wr) = tokio::io::split(mine);
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        let mut first = true;
        let found = 'typing: loop {
            if tokio::time::Instant::now() >= deadline {
                break None;
            }
            let line = if first {
                format!("\n{cmd}\n")
            } else {
                format!("{cmd}\n")
            };
            first = false;
            wr.write_all(line.as_bytes()).await?;
            let again = tokio::time::Instant::now() + Duration::from_millis(250);
            loop {
                match tokio::time::timeout_at(again, rd.read(&mut buf)).await {
                    Err(_) => continue 'typing,
                    Ok(Ok(0)) => break 'typing None,
                    Ok(Ok(n)) => {
                        out.extend_from_slice(&buf[..n]);
                        if String::from_utf8_lossy(&out).contains(want) {
                            break 'typing Some(Instant::now());
                        }
                    }
                    Ok(Err(e)) => return Err(e).context("reading the console"),
                }
            }
        };
        pump.abort();
        let text = String::from_utf8_lossy(&out).replace('\r', "");
        match found {
            Some(at) => Ok((at, text)),
            None => {
                let tail: String = text
                    .chars()
                    .rev()
                    .take(400)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                bail!("{vmi}: `{cmd}` never printed {want:?}; last output: {tail}")
            }
        }
    }

    /// The guest's boot id, read on its console.
    async fn boot_id(&self, vmi: &str) -> Result<String> {
        let (_, out) = self
            .console(vmi, BOOT_ID, "=E42", Duration::from_secs(60))
            .await?;
        out.lines()
            .filter_map(|l| {
                let rest = &l[l.find("B=")? + 2..];
                let (id, _) = rest.split_once("=E42")?;
                Some(id.trim().to_string())
            })
            .next_back()
            .ok_or_else(|| anyhow!("no boot id in {out}"))
    }
}

fn kernel_boot(cmdline: &str) -> Value {
    json!({"kernelBoot": {
        "kernelArgs": cmdline,
        "container": {
            "image": "kubevirt-rs/demo-guest:latest",
            "kernelPath": "/boot/vmlinux",
            "initrdPath": "/boot/initrd.img",
        },
    }})
}

/// The demo VM: kernelBoot of the image's vmlinux, 256 MiB, cloud-init, no NIC; `data` adds a
/// disk for a DataVolume of that name.
fn vm(name: &str, cmdline: &str, data: Option<&str>) -> Result<VirtualMachine> {
    let mut disks = vec![json!({"name": "cloudinit", "disk": {"bus": "virtio"}})];
    let mut volumes = vec![json!({"name": "cloudinit", "cloudInitNoCloud": {
        "userData": "#!/bin/sh\necho bench guest up\n"}})];
    if let Some(dv) = data {
        disks.push(json!({"name": "data", "disk": {"bus": "virtio"}}));
        volumes.push(json!({"name": "data", "dataVolume": {"name": dv}}));
    }
    obj(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": "Halted",
            "template": {"spec": {
                "domain": {
                    "memory": {"guest": "256Mi"},
                    "firmware": kernel_boot(cmdline),
                    "devices": {
                        "autoattachGraphicsDevice": false,
                        "autoattachPodInterface": false,
                        "disks": disks,
                    },
                },
                "terminationGracePeriodSeconds": 0,
                "volumes": volumes,
            }},
        },
    }))
}

/// Writes `len` non-zero, non-repeating bytes over `path` (no hole, nothing a copy could skip)
/// and syncs it.
fn fill(path: &Path, len: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut written = 0u64;
    while written < len {
        for chunk in block.chunks_mut(8) {
            // xorshift64: never zero, so no all-zero 8-byte word either.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let n = (len - written).min(block.len() as u64) as usize;
        f.write_all(&block[..n])
            .with_context(|| format!("write {}", path.display()))?;
        written += n as u64;
    }
    f.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    Ok(())
}

/// The `disk.img` of the volume bound to `claim`.
fn claim_disk(s: &Server, claim: &str) -> Result<PathBuf> {
    let pv = s.jsonpath("pvc", claim, "{.spec.volumeName}");
    if pv.is_empty() || pv.contains("rror") {
        bail!("claim {claim} is not bound: {pv}");
    }
    let dir = s.jsonpath("pv", &pv, "{.spec.local.path}{.spec.hostPath.path}");
    Ok(Path::new(&dir).join("disk.img"))
}

#[derive(Default)]
struct Table {
    volume_mib: f64,
    fill_s: f64,
    offline: Vec<f64>,
    restore_complete: Vec<f64>,
    restore_bound: Vec<f64>,
    online: Vec<f64>,
    online_indications: String,
    mem_snapshot: Vec<f64>,
    mem_complete: Vec<f64>,
    mem_running: Vec<f64>,
    mem_echo: Vec<f64>,
    // The memory restore's span, step by step (from the previous step).
    step_start_to_vmi: Vec<f64>,
    step_vmi_to_scheduled: Vec<f64>,
    step_scheduled_to_running: Vec<f64>,
    step_running_to_echo: Vec<f64>,
    cold_running: Vec<f64>,
    cold_echo: Vec<f64>,
}

fn since(a: Instant, b: Option<Instant>) -> f64 {
    b.map(|b| secs(b.saturating_duration_since(a)))
        .unwrap_or(f64::NAN)
}

/// a) the 1 GiB volume.
async fn volume_part(
    b: &Bench,
    s: &Server,
    dir: &Path,
    cmdline: &str,
    runs: usize,
    t: &mut Table,
) -> Result<()> {
    let dv = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": "vol-data"},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}},
    });
    let file = dir.join("vol-data.json");
    std::fs::write(&file, dv.to_string())?;
    let out = tokio::task::block_in_place(|| {
        s.kubectl(&["apply", "-f", file.to_str().unwrap_or_default()])
    });
    if !out.contains("created") {
        bail!("creating the DataVolume: {out}");
    }
    b.vms
        .create(&PostParams::default(), &vm(VOL, cmdline, Some("vol-data"))?)
        .await?;
    let ok = tokio::task::block_in_place(|| {
        kubevirt_testsupport::wait_for(Duration::from_secs(120), || {
            s.jsonpath("dv", "vol-data", "{.status.phase}") == "Succeeded"
        })
    });
    if !ok {
        bail!(
            "the DataVolume never succeeded: {}",
            s.kubectl(&["get", "dv", "vol-data", "-o", "yaml"])
        );
    }
    let disk = claim_disk(s, "vol-data")?;
    let len = std::fs::metadata(&disk)?.len();
    t.volume_mib = len as f64 / f64::from(1 << 20);
    let t0 = Instant::now();
    let d = disk.clone();
    tokio::task::spawn_blocking(move || fill(&d, len)).await??;
    t.fill_s = secs(t0.elapsed());
    note!(
        "filled {} ({:.0} MiB) in {:.1} s",
        disk.display(),
        t.volume_mib,
        t.fill_s
    );

    for i in 0..runs {
        let d = b.snapshot(&format!("vol-off-{i}"), VOL, false).await?;
        note!("offline snapshot {i}: {:.2} s", secs(d));
        t.offline.push(secs(d));
    }
    for i in 0..runs {
        let (t0, complete, uid) = b
            .restore(&format!("vol-back-{i}"), VOL, &format!("vol-off-{i}"))
            .await?;
        let claim = format!("restore-{uid}-data");
        let bound = until(
            &b.claims,
            &claim,
            &format!("claim {claim} Bound"),
            Duration::from_secs(600),
            |o| field(o, "/status/phase") == json!("Bound"),
        )
        .await?;
        t.restore_complete.push(secs(complete - t0));
        t.restore_bound.push(secs(bound - t0));
        note!(
            "restore {i}: complete {:.2} s, claim bound {:.2} s",
            secs(complete - t0),
            secs(bound - t0)
        );
        // The restored volume holds the bytes: the head compares equal.
        let head = |p: &Path| -> Result<Vec<u8>> {
            let mut h = vec![0u8; 4096];
            std::io::Read::read_exact(&mut std::fs::File::open(p)?, &mut h)?;
            Ok(h)
        };
        let restored = claim_disk(s, &claim)?;
        if head(&restored)? != head(&disk)? {
            bail!("{} does not hold the volume's bytes", restored.display());
        }
        // Its 1 GiB copy goes with it (deletionPolicy Delete): less disk for the next ones.
        b.delete_snapshot(&format!("vol-off-{i}")).await?;
    }

    // Online: the VM running (its volume the last restored claim, all 1 GiB of it).
    b.run_strategy(VOL, "Always").await?;
    b.running(VOL).await?;
    b.console(VOL, ECHO, READY, Duration::from_secs(300))
        .await?;
    let agent = until(&b.vmis, VOL, "guest agent", Duration::from_secs(60), |o| {
        field(o, "/status/conditions").as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "AgentConnected" && c["status"] == "True")
        })
    })
    .await;
    if let Err(e) = agent {
        note!("no guest agent ({e}): the online snapshots stop the guest instead of freezing it");
    }
    for i in 0..runs {
        let name = format!("vol-on-{i}");
        let d = b.snapshot(&name, VOL, false).await?;
        let got = b.snaps.get(&name).await?;
        t.online_indications = field(Some(&got), "/status/indications").to_string();
        note!(
            "online snapshot {i}: {:.2} s {}",
            secs(d),
            t.online_indications
        );
        t.online.push(secs(d));
        b.running(VOL).await?;
        b.delete_snapshot(&name).await?;
    }
    b.stop(VOL).await?;
    Ok(())
}

/// b) and c): memory restore against cold boot, interleaved.
async fn memory_part(b: &Bench, cmdline: &str, runs: usize, t: &mut Table) -> Result<()> {
    b.vms
        .create(&PostParams::default(), &vm(DEMO, cmdline, None)?)
        .await?;
    let t0 = Instant::now();
    b.run_strategy(DEMO, "Always").await?;
    b.running(DEMO).await?;
    b.console(DEMO, ECHO, READY, Duration::from_secs(300))
        .await?;
    note!(
        "first boot (not counted): {:.2} s to echo",
        secs(t0.elapsed())
    );
    for i in 0..runs {
        // Read before the snapshot: Linux makes the boot id at its first read.
        let boot = b.boot_id(DEMO).await?;
        let snap = format!("mem-{i}");
        let d = b.snapshot(&snap, DEMO, true).await?;
        t.mem_snapshot.push(secs(d));
        b.running(DEMO).await?;
        b.stop(DEMO).await?;

        let (t0, complete, _) = b.restore(&format!("mem-back-{i}"), DEMO, &snap).await?;
        let start = Instant::now();
        b.run_strategy(DEMO, "Always").await?;
        let (running, uid) = b.running(DEMO).await?;
        let (echo, _) = b
            .console(DEMO, ECHO, READY, Duration::from_secs(300))
            .await?;
        let restored = b.boot_id(DEMO).await?;
        if restored != boot {
            bail!("run {i}: the restored guest booted (boot id {restored}, was {boot})");
        }
        let vmi_seen = b.first_seen(DEMO, &uid, "*");
        let scheduled = b.first_seen(DEMO, &uid, "Scheduled");
        t.mem_complete.push(secs(complete - t0));
        t.mem_running.push(secs(running - t0));
        t.mem_echo.push(secs(echo - t0));
        t.step_start_to_vmi.push(since(start, vmi_seen));
        t.step_vmi_to_scheduled
            .push(vmi_seen.map_or(f64::NAN, |v| since(v, scheduled)));
        t.step_scheduled_to_running
            .push(scheduled.map_or(f64::NAN, |s| since(s, Some(running))));
        t.step_running_to_echo.push(secs(echo - running));
        note!(
            "memory restore {i}: snapshot {:.2} s; restore → complete {:.3} s, → Running {:.3} s, → echo {:.3} s",
            secs(d),
            secs(complete - t0),
            secs(running - t0),
            secs(echo - t0)
        );
        b.stop(DEMO).await?;

        let t0 = Instant::now();
        b.run_strategy(DEMO, "Always").await?;
        let (running, _) = b.running(DEMO).await?;
        let (echo, _) = b
            .console(DEMO, ECHO, READY, Duration::from_secs(300))
            .await?;
        let booted = b.boot_id(DEMO).await?;
        if booted == boot {
            bail!("run {i}: the cold start did not boot (boot id {booted})");
        }
        t.cold_running.push(secs(running - t0));
        t.cold_echo.push(secs(echo - t0));
        note!(
            "cold boot {i}: → Running {:.3} s, → echo {:.2} s",
            secs(running - t0),
            secs(echo - t0)
        );
    }
    b.stop(DEMO).await?;
    Ok(())
}

fn print(t: &Table, runs: usize) {
    println!("| through the API, TCG, median of {runs} (each run) | seconds (ms where marked) |");
    println!("|---|---|");
    println!(
        "| **a) 1 GiB volume** ({:.0} MiB `disk.img`, filled with non-zero bytes by the bench from the host in {:.1} s, not sparse) | |",
        t.volume_mib, t.fill_s
    );
    println!(
        "| offline snapshot (VM stopped): create → readyToUse | {} |",
        cell(&t.offline, false)
    );
    println!(
        "| restore onto the stopped VM: create → complete | {} |",
        cell(&t.restore_complete, false)
    );
    println!(
        "| restore: create → restored claim Bound (1 GiB copied) | {} |",
        cell(&t.restore_bound, false)
    );
    println!(
        "| online snapshot (VM running, {}): create → readyToUse | {} |",
        t.online_indications,
        cell(&t.online, false)
    );
    println!("| **b) memory restore** (demo VM: kernelBoot, 256 MiB, no NIC) | |");
    println!(
        "| memory snapshot of the running VM: create → readyToUse | {} |",
        cell(&t.mem_snapshot, false)
    );
    println!(
        "| restore create → complete (ms) | {} |",
        cell(&t.mem_complete, true)
    );
    println!(
        "| restore create → VMI Running, incl. the start sent at complete (ms) | {} |",
        cell(&t.mem_running, true)
    );
    println!(
        "| **restore create → guest answers the console echo**, incl. the start (ms; target < 1000) | {} |",
        cell(&t.mem_echo, true)
    );
    println!(
        "| of which: start → VMI created (ms) | {} |",
        cell(&t.step_start_to_vmi, true)
    );
    println!(
        "| of which: VMI created → Scheduled (ms) | {} |",
        cell(&t.step_vmi_to_scheduled, true)
    );
    println!(
        "| of which: Scheduled → Running (ms) | {} |",
        cell(&t.step_scheduled_to_running, true)
    );
    println!(
        "| of which: Running → echo (ms) | {} |",
        cell(&t.step_running_to_echo, true)
    );
    println!("| **c) cold boot of the same VM** | |");
    println!(
        "| start → VMI Running (ms) | {} |",
        cell(&t.cold_running, true)
    );
    println!(
        "| **start → guest answers the console echo** | {} |",
        cell(&t.cold_echo, false)
    );
}

fn main() -> Result<()> {
    const USAGE: &str = "usage: snapshot-bench [RUNS] [--only volume|memory]";
    let (mut runs, mut only) = (3usize, None::<String>);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--only" => only = Some(args.next().context(USAGE)?),
            n => runs = n.parse().context(USAGE)?,
        }
    }
    if only
        .as_deref()
        .is_some_and(|o| o != "volume" && o != "memory")
    {
        bail!(USAGE);
    }
    if runs == 0 {
        bail!("RUNS must be at least 1");
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("locating the target directory beside the example")?;
    let bin = profile_dir.join("kubevirt-rs");
    if !bin.exists() {
        bail!("{} is missing: cargo build -p kubevirt-rs", bin.display());
    }
    let tmp = profile_dir
        .parent()
        .map(|t| t.join("tmp"))
        .context("locating target/tmp")?;
    let guest = kubevirt_testsupport::guest(&tmp.to_string_lossy())
        .context("the demo guest (guest/build.sh) or QEMU is missing")?;
    let cmdline = std::fs::read_to_string(guest.join("cmdline"))
        .with_context(|| format!("{}/cmdline", guest.display()))?;
    let cmdline = cmdline
        .lines()
        .find_map(|l| l.strip_prefix("q35="))
        .context("no q35= line in the guest's cmdline")?
        .to_string();

    let dir = tempfile::Builder::new()
        .prefix("snapshot-bench")
        .tempdir()?;
    note!("server data in {}", dir.path().display());
    let s = Server::started_with_guest(&bin, dir.path(), &guest);
    let rt = tokio::runtime::Runtime::new()?;
    let mut t = Table::default();
    let result = rt.block_on(async {
        let b = Bench::new(&s.kubeconfig()).await?;
        if only.as_deref() != Some("memory") {
            volume_part(&b, &s, dir.path(), &cmdline, runs, &mut t).await?;
        }
        if only.as_deref() != Some("volume") {
            memory_part(&b, &cmdline, runs, &mut t).await?;
        }
        Ok::<(), anyhow::Error>(())
    });
    drop(s);
    rt.shutdown_timeout(Duration::from_secs(1));
    result?;
    print(&t, runs);
    Ok(())
}

//! KubeVirt's per-VMI metrics of this node (virt-handler's `domainstats`): each launcher's
//! `Request::Stats` ([`kubevirt_launcher::api::stats::VmiStats`]) gathered before a scrape,
//! all launchers at once with a deadline per call, and cached for [`CACHE_FOR`] so scrapes
//! closer together than that cost nothing. Labels `node`, `namespace`, `name` as KubeVirt's,
//! plus `id`/`state`, `drive` or `interface`. The table is `docs/observability.md`.

use kubevirt_launcher::api::stats::{self, VmiStats};
use kubevirt_launcher::api::{LauncherClient, Request, Response, VmiDir, VmiOwner};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Scrapes within this long of the last gathering are answered from it.
pub const CACHE_FOR: Duration = Duration::from_secs(5);
/// The longest one launcher may take to answer.
pub const CALL_BUDGET: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Cache {
    at: Option<Instant>,
    /// Each VMI's statistics and its measured launcher overhead.
    vmis: Vec<(VmiOwner, VmiStats, Option<u64>)>,
}

/// Why the launcher overhead of a VMI was not measured.
#[derive(Debug, thiserror::Error)]
pub enum OverheadError {
    #[error("reading /proc/{pid}/{file}: {source}")]
    Read {
        pid: u32,
        file: &'static str,
        source: std::io::Error,
    },
    #[error("process {qemu} is not a child of launcher {launcher} (its parent: {parent:?})")]
    NotChild {
        qemu: u32,
        launcher: u32,
        parent: Option<u32>,
    },
    #[error("process {0} does not run with this VMI's QMP socket")]
    NotThisVmi(u32),
    #[error("/proc/{pid}/{file} does not parse")]
    Garbage { pid: u32, file: &'static str },
}

/// A process's `/proc/<pid>` directory, held open: every file read through it is that
/// process's, and reads fail once it is gone, so a pid reused meanwhile is never read.
struct ProcDir {
    pid: u32,
    dir: std::fs::File,
}

impl ProcDir {
    fn open(pid: u32) -> Result<ProcDir, OverheadError> {
        let dir =
            std::fs::File::open(format!("/proc/{pid}")).map_err(|source| OverheadError::Read {
                pid,
                file: "",
                source,
            })?;
        Ok(ProcDir { pid, dir })
    }

    fn read(&self, file: &'static str) -> Result<Vec<u8>, OverheadError> {
        use std::os::fd::AsRawFd;
        std::fs::read(format!("/proc/self/fd/{}/{file}", self.dir.as_raw_fd())).map_err(|source| {
            OverheadError::Read {
                pid: self.pid,
                file,
                source,
            }
        })
    }

    fn read_text(&self, file: &'static str) -> Result<String, OverheadError> {
        String::from_utf8(self.read(file)?).map_err(|_| OverheadError::Garbage {
            pid: self.pid,
            file,
        })
    }

    /// `VmRSS` of the process, in bytes.
    fn rss(&self) -> Result<u64, OverheadError> {
        stats::vm_rss_bytes(&self.read_text("status")?).ok_or(OverheadError::Garbage {
            pid: self.pid,
            file: "status",
        })
    }
}

/// KubeVirt's `kubevirt_vmi_launcher_memory_overhead_bytes` of the VMI in `dir`, read by the
/// node agent (root: QEMU runs under another uid, so only the agent may read its `smaps`):
/// the launcher's `VmRSS` plus QEMU's minus the guest RAM QEMU holds resident
/// ([`stats::guest_resident_bytes`]).
///
/// `launcher` is the kernel's word for the launcher's pid (`SO_PEERCRED` of its socket);
/// `qemu` the launcher's. QEMU's `/proc` entry must name the launcher as parent and carry the
/// VMI's QMP chardev ([`stats::is_qemu_of`]); all of QEMU's files are read through one open
/// `/proc/<pid>` and its parent is checked again at the end, so a process that ended and
/// whose pid was reused is not measured.
pub fn launcher_overhead(
    dir: &VmiDir,
    launcher: u32,
    qemu: u32,
    guest_bytes: u64,
) -> Result<u64, OverheadError> {
    let l = ProcDir::open(launcher)?;
    let q = ProcDir::open(qemu)?;
    let child_of_launcher = |q: &ProcDir| -> Result<(), OverheadError> {
        let parent = stats::parent_pid(&q.read_text("status")?);
        if parent == Some(launcher) {
            Ok(())
        } else {
            Err(OverheadError::NotChild {
                qemu,
                launcher,
                parent,
            })
        }
    };
    child_of_launcher(&q)?;
    if !stats::is_qemu_of(&q.read("cmdline")?, dir) {
        return Err(OverheadError::NotThisVmi(qemu));
    }
    let guest = stats::guest_resident_bytes(&q.read_text("smaps")?, guest_bytes).ok_or(
        OverheadError::Garbage {
            pid: qemu,
            file: "smaps",
        },
    )?;
    let qemu_rss = q.rss()?;
    let launcher_rss = l.rss()?;
    // Still the launcher's child: the launcher was alive all along, so `l` is it too.
    child_of_launcher(&q)?;
    Ok(stats::launcher_overhead_bytes(
        launcher_rss,
        qemu_rss,
        guest,
    ))
}

/// The collector of this node's per-VMI metrics.
pub struct NodeStats {
    data_dir: PathBuf,
    node: String,
    cache: Mutex<Cache>,
    /// One gathering at a time: concurrent scrapes wait for it and then use its result.
    gathering: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for NodeStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStats")
            .field("node", &self.node)
            .finish()
    }
}

impl NodeStats {
    /// Registers the collector and its refresher in the process registry.
    pub fn register(data_dir: &Path, node: &str) -> Arc<NodeStats> {
        let stats = Arc::new(NodeStats {
            data_dir: data_dir.to_path_buf(),
            node: node.to_string(),
            cache: Mutex::default(),
            gathering: tokio::sync::Mutex::new(()),
        });
        kubevirt_runtime::metrics::register_collector(Box::new(stats.clone()));
        let s = stats.clone();
        kubevirt_runtime::metrics::register_refresher(move || {
            let s = s.clone();
            Box::pin(async move { s.refresh().await })
        });
        stats
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self) -> bool {
        self.cache().at.is_some_and(|at| at.elapsed() < CACHE_FOR)
    }

    /// Asks every launcher of this node for its statistics, unless the cache is fresh.
    pub async fn refresh(&self) {
        let _one = self.gathering.lock().await;
        if self.fresh() {
            return;
        }
        let asks = VmiDir::all(&self.data_dir).into_iter().filter_map(|dir| {
            let owner = dir.owner()?;
            Some(async move {
                let mut client = LauncherClient::connect(&dir)
                    .await
                    .ok()?
                    .with_timeout(CALL_BUDGET);
                let peer = client.peer_pid();
                match client.call(Request::Stats).await {
                    Ok(Response::Stats(v)) => match serde_json::from_value::<VmiStats>(v) {
                        Ok(s) => {
                            let overhead = match (peer, s.qemu_pid) {
                                (Some(l), Some(q)) => {
                                    launcher_overhead(&dir, l, q, s.memory.guest_bytes)
                                        .map_err(|e| {
                                            tracing::debug!(error = %e, vmi = %owner.name, "launcher overhead");
                                        })
                                        .ok()
                                }
                                _ => None,
                            };
                            Some((owner, s, overhead))
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "a launcher's stats do not decode");
                            None
                        }
                    },
                    Ok(_) => None,
                    Err(e) => {
                        tracing::debug!(error = %e, vmi = %owner.name, "launcher stats");
                        None
                    }
                }
            })
        });
        let vmis = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        *self.cache() = Cache {
            at: Some(Instant::now()),
            vmis,
        };
    }
}

type Labels = Vec<(&'static str, String)>;

/// One family's rows: (name, help, counter?, samples).
type FamilyRows = (&'static str, &'static str, bool, Vec<(Labels, f64)>);

enum Value {
    Counter(f64),
    Gauge(f64),
}

/// The samples of one VMI: (family, help, extra labels, value).
fn samples(
    s: &VmiStats,
    overhead: Option<u64>,
) -> Vec<(&'static str, &'static str, Labels, Value)> {
    use Value::{Counter, Gauge};
    let mut out = Vec::new();
    if let Some(o) = overhead {
        out.push((
            "kubevirt_vmi_launcher_memory_overhead_bytes",
            "Estimation of the memory amount required for virt-launcher's infrastructure components (e.g. libvirt, QEMU).",
            vec![],
            Gauge(o as f64),
        ));
    }
    for v in &s.vcpus {
        out.push((
            "kubevirt_vmi_vcpu_seconds",
            "Total amount of time spent in each state by each vcpu (cpu_time excluding hypervisor time). Where `id` is the vcpu identifier and `state` can be one of the following: [`OFFLINE`, `RUNNING`, `BLOCKED`].",
            vec![("id", v.cpu.to_string()), ("state", "running".into())],
            Counter(v.user_seconds + v.system_seconds),
        ));
        if let Some(delay) = v.delay_seconds {
            out.push((
                "kubevirt_vmi_vcpu_delay_seconds",
                "Amount of time spent by each vcpu waiting in the queue instead of running.",
                vec![("id", v.cpu.to_string())],
                Counter(delay),
            ));
        }
    }
    let m = &s.memory;
    out.push((
        "kubevirt_vmi_memory_domain_bytes",
        "The amount of memory in bytes allocated to the domain. The `memory` value in domain xml file.",
        vec![],
        Gauge(m.guest_bytes as f64),
    ));
    if let Some(r) = m.resident_bytes {
        out.push((
            "kubevirt_vmi_memory_resident_bytes",
            "Resident set size of the process running the domain.",
            vec![],
            Gauge(r as f64),
        ));
    }
    if let Some(b) = m.balloon_actual_bytes {
        out.push((
            "kubevirt_vmi_memory_actual_balloon_bytes",
            "Current balloon size in bytes.",
            vec![],
            Gauge(b as f64),
        ));
    }
    let guest = m.guest_stats.clone().unwrap_or_default();
    for (stat, name, help, counter) in GUEST_STATS {
        // The balloon driver reports -1 for what the guest did not tell it.
        if let Some(v) = guest.get(*stat).copied().filter(|v| *v >= 0) {
            let v = v as f64;
            out.push((
                name,
                help,
                vec![],
                if *counter { Counter(v) } else { Gauge(v) },
            ));
        }
    }
    for b in &s.block {
        let l = || vec![("drive", b.drive.clone())];
        for (name, help, v) in [
            (
                "kubevirt_vmi_storage_iops_read",
                "Total number of I/O read operations.",
                b.rd_operations,
            ),
            (
                "kubevirt_vmi_storage_iops_write",
                "Total number of I/O write operations.",
                b.wr_operations,
            ),
            (
                "kubevirt_vmi_storage_read_traffic_bytes",
                "Total number of bytes read from storage.",
                b.rd_bytes,
            ),
            (
                "kubevirt_vmi_storage_write_traffic_bytes",
                "Total number of written bytes.",
                b.wr_bytes,
            ),
            (
                "kubevirt_vmi_storage_flush_requests",
                "Total storage flush requests.",
                b.flush_operations,
            ),
        ] {
            out.push((name, help, l(), Counter(v as f64)));
        }
    }
    for n in &s.net {
        let l = || vec![("interface", n.interface.clone())];
        for (name, help, v) in [
            (
                "kubevirt_vmi_network_receive_bytes",
                "Total network traffic received in bytes.",
                n.rx_bytes,
            ),
            (
                "kubevirt_vmi_network_transmit_bytes",
                "Total network traffic transmitted in bytes.",
                n.tx_bytes,
            ),
            (
                "kubevirt_vmi_network_receive_packets",
                "Total network traffic received packets.",
                n.rx_packets,
            ),
            (
                "kubevirt_vmi_network_transmit_packets",
                "Total network traffic transmitted packets.",
                n.tx_packets,
            ),
            (
                "kubevirt_vmi_network_receive_errors",
                "Total network received error packets.",
                n.rx_errors,
            ),
            (
                "kubevirt_vmi_network_transmit_errors",
                "Total network transmitted error packets.",
                n.tx_errors,
            ),
            (
                "kubevirt_vmi_network_receive_packets_dropped",
                "The total number of rx packets dropped on vNIC interfaces.",
                n.rx_dropped,
            ),
            (
                "kubevirt_vmi_network_transmit_packets_dropped",
                "The total number of tx packets dropped on vNIC interfaces.",
                n.tx_dropped,
            ),
        ] {
            out.push((name, help, l(), Counter(v as f64)));
        }
    }
    out
}

/// The balloon's guest statistics KubeVirt reports (through libvirt's memory stats), by
/// QEMU's name: (QEMU stat, family, help, counter?).
const GUEST_STATS: &[(&str, &str, &str, bool)] = &[
    ("stat-total-memory", "kubevirt_vmi_memory_available_bytes", "Amount of usable memory as seen by the domain. This value may not be accurate if a balloon driver is in use or if the guest OS does not initialize all assigned pages", false),
    ("stat-free-memory", "kubevirt_vmi_memory_unused_bytes", "The amount of memory left completely unused by the system. Memory that is available but used for reclaimable caches should NOT be reported as free.", false),
    ("stat-available-memory", "kubevirt_vmi_memory_usable_bytes", "The amount of memory which can be reclaimed by balloon without pushing the guest system to swap, corresponds to 'Available' in /proc/meminfo.", false),
    ("stat-disk-caches", "kubevirt_vmi_memory_cached_bytes", "The amount of memory that is being used to cache I/O and is available to be reclaimed, corresponds to the sum of `Buffers` + `Cached` + `SwapCached` in `/proc/meminfo`.", false),
    ("stat-swap-in", "kubevirt_vmi_memory_swap_in_traffic_bytes", "The total amount of data read from swap space of the guest in bytes.", false),
    ("stat-swap-out", "kubevirt_vmi_memory_swap_out_traffic_bytes", "The total amount of memory written out to swap space of the guest in bytes.", false),
    ("stat-major-faults", "kubevirt_vmi_memory_pgmajfault", "The number of page faults when disk IO was required. Page faults occur when a process makes a valid access to virtual memory that is not available. When servicing the page fault, if disk IO is required, it is considered as major fault.", true),
    ("stat-minor-faults", "kubevirt_vmi_memory_pgminfault", "The number of other page faults, when disk IO was not required. Page faults occur when a process makes a valid access to virtual memory that is not available. When servicing the page fault, if disk IO is NOT required, it is considered as minor fault.", true),
];

impl Collector for NodeStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Group by family: each family's descriptor once, then every VMI's samples.
        let cache = self.cache();
        let mut families: Vec<FamilyRows> = Vec::new();
        for (owner, stats, overhead) in &cache.vmis {
            for (name, help, extra, value) in samples(stats, *overhead) {
                let mut labels: Labels = vec![
                    ("node", self.node.clone()),
                    ("namespace", owner.namespace.clone()),
                    ("name", owner.name.clone()),
                ];
                labels.extend(extra);
                let (counter, v) = match value {
                    Value::Counter(v) => (true, v),
                    Value::Gauge(v) => (false, v),
                };
                match families.iter_mut().find(|f| f.0 == name) {
                    Some(f) => f.3.push((labels, v)),
                    None => families.push((name, help, counter, vec![(labels, v)])),
                }
            }
        }
        for (name, help, counter, rows) in families {
            let kind = if counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            for (labels, v) in &rows {
                let m = metric.encode_family(labels)?;
                if counter {
                    ConstCounter::new(*v).encode(m)?;
                } else {
                    ConstGauge::new(*v).encode(m)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The child of `parent` (scanning /proc), once it is there.
    fn child_of(parent: u32, dir: &VmiDir) -> u32 {
        for _ in 0..200 {
            for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                    continue;
                };
                let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                // Once it has exec'd its own command line (not the forking parent's copy).
                if stats::parent_pid(&status) == Some(parent) && stats::is_qemu_of(&cmdline, dir) {
                    return pid;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no child of {parent}");
    }

    /// A stand-in launcher (a shell) whose child runs with a VMI's QMP chardev: its overhead
    /// is both processes' RSS less the mappings as large as the guest; the same pid claimed
    /// for another VMI, under another parent, or once it has exited is refused.
    #[test]
    fn launcher_overhead_is_measured_only_for_the_vmis_own_qemu() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = VmiDir::new(root.path(), "default", "vm1").expect("dir");
        let other = VmiDir::new(root.path(), "default", "vm2").expect("dir");
        let chardev =
            kubevirt_launcher::qemu::devices::qmp_chardev(&dir.qmp_socket()).expect("chardev");
        // `; :` keeps the inner sh from exec'ing sleep, so its command line stays.
        let mut launcher = std::process::Command::new("sh")
            .args([
                "-c",
                "sh -c 'sleep 20; :' qemu -chardev \"$0\" & wait",
                &chardev,
            ])
            .spawn()
            .expect("sh");
        let l = launcher.id();
        let q = child_of(l, &dir);
        let rss = |pid| ProcDir::open(pid).and_then(|p| p.rss()).expect("rss");
        let huge = 1 << 50;
        // No mapping is as large as the guest: nothing subtracted (between the RSS sums read
        // before and after, should a shell still be settling).
        let before = rss(l) + rss(q);
        let got = launcher_overhead(&dir, l, q, huge).expect("measured");
        let (l_rss, q_rss) = (rss(l), rss(q));
        let after = l_rss + q_rss;
        assert!(
            (before.min(after)..=before.max(after)).contains(&got),
            "{got} not between {before} and {after}"
        );
        // A one-byte guest: every mapping counts as guest RAM, the launcher's RSS is left.
        let small = launcher_overhead(&dir, l, q, 1).expect("measured");
        assert!(small >= l_rss && small < l_rss + q_rss, "{small}");
        assert!(matches!(
            launcher_overhead(&other, l, q, huge),
            Err(OverheadError::NotThisVmi(p)) if p == q
        ));
        assert!(matches!(
            launcher_overhead(&dir, std::process::id(), q, huge),
            Err(OverheadError::NotChild { parent: Some(p), .. }) if p == l
        ));
        // The launcher itself is not a VMI's QEMU.
        assert!(launcher_overhead(&dir, std::process::id(), l, huge).is_err());
        assert!(launcher_overhead(&dir, 0, q, huge).is_err());
        unsafe { libc::kill(q as i32, libc::SIGKILL) };
        launcher.wait().expect("wait");
        assert!(launcher_overhead(&dir, l, q, huge).is_err());
    }
}

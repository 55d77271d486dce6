//! The launcher's answer to `Request::Stats`: what the node agent turns into KubeVirt's
//! per-VMI metrics (`kubevirt_vmi_vcpu_*`, `kubevirt_vmi_memory_*`, `kubevirt_vmi_storage_*`,
//! `kubevirt_vmi_network_*`). Carried as JSON in `Response::Stats`; this type is its one
//! definition, built by the launcher and read by the handler.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmiStats {
    #[serde(default)]
    pub vcpus: Vec<VcpuStats>,
    #[serde(default)]
    pub memory: MemoryStats,
    #[serde(default)]
    pub block: Vec<BlockStats>,
    #[serde(default)]
    pub net: Vec<NetStats>,
}

/// One vCPU thread's CPU time (from `/proc/<qemu>/task/<thread>/stat`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VcpuStats {
    pub cpu: i64,
    pub thread_id: i64,
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// Time the thread was runnable but waited for a host CPU (`/proc/.../schedstat`'s second
    /// field; libvirt's `vcpu.N.delay`, the guest's steal time). Absent where the kernel has
    /// no schedstat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<f64>,
}

/// The run-queue wait of a task, in seconds, from its `/proc/<pid>/task/<tid>/schedstat`
/// text (`<run ns> <wait ns> <timeslices>`).
pub fn schedstat_delay_seconds(schedstat: &str) -> Option<f64> {
    let wait_ns: u64 = schedstat.split_whitespace().nth(1)?.parse().ok()?;
    Some(wait_ns as f64 / 1e9)
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
pub fn vm_rss_bytes(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// The guest's memory (the machine's size).
    #[serde(default)]
    pub guest_bytes: u64,
    /// QEMU's resident set (`VmRSS`).
    #[serde(default)]
    pub resident_bytes: Option<u64>,
    /// `query-balloon`'s `actual`, when the machine has a balloon.
    #[serde(default)]
    pub balloon_actual_bytes: Option<u64>,
    /// The balloon driver's `guest-stats` (`stat-free-memory`, …), when the guest reports them.
    #[serde(default)]
    pub guest_stats: Option<HashMap<String, i64>>,
}

/// One disk's I/O counters from `query-blockstats`, by the VMI's disk name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockStats {
    pub drive: String,
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_operations: u64,
    pub wr_operations: u64,
    pub flush_operations: u64,
}

/// One interface's counters as the guest sees them (a tap's transmit is the guest's receive),
/// by the VMI's interface name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetStats {
    pub interface: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The counters of `tap` in a `/proc/<pid>/net/dev` text, from the guest's side.
pub fn tap_counters(net_dev: &str, tap: &str, interface: &str) -> Option<NetStats> {
    net_dev.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        if name.trim() != tap {
            return None;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        // Receive: bytes packets errs drop fifo frame compressed multicast (0..8);
        // transmit: bytes packets errs drop … (8..).
        Some(NetStats {
            interface: interface.to_string(),
            rx_bytes: at(8),
            rx_packets: at(9),
            rx_errors: at(10),
            rx_dropped: at(11),
            tx_bytes: at(0),
            tx_packets: at(1),
            tx_errors: at(2),
            tx_dropped: at(3),
        })
    })
}

/// The VMI disk name of a `query-blockstats` entry: `drive-<name>` (its `-drive` id), or the
/// `ua-<name>` device of its qdev path.
pub fn drive_name(device: &str, qdev: &str) -> Option<String> {
    if let Some(n) = device.strip_prefix("drive-") {
        return Some(n.to_string());
    }
    qdev.split('/')
        .find_map(|c| c.strip_prefix("ua-"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// schedstat's second field is the run-queue wait, `VmRSS` is read in bytes; garbage
    /// gives nothing rather than a wrong number.
    #[test]
    fn schedstat_and_rss_are_read_from_proc_texts() {
        assert_eq!(
            schedstat_delay_seconds("123456789 2500000000 77\n"),
            Some(2.5)
        );
        assert_eq!(schedstat_delay_seconds("123"), None);
        assert_eq!(schedstat_delay_seconds("1 x 2"), None);
        assert_eq!(
            vm_rss_bytes("Name:\tqemu\nVmRSS:\t   1640 kB\n"),
            Some(1640 * 1024)
        );
        assert_eq!(vm_rss_bytes("VmRSS: lots"), None);
    }

    #[test]
    fn tap_counters_are_turned_to_the_guests_side() {
        let dev = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  \
tap0:    1000      10    1    2    0     0          0         0     5000      50    3    4    0     0       0          0\n";
        let s = tap_counters(dev, "tap0", "default").unwrap();
        assert_eq!(
            (s.rx_bytes, s.rx_packets, s.rx_errors, s.rx_dropped),
            (5000, 50, 3, 4)
        );
        assert_eq!(
            (s.tx_bytes, s.tx_packets, s.tx_errors, s.tx_dropped),
            (1000, 10, 1, 2)
        );
        assert_eq!(s.interface, "default");
        assert!(tap_counters(dev, "tap1", "x").is_none());
    }

    #[test]
    fn drive_names_come_from_the_drive_id_or_the_device() {
        assert_eq!(
            drive_name("drive-rootdisk", "").as_deref(),
            Some("rootdisk")
        );
        assert_eq!(
            drive_name("", "/machine/peripheral/ua-data/virtio-backend").as_deref(),
            Some("data")
        );
        assert_eq!(drive_name("", "/machine/unattached/x"), None);
    }
}

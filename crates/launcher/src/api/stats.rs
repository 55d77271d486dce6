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
    /// The pid of the QEMU this launcher runs, for the node agent's overhead measurement
    /// ([`launcher_overhead_bytes`]). The agent does not take it on trust: it checks that the
    /// process is a child of the launcher it asked (the socket's peer) and runs with this
    /// VMI's QMP socket ([`is_qemu_of`]) before reading its memory maps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_pid: Option<u32>,
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

/// `PPid` of a `/proc/<pid>/status` text.
pub fn parent_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether a `/proc/<pid>/cmdline` (NUL-separated arguments) is the QEMU of the VMI in
/// `dir`: it has `-chardev` with this VMI's QMP socket, the value the launcher started it
/// with ([`crate::qemu::devices::qmp_chardev`]).
pub fn is_qemu_of(cmdline: &[u8], dir: &super::VmiDir) -> bool {
    let Ok(want) = crate::qemu::devices::qmp_chardev(&dir.qmp_socket()) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"-chardev" && w[1] == want.as_bytes())
}

/// The guest RAM QEMU holds resident, from its `/proc/<pid>/smaps` text: the `Rss` of every
/// mapping at least as large as the guest's memory and not executable (the RAM backends;
/// smaller mappings are QEMU's own, and an executable one is TCG's code buffer, never guest
/// RAM). `None` for a text that is not smaps (no mapping with `Size` and `Rss`, or a number
/// that does not parse), so garbage never turns into a number.
pub fn guest_resident_bytes(smaps: &str, guest_bytes: u64) -> Option<u64> {
    // (executable, size, rss), sizes in KiB, of each mapping seen.
    let mut maps: Vec<(bool, Option<u64>, Option<u64>)> = Vec::new();
    let kib = |v: &str| -> Option<u64> { v.trim().strip_suffix("kB")?.trim().parse().ok() };
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if u64::from_str_radix(lo, 16).is_ok() && u64::from_str_radix(hi, 16).is_ok() {
                let perms = words.next().unwrap_or("");
                maps.push((perms.as_bytes().get(2) == Some(&b'x'), None, None));
                continue;
            }
        }
        let Some(cur) = maps.last_mut() else { continue };
        if let Some(v) = line.strip_prefix("Size:") {
            cur.1 = Some(kib(v)?);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            cur.2 = Some(kib(v)?);
        }
    }
    let mut seen = false;
    let mut resident = 0u64;
    for (exec, size, rss) in maps {
        let (Some(size), Some(rss)) = (size, rss) else {
            continue;
        };
        seen = true;
        if !exec && size.saturating_mul(1024) >= guest_bytes {
            resident = resident.saturating_add(rss.saturating_mul(1024));
        }
    }
    seen.then_some(resident)
}

/// KubeVirt's `kubevirt_vmi_launcher_memory_overhead_bytes` as measured on the node: what the
/// launcher and QEMU hold resident besides the guest's RAM.
pub fn launcher_overhead_bytes(launcher_rss: u64, qemu_rss: u64, guest_resident: u64) -> u64 {
    launcher_rss.saturating_add(qemu_rss.saturating_sub(guest_resident))
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

    /// The guest RAM is the Rss of the mappings as large as the guest; QEMU's PPid and its
    /// QMP chardev identify it; garbage gives no number.
    #[test]
    fn overhead_is_read_from_smaps_status_and_cmdline() {
        let smaps = "\
55d4c8a00000-55d4c8b00000 r-xp 00000000 08:01 1234                       /usr/bin/qemu-system-x86_64
Size:               1024 kB
KernelPageSize:        4 kB
Rss:                 800 kB
Pss:                 800 kB
VmFlags: rd ex mr mw me dw
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:               65536 kB
VmFlags: rd wr mr mw me ac
7f0010000000-7f0010100000 rw-p 00000000 00:00 0                          [heap]
Size:               1024 kB
Rss:                1000 kB
7f0020000000-7f0060000000 rwxp 00000000 00:00 0
Size:            1048576 kB
Rss:                4000 kB
";
        let guest = 128 * 1024 * 1024;
        assert_eq!(guest_resident_bytes(smaps, guest), Some(65536 * 1024));
        // TCG's code buffer (rwx) is as large as the guest but is not guest RAM; a bigger
        // guest than any mapping: nothing of it is resident.
        assert_eq!(guest_resident_bytes(smaps, guest * 2), Some(0));
        assert_eq!(guest_resident_bytes("", guest), None);
        assert_eq!(guest_resident_bytes("Rss: 5 kB\nnot smaps\n", guest), None);
        assert_eq!(
            guest_resident_bytes("7f00-7f10 rw-p 0 00:00 0\nSize: many kB\nRss: 4 kB\n", 1),
            None
        );
        assert_eq!(
            guest_resident_bytes("7f00-7f10 rw-p 0 00:00 0\nSize: 4 kB\nRss: -4 kB\n", 1),
            None
        );
        // 20 MiB of launcher, 100 MiB of QEMU of which 64 MiB guest: 56 MiB.
        assert_eq!(
            launcher_overhead_bytes(20 << 20, 100 << 20, 64 << 20),
            56 << 20
        );
        assert_eq!(launcher_overhead_bytes(1, 5, 10), 1);

        assert_eq!(parent_pid("Name:\tqemu\nPid:\t77\nPPid:\t42\n"), Some(42));
        assert_eq!(parent_pid("PPid:\tx\n"), None);
        assert_eq!(parent_pid(""), None);

        let dir = super::super::VmiDir::new(std::path::Path::new("/run/kv"), "default", "vm1")
            .expect("dir");
        let socket = dir.qmp_socket();
        let qemu = format!(
            "qemu-system-x86_64\0-chardev\0socket,id=qmp,path={},server=on,wait=off\0-mon\0chardev=qmp,mode=control\0",
            socket.display()
        );
        assert!(is_qemu_of(qemu.as_bytes(), &dir));
        let other = super::super::VmiDir::new(std::path::Path::new("/run/kv"), "default", "vm2")
            .expect("dir");
        assert!(!is_qemu_of(qemu.as_bytes(), &other));
        // The path somewhere else in the command line is not the QMP chardev.
        let impostor = format!("sleep\0{}\0", socket.display());
        assert!(!is_qemu_of(impostor.as_bytes(), &dir));
        assert!(!is_qemu_of(b"", &dir));
        assert!(!is_qemu_of(&[0xff, 0, 0xfe], &dir));
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

//! Memory snapshots (beyond KubeVirt): the running guest's RAM and device state saved to a
//! file of its VMI directory (`saveState`), and a VMI started from such a file
//! (`restore-memory.json`), so processes in the guest go on where they were.
//! docs/memory-snapshots.md has the whole design.
//!
//! The state file is QEMU's own migration stream (QEMU 7.2 has no `file:` URI or mapped-ram:
//! the launcher opens the file and hands QEMU the descriptor, `fd:` migration). Next to it,
//! [`SavedState`] (`state/memory.json`) says what machine it belongs to; a VMI is started from
//! it only when its machine renders the same ([`MachineFacts`]), checked before QEMU runs.

use serde::{Deserialize, Serialize};

/// The version of [`SavedState`]'s layout and of what the launcher writes beside it.
pub const FORMAT: u32 = 1;

/// State reasons of a memory snapshot (`State.reason`).
pub mod reason {
    /// `saveState` left the guest paused (postmigrate: its disks are released and consistent).
    pub const STATE_SAVED: &str = "MemorySaved";
    /// The guest was started from a saved state.
    pub const RESTORED: &str = "RestoredFromMemory";
}

/// What makes a guest's state loadable into a machine: the QEMU options that shape what the
/// guest sees (`-machine`, `-accel`, `-cpu`, `-smp`, `-m`, `-global`, `-object`, `-serial` and
/// every `-device`, MACs included), each as `"-option value"`, in argv order. Host-side
/// options (paths, sockets, ports, the VMI's name and firmware UUID) are not part of it: a
/// VMI restored under another name or in another directory has the same facts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MachineFacts(pub Vec<String>);

/// The QEMU options that belong to [`MachineFacts`].
pub const FACT_OPTIONS: [&str; 8] = [
    "-machine", "-accel", "-cpu", "-smp", "-m", "-global", "-object", "-serial",
];

impl MachineFacts {
    /// The facts of a rendered QEMU argv.
    pub fn from_argv(argv: &[String]) -> MachineFacts {
        let mut facts = Vec::new();
        let mut it = argv.iter();
        while let Some(a) = it.next() {
            if a == "-device" || FACT_OPTIONS.contains(&a.as_str()) {
                if let Some(v) = it.next() {
                    facts.push(format!("{a} {v}"));
                }
            }
        }
        MachineFacts(facts)
    }

    /// How `now` (the machine a VMI renders) differs from `self` (the saved one), for a
    /// person: the first option that differs, missing or is new, by its id or driver.
    pub fn mismatch(&self, now: &MachineFacts) -> Option<String> {
        if self == now {
            return None;
        }
        let key = |f: &str| -> String {
            let (opt, val) = f.split_once(' ').unwrap_or((f, ""));
            if opt == "-global" {
                return format!("{opt} {}", val.split('=').next().unwrap_or(val));
            }
            if opt != "-device" && opt != "-object" {
                return opt.to_string();
            }
            let id = val
                .split(',')
                .find_map(|kv| kv.strip_prefix("id="))
                .unwrap_or_else(|| val.split(',').next().unwrap_or(val));
            format!("{opt} {id}")
        };
        for s in &self.0 {
            match now.0.iter().find(|n| key(n) == key(s)) {
                None => return Some(format!("the saved machine has `{s}`, this VMI has none")),
                Some(n) if n != s => {
                    return Some(format!(
                        "the saved machine has `{s}`, this VMI renders `{n}`"
                    ))
                }
                _ => {}
            }
        }
        for n in &now.0 {
            if !self.0.iter().any(|s| key(s) == key(n)) {
                return Some(format!("this VMI has `{n}`, the saved machine had not"));
            }
        }
        Some("the same options in another order (device order decides guest addresses)".into())
    }
}

/// A saved guest state: the `saveState` reply, `state/memory.json` beside the state file, and
/// what `restore-memory.json` names to start from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedState {
    /// [`FORMAT`].
    pub format: u32,
    /// `namespace/name` of the VMI it was saved from.
    pub vmi: String,
    /// QEMU's version that wrote it (`query-version`: `7.2.x`). A QEMU can load the streams of
    /// older versions for the same versioned machine type, not of newer ones.
    pub qemu_version: String,
    /// The machine it can be loaded into.
    pub machine: MachineFacts,
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// The state file's size, bytes (checked before a restore reads it).
    pub size_bytes: u64,
    /// From the request to the file on disk (guest stopped, stream written, synced), ms.
    pub duration_ms: u64,
    /// The guest was running when saved (a restore runs it again, unless the VMI says
    /// `startStrategy: Paused`); a guest paused by its user is restored paused.
    pub guest_running: bool,
    /// Unix time, seconds.
    pub saved_at: f64,
}

/// A `dumpMemory` reply: the ELF core in `state/memory.dump`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryDump {
    /// `elf` (QEMU's `dump-guest-memory` without paging: every guest RAM byte).
    pub format: String,
    pub size_bytes: u64,
    pub duration_ms: u64,
}

/// `restore-memory.json`: the handler's instruction to start this VMI from the saved state in
/// its directory (`state/memory.bin`, hard-linked or copied there by the handler) instead of
/// booting it. `saved` is the [`SavedState`] the `saveState` reply gave (kept by the
/// controller with the snapshot): the file must have its size, and the VMI its machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryRestore {
    pub saved: SavedState,
}

/// A save's progress (`{"event":"StateSave",...}` to subscribers): QEMU's `query-migrate`
/// while it writes the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaveProgress {
    /// QEMU's word: setup, active, completed, failed.
    pub status: String,
    pub transferred_bytes: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
}

/// Why a guest state cannot be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum MemoryStateError {
    /// The saved machine and this VMI's differ: QEMU would refuse the stream (or worse, load
    /// it into a different device).
    #[error("the saved state does not fit this VMI's machine: {0}")]
    Mismatch(String),
    #[error("the saved state has format {found}; this launcher reads format {FORMAT}")]
    Format { found: u32 },
    #[error("{path}: the state file has {found} bytes, the saved state says {expected}")]
    Size {
        path: String,
        expected: u64,
        found: u64,
    },
    /// A disk whose content the launcher makes anew at each start: a restored guest would
    /// find other data than it left there (its page cache says otherwise).
    #[error("disk {0}: a containerDisk or emptyDisk is made anew at each start, so a guest restored from memory would find other data on it; use a persistentVolumeClaim or dataVolume")]
    EphemeralDisk(String),
    #[error("a save of this VMI's state is in progress")]
    InProgress,
    /// QEMU refused the stream, or writing it failed; with QEMU's own words.
    #[error("{what}: {detail}")]
    Qemu { what: &'static str, detail: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn facts_keep_what_the_guest_sees_and_leave_out_host_paths_and_names() {
        let a = argv(
            "-name guest=ns_a -machine q35 -accel tcg -cpu max -smp 1,sockets=1 -m 256M \
             -uuid 1234 -chardev socket,id=qmp,path=/a/sockets/qmp.sock -serial chardev:serial0 \
             -drive file=/a/disks/c.iso,id=drive-c -device virtio-blk-pci,drive=drive-c,id=ua-c \
             -netdev user,id=net0,hostfwd=tcp:127.0.0.1:4000-:22 \
             -device virtio-net-pci,netdev=net0,id=ua-default,mac=52:54:00:00:00:01",
        );
        let f = MachineFacts::from_argv(&a);
        assert_eq!(
            f.0,
            [
                "-machine q35",
                "-accel tcg",
                "-cpu max",
                "-smp 1,sockets=1",
                "-m 256M",
                "-serial chardev:serial0",
                "-device virtio-blk-pci,drive=drive-c,id=ua-c",
                "-device virtio-net-pci,netdev=net0,id=ua-default,mac=52:54:00:00:00:01",
            ]
        );
        // Another name, directory and host port: the same machine.
        let b: Vec<String> = a
            .iter()
            .map(|s| {
                s.replace("/a/", "/b/")
                    .replace("ns_a", "ns_b")
                    .replace("4000", "4001")
            })
            .collect();
        assert_eq!(f.mismatch(&MachineFacts::from_argv(&b)), None);
        // Memory, a MAC, a device more or less: named.
        let bigger: Vec<String> = a.iter().map(|s| s.replace("256M", "512M")).collect();
        let m = f.mismatch(&MachineFacts::from_argv(&bigger)).unwrap();
        assert!(m.contains("`-m 256M`") && m.contains("`-m 512M`"), "{m}");
        let mac: Vec<String> = a.iter().map(|s| s.replace(":01", ":02")).collect();
        let m = f.mismatch(&MachineFacts::from_argv(&mac)).unwrap();
        assert!(m.contains("ua-default") && m.contains(":02"), "{m}");
        let fewer = MachineFacts(f.0[..f.0.len() - 1].to_vec());
        let m = f.mismatch(&fewer).unwrap();
        assert!(
            m.contains("this VMI has none") && m.contains("ua-default"),
            "{m}"
        );
        let m = fewer.mismatch(&f).unwrap();
        assert!(m.contains("the saved machine had not"), "{m}");
        let mut swapped = f.clone();
        swapped.0.swap(6, 7);
        assert!(f.mismatch(&swapped).unwrap().contains("order"));
    }

    #[test]
    fn restore_instructions_round_trip_and_refuse_unknown_fields() {
        let saved = SavedState {
            format: FORMAT,
            vmi: "e2e/a".into(),
            qemu_version: "7.2.15".into(),
            machine: MachineFacts(vec!["-m 256M".into()]),
            memory_bytes: 256 << 20,
            size_bytes: 1234,
            duration_ms: 80,
            guest_running: true,
            saved_at: 1.5,
        };
        let v = serde_json::to_value(MemoryRestore {
            saved: saved.clone(),
        })
        .unwrap();
        assert_eq!(v["saved"]["machine"], json!(["-m 256M"]));
        assert_eq!(v["saved"]["sizeBytes"], 1234);
        assert_eq!(
            serde_json::from_value::<MemoryRestore>(v).unwrap().saved,
            saved
        );
        // The file never names a path: a `path` (or anything else) is refused.
        let e = serde_json::from_value::<MemoryRestore>(json!({
            "saved": serde_json::to_value(&saved).unwrap(), "path": "/etc/shadow"}))
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}

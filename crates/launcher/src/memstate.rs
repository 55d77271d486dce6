//! Memory snapshots (beyond KubeVirt): `saveState` writes the running guest's RAM and device
//! state to `DIR/state/memory.bin`, and a launcher whose directory has `restore-memory.json`
//! starts its VMI from that file instead of booting it. The contract (what is saved, the
//! restore instruction, the reasons) is [`crate::api::memstate`]; docs/memory-snapshots.md
//! has the design.
//!
//! QEMU 7.2 has no `file:` migration URI: the launcher (root) opens the file beneath the VMI
//! directory (`openat2`, no symlinks) and hands QEMU the descriptor (`getfd` over QMP,
//! `SCM_RIGHTS`); QEMU, unprivileged and sandboxed, writes or reads its migration stream on it
//! (`migrate fd:memstate`, `migrate-incoming fd:memstate`) and never sees a path. The stream
//! is guest-controlled data, which QEMU already parses from the network in a live migration.
//!
//! Save: the guest is stopped first, so the stream is one pass (no dirty-page rounds) and is
//! the guest at one instant; QEMU ends in `postmigrate` with its disks released, so a caller
//! can copy them consistently; `cont` resumes it (on request, or the caller's `unpause`).
//!
//! Restore: the VMI's machine must render the same [`MachineFacts`] as the saved one, checked
//! before anything is created or QEMU runs; QEMU starts with `-S -incoming defer`, loads the
//! stream, and the launcher `cont`s it. A stream QEMU refuses ends its QEMU before `start`
//! returns the error.

use crate::api::memstate::{
    reason, MachineFacts, MemoryDump, MemoryRestore, MemoryStateError, SaveProgress, SavedState,
    FORMAT,
};
use crate::api::VmiDir;
use crate::launcher::{now, LaunchError, Phase, Vm};
use crate::machine::{DiskSource, MachineSpec};
use crate::qmp::{MigrationInfo, Qmp};
use serde_json::{json, Value};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// The descriptor's name in QEMU (`getfd`), and so the `fd:` URI.
pub const FD_NAME: &str = "memstate";
/// How often the launcher asks QEMU how a save or a load goes.
const POLL: Duration = Duration::from_millis(5);
/// Progress events of a save at most this often.
const PROGRESS_PERIOD: Duration = Duration::from_millis(400);
/// The longest a load may take (a few GiB from disk).
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// The migration URI of the state file's descriptor.
pub fn uri() -> String {
    format!("fd:{FD_NAME}")
}

/// `migrate-set-capabilities` for a save or a load: events only. `return-path` must be off (a
/// file has no way back), and whatever an earlier live migration of this QEMU set is reset.
pub fn capabilities() -> Value {
    let caps = [
        ("events", true),
        ("return-path", false),
        ("multifd", false),
        ("postcopy-ram", false),
        ("auto-converge", false),
        ("pause-before-switchover", false),
    ];
    Value::Array(
        caps.into_iter()
            .map(|(c, on)| json!({ "capability": c, "state": on }))
            .collect(),
    )
}

/// A writable disk whose content the launcher makes anew at each start (a containerDisk's
/// overlay, an emptyDisk): the saved guest's view of it would not survive a restore.
pub fn ephemeral_disk(spec: &MachineSpec) -> Option<&str> {
    spec.disks
        .iter()
        .find(|d| {
            !d.readonly
                && matches!(
                    d.source,
                    DiskSource::ContainerDisk { .. } | DiskSource::EmptyDisk { .. }
                )
        })
        .map(|d| d.name.as_str())
}

fn io(path: &Path, e: crate::paths::PathError) -> LaunchError {
    let source = match e {
        crate::paths::PathError::Io { source, .. } => source,
        e => std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
    };
    LaunchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything a restore needs that can be checked before QEMU runs: the format, the disks, the
/// machine, and the state file (opened beneath the VMI directory, a regular file of the saved
/// size). Returns the open file.
pub fn check_restore(
    r: &MemoryRestore,
    spec: &MachineSpec,
    facts: &MachineFacts,
    dir: &VmiDir,
) -> Result<File, LaunchError> {
    let saved = &r.saved;
    if saved.format != FORMAT {
        return Err(MemoryStateError::Format {
            found: saved.format,
        }
        .into());
    }
    if let Some(d) = ephemeral_disk(spec) {
        return Err(MemoryStateError::EphemeralDisk(d.into()).into());
    }
    if let Some(why) = saved.machine.mismatch(facts) {
        return Err(MemoryStateError::Mismatch(why).into());
    }
    let path = dir.memory_state();
    let file = crate::paths::open_file_beneath(dir.path(), &path).map_err(|e| io(&path, e))?;
    let meta = file.metadata().map_err(|source| LaunchError::Io {
        path: path.clone(),
        source,
    })?;
    if !meta.is_file() || meta.len() != saved.size_bytes {
        return Err(MemoryStateError::Size {
            path: path.display().to_string(),
            expected: saved.size_bytes,
            found: meta.len(),
        }
        .into());
    }
    Ok(file)
}

/// Load the state file into a QEMU started with `-S -incoming defer`; the guest stays paused.
/// QEMU's reason when it refuses the stream (it then exits by itself).
pub async fn load(qmp: &Qmp, file: &File) -> Result<(), MemoryStateError> {
    let what = "loading the saved state";
    let err = |e: crate::qmp::QmpError| MemoryStateError::Qemu {
        what,
        detail: e.to_string(),
    };
    qmp.getfd(FD_NAME, file.as_fd()).await.map_err(err)?;
    qmp.migrate_set_capabilities(capabilities())
        .await
        .map_err(err)?;
    qmp.migrate_incoming(&uri()).await.map_err(err)?;
    let t = Instant::now();
    loop {
        let info = qmp.query_migrate().await.map_err(err)?;
        match info.status.as_deref() {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                return Err(MemoryStateError::Qemu {
                    what,
                    detail: info
                        .error_desc
                        .unwrap_or_else(|| "QEMU refused the stream".into()),
                })
            }
            _ => {}
        }
        if t.elapsed() > LOAD_TIMEOUT {
            return Err(MemoryStateError::Qemu {
                what,
                detail: format!("not loaded within {LOAD_TIMEOUT:?}"),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn progress(info: &MigrationInfo) -> SaveProgress {
    let ram = info.ram.clone().unwrap_or_default();
    SaveProgress {
        status: info.status.clone().unwrap_or_default(),
        transferred_bytes: ram.transferred,
        remaining_bytes: ram.remaining,
        total_bytes: ram.total,
    }
}

/// The dump's descriptor name in QEMU.
const DUMP_FD_NAME: &str = "memdump";

impl Vm {
    /// `dumpMemory`: see [`crate::api::Request::DumpMemory`].
    pub async fn dump_memory(&self) -> Result<MemoryDump, LaunchError> {
        let _one = self.migration_lock.lock().await;
        self.ensure_guest("cannot dump the guest memory")?;
        self.ensure_not_frozen("cannot dump the guest memory while it is frozen for a snapshot")?;
        let t0 = Instant::now();
        let dir = VmiDir::unchecked(&self.dir);
        private_state_dir(&dir)?;
        let path = dir.memory_dump();
        let file = crate::paths::create_file_beneath(dir.path(), &path, 0o600)
            .map_err(|e| io(&path, e))?;
        let was_running = self
            .qmp
            .query_status()
            .await
            .map_err(|e| self.qmp_err(e))?
            .running;
        self.lock().saving = true;
        let written = async {
            let q = &self.qmp;
            q.getfd(DUMP_FD_NAME, file.as_fd())
                .await
                .map_err(|e| self.qmp_err(e))?;
            if was_running {
                // QEMU stops the guest for the dump (and resumes it after): no pause of anyone's.
                self.lock().expected_stops += 1;
            }
            q.command(
                "dump-guest-memory",
                json!({ "paging": false, "protocol": format!("fd:{DUMP_FD_NAME}"), "detach": true }),
            )
            .await
            .map_err(|e| {
                if was_running {
                    // Refused: QEMU did not stop the guest.
                    self.unexpect_stop();
                }
                self.qmp_err(e)
            })?;
            loop {
                tokio::time::sleep(POLL).await;
                let st = q
                    .execute_value("query-dump", None, Duration::from_secs(10))
                    .await
                    .map_err(|e| self.qmp_err(e))?;
                match st.get("status").and_then(Value::as_str) {
                    Some("completed") => break,
                    Some("failed") => {
                        return Err(LaunchError::from(MemoryStateError::Qemu {
                            what: "dumping the guest memory",
                            detail: "QEMU's dump failed (see qemu.log)".into(),
                        }))
                    }
                    _ => {}
                }
            }
            file.sync_all()
                .and_then(|()| file.metadata())
                .map_err(|source| LaunchError::Io {
                    path: path.clone(),
                    source,
                })
        }
        .await;
        self.lock().saving = false;
        let meta = match written {
            Ok(m) => m,
            Err(e) => {
                let _ = crate::paths::remove_beneath(dir.path(), &path);
                return Err(e);
            }
        };
        let dump = MemoryDump {
            format: "elf".into(),
            size_bytes: meta.len(),
            duration_ms: t0.elapsed().as_millis() as u64,
        };
        tracing::info!(vmi = %self.spec.vmi, bytes = dump.size_bytes, ms = dump.duration_ms, "guest memory dumped");
        Ok(dump)
    }

    /// A STOP the launcher expected will not come (the command that would stop was refused).
    fn unexpect_stop(&self) {
        let mut i = self.lock();
        i.expected_stops = i.expected_stops.saturating_sub(1);
    }

    /// `saveState`: see [`crate::api::Request::SaveState`].
    pub async fn save_state(&self, resume: bool) -> Result<SavedState, LaunchError> {
        let _one = self.migration_lock.lock().await;
        self.ensure_guest("cannot save the guest state")?;
        self.ensure_not_frozen("cannot save the guest state while it is frozen for a snapshot")?;
        self.check_unchanged().await?;
        if let Some(d) = ephemeral_disk(&self.spec) {
            return Err(MemoryStateError::EphemeralDisk(d.into()).into());
        }
        let t0 = Instant::now();
        let dir = VmiDir::unchecked(&self.dir);
        private_state_dir(&dir)?;
        // A manifest beside a half-written file would lie: it goes first, and comes back last.
        let manifest = dir.memory_state_manifest();
        crate::paths::remove_beneath(dir.path(), &manifest).map_err(|e| io(&manifest, e))?;
        let path = dir.memory_state();
        let file = crate::paths::create_file_beneath(dir.path(), &path, 0o600)
            .map_err(|e| io(&path, e))?;
        let was_running = self
            .qmp
            .query_status()
            .await
            .map_err(|e| self.qmp_err(e))?
            .running;
        self.lock().saving = true;
        let saved = self.write_stream(&file, was_running).await;
        let result = match saved {
            Ok(()) => file
                .sync_all()
                .and_then(|()| file.metadata())
                .map_err(|source| LaunchError::Io {
                    path: path.clone(),
                    source,
                }),
            Err(e) => Err(e),
        };
        let size = match result {
            Ok(m) => m.len(),
            Err(e) => {
                if was_running {
                    // The guest goes on as if nothing was asked.
                    if let Err(c) = self.qmp.cont().await {
                        tracing::warn!(error = %c, "resuming the guest after a failed save");
                    }
                }
                self.lock().saving = false;
                let _ = crate::paths::remove_beneath(dir.path(), &path);
                return Err(e);
            }
        };
        let saved = SavedState {
            format: FORMAT,
            vmi: self.spec.vmi.clone(),
            qemu_version: self.qmp.version.clone(),
            machine: self.facts.clone(),
            memory_bytes: self.spec.memory.bytes,
            size_bytes: size,
            duration_ms: t0.elapsed().as_millis() as u64,
            guest_running: was_running,
            saved_at: now(),
        };
        let written = dir.write_saved_state(&saved);
        self.lock().saving = false;
        written.map_err(|e| LaunchError::Io {
            path: manifest.clone(),
            source: std::io::Error::other(e),
        })?;
        tracing::info!(vmi = %self.spec.vmi, bytes = size, ms = saved.duration_ms, "guest state saved");
        if resume && was_running {
            self.qmp.cont().await.map_err(|e| self.qmp_err(e))?;
            self.set_phase(
                Phase::Running,
                reason::STATE_SAVED,
                "the guest state was saved; the guest runs on",
            );
        } else {
            self.set_phase(
                Phase::Paused,
                reason::STATE_SAVED,
                "the guest state was saved; the guest is paused (unpause to continue)",
            );
        }
        Ok(saved)
    }

    /// Stop the guest (if it runs), and have QEMU write its migration stream to `file`,
    /// publishing progress, until it completes.
    async fn write_stream(&self, file: &File, was_running: bool) -> Result<(), LaunchError> {
        let q = &self.qmp;
        let fail = |detail: String| MemoryStateError::Qemu {
            what: "saving the guest state",
            detail,
        };
        q.getfd(FD_NAME, file.as_fd())
            .await
            .map_err(|e| self.qmp_err(e))?;
        q.migrate_set_capabilities(capabilities())
            .await
            .map_err(|e| self.qmp_err(e))?;
        q.migrate_set_parameters(json!({ "max-bandwidth": crate::migration::UNLIMITED_BANDWIDTH }))
            .await
            .map_err(|e| self.qmp_err(e))?;
        if was_running {
            // Our own `stop` is no pause of the user's or QEMU's.
            self.lock().expected_stops += 1;
            if let Err(e) = q.stop().await {
                self.unexpect_stop();
                return Err(self.qmp_err(e));
            }
        }
        q.migrate(&uri()).await.map_err(|e| self.qmp_err(e))?;
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(POLL).await;
            let info = q.query_migrate().await.map_err(|e| self.qmp_err(e))?;
            let p = progress(&info);
            let done = matches!(p.status.as_str(), "completed" | "failed" | "cancelled");
            if done || last.elapsed() >= PROGRESS_PERIOD {
                last = Instant::now();
                let _ = self.save_events.send(p.clone());
            }
            match p.status.as_str() {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    return Err(fail(
                        info.error_desc
                            .unwrap_or_else(|| format!("QEMU's migration {}", p.status)),
                    )
                    .into())
                }
                _ => {}
            }
        }
    }
}

/// Makes the VMI directory's memory-state directory (beneath it, never through a link) and
/// keeps it the launcher's only (0700): guest memory may hold anything the guest knows.
fn private_state_dir(dir: &VmiDir) -> Result<(), LaunchError> {
    let state_dir = dir.memory_state_dir();
    let fd =
        crate::paths::dir_beneath(dir.path(), &state_dir, true).map_err(|e| io(&state_dir, e))?;
    rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o700)).map_err(|e| LaunchError::Io {
        path: state_dir.clone(),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_save_shares_no_capability_a_file_cannot_carry() {
        let caps = capabilities();
        let on: Vec<&str> = caps
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["state"] == true)
            .map(|c| c["capability"].as_str().unwrap())
            .collect();
        assert_eq!(on, ["events"]);
        assert!(caps
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["capability"] == "return-path" && c["state"] == false));
        assert_eq!(uri(), "fd:memstate");
    }

    #[test]
    fn ephemeral_writable_disks_are_named() {
        use crate::machine::{Bus, DiskDevice, DiskFormat, DiskMigration, DiskSpec};
        let mut spec = crate::qemu::test_spec();
        assert_eq!(ephemeral_disk(&spec), None);
        let disk = |name: &str, source: DiskSource, readonly: bool| DiskSpec {
            name: name.into(),
            device: DiskDevice::Disk,
            bus: Bus::Virtio,
            boot_order: None,
            cache: None,
            io: None,
            readonly,
            format: DiskFormat::Qcow2,
            path: "/d/x".into(),
            serial: None,
            source,
            migration: DiskMigration::NotCopied,
        };
        spec.disks.push(disk("pvc", DiskSource::File, false));
        assert_eq!(ephemeral_disk(&spec), None);
        spec.disks.push(disk(
            "scratch",
            DiskSource::EmptyDisk { capacity: 1 },
            false,
        ));
        assert_eq!(ephemeral_disk(&spec), Some("scratch"));
        spec.disks.pop();
        spec.disks
            .push(disk("ro", DiskSource::EmptyDisk { capacity: 1 }, true));
        assert_eq!(ephemeral_disk(&spec), None);
    }
}

//! KubeVirt's memory dump on the node (docs/memory-snapshots.md, "Memory dump"): the
//! launcher's `dumpMemory` writes the guest's ELF core into its VMI directory
//! (`state/memory.dump`), and [`place`] moves it into the claim's volume under KubeVirt's name
//! ([`kubevirt_api::memdump::file_name`]), removing the claim's older dumps first (KubeVirt's
//! `removePreviousMemoryDump`).
//!
//! The claim is the VMI's namespace's, its name a DNS-1123 subdomain; its volume is the bound
//! PersistentVolume's (its `claimRef` this claim) `spec.local.path` through the one host-path policy
//! ([`kubevirt_runtime::host_path`]: resolved, beneath the provisioner's volumes or an
//! administrator's root) and must be a real directory. The file name is one plain component;
//! nothing is followed: an older dump that is a symlink is unlinked (its target untouched), and
//! a copy (across filesystems) creates the file with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::Api;
use kube::Client;
use kubevirt_api::memdump;
use kubevirt_runtime::host_path::HostPathPolicy;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// A name or volume that can never hold a dump (with the reason).
    #[error("{0}")]
    Invalid(String),
    /// The claim is not bound yet: try again.
    #[error("{0}")]
    NotReady(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DumpError + '_ {
    move |source| DumpError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The directory of claim `namespace/claim`'s volume on this node.
pub async fn claim_dir(
    client: &Client,
    policy: &HostPathPolicy,
    node: &str,
    namespace: &str,
    claim: &str,
) -> Result<PathBuf, DumpError> {
    memdump::check_claim(claim).map_err(DumpError::Invalid)?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pvc = pvcs
        .get_opt(claim)
        .await
        .map_err(|e| DumpError::NotReady(format!("reading PersistentVolumeClaim {claim}: {e}")))?
        .ok_or_else(|| {
            DumpError::Invalid(format!(
                "PersistentVolumeClaim {namespace}/{claim} does not exist"
            ))
        })?;
    let spec = pvc.spec.as_ref();
    if spec.and_then(|s| s.volume_mode.as_deref()) == Some("Block") {
        return Err(DumpError::Invalid("pvc should be filesystem pvc".into()));
    }
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let pv_name = spec
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty() && bound)
        .ok_or_else(|| {
            DumpError::NotReady(format!(
                "PersistentVolumeClaim {namespace}/{claim} is not bound"
            ))
        })?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get_opt(&pv_name)
        .await
        .map_err(|e| DumpError::NotReady(format!("reading PersistentVolume {pv_name}: {e}")))?
        .ok_or_else(|| DumpError::NotReady(format!("PersistentVolume {pv_name} does not exist")))?;
    // A claim naming someone else's volume (`spec.volumeName` written by hand) gets nothing:
    // the volume must be bound to this very claim.
    if !kubevirt_api::core_kinds::pv_bound_to(&pv, &pvc) {
        return Err(DumpError::Invalid(format!(
            "PersistentVolume {pv_name} is not bound to PersistentVolumeClaim {namespace}/{claim}"
        )));
    }
    let off = kubevirt_runtime::pv::off_node(client, &pv, node)
        .await
        .map_err(|e| DumpError::NotReady(format!("reading Node {node}: {e}")))?;
    if let Some(why) = off {
        return Err(DumpError::Invalid(format!(
            "PersistentVolume {pv_name} of claim {namespace}/{claim} {why}"
        )));
    }
    let local = pv
        .spec
        .as_ref()
        .and_then(|s| s.local.as_ref())
        .ok_or_else(|| {
            DumpError::Invalid(format!(
                "PersistentVolume {pv_name} has no spec.local.path: only local volumes can hold a memory dump"
            ))
        })?;
    let dir = policy.persistent_volume(&local.path).map_err(|e| {
        DumpError::Invalid(format!("PersistentVolume {pv_name} spec.local.path: {e}"))
    })?;
    real_dir(&dir)?;
    Ok(dir)
}

/// `dir` is a real directory (not a symlink to one).
fn real_dir(dir: &Path) -> Result<(), DumpError> {
    let m = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    if m.file_type().is_dir() {
        Ok(())
    } else {
        Err(DumpError::Invalid(format!(
            "{} is not a directory",
            dir.display()
        )))
    }
}

/// `name` as the one plain component of a dump file.
fn check_file_name(name: &str) -> Result<(), DumpError> {
    let mut c = Path::new(name).components();
    let plain = matches!((c.next(), c.next()), (Some(Component::Normal(n)), None) if n == name);
    if plain && name.ends_with(memdump::SUFFIX) && !name.contains('\0') {
        Ok(())
    } else {
        Err(DumpError::Invalid(format!(
            "{name:?} is not a memory dump file name"
        )))
    }
}

/// Moves the dump at `dump` (the launcher's `state/memory.dump`) into `claim_dir` as
/// `file_name`, then removes the claim's older dumps (KubeVirt keeps one): the previous dump
/// goes only once the new one is in place. Returns the file's size.
pub fn place(dump: &Path, claim_dir: &Path, file_name: &str) -> Result<u64, DumpError> {
    use std::os::unix::fs::MetadataExt;
    check_file_name(file_name)?;
    real_dir(claim_dir)?;
    let src = std::fs::symlink_metadata(dump).map_err(io(dump))?;
    // The launcher's own file: not a link to, nor another name of, anything else.
    if !src.file_type().is_file() || src.nlink() != 1 {
        return Err(DumpError::Invalid(format!(
            "{} is not a regular file with one link",
            dump.display()
        )));
    }
    let target = claim_dir.join(file_name);
    match std::fs::rename(dump, &target) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            // Another filesystem: copied under a temporary name, renamed when complete, so a
            // failed copy leaves no partial dump and the previous one intact. A volume too
            // full for both (KubeVirt sizes the claim for one) gets the older dumps removed
            // first and the copy tried again, as KubeVirt removes them before it dumps.
            let copied = match copy_in(dump, claim_dir, &target) {
                Err(DumpError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ENOSPC) =>
                {
                    tracing::warn!(claim = %claim_dir.display(), "no room for two dumps: removing the older ones first");
                    remove_older_dumps(claim_dir, file_name);
                    copy_in(dump, claim_dir, &target)
                }
                other => other,
            };
            copied?;
            if let Err(e) = std::fs::remove_file(dump) {
                tracing::warn!(path = %dump.display(), error = %e, "removing the launcher's dump after the copy");
            }
        }
        Err(e) => return Err(io(&target)(e)),
    }
    // The new dump is in place: what is left to tidy never fails it.
    remove_older_dumps(claim_dir, file_name);
    let placed = std::fs::symlink_metadata(&target).map_err(io(&target))?;
    if let Ok(d) = std::fs::File::open(claim_dir) {
        let _ = d.sync_all();
    }
    Ok(placed.len())
}

/// The temporary name a dump is copied under (short and fixed: `<file_name>` may be as long
/// as a file name may be).
const PARTIAL: &str = ".memory.dump.partial";

/// Copies `dump` into `claim_dir` under [`PARTIAL`] and renames it to `target` when whole; a
/// failed copy removes the partial file.
fn copy_in(dump: &Path, claim_dir: &Path, target: &Path) -> Result<(), DumpError> {
    let partial = claim_dir.join(PARTIAL);
    let _ = std::fs::remove_file(&partial);
    let copied = (|| -> Result<(), DumpError> {
        let mut from = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dump)
            .map_err(io(dump))?;
        let mut to = kubevirt_launcher::paths::create_file_beneath(claim_dir, &partial, 0o600)
            .map_err(|e| DumpError::Invalid(e.to_string()))?;
        std::io::copy(&mut from, &mut to).map_err(io(&partial))?;
        to.sync_all().map_err(io(&partial))?;
        std::fs::rename(&partial, target).map_err(io(target))
    })();
    if copied.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    copied
}

/// Removes the claim's dumps other than `keep` (names containing `memory.dump`, KubeVirt's
/// `removePreviousMemoryDump`; a symlink is unlinked itself, a directory left). A failure is
/// logged: the new dump is what counts.
fn remove_older_dumps(claim_dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(claim_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let older = name.to_string_lossy().contains("memory.dump") && name != keep;
        if older && entry.file_type().is_ok_and(|t| !t.is_dir()) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "removing an older memory dump");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump_in(dir: &Path, bytes: &[u8]) -> PathBuf {
        let p = dir.join("memory.dump");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn a_dump_replaces_older_ones_in_the_claim() {
        let t = tempfile::tempdir().unwrap();
        let (state, claim) = (t.path().join("state"), t.path().join("claim"));
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&claim).unwrap();
        std::fs::write(claim.join("vm-c-20260101-000000.memory.dump"), b"old").unwrap();
        std::fs::write(claim.join("keep.txt"), b"mine").unwrap();
        let src = dump_in(&state, b"\x7fELF....");
        let name = "vm-c-20261130-230509.memory.dump";
        assert_eq!(place(&src, &claim, name).unwrap(), 8);
        let mut left: Vec<String> = std::fs::read_dir(&claim)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["keep.txt", name]);
        assert!(!src.exists());
        assert_eq!(std::fs::read(claim.join(name)).unwrap(), b"\x7fELF....");
    }

    #[test]
    fn a_dump_from_another_filesystem_is_copied_whole_before_the_older_one_goes() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("SKIPPED: no /dev/shm for a second filesystem");
            return;
        };
        let claim = t.path().join("claim");
        std::fs::create_dir_all(&claim).unwrap();
        if std::fs::metadata(shm.path()).unwrap().dev() == std::fs::metadata(&claim).unwrap().dev()
        {
            eprintln!("SKIPPED: /dev/shm is on the claim's filesystem (no cross-device copy)");
            return;
        }
        std::fs::write(claim.join("vm-c-20260101-000000.memory.dump"), b"old").unwrap();
        let src = dump_in(shm.path(), b"\x7fELF-new");
        let name = "vm-c-20261130-230509.memory.dump";
        assert_eq!(place(&src, &claim, name).unwrap(), 8);
        let mut left: Vec<String> = std::fs::read_dir(&claim)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // No temporary file is left, the older dump is gone, the state file moved.
        assert_eq!(left, [name]);
        assert_eq!(std::fs::read(claim.join(name)).unwrap(), b"\x7fELF-new");
        assert!(!src.exists());
    }

    #[test]
    fn hostile_names_and_planted_symlinks_reach_nothing_outside_the_claim() {
        let t = tempfile::tempdir().unwrap();
        let (state, claim, outside) = (
            t.path().join("state"),
            t.path().join("claim"),
            t.path().join("outside"),
        );
        for d in [&state, &claim, &outside] {
            std::fs::create_dir_all(d).unwrap();
        }
        let src = dump_in(&state, b"\x7fELF");
        for bad in [
            "../x.memory.dump",
            "a/b.memory.dump",
            "..",
            ".",
            "/etc/x.memory.dump",
            "x.img",
            "",
        ] {
            assert!(
                matches!(place(&src, &claim, bad), Err(DumpError::Invalid(_))),
                "{bad:?}"
            );
        }
        // Names from hostile claim names never become a file name at all.
        for bad in ["../x", "a/b", "..", "x/../../y"] {
            assert!(memdump::file_name("vm", bad, 0).is_err(), "{bad:?}");
        }
        assert!(src.exists());
        // A claim directory that is a symlink (to elsewhere) is refused.
        let link_dir = t.path().join("claim-link");
        std::os::unix::fs::symlink(&outside, &link_dir).unwrap();
        assert!(matches!(
            place(&src, &link_dir, "vm-c-20261130-230509.memory.dump"),
            Err(DumpError::Invalid(_))
        ));
        // An "older dump" planted as a symlink to a file outside: unlinked, never followed.
        let victim = outside.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let name = "vm-c-20261130-230509.memory.dump";
        std::os::unix::fs::symlink(&victim, claim.join(name)).unwrap();
        std::os::unix::fs::symlink(&victim, claim.join("old.memory.dump")).unwrap();
        place(&src, &claim, name).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let m = std::fs::symlink_metadata(claim.join(name)).unwrap();
        assert!(m.file_type().is_file());
        assert!(std::fs::symlink_metadata(claim.join("old.memory.dump")).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        // The launcher's dump itself must be a regular file, not a link planted in its place.
        std::os::unix::fs::symlink(&victim, state.join("memory.dump")).unwrap();
        assert!(place(&state.join("memory.dump"), &claim, name).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // Nor another name of a file elsewhere (a hard link): refused, both left as they were.
        std::fs::remove_file(state.join("memory.dump")).unwrap();
        std::fs::hard_link(&victim, state.join("memory.dump")).unwrap();
        assert!(place(&state.join("memory.dump"), &claim, name).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(state.join("memory.dump").exists());
    }
}

//! The node's store of memory snapshots (docs/memory-snapshots.md, "Controller wiring"):
//! `<data>/memory-snapshots/<namespace>/<key>/{memory.bin,memory.json}`, owner-only (0700
//! directories, 0600 files: guest memory may hold anything the guest knows).
//!
//! - [`save`]: after the launcher's `saveState`, its `state/memory.bin` is moved (renamed: the
//!   same filesystem) into a new entry with the [`SavedState`] beside it; complete or absent
//!   (built in a temporary directory, renamed).
//! - [`prepare_restore`]: before a VMI's launcher is spawned, the entry is hard-linked into its
//!   directory's `state/` and `restore-memory.json` written.
//! - [`collect`]: entries that neither a VirtualMachineSnapshot (its uid is the key) nor a
//!   VirtualMachineSnapshotContent of their namespace names any more go.
//!
//! The namespace is always the VMI's own and the key a UUID ([`kubevirt_api::memsnap`]); the
//! entry's path is proven beneath the store's root before anything is read, written or
//! removed, and a symlink planted anywhere in it is refused, never followed.

use kubevirt_api::memsnap::{self, MemoryRef};
use kubevirt_launcher::api::memstate::{MemoryRestore, SavedState};
use kubevirt_launcher::api::VmiDir;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The store's directory under the node's data directory.
pub const STORE_DIR: &str = "memory-snapshots";
const STATE_FILE: &str = "memory.bin";
const MANIFEST: &str = "memory.json";
/// An entry this young is kept even if nothing names it yet (a save racing the listing).
const GRACE: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("memory snapshot {key} is not on this node (namespace {namespace})")]
    Missing { namespace: String, key: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The store's root.
pub fn root(data_dir: &Path) -> PathBuf {
    data_dir.join(STORE_DIR)
}

/// The entry of `key` in `namespace`: both checked (a DNS-1123 label, a UUID), the path
/// proven strictly beneath the root by components.
pub fn entry(data_dir: &Path, namespace: &str, key: &str) -> Result<PathBuf, StoreError> {
    if let Some(p) = kubevirt_api::names::dns1123_label(namespace) {
        return Err(StoreError::Invalid(format!("namespace {namespace:?}: {p}")));
    }
    memsnap::check_key(key).map_err(StoreError::Invalid)?;
    let root = root(data_dir);
    let path = root.join(namespace).join(key);
    if !kubevirt_runtime::host_path::strictly_beneath(&root, &path) {
        return Err(StoreError::Invalid(format!(
            "{} is not beneath {}",
            path.display(),
            root.display()
        )));
    }
    Ok(path)
}

/// A directory of the store: made owner-only if missing; refused if it is anything but a
/// real directory (a planted symlink).
fn private_dir(path: &Path) -> Result<(), StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(_) => Err(StoreError::Invalid(format!(
            "{} is not a directory",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(io(path)),
        Err(e) => Err(io(path)(e)),
    }
}

/// Every component from the root to `entry` is a real directory (no symlink on the way).
fn real_dirs(data_dir: &Path, entry: &Path) -> Result<bool, StoreError> {
    let root = root(data_dir);
    let mut p = root.clone();
    let rest = entry.strip_prefix(&root).unwrap_or(entry).to_path_buf();
    for c in std::iter::once(None).chain(rest.components().map(Some)) {
        if let Some(c) = c {
            p.push(c);
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(StoreError::Invalid(format!(
                    "{} is not a directory",
                    p.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(&p)(e)),
        }
    }
    Ok(true)
}

/// The [`SavedState`] of an entry, `None` when there is no such entry.
pub fn load(data_dir: &Path, namespace: &str, key: &str) -> Result<Option<SavedState>, StoreError> {
    let e = entry(data_dir, namespace, key)?;
    if !real_dirs(data_dir, &e)? {
        return Ok(None);
    }
    let manifest = e.join(MANIFEST);
    let text = match std::fs::read(&manifest) {
        Ok(t) => t,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io(&manifest)(err)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|err| StoreError::Invalid(format!("{}: {err}", manifest.display())))
}

/// Moves the state `saveState` left in `dir` into the entry `namespace/key`.
pub fn save(
    data_dir: &Path,
    namespace: &str,
    key: &str,
    dir: &VmiDir,
    saved: &SavedState,
) -> Result<(), StoreError> {
    let e = entry(data_dir, namespace, key)?;
    let root = root(data_dir);
    private_dir(&root)?;
    private_dir(&root.join(namespace))?;
    let tmp = root.join(namespace).join(format!(".{key}.tmp"));
    if std::fs::symlink_metadata(&tmp).is_ok() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(io(&tmp))?;
    let state = dir.memory_state();
    let meta = std::fs::symlink_metadata(&state).map_err(io(&state))?;
    if !meta.file_type().is_file() || meta.len() != saved.size_bytes {
        return Err(StoreError::Invalid(format!(
            "{} is not the saved state's regular file of {} bytes",
            state.display(),
            saved.size_bytes
        )));
    }
    let target = tmp.join(STATE_FILE);
    std::fs::rename(&state, &target).map_err(io(&target))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
        .map_err(io(&target))?;
    let manifest = tmp.join(MANIFEST);
    let text = serde_json::to_vec(saved)
        .map_err(|err| StoreError::Invalid(format!("the saved state: {err}")))?;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&manifest)
            .map_err(io(&manifest))?;
        f.write_all(&text).map_err(io(&manifest))?;
        f.sync_all().map_err(io(&manifest))?;
    }
    std::fs::rename(&tmp, &e).map_err(io(&e))?;
    if let Ok(d) = std::fs::File::open(root.join(namespace)) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Makes `dir` (a VMI's directory, its launcher not yet spawned) start from the memory `r`
/// names, saved from `namespace` (the VMI's own): hard-links the state into `state/` and
/// writes `restore-memory.json`. `node` is this node.
pub fn prepare_restore(
    data_dir: &Path,
    node: &str,
    namespace: &str,
    r: &MemoryRef,
    dir: &VmiDir,
) -> Result<SavedState, StoreError> {
    if r.node != node {
        return Err(StoreError::Invalid(format!(
            "the memory snapshot is on node {}, this is {node}",
            r.node
        )));
    }
    let missing = || StoreError::Missing {
        namespace: namespace.to_string(),
        key: r.key.clone(),
    };
    let saved = load(data_dir, namespace, &r.key)?.ok_or_else(missing)?;
    let e = entry(data_dir, namespace, &r.key)?;
    let source = e.join(STATE_FILE);
    let meta = std::fs::symlink_metadata(&source).map_err(io(&source))?;
    if !meta.file_type().is_file() {
        return Err(StoreError::Invalid(format!(
            "{} is not a regular file",
            source.display()
        )));
    }
    std::fs::create_dir_all(dir.path()).map_err(io(dir.path()))?;
    let state_dir = dir.memory_state_dir();
    private_dir(&state_dir)?;
    let target = dir.memory_state();
    match std::fs::remove_file(&target) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io(&target)(err)),
    }
    std::fs::hard_link(&source, &target).map_err(io(&target))?;
    dir.write_memory_restore(&MemoryRestore {
        saved: saved.clone(),
    })
    .map_err(|err| StoreError::Invalid(err.to_string()))?;
    Ok(saved)
}

/// Removes the entries no VirtualMachineSnapshot or VirtualMachineSnapshotContent of their
/// namespace names any more (older than a grace period). `kept(namespace)` gives the keys still named,
/// `None` when they cannot be known (the namespace is then left alone).
pub fn collect(data_dir: &Path, kept: impl Fn(&str) -> Option<Vec<String>>) -> usize {
    let root = root(data_dir);
    let mut removed = 0;
    let Ok(namespaces) = std::fs::read_dir(&root) else {
        return 0;
    };
    for ns in namespaces.flatten() {
        let name = ns.file_name().to_string_lossy().to_string();
        if kubevirt_api::names::dns1123_label(&name).is_some()
            || !ns.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        let Some(keys) = kept(&name) else { continue };
        let Ok(entries) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for en in entries.flatten() {
            let key = en.file_name().to_string_lossy().to_string();
            let key = key
                .strip_prefix('.')
                .and_then(|k| k.strip_suffix(".tmp"))
                .unwrap_or(&key)
                .to_string();
            if keys.contains(&key) || memsnap::check_key(&key).is_err() {
                continue;
            }
            let young = en
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < GRACE);
            if young {
                continue;
            }
            let path = en.path();
            if !kubevirt_runtime::host_path::strictly_beneath(&root, &path) {
                continue;
            }
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::info!(namespace = %name, %key, "memory snapshot removed: no content names it");
                    removed += 1;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a memory snapshot")
                }
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubevirt_launcher::api::memstate::MachineFacts;

    const KEY: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    fn saved(size: u64) -> SavedState {
        SavedState {
            format: 1,
            vmi: "a/vm".into(),
            qemu_version: "7.2.0".into(),
            machine: MachineFacts(vec!["-m 256M".into()]),
            memory_bytes: 256 << 20,
            size_bytes: size,
            duration_ms: 1,
            guest_running: true,
            saved_at: 0.0,
        }
    }

    /// A VMI directory with a saved state of `bytes`.
    fn saved_dir(data: &Path, ns: &str, name: &str, bytes: &[u8]) -> VmiDir {
        let dir = VmiDir::new(data, ns, name).expect("dir");
        std::fs::create_dir_all(dir.memory_state_dir()).expect("state dir");
        std::fs::write(dir.memory_state(), bytes).expect("state");
        dir
    }

    #[test]
    fn a_saved_state_moves_into_the_store_private_and_a_restore_links_it_in() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path();
        let src = saved_dir(data, "a", "vm", b"guest-ram");
        save(data, "a", KEY, &src, &saved(9)).expect("save");
        assert!(!src.memory_state().exists(), "moved, not copied");
        let e = entry(data, "a", KEY).expect("entry");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&root(data)), 0o700);
        assert_eq!(mode(&e), 0o700);
        assert_eq!(mode(&e.join(STATE_FILE)), 0o600);
        assert_eq!(mode(&e.join(MANIFEST)), 0o600);
        assert_eq!(load(data, "a", KEY).expect("load"), Some(saved(9)));

        let dst = VmiDir::new(data, "a", "restored").expect("dir");
        let r = MemoryRef {
            node: "node01".into(),
            key: KEY.into(),
        };
        prepare_restore(data, "node01", "a", &r, &dst).expect("restore");
        assert_eq!(
            std::fs::read(dst.memory_state()).expect("linked"),
            b"guest-ram"
        );
        let restore = dst.read_memory_restore().expect("read").expect("written");
        assert_eq!(restore.saved, saved(9));
        // Another node's reference, and a second restore (the link is replaced).
        let other = MemoryRef {
            node: "node02".into(),
            ..r.clone()
        };
        assert!(prepare_restore(data, "node01", "a", &other, &dst).is_err());
        prepare_restore(data, "node01", "a", &r, &dst).expect("again");
    }

    #[test]
    fn another_namespaces_memory_and_paths_are_never_reached() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path();
        let src = saved_dir(data, "a", "vm", b"secret-ram");
        save(data, "a", KEY, &src, &saved(10)).expect("save");
        let r = MemoryRef {
            node: "node01".into(),
            key: KEY.into(),
        };
        // The same key from namespace b: b's store has no such entry.
        let dst = VmiDir::new(data, "b", "thief").expect("dir");
        let err = prepare_restore(data, "node01", "b", &r, &dst).expect_err("other namespace");
        assert!(matches!(err, StoreError::Missing { .. }), "{err}");
        assert!(!dst.memory_state().exists());
        // Keys and namespaces that are paths.
        for (ns, key) in [
            ("a", "../a/0f8fad5b-d9cb-469f-a165-70867728950e"),
            ("a", ".."),
            ("..", KEY),
            ("a/../b", KEY),
        ] {
            assert!(entry(data, ns, key).is_err(), "{ns} {key}");
        }
        // A symlink planted for namespace c pointing at a's store is not followed.
        std::os::unix::fs::symlink(root(data).join("a"), root(data).join("c")).expect("plant");
        let dst = VmiDir::new(data, "c", "thief").expect("dir");
        assert!(prepare_restore(data, "node01", "c", &r, &dst).is_err());
        assert!(!dst.memory_state().exists());
    }

    #[test]
    fn collection_removes_only_old_unnamed_entries() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path();
        let src = saved_dir(data, "a", "vm", b"x");
        save(data, "a", KEY, &src, &saved(1)).expect("save");
        // Young: kept even though nothing names it.
        assert_eq!(collect(data, |_| Some(vec![])), 0);
        let e = entry(data, "a", KEY).expect("entry");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::open(&e)
            .expect("open")
            .set_modified(old)
            .expect("age");
        // Named, or unknown: kept.
        assert_eq!(collect(data, |_| Some(vec![KEY.to_string()])), 0);
        assert_eq!(collect(data, |_| None), 0);
        assert!(e.exists());
        assert_eq!(collect(data, |_| Some(vec![])), 1);
        assert!(!e.exists());
    }
}

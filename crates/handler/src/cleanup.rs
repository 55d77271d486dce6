//! Nothing of a VMI stays on the node once the VMI is gone. Everything the handler and the
//! launcher make for a VMI lives in its [`VmiDir`] (sockets, overlays, cloud-init ISOs, logs,
//! `state.json`), plus two processes (the launcher, its QEMU) and the pod network (torn down
//! by `release_network`). [`remove`] stops the processes and removes the directory; it runs
//!
//! - when a deleted VMI's launcher is done (`reconcile`);
//! - when a VMI finds the directory of an earlier VMI of the same name (`vmi.json` names
//!   another uid: a crash-looping VM gets a new VMI per start), before anything reads its
//!   stale `state.json`;
//! - from the sweep (at start and periodically): a directory whose VMI no longer exists,
//!   whatever phase it was deleted in and whether or not a handler ran at the time.
//!
//! Removal never leaves the VMIs' root: a directory is removed only when it is a real
//! directory (not a symlink), named by a [`VmiDir::key`], and its resolved path lies strictly
//! beneath the resolved root (`kubevirt_runtime::host_path::beneath`). `remove_dir_all` does
//! not follow symlinks inside it. A process is killed only when its command line names the
//! directory (a pid in a file may have been reused since).

use kubevirt_launcher::api::{VmiDir, VmiOwner};
use std::path::Path;
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("{}: not a VMI directory beneath {} ({why}); left alone", path.display(), root.display())]
    NotOurs {
        path: std::path::PathBuf,
        root: std::path::PathBuf,
        why: String,
    },
    #[error("removing {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The VMI a directory belongs to, when its `vmi.json` names one whose key is the
/// directory's name (a `vmi.json` naming anything else is not trusted).
pub fn owner(dir: &VmiDir) -> Option<VmiOwner> {
    let o = dir.owner()?;
    let name = dir.path().file_name()?.to_str()?;
    (VmiDir::key(&o.namespace, &o.name) == name).then_some(o)
}

/// Whether a directory nobody claims is old enough to be swept: one being made right now has
/// no `vmi.json` yet.
pub fn unclaimed_long_enough(dir: &VmiDir, now: SystemTime, grace: Duration) -> bool {
    std::fs::symlink_metadata(dir.path())
        .and_then(|m| m.modified())
        .map(|t| now.duration_since(t).unwrap_or_default() >= grace)
        .unwrap_or(false)
}

/// Whether `pid` runs a command line naming `dir`.
fn runs_from(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = dir.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len()).any(|w| w == needle)
}

fn alive(pid: u32) -> bool {
    crate::process_alive(pid)
}

/// SIGKILLs the directory's launcher and QEMU (those whose command line names it) and waits
/// briefly until they are gone. Returns how many were killed.
pub fn stop_processes(dir: &VmiDir) -> usize {
    let mut pids: Vec<u32> = dir.launcher_pid().into_iter().collect();
    if let Ok(s) = dir.read_state() {
        pids.push(s.launcher_pid);
        pids.extend(s.qemu_pid);
    }
    pids.sort_unstable();
    pids.dedup();
    let mut killed = Vec::new();
    for pid in pids {
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        if raw > 1 && alive(pid) && runs_from(pid, dir.path()) {
            // SAFETY: kill(2) with a pid proven to be one of this VMI's processes.
            if unsafe { libc::kill(raw, libc::SIGKILL) } == 0 {
                tracing::info!(dir = %dir.path().display(), pid, "killed a leftover VMI process");
                killed.push(pid);
            }
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while killed.iter().any(|p| alive(*p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    killed.len()
}

/// Stops what still runs from `dir` and removes it, proving first that it is one of the
/// VMI directories beneath `<data_dir>/vms`. A directory already gone is fine.
pub fn remove(data_dir: &Path, dir: &VmiDir) -> Result<(), CleanupError> {
    let path = dir.path();
    let root = VmiDir::root(data_dir).map_err(|e| CleanupError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let not_ours = |why: &str| CleanupError::NotOurs {
        path: path.to_path_buf(),
        root: root.clone(),
        why: why.into(),
    };
    let named_by_key = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(VmiDir::is_key);
    if path.parent() != Some(root.as_path()) || !named_by_key {
        return Err(not_ours("not a key directly beneath the root"));
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CleanupError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(m) if !m.file_type().is_dir() => return Err(not_ours("not a directory")),
        Ok(_) => {}
    }
    let real =
        kubevirt_runtime::host_path::beneath(&root, path).map_err(|e| not_ours(&e.to_string()))?;
    stop_processes(dir);
    match std::fs::remove_dir_all(&real) {
        Ok(()) => {
            tracing::info!(dir = %path.display(), "removed the VMI directory");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CleanupError::Io { path: real, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_a_vmi_directory_with_everything_in_it() {
        let t = tempfile::tempdir().unwrap();
        let d = VmiDir::new(t.path(), "default", "vm").unwrap();
        std::fs::create_dir_all(d.disks_dir()).unwrap();
        std::fs::write(d.disks_dir().join("cloudinit.iso"), b"iso").unwrap();
        std::fs::create_dir_all(d.sockets_dir()).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(d.launcher_socket()).unwrap();
        remove(t.path(), &d).unwrap();
        assert!(!d.path().exists());
        // Gone already: fine.
        remove(t.path(), &d).unwrap();
    }

    #[test]
    fn never_removes_or_follows_anything_outside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("precious");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        let root = VmiDir::root(t.path()).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        // A symlink planted where a VMI directory would be.
        let d = VmiDir::new(t.path(), "default", "vm").unwrap();
        std::os::unix::fs::symlink(&outside, d.path()).unwrap();
        let e = remove(t.path(), &d).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(outside.join("keep").exists());
        // A directory that is not beneath this data directory's root.
        let elsewhere = VmiDir::new(&outside, "default", "vm").unwrap();
        std::fs::create_dir_all(elsewhere.path()).unwrap();
        let e = remove(t.path(), &elsewhere).unwrap_err();
        assert!(e.to_string().contains("left alone"), "{e}");
        assert!(elsewhere.path().exists());
        // A directory given by path that is no key.
        let odd = VmiDir::from_path(root.join("default")).unwrap();
        std::fs::create_dir_all(odd.path()).unwrap();
        assert!(remove(t.path(), &odd).is_err());
        assert!(odd.path().exists());
    }

    #[test]
    fn a_symlinked_root_component_does_not_lead_removal_out() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let outside = t.path().join("outside");
        let d_out = VmiDir::new(&outside, "default", "vm").unwrap();
        std::fs::create_dir_all(d_out.path()).unwrap();
        std::fs::write(d_out.path().join("keep"), b"x").unwrap();
        // <data>/vms/<key> is a real directory, but one of its entries links out: removal
        // removes the link, never what it points to.
        let d = VmiDir::new(&data, "default", "vm").unwrap();
        std::fs::create_dir_all(d.path()).unwrap();
        std::os::unix::fs::symlink(d_out.path(), d.path().join("disks")).unwrap();
        remove(&data, &d).unwrap();
        assert!(!d.path().exists());
        assert!(d_out.path().join("keep").exists());
    }

    #[test]
    fn owners_must_match_the_key_and_unclaimed_dirs_get_a_grace_period() {
        let t = tempfile::tempdir().unwrap();
        let d = VmiDir::new(t.path(), "default", "vm").unwrap();
        std::fs::create_dir_all(d.path()).unwrap();
        assert_eq!(owner(&d), None);
        let now = SystemTime::now();
        assert!(!unclaimed_long_enough(&d, now, Duration::from_secs(60)));
        assert!(unclaimed_long_enough(
            &d,
            now + Duration::from_secs(61),
            Duration::from_secs(60)
        ));
        // A vmi.json naming another VMI than the one the key stands for is not believed.
        std::fs::write(
            d.vmi_file(),
            r#"{"metadata":{"namespace":"other","name":"vm","uid":"u"}}"#,
        )
        .unwrap();
        assert_eq!(owner(&d), None);
        std::fs::write(
            d.vmi_file(),
            r#"{"metadata":{"namespace":"default","name":"vm","uid":"u"}}"#,
        )
        .unwrap();
        assert_eq!(owner(&d).map(|o| o.uid), Some("u".to_string()));
    }

    #[test]
    fn only_processes_naming_the_directory_are_killed() {
        let t = tempfile::tempdir().unwrap();
        let d = VmiDir::new(t.path(), "default", "vm").unwrap();
        std::fs::create_dir_all(d.path()).unwrap();
        // A process that does not name the directory, its pid in launcher.pid (a reused pid).
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        d.write_launcher_pid(other.id()).unwrap();
        assert_eq!(stop_processes(&d), 0);
        assert!(alive(other.id()));
        // One that does.
        let mut ours = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true", d.path().to_str().unwrap()])
            .spawn()
            .unwrap();
        d.write_launcher_pid(ours.id()).unwrap();
        // Until it has exec'd, its command line is still this test's.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !runs_from(ours.id(), d.path()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(stop_processes(&d), 1);
        let _ = ours.wait();
        let _ = other.kill();
        let _ = other.wait();
    }
}

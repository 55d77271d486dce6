//! Who QEMU runs as. QEMU parses guest-controlled data all day; it used to run as root with
//! every capability (security issue 10). Now:
//!
//! - QEMU runs as an unprivileged user, by default KubeVirt's `qemu` (107:107), with the group
//!   of `/dev/kvm` as its only supplementary group (so KVM stays usable). A non-root uid has no
//!   capabilities after `execve`. `--qemu-uid 0` keeps root for hosts that need it.
//! - QEMU runs under its seccomp sandbox (`-sandbox on,...`, see `qemu::devices::SANDBOX`).
//! - The launcher (root) gives QEMU's user exactly what QEMU must open: the VMI directory's
//!   `sockets/` (QEMU creates its QMP/serial/VNC sockets there), the files it creates for the
//!   VMI (overlays, emptyDisks, cloud-init ISOs, OVMF vars, hostDisk images) and the image
//!   files it is given (PVC/DataVolume/hostDisk: the files are chowned, never their
//!   directories). Read-only files (kernel, initrd, containerDisk bases, also in the shared
//!   image cache) are made world-readable instead.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// QEMU's uid and gid; `uid == 0` keeps QEMU as root (no change of user).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QemuUser {
    pub uid: u32,
    pub gid: u32,
}

impl Default for QemuUser {
    fn default() -> Self {
        QemuUser::KUBEVIRT
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("giving {path} to QEMU's user {uid}:{gid}: {source}")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is neither a regular file nor a block device: it is not given to QEMU")]
    NotAnImage { path: PathBuf },
    #[error("QEMU's user {uid}:{gid} cannot reach {dir}: {ancestor} (mode {mode:o}, owner {owner}:{group}) is not searchable by it; make it o+x, or run QEMU as root (--qemu-uid 0)")]
    Unreachable {
        dir: PathBuf,
        ancestor: PathBuf,
        mode: u32,
        owner: u32,
        group: u32,
        uid: u32,
        gid: u32,
    },
    #[error("QEMU's user {uid}:{gid} cannot open /dev/kvm (mode {mode:o}, owner {owner}:{group}): give its group rw (the group is added to QEMU's), or run QEMU as root (--qemu-uid 0)")]
    KvmDenied {
        mode: u32,
        owner: u32,
        group: u32,
        uid: u32,
        gid: u32,
    },
    #[error("{what} the launcher's capabilities: {message}")]
    Capabilities { what: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl QemuUser {
    /// KubeVirt's `qemu` user and group in virt-launcher images.
    pub const KUBEVIRT: QemuUser = QemuUser { uid: 107, gid: 107 };
    pub const ROOT: QemuUser = QemuUser { uid: 0, gid: 0 };

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Make `file` (an open file the launcher created or was given) QEMU's.
    pub fn give(&self, file: &File, path: &Path) -> Result<(), ConfineError> {
        if self.is_root() {
            return Ok(());
        }
        let meta = file.metadata().map_err(|source| ConfineError::Io {
            path: path.into(),
            source,
        })?;
        use std::os::unix::fs::FileTypeExt;
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_block_device() || ft.is_dir()) {
            return Err(ConfineError::NotAnImage { path: path.into() });
        }
        rustix::fs::fchown(
            file,
            Some(rustix::fs::Uid::from_raw(self.uid)),
            Some(rustix::fs::Gid::from_raw(self.gid)),
        )
        .map_err(|e| ConfineError::Chown {
            path: path.into(),
            uid: self.uid,
            gid: self.gid,
            source: e.into(),
        })
    }

    /// Every ancestor of `dir` (and `dir`) must be searchable by QEMU's user, or QEMU fails
    /// later with a bare "Permission denied". `dir` itself is given group search permission.
    pub fn ensure_reachable(&self, dir: &Path) -> Result<(), ConfineError> {
        self.let_search(dir)?;
        self.check_ancestors(dir)
    }

    /// Lets QEMU's group search `dir` (not list it, not write it) unless everyone may: for
    /// a VMI directory, and for the server's data directory, which is otherwise 0700.
    pub fn let_search(&self, dir: &Path) -> Result<(), ConfineError> {
        if self.is_root() {
            return Ok(());
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ConfineError::Io { path, source }
        };
        let meta = std::fs::metadata(dir).map_err(io(dir))?;
        if meta.mode() & 0o001 == 0 && !(meta.gid() == self.gid && meta.mode() & 0o010 != 0) {
            let f = File::open(dir).map_err(io(dir))?;
            rustix::fs::fchown(&f, None, Some(rustix::fs::Gid::from_raw(self.gid))).map_err(
                |e| ConfineError::Chown {
                    path: dir.into(),
                    uid: self.uid,
                    gid: self.gid,
                    source: e.into(),
                },
            )?;
            let mode = (meta.mode() & 0o7777) | 0o010;
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io(dir))?;
        }
        Ok(())
    }

    /// Every ancestor of `path` must be searchable by QEMU's user (e.g. a containerDisk base
    /// in the shared image cache, reached by QEMU through the overlay's backing file name).
    pub fn check_ancestors(&self, path: &Path) -> Result<(), ConfineError> {
        if self.is_root() {
            return Ok(());
        }
        let dir = path;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ConfineError::Io { path, source }
        };
        for a in dir.ancestors().skip(1) {
            let m = std::fs::metadata(a).map_err(io(a))?;
            let mode = m.mode();
            let ok = mode & 0o001 != 0
                || (m.uid() == self.uid && mode & 0o100 != 0)
                || (m.gid() == self.gid && mode & 0o010 != 0);
            if !ok {
                return Err(ConfineError::Unreachable {
                    dir: dir.into(),
                    ancestor: a.into(),
                    mode: mode & 0o7777,
                    owner: m.uid(),
                    group: m.gid(),
                    uid: self.uid,
                    gid: self.gid,
                });
            }
        }
        Ok(())
    }

    /// With KVM, QEMU's user must be able to open `/dev/kvm` (through its group, see
    /// [`Self::supplementary_groups`]); say so now rather than let QEMU fail with EACCES.
    pub fn check_kvm(&self) -> Result<(), ConfineError> {
        if self.is_root() {
            return Ok(());
        }
        let path = Path::new("/dev/kvm");
        let m = std::fs::metadata(path).map_err(|source| ConfineError::Io {
            path: path.into(),
            source,
        })?;
        let mode = m.mode();
        if mode & 0o060 == 0o060 || mode & 0o006 == 0o006 || m.uid() == self.uid {
            Ok(())
        } else {
            Err(ConfineError::KvmDenied {
                mode: mode & 0o7777,
                owner: m.uid(),
                group: m.gid(),
                uid: self.uid,
                gid: self.gid,
            })
        }
    }

    /// Supplementary groups for QEMU: the group of `/dev/kvm`, when it exists, so an
    /// unprivileged QEMU can still open it.
    pub fn supplementary_groups(&self) -> Vec<u32> {
        std::fs::metadata("/dev/kvm")
            .map(|m| vec![m.gid()])
            .unwrap_or_default()
    }

    /// Switch the spawned QEMU to this user and set `PR_SET_PDEATHSIG` (after the switch: the
    /// kernel clears the parent-death signal whenever credentials change).
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        let user = *self;
        let groups: Vec<libc::gid_t> = self.supplementary_groups();
        // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
        // system calls; `groups` was allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if !user.is_root() {
                    // Groups first, then gid, then uid: afterwards we may no longer change them.
                    if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                        || libc::setgid(user.gid) != 0
                        || libc::setuid(user.uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // QEMU must not outlive its launcher (KubeVirt: they share a pod).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
}

/// The capabilities a launcher keeps (issue 10: "the launcher keeps only what it needs").
///
/// A launcher runs as root because it prepares files for and spawns QEMU; it never needs to
/// mount, load modules, trace processes, reboot the host or touch raw devices. What it does:
/// - `CHOWN`, `FOWNER`, `FSETID`: give QEMU's user the files it opens (chown/chmod files it
///   did not create, e.g. a PVC image);
/// - `DAC_OVERRIDE`, `DAC_READ_SEARCH`: open what QEMU's user owns (its QMP, serial and VNC
///   sockets, overlays) and volume files whatever their mode;
/// - `SETUID`, `SETGID`: switch the QEMU it spawns to QEMU's user;
/// - `KILL`: signal that QEMU (another uid) when it must be stopped;
/// - `NET_ADMIN`, `NET_BIND_SERVICE`: tap devices and bridges (`ip`, which inherits this set),
///   and host ports of masquerade `ports`.
pub const LAUNCHER_CAPABILITIES: &[caps::Capability] = &[
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_DAC_READ_SEARCH,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_NET_ADMIN,
    caps::Capability::CAP_NET_BIND_SERVICE,
];

/// Reduce this process (the launcher) to [`LAUNCHER_CAPABILITIES`]: the bounding set first
/// (so neither the launcher nor anything it executes, QEMU or `ip`, can regain a dropped
/// capability), then the permitted, effective and inheritable sets. A process without
/// `CAP_SETPCAP` (not root) has nothing to drop and is left alone.
pub fn drop_launcher_capabilities() -> Result<(), ConfineError> {
    use caps::{CapSet, Capability, CapsHashSet};
    let err = |what: &str, e: caps::errors::CapsError| ConfineError::Capabilities {
        what: what.to_string(),
        message: e.to_string(),
    };
    let effective = caps::read(None, CapSet::Effective).map_err(|e| err("reading", e))?;
    if !effective.contains(&Capability::CAP_SETPCAP) {
        tracing::debug!("no CAP_SETPCAP: running with the capabilities we were given");
        return Ok(());
    }
    let keep: CapsHashSet = LAUNCHER_CAPABILITIES.iter().copied().collect();
    let bounding = caps::read(None, CapSet::Bounding).map_err(|e| err("reading", e))?;
    for cap in bounding.difference(&keep) {
        caps::drop(None, CapSet::Bounding, *cap)
            .map_err(|e| err("dropping from the bounding set", e))?;
    }
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| err("reading", e))?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .map_err(|e| err("clearing the inheritable set", e))?;
    caps::set(None, CapSet::Effective, &kept).map_err(|e| err("setting the effective set", e))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|e| err("setting the permitted set", e))?;
    tracing::debug!(kept = kept.len(), "launcher capabilities reduced");
    Ok(())
}

/// Make a read-only file (kernel, initrd, containerDisk base) readable by QEMU's user.
pub fn world_readable(path: &Path) -> Result<(), ConfineError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)).map_err(|source| {
        ConfineError::Io {
            path: path.into(),
            source,
        }
    })
}

/// A directory QEMU's user must search (and read, for a containerDisk base directory).
pub fn world_searchable(path: &Path) -> Result<(), ConfineError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        ConfineError::Io {
            path: path.into(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_changes_nothing_and_a_hidden_ancestor_is_reported() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("vmi");
        std::fs::create_dir(&dir).unwrap();
        QemuUser::ROOT.ensure_reachable(&dir).unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = QemuUser::KUBEVIRT.ensure_reachable(&dir).unwrap_err();
        assert!(matches!(e, ConfineError::Unreachable { .. }), "{e}");
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            QemuUser::KUBEVIRT.ensure_reachable(&dir).unwrap();
            let m = std::fs::metadata(&dir).unwrap();
            assert_eq!((m.gid(), m.mode() & 0o777), (107, 0o710));
        }
    }
}

//! Files of a VMI directory that are named after the spec (disk overlays `disks/<disk>.qcow2`,
//! emptyDisks, cloud-init ISOs `disks/<disk>.iso`, containerDisk bases
//! `container-disks/<disk>/`).
//!
//! A `../` in a disk name used to create, replace or delete files outside the VMI directory
//! (security issue 10). Admission refuses such names; the launcher does not rely on it:
//! - a spec name becomes a path only through [`beneath`], which accepts a DNS-1123 label
//!   (optionally with a fixed extension) and nothing else;
//! - files and directories under the VMI directory are opened, created and removed relative to
//!   a directory fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so neither `..` nor a
//!   symlink planted in the directory can lead outside it.

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{0:?} is not a DNS-1123 label ([a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63 characters), so it cannot name a file")]
    NotALabel(String),
    #[error("{component:?} is not a file name made of a DNS-1123 label")]
    BadComponent { component: String },
    #[error("{path} is not beneath {root}")]
    NotBeneath { root: PathBuf, path: PathBuf },
    #[error("{0}: must be an absolute path without `.`, `..` or empty components")]
    NotNormal(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(rustix::io::Errno) -> PathError + '_ {
    move |e| PathError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// A DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (what Kubernetes
/// and KubeVirt require of volume, disk and interface names).
/// The rule has one owner, `kubevirt_api::names`, which admission uses too.
pub fn is_dns1123_label(s: &str) -> bool {
    kubevirt_api::names::dns1123_label(s).is_none()
}

pub fn dns1123_label(s: &str) -> Result<&str, PathError> {
    if is_dns1123_label(s) {
        Ok(s)
    } else {
        Err(PathError::NotALabel(s.into()))
    }
}

/// `root/component`, where `component` is a DNS-1123 label, optionally followed by one fixed
/// extension (`.qcow2`, `.iso`: `[a-z0-9]+`). Anything else (`..`, `a/b`, an empty name, a
/// dot file) is refused.
pub fn beneath(root: &Path, component: &str) -> Result<PathBuf, PathError> {
    let (stem, ext) = match component.split_once('.') {
        Some((s, e)) => (s, Some(e)),
        None => (component, None),
    };
    let ext_ok = ext.is_none_or(|e| {
        !e.is_empty()
            && e.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    if !is_dns1123_label(stem) || !ext_ok {
        return Err(PathError::BadComponent {
            component: component.into(),
        });
    }
    Ok(root.join(component))
}

/// The components of `path` below `root` (compared component-wise, never as strings); each
/// must be a plain name (no `.`, `..` or root).
fn relative<'a>(root: &Path, path: &'a Path) -> Result<Vec<&'a std::ffi::OsStr>, PathError> {
    let not_beneath = || PathError::NotBeneath {
        root: root.to_path_buf(),
        path: path.to_path_buf(),
    };
    let rel = path.strip_prefix(root).map_err(|_| not_beneath())?;
    rel.components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(not_beneath()),
        })
        .collect()
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS);

fn open_root(root: &Path) -> Result<OwnedFd, PathError> {
    // The VMI directory itself is given by whoever started the launcher (trusted).
    rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err(root))
}

/// Open (with `create`, make) the directory `dir`, which must lie beneath `root`, one
/// component at a time with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`.
pub fn dir_beneath(root: &Path, dir: &Path, create: bool) -> Result<OwnedFd, PathError> {
    let parts = relative(root, dir)?;
    let mut fd = open_root(root)?;
    for part in parts {
        if create {
            match rustix::fs::mkdirat(&fd, part, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(io_err(dir)(e)),
            }
        }
        fd = rustix::fs::openat2(
            &fd,
            part,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            BENEATH,
        )
        .map_err(io_err(dir))?;
    }
    Ok(fd)
}

fn split_file<'a>(
    root: &Path,
    path: &'a Path,
) -> Result<(PathBuf, &'a std::ffi::OsStr), PathError> {
    let name = match (path.parent(), path.file_name()) {
        (Some(_), Some(n)) if relative(root, path).is_ok() => n,
        _ => {
            return Err(PathError::NotBeneath {
                root: root.to_path_buf(),
                path: path.to_path_buf(),
            })
        }
    };
    Ok((path.parent().unwrap_or(root).to_path_buf(), name))
}

/// Create `path` (beneath `root`) afresh: an old file of that name is removed first (never
/// followed: `unlinkat` removes a symlink itself), then it is created exclusively.
pub fn create_file_beneath(root: &Path, path: &Path, mode: u32) -> Result<File, PathError> {
    let (parent, name) = split_file(root, path)?;
    let dir = dir_beneath(root, &parent, true)?;
    match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let fd = rustix::fs::openat2(
        &dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
        BENEATH,
    )
    .map_err(io_err(path))?;
    Ok(File::from(fd))
}

/// Open the existing regular file `path` (beneath `root`) read-only, without following
/// symlinks.
pub fn open_file_beneath(root: &Path, path: &Path) -> Result<File, PathError> {
    let (parent, name) = split_file(root, path)?;
    let dir = dir_beneath(root, &parent, false)?;
    let fd = rustix::fs::openat2(
        &dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        BENEATH,
    )
    .map_err(io_err(path))?;
    Ok(File::from(fd))
}

/// Remove the file `path` beneath `root`; a missing file is not an error.
pub fn remove_beneath(root: &Path, path: &Path) -> Result<(), PathError> {
    let (parent, name) = split_file(root, path)?;
    let dir = match dir_beneath(root, &parent, false) {
        Ok(d) => d,
        Err(PathError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Remove the empty directory `dir` beneath `root` (gone already: fine).
pub fn remove_dir_beneath(root: &Path, dir: &Path) -> Result<(), PathError> {
    let (parent, name) = split_file(root, dir)?;
    let parent = match dir_beneath(root, &parent, false) {
        Ok(d) => d,
        Err(PathError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    match rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// An absolute path with only plain components (hostDisk paths come from the spec).
pub fn check_normal_absolute(path: &Path) -> Result<(), PathError> {
    let mut comps = path.components();
    let normal = comps.next() == Some(Component::RootDir)
        && comps.clone().next().is_some()
        && comps.all(|c| matches!(c, Component::Normal(_)))
        // `Path::components` folds `a//b` and `a/./b`: compare with the text to refuse them.
        && !path.as_os_str().as_encoded_bytes().windows(2).any(|w| w == b"//")
        && !path.to_string_lossy().contains("/./")
        && !path.to_string_lossy().ends_with("/.");
    if normal {
        Ok(())
    } else {
        Err(PathError::NotNormal(path.to_path_buf()))
    }
}

/// Host directories a hostDisk may never point into: the launcher gives a hostDisk image to
/// QEMU's user (chown), which must never happen to a system file or device.
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "proc", "root", "sbin", "sys", "usr",
];

/// Whether `path` lies in one of [`SYSTEM_DIRS`] (compared component-wise).
pub fn is_system_path(path: &Path) -> bool {
    matches!(
        path.components().nth(1),
        Some(Component::Normal(first)) if SYSTEM_DIRS.iter().any(|d| first == *d)
    )
}

/// Create the file `path` (absolute, normalised; hostDisk `DiskOrCreate`) if it does not exist,
/// without following symlinks anywhere on the way. Returns the file when it was created here.
pub fn create_new_absolute(path: &Path, mode: u32) -> Result<Option<File>, PathError> {
    check_normal_absolute(path)?;
    let root = Path::new("/");
    let (parent, _) = split_file(root, path)?;
    if let Err(source) = std::fs::create_dir_all(&parent) {
        return Err(PathError::Io {
            path: parent,
            source,
        });
    }
    let (parent, name) = split_file(root, path)?;
    let dir = dir_beneath(root, &parent, false)?;
    match rustix::fs::openat2(
        &dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
        BENEATH,
    ) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(rustix::io::Errno::EXIST) => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Open an existing absolute file without following symlinks anywhere on its path (O_PATH is
/// not used: the fd is for `fchown`/`fstat`, which need a real open).
pub fn open_absolute_nofollow(path: &Path) -> Result<File, PathError> {
    check_normal_absolute(path)?;
    let root = Path::new("/");
    let (parent, name) = split_file(root, path)?;
    let dir = dir_beneath(root, &parent, false)?;
    let fd = rustix::fs::openat2(
        &dir,
        name,
        // O_NONBLOCK: never hang on a FIFO someone put there; NOCTTY: never adopt a tty.
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
        BENEATH,
    )
    .map_err(io_err(path))?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "root-disk", "0", "a1-b2", &"a".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a.b",
            "a/b",
            "../x",
            "..",
            ".",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
    }

    #[test]
    fn beneath_accepts_labels_with_one_extension_only() {
        let r = Path::new("/vmi/disks");
        assert_eq!(beneath(r, "root.qcow2").unwrap(), r.join("root.qcow2"));
        assert_eq!(beneath(r, "c").unwrap(), r.join("c"));
        for bad in [
            "../x", "a/b", "..", ".a", "a.", "a..b", "a.b.c", "a.B", "", "/etc",
        ] {
            assert!(beneath(r, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_are_created_and_removed_beneath_only() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("vmi");
        std::fs::create_dir(&root).unwrap();
        let f = root.join("disks/a.iso");
        create_file_beneath(&root, &f, 0o600).unwrap();
        assert!(f.is_file());
        // `..` as a path component and a path outside are refused.
        assert!(create_file_beneath(&root, &root.join("disks/../../x"), 0o600).is_err());
        assert!(create_file_beneath(&root, &t.path().join("x"), 0o600).is_err());
        // A symlink planted in the directory is not followed.
        std::os::unix::fs::symlink(t.path(), root.join("link")).unwrap();
        assert!(create_file_beneath(&root, &root.join("link/x"), 0o600).is_err());
        std::os::unix::fs::symlink(t.path().join("y"), root.join("disks/b.iso")).unwrap();
        // The symlink itself is replaced, its target never created.
        create_file_beneath(&root, &root.join("disks/b.iso"), 0o600).unwrap();
        assert!(!t.path().join("x").exists() && !t.path().join("y").exists());
        remove_beneath(&root, &f).unwrap();
        assert!(!f.exists());
        remove_beneath(&root, &f).unwrap();
    }

    #[test]
    fn system_paths() {
        assert!(is_system_path(Path::new("/etc/shadow")));
        assert!(is_system_path(Path::new("/dev/sda")));
        assert!(!is_system_path(Path::new("/var/lib/images/disk.img")));
        assert!(!is_system_path(Path::new("/etcx/disk.img")));
    }

    #[test]
    fn absolute_paths_must_be_normal_and_symlink_free() {
        for bad in ["rel", "/", "/a/../b", "/a/./b", "/a//b", "/a/."] {
            assert!(check_normal_absolute(Path::new(bad)).is_err(), "{bad}");
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("h/disk.img");
        assert!(create_new_absolute(&p, 0o660).unwrap().is_some());
        assert!(create_new_absolute(&p, 0o660).unwrap().is_none());
        std::os::unix::fs::symlink(t.path().join("h"), t.path().join("l")).unwrap();
        assert!(create_new_absolute(&t.path().join("l/new.img"), 0o660).is_err());
        assert!(open_absolute_nofollow(&t.path().join("l/disk.img")).is_err());
        assert!(open_absolute_nofollow(&p).is_ok());
    }
}

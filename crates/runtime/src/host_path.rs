//! Host paths that come from the API, and the one rule they follow: a path is used only when
//! it is absolute and normalised, and its real location (symbolic links resolved) lies
//! strictly beneath a root the administrator allowed — never in the server's data directory,
//! except beneath the local-path provisioner's own volumes directory.
//!
//! Comparison is by path components after resolution (`Path::starts_with` on canonical paths),
//! never by string prefix: `/data/volumes/../../etc` is refused before resolution because of
//! its `..`, and a link inside a root that points out of it is refused after resolution.
//!
//! What remains: a path is checked and then handed to QEMU by name, so a user who can write
//! inside an allowed root can still swap a component for a link between check and use. Roots
//! are for directories only the administrator (and the provisioner) writes.

use std::io;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    /// Not absolute, not normalised, or with a NUL.
    #[error("{path:?} {problem}")]
    Malformed { path: String, problem: String },
    /// Resolves outside every allowed root.
    #[error("{path:?} is not beneath an allowed host path root ({roots}): an administrator allows a directory with `kubevirt-rs server --host-path-root DIR` (repeatable)")]
    NotAllowed { path: PathBuf, roots: String },
    /// Resolves into the server's data directory (its store, keys, VMI directories).
    #[error("{path:?} is inside the server's data directory {data_dir:?}, which no VM may reach")]
    DataDir { path: PathBuf, data_dir: PathBuf },
    /// A configured root cannot be used.
    #[error("host path root {root:?}: {problem}")]
    BadRoot { root: PathBuf, problem: String },
    #[error("resolving {path:?}: {source}")]
    Resolve {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Checks the textual form: absolute, no empty, `.` or `..` component, no NUL.
pub fn clean(path: &str) -> Result<&Path, HostPathError> {
    match kubevirt_api::names::absolute_clean_path(path) {
        None => Ok(Path::new(path)),
        Some(problem) => Err(HostPathError::Malformed {
            path: path.to_string(),
            problem,
        }),
    }
}

/// The real location of an absolute, clean `path`: its deepest existing ancestor canonicalised
/// (links followed), the components that do not exist yet appended as they are.
pub fn resolve(path: &Path) -> Result<PathBuf, HostPathError> {
    let mut existing = path.to_path_buf();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(real) => {
                let mut out = real;
                for c in rest.iter().rev() {
                    out.push(c);
                }
                return Ok(out);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
                    return Err(HostPathError::Resolve {
                        path: path.to_path_buf(),
                        source: e,
                    });
                };
                rest.push(name);
                existing.pop();
            }
            Err(e) => {
                return Err(HostPathError::Resolve {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        }
    }
}

/// `true` when `path` is strictly beneath `root` (both already resolved), by components.
pub fn strictly_beneath(root: &Path, path: &Path) -> bool {
    path != root
        && path.starts_with(root)
        && path
            .strip_prefix(root)
            .is_ok_and(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))))
}

/// One of the local-path provisioner's volumes: `path` (a PersistentVolume's `local.path`,
/// user input) resolves to a direct child of the provisioner's `root` (links followed, `..`
/// refused). The volume itself need not exist yet (a migration target creates it).
pub fn provisioned_volume(root: &Path, path: &Path) -> Result<PathBuf, HostPathError> {
    let real = beneath(root, path)?;
    let real_root = resolve(root)?;
    if real.parent() == Some(real_root.as_path()) {
        Ok(real)
    } else {
        Err(HostPathError::NotAllowed {
            path: path.to_path_buf(),
            roots: real_root.display().to_string(),
        })
    }
}

/// Resolves `path` (a clean absolute path, or relative to `root` of normal components only)
/// and proves it stays strictly beneath `root`. For deleting or creating what the server owns,
/// e.g. the provisioner's volume directories.
pub fn beneath(root: &Path, path: &Path) -> Result<PathBuf, HostPathError> {
    let text = path.to_string_lossy();
    let joined = if path.is_absolute() {
        clean(&text)?.to_path_buf()
    } else {
        let mut p = root.to_path_buf();
        for c in path.components() {
            match c {
                Component::Normal(n) => p.push(n),
                _ => {
                    return Err(HostPathError::Malformed {
                        path: text.into_owned(),
                        problem: "must be made of plain names only (no '..', '.', or root)".into(),
                    })
                }
            }
        }
        p
    };
    let real_root = resolve(root)?;
    let real = resolve(&joined)?;
    if strictly_beneath(&real_root, &real) {
        Ok(real)
    } else {
        Err(HostPathError::NotAllowed {
            path: joined,
            roots: real_root.display().to_string(),
        })
    }
}

/// The administrator's host-path roots and the server's own directories.
#[derive(Clone, Debug)]
pub struct HostPathPolicy {
    roots: Vec<PathBuf>,
    data_dir: PathBuf,
    volumes_dir: PathBuf,
}

impl HostPathPolicy {
    /// The local-path provisioner's directory (resolved), which PersistentVolumes may point
    /// into.
    pub fn volumes_dir(&self) -> &Path {
        &self.volumes_dir
    }

    /// `roots` must exist and be directories; none may contain, or lie inside, `data_dir`.
    /// `volumes_dir` (inside `data_dir`) is the local-path provisioner's directory, whose
    /// volumes PersistentVolumes may point into.
    pub fn new(
        roots: &[PathBuf],
        data_dir: &Path,
        volumes_dir: &Path,
    ) -> Result<HostPathPolicy, HostPathError> {
        let data_dir = resolve(data_dir)?;
        let volumes_dir = resolve(volumes_dir)?;
        let mut real_roots = Vec::new();
        for root in roots {
            let bad = |problem: &str| HostPathError::BadRoot {
                root: root.clone(),
                problem: problem.to_string(),
            };
            clean(&root.to_string_lossy()).map_err(|e| bad(&e.to_string()))?;
            let real = root.canonicalize().map_err(|e| bad(&e.to_string()))?;
            if !real.is_dir() {
                return Err(bad("is not a directory"));
            }
            if real.starts_with(&data_dir) || data_dir.starts_with(&real) {
                return Err(bad(&format!(
                    "overlaps the server's data directory {}: choose a directory outside it",
                    data_dir.display()
                )));
            }
            real_roots.push(real);
        }
        Ok(HostPathPolicy {
            roots: real_roots,
            data_dir,
            volumes_dir,
        })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn roots_text(&self) -> String {
        if self.roots.is_empty() {
            "none configured".into()
        } else {
            self.roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    /// A PersistentVolume's `spec.local.path`: beneath a root, or beneath the provisioner's
    /// volumes directory. Returns the resolved path.
    pub fn persistent_volume(&self, path: &str) -> Result<PathBuf, HostPathError> {
        self.check(path, true)
    }

    /// A hostDisk `path`: beneath a root only.
    pub fn host_disk(&self, path: &str) -> Result<PathBuf, HostPathError> {
        self.check(path, false)
    }

    fn check(&self, path: &str, provisioned_ok: bool) -> Result<PathBuf, HostPathError> {
        let real = resolve(clean(path)?)?;
        if provisioned_ok && strictly_beneath(&self.volumes_dir, &real) {
            return Ok(real);
        }
        if real.starts_with(&self.data_dir) {
            return Err(HostPathError::DataDir {
                path: PathBuf::from(path),
                data_dir: self.data_dir.clone(),
            });
        }
        if self.roots.iter().any(|r| strictly_beneath(r, &real)) {
            Ok(real)
        } else {
            Err(HostPathError::NotAllowed {
                path: PathBuf::from(path),
                roots: self.roots_text(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tree {
        _t: tempfile::TempDir,
        base: PathBuf,
    }

    fn tree() -> Tree {
        let t = tempfile::tempdir().expect("tempdir");
        let base = t.path().canonicalize().expect("canon");
        for d in ["data/volumes/pv1", "allowed/disks", "outside"] {
            std::fs::create_dir_all(base.join(d)).expect("mkdir");
        }
        std::fs::write(base.join("data/kubeconfig"), "secret").expect("write");
        std::fs::write(base.join("outside/shadow"), "secret").expect("write");
        Tree { _t: t, base }
    }

    fn policy(t: &Tree) -> HostPathPolicy {
        HostPathPolicy::new(
            &[t.base.join("allowed")],
            &t.base.join("data"),
            &t.base.join("data/volumes"),
        )
        .expect("policy")
    }

    fn s(p: PathBuf) -> String {
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn paths_beneath_a_root_or_the_volumes_dir_are_allowed() {
        let t = tree();
        let p = policy(&t);
        assert!(p.host_disk(&s(t.base.join("allowed/disks/a.img"))).is_ok());
        // Not created yet (hostDisk DiskOrCreate): resolved through its existing parent.
        assert!(p.host_disk(&s(t.base.join("allowed/new/b.img"))).is_ok());
        assert!(p
            .persistent_volume(&s(t.base.join("data/volumes/pv1")))
            .is_ok());
    }

    #[test]
    fn everything_else_is_refused_with_the_way_to_allow_it() {
        let t = tree();
        let p = policy(&t);
        let e = p.host_disk(&s(t.base.join("outside/shadow"))).unwrap_err();
        assert!(matches!(e, HostPathError::NotAllowed { .. }), "{e}");
        assert!(e.to_string().contains("--host-path-root"), "{e}");
        // The root itself, the data directory and its files, the volumes dir for hostDisk.
        for bad in ["allowed", "data/kubeconfig", "data", "data/volumes/pv1"] {
            assert!(p.host_disk(&s(t.base.join(bad))).is_err(), "{bad}");
        }
        assert!(matches!(
            p.persistent_volume(&s(t.base.join("data/kubeconfig"))),
            Err(HostPathError::DataDir { .. })
        ));
        assert!(p
            .persistent_volume(&s(t.base.join("data/volumes")))
            .is_err());
        // The string-prefix trap of the old reclaimer.
        let sneaky = format!("{}/data/volumes/../../outside/shadow", t.base.display());
        assert!(matches!(
            p.persistent_volume(&sneaky),
            Err(HostPathError::Malformed { .. })
        ));
        assert!(p.persistent_volume("relative/path").is_err());
        assert!(p.persistent_volume("/").is_err());
    }

    #[test]
    fn a_link_out_of_a_root_is_refused() {
        let t = tree();
        let p = policy(&t);
        std::os::unix::fs::symlink(t.base.join("outside"), t.base.join("allowed/link"))
            .expect("symlink");
        let e = p
            .host_disk(&s(t.base.join("allowed/link/shadow")))
            .unwrap_err();
        assert!(matches!(e, HostPathError::NotAllowed { .. }), "{e}");
        // Also for a file that does not exist yet behind the link.
        assert!(p
            .host_disk(&s(t.base.join("allowed/link/new.img")))
            .is_err());
    }

    #[test]
    fn roots_may_not_overlap_the_data_directory() {
        let t = tree();
        for root in ["data", "data/volumes", ""] {
            let r = HostPathPolicy::new(
                &[t.base.join(root)],
                &t.base.join("data"),
                &t.base.join("data/volumes"),
            );
            assert!(
                matches!(r, Err(HostPathError::BadRoot { .. })),
                "{root}: {r:?}"
            );
        }
    }

    #[test]
    fn beneath_refuses_dotdot_and_the_root_itself() {
        let t = tree();
        let vols = t.base.join("data/volumes");
        assert!(beneath(&vols, Path::new("pv1")).is_ok());
        assert!(beneath(&vols, &vols.join("pv1")).is_ok());
        assert!(beneath(&vols, Path::new("../kubeconfig")).is_err());
        assert!(beneath(&vols, &vols).is_err());
        assert!(beneath(&vols, &t.base.join("data/volumes/../../outside")).is_err());
        assert!(beneath(&vols, &t.base.join("outside")).is_err());
    }

    #[test]
    fn a_provisioned_volume_is_a_direct_child_of_the_volumes_dir() {
        let t = tree();
        let vols = t.base.join("data/volumes");
        // Existing, and not made yet (a migration target makes it).
        assert_eq!(
            provisioned_volume(&vols, &vols.join("pv1")).expect("pv1"),
            vols.join("pv1")
        );
        assert!(provisioned_volume(&vols, &vols.join("pvc-new")).is_ok());
        // Deeper, the directory itself, '..' and paths elsewhere are not volumes.
        assert!(provisioned_volume(&vols, &vols.join("pv1/disk.img")).is_err());
        assert!(provisioned_volume(&vols, &vols).is_err());
        assert!(provisioned_volume(&vols, &t.base.join("data/volumes/../kubeconfig")).is_err());
        assert!(provisioned_volume(&vols, &t.base.join("outside/shadow")).is_err());
        // A link planted in the volumes directory that leads out is judged by where it leads.
        std::os::unix::fs::symlink(t.base.join("outside"), vols.join("planted")).expect("link");
        assert!(provisioned_volume(&vols, &vols.join("planted")).is_err());
    }
}

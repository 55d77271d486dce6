//! Volume preparation: the files a `MachineSpec` names are made here, before QEMU starts.
//!
//! - containerDisk: the image is looked up in a local OCI image layout (`index.json`
//!   manifests with `org.opencontainers.image.ref.name`, matched by the full reference or its
//!   tag); the first file under `/disk/` is extracted once as a read-only base, and QEMU gets a
//!   qcow2 overlay on it, so the base is never written.
//! - kernelBoot.container: kernel and initrd are extracted from the image the same way.
//! - hostDisk `DiskOrCreate`: a sparse raw file; emptyDisk: a sparse qcow2 (removed by
//!   [`cleanup`]); cloud-init: an ISO9660 image (`cloudinit.rs`).
//! - bridge interfaces: a tap device on the Linux bridge (needs CAP_NET_ADMIN).
//!
//! Files that must already exist (PVC, DataVolume, hostDisk `Disk`) are not checked here: QEMU
//! reports a missing one in its own words, and the launcher attaches QEMU's stderr.

use crate::confine::{self, ConfineError, QemuUser};
use crate::machine::{detect_format, DiskSource, Firmware, MachineSpec, NetBackend};
use crate::paths::{self, PathError};
use serde_json::Value;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("image {image}: {reason}")]
    Image { image: String, reason: String },
    #[error("no image store: containerDisk/kernelBoot image {0} needs --image-store (an OCI image layout)")]
    NoImageStore(String),
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("disk {disk}: {message}")]
    Disk { disk: String, message: String },
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Confine(#[from] ConfineError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A local OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`).
pub struct OciStore {
    dir: PathBuf,
}

struct Layer {
    blob: PathBuf,
    gzip: bool,
}

impl OciStore {
    pub fn open(dir: &Path) -> Result<OciStore, VolumeError> {
        let index = dir.join("index.json");
        if !index.is_file() {
            return Err(VolumeError::Io {
                path: index.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not an OCI image layout (no index.json)",
                ),
            });
        }
        Ok(OciStore {
            dir: dir.to_path_buf(),
        })
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, String> {
        let (alg, hex) = digest
            .split_once(':')
            .ok_or_else(|| format!("bad digest {digest}"))?;
        if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) || alg.contains('/') {
            return Err(format!("bad digest {digest}"));
        }
        Ok(self.dir.join("blobs").join(alg).join(hex))
    }

    fn json(&self, path: &Path) -> Result<Value, String> {
        let text = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The layers of `image`, bottom first.
    fn layers(&self, image: &str) -> Result<Vec<Layer>, VolumeError> {
        let err = |reason: String| VolumeError::Image {
            image: image.to_string(),
            reason,
        };
        let index = self.json(&self.dir.join("index.json")).map_err(err)?;
        let (name, tag, digest) = split_reference(image);
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        let found = manifests.iter().find(|m| {
            let r = m
                .pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let d = m["digest"].as_str().unwrap_or("");
            r == image
                || digest.as_deref() == Some(d)
                || (!r.is_empty() && (r == tag || r == format!("{name}:{tag}")))
        });
        let Some(mut desc) = found.cloned() else {
            let refs: Vec<&str> = manifests
                .iter()
                .filter_map(|m| {
                    m.pointer("/annotations/org.opencontainers.image.ref.name")
                        .and_then(Value::as_str)
                })
                .collect();
            return Err(err(format!(
                "not in the image store {} (it has: {})",
                self.dir.display(),
                refs.join(", ")
            )));
        };
        // An image index: take the linux/amd64 manifest.
        for _ in 0..4 {
            let mt = desc["mediaType"].as_str().unwrap_or("");
            if !(mt.contains("image.index") || mt.contains("manifest.list")) {
                break;
            }
            let path = self
                .blob_path(desc["digest"].as_str().unwrap_or(""))
                .map_err(err)?;
            let idx = self.json(&path).map_err(err)?;
            desc = idx["manifests"]
                .as_array()
                .and_then(|ms| {
                    ms.iter()
                        .find(|m| {
                            m.pointer("/platform/architecture").and_then(Value::as_str)
                                == Some("amd64")
                        })
                        .or(ms.first())
                        .cloned()
                })
                .ok_or_else(|| err("empty image index".into()))?;
        }
        let path = self
            .blob_path(desc["digest"].as_str().unwrap_or(""))
            .map_err(err)?;
        let manifest = self.json(&path).map_err(err)?;
        let mut out = Vec::new();
        for l in manifest["layers"].as_array().cloned().unwrap_or_default() {
            let mt = l["mediaType"].as_str().unwrap_or("");
            if mt.contains("zstd") {
                return Err(err(format!(
                    "layer media type {mt} is not supported (use tar or tar+gzip)"
                )));
            }
            out.push(Layer {
                blob: self
                    .blob_path(l["digest"].as_str().unwrap_or(""))
                    .map_err(err)?,
                gzip: mt.contains("gzip"),
            });
        }
        Ok(out)
    }

    /// Extract the first regular file for which `want(path)` holds (paths without a leading
    /// `/` or `./`), from the top layer down, to `dest`. Returns the path found in the image.
    pub fn extract(
        &self,
        image: &str,
        want: &dyn Fn(&str) -> bool,
        dest: &Path,
    ) -> Result<String, VolumeError> {
        let layers = self.layers(image)?;
        for layer in layers.iter().rev() {
            let f = fs::File::open(&layer.blob).map_err(io(&layer.blob))?;
            let reader: Box<dyn Read> = if layer.gzip {
                Box::new(flate2::read::GzDecoder::new(f))
            } else {
                Box::new(f)
            };
            let mut archive = tar::Archive::new(reader);
            let entries = archive.entries().map_err(io(&layer.blob))?;
            for entry in entries {
                let mut entry = entry.map_err(io(&layer.blob))?;
                if entry.header().entry_type() != tar::EntryType::Regular {
                    continue;
                }
                let path = entry
                    .path()
                    .map_err(io(&layer.blob))?
                    .to_string_lossy()
                    .to_string();
                let path = path
                    .trim_start_matches("./")
                    .trim_start_matches('/')
                    .to_string();
                if !want(&path) {
                    continue;
                }
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(io(parent))?;
                }
                let tmp = dest.with_extension("part");
                let mut out = fs::File::create(&tmp).map_err(io(&tmp))?;
                std::io::copy(&mut entry, &mut out).map_err(io(&tmp))?;
                drop(out);
                fs::rename(&tmp, dest).map_err(io(dest))?;
                return Ok(path);
            }
        }
        Err(VolumeError::Image {
            image: image.to_string(),
            reason: "no matching file in the image".into(),
        })
    }

    /// Extract several files (`image path` → `dest`) in one pass over the layers; the top
    /// layer wins. Returns the image paths found.
    pub fn extract_many(
        &self,
        image: &str,
        wanted: &[(String, PathBuf)],
    ) -> Result<Vec<String>, VolumeError> {
        let layers = self.layers(image)?;
        let mut found: Vec<String> = Vec::new();
        for layer in layers.iter().rev() {
            if found.len() == wanted.len() {
                break;
            }
            let f = fs::File::open(&layer.blob).map_err(io(&layer.blob))?;
            let reader: Box<dyn Read> = if layer.gzip {
                Box::new(flate2::read::GzDecoder::new(f))
            } else {
                Box::new(f)
            };
            let mut archive = tar::Archive::new(reader);
            for entry in archive.entries().map_err(io(&layer.blob))? {
                let mut entry = entry.map_err(io(&layer.blob))?;
                if entry.header().entry_type() != tar::EntryType::Regular {
                    continue;
                }
                let path = entry
                    .path()
                    .map_err(io(&layer.blob))?
                    .to_string_lossy()
                    .to_string();
                let path = path
                    .trim_start_matches("./")
                    .trim_start_matches('/')
                    .to_string();
                let Some((_, dest)) = wanted.iter().find(|(w, _)| *w == path) else {
                    continue;
                };
                if found.contains(&path) {
                    continue;
                }
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(io(parent))?;
                }
                let tmp = dest.with_extension("part");
                let mut out = fs::File::create(&tmp).map_err(io(&tmp))?;
                std::io::copy(&mut entry, &mut out).map_err(io(&tmp))?;
                fs::rename(&tmp, dest).map_err(io(dest))?;
                found.push(path);
            }
        }
        Ok(found)
    }

    /// A stable key for "file `path` of `image` as this store holds it": changes when any
    /// layer changes (layer blobs are named by digest). FNV-1a over the layer digests.
    pub fn cache_key(&self, image: &str, path: Option<&str>) -> Result<String, VolumeError> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |b: &[u8]| {
            for x in b {
                h ^= u64::from(*x);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for l in self.layers(image)? {
            feed(l.blob.to_string_lossy().as_bytes());
            feed(b"\0");
        }
        feed(path.unwrap_or("disk/*").as_bytes());
        Ok(format!("{h:016x}"))
    }

    /// Whether `image` has the regular file `path`.
    pub fn has_file(&self, image: &str, path: &str) -> bool {
        let Ok(layers) = self.layers(image) else {
            return false;
        };
        layers.iter().any(|layer| {
            let Ok(f) = fs::File::open(&layer.blob) else {
                return false;
            };
            let reader: Box<dyn Read> = if layer.gzip {
                Box::new(flate2::read::GzDecoder::new(f))
            } else {
                Box::new(f)
            };
            let mut a = tar::Archive::new(reader);
            let Ok(entries) = a.entries() else {
                return false;
            };
            entries.flatten().any(|e| {
                e.path()
                    .map(|p| {
                        p.to_string_lossy()
                            .trim_start_matches("./")
                            .trim_start_matches('/')
                            == path
                    })
                    .unwrap_or(false)
            })
        })
    }
}

/// `registry:5000/ns/img:tag@sha256:..` → (name, tag, digest); the tag defaults to `latest`.
fn split_reference(image: &str) -> (String, String, Option<String>) {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d.to_string())),
        None => (image, None),
    };
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    match rest[last_slash..].rfind(':') {
        Some(i) => (
            rest[..last_slash + i].to_string(),
            rest[last_slash + i + 1..].to_string(),
            digest,
        ),
        None => (rest.to_string(), "latest".into(), digest),
    }
}

fn run(cmd: &mut Command) -> Result<(), VolumeError> {
    let out = cmd.output().map_err(|e| VolumeError::Command {
        command: format!("{cmd:?}"),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VolumeError::Command {
            command: format!("{cmd:?}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Create every file and device the spec needs. Idempotent for bases (extracted once);
/// overlays and empty disks are made fresh, as KubeVirt's are ephemeral.
///
/// With `image_cache`, a containerDisk's read-only base is extracted once per image into
/// `image_cache/<key>/` and shared by every VMI of that image (each still gets its own
/// overlay); without it, into the VMI's own directory.
///
/// Files named after the spec are created beneath the VMI directory only (`paths.rs`), and
/// everything QEMU opens is given to (or made readable by) `user` (`confine.rs`).
pub fn prepare(
    spec: &MachineSpec,
    image_store: Option<&Path>,
    image_cache: Option<&Path>,
    user: QemuUser,
) -> Result<(), VolumeError> {
    let root = &spec.dir;
    user.ensure_reachable(root)?;
    paths::dir_beneath(root, &spec.vmi_dir().disks_dir(), true)?;
    // QEMU's sockets: the one directory it may write. Old sockets go with the old directory
    // contents (QEMU refuses to bind over an existing socket file).
    let sockets = spec.sockets_dir();
    let sockets_fd = paths::dir_beneath(root, &sockets, true)?;
    for s in [
        spec.qmp_socket(),
        spec.serial_socket(),
        spec.qemu_vnc_socket(),
    ] {
        paths::remove_beneath(root, &s)?;
    }
    paths::remove_beneath(root, &spec.vnc_socket())?;
    let sockets_dir = fs::File::from(sockets_fd);
    user.give(&sockets_dir, &sockets)?;
    sockets_dir
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(io(&sockets))?;
    // Guest RAM on hugepages: QEMU's user gets its own directory in the hugetlbfs mount
    // (the mount itself stays root's).
    if let Some(h) = &spec.memory.hugepages {
        let fd = paths::dir_beneath(&h.mount, &h.dir, true)?;
        let dir = fs::File::from(fd);
        user.give(&dir, &h.dir)?;
        dir.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io(&h.dir))?;
    }
    let store = |image: &str| -> Result<OciStore, VolumeError> {
        match image_store {
            Some(d) => OciStore::open(d),
            None => Err(VolumeError::NoImageStore(image.to_string())),
        }
    };
    for d in &spec.disks {
        match &d.source {
            DiskSource::File | DiskSource::HostDisk => {
                // PVC/DataVolume files come from the handler; a hostDisk `Disk` path from the
                // spec: no symlink anywhere on it. The image file is given to QEMU, never its
                // directory. A missing file is left to QEMU to report.
                let f = if d.source == DiskSource::HostDisk {
                    paths::open_absolute_nofollow(&d.path)
                } else {
                    open_nofollow(&d.path)
                };
                match f {
                    Ok(f) => user.give(&f, &d.path)?,
                    Err(PathError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            DiskSource::HostDiskOrCreate { capacity } => {
                // Created only if missing (never replaced), without following symlinks.
                match paths::create_new_absolute(&d.path, 0o660)? {
                    Some(f) => {
                        f.set_len(*capacity).map_err(io(&d.path))?;
                        user.give(&f, &d.path)?;
                    }
                    None => user.give(&paths::open_absolute_nofollow(&d.path)?, &d.path)?,
                }
            }
            DiskSource::EmptyDisk { capacity } => {
                // Created exclusively beneath DIR first; qemu-img then writes the same file
                // (DIR/disks is not writable by QEMU's user, so nothing can swap it).
                let f = paths::create_file_beneath(root, &d.path, 0o660)?;
                user.give(&f, &d.path)?;
                run(Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&d.path)
                    .arg(capacity.to_string()))?;
            }
            DiskSource::CloudInit(data) => {
                let mut f = paths::create_file_beneath(root, &d.path, 0o640)?;
                use std::io::Write;
                f.write_all(&data.iso()).map_err(io(&d.path))?;
                user.give(&f, &d.path)?;
            }
            DiskSource::ContainerDisk {
                image,
                path,
                base_dir,
            } => {
                let base_dir = match image_cache {
                    Some(cache) => {
                        let dir = cache.join(store(image)?.cache_key(image, path.as_deref())?);
                        fs::create_dir_all(&dir).map_err(io(&dir))?;
                        dir
                    }
                    None => {
                        // DIR/container-disks/<disk>: beneath DIR, no symlinks on the way.
                        paths::dir_beneath(root, base_dir, true)?;
                        base_dir.clone()
                    }
                };
                // Read-only bases are shared with QEMU's user by mode, not by owner.
                confine::world_searchable(&base_dir)?;
                user.check_ancestors(&base_dir)?;
                let marker = base_dir.join(".base");
                let base = match fs::read_to_string(&marker) {
                    Ok(name) if base_dir.join(name.trim()).is_file() => base_dir.join(name.trim()),
                    _ => {
                        let store = store(image)?;
                        let want_path = path
                            .as_deref()
                            .map(|p| p.trim_start_matches('/').to_string());
                        // Unique per process: launchers of the same image may extract at once;
                        // the renames below make the last one win with identical content.
                        // (`extract` writes `<tmp stem>.part` first: the pid is in the stem.)
                        let tmp = base_dir.join(format!("base-{}.extract", std::process::id()));
                        let found = store.extract(
                            image,
                            &|p: &str| match &want_path {
                                Some(w) => p == w,
                                None => p.starts_with("disk/") && p.len() > 5,
                            },
                            &tmp,
                        )?;
                        let file = Path::new(&found)
                            .file_name()
                            .map(|f| f.to_string_lossy().to_string())
                            .unwrap_or_else(|| "disk.img".into());
                        let base = base_dir.join(&file);
                        fs::rename(&tmp, &base).map_err(io(&base))?;
                        confine::world_readable(&base)?;
                        let marker_tmp = marker.with_extension(std::process::id().to_string());
                        fs::write(&marker_tmp, &file).map_err(io(&marker_tmp))?;
                        fs::rename(&marker_tmp, &marker).map_err(io(&marker))?;
                        base
                    }
                };
                let fmt = detect_format(&base);
                let f = paths::create_file_beneath(root, &d.path, 0o660)?;
                user.give(&f, &d.path)?;
                run(Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-b"])
                    .arg(&base)
                    .args(["-F", fmt.as_str()])
                    .arg(&d.path))?;
            }
        }
    }
    match &spec.firmware {
        Firmware::Kernel(k) => {
            if let Some(image) = &k.image {
                let store = store(image)?;
                match image_cache {
                    None => extract_kernel(&store, image, k, &k.kernel, k.initrd.as_deref())?,
                    Some(cache) => {
                        // Extracted once per image into the cache (a per-process directory
                        // renamed into place), then hard-linked: QEMU only reads these files.
                        let what = format!(
                            "kernel {} {:?} {}",
                            k.kernel_path, k.initrd_path, k.prefer_vmlinux
                        );
                        let dir = cache.join(store.cache_key(image, Some(&what))?);
                        let files = dir.join("kernel");
                        if !files.join(".done").exists() {
                            let tmp = dir.join(format!("kernel-{}.tmp", std::process::id()));
                            let _ = fs::remove_dir_all(&tmp);
                            fs::create_dir_all(&tmp).map_err(io(&tmp))?;
                            let initrd = k.initrd.as_ref().map(|_| tmp.join("initrd"));
                            extract_kernel(
                                &store,
                                image,
                                k,
                                &tmp.join("kernel"),
                                initrd.as_deref(),
                            )?;
                            fs::write(tmp.join(".done"), b"").map_err(io(&tmp))?;
                            if fs::rename(&tmp, &files).is_err() {
                                // Another launcher finished first; its copy is the same.
                                let _ = fs::remove_dir_all(&tmp);
                            }
                        }
                        link_or_copy(&files.join("kernel"), &k.kernel)?;
                        if let Some(i) = &k.initrd {
                            link_or_copy(&files.join("initrd"), i)?;
                        }
                    }
                }
                // QEMU only reads them: readable by mode (a cache hard link shares the inode).
                confine::world_readable(&k.kernel)?;
                if let Some(i) = &k.initrd {
                    confine::world_readable(i)?;
                }
            }
        }
        Firmware::Efi {
            vars_template,
            vars,
            ..
        } => {
            if !vars.exists() {
                let template = fs::read(vars_template).map_err(io(vars_template))?;
                let mut f = paths::create_file_beneath(root, vars, 0o600)?;
                use std::io::Write;
                f.write_all(&template).map_err(io(vars))?;
            }
            // QEMU writes the variable store.
            user.give(&open_nofollow(vars)?, vars)?;
        }
        Firmware::Bios => {}
    }
    for n in &spec.nics {
        if let NetBackend::Bridge { tap, bridge } = &n.backend {
            let _ = Command::new("ip").args(["link", "del", tap]).output();
            let mut add = Command::new("ip");
            add.args(["tuntap", "add", "dev", tap, "mode", "tap"]);
            if !user.is_root() {
                // A persistent tap owned by QEMU's user: it can attach without CAP_NET_ADMIN.
                add.args([
                    "user",
                    &user.uid.to_string(),
                    "group",
                    &user.gid.to_string(),
                ]);
            }
            run(&mut add)?;
            run(Command::new("ip").args(["link", "set", tap, "master", bridge, "up"]))?;
        }
    }
    Ok(())
}

/// kernelBoot.container: the kernel (its `vmlinux` sibling when preferred) and the initrd
/// of `image`, in one pass over the layers, to `kernel` and `initrd`.
fn extract_kernel(
    store: &OciStore,
    image: &str,
    k: &crate::machine::KernelBoot,
    kernel: &Path,
    initrd: Option<&Path>,
) -> Result<(), VolumeError> {
    let kp = k.kernel_path.trim_start_matches('/').to_string();
    // Prefer an uncompressed PVH vmlinux beside a vmlinuz (see KernelBoot::prefer_vmlinux).
    let vmlinux = Path::new(&kp)
        .file_name()
        .and_then(|f| f.to_str())
        .filter(|f| f.starts_with("vmlinuz"))
        .map(|f| {
            let parent = Path::new(&kp)
                .parent()
                .map(|p| p.to_string_lossy().to_string())
                .unwrap_or_default();
            let name = f.replacen("vmlinuz", "vmlinux", 1);
            if parent.is_empty() {
                name
            } else {
                format!("{parent}/{name}")
            }
        });
    let alt = kernel.with_extension("vmlinux");
    let mut wanted = vec![(kp.clone(), kernel.to_path_buf())];
    if let (Some(v), true) = (&vmlinux, k.prefer_vmlinux) {
        wanted.push((v.clone(), alt.clone()));
    }
    let ip = k
        .initrd_path
        .as_ref()
        .map(|p| p.trim_start_matches('/').to_string());
    if let (Some(ip), Some(dest)) = (&ip, initrd) {
        wanted.push((ip.clone(), dest.to_path_buf()));
    }
    let found = store.extract_many(image, &wanted)?;
    for (path, _) in &wanted {
        if !found.contains(path) && Some(path) != vmlinux.as_ref() {
            return Err(VolumeError::Image {
                image: image.to_string(),
                reason: format!("no file /{path} in the image"),
            });
        }
    }
    if vmlinux.as_ref().is_some_and(|v| found.contains(v)) {
        fs::rename(&alt, kernel).map_err(io(kernel))?;
    }
    Ok(())
}

/// `dest` becomes a hard link to `src` (a copy across filesystems).
fn link_or_copy(src: &Path, dest: &Path) -> Result<(), VolumeError> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let _ = fs::remove_file(dest);
    if fs::hard_link(src, dest).is_err() {
        fs::copy(src, dest).map_err(io(src))?;
    }
    Ok(())
}

/// Open an existing file without following a symlink in its last component.
fn open_nofollow(path: &Path) -> Result<fs::File, PathError> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| PathError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// A hotplugged disk's file (a persistentVolumeClaim or dataVolume the handler resolved
/// beneath its volume root): opened without following a symlink and given to QEMU's user,
/// as the files present at start are. It must exist: nothing is created for a hotplug.
pub fn prepare_hotplug(d: &crate::machine::DiskSpec, user: QemuUser) -> Result<(), VolumeError> {
    if d.source != DiskSource::File {
        return Err(VolumeError::Disk {
            disk: d.name.clone(),
            message: "only persistentVolumeClaim and dataVolume volumes can be hotplugged".into(),
        });
    }
    let f = open_nofollow(&d.path)?;
    user.give(&f, &d.path)?;
    Ok(())
}

/// Remove what lives only as long as the VMI: emptyDisks, containerDisk overlays, taps.
/// Only files beneath the VMI directory are removed.
pub fn cleanup(spec: &MachineSpec) {
    for d in &spec.disks {
        if matches!(
            d.source,
            DiskSource::EmptyDisk { .. } | DiskSource::ContainerDisk { .. }
        ) {
            if let Err(e) = paths::remove_beneath(&spec.dir, &d.path) {
                tracing::warn!("cleanup of disk {}: {e}", d.name);
            }
        }
    }
    for n in &spec.nics {
        if let NetBackend::Bridge { tap, .. } = &n.backend {
            let _ = Command::new("ip").args(["link", "del", tap]).output();
        }
    }
    if let Some(h) = &spec.memory.hugepages {
        // QEMU unlinked its backing file at start; the pages are freed when it exits.
        if let Err(e) = paths::remove_dir_beneath(&h.mount, &h.dir) {
            tracing::warn!("cleanup of the hugepages directory: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_tag_digest() {
        assert_eq!(
            split_reference("registry:5000/kubevirt/demo:v1"),
            ("registry:5000/kubevirt/demo".into(), "v1".into(), None)
        );
        assert_eq!(
            split_reference("registry:5000/demo"),
            ("registry:5000/demo".into(), "latest".into(), None)
        );
        assert_eq!(
            split_reference("demo@sha256:ab"),
            ("demo".into(), "latest".into(), Some("sha256:ab".into()))
        );
    }

    #[test]
    fn a_small_oci_layout_yields_its_disk() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let data = b"QFI\xfbrest";
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o444);
        h.set_cksum();
        b.append_data(&mut h, "disk/x.qcow2", &data[..]).unwrap();
        let layer = b.into_inner().unwrap();
        fs::write(root.join("blobs/sha256/aa"), &layer).unwrap();
        let manifest = serde_json::json!({"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:aa"}]});
        fs::write(root.join("blobs/sha256/bb"), manifest.to_string()).unwrap();
        let index = serde_json::json!({"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","annotations":{"org.opencontainers.image.ref.name":"v2"}}]});
        fs::write(root.join("index.json"), index.to_string()).unwrap();
        let s = OciStore::open(root).unwrap();
        let out = root.join("out");
        let found = s
            .extract("quay.io/x/y:v2", &|p| p.starts_with("disk/"), &out)
            .unwrap();
        assert_eq!(found, "disk/x.qcow2");
        assert_eq!(fs::read(&out).unwrap(), data);
        let e = s.extract("quay.io/x/y:v3", &|_| true, &out).unwrap_err();
        assert!(e.to_string().contains("it has: v2"), "{e}");
    }
}

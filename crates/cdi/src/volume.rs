//! The volume being filled: a raw file (`<dir>/disk.img` on a Filesystem PVC, or the file
//! that backs a Block PVC). Nothing half-written is ever handed over: data goes to
//! `<target>.importing`, which is fsynced and renamed over the target on success and removed on
//! failure. Zero blocks are never written, so the result is as sparse as the image.
//!
//! A target that is a real block device node is written in place instead (a device cannot be
//! renamed); it is zeroed first so that skipped blocks read as zeros.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Zero detection granularity, as `qemu-img convert`'s default `-S 4k`.
pub(crate) const SPARSE_BLOCK: usize = 4096;

/// How the PVC is consumed; both are raw files for the importer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VolumeMode {
    /// `volumeMode: Filesystem`: the target is `<mount>/disk.img`.
    #[default]
    Filesystem,
    /// `volumeMode: Block`: the target is the raw file (or device) used as the block device.
    Block,
}

/// Where the image goes and how big the volume is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The raw file to create (e.g. `<pvc dir>/disk.img`).
    pub path: PathBuf,
    /// The usable size of the volume in bytes: the final file has exactly this length, and an
    /// image whose virtual size exceeds it is refused.
    pub size: u64,
    pub mode: VolumeMode,
}

impl Target {
    pub fn new(path: impl Into<PathBuf>, size: u64) -> Self {
        Self {
            path: path.into(),
            size,
            mode: VolumeMode::Filesystem,
        }
    }

    /// `<target>.importing`, where the data is written before it is handed over.
    pub fn importing_path(&self) -> PathBuf {
        suffixed(&self.path, ".importing")
    }

    /// `<target>.scratch`, where a stream is spooled when the image needs random access.
    pub fn scratch_path(&self) -> PathBuf {
        suffixed(&self.path, ".scratch")
    }
}

pub(crate) fn suffixed(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Errors of the volume file.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot write the volume {path} at offset {offset}: {source}")]
    Write {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    #[error("volume {path} is full (writing at offset {offset}): the storage behind the PVC has no space left")]
    NoSpace { path: PathBuf, offset: u64 },
    #[error("cannot finish the volume {path} (fsync/rename): {source}")]
    Commit { path: PathBuf, source: io::Error },
    #[error("image is {} but the volume holds {}: request at least {}", human(*image), human(*volume), human(*image))]
    ImageTooLarge { image: u64, volume: u64 },
    #[error("the decompressed stream is larger than the volume ({}): a compressed image expanding beyond the volume size is refused (zip bomb?); request a bigger volume if the image really is that big", human(*volume))]
    DecompressedTooLarge { volume: u64 },
    #[error("the image is larger than the volume (more than {} of data): request a bigger volume", human(*volume))]
    StreamTooLarge { volume: u64 },
    #[error("block device {path} holds {} but {} were requested", human(*device), human(*requested))]
    DeviceTooSmall {
        path: PathBuf,
        device: u64,
        requested: u64,
    },
}

/// Formats a byte count as CDI-ish human units (`2.0 GiB`).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// The target file while it is being written.
#[derive(Debug)]
pub(crate) struct VolumeFile {
    file: File,
    /// The path written to (`.importing`, or the device itself).
    write_path: PathBuf,
    final_path: PathBuf,
    size: u64,
    in_place: bool,
    committed: bool,
    /// Highest offset written + 1 (or explicitly extended to).
    written_end: std::sync::atomic::AtomicU64,
}

impl VolumeFile {
    pub(crate) fn create(target: &Target) -> Result<Self, VolumeError> {
        let is_dev = std::fs::metadata(&target.path)
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        if is_dev {
            return Self::open_device(target);
        }
        let write_path = target.importing_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o660)
            .open(&write_path)
            .map_err(|source| VolumeError::Create {
                path: write_path.clone(),
                source,
            })?;
        Ok(Self {
            file,
            write_path,
            final_path: target.path.clone(),
            size: target.size,
            in_place: false,
            committed: false,
            written_end: Default::default(),
        })
    }

    fn open_device(target: &Target) -> Result<Self, VolumeError> {
        let path = target.path.clone();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| VolumeError::Create {
                path: path.clone(),
                source,
            })?;
        let dev_size = device_size(&file).map_err(|source| VolumeError::Create {
            path: path.clone(),
            source,
        })?;
        if dev_size < target.size {
            return Err(VolumeError::DeviceTooSmall {
                path,
                device: dev_size,
                requested: target.size,
            });
        }
        let v = Self {
            file,
            write_path: path.clone(),
            final_path: path,
            size: target.size,
            in_place: true,
            committed: false,
            written_end: Default::default(),
        };
        v.zero_range(0, target.size)?;
        Ok(v)
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn path(&self) -> &Path {
        &self.write_path
    }

    /// Writes `buf` at `offset`, skipping all-zero 4 KiB blocks. The caller has checked that
    /// the range fits in the volume. Returns the bytes actually written.
    pub(crate) fn write_sparse(&self, buf: &[u8], offset: u64) -> Result<u64, VolumeError> {
        let mut written = 0u64;
        let mut run_start: Option<usize> = None;
        let mut pos = 0usize;
        while pos < buf.len() {
            let end = (pos + SPARSE_BLOCK).min(buf.len());
            if is_zero(&buf[pos..end]) {
                if let Some(s) = run_start.take() {
                    self.pwrite(&buf[s..pos], offset + s as u64)?;
                    written += (pos - s) as u64;
                }
            } else if run_start.is_none() {
                run_start = Some(pos);
            }
            pos = end;
        }
        if let Some(s) = run_start {
            self.pwrite(&buf[s..], offset + s as u64)?;
            written += (buf.len() - s) as u64;
        }
        self.written_end.fetch_max(
            offset + buf.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if written > 0 && !self.in_place {
            self.start_writeback(offset, buf.len() as u64);
        }
        Ok(written)
    }

    /// Highest offset written (+1).
    pub(crate) fn written_end(&self) -> u64 {
        self.written_end.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts writeback of what was just written, so the final fsync finds little left to do
    /// and the disk works while we convert. Advisory: errors surface at fsync.
    fn start_writeback(&self, offset: u64, len: u64) {
        // SAFETY: sync_file_range on an owned, open fd with integer arguments.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    fn pwrite(&self, buf: &[u8], offset: u64) -> Result<(), VolumeError> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|source| self.write_error(offset, source))
    }

    fn write_error(&self, offset: u64, source: io::Error) -> VolumeError {
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            VolumeError::NoSpace {
                path: self.write_path.clone(),
                offset,
            }
        } else {
            VolumeError::Write {
                path: self.write_path.clone(),
                offset,
                source,
            }
        }
    }

    /// Zeroes a range of an in-place device (fresh files are zero already).
    fn zero_range(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: fallocate on an owned, open fd with plain integer arguments.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_ZERO_RANGE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let zeros = vec![0u8; 1 << 20];
        let mut off = offset;
        while off < offset + len {
            let n = (offset + len - off).min(zeros.len() as u64) as usize;
            self.pwrite(&zeros[..n], off)?;
            off += n as u64;
        }
        Ok(())
    }

    /// Gives the file its final length now (before an external writer such as qemu-img).
    pub(crate) fn extend_to_size(&self) -> Result<(), VolumeError> {
        if self.in_place {
            return Ok(());
        }
        self.file
            .set_len(self.size)
            .map_err(|source| VolumeError::Write {
                path: self.write_path.clone(),
                offset: self.size,
                source,
            })
    }

    /// Sets the final length (the volume size), fsyncs, and renames `.importing` over the
    /// target (then fsyncs the directory so the rename survives a crash).
    pub(crate) fn commit(mut self) -> Result<(), VolumeError> {
        let commit_err = |path: &Path, source| VolumeError::Commit {
            path: path.to_path_buf(),
            source,
        };
        if !self.in_place {
            self.file
                .set_len(self.size)
                .map_err(|e| commit_err(&self.write_path, e))?;
        }
        self.file
            .sync_all()
            .map_err(|e| commit_err(&self.write_path, e))?;
        if !self.in_place {
            std::fs::rename(&self.write_path, &self.final_path)
                .map_err(|e| commit_err(&self.final_path, e))?;
            if let Some(dir) = self.final_path.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                if let Ok(d) = File::open(dir) {
                    d.sync_all().map_err(|e| commit_err(dir, e))?;
                }
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for VolumeFile {
    fn drop(&mut self) {
        if !self.committed && !self.in_place {
            let _ = std::fs::remove_file(&self.write_path);
        }
    }
}

/// A file removed when dropped (the scratch spool).
#[derive(Debug)]
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
}

impl TempFile {
    pub(crate) fn create(path: PathBuf) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Self { path, file })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn device_size(f: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = f;
    let n = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(n)
}

/// True if every byte is zero. Checks a few bytes first so data blocks bail out early, then
/// ORs the rest in a form the compiler vectorises.
#[inline]
pub(crate) fn is_zero(b: &[u8]) -> bool {
    let head = b.len().min(16);
    if b[..head].iter().any(|&x| x != 0) {
        return false;
    }
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |a, &x| a | x) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

/// Creates a blank (all-zero, fully sparse) volume.
pub(crate) fn create_blank(target: &Target) -> Result<(), VolumeError> {
    let v = VolumeFile::create(target)?;
    v.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn human_units() {
        assert_eq!(human(2 << 30), "2.0 GiB");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(64 << 20), "64.0 MiB");
    }

    #[test]
    fn zero_detection() {
        let mut b = vec![0u8; 8192];
        assert!(is_zero(&b));
        b[8191] = 1;
        assert!(!is_zero(&b));
        assert!(is_zero(&[]));
    }

    #[test]
    fn sparse_write_commit_and_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let t = Target::new(dir.path().join("disk.img"), 1 << 20);
        let v = VolumeFile::create(&t).unwrap();
        let mut buf = vec![0u8; 256 << 10];
        buf[100_000] = 7;
        let w = v.write_sparse(&buf, 4096).unwrap();
        assert_eq!(w, 4096);
        v.commit().unwrap();
        let m = std::fs::metadata(&t.path).unwrap();
        assert_eq!(m.len(), 1 << 20);
        assert!(m.blocks() * 512 <= 64 << 10);
        assert!(!t.importing_path().exists());

        let t2 = Target::new(dir.path().join("other.img"), 1 << 20);
        let v = VolumeFile::create(&t2).unwrap();
        assert!(t2.importing_path().exists());
        drop(v);
        assert!(!t2.importing_path().exists());
        assert!(!t2.path.exists());
    }
}

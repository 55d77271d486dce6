//! `pvc` sources (host-assisted clone): copy the source volume's raw file to the target,
//! keeping holes (SEEK_DATA/SEEK_HOLE, plus zero-block skipping inside data extents).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::pipeline::Ctx;
use crate::volume::{VolumeError, VolumeFile};

const CHUNK: usize = 8 << 20;

/// Errors of a clone.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error("cannot read the source volume {path}: {source}")]
    Source { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("import cancelled")]
    Cancelled,
}

fn lseek(f: &File, off: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek on an owned, open fd with integer arguments.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// Data extents of `f` below `len` (`SEEK_DATA`/`SEEK_HOLE`), as `(start, end)` byte ranges;
/// the whole file if the filesystem cannot tell. Sparse copies (clones here, the local
/// snapshotter's copies) read only these.
pub fn data_extents(f: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match lseek(f, pos, libc::SEEK_DATA) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(vec![(0, len)]),
            Err(e) => return Err(e),
        };
        if start >= len {
            break;
        }
        let end = lseek(f, start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

/// Copies `source` into the volume. The source may be smaller than the volume (the rest
/// stays zero); a bigger one is refused.
pub(crate) fn clone_file(source: &Path, ctx: &Ctx<'_>) -> Result<VolumeFile, CloneError> {
    let src_err = |source_err| CloneError::Source {
        path: source.to_path_buf(),
        source: source_err,
    };
    let f = File::open(source).map_err(src_err)?;
    let len = {
        use std::io::{Seek, SeekFrom};
        let mut g = &f;
        g.seek(SeekFrom::End(0)).map_err(src_err)?
    };
    if len > ctx.target.size {
        return Err(VolumeError::ImageTooLarge {
            image: len,
            volume: ctx.target.size,
        }
        .into());
    }
    let extents = data_extents(&f, len).map_err(src_err)?;
    let data_total: u64 = extents.iter().map(|(s, e)| e - s).sum();
    ctx.progress.set_transfer_total(Some(data_total));
    let vol = VolumeFile::create(ctx.target)?;
    let mut buf = vec![0u8; CHUNK];
    for (start, end) in extents {
        let mut off = start;
        while off < end {
            if ctx.cancel.load(Ordering::Relaxed) {
                return Err(CloneError::Cancelled);
            }
            let n = ((end - off) as usize).min(CHUNK);
            f.read_exact_at(&mut buf[..n], off).map_err(src_err)?;
            vol.write_sparse(&buf[..n], off)?;
            off += n as u64;
            ctx.progress.add_transferred(n as u64);
        }
    }
    Ok(vol)
}

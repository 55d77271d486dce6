//! The synchronous import pipeline every source ends in: detect → decompress (as a stream,
//! detecting again after each layer) → write raw/ISO straight to the volume, or spool an image
//! that needs random access (qcow2, vmdk, ...) to a scratch file and convert it from there.
//!
//! It runs on a blocking thread; async sources reach it through `SyncIoBridge`.

use std::io::{self, Cursor, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::checksum::{Checksum, Hasher};
use crate::format::{detect, Format, DETECT_LEN};
use crate::progress::Tracker;
use crate::qcow2::{self, FileSlice, Qcow2Error};
use crate::qemu::{self, QemuImgError};
use crate::volume::{Target, TempFile, VolumeError, VolumeFile};
use crate::ImportOptions;

/// Compression layers allowed on top of each other (e.g. `.qcow2.gz` is one).
const MAX_LAYERS: usize = 3;
/// Streaming copy buffer.
const COPY_BUF: usize = 4 << 20;

/// Errors of the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("reading the source failed: {0}")]
    Source(io::Error),
    #[error("the {format} stream is corrupt: {source}")]
    Decode { format: Format, source: io::Error },
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    QemuImg(#[from] QemuImgError),
    #[error("cannot write the scratch file {path}: {source}")]
    Scratch { path: PathBuf, source: io::Error },
    #[error("more than {MAX_LAYERS} compression layers: refused")]
    TooManyLayers,
    #[error("import cancelled")]
    Cancelled,
}

/// Marks an I/O error that came from the source (network, upload body), as opposed to a
/// decoder rejecting the data: the first is worth a retry, the second is not.
#[derive(Debug)]
struct SourceIoError(io::Error);

impl std::fmt::Display for SourceIoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for SourceIoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[derive(Debug)]
struct CancelledMarker;
impl std::fmt::Display for CancelledMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("import cancelled")
    }
}
impl std::error::Error for CancelledMarker {}

/// Marks a decoder's error with the layer's format.
#[derive(Debug)]
struct DecodeMarker {
    format: Format,
    inner: io::Error,
}
impl std::fmt::Display for DecodeMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}
impl std::error::Error for DecodeMarker {}

fn is_marked(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| {
        i.is::<SourceIoError>() || i.is::<CancelledMarker>() || i.is::<DecodeMarker>()
    })
}

/// Turns an I/O error from the reading side into the right pipeline error.
pub(crate) fn classify(e: io::Error, outer: Option<Format>) -> PipelineError {
    if let Some(inner) = e.get_ref() {
        if inner.is::<CancelledMarker>() {
            return PipelineError::Cancelled;
        }
        if inner.is::<SourceIoError>() {
            let kind = e.kind();
            let msg = e.to_string();
            return match e.into_inner().map(|b| b.downcast::<SourceIoError>()) {
                Some(Ok(s)) => PipelineError::Source(s.0),
                _ => PipelineError::Source(io::Error::new(kind, msg)),
            };
        }
        if let Some(d) = inner.downcast_ref::<DecodeMarker>() {
            let format = d.format;
            let kind = d.inner.kind();
            let msg = d.inner.to_string();
            return PipelineError::Decode {
                format,
                source: io::Error::new(kind, msg),
            };
        }
    }
    match outer {
        Some(format) => PipelineError::Decode { format, source: e },
        None => PipelineError::Source(e),
    }
}

/// Hashes what it reads; shared so the caller can read the sum after the pipeline.
pub(crate) type SharedHasher = Arc<Mutex<Option<Hasher>>>;

/// The bottom of every stream: counts transferred bytes, hashes them, checks cancellation and
/// marks errors as the source's.
pub(crate) struct SourceReader<R> {
    inner: R,
    progress: Tracker,
    cancel: Arc<AtomicBool>,
    hasher: Option<SharedHasher>,
    pending: u64,
}

impl<R: Read> SourceReader<R> {
    pub(crate) fn new(
        inner: R,
        progress: Tracker,
        cancel: Arc<AtomicBool>,
        hasher: Option<SharedHasher>,
    ) -> Self {
        Self {
            inner,
            progress,
            cancel,
            hasher,
            pending: 0,
        }
    }

    /// Reads to EOF (so the checksum covers the whole download).
    pub(crate) fn drain(&mut self) -> Result<(), PipelineError> {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify(e, None)),
            }
        }
        self.flush_progress();
        Ok(())
    }

    fn flush_progress(&mut self) {
        if self.pending > 0 {
            self.progress.add_transferred(self.pending);
            self.pending = 0;
        }
    }
}

impl<R: Read> Read for SourceReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other(CancelledMarker));
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) if is_marked(&e) => return Err(e),
            Err(e) => return Err(io::Error::new(e.kind(), SourceIoError(e))),
        };
        if let Some(h) = &self.hasher {
            if let Ok(mut g) = h.lock() {
                if let Some(h) = g.as_mut() {
                    h.update(&buf[..n]);
                }
            }
        }
        self.pending += n as u64;
        if self.pending >= 1 << 20 || n == 0 {
            self.flush_progress();
        }
        Ok(n)
    }
}

/// Takes the final sum out of a shared hasher.
pub(crate) fn take_sum(h: &SharedHasher) -> Option<Checksum> {
    h.lock().ok().and_then(|mut g| g.take()).map(Hasher::finish)
}

/// A decoder whose own errors are labelled with its format.
struct Labeled<R> {
    inner: R,
    format: Format,
}

impl<R: Read> Read for Labeled<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if is_marked(&e) || e.kind() == io::ErrorKind::Interrupted {
                e
            } else {
                io::Error::new(
                    e.kind(),
                    DecodeMarker {
                        format: self.format,
                        inner: e,
                    },
                )
            }
        })
    }
}

/// What the pipeline produced; the caller checks the checksum, then commits.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) volume: VolumeFile,
    /// Formats from the outside in, e.g. `[Gzip, Qcow2]`.
    pub(crate) formats: Vec<Format>,
    pub(crate) virtual_size: u64,
}

/// Everything the pipeline needs besides the data.
pub(crate) struct Ctx<'a> {
    pub(crate) target: &'a Target,
    pub(crate) opts: &'a ImportOptions,
    pub(crate) progress: Tracker,
    pub(crate) cancel: Arc<AtomicBool>,
}

impl Ctx<'_> {
    fn check_cancel(&self) -> Result<(), PipelineError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(PipelineError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn scratch_path(&self) -> PathBuf {
        match &self.opts.scratch_dir {
            Some(d) => {
                let name = self
                    .target
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "disk.img".into());
                d.join(format!("{name}.scratch"))
            }
            None => self.target.scratch_path(),
        }
    }
}

fn read_head(r: &mut dyn Read, outer: Option<Format>) -> Result<Vec<u8>, PipelineError> {
    let mut head = vec![0u8; DETECT_LEN];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(classify(e, outer)),
        }
    }
    head.truncate(n);
    Ok(head)
}

/// Imports a stream. `src` should be a [`SourceReader`] (it counts and marks errors).
pub(crate) fn import_stream(src: &mut dyn Read, ctx: &Ctx<'_>) -> Result<Prepared, PipelineError> {
    let mut formats = Vec::new();
    let mut r: Box<dyn Read + '_> = Box::new(src);
    let mut outer: Option<Format> = None;
    loop {
        let head = read_head(&mut r, outer)?;
        let f = detect(&head);
        formats.push(f);
        let chained = Cursor::new(head.clone()).chain(r);
        if f.is_compression() {
            if formats.len() > MAX_LAYERS {
                return Err(PipelineError::TooManyLayers);
            }
            let dec: Box<dyn Read + '_> = match f {
                Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(chained)),
                Format::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(chained)),
                _ => Box::new(
                    zstd::stream::read::Decoder::new(chained)
                        .map_err(|source| PipelineError::Decode { format: f, source })?,
                ),
            };
            r = Box::new(Labeled {
                inner: dec,
                format: f,
            });
            outer = Some(f);
            continue;
        }
        let compressed = formats.len() > 1;
        let mut chained: Box<dyn Read + '_> = Box::new(chained);
        return match f {
            Format::Qcow2 => {
                let h = qcow2::parse_header(&head)?;
                if h.size > ctx.target.size {
                    return Err(VolumeError::ImageTooLarge {
                        image: h.size,
                        volume: ctx.target.size,
                    }
                    .into());
                }
                ctx.progress.set_two_stages();
                let scratch = spool(&mut chained, ctx, compressed, outer)?;
                drop(chained);
                let volume = VolumeFile::create(ctx.target)?;
                let slice =
                    FileSlice::whole(&scratch.file).map_err(|source| PipelineError::Scratch {
                        path: scratch.path.clone(),
                        source,
                    })?;
                let virtual_size = qcow2::convert(slice, &volume, &ctx.progress, &ctx.cancel)?;
                Ok(Prepared {
                    volume,
                    formats,
                    virtual_size,
                })
            }
            f if f.needs_qemu_img() => {
                ctx.progress.set_two_stages();
                let scratch = spool(&mut chained, ctx, compressed, outer)?;
                drop(chained);
                convert_with_qemu_img(&scratch, f, formats, ctx)
            }
            _ => {
                let (volume, len) = copy_raw(&mut chained, ctx, compressed, outer)?;
                Ok(Prepared {
                    volume,
                    formats,
                    virtual_size: len,
                })
            }
        };
    }
}

/// Imports a local file range (an uncompressed image, possibly inside a tar layer) without
/// copying it first: qcow2 is converted in place; anything else goes through the stream path.
pub(crate) fn import_file_slice(
    slice: FileSlice<'_>,
    ctx: &Ctx<'_>,
) -> Result<Prepared, PipelineError> {
    let mut head = vec![0u8; (slice.len.min(DETECT_LEN as u64)) as usize];
    std::os::unix::fs::FileExt::read_exact_at(slice.file, &mut head, slice.base)
        .map_err(PipelineError::Source)?;
    if detect(&head) == Format::Qcow2 {
        let volume = VolumeFile::create(ctx.target)?;
        let virtual_size = qcow2::convert(slice, &volume, &ctx.progress, &ctx.cancel)?;
        ctx.progress.add_transferred(slice.len);
        return Ok(Prepared {
            volume,
            formats: vec![Format::Qcow2],
            virtual_size,
        });
    }
    ctx.progress.set_transfer_total(Some(slice.len));
    let mut r = SourceReader::new(
        SliceReader { slice, pos: 0 },
        ctx.progress.clone(),
        ctx.cancel.clone(),
        None,
    );
    import_stream(&mut r, ctx)
}

/// Sequential reader over a [`FileSlice`].
pub(crate) struct SliceReader<'a> {
    pub(crate) slice: FileSlice<'a>,
    pub(crate) pos: u64,
}

impl Read for SliceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.slice.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let k = std::os::unix::fs::FileExt::read_at(
            self.slice.file,
            &mut buf[..n],
            self.slice.base + self.pos,
        )?;
        self.pos += k as u64;
        Ok(k)
    }
}

fn fill(r: &mut dyn Read, buf: &mut [u8], outer: Option<Format>) -> Result<usize, PipelineError> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(classify(e, outer)),
        }
    }
    Ok(n)
}

fn too_large(compressed: bool, volume: u64) -> PipelineError {
    if compressed {
        VolumeError::DecompressedTooLarge { volume }.into()
    } else {
        VolumeError::StreamTooLarge { volume }.into()
    }
}

/// Raw / ISO: stream straight into the volume, sparse, capped at the volume size.
fn copy_raw(
    r: &mut dyn Read,
    ctx: &Ctx<'_>,
    compressed: bool,
    outer: Option<Format>,
) -> Result<(VolumeFile, u64), PipelineError> {
    let volume = VolumeFile::create(ctx.target)?;
    let size = ctx.target.size;
    let mut buf = vec![0u8; COPY_BUF];
    let mut off = 0u64;
    loop {
        ctx.check_cancel()?;
        let n = fill(r, &mut buf, outer)?;
        if n == 0 {
            break;
        }
        if off + n as u64 > size {
            return Err(too_large(compressed, size));
        }
        volume.write_sparse(&buf[..n], off)?;
        off += n as u64;
    }
    Ok((volume, off))
}

/// Copies the (decompressed) stream to the scratch file, capped: a qcow2 holds its virtual
/// data plus metadata, so anything much bigger than the volume is refused.
fn spool(
    r: &mut dyn Read,
    ctx: &Ctx<'_>,
    compressed: bool,
    outer: Option<Format>,
) -> Result<TempFile, PipelineError> {
    let path = ctx.scratch_path();
    let scratch_err = |path: &PathBuf, source| PipelineError::Scratch {
        path: path.clone(),
        source,
    };
    let mut tmp = TempFile::create(path.clone()).map_err(|e| scratch_err(&path, e))?;
    let cap = ctx.target.size + ctx.target.size / 32 + (16 << 20);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        ctx.check_cancel()?;
        let n = fill(r, &mut buf, outer)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > cap {
            return Err(too_large(compressed, ctx.target.size));
        }
        tmp.file
            .write_all(&buf[..n])
            .map_err(|e| scratch_err(&path, e))?;
    }
    Ok(tmp)
}

fn convert_with_qemu_img(
    scratch: &TempFile,
    f: Format,
    formats: Vec<Format>,
    ctx: &Ctx<'_>,
) -> Result<Prepared, PipelineError> {
    let qemu_img = &ctx.opts.qemu_img;
    let vsize = qemu::virtual_size(qemu_img, &scratch.path, f.name())?;
    if vsize > ctx.target.size {
        return Err(VolumeError::ImageTooLarge {
            image: vsize,
            volume: ctx.target.size,
        }
        .into());
    }
    ctx.progress.set_convert_total(vsize);
    let volume = VolumeFile::create(ctx.target)?;
    volume.extend_to_size()?;
    qemu::convert_to_raw(qemu_img, &scratch.path, f.name(), volume.path())?;
    ctx.progress.set_converted(vsize);
    Ok(Prepared {
        volume,
        formats,
        virtual_size: vsize,
    })
}

//! A qcow2 reader that converts an image to the raw volume (what `qemu-img convert -O raw`
//! does for CDI), written for throughput and safety:
//!
//! - L2 tables are walked in guest order; data clusters that are contiguous both in the guest
//!   and in the file are coalesced into one large `pread` + sparse `pwrite` (up to
//!   [`MAX_RUN`]), so the image is read sequentially in big chunks;
//! - unallocated and zero clusters are never written (the volume file starts sparse);
//! - compressed clusters (deflate, or zstd with compression type 1) are inflated one by one;
//! - images that would make us read outside the volume's data are refused: a backing file,
//!   an external data file, encryption; so are extended L2 entries and unknown incompatible
//!   features, rather than be misread.
//!
//! The layout follows QEMU's `docs/interop/qcow2.txt`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

use crate::progress::Tracker;
use crate::volume::{human, VolumeError, VolumeFile};

/// Largest coalesced read/write.
pub const MAX_RUN: usize = 8 << 20;

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// Bits 9..=55 of an L1/L2 entry hold the (cluster-aligned) host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED: u64 = 1 << 62;
const ZERO_FLAG: u64 = 1;
/// QEMU refuses L1 tables larger than this (QCOW_MAX_L1_SIZE).
const MAX_L1_BYTES: u64 = 32 << 20;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

/// Errors of the qcow2 reader.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("not a qcow2 image (no QFI\\xfb magic)")]
    NotQcow2,
    #[error("qcow2 header is truncated ({len} bytes; at least {need} needed)")]
    ShortHeader { len: usize, need: usize },
    #[error("qcow2 version {0} is not supported (only 2 and 3)")]
    Version(u32),
    #[error("qcow2 image has a backing file {name:?}: images with a backing file are refused (the import would read a file outside the image); flatten it first with `qemu-img convert`")]
    BackingFile { name: String },
    #[error("qcow2 image uses an external data file: refused (the data would be read from outside the image); convert it first with `qemu-img convert`")]
    ExternalDataFile,
    #[error("qcow2 image is encrypted (method {0}): encrypted images cannot be imported")]
    Encrypted(u32),
    #[error("qcow2 image uses extended L2 entries (subclusters), which this importer does not read; convert it first with `qemu-img convert -o extended_l2=off`")]
    ExtendedL2,
    #[error("qcow2 image is marked corrupt: repair it with `qemu-img check -r all` first")]
    MarkedCorrupt,
    #[error("qcow2 image has unknown incompatible features {0:#x}: refused")]
    UnknownFeatures(u64),
    #[error("qcow2 compression type {0} is not supported")]
    CompressionType(u8),
    #[error("qcow2 image is invalid: {0}")]
    Invalid(String),
    #[error("qcow2 image is truncated: {what} at file offset {offset} (+{len} bytes) lies beyond the end of the file ({file_len} bytes)")]
    Truncated {
        what: &'static str,
        offset: u64,
        len: u64,
        file_len: u64,
    },
    #[error("qcow2 compressed cluster at file offset {offset} (guest offset {guest}) is corrupt: {source}")]
    BadCompressedCluster {
        offset: u64,
        guest: u64,
        source: io::Error,
    },
    #[error("cannot read the qcow2 image at offset {offset}: {source}")]
    Read { offset: u64, source: io::Error },
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("import cancelled")]
    Cancelled,
}

/// The qcow2 header fields the converter needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    /// Virtual size in bytes.
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub incompatible_features: u64,
    pub header_length: u32,
    /// 0 = deflate, 1 = zstd.
    pub compression_type: u8,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Parses and checks the header from the first bytes of the image (give at least a few KiB so
/// header extensions and the backing file name can be seen). Refuses what we will not read.
pub fn parse_header(head: &[u8]) -> Result<Header, Qcow2Error> {
    if !head.starts_with(QCOW2_MAGIC) {
        return Err(Qcow2Error::NotQcow2);
    }
    if head.len() < 72 {
        return Err(Qcow2Error::ShortHeader {
            len: head.len(),
            need: 72,
        });
    }
    let version = be32(head, 4);
    if version != 2 && version != 3 {
        return Err(Qcow2Error::Version(version));
    }
    let mut h = Header {
        version,
        backing_file_offset: be64(head, 8),
        backing_file_size: be32(head, 16),
        cluster_bits: be32(head, 20),
        size: be64(head, 24),
        l1_size: be32(head, 36),
        l1_table_offset: be64(head, 40),
        incompatible_features: 0,
        header_length: 72,
        compression_type: 0,
    };
    let crypt = be32(head, 32);
    if version == 3 {
        if head.len() < 104 {
            return Err(Qcow2Error::ShortHeader {
                len: head.len(),
                need: 104,
            });
        }
        h.incompatible_features = be64(head, 72);
        h.header_length = be32(head, 100);
        if h.header_length > 104 && head.len() > 104 {
            h.compression_type = head[104];
        }
    }
    if h.backing_file_offset != 0 {
        let start = h.backing_file_offset as usize;
        let end = start.saturating_add(h.backing_file_size as usize);
        let name = head
            .get(start..end)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| "<name beyond the header>".to_string());
        return Err(Qcow2Error::BackingFile { name });
    }
    if crypt != 0 {
        return Err(Qcow2Error::Encrypted(crypt));
    }
    let f = h.incompatible_features;
    if f & INCOMPAT_CORRUPT != 0 {
        return Err(Qcow2Error::MarkedCorrupt);
    }
    if f & INCOMPAT_DATA_FILE != 0 {
        return Err(Qcow2Error::ExternalDataFile);
    }
    if f & INCOMPAT_EXTL2 != 0 {
        return Err(Qcow2Error::ExtendedL2);
    }
    // Dirty only means the refcounts may be stale; we never read refcounts.
    let known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION;
    if f & !known & !INCOMPAT_EXTL2 != 0 {
        return Err(Qcow2Error::UnknownFeatures(f & !known));
    }
    if h.compression_type > 1 {
        return Err(Qcow2Error::CompressionType(h.compression_type));
    }
    if !(9..=21).contains(&h.cluster_bits) {
        return Err(Qcow2Error::Invalid(format!(
            "cluster_bits {} is outside 9..=21",
            h.cluster_bits
        )));
    }
    let l1_bytes = h.l1_size as u64 * 8;
    if l1_bytes > MAX_L1_BYTES {
        return Err(Qcow2Error::Invalid(format!(
            "L1 table of {} entries is larger than QEMU allows",
            h.l1_size
        )));
    }
    let per_l1 = h.cluster_size() * (h.cluster_size() / 8);
    let needed = h.size.div_ceil(per_l1);
    if (h.l1_size as u64) < needed {
        return Err(Qcow2Error::Invalid(format!(
            "L1 table has {} entries but {} are needed for {}",
            h.l1_size,
            needed,
            human(h.size)
        )));
    }
    if !h.l1_table_offset.is_multiple_of(h.cluster_size()) {
        return Err(Qcow2Error::Invalid(
            "L1 table offset is not cluster aligned".into(),
        ));
    }
    Ok(h)
}

/// A byte range of a file: the whole qcow2 file, or the qcow2 file inside an uncompressed tar
/// layer, read in place.
#[derive(Clone, Copy, Debug)]
pub struct FileSlice<'a> {
    pub file: &'a File,
    pub base: u64,
    pub len: u64,
}

impl<'a> FileSlice<'a> {
    pub fn whole(file: &'a File) -> io::Result<Self> {
        Ok(Self {
            file,
            base: 0,
            len: file.metadata()?.len(),
        })
    }

    fn read_exact_at(
        &self,
        buf: &mut [u8],
        offset: u64,
        what: &'static str,
    ) -> Result<(), Qcow2Error> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(Qcow2Error::Truncated {
                what,
                offset,
                len: buf.len() as u64,
                file_len: self.len,
            });
        }
        self.file
            .read_exact_at(buf, self.base + offset)
            .map_err(|source| Qcow2Error::Read { offset, source })
    }
}

/// A pending coalesced data run.
#[derive(Clone, Copy, Debug)]
struct Run {
    guest: u64,
    host: u64,
    len: u64,
}

/// Converts the qcow2 image in `src` into `vol` (which must be fresh, i.e. all zero).
/// Reports guest bytes converted to `progress`. Returns the virtual size.
pub(crate) fn convert(
    src: FileSlice<'_>,
    vol: &VolumeFile,
    progress: &Tracker,
    cancel: &AtomicBool,
) -> Result<u64, Qcow2Error> {
    let mut head = vec![0u8; (src.len.min(64 << 10)) as usize];
    src.read_exact_at(&mut head, 0, "header")?;
    let h = parse_header(&head)?;
    if h.size > vol.size() {
        return Err(VolumeError::ImageTooLarge {
            image: h.size,
            volume: vol.size(),
        }
        .into());
    }
    check_extensions(&src, &h)?;
    progress.set_convert_total(h.size);

    let cs = h.cluster_size();
    let l2_entries = cs / 8;
    let per_l1 = cs * l2_entries;
    let n_l1 = h.size.div_ceil(per_l1) as usize;
    let mut l1 = vec![0u8; n_l1 * 8];
    src.read_exact_at(&mut l1, h.l1_table_offset, "L1 table")?;

    // Data runs are copied by WORKERS threads (pread + zero check + sparse pwrite each), so
    // reading the image and writing the volume overlap, as qemu-img's parallel requests do.
    // The runs are disjoint, so their order does not matter.
    let vol: &VolumeFile = vol;
    let failed = AtomicBool::new(false);
    let first_err: Mutex<Option<Qcow2Error>> = Mutex::new(None);
    let (tx, rx) = mpsc::sync_channel::<Run>(WORKERS * 2);
    let rx = Mutex::new(rx);
    let walked = std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                let mut buf = vec![0u8; MAX_RUN];
                loop {
                    let next = match rx.lock() {
                        Ok(g) => g.recv(),
                        Err(_) => return,
                    };
                    let Ok(r) = next else { return };
                    if failed.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Err(e) = copy_run(&src, vol, &mut buf, r) {
                        failed.store(true, Ordering::Relaxed);
                        if let Ok(mut g) = first_err.lock() {
                            g.get_or_insert(e);
                        }
                    }
                }
            });
        }
        let r = walk(&src, &h, &l1, vol, progress, cancel, &failed, &tx);
        drop(tx);
        r
    });
    if let Some(e) = first_err.into_inner().ok().flatten() {
        return Err(e);
    }
    walked?;
    progress.set_converted(h.size);
    Ok(h.size)
}

/// Threads copying data runs.
const WORKERS: usize = 2;

/// Walks L1/L2 in guest order, sending coalesced data runs to the workers and converting
/// compressed clusters itself.
#[allow(clippy::too_many_arguments)]
fn walk(
    src: &FileSlice<'_>,
    h: &Header,
    l1: &[u8],
    vol: &VolumeFile,
    progress: &Tracker,
    cancel: &AtomicBool,
    failed: &AtomicBool,
    tx: &mpsc::SyncSender<Run>,
) -> Result<(), Qcow2Error> {
    let cs = h.cluster_size();
    let l2_entries = cs / 8;
    let per_l1 = cs * l2_entries;
    let mut l2 = vec![0u8; cs as usize];
    let mut cout = vec![0u8; cs as usize];
    let mut cbuf: Vec<u8> = Vec::new();
    let mut run: Option<Run> = None;
    let send = |run: &mut Option<Run>| -> Result<(), Qcow2Error> {
        if let Some(r) = run.take() {
            // A send error means every worker is gone, which only happens after a failure.
            let _ = tx.send(r);
        }
        Ok(())
    };
    for i in 0..l1.len() / 8 {
        if cancel.load(Ordering::Relaxed) {
            return Err(Qcow2Error::Cancelled);
        }
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let guest_base = i as u64 * per_l1;
        let l2_off = be64(l1, i * 8) & OFFSET_MASK;
        if l2_off == 0 {
            progress.set_converted((guest_base + per_l1).min(h.size));
            continue;
        }
        if !l2_off.is_multiple_of(cs) {
            return Err(Qcow2Error::Invalid(format!(
                "L2 table offset {l2_off:#x} is not cluster aligned"
            )));
        }
        src.read_exact_at(&mut l2, l2_off, "L2 table")?;
        for j in 0..l2_entries as usize {
            let guest = guest_base + j as u64 * cs;
            if guest >= h.size {
                break;
            }
            let len = cs.min(h.size - guest);
            let e = be64(&l2, j * 8);
            if e & COMPRESSED != 0 {
                send(&mut run)?;
                read_compressed(src, h, e, guest, &mut cbuf, &mut cout)?;
                vol.write_sparse(&cout[..len as usize], guest)?;
                continue;
            }
            let host = e & OFFSET_MASK;
            if (h.version >= 3 && e & ZERO_FLAG != 0) || host == 0 {
                // Zero or unallocated (no backing file): the fresh volume already reads zeros.
                continue;
            }
            if !host.is_multiple_of(cs) {
                return Err(Qcow2Error::Invalid(format!(
                    "data cluster offset {host:#x} (guest offset {guest:#x}) is not cluster aligned"
                )));
            }
            // Check bounds here too, so a truncated image fails before any worker reads.
            if host + len > src.len {
                return Err(Qcow2Error::Truncated {
                    what: "data cluster",
                    offset: host,
                    len,
                    file_len: src.len,
                });
            }
            match &mut run {
                Some(r)
                    if r.guest + r.len == guest
                        && r.host + r.len == host
                        && r.len + len <= MAX_RUN as u64 =>
                {
                    r.len += len
                }
                _ => {
                    send(&mut run)?;
                    run = Some(Run { guest, host, len });
                }
            }
        }
        progress.set_converted((guest_base + per_l1).min(h.size));
    }
    send(&mut run)
}

fn copy_run(
    src: &FileSlice<'_>,
    vol: &VolumeFile,
    buf: &mut [u8],
    r: Run,
) -> Result<(), Qcow2Error> {
    let b = &mut buf[..r.len as usize];
    src.read_exact_at(b, r.host, "data cluster")?;
    vol.write_sparse(b, r.guest)?;
    Ok(())
}

fn read_compressed(
    src: &FileSlice<'_>,
    h: &Header,
    e: u64,
    guest: u64,
    cbuf: &mut Vec<u8>,
    out: &mut [u8],
) -> Result<(), Qcow2Error> {
    // Compressed cluster descriptor: x = 62 - (cluster_bits - 8) low bits of host offset,
    // then (cluster_bits - 8) bits of "additional 512-byte sectors".
    let x = 62 - (h.cluster_bits - 8);
    let offset = e & ((1u64 << x) - 1);
    let sectors = ((e >> x) & ((1u64 << (h.cluster_bits - 8)) - 1)) + 1;
    let csize = sectors * 512 - (offset & 511);
    if offset >= src.len {
        return Err(Qcow2Error::Truncated {
            what: "compressed cluster",
            offset,
            len: csize,
            file_len: src.len,
        });
    }
    // The last compressed cluster's sector count may reach past EOF (QEMU reads zeros there).
    let avail = csize.min(src.len - offset) as usize;
    cbuf.resize(avail, 0);
    src.read_exact_at(cbuf, offset, "compressed cluster")?;
    let bad = |source| Qcow2Error::BadCompressedCluster {
        offset,
        guest,
        source,
    };
    if h.compression_type == 1 {
        let mut d = zstd::stream::read::Decoder::with_buffer(&cbuf[..]).map_err(bad)?;
        d.read_exact(out).map_err(bad)?;
    } else {
        let mut d = flate2::Decompress::new(false);
        let status = d
            .decompress(cbuf, out, flate2::FlushDecompress::Finish)
            .map_err(|e| bad(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        let produced = d.total_out() as usize;
        if produced != out.len() && status != flate2::Status::StreamEnd {
            return Err(bad(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("inflated to {produced} bytes, expected {}", out.len()),
            )));
        }
        if produced < out.len() {
            out[produced..].fill(0);
        }
    }
    Ok(())
}

/// Header extensions: refuse an external data file even if the feature bit lies.
fn check_extensions(src: &FileSlice<'_>, h: &Header) -> Result<(), Qcow2Error> {
    const EXT_DATA_FILE: u32 = 0x4441_5441;
    let mut off = h.header_length as u64;
    let end = h.cluster_size().min(src.len);
    let mut hdr = [0u8; 8];
    while off + 8 <= end {
        src.read_exact_at(&mut hdr, off, "header extension")?;
        let ty = be32(&hdr, 0);
        let len = be32(&hdr, 4) as u64;
        if ty == 0 {
            break;
        }
        if ty == EXT_DATA_FILE {
            return Err(Qcow2Error::ExternalDataFile);
        }
        off += 8 + len.div_ceil(8) * 8;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_v3() -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[..4].copy_from_slice(QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[36..40].copy_from_slice(&2u32.to_be_bytes());
        h[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        h
    }

    #[test]
    fn parses_v3_header() {
        let h = parse_header(&header_v3()).unwrap();
        assert_eq!(h.size, 1 << 30);
        assert_eq!(h.cluster_size(), 65536);
    }

    #[test]
    fn refuses_backing_file_and_features() {
        let mut b = header_v3();
        b[8..16].copy_from_slice(&512u64.to_be_bytes());
        b[16..20].copy_from_slice(&8u32.to_be_bytes());
        b[512..520].copy_from_slice(b"base.img");
        let e = parse_header(&b).unwrap_err().to_string();
        assert!(e.contains("backing file \"base.img\""), "{e}");

        let mut b = header_v3();
        b[72..80].copy_from_slice(&INCOMPAT_DATA_FILE.to_be_bytes());
        assert!(matches!(
            parse_header(&b),
            Err(Qcow2Error::ExternalDataFile)
        ));
        let mut b = header_v3();
        b[72..80].copy_from_slice(&INCOMPAT_EXTL2.to_be_bytes());
        assert!(matches!(parse_header(&b), Err(Qcow2Error::ExtendedL2)));
        let mut b = header_v3();
        b[32..36].copy_from_slice(&2u32.to_be_bytes());
        assert!(matches!(parse_header(&b), Err(Qcow2Error::Encrypted(2))));
    }
}

//! CDI's data-import core: fills a DataVolume's volume (a raw file) from an HTTP(S) URL, S3,
//! a container registry or OCI archive, an upload stream, another volume (clone), or blank.
//!
//! The controller calls [`import`] (or [`import_upload`] from the upload server) with a
//! [`Source`] (see [`spec::source_from_spec`] to build one from a `DataVolumeSpec`), a
//! [`Target`] (path + size) and a [`ProgressSink`]; on error, [`ImportError::is_transient`]
//! says whether to retry with backoff.
//!
//! Invariants:
//! - formats are detected by content only ([`format::detect`]); compression layers are
//!   decompressed as streams and detected again;
//! - images are never held in memory; zero blocks are never written (the volume stays sparse);
//! - the target appears only when complete and fsynced (`<target>.importing` is renamed over
//!   it); on any failure neither the target nor `.importing` nor the scratch file remains;
//! - an image larger than the volume is refused, and decompressed output is capped at the
//!   volume size (zip bombs);
//! - qcow2 is read by our own reader ([`qcow2`]); backing files, external data files and
//!   encryption are refused.

pub mod checksum;
mod clone;
pub mod format;
pub mod http;
mod pipeline;
pub mod progress;
pub mod qcow2;
pub mod qemu;
pub mod registry;
pub mod s3;
pub mod spec;
pub mod volume;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;

pub use checksum::{Checksum, ChecksumError};
pub use clone::data_extents;
pub use clone::CloneError;
pub use format::Format;
pub use http::{BasicAuth, HttpError, TlsOptions};
pub use pipeline::PipelineError;
pub use progress::{Progress, ProgressSink};
pub use qcow2::Qcow2Error;
pub use registry::{RegistryError, RegistrySource};
pub use s3::{S3Credentials, S3Error};
pub use volume::{Target, VolumeError, VolumeMode};

use crate::checksum::Hasher;
use crate::pipeline::{Ctx, Prepared, SourceReader};
use crate::progress::Tracker;

/// An HTTP(S) source (`spec.source.http`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpSource {
    pub url: String,
    /// Verified over the downloaded bytes (before decompression).
    pub checksum: Option<Checksum>,
    /// From `secretRef` (`accessKeyId` / `secretKey`).
    pub auth: Option<BasicAuth>,
    pub tls: TlsOptions,
    /// `extraHeaders` and the contents of `secretExtraHeaders`, each `"Name: value"`.
    pub extra_headers: Vec<String>,
}

/// An S3 source (`spec.source.s3`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Source {
    /// `s3://bucket/key` or `http(s)://endpoint/bucket/key`.
    pub url: String,
    /// Signs requests with SigV4 when present; anonymous GET otherwise.
    pub credentials: Option<S3Credentials>,
    /// Signing region; guessed from the host, else `us-east-1`.
    pub region: Option<String>,
    pub tls: TlsOptions,
}

/// Where the data comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Http(HttpSource),
    S3(S3Source),
    /// `docker://...` or `oci-archive://<path>` (`spec.source.registry`).
    Registry(RegistrySource),
    /// A local OCI image layout directory, optionally picking a `ref.name` from its index.
    OciLayout {
        path: PathBuf,
        ref_name: Option<String>,
    },
    /// An image file on the node (any format, detected by content); qcow2 is converted in
    /// place without a copy. For pre-downloaded images, tests and benchmarks.
    Local {
        path: PathBuf,
    },
    /// An empty (sparse, all-zero) volume.
    Blank,
    /// Host-assisted clone: the source volume's raw file.
    Clone {
        source_path: PathBuf,
    },
}

/// Settings of the importer (not of one source).
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Where to spool streams that need random access; default: next to the target.
    pub scratch_dir: Option<PathBuf>,
    /// `qemu-img` for vmdk/vdi/vhdx/vpc.
    pub qemu_img: PathBuf,
    pub connect_timeout: Duration,
    /// A transfer stalled this long fails (transient).
    pub read_timeout: Duration,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            scratch_dir: None,
            qemu_img: PathBuf::from("qemu-img"),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// What an import did.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportOutcome {
    /// Detected formats from the outside in, e.g. `[Gzip, Qcow2]`; empty for blank/clone.
    pub formats: Vec<Format>,
    /// Size of the image's data (qcow2 virtual size, raw length) before growing to the volume.
    pub virtual_size: u64,
    /// Bytes read from the source.
    pub transferred: u64,
    /// Checksum computed over the download, when one was requested.
    pub checksum: Option<Checksum>,
    pub elapsed: Duration,
}

/// Whether the controller should retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// May succeed later (network trouble, 5xx, timeouts): retry with backoff.
    Transient,
    /// Will fail again until the DataVolume (or the image) changes.
    Permanent,
}

/// Errors of an import.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Clone(#[from] CloneError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
    #[error("the import task failed: {0}")]
    Task(String),
}

impl ImportError {
    pub fn kind(&self) -> ErrorKind {
        if self.is_transient() {
            ErrorKind::Transient
        } else {
            ErrorKind::Permanent
        }
    }

    /// True when a retry may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ImportError::Http(e) => e.is_transient(),
            ImportError::Registry(e) => e.is_transient(),
            ImportError::Pipeline(PipelineError::Source(_)) => true,
            ImportError::Clone(CloneError::Source { .. }) => true,
            ImportError::Task(_) => true,
            _ => false,
        }
    }
}

/// Sets the cancel flag when the import future is dropped, so the blocking half stops and
/// cleans up.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct Job {
    target: Target,
    opts: ImportOptions,
    tracker: Tracker,
    cancel: Arc<AtomicBool>,
    started: Instant,
}

impl Job {
    fn new(target: &Target, opts: &ImportOptions, sink: ProgressSink) -> (Self, CancelOnDrop) {
        let cancel = Arc::new(AtomicBool::new(false));
        (
            Self {
                target: target.clone(),
                opts: opts.clone(),
                tracker: Tracker::new(sink),
                cancel: cancel.clone(),
                started: Instant::now(),
            },
            CancelOnDrop(cancel),
        )
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            target: &self.target,
            opts: &self.opts,
            progress: self.tracker.clone(),
            cancel: self.cancel.clone(),
        }
    }

    fn outcome(
        &self,
        formats: Vec<Format>,
        virtual_size: u64,
        checksum: Option<Checksum>,
    ) -> ImportOutcome {
        self.tracker.finish();
        ImportOutcome {
            formats,
            virtual_size,
            transferred: self.tracker.snapshot().transferred,
            checksum,
            elapsed: self.started.elapsed(),
        }
    }

    /// Commits a prepared volume (fsync + rename) on a blocking thread.
    async fn commit(
        self,
        p: Prepared,
        checksum: Option<Checksum>,
    ) -> Result<ImportOutcome, ImportError> {
        let Prepared {
            volume,
            formats,
            virtual_size,
        } = p;
        blocking(move || volume.commit().map_err(ImportError::from)).await?;
        Ok(self.outcome(formats, virtual_size, checksum))
    }

    /// Runs the stream pipeline over `reader` on a blocking thread, verifying `checksum` over
    /// everything read before the volume is committed.
    async fn stream(
        self,
        reader: impl std::io::Read + Send + 'static,
        total: Option<u64>,
        checksum: Option<Checksum>,
    ) -> Result<ImportOutcome, ImportError> {
        self.tracker.set_transfer_total(total);
        let hasher = Arc::new(Mutex::new(
            checksum.as_ref().map(|c| Hasher::new(c.algorithm)),
        ));
        let job = Arc::new(self);
        let j = job.clone();
        let (prepared, sum) = blocking(move || {
            let ctx = j.ctx();
            let mut src = SourceReader::new(
                reader,
                j.tracker.clone(),
                j.cancel.clone(),
                Some(hasher.clone()),
            );
            let p = pipeline::import_stream(&mut src, &ctx)?;
            src.drain()?;
            let sum = pipeline::take_sum(&hasher);
            if let (Some(want), Some(got)) = (&checksum, &sum) {
                checksum::verify(want, got)?;
            }
            Ok((p, sum))
        })
        .await?;
        let job = Arc::try_unwrap(job).map_err(|_| ImportError::Task("job still shared".into()))?;
        job.commit(prepared, sum).await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImportError> + Send + 'static,
) -> Result<T, ImportError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImportError::Task(e.to_string()))?
}

/// Imports `source` into `target`. Never leaves a partial target behind.
pub async fn import(
    source: &Source,
    target: &Target,
    opts: &ImportOptions,
    progress: ProgressSink,
) -> Result<ImportOutcome, ImportError> {
    let (job, _guard) = Job::new(target, opts, progress);
    let client_opts = http::ClientOptions {
        tls: TlsOptions::default(),
        connect_timeout: Some(opts.connect_timeout),
        read_timeout: Some(opts.read_timeout),
    };
    match source {
        Source::Blank => {
            let t = target.clone();
            blocking(move || volume::create_blank(&t).map_err(ImportError::from)).await?;
            Ok(job.outcome(Vec::new(), 0, None))
        }
        Source::Local { path } => {
            let path = path.clone();
            let job = Arc::new(job);
            let j = job.clone();
            let p = blocking(move || {
                let f = std::fs::File::open(&path).map_err(|source| {
                    ImportError::Clone(CloneError::Source {
                        path: path.clone(),
                        source,
                    })
                })?;
                let slice = qcow2::FileSlice::whole(&f).map_err(|source| {
                    ImportError::Clone(CloneError::Source {
                        path: path.clone(),
                        source,
                    })
                })?;
                pipeline::import_file_slice(slice, &j.ctx()).map_err(ImportError::from)
            })
            .await?;
            let job =
                Arc::try_unwrap(job).map_err(|_| ImportError::Task("job still shared".into()))?;
            job.commit(p, None).await
        }
        Source::Clone { source_path } => {
            let path = source_path.clone();
            let job = Arc::new(job);
            let j = job.clone();
            let vol =
                blocking(move || clone::clone_file(&path, &j.ctx()).map_err(ImportError::from))
                    .await?;
            let size = vol.written_end();
            blocking(move || vol.commit().map_err(ImportError::from)).await?;
            Ok(job.outcome(Vec::new(), size, None))
        }
        Source::Http(h) => {
            let client = http::client(&http::ClientOptions {
                tls: h.tls.clone(),
                ..client_opts
            })?;
            let headers = http::parse_headers(&h.extra_headers)?;
            let resp = http::get(&client, &h.url, headers, h.auth.as_ref()).await?;
            let total = resp.content_length();
            let body = tokio_util::io::SyncIoBridge::new(http::body_reader(resp));
            job.stream(body, total, h.checksum.clone()).await
        }
        Source::S3(s) => {
            let (url, region) = s3::resolve_url(&s.url, s.region.as_deref())?;
            let client = http::client(&http::ClientOptions {
                tls: s.tls.clone(),
                ..client_opts
            })?;
            let mut headers = reqwest::header::HeaderMap::new();
            if let Some(c) = &s.credentials {
                for (k, v) in
                    s3::signed_get_headers(&url, &region, c, time::OffsetDateTime::now_utc())
                {
                    let line = format!("{k}: {v}");
                    let parsed = http::parse_headers(&[line])?;
                    headers.extend(parsed);
                }
            }
            let resp = http::get(&client, url.as_str(), headers, None).await?;
            let total = resp.content_length();
            let body = tokio_util::io::SyncIoBridge::new(http::body_reader(resp));
            job.stream(body, total, None).await
        }
        Source::Registry(r) => {
            if let Some(path) = r.url.strip_prefix("oci-archive://") {
                let path = PathBuf::from(path);
                let r = r.clone();
                return job
                    .local_oci(move |ctx| {
                        registry::import_local_oci(&path, true, None, &r.os, &r.architecture, ctx)
                    })
                    .await;
            }
            let p = registry::import_registry(r, job.ctx(), client_opts).await?;
            job.commit(p, None).await
        }
        Source::OciLayout { path, ref_name } => {
            let path = path.clone();
            let ref_name = ref_name.clone();
            job.local_oci(move |ctx| {
                registry::import_local_oci(&path, false, ref_name.as_deref(), "linux", "amd64", ctx)
            })
            .await
        }
    }
}

impl Job {
    async fn local_oci(
        self,
        f: impl FnOnce(&Ctx<'_>) -> Result<Prepared, RegistryError> + Send + 'static,
    ) -> Result<ImportOutcome, ImportError> {
        let job = Arc::new(self);
        let j = job.clone();
        let p = blocking(move || f(&j.ctx()).map_err(ImportError::from)).await?;
        let job = Arc::try_unwrap(job).map_err(|_| ImportError::Task("job still shared".into()))?;
        job.commit(p, None).await
    }
}

/// The server side of CDI's upload (`POST /v1beta1/upload`): imports the request body, with
/// the same detection, decompression and conversion as [`import`]. `content_length` (when
/// the client sent one) drives the progress percentage.
///
/// From an axum handler: `import_upload(body.into_data_stream(), len, &target, &opts, sink)`.
pub async fn import_upload<S, E>(
    body: S,
    content_length: Option<u64>,
    target: &Target,
    opts: &ImportOptions,
    progress: ProgressSink,
) -> Result<ImportOutcome, ImportError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    use futures_util::TryStreamExt;
    let (job, _guard) = Job::new(target, opts, progress);
    let reader = tokio_util::io::StreamReader::new(Box::pin(body.map_err(std::io::Error::other)));
    let body = tokio_util::io::SyncIoBridge::new(reader);
    job.stream(body, content_length, None).await
}

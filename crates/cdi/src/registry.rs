//! containerDisk images as DataVolume sources: `docker://host[:port]/repo[:tag|@digest]` over
//! the OCI distribution API, `oci-archive://path` (a tar of an OCI layout) and a local OCI
//! layout directory. The disk is the first regular file under `/disk/`, searched from the top
//! layer down, and is streamed out of the layer (never extracted to disk first).
//!
//! Remote layers are verified against their digest while streaming; the volume is committed
//! only when the digest matches. Local uncompressed layers are read in place: a qcow2 inside
//! them is converted without a copy.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::checksum::{Algorithm, Checksum, Hasher};
use crate::http::{self, BasicAuth, ClientOptions, HttpError, TlsOptions};
use crate::pipeline::{self, Ctx, PipelineError, Prepared, SliceReader, SourceReader};
use crate::qcow2::FileSlice;

const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Errors of registry and OCI sources.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {url:?}: {reason}")]
    BadReference { url: String, reason: String },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("registry {registry} refused the credentials (or none were given): set secretRef to a secret with accessKeyId/secretKey")]
    Unauthorized { registry: String },
    #[error("registry token service {realm} failed: {reason}")]
    Token { realm: String, reason: String },
    #[error("image {image}: {reason}")]
    Manifest { image: String, reason: String },
    #[error("image {image} has no manifest for {os}/{arch} (it has: {available})")]
    NoPlatform {
        image: String,
        os: String,
        arch: String,
        available: String,
    },
    #[error("image {image} holds no disk: no regular file under /disk/ in any layer (a containerDisk puts its image at /disk/<name>)")]
    NoDisk { image: String },
    #[error(
        "blob {digest} does not match its digest (got {actual}): the registry sent corrupt data"
    )]
    DigestMismatch { digest: String, actual: String },
    #[error("layer {digest} is not a readable tar: {source}")]
    Layer { digest: String, source: io::Error },
    #[error("cannot read the OCI layout {path}: {source}")]
    Local { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("the import task failed: {0}")]
    Task(String),
}

impl RegistryError {
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Http(e) => e.is_transient(),
            RegistryError::Pipeline(PipelineError::Source(_)) => true,
            RegistryError::Token { .. } => true,
            _ => false,
        }
    }
}

/// A parsed `docker://` reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`.
    pub registry: String,
    pub repository: String,
    /// Tag or `sha256:` digest.
    pub reference: String,
}

impl ImageRef {
    /// Parses `docker://host[:port]/repo[:tag|@digest]` (the scheme is optional). A first path
    /// component without `.` or `:` (and not `localhost`) means Docker Hub, as docker does.
    pub fn parse(url: &str) -> Result<Self, RegistryError> {
        let bad = |reason: &str| RegistryError::BadReference {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url.strip_prefix("docker://").unwrap_or(url);
        if rest.is_empty() {
            return Err(bad("empty"));
        }
        let (name, reference) = if let Some((n, d)) = rest.split_once('@') {
            (n, d.to_string())
        } else {
            let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
            match rest[last_slash..].rfind(':') {
                Some(i) => (
                    &rest[..last_slash + i],
                    rest[last_slash + i + 1..].to_string(),
                ),
                None => (rest, "latest".to_string()),
            }
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, repo))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), repo.to_string())
            }
            Some(_) => ("registry-1.docker.io".to_string(), name.to_string()),
            None => (
                "registry-1.docker.io".to_string(),
                format!("library/{name}"),
            ),
        };
        let registry = if registry == "docker.io" {
            "registry-1.docker.io".to_string()
        } else {
            registry
        };
        if repository.is_empty() || reference.is_empty() {
            return Err(bad("missing repository or tag"));
        }
        Ok(Self {
            registry,
            repository,
            reference,
        })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.contains(':') {
            '@'
        } else {
            ':'
        };
        write!(
            f,
            "{}/{}{sep}{}",
            self.registry, self.repository, self.reference
        )
    }
}

/// A registry source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrySource {
    /// `docker://...`.
    pub url: String,
    pub auth: Option<BasicAuth>,
    pub tls: TlsOptions,
    /// Talk plain HTTP (the registry is in CDI's `insecureRegistries`).
    pub insecure_http: bool,
    /// Platform to pick from a manifest list / index (default linux/amd64).
    pub os: String,
    pub architecture: String,
}

impl RegistrySource {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            auth: None,
            tls: TlsOptions::default(),
            insecure_http: false,
            os: "linux".into(),
            architecture: "amd64".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Descriptor {
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<PlatformJson>,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

#[derive(Clone, Debug, Deserialize)]
struct PlatformJson {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
struct ManifestJson {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// Either the layers of an image manifest, or the entries of an index to choose from.
fn parse_manifest(image: &str, body: &[u8]) -> Result<ManifestJson, RegistryError> {
    serde_json::from_slice(body).map_err(|e| RegistryError::Manifest {
        image: image.to_string(),
        reason: format!("manifest is not valid JSON: {e}"),
    })
}

fn pick_platform(
    image: &str,
    list: &[Descriptor],
    os: &str,
    arch: &str,
) -> Result<Descriptor, RegistryError> {
    if let Some(d) = list.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == arch)
    }) {
        return Ok(d.clone());
    }
    // An index without platforms (e.g. an OCI layout's index.json) has one image.
    if list.len() == 1 && list[0].platform.is_none() {
        return Ok(list[0].clone());
    }
    Err(RegistryError::NoPlatform {
        image: image.to_string(),
        os: os.to_string(),
        arch: arch.to_string(),
        available: list
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| format!("{}/{}", p.os, p.architecture))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// An OCI distribution API client for one repository.
struct Client {
    http: reqwest::Client,
    base: String,
    image: ImageRef,
    auth: Option<BasicAuth>,
    token: Mutex<Option<String>>,
}

impl Client {
    async fn get(
        &self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = format!("{}/v2/{}/{path}", self.base, self.image.repository);
        let mut retried = false;
        loop {
            let mut headers = HeaderMap::new();
            if let Some(a) = accept {
                if let Ok(v) = HeaderValue::from_str(a) {
                    headers.insert(ACCEPT, v);
                }
            }
            let token = self.token.lock().ok().and_then(|g| g.clone());
            let mut req = self.http.get(&url).headers(headers);
            if let Some(t) = &token {
                req = req.header(AUTHORIZATION, format!("Bearer {t}"));
            } else if let Some(a) = &self.auth {
                req = req.basic_auth(&a.username, Some(&a.password));
            }
            let resp = req
                .send()
                .await
                .map_err(|e| HttpError::from_reqwest(&url, e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(http::check_status(&url, resp)?);
            }
            if retried {
                return Err(RegistryError::Unauthorized {
                    registry: self.image.registry.clone(),
                });
            }
            retried = true;
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            if let Some(params) = challenge.strip_prefix("Bearer ") {
                let token = self.fetch_token(params).await?;
                if let Ok(mut g) = self.token.lock() {
                    *g = Some(token);
                }
            } else if self.auth.is_none() {
                return Err(RegistryError::Unauthorized {
                    registry: self.image.registry.clone(),
                });
            }
        }
    }

    /// The bearer-token flow (`WWW-Authenticate: Bearer realm=...,service=...,scope=...`).
    async fn fetch_token(&self, params: &str) -> Result<String, RegistryError> {
        let p = parse_challenge(params);
        let realm = p.get("realm").cloned().unwrap_or_default();
        let mut url = url::Url::parse(&realm).map_err(|e| RegistryError::Token {
            realm: realm.clone(),
            reason: format!("bad realm URL: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = p.get("service") {
                q.append_pair("service", s);
            }
            let scope = p
                .get("scope")
                .cloned()
                .unwrap_or_else(|| format!("repository:{}:pull", self.image.repository));
            q.append_pair("scope", &scope);
        }
        let resp = http::get(
            &self.http,
            url.as_str(),
            HeaderMap::new(),
            self.auth.as_ref(),
        )
        .await
        .map_err(|e| match e {
            HttpError::Status { status, .. }
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN =>
            {
                RegistryError::Unauthorized {
                    registry: self.image.registry.clone(),
                }
            }
            e => RegistryError::Http(e),
        })?;
        #[derive(Deserialize)]
        struct Tok {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| HttpError::from_reqwest(&realm, e))?;
        let t: Tok = serde_json::from_slice(&body).map_err(|e| RegistryError::Token {
            realm: realm.clone(),
            reason: format!("bad token response: {e}"),
        })?;
        t.token.or(t.access_token).ok_or(RegistryError::Token {
            realm,
            reason: "no token in the response".into(),
        })
    }

    async fn manifest(&self, reference: &str) -> Result<ManifestJson, RegistryError> {
        let accept = [
            MT_OCI_MANIFEST,
            MT_DOCKER_MANIFEST,
            MT_OCI_INDEX,
            MT_DOCKER_LIST,
        ]
        .join(", ");
        let resp = self
            .get(&format!("manifests/{reference}"), Some(&accept))
            .await?;
        let url = resp.url().to_string();
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp
            .bytes()
            .await
            .map_err(|e| HttpError::from_reqwest(&url, e))?;
        if reference.starts_with("sha256:") {
            verify_digest(reference, &body)?;
        }
        let mut m = parse_manifest(&self.image.to_string(), &body)?;
        if m.media_type.is_empty() {
            m.media_type = ct;
        }
        Ok(m)
    }
}

fn verify_digest(digest: &str, body: &[u8]) -> Result<(), RegistryError> {
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(body);
    let actual = h.finish().to_string();
    if actual != digest {
        return Err(RegistryError::DigestMismatch {
            digest: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

fn parse_challenge(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, after) = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match v.find(',') {
                Some(end) => (&v[..end], &v[end..]),
                None => (v, ""),
            }
        };
        out.insert(k, val.to_string());
        rest = after.trim_start_matches(',').trim();
    }
    out
}

/// Imports from a `docker://` registry.
pub(crate) async fn import_registry(
    src: &RegistrySource,
    ctx: Ctx<'_>,
    client_opts: ClientOptions,
) -> Result<Prepared, RegistryError> {
    let image = ImageRef::parse(&src.url)?;
    let scheme = if src.insecure_http { "http" } else { "https" };
    let http = http::client(&ClientOptions {
        tls: src.tls.clone(),
        ..client_opts
    })?;
    let client = Client {
        http,
        base: format!("{scheme}://{}", image.registry),
        image: image.clone(),
        auth: src.auth.clone(),
        token: Mutex::new(None),
    };
    let name = image.to_string();
    let mut m = client.manifest(&image.reference).await?;
    if let Some(list) = &m.manifests {
        let d = pick_platform(&name, list, &src.os, &src.architecture)?;
        m = client.manifest(&d.digest).await?;
    }
    let layers = m.layers.clone().ok_or_else(|| RegistryError::Manifest {
        image: name.clone(),
        reason: format!("manifest ({}) lists no layers", m.media_type),
    })?;
    for layer in layers.iter().rev() {
        let resp = client.get(&format!("blobs/{}", layer.digest), None).await?;
        let total = resp.content_length().or(Some(layer.size));
        ctx.progress.set_transfer_total(total);
        let body = tokio_util::io::SyncIoBridge::new(http::body_reader(resp));
        let layer = layer.clone();
        let found = run_blocking(&ctx, move |ctx| scan_layer_stream(body, &layer, ctx)).await?;
        if let Some(p) = found {
            return Ok(p);
        }
    }
    Err(RegistryError::NoDisk { image: name })
}

/// Runs `f` on a blocking thread with a context it can own.
async fn run_blocking<T: Send + 'static>(
    ctx: &Ctx<'_>,
    f: impl FnOnce(&Ctx<'_>) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    let target = ctx.target.clone();
    let opts = ctx.opts.clone();
    let progress = ctx.progress.clone();
    let cancel = ctx.cancel.clone();
    tokio::task::spawn_blocking(move || {
        let ctx = Ctx {
            target: &target,
            opts: &opts,
            progress,
            cancel,
        };
        f(&ctx)
    })
    .await
    .map_err(|e| RegistryError::Task(e.to_string()))?
}

fn is_disk_entry(entry_path: &Path, ty: tar::EntryType) -> bool {
    if !(ty.is_file() || ty == tar::EntryType::Continuous) {
        return false;
    }
    let s = entry_path.to_string_lossy();
    let s = s.trim_start_matches("./").trim_start_matches('/');
    match s.strip_prefix("disk/") {
        Some(rest) => {
            !rest.is_empty()
                && !rest
                    .rsplit('/')
                    .next()
                    .is_some_and(|base| base.starts_with(".wh."))
        }
        None => false,
    }
}

/// Decompresses a layer by its magic (media types lie more often than magic does).
fn layer_reader<'a>(r: impl Read + 'a, digest: &str) -> Result<Box<dyn Read + 'a>, RegistryError> {
    let mut br = BufReader::with_capacity(256 << 10, r);
    let head = br
        .fill_buf()
        .map_err(|e| match pipeline::classify(e, None) {
            PipelineError::Source(source) => RegistryError::Pipeline(PipelineError::Source(source)),
            other => RegistryError::Pipeline(other),
        })?;
    let layer_err = |source| RegistryError::Layer {
        digest: digest.to_string(),
        source,
    };
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(br).map_err(layer_err)?)
    } else {
        Box::new(br)
    })
}

/// Streams one remote layer: finds the disk, imports it, then drains the blob and checks its
/// digest. `None` if this layer has no disk.
fn scan_layer_stream(
    body: impl Read,
    layer: &Descriptor,
    ctx: &Ctx<'_>,
) -> Result<Option<Prepared>, RegistryError> {
    let want = layer.digest.strip_prefix("sha256:").map(|_| ());
    let hasher: pipeline::SharedHasher =
        Arc::new(Mutex::new(want.map(|_| Hasher::new(Algorithm::Sha256))));
    let mut src = SourceReader::new(
        body,
        ctx.progress.clone(),
        ctx.cancel.clone(),
        Some(hasher.clone()),
    );
    let layer_err = |source| RegistryError::Layer {
        digest: layer.digest.clone(),
        source,
    };
    let mut prepared = None;
    {
        let dec = layer_reader(&mut src, &layer.digest)?;
        let mut archive = tar::Archive::new(dec);
        let entries = archive.entries().map_err(layer_err)?;
        for entry in entries {
            let mut entry = entry.map_err(|e| tar_error(e, &layer.digest))?;
            let path = entry.path().map_err(layer_err)?.into_owned();
            if is_disk_entry(&path, entry.header().entry_type()) {
                prepared = Some(pipeline::import_stream(&mut entry, ctx)?);
                break;
            }
        }
    }
    src.drain()?;
    if want.is_some() {
        if let Some(actual) = pipeline::take_sum(&hasher) {
            let expected = Checksum {
                algorithm: Algorithm::Sha256,
                hex: layer.digest.trim_start_matches("sha256:").to_string(),
            };
            if actual != expected {
                return Err(RegistryError::DigestMismatch {
                    digest: layer.digest.clone(),
                    actual: actual.to_string(),
                });
            }
        }
    }
    Ok(prepared)
}

fn tar_error(e: io::Error, digest: &str) -> RegistryError {
    match pipeline::classify(e, None) {
        PipelineError::Source(source) if source.get_ref().is_none() => RegistryError::Layer {
            digest: digest.to_string(),
            source,
        },
        other => RegistryError::Pipeline(other),
    }
}

/// Where local OCI blobs live: a layout directory, or a tar of one.
enum LocalStore {
    Dir(PathBuf),
    Archive {
        path: PathBuf,
        file: File,
        /// Path inside the tar → (data offset, size).
        index: HashMap<String, (u64, u64)>,
    },
}

impl LocalStore {
    fn open_archive(path: &Path) -> Result<Self, RegistryError> {
        let local = |source| RegistryError::Local {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(local)?;
        let mut index = HashMap::new();
        {
            let mut a = tar::Archive::new(&file);
            for e in a.entries_with_seek().map_err(local)? {
                let e = e.map_err(local)?;
                if !e.header().entry_type().is_file() {
                    continue;
                }
                let p = e.path().map_err(local)?;
                let p = p.to_string_lossy().trim_start_matches("./").to_string();
                index.insert(p, (e.raw_file_position(), e.size()));
            }
        }
        Ok(LocalStore::Archive {
            path: path.to_path_buf(),
            file,
            index,
        })
    }

    fn path(&self) -> &Path {
        match self {
            LocalStore::Dir(p) => p,
            LocalStore::Archive { path, .. } => path,
        }
    }

    /// Opens a file of the layout: (file, base offset, length).
    fn open(&self, rel: &str) -> Result<(File, u64, u64), RegistryError> {
        let local = |source| RegistryError::Local {
            path: self.path().join(rel),
            source,
        };
        match self {
            LocalStore::Dir(dir) => {
                let f = File::open(dir.join(rel)).map_err(local)?;
                let len = f.metadata().map_err(local)?.len();
                Ok((f, 0, len))
            }
            LocalStore::Archive { file, index, .. } => {
                let (off, len) = index.get(rel).copied().ok_or_else(|| {
                    local(io::Error::new(
                        io::ErrorKind::NotFound,
                        "not in the archive",
                    ))
                })?;
                Ok((file.try_clone().map_err(local)?, off, len))
            }
        }
    }

    fn read(&self, rel: &str) -> Result<Vec<u8>, RegistryError> {
        let (f, base, len) = self.open(rel)?;
        if len > 16 << 20 {
            return Err(RegistryError::Local {
                path: self.path().join(rel),
                source: io::Error::new(io::ErrorKind::InvalidData, "JSON document over 16 MiB"),
            });
        }
        let mut buf = vec![0u8; len as usize];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, base).map_err(|source| {
            RegistryError::Local {
                path: self.path().join(rel),
                source,
            }
        })?;
        Ok(buf)
    }

    fn blob_path(digest: &str) -> String {
        format!("blobs/{}", digest.replacen(':', "/", 1))
    }
}

/// A local OCI source: `oci-archive://<tar>` or a layout directory, with an optional ref name
/// (`org.opencontainers.image.ref.name`, e.g. `latest`).
pub(crate) fn import_local_oci(
    path: &Path,
    is_archive: bool,
    ref_name: Option<&str>,
    os: &str,
    arch: &str,
    ctx: &Ctx<'_>,
) -> Result<Prepared, RegistryError> {
    let store = if is_archive {
        LocalStore::open_archive(path)?
    } else {
        LocalStore::Dir(path.to_path_buf())
    };
    let name = path.display().to_string();
    let index = parse_manifest(&name, &store.read("index.json")?)?;
    let list = index.manifests.unwrap_or_default();
    let chosen = match ref_name {
        Some(r) => list
            .iter()
            .find(|d| d.ref_name().as_deref() == Some(r))
            .cloned()
            .ok_or_else(|| RegistryError::Manifest {
                image: name.clone(),
                reason: format!("no manifest named {r:?} in index.json"),
            })?,
        None => pick_platform(&name, &list, os, arch)?,
    };
    let mut m = parse_manifest(&name, &store.read(&LocalStore::blob_path(&chosen.digest))?)?;
    if let Some(list) = &m.manifests {
        let d = pick_platform(&name, list, os, arch)?;
        m = parse_manifest(&name, &store.read(&LocalStore::blob_path(&d.digest))?)?;
    }
    let layers = m.layers.unwrap_or_default();
    for layer in layers.iter().rev() {
        let (file, base, len) = store.open(&LocalStore::blob_path(&layer.digest))?;
        if let Some(p) = scan_local_layer(&file, base, len, layer, ctx)? {
            return Ok(p);
        }
    }
    Err(RegistryError::NoDisk { image: name })
}

impl Descriptor {
    fn ref_name(&self) -> Option<String> {
        self.annotations
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.ref.name").cloned())
    }
}

/// A seekable reader over a file slice (for `entries_with_seek`).
struct SeekSlice<'a> {
    inner: SliceReader<'a>,
}

impl Read for SeekSlice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Seek for SeekSlice<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let len = self.inner.slice.len as i128;
        let new = match pos {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::Current(d) => self.inner.pos as i128 + d as i128,
            SeekFrom::End(d) => len + d as i128,
        };
        if new < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.inner.pos = new as u64;
        Ok(self.inner.pos)
    }
}

fn scan_local_layer(
    file: &File,
    base: u64,
    len: u64,
    layer: &Descriptor,
    ctx: &Ctx<'_>,
) -> Result<Option<Prepared>, RegistryError> {
    let slice = FileSlice { file, base, len };
    let mut magic = [0u8; 4];
    let n = (len as usize).min(4);
    std::os::unix::fs::FileExt::read_exact_at(file, &mut magic[..n], base).map_err(|source| {
        RegistryError::Layer {
            digest: layer.digest.clone(),
            source,
        }
    })?;
    let compressed = magic.starts_with(&[0x1f, 0x8b]) || magic == [0x28, 0xb5, 0x2f, 0xfd];
    if compressed {
        ctx.progress.set_transfer_total(Some(len));
        return scan_layer_stream(SliceReader { slice, pos: 0 }, layer, ctx);
    }
    // Uncompressed tar: find the disk entry by seeking over headers, then read it in place.
    let layer_err = |source| RegistryError::Layer {
        digest: layer.digest.clone(),
        source,
    };
    let mut archive = tar::Archive::new(SeekSlice {
        inner: SliceReader { slice, pos: 0 },
    });
    let mut found = None;
    for entry in archive.entries_with_seek().map_err(layer_err)? {
        let entry = entry.map_err(layer_err)?;
        let path = entry.path().map_err(layer_err)?.into_owned();
        if is_disk_entry(&path, entry.header().entry_type()) {
            found = Some((entry.raw_file_position(), entry.size()));
            break;
        }
    }
    match found {
        Some((pos, size)) => {
            let disk = FileSlice {
                file,
                base: base + pos,
                len: size,
            };
            Ok(Some(pipeline::import_file_slice(disk, ctx)?))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = ImageRef::parse("docker://127.0.0.1:5000/kubevirt/demo:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "kubevirt/demo");
        assert_eq!(r.reference, "v1");
        let r = ImageRef::parse("docker://localhost:5000/demo@sha256:abc").unwrap();
        assert_eq!(r.reference, "sha256:abc");
        let r = ImageRef::parse("docker://fedora").unwrap();
        assert_eq!(r.registry, "registry-1.docker.io");
        assert_eq!(r.repository, "library/fedora");
        assert_eq!(r.reference, "latest");
        let r = ImageRef::parse("docker://quay.io/containerdisks/fedora:40").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.reference.as_str()),
            ("quay.io", "40")
        );
    }

    #[test]
    fn challenge() {
        let p = parse_challenge(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
    }

    #[test]
    fn disk_entries() {
        let f = tar::EntryType::Regular;
        assert!(is_disk_entry(Path::new("disk/disk.qcow2"), f));
        assert!(is_disk_entry(Path::new("./disk/x.img"), f));
        assert!(!is_disk_entry(
            Path::new("disk/"),
            tar::EntryType::Directory
        ));
        assert!(!is_disk_entry(Path::new("etc/passwd"), f));
        assert!(!is_disk_entry(Path::new("disk/.wh.x"), f));
    }
}

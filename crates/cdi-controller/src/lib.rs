//! CDI's control plane for the single node, driving the import engine (`kubevirt_cdi`):
//!
//! - [`provisioner`]: a local-path provisioner. A Pending PersistentVolumeClaim gets a volume
//!   under `DATA_DIR/volumes/` (a directory that will hold `disk.img` for `volumeMode:
//!   Filesystem`, a sparse raw file for `Block`) and a PersistentVolume bound to it; when the
//!   claim goes away, the PersistentVolume and its data go too (`Delete` reclaim policy).
//! - [`binder`]: kube's PersistentVolume binder for volumes made by hand: a Pending claim is
//!   bound to the volume meant for it or the smallest that fits before one is provisioned.
//! - [`datavolume`]: the DataVolume controller. It creates the DataVolume's PVC, runs the
//!   import (http, s3, registry, clone, blank) as a tokio task in this process, and reports
//!   CDI's phases, conditions, `progress` and `restartCount`. Upload DataVolumes wait in
//!   `UploadReady` for [`upload`].
//! - [`snapshotter`]: the local-path driver's CSI snapshotter: VolumeSnapshots of our claims
//!   get VolumeSnapshotContents whose data is a copy under `DATA_DIR/snapshots/`; the
//!   provisioner restores claims whose `dataSource` is a VolumeSnapshot from it.
//! - [`upload`]: `upload.cdi.kubevirt.io` `UploadTokenRequest`s and the upload proxy
//!   (`/v1beta1/upload[-async|-form|-form-async]`) the API server routes to us.
//!
//! - [`export`]: KubeVirt's VirtualMachineExport controller and the export server (volumes as
//!   raw and gzip, the VM's manifests) the API server routes `/api/export.kubevirt.io/...` to.
//!
//! Everything is level-based: a restarted server finds DataVolumes whose import is unfinished
//! (phase `ImportScheduled`/`ImportInProgress`/`CloneInProgress`) and runs the import again;
//! the engine only ever hands over a complete volume (`.importing`, fsync, rename).

pub mod binder;
pub mod datavolume;
pub mod export;
pub mod metrics;
pub mod provisioner;
pub mod snapshotter;
pub mod storageprofile;
pub mod upload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::Api;
use kube::runtime::events::{EventType, Recorder};
use kube::{Client, Resource};
use kubevirt_api::CDIConfig;
use kubevirt_runtime::backoff::Backoff;
use kubevirt_runtime::{events, status};
use serde_json::json;

/// CDI's default filesystem overhead (`CDIConfig` `filesystemOverhead.global`).
pub const DEFAULT_FILESYSTEM_OVERHEAD: f64 = 0.055;
/// The StorageClass name our volumes carry.
pub const STORAGE_CLASS: &str = kubevirt_api::core_kinds::LOCAL_PATH_CLASS;
/// Our provisioner's name (`pv.kubernetes.io/provisioned-by`).
pub const PROVISIONER_NAME: &str = kubevirt_api::core_kinds::LOCAL_PATH_PROVISIONER;
/// The name of CDI's one `CDIConfig`.
pub const CDI_CONFIG_NAME: &str = "config";

/// What the CDI controllers need to know about the node.
#[derive(Clone, Debug)]
pub struct Config {
    /// Volumes are placed on (and PersistentVolumes pinned to) this node.
    pub node_name: String,
    /// Volumes live under `DATA_DIR/volumes/`.
    pub data_dir: PathBuf,
    /// Used when `CDIConfig` does not set `filesystemOverhead.global`.
    pub filesystem_overhead: f64,
    pub import: kubevirt_cdi::ImportOptions,
    /// Retry delays of transient import errors (CDI's importer pods restart with the
    /// kubelet's crash-loop backoff: 10 s doubling up to 5 min).
    pub retry: Backoff,
    /// How often `status.progress` is written at most.
    pub progress_interval: Duration,
    /// How long an upload token is valid (CDI: 5 minutes).
    pub upload_token_ttl: Duration,
    /// Where a PersistentVolume's `spec.local.path` may point (the node agent's policy: the
    /// provisioner's volumes and `--host-path-root`s). `None` takes paths as they are (tests
    /// of the controllers alone).
    pub host_paths: Option<kubevirt_runtime::host_path::HostPathPolicy>,
}

impl Config {
    pub fn single_node(node_name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Config {
            node_name: node_name.into(),
            data_dir: data_dir.into(),
            filesystem_overhead: DEFAULT_FILESYSTEM_OVERHEAD,
            import: kubevirt_cdi::ImportOptions::default(),
            retry: Backoff::exponential(Duration::from_secs(10), Duration::from_secs(300)),
            progress_interval: Duration::from_secs(1),
            upload_token_ttl: Duration::from_secs(300),
            host_paths: None,
        }
    }

    pub fn volumes_dir(&self) -> PathBuf {
        self.data_dir.join("volumes")
    }

    /// Snapshots of volumes live under `DATA_DIR/snapshots/` (see [`snapshotter::snapshot_data`]).
    pub fn snapshots_dir(&self) -> PathBuf {
        self.data_dir.join("snapshots")
    }
}

/// Errors of one reconcile (retried by the controllers' error policies).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the object has no {0}")]
    MissingField(&'static str),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Spec(String),
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// State shared by the controllers, the import tasks and the upload handlers.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub(crate) recorder: Recorder,
    /// Running import tasks by DataVolume uid.
    pub(crate) tasks: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    pub(crate) uploads: upload::Uploads,
}

impl Context {
    pub fn new(client: Client, config: Config) -> Arc<Self> {
        let recorder = events::recorder(client.clone(), "cdi-controller");
        Arc::new(Context {
            client,
            config,
            recorder,
            tasks: Mutex::new(HashMap::new()),
            uploads: upload::Uploads::default(),
        })
    }

    /// Stops every running import, as a server shutdown (or crash) would. The controllers
    /// of a new [`Context`] resume them from the DataVolumes' phases.
    pub fn abort_imports(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for (_, t) in tasks.drain() {
                t.abort();
            }
        }
    }

    /// Publishes an event; failing to record is logged, never fatal.
    pub(crate) async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        events::publish_event(&self.recorder, &obj.object_ref(&()), type_, reason, note).await;
    }

    /// The cluster's `CDIConfig` (`None` when it does not exist or cannot be read).
    pub(crate) async fn cdi_config(&self) -> Option<CDIConfig> {
        let api: Api<CDIConfig> = Api::all(self.client.clone());
        api.get_opt(CDI_CONFIG_NAME).await.ok().flatten()
    }

    /// `filesystemOverhead.global` of `CDIConfig`, else the configured default.
    pub(crate) async fn filesystem_overhead(&self) -> f64 {
        self.cdi_config()
            .await
            .and_then(|c| c.spec.filesystem_overhead)
            .and_then(|o| o.global)
            .and_then(|g| g.parse::<f64>().ok())
            .filter(|f| (0.0..1.0).contains(f))
            .unwrap_or(self.config.filesystem_overhead)
    }
}

/// Creates (or updates) `CDIConfig` `config` with `status.uploadProxyURL` = `upload_proxy_url`
/// (or the spec's `uploadProxyURLOverride`) and the filesystem overhead in effect.
pub async fn ensure_cdi_config(client: &Client, upload_proxy_url: &str) -> Result<(), Error> {
    let api: Api<CDIConfig> = Api::all(client.clone());
    let existing = api.get_opt(CDI_CONFIG_NAME).await?;
    if existing.is_none() {
        let obj = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "CDIConfig",
            "metadata": {"name": CDI_CONFIG_NAME}, "spec": {}});
        match api
            .create(&Default::default(), &serde_json::from_value(obj)?)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let spec = existing.map(|c| c.spec).unwrap_or_default();
    let url = spec
        .upload_proxy_url_override
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| upload_proxy_url.to_string());
    let overhead = spec
        .filesystem_overhead
        .and_then(|o| o.global)
        .unwrap_or_else(|| DEFAULT_FILESYSTEM_OVERHEAD.to_string());
    status::write_status(
        &api,
        CDI_CONFIG_NAME,
        json!({
            "uploadProxyURL": url,
            "filesystemOverhead": {"global": overhead},
            "preallocation": spec.preallocation.unwrap_or(false),
        }),
    )
    .await?;
    Ok(())
}

/// Runs the provisioner and the DataVolume controller until the future is dropped. Serve
/// uploads with [`upload::TokenHandler`] and [`upload::UploadProxy`] over the same `ctx`.
pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    let prov = provisioner::run(ctx.clone());
    let dvs = datavolume::run(ctx.clone());
    let profiles = storageprofile::run(ctx.clone());
    let snapshots = snapshotter::run(ctx.clone());
    metrics::cdi().set_ready(true);
    futures::join!(prov, dvs, profiles, snapshots);
    Ok(())
}

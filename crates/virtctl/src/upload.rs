//! `virtctl image-upload dv|pvc NAME`: CDI's upload protocol (kubevirt/kubevirt
//! pkg/virtctl/imageupload).
//!
//! 1. Create the DataVolume (`spec.source.upload: {}`) or the PVC (annotated
//!    `cdi.kubevirt.io/storage.upload.target`), unless `--no-create`.
//! 2. Wait until the DataVolume is `UploadReady` (for a PVC: its `storage.pod.ready` annotation).
//! 3. Ask `upload.cdi.kubevirt.io/v1beta1` `uploadtokenrequests` for a token for the PVC.
//! 4. `POST` the file, streamed, to the upload proxy's `/v1beta1/upload` (`upload-async` with
//!    `--async`) with `Authorization: Bearer TOKEN`. The proxy is `--uploadproxy-url`, else
//!    `status.uploadProxyURL` of `cdiconfigs/config`. Its certificate is checked against the
//!    kubeconfig's CA (the single-node server serves the proxy with the API certificate), or
//!    not at all with `--insecure`.
//! 5. Wait until CDI reports the processing done (the PVC's `storage.pod.phase` annotation is
//!    `Succeeded`, or the DataVolume's phase is `Succeeded`).

use crate::client::{connect, Conn, Error};
use crate::params::check_quantity;
use crate::GlobalArgs;
use futures::TryStreamExt;
use http::Method;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::Duration;

const UPLOAD_TARGET: &str = "cdi.kubevirt.io/storage.upload.target";
const POD_READY: &str = "cdi.kubevirt.io/storage.pod.ready";
const POD_PHASE: &str = "cdi.kubevirt.io/storage.pod.phase";
const CONTENT_TYPE: &str = "cdi.kubevirt.io/storage.contentType";
const FORCE_BIND: &str = "cdi.kubevirt.io/storage.bind.immediate.requested";
const POLL: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug, Clone)]
#[command(after_long_help = "\
Examples:
  # Upload a local disk image to a newly created DataVolume:
  virtctl image-upload dv fedora-dv --size=10Gi --image-path=/images/fedora30.qcow2

  # Upload a local disk image to an existing DataVolume
  virtctl image-upload dv fedora-dv --no-create --image-path=/images/fedora30.qcow2

  # Upload a local disk image to a newly created PersistentVolumeClaim
  virtctl image-upload pvc fedora-pvc --size=10Gi --image-path=/images/fedora30.qcow2")]
pub struct ImageUploadArgs {
    /// `dv` (DataVolume) or `pvc` (PersistentVolumeClaim).
    #[arg(value_name = "dv|pvc")]
    pub kind: String,
    /// The destination DataVolume/PVC name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Path to the local VM image.
    #[arg(long, value_name = "FILE")]
    pub image_path: Option<PathBuf>,
    /// The size of the DataVolume/PVC to create (ex. 10Gi, 500Mi).
    #[arg(long)]
    pub size: Option<String>,
    /// The URL of the cdi-upload proxy service (default: status.uploadProxyURL of the
    /// CDIConfig).
    #[arg(long, value_name = "URL")]
    pub uploadproxy_url: Option<String>,
    /// Allow insecure server connections when using HTTPS.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub insecure: bool,
    /// Don't attempt to create a new DataVolume/PVC.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub no_create: bool,
    /// The storage class for the PVC.
    #[arg(long)]
    pub storage_class: Option<String>,
    /// The access mode for the PVC (e.g. ReadWriteOnce).
    #[arg(long)]
    pub access_mode: Option<String>,
    /// Specify the VolumeMode (block/filesystem) used to create the PVC.
    #[arg(long)]
    pub volume_mode: Option<String>,
    /// Force bind the PVC, ignoring the WaitForFirstConsumer logic.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub force_bind: bool,
    /// Use the asynchronous upload endpoint (`/v1beta1/upload-async`).
    #[arg(long = "async", num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub async_upload: bool,
    /// Seconds to wait for the upload to become ready.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub wait_secs: u64,
    /// When the upload server returns a transient error, retry this number of times.
    #[arg(long, default_value_t = 5)]
    pub retry: u32,
}

/// Whether the target is a DataVolume (`true`) or a bare PVC.
pub fn target_is_dv(kind: &str) -> Result<bool, Error> {
    match kind.to_ascii_lowercase().as_str() {
        "dv" => Ok(true),
        "pvc" => Ok(false),
        other => Err(Error::Usage(format!(
            "invalid resource type {other}: use dv (DataVolume) or pvc (PersistentVolumeClaim)"
        ))),
    }
}

/// Checks the flags that need no server, as KubeVirt does before anything else.
pub fn validate(a: &ImageUploadArgs) -> Result<(), Error> {
    target_is_dv(&a.kind)?;
    if a.image_path.is_none() {
        return Err(Error::Usage(
            "either image-path or archive-path must be provided (--image-path=FILE)".into(),
        ));
    }
    if let Some(m) = &a.volume_mode {
        if m != "block" && m != "filesystem" {
            return Err(Error::Usage(format!(
                "Invalid volume mode '{m}'. Valid values are 'block' and 'filesystem'."
            )));
        }
    }
    if a.access_mode.as_deref() == Some("ReadOnlyMany") {
        return Err(Error::Usage("cannot upload to a readonly volume, use either ReadWriteOnce or ReadWriteMany if supported".into()));
    }
    if let Some(s) = &a.size {
        check_quantity(s)
            .map_err(|m| Error::Usage(format!("validation failed for size={s}: {m}")))?;
    }
    Ok(())
}

/// The DataVolume KubeVirt's virtctl creates for an upload.
pub fn data_volume(a: &ImageUploadArgs, namespace: &str, size: &str) -> Value {
    let mut meta = Map::new();
    meta.insert("name".into(), json!(a.name));
    meta.insert("namespace".into(), json!(namespace));
    if a.force_bind {
        meta.insert("annotations".into(), json!({ FORCE_BIND: "" }));
    }
    let mut storage = Map::new();
    storage.insert(
        "resources".into(),
        json!({ "requests": { "storage": size } }),
    );
    if let Some(sc) = &a.storage_class {
        storage.insert("storageClassName".into(), json!(sc));
    }
    if let Some(m) = &a.access_mode {
        storage.insert("accessModes".into(), json!([m]));
    }
    match a.volume_mode.as_deref() {
        Some("block") => {
            storage.insert("volumeMode".into(), json!("Block"));
        }
        Some("filesystem") => {
            storage.insert("volumeMode".into(), json!("Filesystem"));
        }
        _ => {}
    }
    json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": Value::Object(meta),
        "spec": {
            "contentType": "kubevirt",
            "source": { "upload": {} },
            "storage": Value::Object(storage),
        },
    })
}

/// The PVC KubeVirt's virtctl creates for `image-upload pvc`.
pub fn upload_pvc(a: &ImageUploadArgs, namespace: &str, size: &str) -> Value {
    let mut ann = Map::new();
    ann.insert(UPLOAD_TARGET.into(), json!(""));
    ann.insert(CONTENT_TYPE.into(), json!("kubevirt"));
    if a.force_bind {
        ann.insert(FORCE_BIND.into(), json!(""));
    }
    let mut spec = Map::new();
    spec.insert(
        "accessModes".into(),
        json!([a.access_mode.as_deref().unwrap_or("ReadWriteOnce")]),
    );
    spec.insert(
        "resources".into(),
        json!({ "requests": { "storage": size } }),
    );
    if let Some(sc) = &a.storage_class {
        spec.insert("storageClassName".into(), json!(sc));
    }
    match a.volume_mode.as_deref() {
        Some("block") => {
            spec.insert("volumeMode".into(), json!("Block"));
        }
        Some("filesystem") => {
            spec.insert("volumeMode".into(), json!("Filesystem"));
        }
        _ => {}
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": a.name, "namespace": namespace, "annotations": Value::Object(ann) },
        "spec": Value::Object(spec),
    })
}

/// The upload endpoint under the proxy URL (a URL without a scheme is https).
pub fn upload_url(proxy: &str, async_upload: bool) -> String {
    let base = if proxy.contains("://") {
        proxy.to_string()
    } else {
        format!("https://{proxy}")
    };
    let path = if async_upload {
        "/v1beta1/upload-async"
    } else {
        "/v1beta1/upload"
    };
    if base.contains(path) {
        base
    } else {
        format!("{}{path}", base.trim_end_matches('/'))
    }
}

fn annotation<'v>(obj: &'v Value, key: &str) -> Option<&'v str> {
    obj["metadata"]["annotations"][key].as_str()
}

fn pvc_path(ns: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}")
}

fn dv_path(ns: &str, name: &str) -> String {
    format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/datavolumes/{name}")
}

async fn get_opt(c: &Conn, path: &str) -> crate::Result<Option<Value>> {
    match c.get(path).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.api_code() == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn run(g: &GlobalArgs, a: ImageUploadArgs) -> crate::Result<i32> {
    validate(&a)?;
    let is_dv = target_is_dv(&a.kind)?;
    let image = a.image_path.clone().unwrap_or_default();
    let file_len = tokio::fs::metadata(&image)
        .await
        .map_err(|e| Error::io(format!("failed to open image file {}", image.display()), e))?
        .len();
    let c = connect(g, false).await?;
    let ns = c.namespace.clone();

    // 1. The upload target.
    match get_opt(&c, &pvc_path(&ns, &a.name)).await? {
        Some(pvc) => {
            if !a.no_create && a.size.is_none() {
                return Err(Error::Usage(
                    "PVC creation requires specifying a size (--size), or use --no-create to upload to the existing one".into(),
                ));
            }
            if is_dv && get_opt(&c, &dv_path(&ns, &a.name)).await?.is_none() {
                return Err(Error::Failed(format!(
                    "no dataVolume is associated with the existing PVC {ns}/{}",
                    a.name
                )));
            }
            if annotation(&pvc, POD_PHASE) == Some("Succeeded") {
                return Err(Error::Failed(format!(
                    "PVC {} already successfully imported/cloned/updated",
                    a.name
                )));
            }
            if !a.no_create && annotation(&pvc, UPLOAD_TARGET).is_none() {
                return Err(Error::Failed(format!(
                    "PVC {} not available for upload",
                    a.name
                )));
            }
            println!("Using existing PVC {ns}/{}", a.name);
        }
        None if a.no_create => {
            // The DataVolume may exist before its PVC does.
            if !(is_dv && get_opt(&c, &dv_path(&ns, &a.name)).await?.is_some()) {
                println!("PVC {ns}/{} not found", a.name);
                return Err(Error::Failed(format!(
                    "persistentvolumeclaims \"{}\" not found (--no-create uploads to an existing {})",
                    a.name,
                    if is_dv { "DataVolume" } else { "PVC" }
                )));
            }
            println!("Using existing DataVolume {ns}/{}", a.name);
        }
        None => {
            let size = a.size.as_deref().ok_or_else(|| {
                Error::Usage("when creating a resource, the size must be specified (--size, e.g. --size=10Gi)".into())
            })?;
            if is_dv {
                let dv = data_volume(&a, &ns, size);
                let path = format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/datavolumes");
                c.json(Method::POST, &path, Some(&dv)).await?;
                println!("DataVolume {ns}/{} created", a.name);
            } else {
                let pvc = upload_pvc(&a, &ns, size);
                let path = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims");
                c.json(Method::POST, &path, Some(&pvc)).await?;
                println!("PersistentVolumeClaim {ns}/{} created", a.name);
            }
        }
    }

    // 2. Ready for the upload.
    wait_upload_ready(&c, &a, is_dv).await?;

    // 3. The proxy and the token.
    let proxy = match &a.uploadproxy_url {
        Some(u) if !u.is_empty() => u.clone(),
        _ => {
            let cfg = get_opt(&c, "/apis/cdi.kubevirt.io/v1beta1/cdiconfigs/config").await?;
            cfg.as_ref()
                .and_then(|v| v["status"]["uploadProxyURL"].as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::Failed(
                        "uploadproxy URL not found: the CDIConfig has no status.uploadProxyURL; pass --uploadproxy-url"
                            .into(),
                    )
                })?
        }
    };
    let url = upload_url(&proxy, a.async_upload);
    println!(
        "Uploading data to {}",
        url.split("/v1beta1/").next().unwrap_or(&url)
    );
    let token_req = json!({
        "apiVersion": "upload.cdi.kubevirt.io/v1beta1",
        "kind": "UploadTokenRequest",
        "metadata": { "name": "token-for-virtctl", "namespace": ns },
        "spec": { "pvcName": a.name },
    });
    let token_path =
        format!("/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests");
    let answer = c.json(Method::POST, &token_path, Some(&token_req)).await?;
    let token = answer["status"]["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Failed("the UploadTokenRequest answer has no status.token".into()))?
        .to_string();

    // 4. The data.
    send_file(&c, &a, &url, &token, &image, file_len).await?;

    // 5. Processing.
    println!("Uploading data completed successfully, waiting for processing to complete, you can hit ctrl-c without interrupting the progress");
    wait_processing(&c, &a, is_dv).await?;
    println!("Uploading {} completed successfully", image.display());
    Ok(0)
}

async fn wait_upload_ready(c: &Conn, a: &ImageUploadArgs, is_dv: bool) -> crate::Result<()> {
    let ns = &c.namespace;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.wait_secs);
    let mut logged = false;
    let mut last = String::new();
    loop {
        let ready = if is_dv {
            match get_opt(c, &dv_path(ns, &a.name)).await? {
                None => {
                    last = "not found".into();
                    false
                }
                Some(dv) => {
                    let phase = dv["status"]["phase"].as_str().unwrap_or("").to_string();
                    if (phase == "WaitForFirstConsumer" || phase == "PendingPopulation")
                        && !a.force_bind
                    {
                        return Err(Error::Failed(format!("cannot upload to DataVolume in {phase} phase, make sure the PVC is Bound, or use force-bind flag")));
                    }
                    if phase == "Failed" {
                        return Err(Error::Failed(format!(
                            "DataVolume {ns}/{} failed: {}",
                            a.name,
                            failure_message(&dv)
                        )));
                    }
                    last = if phase.is_empty() {
                        "no phase yet".into()
                    } else {
                        format!("phase {phase}")
                    };
                    phase == "UploadReady"
                }
            }
        } else {
            match get_opt(c, &pvc_path(ns, &a.name)).await? {
                None => false,
                Some(pvc) => annotation(&pvc, POD_READY) == Some("true"),
            }
        };
        if ready {
            if logged {
                println!("Pod now ready");
            }
            return Ok(());
        }
        if !logged {
            println!("Waiting for PVC {} upload pod to be ready...", a.name);
            logged = true;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Failed(format!(
                "timed out after {}s waiting for {} {ns}/{} to be ready for upload ({last}); see --wait-secs",
                a.wait_secs,
                if is_dv { "DataVolume" } else { "PVC" },
                a.name
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn failure_message(dv: &Value) -> String {
    dv["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["message"].as_str())
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

async fn wait_processing(c: &Conn, a: &ImageUploadArgs, is_dv: bool) -> crate::Result<()> {
    let ns = &c.namespace;
    loop {
        let pvc = get_opt(c, &pvc_path(ns, &a.name)).await?;
        if pvc.as_ref().and_then(|p| annotation(p, POD_PHASE)) == Some("Succeeded") {
            break;
        }
        if is_dv {
            if let Some(dv) = get_opt(c, &dv_path(ns, &a.name)).await? {
                match dv["status"]["phase"].as_str() {
                    Some("Succeeded") => break,
                    Some("Failed") => {
                        return Err(Error::Failed(format!(
                            "DataVolume {ns}/{} failed: {}",
                            a.name,
                            failure_message(&dv)
                        )))
                    }
                    _ => {}
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    println!("Processing completed successfully");
    Ok(())
}

/// An HTTP client for the upload proxy: the kubeconfig's CA (and client certificate), or no
/// verification at all with `--insecure`.
fn proxy_client(c: &Conn, insecure: bool) -> crate::Result<reqwest::Client> {
    tls_client(c, insecure)
}

/// An HTTPS client with the kubeconfig's TLS settings (its CA, its client certificate), for
/// servers that share the API server's certificate (the upload proxy, the export links).
pub(crate) fn tls_client(c: &Conn, insecure: bool) -> crate::Result<reqwest::Client> {
    use kube::client::ConfigExt;
    let mut config = c.config.clone();
    config.accept_invalid_certs = insecure;
    let tls = config
        .rustls_client_config()
        .map_err(|e| Error::Config(format!("TLS settings of the kubeconfig: {e}")))?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|e| Error::Failed(format!("cannot build the upload client: {e}")))
}

async fn send_file(
    c: &Conn,
    a: &ImageUploadArgs,
    url: &str,
    token: &str,
    image: &std::path::Path,
    len: u64,
) -> crate::Result<()> {
    let client = proxy_client(c, a.insecure)?;
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stdout(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bytes} / {total_bytes} [{wide_bar}] {percent}% {binary_bytes_per_sec}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let attempts = a.retry.max(1);
    let mut last_err = None;
    for attempt in 1..=attempts {
        bar.set_position(0);
        let file = tokio::fs::File::open(image)
            .await
            .map_err(|e| Error::io(format!("failed to open image file {}", image.display()), e))?;
        let progress = bar.clone();
        let body = reqwest::Body::wrap_stream(
            tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
                .inspect_ok(move |chunk| progress.inc(chunk.len() as u64)),
        );
        let res = client
            .post(url)
            .bearer_auth(token)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header(http::header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => {
                bar.finish();
                return Ok(());
            }
            Ok(r) => {
                let code = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                let e = Error::Failed(format!("unexpected return value {code}, {}", text.trim()));
                if (400..500).contains(&code) {
                    bar.abandon();
                    return Err(e);
                }
                last_err = Some(e);
            }
            Err(e) => last_err = Some(Error::Transport(format!("uploading to {url}: {e}"))),
        }
        if attempt < attempts {
            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
        }
    }
    bar.abandon();
    Err(last_err
        .unwrap_or_else(|| Error::Failed("upload failed".into()))
        .context(format!("error uploading image after {attempts} retries: ")))
}

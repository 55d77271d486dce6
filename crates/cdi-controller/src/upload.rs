//! CDI's upload path: `UploadTokenRequest` (`upload.cdi.kubevirt.io/v1beta1`) hands out a
//! token for one PVC; the upload proxy (`/v1beta1/upload`, `/upload-async`, `/upload-form`,
//! `/upload-form-async`, and the same under `v1alpha1`) takes `Authorization: Bearer <token>`
//! and imports the body into that PVC with the same engine as every other source.
//!
//! Protocol points `virtctl image-upload` relies on (CDI `pkg/uploadproxy`, KubeVirt
//! `pkg/virtctl/imageupload`):
//! - it waits for the PVC annotation `cdi.kubevirt.io/storage.pod.ready: "true"` (set by the
//!   DataVolume controller in phase `UploadReady`);
//! - `HEAD /v1beta1/upload-async` with a valid token answering 200 means "async supported";
//! - a sync upload is answered once the data is imported, an async one once it is received;
//!   afterwards the PVC annotation `cdi.kubevirt.io/storage.pod.phase` becomes `Succeeded`;
//! - a missing, unknown or expired token is 401.
//!
//! Tokens are random, held in memory, valid for [`crate::Config::upload_token_ttl`] (CDI: 5
//! minutes), and name one PVC in one namespace.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use kubevirt_api::cdi::phase;
use kubevirt_api::DataVolume;
use kubevirt_cdi::{ImportError, ImportOutcome, ProgressSink};
use kubevirt_runtime::subresource::{Query, SubresourceHandler};
use serde_json::{json, Value};

use crate::datavolume::{ann, annotate_pvc, target_for, write_status, Running, StatusWrite};
use crate::Context;

/// Upload tokens and the uploads in flight.
#[derive(Default)]
pub struct Uploads {
    tokens: Mutex<HashMap<String, Grant>>,
    active: Mutex<HashSet<(String, String)>>,
}

#[derive(Clone, Debug)]
struct Grant {
    namespace: String,
    pvc: String,
    expires: Instant,
}

impl Uploads {
    fn issue(&self, namespace: &str, pvc: &str, ttl: std::time::Duration) -> String {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if let Ok(mut t) = self.tokens.lock() {
            let now = Instant::now();
            t.retain(|_, g| g.expires > now);
            t.insert(
                token.clone(),
                Grant {
                    namespace: namespace.into(),
                    pvc: pvc.into(),
                    expires: now + ttl,
                },
            );
        }
        token
    }

    fn check(&self, token: &str) -> Option<Grant> {
        let t = self.tokens.lock().ok()?;
        t.get(token).filter(|g| g.expires > Instant::now()).cloned()
    }
}

/// Marks an upload into one PVC as running; dropping it ends the mark.
struct Active {
    ctx: Arc<Context>,
    key: (String, String),
}

impl Active {
    fn begin(ctx: &Arc<Context>, ns: &str, pvc: &str) -> Option<Active> {
        let key = (ns.to_string(), pvc.to_string());
        let mut a = ctx.uploads.active.lock().ok()?;
        if !a.insert(key.clone()) {
            return None;
        }
        Some(Active {
            ctx: ctx.clone(),
            key,
        })
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Ok(mut a) = self.ctx.uploads.active.lock() {
            a.remove(&self.key);
        }
    }
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.into(),
    )
        .into_response()
}

fn status_json(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Serves `upload.cdi.kubevirt.io/v1beta1` (plug in with
/// `Running::set_group_handler("upload.cdi.kubevirt.io", ..)`).
pub struct TokenHandler(pub Arc<Context>);

#[async_trait::async_trait]
impl SubresourceHandler for TokenHandler {
    async fn handle(
        &self,
        method: Method,
        path: Vec<String>,
        _query: Query,
        _headers: HeaderMap,
        body: Body,
    ) -> Response {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let ["namespaces", ns, "uploadtokenrequests"] = p.as_slice() else {
            return status_json(
                404,
                "NotFound",
                format!(
                    "the server could not find the requested resource {}",
                    path.join("/")
                ),
            );
        };
        if method != Method::POST {
            return status_json(
                405,
                "MethodNotAllowed",
                "uploadtokenrequests only supports create (POST)".into(),
            );
        }
        let bytes = match axum::body::to_bytes(body, 1 << 20).await {
            Ok(b) => b,
            Err(e) => return status_json(400, "BadRequest", format!("reading the body: {e}")),
        };
        let mut req: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return status_json(
                    400,
                    "BadRequest",
                    format!("the body is not an UploadTokenRequest (JSON): {e}"),
                )
            }
        };
        let Some(pvc) = req["spec"]["pvcName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
        else {
            return status_json(
                422,
                "Invalid",
                "UploadTokenRequest.upload.cdi.kubevirt.io is invalid: spec.pvcName: Required value: name the PVC to upload to".into(),
            );
        };
        let token = self
            .0
            .uploads
            .issue(ns, &pvc, self.0.config.upload_token_ttl);
        tracing::info!(namespace = %ns, %pvc, "upload token issued");
        req["apiVersion"] = json!("upload.cdi.kubevirt.io/v1beta1");
        req["kind"] = json!("UploadTokenRequest");
        if !req["metadata"].is_object() {
            req["metadata"] = json!({});
        }
        req["metadata"]["namespace"] = json!(ns);
        req["metadata"]["creationTimestamp"] = json!(k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string());
        req["status"] = json!({ "token": token });
        (
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/json")],
            req.to_string(),
        )
            .into_response()
    }
}

/// Serves CDI's upload proxy paths (plug in with `Running::set_upload_proxy(..)`).
pub struct UploadProxy(pub Arc<Context>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sync,
    Async,
}

#[async_trait::async_trait]
impl SubresourceHandler for UploadProxy {
    async fn handle(
        &self,
        method: Method,
        path: Vec<String>,
        _query: Query,
        headers: HeaderMap,
        body: Body,
    ) -> Response {
        let ctx = self.0.clone();
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let (form, mode) = match p.as_slice() {
            [_, "upload"] => (false, Mode::Sync),
            [_, "upload-async"] => (false, Mode::Async),
            [_, "upload-form"] => (true, Mode::Sync),
            [_, "upload-form-async"] => (true, Mode::Async),
            _ => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("no such upload path /{}", path.join("/")),
                )
            }
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        let Some(grant) = (!token.is_empty())
            .then(|| ctx.uploads.check(token))
            .flatten()
        else {
            return text(
                StatusCode::UNAUTHORIZED,
                "invalid or expired upload token: request one with an UploadTokenRequest",
            );
        };
        match method {
            // virtctl probes the async path with HEAD before uploading.
            Method::HEAD | Method::GET => return StatusCode::OK.into_response(),
            Method::POST | Method::PUT => {}
            _ => return text(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        }
        let (ns, name) = (grant.namespace.clone(), grant.pvc.clone());
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
        let pvc = match pvcs.get_opt(&name).await {
            Ok(Some(p)) => p,
            Ok(None) => return text(StatusCode::NOT_FOUND, format!("PVC {ns}/{name} not found")),
            Err(e) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("reading PVC {ns}/{name}: {e}"),
                )
            }
        };
        if pvc.annotations().get(ann::POD_READY).map(String::as_str) != Some("true") {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the upload server for PVC {ns}/{name} is not ready (is its DataVolume in phase UploadReady?)"),
            );
        }
        let Some(active) = Active::begin(&ctx, &ns, &name) else {
            return text(
                StatusCode::CONFLICT,
                format!("an upload into PVC {ns}/{name} is already in progress"),
            );
        };
        let dv = match pvc
            .owner_references()
            .iter()
            .find(|o| o.kind == "DataVolume")
        {
            Some(o) => Api::<DataVolume>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&o.name)
                .await
                .ok()
                .flatten(),
            None => None,
        };
        let target = match target_for(&ctx, &pvc, dv.as_ref()).await {
            Ok(t) => t,
            Err(msg) => return text(StatusCode::SERVICE_UNAVAILABLE, msg),
        };
        let content_length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let stream: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>> =
            if form {
                let ct = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let boundary = match multer::parse_boundary(ct) {
                    Ok(b) => b,
                    Err(e) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!("upload-form needs a multipart/form-data body: {e}"),
                        )
                    }
                };
                let mut mp = multer::Multipart::new(body.into_data_stream(), boundary);
                let field = loop {
                    match mp.next_field().await {
                        Ok(Some(f)) if f.name() == Some("file") => break f,
                        Ok(Some(_)) => continue,
                        Ok(None) => {
                            return text(
                                StatusCode::BAD_REQUEST,
                                "the multipart form has no \"file\" field",
                            )
                        }
                        Err(e) => {
                            return text(
                                StatusCode::BAD_REQUEST,
                                format!("reading the multipart form: {e}"),
                            )
                        }
                    }
                };
                Box::pin(field.map(|r| r.map_err(std::io::Error::other)))
            } else {
                Box::pin(
                    body.into_data_stream()
                        .map(|r| r.map_err(std::io::Error::other)),
                )
            };
        let total = if form { None } else { content_length };
        tracing::info!(%ns, pvc = %name, target = %target.path.display(), size = target.size, ?total, "upload starting");

        // Async: answer once the body has been read to its end.
        let (received_tx, received_rx) = tokio::sync::oneshot::channel::<()>();
        let mut received_tx = Some(received_tx);
        let stream = stream.chain(futures::stream::poll_fn(move |_| {
            if let Some(tx) = received_tx.take() {
                let _ = tx.send(());
            }
            std::task::Poll::Ready(None)
        }));

        let job = {
            let ctx = ctx.clone();
            let (ns, name) = (ns.clone(), name.clone());
            let dv_name = dv.as_ref().map(|d| d.name_any());
            async move {
                let (sink, rx) = ProgressSink::watch();
                let writer = dv_name
                    .clone()
                    .map(|d| tokio::spawn(write_progress(ctx.clone(), ns.clone(), d, rx)));
                let opts = ctx.config.import.clone();
                let r = kubevirt_cdi::import_upload(stream, total, &target, &opts, sink).await;
                if let Some(w) = writer {
                    w.abort();
                }
                finish(&ctx, &ns, &name, dv_name.as_deref(), &r).await;
                drop(active);
                r
            }
        };
        match mode {
            Mode::Sync => match job.await {
                Ok(_) => text(StatusCode::OK, ""),
                Err(e) => upload_error(&e),
            },
            Mode::Async => {
                let handle = tokio::spawn(job);
                tokio::select! {
                    _ = received_rx => text(StatusCode::OK, ""),
                    r = handle => match r {
                        Ok(Ok(_)) => text(StatusCode::OK, ""),
                        Ok(Err(e)) => upload_error(&e),
                        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("upload task: {e}")),
                    },
                }
            }
        }
    }
}

fn upload_error(e: &ImportError) -> Response {
    let code = if e.is_transient() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::BAD_REQUEST
    };
    text(code, format!("Saving stream failed: {e}"))
}

async fn write_progress(
    ctx: Arc<Context>,
    ns: String,
    dv: String,
    mut rx: tokio::sync::watch::Receiver<kubevirt_cdi::Progress>,
) {
    let api: Api<DataVolume> = Api::namespaced(ctx.client.clone(), &ns);
    let mut last = String::new();
    loop {
        tokio::time::sleep(ctx.config.progress_interval).await;
        let p = rx.borrow_and_update().percent_string();
        if p == last || p == "N/A" {
            continue;
        }
        let _ = kubevirt_runtime::status::write_status(&api, &dv, json!({"progress": p})).await;
        last = p;
    }
}

async fn finish(
    ctx: &Context,
    ns: &str,
    pvc: &str,
    dv: Option<&str>,
    r: &Result<ImportOutcome, ImportError>,
) {
    match r {
        Ok(out) => {
            tracing::info!(%ns, %pvc, formats = ?out.formats, bytes = out.transferred, "upload imported");
            let _ = annotate_pvc(
                ctx,
                ns,
                pvc,
                json!({ann::POD_PHASE: "Succeeded", ann::POD_READY: "false"}),
            )
            .await;
            if let Some(dv) = dv {
                let w = StatusWrite {
                    phase: phase::SUCCEEDED,
                    claim: pvc.to_string(),
                    bound: true,
                    running: Running::completed("Upload Complete"),
                    progress: Some("100.0%".into()),
                    restart_count: None,
                };
                if let Err(e) = write_status(ctx, ns, dv, &w).await {
                    tracing::warn!(%ns, %dv, error = %e, "status write failed");
                }
                if let Ok(Some(obj)) = Api::<DataVolume>::namespaced(ctx.client.clone(), ns)
                    .get_opt(dv)
                    .await
                {
                    ctx.event(
                        &obj,
                        EventType::Normal,
                        "UploadSucceeded",
                        format!("Successfully uploaded into {pvc}"),
                    )
                    .await;
                }
            }
        }
        Err(e) => {
            tracing::warn!(%ns, %pvc, error = %e, "upload failed");
            if let Some(dv) = dv {
                let w = StatusWrite {
                    phase: phase::UPLOAD_READY,
                    claim: pvc.to_string(),
                    bound: true,
                    running: Running::error(format!("Upload failed: {e}")),
                    progress: None,
                    restart_count: None,
                };
                let _ = write_status(ctx, ns, dv, &w).await;
                if let Ok(Some(obj)) = Api::<DataVolume>::namespaced(ctx.client.clone(), ns)
                    .get_opt(dv)
                    .await
                {
                    ctx.event(
                        &obj,
                        EventType::Warning,
                        "UploadFailed",
                        format!("Upload into {pvc} failed: {e}"),
                    )
                    .await;
                }
            }
        }
    }
}

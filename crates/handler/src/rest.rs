//! The node agent's authenticated HTTPS endpoint, as KubeVirt's virt-api reaches a VMI
//! through virt-handler on its node (pkg/virt-handler/rest, port 8186): mutual TLS with
//! certificates of the cluster CA ([`crate::tls`]); only virt-api's certificate
//! ([`crate::tls::VIRT_API`]) is accepted as a client.
//!
//! - `PUT /v1/namespaces/NS/virtualmachineinstances/NAME/rpc`: one launcher call, the
//!   launcher protocol's own [`Request`] as the body and [`Response`] as the answer; only the
//!   calls virt-api makes ([`forwarded`]).
//! - `PUT .../savememory`, `PUT .../resumememory` (body [`SaveMemory`]): a memory snapshot's
//!   save into this node's store ([`crate::memstore`]) and the guest's resumption after it
//!   (docs/memory-snapshots.md); the answer is the [`SavedState`].
//! - `PUT .../dumpmemory` (body [`DumpMemory`]): KubeVirt's memory dump: the launcher's
//!   `dumpMemory`, the ELF core moved into the claim's volume ([`crate::memdump`]); the answer
//!   is the [`DumpResult`].
//! - `GET .../console`, `GET .../vnc`: an HTTP upgrade to [`STREAM_PROTOCOL`], then the raw
//!   bytes of the launcher's `console.sock` / `vnc.sock`.
//! - `GET .../logs?container=launcher|qemu|serial&tailLines=N`: the end of one of the VMI's
//!   log files ([`LogsQuery`]; `launcher.log`, `qemu.log`, `serial.log` of its [`VmiDir`]),
//!   as text.
//!
//! A request is served only for a VMI this node runs (its `status.nodeName` in the API, and
//! the launcher directory here belonging to that VMI's uid); paths are built by [`VmiDir`]
//! from validated names, never from the request's strings. Refusals carry a [`Refusal`].
//!
//! [`HandlerEndpoint`] is where a node's endpoint is found: the node agent publishes it on its
//! Node, virt-api reads it from there.

use crate::tls::{self, Issued};
use bytes::Bytes;
use http::{header, Method as HttpMethod, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use kubevirt_api::memdump::{self, DumpMemory, DumpResult};
use kubevirt_api::memsnap::{self, SaveMemory};
use kubevirt_api::VirtualMachineInstance;
use kubevirt_launcher::api::logs::{self, LogContainer};
use kubevirt_launcher::api::memstate::{self, SavedState};
use kubevirt_launcher::api::{
    ClientError as LauncherError, LauncherClient, Method, Phase, Request, Response, VmiDir,
    VmiDirError,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// KubeVirt's virt-handler console server port; `--handler-port` (0: any free port, which
/// the Node advertises all the same).
pub const KUBEVIRT_PORT: u16 = 8186;
/// The Node annotation holding the endpoint (`IP:PORT`), written by the node agent.
pub const ENDPOINT_ANNOTATION: &str = "kubevirt-rs.io/handler-endpoint";
/// The `Upgrade` protocol of console and VNC streams.
pub const STREAM_PROTOCOL: &str = "kubevirt-rs.io/stream";

/// Largest RPC body (a request without a VMI in it is a few bytes).
const MAX_BODY: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a node's agent serves: the node (whose name its certificate carries) and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerEndpoint {
    pub node: String,
    pub address: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("node {0}'s handler has not published its endpoint (is it running?)")]
    Missing(String),
    #[error("node {node}'s handler endpoint {value:?} is not an IP:PORT of the node's InternalIP")]
    Invalid { node: String, value: String },
}

impl HandlerEndpoint {
    /// The endpoint `node` advertises: its annotation, on the Node's `InternalIP`.
    pub fn of_node(node: &Node) -> Result<HandlerEndpoint, EndpointError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let value = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ENDPOINT_ANNOTATION))
            .ok_or_else(|| EndpointError::Missing(name.clone()))?;
        let invalid = || EndpointError::Invalid {
            node: name.clone(),
            value: value.clone(),
        };
        let address: SocketAddr = value.parse().map_err(|_| invalid())?;
        if address.port() == 0 || Some(address.ip()) != tls::internal_ip(node) {
            return Err(invalid());
        }
        Ok(HandlerEndpoint {
            node: name,
            address,
        })
    }

    /// The Node patch that publishes this endpoint.
    pub fn node_patch(&self) -> serde_json::Value {
        json!({"metadata": {"annotations": {ENDPOINT_ANNOTATION: self.address.to_string()}}})
    }
}

/// The two byte streams of a VMI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Console,
    Vnc,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Console => "console",
            StreamKind::Vnc => "vnc",
        }
    }

    fn socket(self, dir: &VmiDir) -> PathBuf {
        match self {
            StreamKind::Console => dir.console_socket(),
            StreamKind::Vnc => dir.vnc_socket(),
        }
    }
}

/// The launcher calls the endpoint forwards: virt-api's subresources. The others (`sync`,
/// migration, hotplug, ...) are the node agent's own business.
pub fn forwarded(m: Method) -> bool {
    matches!(
        m,
        Method::Pause
            | Method::Unpause
            | Method::SoftReboot
            | Method::Reset
            | Method::Stop
            | Method::GuestOsInfo
            | Method::UserList
            | Method::FilesystemList
            | Method::Freeze
            | Method::Unfreeze
    )
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// Not a Kubernetes name, not JSON, not a forwarded call.
    BadRequest,
    /// No such route, or no such VMI.
    NotFound,
    /// The VMI does not run on this node.
    NotOnThisNode,
    /// The VMI has no such device socket (no serial console, no graphics).
    NoDevice,
    /// The launcher answered with an error.
    Launcher,
    /// The launcher or the API could not be reached.
    Unavailable,
}

/// A refusal's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self.reason {
            Reason::BadRequest => StatusCode::BAD_REQUEST,
            Reason::NotFound | Reason::NoDevice => StatusCode::NOT_FOUND,
            Reason::NotOnThisNode => StatusCode::CONFLICT,
            Reason::Launcher => StatusCode::BAD_GATEWAY,
            Reason::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The `logs` request's query (`container`, default `launcher`; `tailLines`, default all of
/// the last MiB): built by [`HandlerClient::logs`] and by virt-api's `logs` subresource from
/// the user's query, parsed by the endpoint; unknown parameters are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogsQuery {
    pub container: LogContainer,
    pub tail_lines: Option<u64>,
}

impl LogsQuery {
    /// A query string (`container=qemu&tailLines=20`), without its `?`.
    pub fn parse(query: &str) -> Result<LogsQuery, String> {
        let mut q = LogsQuery {
            container: LogContainer::Launcher,
            tail_lines: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "container" => q.container = LogContainer::parse(v)?,
                "tailLines" => q.tail_lines = Some(logs::parse_tail_lines(v)?),
                _ => {
                    return Err(format!(
                        "unknown parameter {k:?}: use container and tailLines"
                    ))
                }
            }
        }
        Ok(q)
    }

    /// The query string this query parses from.
    pub fn to_query(self) -> String {
        let mut s = format!("container={}", self.container.as_str());
        if let Some(n) = self.tail_lines {
            s.push_str(&format!("&tailLines={n}"));
        }
        s
    }
}

/// The path of `action` on a VMI: one owner for both sides.
fn vmi_path(namespace: &str, name: &str, action: &str) -> String {
    format!("/v1/namespaces/{namespace}/virtualmachineinstances/{name}/{action}")
}

type Reply = http::Response<Full<Bytes>>;

fn json_reply(status: StatusCode, body: Vec<u8>) -> Reply {
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn refused(r: Refusal) -> Reply {
    json_reply(r.status(), serde_json::to_vec(&r).unwrap_or_default())
}

/// The server side: this node's launchers, for virt-api.
pub struct Endpoint {
    client: Client,
    node_name: String,
    data_dir: PathBuf,
    /// Where the claims of memory dumps may be ([`crate::memdump::claim_dir`]).
    host_paths: kubevirt_runtime::host_path::HostPathPolicy,
}

impl Endpoint {
    pub fn new(
        client: Client,
        node_name: String,
        data_dir: PathBuf,
        host_paths: kubevirt_runtime::host_path::HostPathPolicy,
    ) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            client,
            node_name,
            data_dir,
            host_paths,
        })
    }

    /// Accepts connections on `listener` until the task is dropped. A peer that fails the
    /// handshake (no certificate, another CA, not virt-api) is dropped there.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a handler endpoint connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let ep = self.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "refused a handler endpoint client at the TLS handshake");
                        return;
                    }
                    Err(_) => return,
                };
                let service = hyper::service::service_fn(move |req| {
                    let ep = ep.clone();
                    async move { Ok::<_, std::convert::Infallible>(ep.handle(req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await
                {
                    tracing::debug!(%peer, error = %e, "handler endpoint connection");
                }
            });
        }
    }

    async fn handle(&self, req: http::Request<Incoming>) -> Reply {
        self.route(req).await.unwrap_or_else(refused)
    }

    async fn route(&self, mut req: http::Request<Incoming>) -> Result<Reply, Refusal> {
        let path = req.uri().path().to_string();
        let segs: Vec<&str> = path.split('/').collect();
        let (ns, name, action) = match segs.as_slice() {
            ["", "v1", "namespaces", ns, "virtualmachineinstances", name, action] => {
                (*ns, *name, *action)
            }
            _ => return Err(Refusal::new(Reason::NotFound, format!("no route {path}"))),
        };
        let method = req.method().clone();
        let want = |m: HttpMethod| {
            if method == m {
                Ok(())
            } else {
                Err(Refusal::new(
                    Reason::BadRequest,
                    format!("{action}: use {m}, not {method}"),
                ))
            }
        };
        match action {
            "rpc"
            | memsnap::SAVE_SUBRESOURCE
            | memsnap::RESUME_SUBRESOURCE
            | memdump::DUMP_SUBRESOURCE => want(HttpMethod::PUT)?,
            "console" | "vnc" | "logs" => want(HttpMethod::GET)?,
            _ => return Err(Refusal::new(Reason::NotFound, format!("no route {path}"))),
        }
        let logs = match action {
            "logs" => Some(
                LogsQuery::parse(req.uri().query().unwrap_or(""))
                    .map_err(|e| Refusal::new(Reason::BadRequest, e))?,
            ),
            _ => None,
        };
        let dir = self.dir_of_running(ns, name).await?;
        if let Some(q) = logs {
            let path = q.container.path(&dir);
            let text = tokio::task::spawn_blocking(move || logs::tail(&path, q.tail_lines))
                .await
                .map_err(|e| Refusal::new(Reason::Unavailable, e.to_string()))?
                .map_err(|e| {
                    Refusal::new(
                        Reason::Unavailable,
                        format!(
                            "reading VMI {ns}/{name}'s {} log: {e}",
                            q.container.as_str()
                        ),
                    )
                })?;
            let mut r = http::Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return Ok(r);
        }
        if action == memsnap::SAVE_SUBRESOURCE || action == memsnap::RESUME_SUBRESOURCE {
            let body = read_body(req).await?;
            let value: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| Refusal::new(Reason::BadRequest, format!("not JSON: {e}")))?;
            let save =
                SaveMemory::parse(&value).map_err(|e| Refusal::new(Reason::BadRequest, e))?;
            return self
                .memory(
                    ns,
                    name,
                    &dir,
                    &save.key,
                    action == memsnap::SAVE_SUBRESOURCE,
                )
                .await;
        }
        if action == memdump::DUMP_SUBRESOURCE {
            let body = read_body(req).await?;
            let value: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| Refusal::new(Reason::BadRequest, format!("not JSON: {e}")))?;
            let dump =
                DumpMemory::parse(&value).map_err(|e| Refusal::new(Reason::BadRequest, e))?;
            return self.dump_memory(ns, name, &dir, &dump.claim_name).await;
        }
        if action == "rpc" {
            let body = read_body(req).await?;
            let request: Request = serde_json::from_slice(&body).map_err(|e| {
                Refusal::new(Reason::BadRequest, format!("not a launcher request: {e}"))
            })?;
            return self.call(ns, name, &dir, request).await;
        }
        let kind = if action == "console" {
            StreamKind::Console
        } else {
            StreamKind::Vnc
        };
        let upgrade = req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes() == STREAM_PROTOCOL.as_bytes());
        if !upgrade {
            return Err(Refusal::new(
                Reason::BadRequest,
                format!("{action} is a stream: upgrade to {STREAM_PROTOCOL}"),
            ));
        }
        let socket = kind.socket(&dir);
        let unix = match UnixStream::connect(&socket).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(Refusal::new(
                    Reason::NoDevice,
                    format!("VMI {ns}/{name} has no {action} here"),
                ))
            }
            Err(e) => {
                return Err(Refusal::new(
                    Reason::Unavailable,
                    format!("VMI {ns}/{name}'s {action}: {e}"),
                ))
            }
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let label = format!("{ns}/{name} {action}");
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(stream = %label, error = %e, "the stream was not upgraded");
                    return;
                }
            };
            tracing::info!(stream = %label, "stream opened for virt-api");
            let mut io = TokioIo::new(upgraded);
            let mut unix = unix;
            let _ = tokio::io::copy_bidirectional(&mut io, &mut unix).await;
            tracing::info!(stream = %label, "stream closed");
        });
        let mut r = http::Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("Upgrade"),
        );
        r.headers_mut().insert(
            header::UPGRADE,
            header::HeaderValue::from_static(STREAM_PROTOCOL),
        );
        Ok(r)
    }

    /// The directory of a VMI this node runs: names checked before they come near a path,
    /// the VMI's node in the API, and the directory's owner the same VMI (uid).
    async fn dir_of_running(&self, ns: &str, name: &str) -> Result<VmiDir, Refusal> {
        let dir = VmiDir::new(&self.data_dir, ns, name).map_err(|e| match e {
            VmiDirError::Namespace { .. } | VmiDirError::Name { .. } => {
                Refusal::new(Reason::BadRequest, e.to_string())
            }
            e => Refusal::new(Reason::Unavailable, e.to_string()),
        })?;
        let api: Api<VirtualMachineInstance> = Api::namespaced(self.client.clone(), ns);
        let vmi = api
            .get_opt(name)
            .await
            .map_err(|e| Refusal::new(Reason::Unavailable, format!("reading the VMI: {e}")))?
            .ok_or_else(|| {
                Refusal::new(Reason::NotFound, format!("VMI {ns}/{name} does not exist"))
            })?;
        let node = vmi.status.as_ref().and_then(|s| s.node_name.as_deref());
        let not_here = |why: String| Refusal::new(Reason::NotOnThisNode, why);
        if node != Some(self.node_name.as_str()) {
            return Err(not_here(format!(
                "VMI {ns}/{name} runs on node {}, not on {}",
                node.unwrap_or("(none)"),
                self.node_name
            )));
        }
        let owner = dir.owner();
        if owner.is_none_or(|o| Some(&o.uid) != vmi.metadata.uid.as_ref()) {
            return Err(not_here(format!(
                "VMI {ns}/{name} has no launcher on node {}",
                self.node_name
            )));
        }
        Ok(dir)
    }

    /// `savememory`: the launcher's `saveState {resume: false}` (the guest stays paused, its
    /// disks released), its state moved into this node's store under `namespace/key`
    /// ([`crate::memstore`]); done already, the stored [`SavedState`] again. `resumememory`:
    /// the guest runs on if it ran when saved.
    async fn memory(
        &self,
        ns: &str,
        name: &str,
        dir: &VmiDir,
        key: &str,
        save: bool,
    ) -> Result<Reply, Refusal> {
        let data_dir = self.data_dir.clone();
        let stored = {
            let (d, n, k) = (data_dir.clone(), ns.to_string(), key.to_string());
            tokio::task::spawn_blocking(move || crate::memstore::load(&d, &n, &k))
                .await
                .map_err(|e| Refusal::new(Reason::Unavailable, e.to_string()))?
                .map_err(|e| Refusal::new(Reason::BadRequest, e.to_string()))?
        };
        let launcher = |request: Request| async move {
            match async { LauncherClient::connect(dir).await?.call(request).await }.await {
                Ok(r) => Ok(r),
                Err(LauncherError::Remote(e)) => Err(Refusal::new(Reason::Launcher, e.to_string())),
                Err(e) => Err(Refusal::new(Reason::Unavailable, e.to_string())),
            }
        };
        // A save that went through at the launcher while its answer was lost (the caller
        // timed out, this agent restarted, the move into the store failed) left the guest
        // paused with its state in the VMI directory: that state says whether the guest ran.
        let leftover = || {
            let paused = dir.read_state().is_ok_and(|st| {
                st.phase == Phase::Paused && st.reason == memstate::reason::STATE_SAVED
            });
            if paused {
                dir.read_saved_state().ok().flatten()
            } else {
                None
            }
        };
        let saved = match (save, stored) {
            (true, Some(s)) => s,
            (true, None) => {
                let saved = match leftover() {
                    Some(s) => s,
                    None => {
                        tracing::info!(
                            namespace = ns,
                            name,
                            key,
                            "saving the guest's memory for a snapshot"
                        );
                        match launcher(Request::SaveState { resume: false }).await {
                            Ok(Response::SavedState(saved)) => *saved,
                            Ok(_) => {
                                return Err(Refusal::new(
                                    Reason::Launcher,
                                    "saveState: unexpected reply",
                                ))
                            }
                            Err(e) => {
                                // The guest must not stay stopped for a snapshot that failed.
                                if leftover().is_some_and(|s| s.guest_running) {
                                    let _ = launcher(Request::Unpause).await;
                                }
                                return Err(e);
                            }
                        }
                    }
                };
                let (d, n, k, vd, s) = (
                    data_dir,
                    ns.to_string(),
                    key.to_string(),
                    dir.clone(),
                    saved.clone(),
                );
                let moved =
                    tokio::task::spawn_blocking(move || crate::memstore::save(&d, &n, &k, &vd, &s))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()));
                if let Err(e) = moved {
                    // The snapshot fails; the guest runs on as it did.
                    if saved.guest_running {
                        if let Err(u) = launcher(Request::Unpause).await {
                            tracing::warn!(namespace = ns, name, error = %u.message, "resuming the guest after a failed memory save");
                        }
                    }
                    return Err(Refusal::new(Reason::Unavailable, e));
                }
                saved
            }
            (false, Some(s)) => {
                if s.guest_running {
                    launcher(Request::Unpause).await?;
                }
                s
            }
            // Nothing stored under this key, but a save left the guest stopped: run it on.
            (false, None) => match leftover() {
                Some(s) => {
                    if s.guest_running {
                        launcher(Request::Unpause).await?;
                    }
                    s
                }
                None => {
                    return Err(Refusal::new(
                        Reason::NotFound,
                        format!("no memory snapshot {key} of namespace {ns} on this node"),
                    ))
                }
            },
        };
        Ok(json_reply(
            StatusCode::OK,
            serde_json::to_vec(&saved).unwrap_or_default(),
        ))
    }

    /// `dumpmemory`: KubeVirt's memory dump of VMI `ns/name` into claim `claim` of its
    /// namespace: the claim's volume is found first (an unbound claim is `Unavailable`, to be
    /// asked again), then the launcher writes the ELF core and it is moved into the volume as
    /// `<vmi>-<claim>-<timestamp>.memory.dump`.
    async fn dump_memory(
        &self,
        ns: &str,
        name: &str,
        dir: &VmiDir,
        claim: &str,
    ) -> Result<Reply, Refusal> {
        use crate::memdump::{claim_dir, place, DumpError};
        let refusal = |e: DumpError| match e {
            DumpError::NotReady(m) => Refusal::new(Reason::Unavailable, m),
            e => Refusal::new(Reason::BadRequest, e.to_string()),
        };
        let target = claim_dir(&self.client, &self.host_paths, &self.node_name, ns, claim)
            .await
            .map_err(refusal)?;
        let start = k8s_openapi::jiff::Timestamp::now();
        let file_name = memdump::file_name(name, claim, start.as_second())
            .map_err(|e| Refusal::new(Reason::BadRequest, e))?;
        tracing::info!(namespace = ns, name, claim, file = %file_name, "dumping the guest's memory");
        match async {
            LauncherClient::connect(dir)
                .await?
                .call(Request::DumpMemory)
                .await
        }
        .await
        {
            Ok(Response::MemoryDump(_)) => {}
            Ok(_) => {
                return Err(Refusal::new(
                    Reason::Launcher,
                    "dumpMemory: unexpected reply",
                ))
            }
            Err(LauncherError::Remote(e)) => {
                return Err(Refusal::new(Reason::Launcher, e.to_string()))
            }
            // Only a launcher that could not be reached is asked again. After a timeout or a
            // lost answer QEMU may still be writing the dump with the guest stopped: a retry
            // would queue another dump behind it and stop the guest again and again.
            Err(
                e @ (LauncherError::Connect { .. }
                | LauncherError::Timeout {
                    what: "connect", ..
                }),
            ) => return Err(Refusal::new(Reason::Unavailable, e.to_string())),
            Err(e) => {
                // Whatever the launcher still writes goes to an unlinked file: the guest's
                // memory is not left on the node's disk.
                let _ = std::fs::remove_file(dir.memory_dump());
                return Err(Refusal::new(
                    Reason::Launcher,
                    format!("{e}; no dump was placed in the claim"),
                ));
            }
        }
        let (src, fname) = (dir.memory_dump(), file_name.clone());
        let size = tokio::task::spawn_blocking(move || {
            let placed = place(&src, &target, &fname);
            if placed.is_err() {
                // The guest's whole memory is not left on the node's disk.
                let _ = std::fs::remove_file(&src);
            }
            placed
        })
        .await
        .map_err(|e| Refusal::new(Reason::Unavailable, e.to_string()))?
        .map_err(refusal)?;
        let end = k8s_openapi::jiff::Timestamp::now();
        let result = DumpResult {
            file_name,
            size_bytes: size,
            start_timestamp: start.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            end_timestamp: end.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        };
        Ok(json_reply(
            StatusCode::OK,
            serde_json::to_vec(&result).unwrap_or_default(),
        ))
    }

    async fn call(
        &self,
        ns: &str,
        name: &str,
        dir: &VmiDir,
        request: Request,
    ) -> Result<Reply, Refusal> {
        let method = request.method();
        if !forwarded(method) {
            return Err(Refusal::new(
                Reason::BadRequest,
                format!("{method} is not a call virt-api makes"),
            ));
        }
        tracing::info!(namespace = ns, name, %method, "launcher call for virt-api");
        let outcome = async { LauncherClient::connect(dir).await?.call(request).await }.await;
        match outcome {
            Ok(r) => Ok(json_reply(
                StatusCode::OK,
                serde_json::to_vec(&r).unwrap_or_default(),
            )),
            Err(LauncherError::Remote(e)) => Err(Refusal::new(Reason::Launcher, e.to_string())),
            Err(e) => Err(Refusal::new(Reason::Unavailable, e.to_string())),
        }
    }
}

/// Serves this node's endpoint with its certificate `issued`: listens on `node_address:port` and publishes the endpoint on
/// the Node. Returns when the listener stops.
pub async fn run(client: Client, config: crate::Config, issued: Arc<Issued>) -> anyhow::Result<()> {
    use anyhow::Context;
    let server_tls = issued.server_config(&[tls::VIRT_API])?;
    let listener = TcpListener::bind((config.node_address, config.handler_port))
        .await
        .with_context(|| {
            format!(
                "listening on {}:{} (--handler-port)",
                config.node_address, config.handler_port
            )
        })?;
    let endpoint = HandlerEndpoint {
        node: config.node_name.clone(),
        address: listener.local_addr()?,
    };
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Merge(endpoint.node_patch()),
        )
        .await
        .context("publishing the handler endpoint on the Node")?;
    tracing::info!(address = %endpoint.address, "handler endpoint serving (mutual TLS)");
    Endpoint::new(
        client,
        config.node_name.clone(),
        config.data_dir.clone(),
        config.host_paths.clone(),
    )
    .serve(listener, server_tls)
    .await;
    Ok(())
}

/// virt-api's side: calls and streams to a node's endpoint, as virt-api's certificate.
#[derive(Clone)]
pub struct HandlerClient {
    tls: Arc<rustls::ClientConfig>,
}

/// A request's body, at most [`MAX_BODY`] bytes.
async fn read_body(req: http::Request<Incoming>) -> Result<Bytes, Refusal> {
    Ok(Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| Refusal::new(Reason::BadRequest, format!("reading the body: {e}")))?
        .to_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to node {node}'s handler at {address}: {source}")]
    Connect {
        node: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("node {node}'s handler at {address}: {detail}")]
    Protocol {
        node: String,
        address: SocketAddr,
        detail: String,
    },
    /// The endpoint's refusal, as it gave it.
    #[error("{}", .refusal.message)]
    Refused { status: u16, refusal: Refusal },
}

/// A console or VNC byte stream through a node's endpoint.
pub type HandlerStream = TokioIo<hyper::upgrade::Upgraded>;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl HandlerClient {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> HandlerClient {
        HandlerClient { tls }
    }

    async fn connect(&self, ep: &HandlerEndpoint) -> Result<Sender, ClientError> {
        let protocol = |detail: String| protocol(ep, detail);
        let connect_error = |source| ClientError::Connect {
            node: ep.node.clone(),
            address: ep.address,
            source,
        };
        let timed_out = || {
            connect_error(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            ))
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ep.address))
            .await
            .map_err(|_| timed_out())?
            .map_err(connect_error)?;
        let _ = tcp.set_nodelay(true);
        // The endpoint's certificate must name the node the VMI is on.
        let server_name = rustls_pki_types::ServerName::try_from(ep.node.clone())
            .map_err(|e| protocol(format!("node name: {e}")))?;
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_rustls::TlsConnector::from(self.tls.clone()).connect(server_name, tcp),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| protocol(format!("TLS: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| protocol(format!("HTTP: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "handler endpoint connection");
            }
        });
        Ok(sender)
    }

    async fn refusal(
        ep: &HandlerEndpoint,
        resp: http::Response<Incoming>,
    ) -> Result<ClientError, ClientError> {
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        match serde_json::from_slice::<Refusal>(&body) {
            Ok(refusal) => Ok(ClientError::Refused { status, refusal }),
            Err(_) => Err(protocol(
                ep,
                format!(
                    "answered {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
            )),
        }
    }

    /// Sends `req` to the endpoint's node agent and returns the body of its 200 answer; any
    /// other status is the agent's refusal.
    async fn fetch(
        &self,
        ep: &HandlerEndpoint,
        req: http::Request<Full<Bytes>>,
    ) -> Result<Bytes, ClientError> {
        let mut sender = self.connect(ep).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| protocol(ep, format!("HTTP: {e}")))?;
        if resp.status() != StatusCode::OK {
            return Err(Self::refusal(ep, resp).await.unwrap_or_else(|e| e));
        }
        Ok(resp
            .into_body()
            .collect()
            .await
            .map_err(|e| protocol(ep, format!("reading the answer: {e}")))?
            .to_bytes())
    }

    /// A PUT of `body` as JSON to the VMI `namespace/name`'s `action`.
    async fn put_json<T: serde::Serialize>(
        &self,
        ep: &HandlerEndpoint,
        namespace: &str,
        name: &str,
        action: &str,
        body: &T,
    ) -> Result<Bytes, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| protocol(ep, e.to_string()))?;
        let req = http::Request::put(vmi_path(namespace, name, action))
            .header(header::HOST, ep.node.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| protocol(ep, e.to_string()))?;
        self.fetch(ep, req).await
    }

    /// One launcher call on the VMI `namespace/name` of the endpoint's node.
    pub async fn call(
        &self,
        ep: &HandlerEndpoint,
        namespace: &str,
        name: &str,
        request: Request,
    ) -> Result<Response, ClientError> {
        let method = request.method();
        let body = self.put_json(ep, namespace, name, "rpc", &request).await?;
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| protocol(ep, format!("the answer: {e}")))?;
        Response::decode(method, value).map_err(|e| protocol(ep, format!("the answer: {e}")))
    }

    /// Saves (`save`) the guest's memory of VMI `namespace/name` into the node's store under
    /// `key`, leaving it paused with its disks released; or (`!save`) runs it on.
    pub async fn memory(
        &self,
        ep: &HandlerEndpoint,
        namespace: &str,
        name: &str,
        key: &str,
        save: bool,
    ) -> Result<SavedState, ClientError> {
        let action = if save {
            memsnap::SAVE_SUBRESOURCE
        } else {
            memsnap::RESUME_SUBRESOURCE
        };
        let request = SaveMemory {
            key: key.to_string(),
        };
        let body = self.put_json(ep, namespace, name, action, &request).await?;
        serde_json::from_slice(&body).map_err(|e| protocol(ep, format!("the answer: {e}")))
    }

    /// KubeVirt's memory dump of VMI `namespace/name` into claim `claim` of its namespace.
    pub async fn dump_memory(
        &self,
        ep: &HandlerEndpoint,
        namespace: &str,
        name: &str,
        claim: &str,
    ) -> Result<DumpResult, ClientError> {
        let request = DumpMemory {
            claim_name: claim.to_string(),
        };
        let body = self
            .put_json(ep, namespace, name, memdump::DUMP_SUBRESOURCE, &request)
            .await?;
        serde_json::from_slice(&body).map_err(|e| protocol(ep, format!("the answer: {e}")))
    }

    /// The end of a log of the VMI `namespace/name` of the endpoint's node.
    pub async fn logs(
        &self,
        ep: &HandlerEndpoint,
        namespace: &str,
        name: &str,
        query: LogsQuery,
    ) -> Result<String, ClientError> {
        let path = format!("{}?{}", vmi_path(namespace, name, "logs"), query.to_query());
        let req = http::Request::get(path)
            .header(header::HOST, ep.node.as_str())
            .body(Full::new(Bytes::new()))
            .map_err(|e| protocol(ep, e.to_string()))?;
        let body = self.fetch(ep, req).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// The console or VNC stream of the VMI `namespace/name` of the endpoint's node.
    pub async fn stream(
        &self,
        ep: &HandlerEndpoint,
        namespace: &str,
        name: &str,
        kind: StreamKind,
    ) -> Result<HandlerStream, ClientError> {
        let protocol = |detail: String| protocol(ep, detail);
        let req = http::Request::get(vmi_path(namespace, name, kind.as_str()))
            .header(header::HOST, ep.node.as_str())
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, STREAM_PROTOCOL)
            .body(Full::new(Bytes::new()))
            .map_err(|e| protocol(e.to_string()))?;
        let mut sender = self.connect(ep).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| protocol(format!("HTTP: {e}")))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(Self::refusal(ep, resp).await.unwrap_or_else(|e| e));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| protocol(format!("upgrading the stream: {e}")))?;
        Ok(TokioIo::new(upgraded))
    }
}

/// What went wrong talking to the endpoint's node agent, besides its refusals.
fn protocol(ep: &HandlerEndpoint, detail: String) -> ClientError {
    ClientError::Protocol {
        node: ep.node.clone(),
        address: ep.address,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{ClusterCa, Identity, VIRT_API};
    use kube::api::PostParams;
    use std::net::{IpAddr, Ipv4Addr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn vmi(name: &str) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}}},
        }))
        .expect("vmi")
    }

    /// A client presenting `cert`/`key` and trusting `ca_pem` (the endpoint's CA).
    fn client_with(ca_pem: &str, cert: Option<&Issued>) -> HandlerClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.expect("pem")).expect("root");
        }
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let cfg = match cert {
            None => b.with_no_client_auth(),
            Some(c) => {
                let issued = Issued {
                    ca_pem: ca_pem.to_string(),
                    ..c.clone()
                };
                return HandlerClient::new(issued.client_config().expect("client config"));
            }
        };
        HandlerClient::new(Arc::new(cfg))
    }

    use rustls_pki_types::pem::PemObject;

    /// A real API server, a real listener with the node's certificate, a VMI directory with a
    /// console socket: virt-api's certificate reaches the console of a VMI this node runs;
    /// no certificate, another CA's, or another identity's is refused at the handshake; a VMI
    /// of another node, a missing one, hostile names and calls virt-api does not make are
    /// refused by the endpoint.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_virt_api_of_the_cluster_ca_reaches_vmis_this_node_runs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let running = kubevirt_apiserver::start(kubevirt_apiserver::Config::new(
            tmp.path().join("api"),
            "127.0.0.1:0".parse().expect("addr"),
        ))
        .await
        .expect("API server");
        let client = running.client().await.expect("client");

        let ca_dir = tmp.path().join("ca");
        std::fs::create_dir_all(&ca_dir).expect("ca dir");
        let first = ClusterCa::load_or_create(&ca_dir).expect("CA");
        let mode = std::fs::metadata(ca_dir.join(crate::tls::CA_KEY_FILE))
            .expect("CA key")
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // Loaded again, the CA issues certificates the first one's trust accepts.
        let ca = ClusterCa::load_or_create(&ca_dir).expect("CA again");
        assert_eq!(first.cert_pem(), ca.cert_pem());
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let node_cert = ca
            .issue(&Identity::Node {
                name: "node01".into(),
                address: localhost,
            })
            .expect("node cert");
        let listener = TcpListener::bind((localhost, 0)).await.expect("bind");
        let ep = HandlerEndpoint {
            node: "node01".into(),
            address: listener.local_addr().expect("addr"),
        };
        let data = tmp.path().join("node01");
        let server = tokio::spawn(
            Endpoint::new(
                client.clone(),
                "node01".into(),
                data.clone(),
                kubevirt_runtime::host_path::HostPathPolicy::new(&[], &data, &data.join("volumes"))
                    .expect("policy"),
            )
            .serve(
                listener,
                node_cert.server_config(&[VIRT_API]).expect("server config"),
            ),
        );

        // VMIs: "here" on node01 with its directory and console, "elsewhere" on node02.
        let api: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
        let mut uid = String::new();
        for (name, node) in [("here", "node01"), ("elsewhere", "node02")] {
            let created = api
                .create(&PostParams::default(), &vmi(name))
                .await
                .expect("create VMI");
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"nodeName": node, "phase": "Running"}})),
            )
            .await
            .expect("VMI status");
            if name == "here" {
                uid = created.metadata.uid.clone().expect("uid");
            }
        }
        let dir = VmiDir::new(&data, "default", "here").expect("dir");
        std::fs::create_dir_all(dir.path()).expect("mkdir");
        std::fs::write(
            dir.vmi_file(),
            json!({"metadata": {"namespace": "default", "name": "here", "uid": uid}}).to_string(),
        )
        .expect("vmi.json");
        let console = tokio::net::UnixListener::bind(dir.console_socket()).expect("console");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = console.accept().await {
                let _ = s.write_all(b"guest console says hi\n").await;
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });

        let virt_api = client_with(
            ca.cert_pem(),
            Some(&ca.issue(&Identity::VirtApi).expect("virt-api cert")),
        );
        // virt-api reaches the console, both ways.
        let mut s = virt_api
            .stream(&ep, "default", "here", StreamKind::Console)
            .await
            .expect("console stream");
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while !String::from_utf8_lossy(&got).contains("says hi\n") {
            let n = s.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "the stream ended: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"typed\n").await.expect("write");
        let n = s.read(&mut buf).await.expect("read echo");
        assert_eq!(&buf[..n], b"typed\n");
        drop(s);

        // Its logs: the end of one of its files, chosen by a LogsQuery, never by a path.
        std::fs::write(dir.launcher_log(), "l1\nl2\nl3\n").expect("launcher.log");
        std::fs::write(dir.qemu_log(), "qemu says\n").expect("qemu.log");
        let q = |container, tail_lines| LogsQuery {
            container,
            tail_lines,
        };
        let logs = |name: &'static str, query| {
            let (virt_api, ep) = (virt_api.clone(), ep.clone());
            async move { virt_api.logs(&ep, "default", name, query).await }
        };
        for (query, want) in [
            (q(LogContainer::Launcher, Some(2)), "l2\nl3\n"),
            (q(LogContainer::Launcher, None), "l1\nl2\nl3\n"),
            (q(LogContainer::Qemu, None), "qemu says\n"),
            (q(LogContainer::Serial, Some(5)), ""),
        ] {
            assert_eq!(logs("here", query).await.expect("logs"), want, "{query:?}");
        }
        match logs("elsewhere", q(LogContainer::Qemu, None)).await {
            Err(ClientError::Refused { refusal, .. }) => {
                assert_eq!(refusal.reason, Reason::NotOnThisNode, "{refusal:?}")
            }
            other => panic!("another node's VMI's logs: {other:?}"),
        }

        let refusal = |r: Result<HandlerStream, ClientError>| match r {
            Err(ClientError::Refused { refusal, .. }) => refusal,
            Err(e) => panic!("not a refusal: {e}"),
            Ok(_) => panic!("served"),
        };
        // No VNC socket: no device, which virt-api turns into KubeVirt's message.
        let r = refusal(
            virt_api
                .stream(&ep, "default", "here", StreamKind::Vnc)
                .await,
        );
        assert_eq!(r.reason, Reason::NoDevice, "{r:?}");
        // A VMI of another node, and one that does not exist.
        let r = refusal(
            virt_api
                .stream(&ep, "default", "elsewhere", StreamKind::Console)
                .await,
        );
        assert_eq!(r.reason, Reason::NotOnThisNode, "{r:?}");
        assert!(r.message.contains("runs on node node02"), "{r:?}");
        match virt_api
            .call(&ep, "default", "elsewhere", Request::Pause)
            .await
        {
            Err(ClientError::Refused { refusal, status }) => {
                assert_eq!((refusal.reason, status), (Reason::NotOnThisNode, 409))
            }
            other => panic!("pause of another node's VMI: {:?}", other.map(|_| ())),
        }
        let r = refusal(
            virt_api
                .stream(&ep, "default", "nope", StreamKind::Console)
                .await,
        );
        assert_eq!(r.reason, Reason::NotFound, "{r:?}");
        // Hostile names never reach a path.
        for (ns, name) in [
            ("default", "..%2F..%2Fhere"),
            ("default", ".."),
            ("..", "here"),
            ("default%2F..", "here"),
            ("default", "a/../../here"),
            ("default", "../here"),
        ] {
            let r = refusal(virt_api.stream(&ep, ns, name, StreamKind::Console).await);
            assert!(
                matches!(r.reason, Reason::BadRequest | Reason::NotFound),
                "{ns}/{name}: {r:?}"
            );
        }
        // Only the calls virt-api makes are forwarded.
        match virt_api.call(&ep, "default", "here", Request::State).await {
            Err(ClientError::Refused { refusal, .. }) => {
                assert_eq!(refusal.reason, Reason::BadRequest, "{refusal:?}")
            }
            other => panic!("state: {:?}", other.map(|_| ())),
        }

        // Refused at the handshake: no certificate, another CA's, a node's (not virt-api).
        let other_dir = tmp.path().join("other-ca");
        std::fs::create_dir_all(&other_dir).expect("other ca dir");
        let other = ClusterCa::load_or_create(&other_dir)
            .expect("other CA")
            .issue(&Identity::VirtApi)
            .expect("other cert");
        for (what, c) in [
            ("no certificate", client_with(ca.cert_pem(), None)),
            ("another CA", client_with(ca.cert_pem(), Some(&other))),
            (
                "a node's certificate",
                client_with(ca.cert_pem(), Some(&node_cert)),
            ),
        ] {
            match c.stream(&ep, "default", "here", StreamKind::Console).await {
                Err(ClientError::Protocol { detail, .. }) => {
                    assert!(
                        detail.contains("HTTP") || detail.contains("TLS"),
                        "{what}: {detail}"
                    )
                }
                Err(e) => panic!("{what}: not refused at the handshake: {e}"),
                Ok(_) => panic!("{what}: served"),
            }
        }
        // And virt-api refuses an endpoint whose certificate names another node.
        let wrong = HandlerEndpoint {
            node: "node02".into(),
            address: ep.address,
        };
        match virt_api
            .call(&wrong, "default", "here", Request::Pause)
            .await
        {
            Err(ClientError::Protocol { detail, .. }) => {
                assert!(detail.contains("TLS"), "{detail}")
            }
            other => panic!(
                "node02's name on node01's endpoint: {:?}",
                other.map(|_| ())
            ),
        }
        server.abort();
    }

    #[test]
    fn logs_queries_name_one_of_three_files_and_a_sane_count() {
        assert_eq!(
            LogsQuery::parse(""),
            Ok(LogsQuery {
                container: LogContainer::Launcher,
                tail_lines: None
            })
        );
        let q = LogsQuery::parse("container=serial&tailLines=20").expect("query");
        assert_eq!(
            (q.container, q.tail_lines),
            (LogContainer::Serial, Some(20))
        );
        assert_eq!(LogsQuery::parse(&q.to_query()), Ok(q));
        for bad in [
            "container=../../../etc/passwd",
            "container=qemu.log",
            "container=%2e%2e",
            "container=",
            "tailLines=-1",
            "tailLines=0",
            "tailLines=99999999999",
            "container=qemu&path=/etc/shadow",
            "follow=true",
        ] {
            assert!(LogsQuery::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_are_read_from_the_node_on_its_internal_ip() {
        let node = |ann: &str| -> Node {
            serde_json::from_value(json!({
                "metadata": {"name": "node02", "annotations": {ENDPOINT_ANNOTATION: ann}},
                "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.2"}]},
            }))
            .expect("node")
        };
        let ep = HandlerEndpoint::of_node(&node("127.0.0.2:8186")).expect("endpoint");
        assert_eq!(ep.address, "127.0.0.2:8186".parse().expect("addr"));
        assert_eq!(
            HandlerEndpoint::of_node(&node(
                ep.node_patch()["metadata"]["annotations"][ENDPOINT_ANNOTATION]
                    .as_str()
                    .expect("str")
            ))
            .expect("round trip"),
            ep
        );
        for bad in [
            "127.0.0.3:8186",
            "127.0.0.2:0",
            "127.0.0.2",
            "node02:8186",
            "",
        ] {
            assert!(HandlerEndpoint::of_node(&node(bad)).is_err(), "{bad}");
        }
        let bare: Node =
            serde_json::from_value(json!({"metadata": {"name": "node02"}})).expect("node");
        assert!(matches!(
            HandlerEndpoint::of_node(&bare),
            Err(EndpointError::Missing(_))
        ));
    }
}

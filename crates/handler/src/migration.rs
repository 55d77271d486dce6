//! The node agent's half of a live migration (KubeVirt's virt-handler migration source and
//! target controllers), driven by what virt-controller writes to the VMI's
//! `status.migrationState` and the `kubevirt.io/migrationTargetNodeName` label.
//!
//! - **Target** (the node the label names): starts the VMI's launcher with
//!   `--migration-target`, asks it to listen (`prepareMigrationTarget` on 127.0.0.1 inside
//!   the VMI's network namespace), and opens a proxy on this node's address that forwards each
//!   connection to it; publishes `targetNodeAddress` and `targetDirectMigrationNodePorts`
//!   (`{"<port>": 49152}`, KubeVirt's direct-migration port as the value). When its launcher
//!   reports the guest running (reason `Migrated`) it takes the VMI over in one write:
//!   `status.nodeName`, the `kubevirt.io/nodeName` label, the target label removed,
//!   `targetNodeDomainReadyTimestamp`, `completed`.
//! - **Source** (the VMI's node): once the target is ready, opens a proxy inside the VMI's
//!   network namespace (127.0.0.1) that forwards to the target's address, and has its launcher
//!   `migrate` there; mirrors the launcher's progress (`startTimestamp`, `mode`, and on failure
//!   `failed`, `abortStatus`, `failureReason`); cancels on `abortRequested`; when the source
//!   QEMU is done (Succeeded, reason `Migrated`) records `completed` and removes everything
//!   the VMI had on this node. It never reports the VMI's phase from then on: the target owns
//!   it.
//!
//! The launchers never talk across nodes and never listen on a node address: only the two
//! node agents do, which is where KubeVirt puts its migration proxy too. The hop between the
//! agents is mutual TLS with their node certificates ([`crate::tls`]): the target accepts
//! only the source node's certificate, the source requires the target node's; QEMU on either
//! side sees plain TCP on 127.0.0.1 in its namespace. The proxies live in
//! the agent's memory: an agent that restarts mid-migration drops the connections, the
//! source's QEMU fails the migration and keeps the guest, and the failure is reported as
//! usual (one running copy, at the source).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use kubevirt_api::status::label::{MIGRATION_TARGET_NODE_NAME, NODE_NAME};
use kubevirt_api::status::vmi_migration_state;
use kubevirt_api::VirtualMachineInstance;
use kubevirt_launcher::api::migration::{failure, reason as mreason, AbortStatus};
use kubevirt_launcher::api::{
    LauncherClient, MigrationOptions, MigrationStatus, Phase, Request, State, VmiDir,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::{launcher_state, now, release_network, remove_dir, vmi_dir, Context, Error, Prep};

/// KubeVirt's `LibvirtDirectMigrationPort`: the value `targetDirectMigrationNodePorts` gives
/// the proxy port that carries the guest's memory and device state.
pub const DIRECT_MIGRATION_PORT: i32 = 49152;
/// KubeVirt's `LibvirtBlockMigrationPort`: the value of the proxy port that carries the
/// copies of the VMI's local disks (the target launcher's NBD server).
pub const BLOCK_MIGRATION_PORT: i32 = 49153;

/// Completed or failed.
pub fn done(st: &Value) -> bool {
    st["completed"] == true || st["failed"] == true
}

/// The migration this node is the source of, not done yet.
pub fn as_source(vmi: &VirtualMachineInstance, node: &str) -> Option<Value> {
    let st = vmi_migration_state(vmi);
    (st["migrationUid"].as_str().is_some_and(|u| !u.is_empty())
        && st["sourceNode"] == node
        && !done(&st))
    .then_some(st)
}

/// A forwarding TCP proxy; dropping it closes its listener and every connection it carries.
pub struct Proxy {
    pub addr: SocketAddr,
    task: tokio::task::AbortHandle,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The proxies of the migrations this agent takes part in, by migration uid, and the
/// migrations whose target it removed here (the last [`ENDED_KEPT`]).
#[derive(Default)]
pub struct Proxies(
    Mutex<HashMap<String, Vec<Proxy>>>,
    Mutex<std::collections::VecDeque<String>>,
);

/// How many ended migration targets an agent remembers: far more than run at once.
const ENDED_KEPT: usize = 1024;

impl Proxies {
    /// The target of migration `uid` was removed here: it is never prepared again, even when
    /// a VMI seen afterwards predates the failure that ended it.
    pub(crate) fn end(&self, uid: &str) {
        let mut ended = self.1.lock().unwrap_or_else(|e| e.into_inner());
        if !ended.iter().any(|u| u == uid) {
            if ended.len() == ENDED_KEPT {
                ended.pop_front();
            }
            ended.push_back(uid.to_string());
        }
    }

    /// [`Proxies::end`] for the migration the target directory `dir` was made for, if it is
    /// one (an earlier migration's, when a new one clears it).
    pub(crate) fn end_target_of(&self, dir: &VmiDir) {
        if let Ok(made_for) = std::fs::read_to_string(dir.migration_target_marker()) {
            self.end(made_for.trim());
        }
    }

    fn ended(&self, uid: &str) -> bool {
        self.1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|u| u == uid)
    }

    fn add(&self, uid: &str, p: Proxy) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(uid.to_string())
            .or_default()
            .push(p);
    }

    fn has(&self, uid: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(uid)
    }

    fn close(&self, uid: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }
}

/// Runs `f` in the network namespace at `netns` (on a thread of its own, which enters it and
/// ends): a socket keeps the namespace it was made in, wherever it is used afterwards.
async fn in_netns<T: Send + 'static>(
    netns: Option<PathBuf>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(move || {
        if let Some(ns) = netns {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&ns)?;
            // SAFETY: setns on this thread only; the descriptor is open.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        f()
    })
    .await
    .map_err(io::Error::other)?
}

/// One side of a proxied connection: plain TCP next to QEMU, TLS between the agents.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
type IoFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<Box<dyn Io>>> + Send>>;

const PROXY_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the link between two node agents may be silent before a migration over it is
/// given up: keepalive probes after 20 s idle, every 10 s, 4 unanswered (60 s) end a link that
/// only receives; data unacknowledged for 60 s (`TCP_USER_TIMEOUT`, which on Linux also counts
/// a peer whose receive window stays shut) ends one that sends. The connection's end reaches
/// QEMU, which fails the migration and keeps the guest at the source, as libvirt's keepalive
/// ends a migration to an unresponsive peer. A shorter cut only delays it; a target that reads
/// nothing for a minute is not one to wait for.
pub const NODE_LINK_TIMEOUT: Duration = Duration::from_secs(60);

/// Keepalive and user timeout ([`NODE_LINK_TIMEOUT`]) on a node-to-node connection.
fn watch_link(tcp: &TcpStream) -> io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(20))
            .with_interval(Duration::from_secs(10))
            .with_retries(4),
    )?;
    sock.set_tcp_user_timeout(Some(NODE_LINK_TIMEOUT))
}

fn timed_out(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

/// Forwards every connection `listener` accepts (made into a stream by `accept`: the TLS
/// handshake at the target) to a stream `connect` opens, until dropped.
fn serve<A, C>(listener: TcpListener, accept: A, connect: C) -> tokio::task::AbortHandle
where
    A: Fn(TcpStream) -> IoFuture + Send + 'static,
    C: Fn() -> IoFuture + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (inbound, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "migration proxy: accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = inbound.set_nodelay(true);
            let inbound = accept(inbound);
            let out = connect();
            conns.spawn(async move {
                let mut inbound = match inbound.await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "migration proxy: refused a peer");
                        return;
                    }
                };
                match out.await {
                    Ok(mut out) => {
                        if let Err(e) = tokio::io::copy_bidirectional(&mut inbound, &mut out).await
                        {
                            tracing::debug!(%peer, error = %e, "migration proxy connection ended");
                        }
                    }
                    Err(e) => tracing::warn!(%peer, error = %e, "migration proxy: connecting"),
                }
            });
            while conns.try_join_next().is_some() {}
        }
    })
    .abort_handle()
}

/// The target's proxy: listens on `node_address` (any port), completes a TLS handshake with
/// `tls` (which accepts only the source node's certificate) and forwards each connection to
/// the launcher's `local` address inside `netns`.
pub async fn target_proxy(
    node_address: IpAddr,
    netns: Option<PathBuf>,
    local: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) -> io::Result<Proxy> {
    let listener = TcpListener::bind((node_address, 0)).await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let accept = move |tcp: TcpStream| -> IoFuture {
        let acceptor = acceptor.clone();
        Box::pin(async move {
            watch_link(&tcp)?;
            let s = tokio::time::timeout(PROXY_CONNECT_TIMEOUT, acceptor.accept(tcp))
                .await
                .map_err(|_| timed_out("the TLS handshake".into()))??;
            Ok(Box::new(s) as Box<dyn Io>)
        })
    };
    let task = serve(listener, accept, move || -> IoFuture {
        let ns = netns.clone();
        Box::pin(async move {
            let s = in_netns(ns, move || {
                let s = std::net::TcpStream::connect_timeout(&local, PROXY_CONNECT_TIMEOUT)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .await?;
            Ok(Box::new(TcpStream::from_std(s)?) as Box<dyn Io>)
        })
    });
    Ok(Proxy { addr, task })
}

/// The source's proxy: listens on 127.0.0.1 inside `netns` (where the source launcher's QEMU
/// connects to it) and forwards each connection over TLS (`tls`, this node's certificate) to
/// the target node's `remote` address, whose certificate must name `target_node`.
pub async fn source_proxy(
    netns: Option<PathBuf>,
    remote: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    target_node: &str,
) -> io::Result<Proxy> {
    let name = rustls_pki_types::ServerName::try_from(target_node.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("node {target_node:?}: {e}"),
        )
    })?;
    let l = in_netns(netns, || {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .await?;
    let listener = TcpListener::from_std(l)?;
    let addr = listener.local_addr()?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let accept =
        |tcp: TcpStream| -> IoFuture { Box::pin(async move { Ok(Box::new(tcp) as Box<dyn Io>) }) };
    let task = serve(listener, accept, move || -> IoFuture {
        let (connector, name) = (connector.clone(), name.clone());
        Box::pin(async move {
            let tcp = tokio::time::timeout(PROXY_CONNECT_TIMEOUT, TcpStream::connect(remote))
                .await
                .map_err(|_| timed_out(format!("connecting to {remote}")))??;
            let _ = tcp.set_nodelay(true);
            watch_link(&tcp)?;
            let s = tokio::time::timeout(PROXY_CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| timed_out(format!("the TLS handshake with {remote}")))??;
            Ok(Box::new(s) as Box<dyn Io>)
        })
    });
    Ok(Proxy { addr, task })
}

/// The network namespace the VMI's launcher lives in (`None`: the agent's own).
fn netns_of(dir: &VmiDir) -> Option<PathBuf> {
    dir.read_network().ok().flatten().map(|n| n.netns)
}

/// The target's address for the guest's state, from `targetNodeAddress` and
/// `targetDirectMigrationNodePorts`.
pub fn target_address(st: &Value) -> Option<SocketAddr> {
    target_port(st, DIRECT_MIGRATION_PORT)
}

/// The target's address for the copies of local disks, when it serves them.
pub fn block_address(st: &Value) -> Option<SocketAddr> {
    target_port(st, BLOCK_MIGRATION_PORT)
}

fn target_port(st: &Value, role: i32) -> Option<SocketAddr> {
    let ip: IpAddr = st["targetNodeAddress"].as_str()?.parse().ok()?;
    let port = st["targetDirectMigrationNodePorts"]
        .as_object()?
        .iter()
        .find(|(_, v)| v.as_i64() == Some(i64::from(role)))
        .and_then(|(k, _)| k.parse::<u16>().ok())
        .filter(|p| *p != 0)?;
    Some(SocketAddr::new(ip, port))
}

fn options(st: &Value) -> Result<MigrationOptions, String> {
    MigrationOptions::from_configuration(&st["migrationConfiguration"])
}

async fn patch_state(ctx: &Context, vmi: &VirtualMachineInstance, st: Value) -> Result<(), Error> {
    let api: Api<VirtualMachineInstance> =
        Api::namespaced(ctx.client.clone(), &vmi.namespace().unwrap_or_default());
    let patch = json!({"status": {"migrationState": st}});
    api.patch(
        &vmi.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// The migration state fields a failure sets.
fn failed(why: &str, abort: Option<AbortStatus>) -> Value {
    let mut v =
        json!({"failed": true, "completed": true, "endTimestamp": now(), "failureReason": why});
    if let Some(a) = abort {
        v["abortStatus"] = json!(a);
    }
    v
}

fn epoch_to_rfc3339(t: f64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(t as i64)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| now())
}

/// Whether the launcher's migration is the one the VMI's state names: started (by this
/// agent) no earlier than `startTimestamp`.
fn is_current(m: &MigrationStatus, st: &Value) -> bool {
    let Some(started) = st["startTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
    else {
        return false;
    };
    m.start_timestamp as i64 >= started.as_second()
}

/// The source's part, called from the VMI's reconcile on its node while `st` (not done)
/// names this node as the source. `Some(action)` ends the reconcile there: the VMI's status
/// is not the source's to write any more (or not now).
pub(crate) async fn source(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    dir: &VmiDir,
    s: &State,
    st: &Value,
) -> Result<Option<Action>, Error> {
    let name = vmi.name_any();
    let uid = st["migrationUid"].as_str().unwrap_or_default().to_string();
    let current = s.migration.as_ref().filter(|m| is_current(m, st));
    // The guest left: record it, and remove what the VMI had here.
    if s.phase == Phase::Succeeded && s.reason == mreason::MIGRATED {
        let end = current
            .and_then(|m| m.end_timestamp)
            .map(epoch_to_rfc3339)
            .unwrap_or_else(now);
        patch_state(
            ctx,
            vmi,
            json!({"completed": true, "endTimestamp": end, "mode": current.map(|m| m.mode)}),
        )
        .await?;
        ctx.migrations.close(&uid);
        tracing::info!(vmi = %name, target = %st["targetNode"], "the guest migrated away; cleaning up");
        release_network(ctx, vmi).await;

        if let Err(e) = remove_dir(ctx, dir).await {
            tracing::warn!(vmi = %name, error = %e, "cannot remove the migrated VMI's directory");
        }
        return Ok(Some(Action::await_change()));
    }
    if s.phase.is_final() {
        // The source's guest ended otherwise: the VMI reports that, and the migration fails.
        patch_state(
            ctx,
            vmi,
            failed(&format!("the source VM ended: {}", s.message), None),
        )
        .await?;
        ctx.migrations.close(&uid);
        return Ok(None);
    }
    if let Some(m) = current {
        if m.failed {
            let why = if m.failure_reason.is_empty() {
                "the migration failed at the source".to_string()
            } else {
                m.failure_reason.clone()
            };
            let mut v = failed(&why, m.abort_status);
            if let Some(e) = m.end_timestamp {
                v["endTimestamp"] = json!(epoch_to_rfc3339(e));
            }
            patch_state(ctx, vmi, v).await?;
            ctx.migrations.close(&uid);
            ctx.event(
                vmi,
                EventType::Warning,
                "Migrated",
                format!("VirtualMachineInstance migration uid {uid} failed. reason:{why}"),
            )
            .await;
            return Ok(None);
        }
        if st["abortRequested"] == true && m.abort_status.is_none() {
            let asked = async {
                LauncherClient::connect(dir)
                    .await?
                    .call(Request::CancelMigration)
                    .await
            };
            match asked.await {
                Ok(_) => {
                    patch_state(ctx, vmi, json!({"abortStatus": AbortStatus::Aborting})).await?
                }
                Err(e) => tracing::warn!(vmi = %name, error = %e, "cancelling the migration"),
            }
        }
        let mode = serde_json::to_value(m.mode).unwrap_or(Value::Null);
        if st["mode"] != mode {
            patch_state(ctx, vmi, json!({"mode": mode})).await?;
        }
        return Ok(None);
    }
    if st["abortRequested"] == true {
        // Cancelled before it started here: nothing to stop.
        patch_state(
            ctx,
            vmi,
            failed(failure::ABORTED, Some(AbortStatus::Succeeded)),
        )
        .await?;
        return Ok(None);
    }
    if !st["startTimestamp"].is_null() {
        // Started by an agent that is gone (its proxy with it), or the launcher's state
        // is not there yet: the launcher's own status decides at the next look.
        if !ctx.migrations.has(&uid) {
            let asked = async {
                LauncherClient::connect(dir)
                    .await?
                    .call(Request::MigrationStatus)
                    .await
            };
            if asked.await.is_err() {
                patch_state(
                    ctx,
                    vmi,
                    failed(
                        "the source node's agent restarted during the migration",
                        None,
                    ),
                )
                .await?;
            }
        }
        return Ok(None);
    }
    let Some(remote) = target_address(st) else {
        return Ok(None); // the target is not ready yet
    };
    // VMIs have no status subresource: whoever may update the VMI could write an address.
    // The guest goes only to an address the target Node itself reports.
    let node = st["targetNode"].as_str().unwrap_or_default();
    if !node_has_address(ctx, node, remote.ip()).await? {
        let why = format!(
            "targetNodeAddress {} is not an address of node {node:?}",
            remote.ip()
        );
        tracing::warn!(vmi = %name, %why, "refusing to migrate");
        patch_state(ctx, vmi, failed(&why, None)).await?;
        return Ok(None);
    }
    if !matches!(s.phase, Phase::Running | Phase::Paused) {
        return Ok(None);
    }
    let opts = match options(st) {
        Ok(o) => o,
        Err(why) => {
            patch_state(ctx, vmi, failed(&why, None)).await?;
            return Ok(None);
        }
    };
    let tls = match ctx.node_tls.client_config() {
        Ok(t) => t,
        Err(e) => {
            patch_state(
                ctx,
                vmi,
                failed(&format!("this node's certificate: {e}"), None),
            )
            .await?;
            return Ok(None);
        }
    };
    let proxy = match source_proxy(netns_of(dir), remote, tls.clone(), node).await {
        Ok(p) => p,
        Err(e) => {
            patch_state(
                ctx,
                vmi,
                failed(&format!("opening the migration proxy: {e}"), None),
            )
            .await?;
            return Ok(None);
        }
    };
    let local = proxy.addr;
    ctx.migrations.add(&uid, proxy);
    // The copies of local disks take a proxy of their own, to the target's NBD server.
    let block_local = match block_address(st) {
        None => None,
        Some(remote) => match source_proxy(netns_of(dir), remote, tls, node).await {
            Ok(p) => {
                let a = p.addr;
                ctx.migrations.add(&uid, p);
                Some(a)
            }
            Err(e) => {
                ctx.migrations.close(&uid);
                let why = format!("opening the block migration proxy: {e}");
                patch_state(ctx, vmi, failed(&why, None)).await?;
                return Ok(None);
            }
        },
    };
    let started = now();
    // Recorded before the launcher starts, so the launcher's migration is recognised as this
    // one (its start is no earlier).
    patch_state(ctx, vmi, json!({"startTimestamp": started})).await?;
    let req = Request::Migrate {
        target: local,
        block_target: block_local,
        options: opts,
    };
    let asked = async { LauncherClient::connect(dir).await?.call(req).await };
    match asked.await {
        Ok(_) => {
            tracing::info!(vmi = %name, %remote, target = %st["targetNode"], "migration started");
            ctx.event(
                vmi,
                EventType::Normal,
                "Migrating",
                format!(
                    "VirtualMachineInstance is migrating to node {}",
                    st["targetNode"].as_str().unwrap_or_default()
                ),
            )
            .await;
        }
        Err(e) => {
            ctx.migrations.close(&uid);
            patch_state(
                ctx,
                vmi,
                failed(
                    &format!("the source launcher refused to migrate: {e}"),
                    None,
                ),
            )
            .await?;
        }
    }
    Ok(None)
}

/// Whether the Node `name` reports `ip` among its `status.addresses` (the handler of that node
/// writes them from `--node-address`).
async fn node_has_address(ctx: &Context, name: &str, ip: IpAddr) -> Result<bool, Error> {
    if name.is_empty() {
        return Ok(false);
    }
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(ctx.client.clone());
    let Some(node) = nodes.get_opt(name).await? else {
        return Ok(false);
    };
    Ok(node
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .iter()
        .any(|a| a.address.parse::<IpAddr>().ok() == Some(ip)))
}

/// The target's reconcile: VMIs labelled `kubevirt.io/migrationTargetNodeName=<this node>`.
pub(crate) async fn reconcile_target(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let me = ctx.config.node_name.as_str();
    let ns = vmi.namespace().unwrap_or_default();
    let name = vmi.name_any();
    let st = vmi_migration_state(&vmi);
    let uid = st["migrationUid"].as_str().unwrap_or_default().to_string();
    if st["targetNode"] != me || uid.is_empty() {
        return Ok(Action::await_change());
    }
    let on_me = vmi.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(me);
    if on_me {
        // Taken over: the VMI's own reconcile runs it from here.
        return Ok(Action::await_change());
    }
    let dir = match vmi_dir(&ctx.config, &ns, &name) {
        Ok(d) => d,
        Err(e) => {
            patch_state(
                &ctx,
                &vmi,
                failed(&format!("no directory for the target: {e}"), None),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    let _dirs = ctx.dirs.read().await;
    if let Some(old) = dir.owner().filter(|o| Some(&o.uid) != vmi.uid().as_ref()) {
        tracing::info!(vmi = %name, old_uid = %old.uid, "removing an earlier VMI's directory before a migration target");
        crate::release_network_of(&ctx, &old.uid).await;
        let _ = remove_dir(&ctx, &dir).await;
    }
    // A target left by an earlier migration of this VMI (its cleanup not done yet) is not
    // this migration's: it goes first.
    let made_for = std::fs::read_to_string(dir.migration_target_marker()).ok();
    if made_for.as_deref().is_some_and(|u| u != uid) {
        drop(_dirs);
        cleanup_target(&ctx, &vmi, &dir, &uid).await;
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let state = launcher_state(&dir).await;
    let has_guest = state
        .as_ref()
        .is_some_and(|s| matches!(s.phase, Phase::Running | Phase::Paused));
    if (done(&st) && st["failed"] == true && !has_guest)
        || vmi.metadata.deletion_timestamp.is_some()
    {
        // Nothing comes any more: stop the target and remove it.
        drop(_dirs);
        cleanup_target(&ctx, &vmi, &dir, &uid).await;
        return Ok(Action::await_change());
    }
    if st["failed"] == true && has_guest {
        // Declared failed by someone who could not see this side (virt-controller after the
        // source's agent went silent), but the incoming migration completed: the guest runs
        // here and the source's QEMU gave it up. Removing this copy would leave none; it is
        // taken over below like any finished migration.
        tracing::warn!(vmi = %name, %ns, reason = %st["failureReason"], "a migration declared failed completed on this node: keeping the guest");
    }
    match state {
        None if !dir.spawned_marker().exists() => {
            // A target this agent removed already: a VMI seen late (from before the failure
            // that ended it) does not start another.
            if done(&st) || ctx.migrations.ended(&uid) {
                return Ok(Action::await_change());
            }
            if let Err(e) = std::fs::create_dir_all(dir.path())
                .and_then(|()| std::fs::write(dir.migration_target_marker(), &uid))
            {
                tracing::warn!(vmi = %name, error = %e, "marking the migration target's directory");
            }
            match crate::prepare_launcher(&ctx, &vmi, &dir, true).await? {
                Prep::Spawned => {
                    tracing::info!(vmi = %name, %ns, "migration target launcher started");
                    Ok(Action::requeue(Duration::from_secs(1)))
                }
                Prep::WaitVolumes(why) | Prep::WaitSecrets(why) | Prep::WaitNetworks(why) => {
                    tracing::info!(vmi = %name, %why, "migration target waiting");
                    Ok(Action::requeue(Duration::from_secs(2)))
                }
                Prep::Fail(why) => {
                    patch_state(
                        &ctx,
                        &vmi,
                        failed(&format!("the target cannot run here: {why}"), None),
                    )
                    .await?;
                    Ok(Action::await_change())
                }
            }
        }
        None => Ok(Action::requeue(Duration::from_secs(1))),
        Some(s) if s.phase == Phase::WaitingForMigration => {
            ctx.followers.follow(&dir, &vmi);
            // Prepared by this agent already (the VMI seen here may predate its address).
            if ctx.migrations.has(&uid) {
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
            if !st["targetNodeAddress"].is_null() {
                // Published by an agent that is gone, with its proxy: nothing arrives.
                drop(_dirs);
                let why = "the target node's agent restarted during the migration";
                patch_state(&ctx, &vmi, failed(why, None)).await?;
                cleanup_target(&ctx, &vmi, &dir, &uid).await;
                return Ok(Action::await_change());
            }
            let opts = match options(&st) {
                Ok(o) => o,
                Err(why) => {
                    patch_state(&ctx, &vmi, failed(&why, None)).await?;
                    return Ok(Action::await_change());
                }
            };
            let req = Request::PrepareMigrationTarget {
                listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
                options: opts,
            };
            let asked = async { LauncherClient::connect(&dir).await?.call(req).await };
            let (local, block_local) = match asked.await {
                Ok(r) => r
                    .into_migration()
                    .map(|m| (m.address, m.block_address))
                    .unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(vmi = %name, error = %e, "prepareMigrationTarget");
                    (None, None)
                }
            };
            let Some(local) = local else {
                drop(_dirs);
                patch_state(
                    &ctx,
                    &vmi,
                    failed("the target launcher did not listen for the migration", None),
                )
                .await?;
                cleanup_target(&ctx, &vmi, &dir, &uid).await;
                return Ok(Action::await_change());
            };
            // Only the source node's agent may connect (its node certificate).
            let source_node = st["sourceNode"].as_str().unwrap_or_default();
            let tls = match ctx.node_tls.server_config(&[source_node]) {
                Ok(t) => t,
                Err(e) => {
                    drop(_dirs);
                    let why = format!("the migration proxy's TLS for {source_node:?}: {e}");
                    patch_state(&ctx, &vmi, failed(&why, None)).await?;
                    cleanup_target(&ctx, &vmi, &dir, &uid).await;
                    return Ok(Action::await_change());
                }
            };
            let proxy =
                match target_proxy(ctx.config.node_address, netns_of(&dir), local, tls.clone())
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        drop(_dirs);
                        patch_state(
                            &ctx,
                            &vmi,
                            failed(
                                &format!(
                                    "opening the migration proxy on {}: {e}",
                                    ctx.config.node_address
                                ),
                                None,
                            ),
                        )
                        .await?;
                        cleanup_target(&ctx, &vmi, &dir, &uid).await;
                        return Ok(Action::await_change());
                    }
                };
            let port = proxy.addr.port();
            ctx.migrations.add(&uid, proxy);
            let mut ports = json!({port.to_string(): DIRECT_MIGRATION_PORT});
            if let Some(block) = block_local {
                match target_proxy(ctx.config.node_address, netns_of(&dir), block, tls).await {
                    Ok(p) => {
                        ports[p.addr.port().to_string()] = json!(BLOCK_MIGRATION_PORT);
                        ctx.migrations.add(&uid, p);
                    }
                    Err(e) => {
                        drop(_dirs);
                        let why = format!(
                            "opening the block migration proxy on {}: {e}",
                            ctx.config.node_address
                        );
                        patch_state(&ctx, &vmi, failed(&why, None)).await?;
                        cleanup_target(&ctx, &vmi, &dir, &uid).await;
                        return Ok(Action::await_change());
                    }
                }
            }
            patch_state(
                &ctx,
                &vmi,
                json!({
                    "targetNodeAddress": ctx.config.node_address.to_string(),
                    "targetDirectMigrationNodePorts": ports,
                    "targetNodeDomainDetected": false,
                }),
            )
            .await?;
            tracing::info!(vmi = %name, address = %ctx.config.node_address, port, "migration target ready");
            Ok(Action::requeue(Duration::from_secs(5)))
        }
        Some(s) if matches!(s.phase, Phase::Running | Phase::Paused) => {
            // The guest runs here now: take the VMI over.
            ctx.migrations.close(&uid);
            let current = serde_json::to_value(&vmi.status).unwrap_or(Value::Null);
            let mut status = crate::status::from_launcher(&s, &current, &now());
            status["nodeName"] = json!(me);
            status["evacuationNodeName"] = Value::Null;
            let mut mst = json!({"targetNodeDomainDetected": true,
                "targetNodeDomainReadyTimestamp": now(), "completed": true,
                "failed": null, "failureReason": null});
            if st["endTimestamp"].is_null() {
                mst["endTimestamp"] = json!(now());
            }
            status["migrationState"] = mst;
            let patch = json!({
                "metadata": {"labels": {NODE_NAME: me, MIGRATION_TARGET_NODE_NAME: null}},
                "status": status,
            });
            // The volumes that came along are this node's before the VMI is.
            crate::local_volumes::pin_here(&ctx.client, &dir, me).await?;
            let api: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            tracing::info!(vmi = %name, %ns, node = %me, "the VMI migrated to this node");
            ctx.event(
                &vmi,
                EventType::Normal,
                "Migrated",
                format!("The VirtualMachineInstance migrated to node {me}."),
            )
            .await;
            Ok(Action::await_change())
        }
        Some(s) => {
            // The target ended without the guest (its incoming migration failed, or it could
            // not start).
            let why = if s.reason == mreason::MIGRATION_FAILED {
                format!("the target's incoming migration failed: {}", s.message)
            } else {
                format!("the target launcher ended ({}): {}", s.reason, s.message)
            };
            drop(_dirs);
            // Once the source started, its QEMU sees the stream end and the source reports
            // the outcome (a cancel's abort status included); before, only this side knows.
            if !done(&st) && st["startTimestamp"].is_null() {
                patch_state(&ctx, &vmi, failed(&why, None)).await?;
            } else {
                tracing::info!(vmi = %name, %why, "the migration target ended");
            }
            cleanup_target(&ctx, &vmi, &dir, &uid).await;
            Ok(Action::await_change())
        }
    }
}

/// Stops a target that will not get the guest and removes everything it had here. Never
/// called once the VMI runs on this node.
async fn cleanup_target(ctx: &Context, vmi: &VirtualMachineInstance, dir: &VmiDir, uid: &str) {
    ctx.migrations.close(uid);
    // The migration the directory was made for (an earlier one's, when a new one clears it).
    ctx.migrations.end_target_of(dir);
    if !dir.path().exists() {
        return;
    }
    tracing::info!(vmi = %vmi.name_any(), "removing the migration target");
    let stopped = async {
        LauncherClient::connect(dir)
            .await?
            .call(Request::Stop)
            .await
    };
    if let Err(e) = stopped.await {
        tracing::debug!(error = %e, "stopping the target launcher");
    }
    release_network(ctx, vmi).await;
    crate::local_volumes::remove_incoming(
        &ctx.client,
        &ctx.config.host_paths,
        dir,
        &ctx.config.node_name,
    )
    .await;
    let _dirs = ctx.dirs.read().await;
    if let Err(e) = remove_dir(ctx, dir).await {
        tracing::warn!(vmi = %vmi.name_any(), error = %e, "cannot remove the migration target's directory");
    }
}

/// KubeVirt's annotation that lets a VMI with a bridge on the pod network migrate.
pub const ALLOW_POD_BRIDGE_MIGRATION: &str = "kubevirt.io/allow-pod-bridge-network-live-migration";

/// Whether the VMI can be live-migrated, KubeVirt's `LiveMigratable` condition: `Ok(())`, or
/// the reason and message of the first rule that refuses it, in KubeVirt's order.
/// `pvc_modes` gives each claim's access modes (a claim missing from it is not known to be
/// shared); `gates` the cluster's feature gates.
pub fn live_migratable(
    vmi: &VirtualMachineInstance,
    claims: &Claims,
    local: &std::collections::BTreeSet<String>,
    gates: &[String],
) -> Result<(), (&'static str, String)> {
    let pvc_modes = &claims.modes;
    use kubevirt_api::status::reason;
    let spec = &vmi.spec;
    let ifaces = spec
        .domain
        .devices
        .interfaces
        .as_deref()
        .unwrap_or_default();
    let pod = spec
        .networks
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|n| n.pod.is_some());
    if let (false, Some(pod)) = (ifaces.is_empty(), pod) {
        let ok = match ifaces.iter().find(|i| i.name == pod.name) {
            None => {
                return Err((
                    reason::INTERFACE_NOT_MIGRATABLE,
                    format!("no primary interface found for network {}", pod.name),
                ))
            }
            Some(i) if i.masquerade.is_some() || i.passt_binding.is_some() => true,
            Some(i) if i.bridge.is_some() => vmi
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(ALLOW_POD_BRIDGE_MIGRATION)),
            Some(_) => false,
        };
        if !ok {
            return Err((
                reason::INTERFACE_NOT_MIGRATABLE,
                "cannot migrate VMI which does not use masquerade or a migratable plugin to connect to the pod network".into(),
            ));
        }
    }
    let devices = &spec.domain.devices;
    if devices.host_devices.as_ref().is_some_and(|d| !d.is_empty()) {
        return Err((
            reason::HOST_DEVICE_NOT_MIGRATABLE,
            "VMI specifies non-migratable generic PCI host device".into(),
        ));
    }
    let gpus = devices.gpus.as_deref().unwrap_or_default();
    if gpus.len() > 1 {
        return Err((
            reason::HOST_DEVICE_NOT_MIGRATABLE,
            "VMI specifies too many GPUs".into(),
        ));
    }
    if gpus.len() == 1 {
        let msg = if gates.iter().any(|g| g == "VGPULiveMigration") {
            "VMI specifies non-migratable GPU device".to_string()
        } else {
            "VMI specifies a GPU but feature gate VGPULiveMigration is not enabled".to_string()
        };
        return Err((reason::HOST_DEVICE_NOT_MIGRATABLE, msg));
    }
    if spec
        .domain
        .launch_security
        .as_ref()
        .is_some_and(|l| l.sev.is_some())
    {
        return Err((reason::SEV_NOT_MIGRATABLE, "VMI uses SEV".into()));
    }
    if spec
        .domain
        .features
        .as_ref()
        .and_then(|f| f.hyperv_passthrough.as_ref())
        .is_some_and(|h| h.enabled == Some(true))
    {
        return Err((
            reason::HYPERV_PASSTHROUGH_NOT_MIGRATABLE,
            "VMI uses hyperv passthrough".into(),
        ));
    }
    for v in spec.volumes.as_deref().unwrap_or_default() {
        let claim = v
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.clone())
            .or_else(|| v.data_volume.as_ref().map(|d| d.name.clone()));
        if let Some(claim) = claim {
            let Some(modes) = pvc_modes.get(&claim) else {
                return Err((reason::DISKS_NOT_MIGRATABLE, format!(
                    "cannot migrate VMI: Unable to determine if PVC {claim} is shared, live migration requires that all PVCs must be shared (using ReadWriteMany access mode)")));
            };
            if claims.shared.contains(&claim) {
                return Err((reason::DISKS_NOT_MIGRATABLE, format!(
                    "cannot migrate VMI: PVC {claim} is a local volume of this node that another VMI here uses too: it cannot move with one of them")));
            }
            // A local-path volume of this node is copied by the migration (beyond KubeVirt), if
            // its launcher was told so when it started.
            if claims.here.contains(&claim) && !local.contains(&claim) {
                return Err((reason::DISKS_NOT_MIGRATABLE, format!(
                    "cannot migrate VMI: PVC {claim} is a local volume of this node that its launcher does not copy (started before volumes could move): restart the VM to make it migratable")));
            }
            if !modes.iter().any(|m| m == "ReadWriteMany") && !local.contains(&claim) {
                return Err((reason::DISKS_NOT_MIGRATABLE, format!(
                    "cannot migrate VMI: PVC {claim} is not shared, live migration requires that all PVCs must be shared (using ReadWriteMany access mode)")));
            }
        } else if let Some(hd) = &v.host_disk {
            if hd.shared != Some(true) {
                return Err((
                    reason::DISKS_NOT_MIGRATABLE,
                    "cannot migrate VMI with non-shared HostDisk".into(),
                ));
            }
        }
    }
    Ok(())
}

/// What LiveMigratable needs to know of the VMI's claims.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    /// Each readable claim's access modes.
    pub modes: std::collections::BTreeMap<String, Vec<String>>,
    /// The claims whose volume is a local-path volume of this node.
    pub here: std::collections::BTreeSet<String>,
    /// The node-local claims another VMI of this node uses too: they cannot move with one.
    pub shared: std::collections::BTreeSet<String>,
}

/// The claims the VMI's PVC and DataVolume volumes name (a DataVolume's claim has its name):
/// their access modes, and which are local-path volumes pinned to `node`; a claim that cannot
/// be read is left out.
pub async fn claim_modes(
    client: &kube::Client,
    vmi: &VirtualMachineInstance,
    node: &str,
    local: &std::collections::BTreeSet<String>,
) -> Claims {
    let ns = vmi.namespace().unwrap_or_default();
    let api: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), &ns);
    let pvs: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(client.clone());
    let mut out = Claims::default();
    for v in vmi.spec.volumes.as_deref().unwrap_or_default() {
        let claim = v
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.clone())
            .or_else(|| v.data_volume.as_ref().map(|d| d.name.clone()));
        let Some(claim) = claim else { continue };
        if let Ok(Some(pvc)) = api.get_opt(&claim).await {
            let modes = pvc
                .spec
                .as_ref()
                .and_then(|s| s.access_modes.clone())
                .unwrap_or_default();
            // Only a claim that would otherwise keep the VMI here is looked at further.
            let shared = modes.iter().any(|m| m == "ReadWriteMany");
            let volume = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .filter(|_| !shared && !local.contains(&claim));
            if let Some(Ok(Some(pv))) = match volume {
                Some(n) if kubevirt_api::names::dns1123_subdomain(&n).is_none() => {
                    Some(pvs.get_opt(&n).await)
                }
                _ => None,
            } {
                if crate::local_volumes::movable_from(&pv, &pvc, node) {
                    out.here.insert(claim.clone());
                }
            }
            out.modes.insert(claim, modes);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(modes: &std::collections::BTreeMap<String, Vec<String>>) -> Claims {
        Claims {
            modes: modes.clone(),
            here: Default::default(),
            shared: Default::default(),
        }
    }

    fn vmi_of(v: Value) -> VirtualMachineInstance {
        let mut base = json!({"metadata": {"name": "v"}, "spec": {"domain": {"devices": {}}}});
        if let (Some(b), Some(o)) = (base.as_object_mut(), v.as_object()) {
            for (k, val) in o {
                b.insert(k.clone(), val.clone());
            }
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn live_migratable_follows_kubevirts_rules_and_messages() {
        use std::collections::BTreeMap;
        let none = BTreeMap::new();
        let ok = |v: Value| live_migratable(&vmi_of(v), &claims(&none), &Default::default(), &[]);
        assert_eq!(ok(json!({})), Ok(()));
        let pod = |iface: Value| {
            json!({"spec": {"domain": {"devices": {"interfaces": [iface]}},
            "networks": [{"name": "default", "pod": {}}]}})
        };
        assert_eq!(
            ok(pod(json!({"name": "default", "masquerade": {}}))),
            Ok(())
        );
        let bridge = ok(pod(json!({"name": "default", "bridge": {}}))).unwrap_err();
        assert_eq!(bridge.0, "InterfaceNotLiveMigratable");
        assert_eq!(bridge.1, "cannot migrate VMI which does not use masquerade or a migratable plugin to connect to the pod network");
        let mut allowed = pod(json!({"name": "default", "bridge": {}}));
        allowed["metadata"] = json!({"name": "v", "annotations": {ALLOW_POD_BRIDGE_MIGRATION: ""}});
        assert_eq!(ok(allowed), Ok(()));
        let e = ok(json!({"spec": {"domain": {"devices": {"hostDevices": [{"name": "h", "deviceName": "x"}]}}}})).unwrap_err();
        assert_eq!(e.0, "HostDeviceNotLiveMigratable");
        let pvc = json!({"spec": {"domain": {"devices": {}}, "volumes": [
            {"name": "d", "persistentVolumeClaim": {"claimName": "disk"}}]}});
        let e = ok(pvc.clone()).unwrap_err();
        assert_eq!(e.0, "DisksNotLiveMigratable");
        assert!(
            e.1.contains("Unable to determine if PVC disk is shared"),
            "{}",
            e.1
        );
        let rwo = BTreeMap::from([("disk".to_string(), vec!["ReadWriteOnce".to_string()])]);
        let e = live_migratable(
            &vmi_of(pvc.clone()),
            &claims(&rwo),
            &Default::default(),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.1, "cannot migrate VMI: PVC disk is not shared, live migration requires that all PVCs must be shared (using ReadWriteMany access mode)");
        let rwx = BTreeMap::from([("disk".to_string(), vec!["ReadWriteMany".to_string()])]);
        assert_eq!(
            live_migratable(
                &vmi_of(pvc.clone()),
                &claims(&rwx),
                &Default::default(),
                &[]
            ),
            Ok(())
        );
        // A local-path volume of this node: copied when its launcher was told so (beyond
        // KubeVirt), refused when it was started before that.
        let mut here = claims(&rwo);
        here.here.insert("disk".into());
        let copied = std::collections::BTreeSet::from(["disk".to_string()]);
        assert_eq!(
            live_migratable(&vmi_of(pvc.clone()), &here, &copied, &[]),
            Ok(())
        );
        let e = live_migratable(&vmi_of(pvc.clone()), &here, &Default::default(), &[]).unwrap_err();
        assert_eq!(e.0, "DisksNotLiveMigratable");
        assert!(e.1.contains("its launcher does not copy"), "{}", e.1);
        // Shared with another VMI of the node: refused whatever its access modes.
        let mut shared = claims(&rwx);
        shared.shared.insert("disk".into());
        let e = live_migratable(&vmi_of(pvc), &shared, &copied, &[]).unwrap_err();
        assert!(e.1.contains("another VMI here uses too"), "{}", e.1);
        let e = ok(json!({"spec": {"domain": {"devices": {}}, "volumes": [
            {"name": "h", "hostDisk": {"path": "/x", "type": "Disk"}}]}}))
        .unwrap_err();
        assert_eq!(e.1, "cannot migrate VMI with non-shared HostDisk");
        // containerDisks and cloud-init are the node's own: migratable.
        assert_eq!(
            ok(json!({"spec": {"domain": {"devices": {}}, "volumes": [
            {"name": "r", "containerDisk": {"image": "x"}},
            {"name": "c", "cloudInitNoCloud": {"userData": "#!/bin/sh"}}]}})),
            Ok(())
        );
    }

    #[test]
    fn the_target_address_comes_from_kubevirts_fields() {
        let st = json!({"targetNodeAddress": "10.0.0.2",
            "targetDirectMigrationNodePorts": {"40001": 49153, "40000": 49152}});
        assert_eq!(target_address(&st), Some("10.0.0.2:40000".parse().unwrap()));
        assert_eq!(block_address(&st), Some("10.0.0.2:40001".parse().unwrap()));
        let no_block = json!({"targetNodeAddress": "10.0.0.2",
            "targetDirectMigrationNodePorts": {"40000": 49152}});
        assert_eq!(block_address(&no_block), None);
        // Hostile or broken values give no address at all.
        for bad in [
            json!({"targetNodeAddress": "node02", "targetDirectMigrationNodePorts": {"40000": 49152}}),
            json!({"targetNodeAddress": "10.0.0.2:5", "targetDirectMigrationNodePorts": {"40000": 49152}}),
            json!({"targetNodeAddress": "10.0.0.2", "targetDirectMigrationNodePorts": {"0": 49152}}),
            json!({"targetNodeAddress": "10.0.0.2", "targetDirectMigrationNodePorts": {"70000": 49152}}),
            json!({"targetNodeAddress": "10.0.0.2", "targetDirectMigrationNodePorts": {"40000,x=y": 49152}}),
            json!({"targetNodeAddress": "10.0.0.2"}),
        ] {
            assert_eq!(target_address(&bad), None, "{bad}");
        }
    }

    #[test]
    fn only_a_migration_not_done_from_this_node_is_the_sources() {
        let vmi = |st: Value| -> VirtualMachineInstance {
            serde_json::from_value(
                json!({"metadata": {"name": "v"}, "spec": {"domain": {"devices": {}}},
                "status": {"migrationState": st}}),
            )
            .unwrap()
        };
        assert!(as_source(&vmi(json!({"migrationUid": "u", "sourceNode": "n1"})), "n1").is_some());
        assert!(as_source(&vmi(json!({"migrationUid": "u", "sourceNode": "n2"})), "n1").is_none());
        assert!(as_source(
            &vmi(json!({"migrationUid": "u", "sourceNode": "n1", "completed": true})),
            "n1"
        )
        .is_none());
        assert!(as_source(
            &vmi(json!({"migrationUid": "u", "sourceNode": "n1", "failed": true})),
            "n1"
        )
        .is_none());
        assert!(as_source(&vmi(json!({"sourceNode": "n1"})), "n1").is_none());
    }

    #[test]
    fn an_ended_target_is_remembered_and_the_oldest_forgotten_past_the_bound() {
        let p = Proxies::default();
        assert!(!p.ended("m1"));
        p.end("m1");
        p.end("m1");
        assert!(p.ended("m1") && !p.ended("m2"));
        for i in 0..ENDED_KEPT {
            p.end(&format!("n{i}"));
        }
        assert!(!p.ended("m1"), "the oldest is forgotten");
        assert!(p.ended("n0") && p.ended(&format!("n{}", ENDED_KEPT - 1)));
    }

    #[tokio::test]
    async fn the_proxies_carry_a_connection_end_to_end_and_close_when_dropped() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The "launcher" at the target.
        let launcher = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let laddr = launcher.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut c, _) = launcher.accept().await.unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).await.unwrap();
            c.write_all(&buf).await.unwrap();
        });
        // The two agents' certificates, from one cluster CA; a third node's too.
        let tmp = tempfile::tempdir().unwrap();
        let ca = crate::tls::ClusterCa::load_or_create(tmp.path()).unwrap();
        let cert = |name: &str| {
            ca.issue(&crate::tls::Identity::Node {
                name: name.into(),
                address: "127.0.0.1".parse().unwrap(),
            })
            .unwrap()
        };
        let (n1, n2, n3) = (cert("n1"), cert("n2"), cert("n3"));
        // n2 is the target, expecting n1 as the source.
        let target = target_proxy(
            "127.0.0.1".parse().unwrap(),
            None,
            laddr,
            n2.server_config(&["n1"]).unwrap(),
        )
        .await
        .unwrap();
        // Another node's agent, or a source expecting another target, gets nothing through.
        for (who, expects) in [(&n3, "n2"), (&n1, "n3")] {
            let wrong = source_proxy(None, target.addr, who.client_config().unwrap(), expects)
                .await
                .unwrap();
            let mut c = TcpStream::connect(wrong.addr).await.unwrap();
            let _ = c.write_all(b"guest").await;
            let mut buf = [0u8; 5];
            assert!(
                c.read_exact(&mut buf).await.is_err(),
                "{expects}: a wrong peer was proxied"
            );
        }
        let source = source_proxy(None, target.addr, n1.client_config().unwrap(), "n2")
            .await
            .unwrap();
        let mut c = TcpStream::connect(source.addr).await.unwrap();
        c.write_all(b"guest").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"guest");
        echo.await.unwrap();
        let addr = source.addr;
        drop(source);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "a dropped proxy stops listening"
        );
    }
}

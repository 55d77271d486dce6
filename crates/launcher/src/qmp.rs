//! A small typed asynchronous QMP client (tokio, unix socket).
//!
//! One reader task owns the read half: replies are matched to commands by `id`, events go to a
//! broadcast channel. When QEMU goes away every pending and later command fails at once with
//! [`QmpError::Disconnected`]; nothing waits for a reply that cannot come. Each command has a
//! timeout.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("QMP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP protocol: {0}")]
    Protocol(String),
    /// QEMU answered with an error.
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP {command}: no reply within {after:?}")]
    Timeout { command: String, after: Duration },
    /// The connection closed (QEMU exited or crashed) before the reply came.
    #[error("QMP {command}: QEMU closed the connection ({reason})")]
    Disconnected { command: String, reason: String },
}

/// An asynchronous QMP event, as QEMU sent it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QmpEvent {
    pub event: String,
    #[serde(default)]
    pub data: Value,
    /// Seconds since the epoch, from QEMU's timestamp.
    pub timestamp: f64,
}

/// The events the launcher acts on, typed.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// `guest: true` when the guest itself shut down; `reason`: guest-shutdown, host-qmp-quit,
    /// host-signal, host-qmp-system-reset, guest-reset, guest-panic, host-ui, ...
    Shutdown {
        guest: bool,
        reason: String,
    },
    Powerdown,
    Stop,
    Resume,
    Reset {
        guest: bool,
        reason: String,
    },
    BalloonChange {
        actual: u64,
    },
    Migration {
        status: String,
    },
    Watchdog {
        action: String,
    },
    GuestPanicked {
        action: String,
    },
    Other(String),
}

impl QmpEvent {
    pub fn typed(&self) -> Event {
        let s = |k: &str| {
            self.data
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let b = |k: &str| self.data.get(k).and_then(Value::as_bool).unwrap_or(false);
        match self.event.as_str() {
            "SHUTDOWN" => Event::Shutdown {
                guest: b("guest"),
                reason: s("reason"),
            },
            "POWERDOWN" => Event::Powerdown,
            "STOP" => Event::Stop,
            "RESUME" => Event::Resume,
            "RESET" => Event::Reset {
                guest: b("guest"),
                reason: s("reason"),
            },
            "BALLOON_CHANGE" => Event::BalloonChange {
                actual: self.data.get("actual").and_then(Value::as_u64).unwrap_or(0),
            },
            "MIGRATION" => Event::Migration {
                status: s("status"),
            },
            "WATCHDOG" => Event::Watchdog {
                action: s("action"),
            },
            "GUEST_PANICKED" => Event::GuestPanicked {
                action: s("action"),
            },
            e => Event::Other(e.to_string()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub running: bool,
    /// prelaunch, running, paused, shutdown, guest-panicked, ...
    pub status: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonInfo {
    pub actual: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfoFast {
    #[serde(rename = "cpu-index")]
    pub cpu_index: u32,
    #[serde(rename = "thread-id")]
    pub thread_id: i64,
    #[serde(rename = "qom-path", default)]
    pub qom_path: String,
}

/// Where a vCPU goes (`query-hotpluggable-cpus` `props`, `device_add` arguments).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuProps {
    #[serde(rename = "socket-id", default, skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<u32>,
    #[serde(rename = "core-id", default, skip_serializing_if = "Option::is_none")]
    pub core_id: Option<u32>,
    #[serde(rename = "thread-id", default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<u32>,
    #[serde(rename = "node-id", default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u32>,
}

/// One `query-hotpluggable-cpus` entry: a vCPU slot, plugged when it has a `qom-path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotpluggableCpu {
    /// The CPU device's QOM type, e.g. `max-x86_64-cpu`.
    pub r#type: String,
    #[serde(rename = "vcpus-count", default)]
    pub vcpus_count: u32,
    pub props: CpuProps,
    #[serde(rename = "qom-path", default)]
    pub qom_path: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDeviceStats {
    #[serde(default)]
    pub rd_bytes: u64,
    #[serde(default)]
    pub wr_bytes: u64,
    #[serde(default)]
    pub rd_operations: u64,
    #[serde(default)]
    pub wr_operations: u64,
    #[serde(default)]
    pub flush_operations: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStats {
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub qdev: String,
    pub stats: BlockDeviceStats,
}

/// `qom-get /machine/peripheral/balloon0 guest-stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestStats {
    #[serde(default)]
    pub stats: HashMap<String, i64>,
    #[serde(rename = "last-update", default)]
    pub last_update: i64,
}

type Reply = Result<Value, (String, String)>;

struct Shared {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set once the reader saw EOF or an error; the text says why.
    closed: Option<String>,
    next_id: u64,
}

/// A negotiated QMP session. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Qmp {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    shared: Arc<Mutex<Shared>>,
    events: broadcast::Sender<QmpEvent>,
    /// QEMU's version from the greeting, e.g. "7.2.19".
    pub version: String,
}

impl Qmp {
    /// Connect, read the greeting, spawn the reader and negotiate capabilities. The returned
    /// receiver sees every event from the start of the session.
    pub async fn connect(path: &Path) -> Result<(Qmp, broadcast::Receiver<QmpEvent>), QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout(DEFAULT_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| QmpError::Protocol("no greeting".into()))??
            .ok_or_else(|| QmpError::Protocol("connection closed before the greeting".into()))?;
        let g: Value = serde_json::from_str(&greeting)
            .map_err(|e| QmpError::Protocol(format!("bad greeting {greeting:?}: {e}")))?;
        let v = g
            .pointer("/QMP/version/qemu")
            .ok_or_else(|| QmpError::Protocol(format!("not a QMP greeting: {greeting}")))?;
        let version = format!(
            "{}.{}.{}",
            v["major"].as_u64().unwrap_or(0),
            v["minor"].as_u64().unwrap_or(0),
            v["micro"].as_u64().unwrap_or(0)
        );
        let (events, rx) = broadcast::channel(256);
        let shared = Arc::new(Mutex::new(Shared {
            pending: HashMap::new(),
            closed: None,
            next_id: 1,
        }));
        let qmp = Qmp {
            writer: Arc::new(tokio::sync::Mutex::new(write)),
            shared: shared.clone(),
            events: events.clone(),
            version,
        };
        tokio::spawn(async move {
            let reason = loop {
                match lines.next_line().await {
                    Ok(Some(line)) => dispatch(&line, &shared, &events),
                    Ok(None) => break "end of stream".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            let pending = {
                let mut s = lock(&shared);
                s.closed = Some(reason.clone());
                std::mem::take(&mut s.pending)
            };
            for (_, tx) in pending {
                let _ = tx.send(Err(("Disconnected".into(), reason.clone())));
            }
        });
        qmp.execute_value("qmp_capabilities", None, DEFAULT_TIMEOUT)
            .await?;
        Ok((qmp, rx))
    }

    /// Connect, retrying while the socket does not exist yet (QEMU still starting), until
    /// `deadline`; `alive` is asked between attempts so a QEMU that died is not waited for.
    pub async fn connect_retry(
        path: &Path,
        within: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Result<(Qmp, broadcast::Receiver<QmpEvent>), QmpError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match Qmp::connect(path).await {
                Ok(c) => return Ok(c),
                Err(QmpError::Connect { source, .. })
                    if tokio::time::Instant::now() < deadline && alive() =>
                {
                    let _ = source;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    /// Why the connection is closed, if it is.
    pub fn closed(&self) -> Option<String> {
        lock(&self.shared).closed.clone()
    }

    pub async fn execute_value(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_inner(command, arguments, timeout, None).await
    }

    async fn execute_inner(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut s = lock(&self.shared);
            if let Some(reason) = &s.closed {
                return Err(QmpError::Disconnected {
                    command: command.into(),
                    reason: reason.clone(),
                });
            }
            let id = s.next_id;
            s.next_id += 1;
            s.pending.insert(id, tx);
            id
        };
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let write = async {
            let mut w = self.writer.lock().await;
            let mut bytes = line.as_bytes();
            if let Some(fd) = fd {
                // The descriptor rides on the command's first bytes (SCM_RIGHTS), as QEMU's
                // monitor expects for `getfd`.
                let stream: &UnixStream = (*w).as_ref();
                let sent = loop {
                    stream.writable().await?;
                    match stream.try_io(tokio::io::Interest::WRITABLE, || {
                        send_with_fd(stream, bytes, fd)
                    }) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                };
                bytes = &bytes[sent..];
            }
            w.write_all(bytes).await
        };
        if let Err(e) = write.await {
            lock(&self.shared).pending.remove(&id);
            return Err(QmpError::Disconnected {
                command: command.into(),
                reason: e.to_string(),
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                lock(&self.shared).pending.remove(&id);
                Err(QmpError::Timeout {
                    command: command.into(),
                    after: timeout,
                })
            }
            Ok(Err(_)) => Err(QmpError::Disconnected {
                command: command.into(),
                reason: "reader stopped".into(),
            }),
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err((class, desc)))) if class == "Disconnected" => Err(QmpError::Disconnected {
                command: command.into(),
                reason: desc,
            }),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command {
                command: command.into(),
                class,
                desc,
            }),
        }
    }

    pub async fn execute<T: DeserializeOwned>(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        let v = self
            .execute_value(command, arguments, DEFAULT_TIMEOUT)
            .await?;
        serde_json::from_value(v)
            .map_err(|e| QmpError::Protocol(format!("{command}: unexpected reply: {e}")))
    }

    async fn unit(&self, command: &str, arguments: Option<Value>) -> Result<(), QmpError> {
        self.execute_value(command, arguments, DEFAULT_TIMEOUT)
            .await
            .map(|_| ())
    }

    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        self.execute("query-status", None).await
    }
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.unit("cont", None).await
    }
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.unit("stop", None).await
    }
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.unit("system_powerdown", None).await
    }
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.unit("system_reset", None).await
    }
    /// QEMU answers, then exits; a connection that closes first also counts as done.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.unit("quit", None).await {
            Err(QmpError::Disconnected { .. }) => Ok(()),
            r => r,
        }
    }
    pub async fn balloon(&self, bytes: u64) -> Result<(), QmpError> {
        self.unit("balloon", Some(json!({ "value": bytes }))).await
    }
    pub async fn query_balloon(&self) -> Result<BalloonInfo, QmpError> {
        self.execute("query-balloon", None).await
    }
    pub async fn qom_set(&self, path: &str, property: &str, value: Value) -> Result<(), QmpError> {
        self.unit(
            "qom-set",
            Some(json!({ "path": path, "property": property, "value": value })),
        )
        .await
    }
    pub async fn qom_get<T: DeserializeOwned>(
        &self,
        path: &str,
        property: &str,
    ) -> Result<T, QmpError> {
        self.execute(
            "qom-get",
            Some(json!({ "path": path, "property": property })),
        )
        .await
    }
    pub async fn query_blockstats(&self) -> Result<Vec<BlockStats>, QmpError> {
        self.execute("query-blockstats", None).await
    }
    pub async fn query_cpus_fast(&self) -> Result<Vec<CpuInfoFast>, QmpError> {
        self.execute("query-cpus-fast", None).await
    }
    pub async fn query_hotpluggable_cpus(&self) -> Result<Vec<HotpluggableCpu>, QmpError> {
        self.execute("query-hotpluggable-cpus", None).await
    }
    /// `device_add` of a vCPU into the slot `props` (QEMU's own type name and ids, as
    /// `query-hotpluggable-cpus` listed them), with the id `vcpu-s<socket>-c<core>-t<thread>`.
    pub async fn add_cpu(&self, driver: &str, props: &CpuProps) -> Result<(), QmpError> {
        let id = format!(
            "vcpu-s{}-c{}-t{}",
            props.socket_id.unwrap_or(0),
            props.core_id.unwrap_or(0),
            props.thread_id.unwrap_or(0)
        );
        let mut args = serde_json::to_value(props)
            .map_err(|e| QmpError::Protocol(format!("device_add: {e}")))?;
        if let Some(o) = args.as_object_mut() {
            o.insert("driver".into(), json!(driver));
            o.insert("id".into(), json!(id));
        }
        self.unit("device_add", Some(args)).await
    }
    pub async fn human_monitor_command(&self, line: &str) -> Result<String, QmpError> {
        self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": line })),
        )
        .await
    }
    /// `send-key` with QKeyCode names, e.g. `["ctrl", "alt", "delete"]`.
    pub async fn send_key(&self, keys: &[&str]) -> Result<(), QmpError> {
        let keys: Vec<Value> = keys
            .iter()
            .map(|k| json!({ "type": "qcode", "data": k }))
            .collect();
        self.unit("send-key", Some(json!({ "keys": keys }))).await
    }
}

/// `sendmsg` of `bytes` with one descriptor attached (`SCM_RIGHTS`).
fn send_with_fd(
    stream: &UnixStream,
    bytes: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; every pointer in it refers to a live local buffer of the
    // stated length for the duration of the call.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::c_int, raw);
        libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `query-migrate`'s RAM counters, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRamStats {
    #[serde(default)]
    pub transferred: u64,
    #[serde(default)]
    pub remaining: u64,
    #[serde(default)]
    pub total: u64,
}

/// One listening address of an incoming migration (`socket-address`): QMP's
/// `SocketAddress`, of which only `inet` is used here (`port` is a string in QMP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationSocketAddress {
    pub r#type: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: String,
}

/// `query-migrate`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationInfo {
    /// none, setup, active, postcopy-active, completed, failed, cancelling, cancelled, ...;
    /// absent before any migration.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub ram: Option<MigrationRamStats>,
    #[serde(rename = "error-desc", default)]
    pub error_desc: Option<String>,
    #[serde(rename = "socket-address", default)]
    pub socket_address: Vec<MigrationSocketAddress>,
    /// Milliseconds the guest was stopped at switch-over (source, once `completed`).
    #[serde(default)]
    pub downtime: Option<u64>,
    /// Milliseconds since the migration started (source; final once `completed`).
    #[serde(rename = "total-time", default)]
    pub total_time: Option<u64>,
}

/// Live migration (`migration.rs` builds the arguments).
impl Qmp {
    /// `migrate-set-capabilities` with `[{"capability":...,"state":...}]`.
    pub async fn migrate_set_capabilities(&self, capabilities: Value) -> Result<(), QmpError> {
        self.unit(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": capabilities })),
        )
        .await
    }
    pub async fn migrate_set_parameters(&self, parameters: Value) -> Result<(), QmpError> {
        self.unit("migrate-set-parameters", Some(parameters)).await
    }
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.unit("migrate", Some(json!({ "uri": uri }))).await
    }
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        self.unit("migrate-incoming", Some(json!({ "uri": uri })))
            .await
    }
    pub async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        self.execute("query-migrate", None).await
    }
    pub async fn migrate_cancel(&self) -> Result<(), QmpError> {
        self.unit("migrate_cancel", None).await
    }
    pub async fn migrate_start_postcopy(&self) -> Result<(), QmpError> {
        self.unit("migrate-start-postcopy", None).await
    }
}

/// One `query-block` entry: a guest drive (`-drive id=...`) and its top node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct BlockInfo {
    pub device: String,
    #[serde(default)]
    pub inserted: Option<BlockInserted>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct BlockInserted {
    #[serde(rename = "node-name")]
    pub node_name: String,
}

/// One `query-block-jobs` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct BlockJobInfo {
    /// The job id.
    pub device: String,
    /// created, running, paused, ready, standby, waiting, pending, aborting, concluded, null.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub ready: bool,
    /// Bytes done, and in all (the total grows while the guest writes).
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub len: u64,
    /// Why a concluded job failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// Block migration: an NBD server at the target, mirror jobs at the source (`migration.rs`
/// builds the arguments).
impl Qmp {
    /// `getfd`: hand QEMU a descriptor under `name` (over this socket, `SCM_RIGHTS`).
    pub async fn getfd(&self, name: &str, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), QmpError> {
        self.execute_inner(
            "getfd",
            Some(json!({ "fdname": name })),
            DEFAULT_TIMEOUT,
            Some(fd),
        )
        .await
        .map(|_| ())
    }
    pub async fn query_block(&self) -> Result<Vec<BlockInfo>, QmpError> {
        self.execute("query-block", None).await
    }
    pub async fn query_block_jobs(&self) -> Result<Vec<BlockJobInfo>, QmpError> {
        self.execute("query-block-jobs", None).await
    }
    /// Any command whose reply carries nothing (`nbd-server-start`, `block-export-add`,
    /// `blockdev-mirror`, `block-job-cancel`, `job-dismiss`, `migrate-continue`, ...).
    pub async fn command(&self, command: &str, arguments: Value) -> Result<(), QmpError> {
        self.unit(command, Some(arguments)).await
    }
    pub async fn nbd_server_stop(&self) -> Result<(), QmpError> {
        self.unit("nbd-server-stop", None).await
    }
}

/// Volume hotplug: a block node and its guest device added and removed at run time.
impl Qmp {
    /// `blockdev-add` of a node whose arguments [`crate::qemu::disks::hotplug_args`] built.
    pub async fn blockdev_add(&self, node: Value) -> Result<(), QmpError> {
        self.unit("blockdev-add", Some(node)).await
    }

    /// `blockdev-del` of a node no device uses any more.
    pub async fn blockdev_del(&self, node_name: &str) -> Result<(), QmpError> {
        self.unit("blockdev-del", Some(json!({ "node-name": node_name })))
            .await
    }

    /// `device_add` (driver and properties in one object, as QMP takes them).
    pub async fn device_add(&self, device: Value) -> Result<(), QmpError> {
        self.unit("device_add", Some(device)).await
    }

    /// `device_del`, then the wait for QEMU's `DEVICE_DELETED` of that id: the unplug is
    /// complete only then (a PCI device needs the guest's cooperation; a SCSI disk goes at
    /// once). A device that is already gone (`DeviceNotFound`) counts as deleted.
    pub async fn device_del(&self, id: &str, wait: Duration) -> Result<(), QmpError> {
        let mut events = self.subscribe();
        match self.unit("device_del", Some(json!({ "id": id }))).await {
            Err(QmpError::Command { class, .. }) if class == "DeviceNotFound" => return Ok(()),
            r => r?,
        }
        let deleted = async {
            loop {
                match events.recv().await {
                    Ok(ev)
                        if ev.event == "DEVICE_DELETED"
                            && ev.data.get("device").and_then(Value::as_str) == Some(id) =>
                    {
                        return Ok(());
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(QmpError::Disconnected {
                            command: "device_del".into(),
                            reason: "event stream closed".into(),
                        })
                    }
                }
            }
        };
        tokio::time::timeout(wait, deleted)
            .await
            .map_err(|_| QmpError::Timeout {
                command: format!("device_del {id} (DEVICE_DELETED)"),
                after: wait,
            })?
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panic while holding this lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn dispatch(line: &str, shared: &Mutex<Shared>, events: &broadcast::Sender<QmpEvent>) {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        tracing::warn!("QMP: unparsable line {line:?}");
        return;
    };
    if v.get("event").is_some() {
        let ts = v
            .get("timestamp")
            .map(|t| {
                t["seconds"].as_f64().unwrap_or(0.0)
                    + t["microseconds"].as_f64().unwrap_or(0.0) / 1e6
            })
            .unwrap_or(0.0);
        let ev = QmpEvent {
            event: v["event"].as_str().unwrap_or_default().to_string(),
            data: v.get("data").cloned().unwrap_or(Value::Null),
            timestamp: ts,
        };
        let _ = events.send(ev);
        return;
    }
    let Some(id) = v.get("id").and_then(Value::as_u64) else {
        tracing::warn!("QMP: reply without an id: {line}");
        return;
    };
    let reply = if let Some(r) = v.get("return") {
        Ok(r.clone())
    } else {
        let e = &v["error"];
        Err((
            e["class"].as_str().unwrap_or("GenericError").to_string(),
            e["desc"].as_str().unwrap_or_default().to_string(),
        ))
    };
    if let Some(tx) = lock(shared).pending.remove(&id) {
        let _ = tx.send(reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    fn qemu() -> Option<(tokio::process::Child, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(crate::qemu::QEMU_BINARY)
            .args(["-S", "-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-machine", "none", "-accel", "tcg", "-qmp"])
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.path().join("qmp.sock").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        match child {
            Ok(c) => Some((c, dir)),
            Err(e) => {
                eprintln!("SKIP: cannot run {}: {e}", crate::qemu::QEMU_BINARY);
                None
            }
        }
    }

    #[tokio::test]
    async fn commands_events_and_errors_against_real_qemu() {
        let Some((mut child, dir)) = qemu() else {
            return;
        };
        let (qmp, mut events) =
            Qmp::connect_retry(&dir.path().join("qmp.sock"), Duration::from_secs(5), || {
                true
            })
            .await
            .unwrap();
        assert!(qmp.version.starts_with('7') || qmp.version.starts_with(char::is_numeric));
        let st = qmp.query_status().await.unwrap();
        assert_eq!((st.running, st.status.as_str()), (false, "prelaunch"));
        qmp.cont().await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev.typed(), Event::Resume);
        assert!(qmp.query_status().await.unwrap().running);
        qmp.stop().await.unwrap();
        let ev = events.recv().await.unwrap();
        assert_eq!(ev.typed(), Event::Stop);
        // A QMP error is a typed error, not a hang.
        let err = qmp
            .execute_value("no-such-command", None, DEFAULT_TIMEOUT)
            .await;
        assert!(
            matches!(err, Err(QmpError::Command { ref class, .. }) if class == "CommandNotFound"),
            "{err:?}"
        );
        let out = qmp.human_monitor_command("info status").await.unwrap();
        assert!(out.contains("paused"), "{out}");
        let cpus = qmp.query_cpus_fast().await.unwrap();
        assert!(cpus.is_empty() || cpus[0].thread_id > 0);

        // QEMU dies: the next command fails at once with Disconnected.
        child.start_kill().unwrap();
        let _ = child.wait().await;
        let t = std::time::Instant::now();
        let err = qmp.query_status().await.unwrap_err();
        assert!(matches!(err, QmpError::Disconnected { .. }), "{err:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn quit_reports_shutdown_with_host_qmp_quit() {
        let Some((mut child, dir)) = qemu() else {
            return;
        };
        let (qmp, mut events) =
            Qmp::connect_retry(&dir.path().join("qmp.sock"), Duration::from_secs(5), || {
                true
            })
            .await
            .unwrap();
        qmp.quit().await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            ev.typed(),
            Event::Shutdown {
                guest: false,
                reason: "host-qmp-quit".into()
            }
        );
        let status = child.wait().await.unwrap();
        assert!(status.success());
    }

    #[tokio::test]
    async fn a_command_pending_when_qemu_dies_fails_instead_of_hanging() {
        let Some((mut child, dir)) = qemu() else {
            return;
        };
        let (qmp, _events) =
            Qmp::connect_retry(&dir.path().join("qmp.sock"), Duration::from_secs(5), || {
                true
            })
            .await
            .unwrap();
        // Stop QEMU so it cannot answer, send a command, then kill it.
        let pid = child.id().unwrap() as i32;
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let q2 = qmp.clone();
        let pending = tokio::spawn(async move { q2.query_status().await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = child.wait().await;
        let r = tokio::time::timeout(Duration::from_secs(3), pending)
            .await
            .expect("the pending command must not hang")
            .unwrap();
        assert!(matches!(r, Err(QmpError::Disconnected { .. })), "{r:?}");
    }
}

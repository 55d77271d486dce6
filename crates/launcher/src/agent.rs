//! A typed asynchronous client for the QEMU guest agent (qemu-ga), spoken over the host end of
//! the VMI's `org.qemu.guest_agent.0` virtio-serial port: a QEMU chardev unix socket
//! (`server=on,wait=off`).
//!
//! Unlike QMP there is no greeting, no capabilities negotiation, no `id` on replies and no
//! events: the agent answers commands in order, one at a time, so a reply belongs to the last
//! command sent, but only while the channel is synchronised. The channel outlives both agents
//! and clients. It may hold bytes from an earlier client, a reply that came after its command
//! timed out, or half a command written before the guest agent restarted. So the client
//! resynchronises with `guest-sync-delimited` and a fresh random id ([`Agent::sync`]) before its
//! first command, and again after anything that leaves the channel in doubt: a timeout, a
//! malformed reply, a future dropped mid-exchange.
//!
//! When no agent runs in the guest, the socket still connects (QEMU holds it) but nothing ever
//! answers, so every exchange has a deadline. Every byte read comes from the guest, which may be
//! hostile. Reply lines are bounded ([`MAX_REPLY`]), and any input produces an error, never a
//! panic or an unbounded allocation.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// How long `guest-sync-delimited` may take. When no agent runs, this is how long a call waits
/// before it fails, so the value is kept short.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(3);
/// How long any other command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `guest-shutdown` waits for an error. On success the agent never replies.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);
/// The longest reply line accepted. The agent's largest usual reply, the interface list of a
/// busy guest, stays well below this limit.
pub const MAX_REPLY: usize = 1 << 20;

const SYNC: &str = "guest-sync-delimited";
/// The agent writes this byte right before the reply to `guest-sync-delimited`. The client also
/// sends it before that command, which makes the agent drop any half-read JSON. 0xFF never
/// occurs in UTF-8, so it cannot be mistaken for part of a reply.
const DELIMITER: u8 = 0xFF;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The socket could not be connected (QEMU is not running, or the path is wrong).
    #[error("guest agent socket {path}: {source}")]
    Connect { path: String, source: io::Error },
    /// Reading or writing the socket failed. The connection is dropped, and the next call
    /// reconnects.
    #[error("guest agent {command}: {source}")]
    Io { command: String, source: io::Error },
    /// The socket reached end of stream (QEMU exited). The next call reconnects.
    #[error("guest agent {command}: connection closed")]
    Disconnected { command: String },
    /// No reply came in time. For `guest-sync-delimited`, this usually means that no agent runs
    /// in the guest. The channel is left unsynchronised and the next call resynchronises it.
    #[error("guest agent {command}: no reply within {after:?}")]
    Timeout { command: String, after: Duration },
    /// A reply line longer than the limit. The rest of the line is skipped when the client
    /// resynchronises.
    #[error("guest agent {command}: reply longer than {limit} bytes")]
    ReplyTooLong { command: String, limit: usize },
    /// The reply is not valid JSON, is neither `return` nor `error`, or does not have the
    /// shape of the command's result.
    #[error("guest agent {command}: bad reply: {detail}")]
    Protocol { command: String, detail: String },
    /// The agent answered with an error, e.g. `CommandNotFound` for a disabled or unknown
    /// command.
    #[error("guest agent {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// Deadlines and limits; [`Default`] gives the module's constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentOptions {
    pub sync_timeout: Duration,
    pub command_timeout: Duration,
    pub shutdown_wait: Duration,
    pub max_reply: usize,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            sync_timeout: SYNC_TIMEOUT,
            command_timeout: COMMAND_TIMEOUT,
            shutdown_wait: SHUTDOWN_WAIT,
            max_reply: MAX_REPLY,
        }
    }
}

/// `guest-info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    #[serde(default)]
    pub supported_commands: Vec<SupportedCommand>,
}

impl AgentInfo {
    /// Whether the agent has `name` and it is not disabled (`--block-rpcs`, or frozen).
    pub fn enabled(&self, name: &str) -> bool {
        self.supported_commands
            .iter()
            .any(|c| c.name == name && c.enabled)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupportedCommand {
    pub name: String,
    pub enabled: bool,
    /// False for the commands that reply nothing on success (`guest-shutdown`,
    /// `guest-suspend-*`).
    #[serde(rename = "success-response", default)]
    pub success_response: bool,
}

/// `guest-get-osinfo`. Every field is optional: Windows agents and older agents leave some out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OsInfo {
    pub kernel_release: Option<String>,
    pub kernel_version: Option<String>,
    pub machine: Option<String>,
    /// `ID` of the guest's os-release, e.g. `debian`, `fedora`, `mswindows`.
    pub id: Option<String>,
    pub name: Option<String>,
    pub pretty_name: Option<String>,
    pub version: Option<String>,
    pub version_id: Option<String>,
    pub variant: Option<String>,
    pub variant_id: Option<String>,
}

#[derive(Deserialize)]
struct HostName {
    #[serde(rename = "host-name")]
    host_name: String,
}

/// `guest-get-timezone`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timezone {
    /// The zone's name, e.g. `UTC` or `CET`, when the guest knows it.
    pub zone: Option<String>,
    /// Seconds east of UTC.
    pub offset: i64,
}

/// One entry of `guest-get-users`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub user: String,
    /// Windows guests only.
    pub domain: Option<String>,
    /// Seconds since the epoch, fractional.
    #[serde(rename = "login-time")]
    pub login_time: f64,
}

/// One entry of `guest-get-fsinfo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsInfo {
    /// The device name, e.g. `vda1` or `dm-0`.
    pub name: String,
    pub mountpoint: String,
    #[serde(rename = "type")]
    pub fs_type: String,
    #[serde(rename = "used-bytes")]
    pub used_bytes: Option<u64>,
    #[serde(rename = "total-bytes")]
    pub total_bytes: Option<u64>,
    #[serde(default)]
    pub disk: Vec<DiskAddress>,
}

/// Where a filesystem's disk sits on the guest's buses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskAddress {
    /// `virtio`, `scsi`, `ide`, `sata`, `usb`, `nvme`, `unknown`, ...
    pub bus_type: Option<String>,
    /// The disk's serial number, which matches the `serial` of a VMI disk.
    pub serial: Option<String>,
    /// The device node, e.g. `/dev/vda`.
    pub dev: Option<String>,
    pub pci_controller: Option<PciAddress>,
    #[serde(default)]
    pub bus: u64,
    #[serde(default)]
    pub target: u64,
    #[serde(default)]
    pub unit: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u32,
    pub slot: u32,
    pub function: u32,
}

/// One entry of `guest-network-get-interfaces`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NetworkInterface {
    pub name: String,
    /// The MAC address; interfaces without one (some tunnels) have none.
    pub hardware_address: Option<String>,
    #[serde(default)]
    pub ip_addresses: Vec<IpAddress>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IpAddress {
    pub ip_address_type: IpAddressType,
    /// As the guest wrote it. The address is kept as text because Windows agents may add a
    /// `%scope` suffix.
    pub ip_address: String,
    pub prefix: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpAddressType {
    Ipv4,
    Ipv6,
}

/// The `mode` of `guest-shutdown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownMode {
    Powerdown,
    Reboot,
    Halt,
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// A connection to one VMI's guest agent channel. A call takes `&mut self` because the agent
/// handles one command at a time; wrap the client in a mutex to share it.
///
/// Every call that starts an exchange first marks the channel unsynchronised, and marks it
/// synchronised again only when a well-formed reply has been read. A timeout, a bad reply, or a
/// future dropped mid-exchange therefore makes the next call resynchronise first. When the
/// connection breaks, the next call reconnects to the same path.
pub struct Agent {
    path: PathBuf,
    opts: AgentOptions,
    conn: Option<Conn>,
    synced: bool,
}

impl Agent {
    /// Connects to the socket without talking to the agent. An agent that is absent or still
    /// starting does not make this fail; the first command reports it.
    pub async fn connect(path: &Path) -> Result<Agent, AgentError> {
        Agent::connect_with(path, AgentOptions::default()).await
    }

    pub async fn connect_with(path: &Path, opts: AgentOptions) -> Result<Agent, AgentError> {
        let mut agent = Agent {
            path: path.to_path_buf(),
            opts,
            conn: None,
            synced: false,
        };
        agent.conn().await?;
        Ok(agent)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the last exchange left the channel in a known state, so that the next reply
    /// belongs to the next command.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    async fn conn(&mut self) -> Result<&mut Conn, AgentError> {
        if self.conn.is_none() {
            let stream =
                UnixStream::connect(&self.path)
                    .await
                    .map_err(|source| AgentError::Connect {
                        path: self.path.display().to_string(),
                        source,
                    })?;
            let (read, writer) = stream.into_split();
            self.conn = Some(Conn {
                reader: BufReader::new(read),
                writer,
            });
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Resynchronises the channel. The client sends 0xFF (so the agent drops any half-read
    /// input) and then `guest-sync-delimited` with a random id. It then skips everything up to
    /// the agent's 0xFF whose following line returns that id. Stale replies, including those to
    /// earlier syncs, are skipped the same way. A [`AgentError::Timeout`] here means that no
    /// agent answers.
    pub async fn sync(&mut self) -> Result<(), AgentError> {
        self.synced = false;
        let id = sync_id();
        let AgentOptions {
            sync_timeout,
            max_reply,
            ..
        } = self.opts;
        let mut msg = vec![DELIMITER];
        msg.extend_from_slice(request(SYNC, Some(json!({ "id": id }))).as_bytes());
        let conn = self.conn().await?;
        let exchange = async {
            conn.writer.write_all(&msg).await?;
            read_sync_reply(&mut conn.reader, id, max_reply).await
        };
        match tokio::time::timeout(sync_timeout, exchange).await {
            Err(_) => Err(AgentError::Timeout {
                command: SYNC.into(),
                after: sync_timeout,
            }),
            Ok(Err(source)) => {
                self.conn = None;
                Err(AgentError::Io {
                    command: SYNC.into(),
                    source,
                })
            }
            Ok(Ok(None)) => {
                self.conn = None;
                Err(AgentError::Disconnected {
                    command: SYNC.into(),
                })
            }
            Ok(Ok(Some(discarded))) => {
                if discarded > 0 {
                    tracing::debug!(
                        "guest agent {}: skipped {discarded} stale bytes",
                        self.path.display()
                    );
                }
                self.synced = true;
                Ok(())
            }
        }
    }

    /// Runs `command` and returns its `return` value, resynchronising first if needed.
    pub async fn execute_value(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, AgentError> {
        if !self.synced {
            self.sync().await?;
        }
        self.synced = false;
        let max_reply = self.opts.max_reply;
        let msg = request(command, arguments);
        let conn = self.conn().await?;
        let exchange = async {
            conn.writer.write_all(msg.as_bytes()).await?;
            read_line(&mut conn.reader, max_reply).await
        };
        let line = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                return Err(AgentError::Timeout {
                    command: command.into(),
                    after: timeout,
                })
            }
            Ok(Err(source)) => {
                self.conn = None;
                return Err(AgentError::Io {
                    command: command.into(),
                    source,
                });
            }
            Ok(Ok(Line::Eof)) => {
                self.conn = None;
                return Err(AgentError::Disconnected {
                    command: command.into(),
                });
            }
            Ok(Ok(Line::TooLong)) => {
                return Err(AgentError::ReplyTooLong {
                    command: command.into(),
                    limit: max_reply,
                })
            }
            Ok(Ok(Line::Complete(line))) => line,
        };
        let reply = parse_reply(command, &line);
        // A whole line was read, and it was a reply: the next line belongs to the next command.
        self.synced = matches!(reply, Ok(_) | Err(AgentError::Command { .. }));
        reply
    }

    /// Runs `command` and deserialises its `return` value.
    pub async fn execute<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, AgentError> {
        let timeout = self.opts.command_timeout;
        let v = self.execute_value(command, arguments, timeout).await?;
        serde_json::from_value(v).map_err(|e| AgentError::Protocol {
            command: command.into(),
            detail: e.to_string(),
        })
    }

    /// `guest-ssh-add-authorized-keys` with `reset`: `keys` become the user's whole
    /// authorized_keys (libvirt's `virDomainAuthorizedSSHKeysSet` with no flags, which
    /// KubeVirt uses).
    pub async fn set_authorized_keys(
        &mut self,
        user: &str,
        keys: &[String],
    ) -> Result<(), AgentError> {
        let timeout = self.opts.command_timeout;
        let args = serde_json::json!({"username": user, "keys": keys, "reset": true});
        self.execute_value("guest-ssh-add-authorized-keys", Some(args), timeout)
            .await
            .map(|_| ())
    }

    /// `guest-set-user-password` with a clear-text password (sent base64-encoded, as the
    /// command wants).
    pub async fn set_user_password(
        &mut self,
        user: &str,
        password: &str,
    ) -> Result<(), AgentError> {
        use base64::Engine;
        let timeout = self.opts.command_timeout;
        let args = serde_json::json!({
            "username": user,
            "password": base64::engine::general_purpose::STANDARD.encode(password),
            "crypted": false,
        });
        self.execute_value("guest-set-user-password", Some(args), timeout)
            .await
            .map(|_| ())
    }

    pub async fn ping(&mut self) -> Result<(), AgentError> {
        let timeout = self.opts.command_timeout;
        self.execute_value("guest-ping", None, timeout)
            .await
            .map(drop)
    }

    pub async fn info(&mut self) -> Result<AgentInfo, AgentError> {
        self.execute("guest-info", None).await
    }

    pub async fn os_info(&mut self) -> Result<OsInfo, AgentError> {
        self.execute("guest-get-osinfo", None).await
    }

    pub async fn host_name(&mut self) -> Result<String, AgentError> {
        let h: HostName = self.execute("guest-get-host-name", None).await?;
        Ok(h.host_name)
    }

    pub async fn timezone(&mut self) -> Result<Timezone, AgentError> {
        self.execute("guest-get-timezone", None).await
    }

    pub async fn users(&mut self) -> Result<Vec<User>, AgentError> {
        self.execute("guest-get-users", None).await
    }

    pub async fn fs_info(&mut self) -> Result<Vec<FsInfo>, AgentError> {
        self.execute("guest-get-fsinfo", None).await
    }

    pub async fn network_interfaces(&mut self) -> Result<Vec<NetworkInterface>, AgentError> {
        self.execute("guest-network-get-interfaces", None).await
    }

    /// `guest-shutdown`. The agent replies only when it fails; on success it starts the
    /// shutdown and stays silent. As in libvirt, a reply that does not come within
    /// [`AgentOptions::shutdown_wait`], or a connection that closes, counts as success. The
    /// channel is synchronised first, so an agent that is absent is reported as a sync
    /// [`AgentError::Timeout`] and is not mistaken for a shutdown that started.
    pub async fn shutdown(&mut self, mode: ShutdownMode) -> Result<(), AgentError> {
        self.sync().await?;
        let wait = self.opts.shutdown_wait;
        match self
            .execute_value("guest-shutdown", Some(json!({ "mode": mode })), wait)
            .await
        {
            Ok(_) | Err(AgentError::Timeout { .. } | AgentError::Disconnected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn request(command: &str, arguments: Option<Value>) -> String {
    let mut msg = json!({ "execute": command });
    if let Some(a) = arguments {
        msg["arguments"] = a;
    }
    let mut line = msg.to_string();
    line.push('\n');
    line
}

/// A fresh id for `guest-sync-delimited`. It must differ from the ids of earlier clients and
/// earlier syncs that may still sit in the channel. The std hasher's per-instance random keys
/// make it unpredictable without another dependency. The id is kept below 2^53, so any JSON
/// implementation echoes it exactly (qemu-ga reads it as an int64).
fn sync_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish() & ((1 << 53) - 1)
}

/// The result of one bounded line read.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// Without its `\n`.
    Complete(Vec<u8>),
    /// Longer than the limit. What was read is dropped, and the rest of the line stays unread.
    TooLong,
    /// End of stream, possibly in the middle of a line.
    Eof,
}

/// Reads one line, holding at most `max` bytes of it in memory.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if line.len() + chunk > max {
            r.consume(chunk);
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(&buf[..chunk]);
        r.consume(chunk + usize::from(end));
        if end {
            return Ok(Line::Complete(line));
        }
    }
}

/// Skips bytes up to and including the next [`DELIMITER`]. Returns how many bytes it skipped,
/// or `None` at end of stream. Nothing is kept in memory, so the caller's deadline is the only
/// bound needed.
async fn skip_to_delimiter<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<u64>> {
    let mut skipped = 0u64;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(None);
        }
        if let Some(i) = buf.iter().position(|&b| b == DELIMITER) {
            r.consume(i + 1);
            return Ok(Some(skipped + i as u64));
        }
        let n = buf.len();
        skipped += n as u64;
        r.consume(n);
    }
}

/// Reads until the delimited reply `{"return": id}`. Returns how many bytes were skipped to get
/// there, or `None` at end of stream. Lines that are garbage, too long, error replies or
/// replies to other syncs are skipped and do not count as errors: they are what
/// resynchronisation exists to remove.
async fn read_sync_reply<R: AsyncBufRead + Unpin>(
    r: &mut R,
    id: u64,
    max: usize,
) -> io::Result<Option<u64>> {
    let mut skipped = 0u64;
    loop {
        let Some(n) = skip_to_delimiter(r).await? else {
            return Ok(None);
        };
        skipped += n;
        let line = match read_line(r, max).await? {
            Line::Eof => return Ok(None),
            Line::TooLong => {
                skipped += max as u64;
                continue;
            }
            Line::Complete(line) => line,
        };
        // A delimiter inside the line starts a newer reply, and only the text after the last
        // one is that reply.
        let start = line
            .iter()
            .rposition(|&b| b == DELIMITER)
            .map_or(0, |i| i + 1);
        let returned = serde_json::from_slice::<Value>(&line[start..])
            .ok()
            .and_then(|v| v.get("return").and_then(Value::as_u64));
        if returned == Some(id) {
            return Ok(Some(skipped + start as u64));
        }
        skipped += line.len() as u64;
    }
}

/// One reply line: `{"return": ...}` or `{"error": {"class": ..., "desc": ...}}`.
fn parse_reply(command: &str, line: &[u8]) -> Result<Value, AgentError> {
    let protocol = |detail: String| AgentError::Protocol {
        command: command.into(),
        detail,
    };
    let v: Value = serde_json::from_slice(line).map_err(|e| protocol(e.to_string()))?;
    let Value::Object(mut reply) = v else {
        return Err(protocol(format!("not an object: {}", excerpt(line))));
    };
    if let Some(r) = reply.remove("return") {
        return Ok(r);
    }
    match reply.get("error") {
        Some(e) if e.is_object() => {
            let text = |k: &str, default: &str| {
                e.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or(default)
                    .to_string()
            };
            Err(AgentError::Command {
                command: command.into(),
                class: text("class", "GenericError"),
                desc: text("desc", ""),
            })
        }
        _ => Err(protocol(format!(
            "neither return nor error: {}",
            excerpt(line)
        ))),
    }
}

/// The start of a guest-controlled line, for an error message.
fn excerpt(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(&line[..line.len().min(120)]);
    if line.len() > 120 {
        format!("{s}...")
    } else {
        s.into_owned()
    }
}

// ---------------------------------------------------------------- KubeVirt's view

/// The longest guest-supplied string the launcher reports (a name, a version, a path): the
/// guest controls every byte the agent sends.
pub const MAX_GUEST_STRING: usize = 256;
/// At most this many guest interfaces, addresses per interface, users and filesystems are
/// reported.
pub const MAX_GUEST_ITEMS: usize = 64;

/// A guest string, cut to [`MAX_GUEST_STRING`] bytes at a character boundary, without control
/// characters.
pub fn guest_string(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).collect();
    if out.len() > MAX_GUEST_STRING {
        let mut end = MAX_GUEST_STRING;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

fn guest_opt(s: &Option<String>) -> Option<String> {
    s.as_deref().map(guest_string).filter(|s| !s.is_empty())
}

/// A guest interface as the agent reports it, reduced to what `status.interfaces` shows:
/// a checked MAC and addresses that parse (a Windows `%scope` suffix dropped).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestNic {
    pub name: String,
    pub mac: Option<String>,
    pub ip_addresses: Vec<String>,
}

impl GuestNic {
    fn from_agent(n: &NetworkInterface) -> GuestNic {
        GuestNic {
            name: guest_string(&n.name),
            mac: n
                .hardware_address
                .as_deref()
                .and_then(crate::qemu::nics::normalise_mac),
            ip_addresses: n
                .ip_addresses
                .iter()
                .filter_map(|a| {
                    let ip = a.ip_address.split('%').next()?;
                    ip.parse::<std::net::IpAddr>().ok().map(|ip| ip.to_string())
                })
                .take(MAX_GUEST_ITEMS)
                .collect(),
        }
    }
}

/// What the launcher reports of a connected guest agent (`AgentConnected`, `guestOSInfo`,
/// guest-reported addresses), refreshed by its poller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub version: String,
    pub os: kubevirt_api::VirtualMachineInstanceGuestOSInfo,
    pub hostname: String,
    pub timezone: String,
    pub interfaces: Vec<GuestNic>,
}

fn os_info(o: &OsInfo) -> kubevirt_api::VirtualMachineInstanceGuestOSInfo {
    kubevirt_api::VirtualMachineInstanceGuestOSInfo {
        id: guest_opt(&o.id),
        kernel_release: guest_opt(&o.kernel_release),
        kernel_version: guest_opt(&o.kernel_version),
        machine: guest_opt(&o.machine),
        name: guest_opt(&o.name),
        pretty_name: guest_opt(&o.pretty_name),
        version: guest_opt(&o.version),
        version_id: guest_opt(&o.version_id),
    }
}

/// KubeVirt's timezone text: `zone, offset` (seconds east of UTC).
fn timezone_text(t: &Timezone) -> String {
    format!("{}, {}", guest_opt(&t.zone).unwrap_or_default(), t.offset)
}

/// What the poll and `guestosinfo` both report.
struct About {
    info: AgentInfo,
    os: kubevirt_api::VirtualMachineInstanceGuestOSInfo,
    hostname: String,
    timezone: String,
}

impl Agent {
    /// The agent's own info, then the guest's OS, host name and timezone (each empty when the
    /// guest does not say).
    async fn about(&mut self) -> Result<About, AgentError> {
        let info = self.info().await?;
        let os = self
            .os_info()
            .await
            .map(|o| os_info(&o))
            .unwrap_or_default();
        let hostname = self
            .host_name()
            .await
            .map(|h| guest_string(&h))
            .unwrap_or_default();
        let timezone = self
            .timezone()
            .await
            .map(|t| timezone_text(&t))
            .unwrap_or_default();
        Ok(About {
            info,
            os,
            hostname,
            timezone,
        })
    }

    /// One poll: is the agent there, and what it says about the guest. Fails (the agent is
    /// not connected) when it does not answer.
    pub async fn status(&mut self) -> Result<AgentStatus, AgentError> {
        self.ping().await?;
        let About {
            info,
            os,
            hostname,
            timezone,
        } = self.about().await?;
        let interfaces = self
            .network_interfaces()
            .await
            .map(|l| {
                l.iter()
                    .take(MAX_GUEST_ITEMS)
                    .map(GuestNic::from_agent)
                    .collect()
            })
            .unwrap_or_default();
        Ok(AgentStatus {
            version: guest_string(&info.version),
            os,
            hostname,
            timezone,
            interfaces,
        })
    }

    /// The `guestosinfo` subresource: everything the agent tells about the guest.
    pub async fn guest_info(
        &mut self,
    ) -> Result<kubevirt_api::guestagent::GuestAgentInfo, AgentError> {
        use kubevirt_api::guestagent::{FileSystemInfo, GuestAgentCommandInfo, GuestAgentInfo};
        let About {
            info,
            os,
            hostname,
            timezone,
        } = self.about().await?;
        Ok(GuestAgentInfo {
            guest_agent_version: guest_string(&info.version),
            supported_commands: info
                .supported_commands
                .iter()
                .take(1024)
                .map(|c| GuestAgentCommandInfo {
                    name: guest_string(&c.name),
                    enabled: c.enabled,
                })
                .collect(),
            hostname,
            os,
            timezone,
            user_list: self.user_list().await?.items,
            fs_info: FileSystemInfo {
                disks: self.filesystem_list().await?.items,
            },
            fs_freeze_status: String::new(),
        })
    }

    /// The `userlist` subresource.
    pub async fn user_list(
        &mut self,
    ) -> Result<kubevirt_api::guestagent::GuestOSUserList, AgentError> {
        use kubevirt_api::guestagent::{GuestOSUser, GuestOSUserList};
        Ok(GuestOSUserList {
            items: self
                .users()
                .await?
                .iter()
                .take(MAX_GUEST_ITEMS)
                .map(|u| GuestOSUser {
                    user_name: guest_string(&u.user),
                    domain: guest_opt(&u.domain).unwrap_or_default(),
                    login_time: if u.login_time.is_finite() {
                        u.login_time
                    } else {
                        0.0
                    },
                })
                .collect(),
        })
    }

    /// The `filesystemlist` subresource.
    pub async fn filesystem_list(
        &mut self,
    ) -> Result<kubevirt_api::guestagent::FileSystemList, AgentError> {
        use kubevirt_api::guestagent::{FileSystem, FileSystemDisk, FileSystemList};
        Ok(FileSystemList {
            items: self
                .fs_info()
                .await?
                .iter()
                .take(MAX_GUEST_ITEMS)
                .map(|f| FileSystem {
                    disk_name: guest_string(&f.name),
                    mount_point: guest_string(&f.mountpoint),
                    file_system_type: guest_string(&f.fs_type),
                    used_bytes: f.used_bytes.unwrap_or(0),
                    total_bytes: f.total_bytes.unwrap_or(0),
                    disk: f
                        .disk
                        .iter()
                        .take(MAX_GUEST_ITEMS)
                        .map(|d| FileSystemDisk {
                            serial: guest_opt(&d.serial).unwrap_or_default(),
                            bus_type: guest_opt(&d.bus_type).unwrap_or_default(),
                        })
                        .collect(),
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn sync_on(input: &[u8], id: u64, max: usize) -> io::Result<Option<u64>> {
        let mut r = input;
        block_on(read_sync_reply(&mut r, id, max))
    }

    #[test]
    fn sync_skips_garbage_and_invalid_utf8_before_the_delimiter() {
        let mut input = b"{\"return\": {}}\nstale \xc3\x28 bytes \xfe\x00\n{\"ret".to_vec();
        let skipped = input.len() as u64;
        input.extend_from_slice(b"\xff{\"return\": 42}\n");
        assert_eq!(sync_on(&input, 42, MAX_REPLY).unwrap(), Some(skipped));
    }

    #[test]
    fn sync_skips_replies_to_other_syncs_and_error_replies() {
        let input = b"\xff{\"return\": 41}\n\
                      {\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}\n\
                      \xff{\"error\": {\"class\": \"X\", \"desc\": \"y\"}}\n\
                      \xff{\"return\": 42}\n";
        assert!(sync_on(input, 42, MAX_REPLY).unwrap().is_some());
        // Only replies to other ids, then end of stream: not synchronised.
        assert_eq!(
            sync_on(
                b"\xff{\"return\": 41}\n\xff{\"return\": 43}\n",
                42,
                MAX_REPLY
            )
            .unwrap(),
            None
        );
        // A string id or a negative id is not the number asked for.
        assert_eq!(
            sync_on(b"\xff{\"return\": \"42\"}\n\xff{\"return\": -42}\n", 42, 64).unwrap(),
            None
        );
    }

    #[test]
    fn a_delimiter_inside_a_line_starts_a_new_reply() {
        let input = b"\xff{\"return\": 4\xff{\"return\": 42}\n";
        assert!(sync_on(input, 42, MAX_REPLY).unwrap().is_some());
    }

    #[test]
    fn sync_skips_an_enormous_line_after_a_delimiter() {
        let mut input = vec![DELIMITER];
        input.extend(std::iter::repeat_n(b'x', 3 * 1024));
        input.extend_from_slice(b"\n\xff{\"return\": 7}\n");
        assert!(sync_on(&input, 7, 1024).unwrap().is_some());
        // With the reply itself cut off by the limit, sync does not succeed.
        assert_eq!(sync_on(b"\xff{\"return\":       7}\n", 7, 8).unwrap(), None);
    }

    #[test]
    fn lines_are_bounded() {
        let line = |input: &[u8], max| {
            let mut r = input;
            block_on(read_line(&mut r, max)).unwrap()
        };
        assert_eq!(line(b"abcd\nrest", 4), Line::Complete(b"abcd".to_vec()));
        assert_eq!(line(b"abcde\n", 4), Line::TooLong);
        assert_eq!(line(b"abc", 4), Line::Eof);
        assert_eq!(line(b"", 4), Line::Eof);
        // An enormous line is not read whole. The reader stops at the limit, as it would on
        // a socket delivering a few KiB at a time.
        let huge = vec![b'{'; 8 * MAX_REPLY];
        let mut r = BufReader::with_capacity(4096, &huge[..]);
        assert_eq!(
            block_on(read_line(&mut r, MAX_REPLY)).unwrap(),
            Line::TooLong
        );
        let read = huge.len() - r.into_inner().len();
        assert!(read <= MAX_REPLY + 4096, "read {read} bytes");
    }

    #[test]
    fn replies_parse_to_values_and_typed_errors() {
        assert_eq!(
            parse_reply("guest-ping", b"{\"return\": {}}").unwrap(),
            json!({})
        );
        let e = parse_reply(
            "guest-shutdown",
            br#"{"error": {"class": "CommandNotFound", "desc": "Command guest-shutdown has been disabled"}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, AgentError::Command { command, class, desc }
                if command == "guest-shutdown" && class == "CommandNotFound" && desc.contains("disabled")),
            "{e:?}"
        );
        // An error without class or desc is still an error reply.
        assert!(matches!(
            parse_reply("x", br#"{"error": {}}"#),
            Err(AgentError::Command { class, .. }) if class == "GenericError"
        ));
    }

    #[test]
    fn hostile_replies_are_protocol_errors() {
        for bad in [
            &b"\xc3\x28"[..],
            b"{\"return\": \"\xff\xfe\"}",
            b"",
            b"null",
            b"[1, 2]",
            b"{\"event\": \"X\"}",
            b"{\"error\": \"just a string\"}",
            b"{\"return\": 1} trailing",
        ] {
            let r = parse_reply("c", bad);
            assert!(
                matches!(r, Err(AgentError::Protocol { .. })),
                "{:?}: {r:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Deep nesting hits serde_json's recursion limit, and the stack stays safe.
        let deep = "[".repeat(100_000);
        assert!(matches!(
            parse_reply("c", deep.as_bytes()),
            Err(AgentError::Protocol { .. })
        ));
    }

    #[test]
    fn sync_ids_differ() {
        let ids: std::collections::HashSet<u64> = (0..1000).map(|_| sync_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|&i| i < 1 << 53));
    }

    #[test]
    fn typed_results_parse_what_qemu_ga_and_windows_agents_send() {
        // Lines captured from qemu-ga 7.2 (Debian 12).
        let os: OsInfo = serde_json::from_str(
            r##"{"name": "Debian GNU/Linux", "kernel-release": "6.1.0", "version": "12 (bookworm)",
                "pretty-name": "Debian GNU/Linux 12 (bookworm)", "version-id": "12",
                "kernel-version": "#1 SMP", "machine": "x86_64", "id": "debian"}"##,
        )
        .unwrap();
        assert_eq!(os.id.as_deref(), Some("debian"));
        assert_eq!(os.variant, None);
        let fs: Vec<FsInfo> = serde_json::from_str(
            r#"[{"name": "vda", "total-bytes": 97572749312, "mountpoint": "/",
                 "disk": [{"bus-type": "virtio", "bus": 0, "unit": 0,
                           "pci-controller": {"bus": 0, "slot": 2, "domain": 0, "function": 0},
                           "dev": "/dev/vda", "target": 0}],
                 "used-bytes": 37813497856, "type": "ext4"},
                {"name": "tmpfs", "mountpoint": "/tmp", "type": "tmpfs", "disk": []}]"#,
        )
        .unwrap();
        assert_eq!(fs[0].disk[0].bus_type.as_deref(), Some("virtio"));
        assert_eq!(fs[0].disk[0].pci_controller.unwrap().slot, 2);
        assert_eq!(fs[1].used_bytes, None);
        let ifs: Vec<NetworkInterface> = serde_json::from_str(
            r#"[{"name": "lo", "ip-addresses": [
                   {"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8},
                   {"ip-address-type": "ipv6", "ip-address": "::1", "prefix": 128}],
                 "statistics": {"tx-packets": 1}, "hardware-address": "00:00:00:00:00:00"},
                {"name": "ifb0", "hardware-address": "66:0a:d6:44:0a:ae"}]"#,
        )
        .unwrap();
        assert_eq!(ifs[0].ip_addresses[1].ip_address_type, IpAddressType::Ipv6);
        assert!(ifs[1].ip_addresses.is_empty());
        // A Windows agent names the domain; the zone may be absent.
        let users: Vec<User> = serde_json::from_str(
            r#"[{"user": "Administrator", "domain": "WIN-1", "login-time": 1700000000.25}]"#,
        )
        .unwrap();
        assert_eq!(users[0].domain.as_deref(), Some("WIN-1"));
        let tz: Timezone = serde_json::from_str(r#"{"offset": 3600}"#).unwrap();
        assert_eq!((tz.zone, tz.offset), (None, 3600));
        assert_eq!(
            serde_json::to_value(ShutdownMode::Powerdown).unwrap(),
            json!("powerdown")
        );
    }

    proptest! {
        #[test]
        fn no_input_makes_the_parsers_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                            max in 0usize..64) {
            let _ = parse_reply("c", &bytes);
            let _ = sync_on(&bytes, 1, max);
            let mut r = &bytes[..];
            let _ = block_on(read_line(&mut r, max));
        }
    }

    /// The guest writes every byte the agent reports: what reaches the VMI status is cut,
    /// stripped of control characters, and addresses and MACs are checked.
    #[test]
    fn hostile_guest_reports_are_tamed() {
        let long = "é".repeat(400);
        let s = guest_string(&long);
        assert!(s.len() <= MAX_GUEST_STRING && s.chars().all(|c| c == 'é'));
        assert_eq!(guest_string("a\u{0}b\nc\u{1b}[31m"), "abc[31m");
        let n = GuestNic::from_agent(&NetworkInterface {
            name: "eth0\n".into(),
            hardware_address: Some("52:54:00:AB:CD:EF,romfile=/etc/shadow".into()),
            ip_addresses: vec![
                IpAddress {
                    ip_address_type: IpAddressType::Ipv6,
                    ip_address: "fe80::1%eth0".into(),
                    prefix: 64,
                },
                IpAddress {
                    ip_address_type: IpAddressType::Ipv4,
                    ip_address: "10.0.2.2; rm -rf /".into(),
                    prefix: 24,
                },
                IpAddress {
                    ip_address_type: IpAddressType::Ipv4,
                    ip_address: "10.0.2.2".into(),
                    prefix: 24,
                },
            ],
        });
        assert_eq!(n.name, "eth0");
        assert_eq!(n.mac, None, "not a MAC");
        assert_eq!(n.ip_addresses, ["fe80::1", "10.0.2.2"]);
        let t = timezone_text(&Timezone {
            zone: Some("CET".into()),
            offset: 3600,
        });
        assert_eq!(t, "CET, 3600");
    }
}

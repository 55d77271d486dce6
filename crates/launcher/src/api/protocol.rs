//! The `launcher.sock` wire format: typed requests, replies, events and error codes.

use super::memstate::{MemoryDump, SaveProgress, SavedState};
use super::migration::{MigrationOptions, MigrationStatus};
use crate::launcher::{Phase, State};
use kubevirt_api::VirtualMachineInstance;
use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};
use std::net::SocketAddr;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// The protocol version, `v` in every request.
pub const VERSION: u64 = 1;

/// The longest line either side reads (a `sync` carries a whole VMI, cloud-init data included).
pub const MAX_LINE: usize = 16 << 20;

/// A method name, as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Sync,
    State,
    Pause,
    Unpause,
    Shutdown,
    Stop,
    Reset,
    SoftReboot,
    SetBalloon,
    Stats,
    Subscribe,
    GuestOsInfo,
    UserList,
    FilesystemList,
    SyncVolumes,
    SetResources,
    PrepareMigrationTarget,
    Migrate,
    CancelMigration,
    MigrationStatus,
    SaveState,
    DumpMemory,
    Freeze,
    Unfreeze,
}

impl Method {
    pub const ALL: [Method; 24] = [
        Method::Sync,
        Method::State,
        Method::Pause,
        Method::Unpause,
        Method::Shutdown,
        Method::Stop,
        Method::Reset,
        Method::SoftReboot,
        Method::SetBalloon,
        Method::Stats,
        Method::Subscribe,
        Method::GuestOsInfo,
        Method::UserList,
        Method::FilesystemList,
        Method::SyncVolumes,
        Method::SetResources,
        Method::PrepareMigrationTarget,
        Method::Migrate,
        Method::CancelMigration,
        Method::MigrationStatus,
        Method::SaveState,
        Method::DumpMemory,
        Method::Freeze,
        Method::Unfreeze,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Sync => "sync",
            Method::State => "state",
            Method::Pause => "pause",
            Method::Unpause => "unpause",
            Method::Shutdown => "shutdown",
            Method::Stop => "stop",
            Method::Reset => "reset",
            Method::SoftReboot => "softReboot",
            Method::SetBalloon => "setBalloon",
            Method::Stats => "stats",
            Method::Subscribe => "subscribe",
            Method::GuestOsInfo => "guestOsInfo",
            Method::UserList => "userList",
            Method::FilesystemList => "filesystemList",
            Method::SyncVolumes => "syncVolumes",
            Method::SetResources => "setResources",
            Method::PrepareMigrationTarget => "prepareMigrationTarget",
            Method::Migrate => "migrate",
            Method::CancelMigration => "cancelMigration",
            Method::MigrationStatus => "migrationStatus",
            Method::SaveState => "saveState",
            Method::DumpMemory => "dumpMemory",
            Method::Freeze => "freeze",
            Method::Unfreeze => "unfreeze",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One call to the launcher. Serialized as `{"method":...,"params":{...}}` (the envelope,
/// [`RequestFrame`], adds `v` and `id`).
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Start this VMI unless one is started; replies with the [`State`].
    Sync {
        vmi: Box<VirtualMachineInstance>,
    },
    /// The current [`State`].
    State,
    Pause,
    Unpause,
    /// ACPI power button, then a hard stop after the grace period (default: the VMI's
    /// `terminationGracePeriodSeconds`).
    Shutdown {
        grace_period_seconds: Option<u64>,
    },
    /// Hard stop.
    Stop,
    Reset,
    SoftReboot,
    /// The balloon's target size.
    SetBalloon {
        bytes: u64,
    },
    /// vCPU times, memory and block statistics.
    Stats,
    /// Reply with the state, then stream [`Event`]s on this connection.
    Subscribe,
    /// Asked of the guest agent now: KubeVirt's `guestosinfo`, `userlist` and
    /// `filesystemlist` answers ([`kubevirt_api::guestagent`]).
    GuestOsInfo,
    UserList,
    FilesystemList,
    /// Volume hotplug: attach the VMI's hotpluggable volumes that are not attached yet (their
    /// files in `volumes`, resolved by the handler), detach the attached ones the VMI no
    /// longer has; replies with every hotplugged volume ([`Response::Volumes`]).
    SyncVolumes {
        vmi: Box<VirtualMachineInstance>,
        volumes: super::NodeVolumes,
    },
    /// LiveUpdate: grow the running machine to this many CPU sockets and this much guest
    /// memory (`None`: unchanged); replies with the [`State`] (`cpuTopology`, `memory`).
    SetResources {
        sockets: Option<u32>,
        guest_memory_bytes: Option<u64>,
    },
    /// A launcher run with `--migration-target` (its QEMU waits with `-incoming defer`):
    /// listen for the incoming migration on `listen` (an address the node agent chose; port 0
    /// lets QEMU pick one); replies with [`Response::Migration`], whose `address` is where it
    /// listens. A VMI with local disks also gets an NBD server on the same IP (a port of its
    /// own), exporting each local disk writable: the reply's `blockAddress` and
    /// `blockExports`.
    PrepareMigrationTarget {
        listen: SocketAddr,
        options: MigrationOptions,
    },
    /// Live-migrate the running guest to a target launcher listening on `target`; replies
    /// with [`Response::Migration`] once QEMU has started sending. Progress follows as
    /// [`Event::Migration`]s; on success the source's QEMU ends (phase Succeeded, reason
    /// `Migrated`).
    ///
    /// `block_target` (`blockTarget`): the target's `blockAddress`, required exactly when the
    /// VMI has local disks; they are copied there first (`blockdev-mirror`), then the guest
    /// memory follows.
    Migrate {
        target: SocketAddr,
        block_target: Option<SocketAddr>,
        options: MigrationOptions,
    },
    /// Cancel the migration in progress (QEMU's `migrate_cancel`); the guest keeps running
    /// here. `NoMigration` when there is none.
    CancelMigration,
    /// The last migration's status; `NoMigration` when there was none.
    MigrationStatus,
    /// Memory snapshot (docs/memory-snapshots.md): save the guest's RAM and device state to
    /// the VMI directory's `state/memory.bin` (QEMU's migration stream, through a descriptor
    /// the launcher opened) and its [`SavedState`] to `state/memory.json`; replies with the
    /// [`SavedState`] ([`Response::SavedState`]) once the file is on disk. Progress streams as
    /// [`Event::StateSave`]. The guest is stopped for the save and stays paused (phase
    /// Paused, reason `MemorySaved`; its disks released, so a caller copies them
    /// consistently, then `unpause`s it or stops it), unless `resume`: then a guest that was
    /// running runs again at once.
    SaveState {
        resume: bool,
    },
    /// The launcher's half of KubeVirt's `virtctl memory-dump`: the guest's memory as an ELF
    /// core (QEMU's `dump-guest-memory`, through a descriptor the launcher opened) into the
    /// VMI directory's `state/memory.dump`; replies with [`Response::MemoryDump`] once it is
    /// on disk. The guest is stopped while QEMU writes and runs on after. Moving the file into
    /// the claim KubeVirt names is the node agent's part.
    DumpMemory,
    /// KubeVirt's `freeze` (virt-api's subresource, for a snapshot): make the guest's disks
    /// consistent until `unfreeze`. With the guest agent connected, its
    /// `guest-fsfreeze-freeze` (application-consistent); without one, QEMU's `stop`, which
    /// drains and flushes the guest's block I/O (crash-consistent; phase Paused, reason
    /// `Frozen`). A guest already paused stays as it is. The launcher ends the freeze by
    /// itself after `unfreeze_timeout_seconds` (1 to 3600, [`MAX_UNFREEZE_TIMEOUT`]), so a
    /// caller that goes away never leaves a guest frozen. A second `freeze` while frozen keeps
    /// the first one's timer.
    ///
    /// [`MAX_UNFREEZE_TIMEOUT`]: kubevirt_api::freeze::MAX_UNFREEZE_TIMEOUT
    Freeze {
        unfreeze_timeout_seconds: u64,
    },
    /// Ends a `freeze` (thaw, or continue the guest it stopped); `Done` when not frozen.
    Unfreeze,
}

/// One hotplugged volume as the launcher sees it after a `syncVolumes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotplugVolume {
    /// The volume (and disk) name.
    pub name: String,
    /// libvirt's target name KubeVirt reports (`sda`, `sdb`, ...).
    pub target: String,
    /// Attached to the guest.
    pub attached: bool,
    /// Why it is not attached, when it is not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Serialize, Deserialize)]
struct SyncVolumesParams {
    vmi: Box<VirtualMachineInstance>,
    #[serde(default)]
    volumes: super::NodeVolumes,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ResourcesParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sockets: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    guest_memory_bytes: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(
        default,
        rename = "blockTarget",
        skip_serializing_if = "Option::is_none"
    )]
    block_target: Option<String>,
    #[serde(default)]
    options: MigrationOptions,
}

/// `params.<field>` as an `IP:port` (IPv6 in brackets), never a name to resolve.
fn socket_addr(field: &str, value: Option<&str>, port_zero: bool) -> Result<SocketAddr, RpcError> {
    let v = value
        .ok_or_else(|| RpcError::bad_request(format!("params.{field} (an IP:port) is required")))?;
    let a: SocketAddr = v.parse().map_err(|_| {
        RpcError::bad_request(format!(
            "params.{field}: {v:?} is not an IP:port (e.g. 10.244.0.5:49152 or [fd00::5]:49152)"
        ))
    })?;
    if let SocketAddr::V6(v6) = a {
        if v6.scope_id() != 0 || v6.flowinfo() != 0 {
            return Err(RpcError::bad_request(format!(
                "params.{field}: {v:?}: no IPv6 scope or flow label"
            )));
        }
    }
    if a.ip().is_multicast() || matches!(a.ip(), std::net::IpAddr::V4(ip) if ip.is_broadcast()) {
        return Err(RpcError::bad_request(format!(
            "params.{field}: {a} is not a unicast address"
        )));
    }
    if !port_zero && (a.port() == 0 || a.ip().is_unspecified()) {
        return Err(RpcError::bad_request(format!(
            "params.{field}: {a} is not an address to connect to"
        )));
    }
    Ok(a)
}

fn migration_params(params: Value) -> Result<MigrationParams, RpcError> {
    let p: MigrationParams = serde_json::from_value(params)
        .map_err(|e| RpcError::bad_request(format!("params: {e}")))?;
    p.options
        .validate()
        .map_err(|e| RpcError::bad_request(e.to_string()))?;
    Ok(p)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FreezeParams {
    unfreeze_timeout_seconds: u64,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SaveStateParams {
    #[serde(default)]
    resume: bool,
}

#[derive(Serialize, Deserialize)]
struct SyncParams {
    vmi: Box<VirtualMachineInstance>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ShutdownParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grace_period_seconds: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct BalloonParams {
    bytes: u64,
}

impl Request {
    pub fn method(&self) -> Method {
        match self {
            Request::Sync { .. } => Method::Sync,
            Request::State => Method::State,
            Request::Pause => Method::Pause,
            Request::Unpause => Method::Unpause,
            Request::Shutdown { .. } => Method::Shutdown,
            Request::Stop => Method::Stop,
            Request::Reset => Method::Reset,
            Request::SoftReboot => Method::SoftReboot,
            Request::SetBalloon { .. } => Method::SetBalloon,
            Request::Stats => Method::Stats,
            Request::Subscribe => Method::Subscribe,
            Request::GuestOsInfo => Method::GuestOsInfo,
            Request::UserList => Method::UserList,
            Request::FilesystemList => Method::FilesystemList,
            Request::SyncVolumes { .. } => Method::SyncVolumes,
            Request::SetResources { .. } => Method::SetResources,
            Request::PrepareMigrationTarget { .. } => Method::PrepareMigrationTarget,
            Request::Migrate { .. } => Method::Migrate,
            Request::CancelMigration => Method::CancelMigration,
            Request::MigrationStatus => Method::MigrationStatus,
            Request::SaveState { .. } => Method::SaveState,
            Request::DumpMemory => Method::DumpMemory,
            Request::Freeze { .. } => Method::Freeze,
            Request::Unfreeze => Method::Unfreeze,
        }
    }

    /// `params` on the wire (`{}` for methods without parameters).
    pub fn params(&self) -> Value {
        let v = match self {
            Request::Sync { vmi } => serde_json::to_value(SyncParams { vmi: vmi.clone() }),
            Request::Shutdown {
                grace_period_seconds,
            } => serde_json::to_value(ShutdownParams {
                grace_period_seconds: *grace_period_seconds,
            }),
            Request::SetBalloon { bytes } => serde_json::to_value(BalloonParams { bytes: *bytes }),
            Request::SyncVolumes { vmi, volumes } => serde_json::to_value(SyncVolumesParams {
                vmi: vmi.clone(),
                volumes: volumes.clone(),
            }),
            Request::SetResources {
                sockets,
                guest_memory_bytes,
            } => serde_json::to_value(ResourcesParams {
                sockets: *sockets,
                guest_memory_bytes: *guest_memory_bytes,
            }),
            Request::PrepareMigrationTarget { listen, options } => {
                serde_json::to_value(MigrationParams {
                    listen: Some(listen.to_string()),
                    target: None,
                    block_target: None,
                    options: options.clone(),
                })
            }
            Request::Migrate {
                target,
                block_target,
                options,
            } => serde_json::to_value(MigrationParams {
                listen: None,
                target: Some(target.to_string()),
                block_target: block_target.map(|b| b.to_string()),
                options: options.clone(),
            }),
            Request::SaveState { resume } => {
                serde_json::to_value(SaveStateParams { resume: *resume })
            }
            Request::Freeze {
                unfreeze_timeout_seconds,
            } => serde_json::to_value(FreezeParams {
                unfreeze_timeout_seconds: *unfreeze_timeout_seconds,
            }),
            _ => return json!({}),
        };
        v.unwrap_or_else(|_| json!({}))
    }

    /// A request from its method name and `params` (absent = `null`). Methods without
    /// parameters ignore them.
    pub fn from_parts(method: &str, params: Value) -> Result<Request, RpcError> {
        let m = Method::parse(method).ok_or_else(|| {
            RpcError::new(
                ErrorCode::UnknownMethod,
                format!("unknown method {method:?}"),
            )
        })?;
        let params = match params {
            Value::Null => json!({}),
            p => p,
        };
        Ok(match m {
            Method::Sync => {
                // `{"vmi": VMI}`; a bare VMI as params is accepted too.
                let vmi = match params.get("vmi") {
                    Some(v) => serde_json::from_value(v.clone()),
                    None => serde_json::from_value(params),
                }
                .map_err(|e| {
                    RpcError::bad_request(format!(
                        "params.vmi is not a VirtualMachineInstance: {e}"
                    ))
                })?;
                Request::Sync { vmi: Box::new(vmi) }
            }
            Method::State => Request::State,
            Method::Pause => Request::Pause,
            Method::Unpause => Request::Unpause,
            Method::Shutdown => {
                let p: ShutdownParams = serde_json::from_value(params).map_err(|e| {
                    RpcError::bad_request(format!(
                        "params.gracePeriodSeconds must be a non-negative integer: {e}"
                    ))
                })?;
                Request::Shutdown {
                    grace_period_seconds: p.grace_period_seconds,
                }
            }
            Method::Stop => Request::Stop,
            Method::Reset => Request::Reset,
            Method::SoftReboot => Request::SoftReboot,
            Method::SetBalloon => {
                let p: BalloonParams = serde_json::from_value(params).map_err(|e| {
                    RpcError::bad_request(format!("params.bytes (an integer) is required: {e}"))
                })?;
                Request::SetBalloon { bytes: p.bytes }
            }
            Method::Stats => Request::Stats,
            Method::Subscribe => Request::Subscribe,
            Method::GuestOsInfo => Request::GuestOsInfo,
            Method::UserList => Request::UserList,
            Method::FilesystemList => Request::FilesystemList,
            Method::SyncVolumes => {
                let p: SyncVolumesParams = serde_json::from_value(params).map_err(|e| {
                    RpcError::bad_request(format!(
                        "params.vmi (a VirtualMachineInstance) and params.volumes are required: {e}"
                    ))
                })?;
                Request::SyncVolumes {
                    vmi: p.vmi,
                    volumes: p.volumes,
                }
            }
            Method::SetResources => {
                let p: ResourcesParams = serde_json::from_value(params).map_err(|e| {
                    RpcError::bad_request(format!(
                        "params.sockets and params.guestMemoryBytes must be non-negative integers: {e}"
                    ))
                })?;
                Request::SetResources {
                    sockets: p.sockets,
                    guest_memory_bytes: p.guest_memory_bytes,
                }
            }
            Method::PrepareMigrationTarget => {
                let p = migration_params(params)?;
                if p.target.is_some() {
                    return Err(RpcError::bad_request(
                        "params.target: a migration target takes params.listen",
                    ));
                }
                if p.block_target.is_some() {
                    return Err(RpcError::bad_request(
                        "params.blockTarget: a migration target takes params.listen (its NBD server listens on the same IP)",
                    ));
                }
                Request::PrepareMigrationTarget {
                    listen: socket_addr("listen", p.listen.as_deref(), true)?,
                    options: p.options,
                }
            }
            Method::Migrate => {
                let p = migration_params(params)?;
                if p.listen.is_some() {
                    return Err(RpcError::bad_request(
                        "params.listen: a migration source takes params.target",
                    ));
                }
                Request::Migrate {
                    target: socket_addr("target", p.target.as_deref(), false)?,
                    block_target: match p.block_target.as_deref() {
                        None => None,
                        b => Some(socket_addr("blockTarget", b, false)?),
                    },
                    options: p.options,
                }
            }
            Method::CancelMigration => Request::CancelMigration,
            Method::MigrationStatus => Request::MigrationStatus,
            Method::SaveState => {
                // No path, no file name: the state goes to the VMI directory's own file.
                let p: SaveStateParams = serde_json::from_value(params)
                    .map_err(|e| RpcError::bad_request(format!("params: {e}")))?;
                Request::SaveState { resume: p.resume }
            }
            Method::DumpMemory => {
                // Nothing to choose: the dump goes to the VMI directory's own file.
                if params.as_object().is_none_or(|o| !o.is_empty()) {
                    return Err(RpcError::bad_request(
                        "params: dumpMemory takes none (the dump goes to the VMI directory's state/memory.dump)",
                    ));
                }
                Request::DumpMemory
            }
            Method::Freeze => {
                let p: FreezeParams = serde_json::from_value(params).map_err(|e| {
                    RpcError::bad_request(format!(
                        "params.unfreezeTimeoutSeconds (seconds, required): {e}"
                    ))
                })?;
                let max = kubevirt_api::freeze::MAX_UNFREEZE_TIMEOUT.as_secs();
                if !(1..=max).contains(&p.unfreeze_timeout_seconds) {
                    return Err(RpcError::bad_request(format!(
                        "params.unfreezeTimeoutSeconds: {} is out of range 1..={max}",
                        p.unfreeze_timeout_seconds
                    )));
                }
                Request::Freeze {
                    unfreeze_timeout_seconds: p.unfreeze_timeout_seconds,
                }
            }
            Method::Unfreeze => Request::Unfreeze,
        })
    }
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("method", self.method().as_str())?;
        m.serialize_entry("params", &self.params())?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            method: String,
            #[serde(default)]
            params: Value,
        }
        let raw = Raw::deserialize(d)?;
        Request::from_parts(&raw.method, raw.params).map_err(D::Error::custom)
    }
}

/// A request on the wire: `{"v":1,"id":N,"method":...,"params":...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub v: u64,
    pub id: u64,
    #[serde(flatten)]
    pub request: Request,
}

impl RequestFrame {
    pub fn new(id: u64, request: Request) -> RequestFrame {
        RequestFrame {
            v: VERSION,
            id,
            request,
        }
    }
}

/// What the server makes of one line: the id to answer with (whatever the client sent,
/// `null` if nothing usable) and the request or the error to reply with.
pub(crate) fn decode_request(line: &str) -> (Value, Result<Request, RpcError>) {
    let req: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            return (
                Value::Null,
                Err(RpcError::bad_request(format!("not JSON: {e}"))),
            )
        }
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let v = req.get("v").and_then(Value::as_u64).unwrap_or(0);
    if v != VERSION {
        let e = RpcError::new(
            ErrorCode::UnsupportedVersion,
            format!("protocol version {v} is not supported; this launcher speaks v{VERSION}"),
        );
        return (id, Err(e));
    }
    let method = req.get("method").and_then(Value::as_str).unwrap_or("");
    let params = req.get("params").cloned().unwrap_or(Value::Null);
    (id, Request::from_parts(method, params))
}

/// A successful reply's `result`; which variant depends on the method asked.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// `sync`, `state`: the state.
    State(Box<State>),
    /// `pause`, `unpause`, `shutdown`, `stop`, `reset`, `softReboot`, `setBalloon`, `freeze`,
    /// `unfreeze`: `{}`.
    Done,
    /// `stats`: `{"vcpus":[...],"memory":{...},"block":[...],"net":null}` as QEMU reports them.
    Stats(Value),
    /// `subscribe`: `{"subscribed":true,"state":...}`; events follow on the connection.
    Subscribed { state: Box<State> },
    /// `guestOsInfo`, `userList`, `filesystemList`: KubeVirt's subresource answer as JSON.
    GuestAgent(Value),
    /// `syncVolumes`: `{"volumes":[...]}`, every hotplugged volume.
    Volumes(Vec<HotplugVolume>),
    /// `prepareMigrationTarget`, `migrate`, `cancelMigration`, `migrationStatus`.
    Migration(Box<MigrationStatus>),
    /// `saveState`: what was saved and what machine it fits.
    SavedState(Box<SavedState>),
    /// `dumpMemory`: the dump's size and how long it took.
    MemoryDump(MemoryDump),
}

#[derive(Serialize, Deserialize)]
struct VolumesReply {
    volumes: Vec<HotplugVolume>,
}

impl Response {
    /// Decode a `result` for a request of `method`.
    pub fn decode(method: Method, result: Value) -> Result<Response, serde_json::Error> {
        Ok(match method {
            Method::Sync | Method::State | Method::SetResources => {
                Response::State(serde_json::from_value(result)?)
            }
            Method::Stats => Response::Stats(result),
            Method::PrepareMigrationTarget
            | Method::Migrate
            | Method::CancelMigration
            | Method::MigrationStatus => Response::Migration(serde_json::from_value(result)?),
            Method::SaveState => Response::SavedState(serde_json::from_value(result)?),
            Method::DumpMemory => Response::MemoryDump(serde_json::from_value(result)?),
            Method::SyncVolumes => {
                Response::Volumes(serde_json::from_value::<VolumesReply>(result)?.volumes)
            }
            Method::GuestOsInfo | Method::UserList | Method::FilesystemList => {
                Response::GuestAgent(result)
            }
            Method::Subscribe => {
                #[derive(Deserialize)]
                struct Sub {
                    state: Box<State>,
                }
                let s: Sub = serde_json::from_value(result)?;
                Response::Subscribed { state: s.state }
            }
            Method::Pause
            | Method::Unpause
            | Method::Shutdown
            | Method::Stop
            | Method::Reset
            | Method::SoftReboot
            | Method::SetBalloon
            | Method::Freeze
            | Method::Unfreeze => Response::Done,
        })
    }

    /// The migration status carried by the migration methods' replies.
    pub fn into_migration(self) -> Option<MigrationStatus> {
        match self {
            Response::Migration(m) => Some(*m),
            _ => None,
        }
    }

    /// The saved state of a `saveState` reply.
    pub fn into_saved_state(self) -> Option<SavedState> {
        match self {
            Response::SavedState(v) => Some(*v),
            _ => None,
        }
    }

    /// The state carried by `State` and `Subscribed`.
    pub fn into_state(self) -> Option<State> {
        match self {
            Response::State(s) | Response::Subscribed { state: s } => Some(*s),
            _ => None,
        }
    }
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Response::State(st) => st.serialize(s),
            Response::Done => s.serialize_map(Some(0))?.end(),
            Response::Stats(v) | Response::GuestAgent(v) => v.serialize(s),
            Response::Volumes(v) => VolumesReply { volumes: v.clone() }.serialize(s),
            Response::Migration(m) => m.serialize(s),
            Response::SavedState(v) => v.serialize(s),
            Response::MemoryDump(v) => v.serialize(s),
            Response::Subscribed { state } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("subscribed", &true)?;
                m.serialize_entry("state", state)?;
                m.end()
            }
        }
    }
}

/// A reply on the wire: `{"id":N,"result":...}` or `{"id":N,"error":{...}}`. The id is
/// echoed as the client sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplyFrame {
    pub id: Value,
    pub outcome: Result<Response, RpcError>,
}

impl Serialize for ReplyFrame {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("id", &self.id)?;
        match &self.outcome {
            Ok(r) => m.serialize_entry("result", r)?,
            Err(e) => m.serialize_entry("error", e)?,
        }
        m.end()
    }
}

impl ReplyFrame {
    /// Decode a reply line to a request of `method`.
    pub fn decode(line: &str, method: Method) -> Result<ReplyFrame, serde_json::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            id: Value,
            result: Option<Value>,
            error: Option<RpcError>,
        }
        let raw: Raw = serde_json::from_str(line)?;
        let outcome = match (raw.error, raw.result) {
            (Some(e), _) => Err(e),
            (None, Some(r)) => Ok(Response::decode(method, r)?),
            (None, None) => {
                return Err(serde_json::Error::custom(
                    "a reply has neither result nor error",
                ))
            }
        };
        Ok(ReplyFrame {
            id: raw.id,
            outcome,
        })
    }
}

/// What goes wrong in a call, as the launcher reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not JSON, a missing or mistyped parameter.
    BadRequest,
    /// `v` is not [`VERSION`].
    UnsupportedVersion,
    UnknownMethod,
    /// No VMI has been started (`sync` first).
    NotStarted,
    /// The VMI cannot run on this backend.
    InvalidSpec,
    /// The VM's phase does not allow the request (e.g. it has ended).
    WrongPhase,
    /// Neither KVM nor (allowed) emulation.
    NoAccelerator,
    /// Anything else (QEMU, I/O).
    Failed,
    /// `cancelMigration` or `migrationStatus` with no migration to speak of.
    NoMigration,
    /// A code this client does not know (a newer launcher).
    Other(String),
}

impl ErrorCode {
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::BadRequest => "BadRequest",
            ErrorCode::UnsupportedVersion => "UnsupportedVersion",
            ErrorCode::UnknownMethod => "UnknownMethod",
            ErrorCode::NotStarted => "NotStarted",
            ErrorCode::InvalidSpec => "InvalidSpec",
            ErrorCode::WrongPhase => "WrongPhase",
            ErrorCode::NoAccelerator => "NoAccelerator",
            ErrorCode::Failed => "Failed",
            ErrorCode::NoMigration => "NoMigration",
            ErrorCode::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> ErrorCode {
        [
            ErrorCode::BadRequest,
            ErrorCode::UnsupportedVersion,
            ErrorCode::UnknownMethod,
            ErrorCode::NotStarted,
            ErrorCode::InvalidSpec,
            ErrorCode::WrongPhase,
            ErrorCode::NoAccelerator,
            ErrorCode::Failed,
            ErrorCode::NoMigration,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
        .unwrap_or_else(|| ErrorCode::Other(s.to_string()))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ErrorCode::parse(&s))
    }
}

/// An error reply: `{"code":"...","message":"..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorCode::BadRequest, message)
    }
}

/// A phase change, as broadcast inside the launcher and streamed to subscribers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    pub phase: Phase,
    pub reason: String,
    pub message: String,
    pub timestamp: f64,
}

/// What a subscribed connection streams: `{"event":"StateChanged",...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum Event {
    StateChanged(StateChange),
    /// A migration's progress or outcome (`{"event":"Migration","role":...}`); clients that do
    /// not know it skip it.
    Migration(MigrationStatus),
    /// A `saveState`'s progress (`{"event":"StateSave","status":...}`).
    StateSave(SaveProgress),
}

/// Read one line of at most [`MAX_LINE`] bytes into `buf` (cleared first). `Ok(false)` at the
/// end of the stream.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    buf.clear();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)
        .await?;
    if buf.len() > MAX_LINE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a line longer than {MAX_LINE} bytes"),
        ));
    }
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        let mut s = State::pending("default/demo");
        s.launcher_pid = 42;
        s.timestamp = 1.5;
        s
    }

    /// Each request as today's clients write it (the literal bytes), decoded and re-encoded.
    #[test]
    fn requests_round_trip_against_the_literal_protocol() {
        let cases: Vec<(&str, Request)> = vec![
            (
                r#"{"v":1,"id":1,"method":"state","params":{}}"#,
                Request::State,
            ),
            (
                r#"{"v":1,"id":2,"method":"pause","params":{}}"#,
                Request::Pause,
            ),
            (
                r#"{"v":1,"id":3,"method":"unpause","params":{}}"#,
                Request::Unpause,
            ),
            (
                r#"{"v":1,"id":4,"method":"shutdown","params":{"gracePeriodSeconds":60}}"#,
                Request::Shutdown {
                    grace_period_seconds: Some(60),
                },
            ),
            (
                r#"{"v":1,"id":5,"method":"shutdown","params":{}}"#,
                Request::Shutdown {
                    grace_period_seconds: None,
                },
            ),
            (
                r#"{"v":1,"id":6,"method":"stop","params":{}}"#,
                Request::Stop,
            ),
            (
                r#"{"v":1,"id":7,"method":"reset","params":{}}"#,
                Request::Reset,
            ),
            (
                r#"{"v":1,"id":8,"method":"softReboot","params":{}}"#,
                Request::SoftReboot,
            ),
            (
                r#"{"v":1,"id":9,"method":"setBalloon","params":{"bytes":1048576}}"#,
                Request::SetBalloon { bytes: 1 << 20 },
            ),
            (
                r#"{"v":1,"id":10,"method":"stats","params":{}}"#,
                Request::Stats,
            ),
            (
                r#"{"v":1,"id":11,"method":"subscribe","params":{}}"#,
                Request::Subscribe,
            ),
            (
                r#"{"v":1,"id":12,"method":"setResources","params":{"sockets":2,"guestMemoryBytes":2147483648}}"#,
                Request::SetResources {
                    sockets: Some(2),
                    guest_memory_bytes: Some(2 << 30),
                },
            ),
            (
                r#"{"v":1,"id":13,"method":"setResources","params":{"sockets":3}}"#,
                Request::SetResources {
                    sockets: Some(3),
                    guest_memory_bytes: None,
                },
            ),
        ];
        for (line, want) in cases {
            let frame: RequestFrame = serde_json::from_str(line).unwrap();
            assert_eq!(frame.request, want, "{line}");
            assert_eq!(frame.v, 1);
            let (_, decoded) = decode_request(line);
            assert_eq!(decoded.as_ref(), Ok(&want), "{line}");
            let back = serde_json::to_value(&frame).unwrap();
            let literal: Value = serde_json::from_str(line).unwrap();
            assert_eq!(back, literal, "{line}");
        }
    }

    #[test]
    fn sync_carries_the_vmi_and_accepts_a_bare_one() {
        let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                         "metadata": {"name": "demo", "namespace": "default"},
                         "spec": {"domain": {"devices": {}}}});
        let line = json!({"v": 1, "id": 7, "method": "sync", "params": {"vmi": vmi}}).to_string();
        let (id, req) = decode_request(&line);
        assert_eq!(id, json!(7));
        let Ok(Request::Sync { vmi: got }) = req else {
            panic!("{req:?}")
        };
        assert_eq!(got.metadata.name.as_deref(), Some("demo"));
        let frame = RequestFrame::new(7, Request::Sync { vmi: got.clone() });
        let back = serde_json::to_value(&frame).unwrap();
        assert_eq!(back["params"]["vmi"]["metadata"]["name"], "demo");
        assert_eq!(back["method"], "sync");
        let bare = json!({"v": 1, "id": 8, "method": "sync", "params": vmi}).to_string();
        assert!(matches!(decode_request(&bare).1, Ok(Request::Sync { .. })));
    }

    /// Hostile numbers never reach QMP: negative, fractional or oversized values are a bad
    /// request that names the parameters.
    #[test]
    fn set_resources_refuses_what_is_not_a_count() {
        for params in [
            r#"{"sockets":-1}"#,
            r#"{"sockets":4294967296}"#,
            r#"{"guestMemoryBytes":1.5}"#,
            r#"{"guestMemoryBytes":"1Gi"}"#,
        ] {
            let line = format!(r#"{{"v":1,"id":1,"method":"setResources","params":{params}}}"#);
            let (_, r) = decode_request(&line);
            let e = r.expect_err(params);
            assert_eq!(e.code, ErrorCode::BadRequest, "{params}");
            assert!(e.message.contains("params.sockets"), "{}", e.message);
        }
    }

    #[test]
    fn migration_requests_round_trip_against_the_literal_protocol() {
        use crate::api::migration::MigrationOptions;
        let line = r#"{"v":1,"id":1,"method":"migrate","params":{"target":"127.0.0.1:49152","options":{"bandwidthPerMigration":"64Mi","allowPostCopy":true,"parallelMigrationThreads":2}}}"#;
        let (_, r) = decode_request(line);
        let want = Request::Migrate {
            target: "127.0.0.1:49152".parse().unwrap(),
            block_target: None,
            options: MigrationOptions {
                bandwidth_per_migration: Some(64 << 20),
                allow_post_copy: true,
                parallel_migration_threads: Some(2),
                ..Default::default()
            },
        };
        assert_eq!(r, Ok(want.clone()));
        let back = serde_json::to_value(RequestFrame::new(1, want)).unwrap();
        assert_eq!(
            back["params"],
            json!({"target": "127.0.0.1:49152", "options": {"bandwidthPerMigration": "67108864",
                   "allowAutoConverge": false, "allowPostCopy": true, "parallelMigrationThreads": 2}})
        );
        let (_, r) = decode_request(
            r#"{"v":1,"id":2,"method":"prepareMigrationTarget","params":{"listen":"[::1]:0"}}"#,
        );
        assert_eq!(
            r,
            Ok(Request::PrepareMigrationTarget {
                listen: "[::1]:0".parse().unwrap(),
                options: MigrationOptions::default(),
            })
        );
        for (m, want) in [
            ("cancelMigration", Request::CancelMigration),
            ("migrationStatus", Request::MigrationStatus),
        ] {
            let line = format!(r#"{{"v":1,"id":3,"method":"{m}"}}"#);
            assert_eq!(decode_request(&line).1, Ok(want));
        }
        // The reply and the event carry the status as it is.
        let st = crate::api::MigrationStatus::new(
            crate::api::MigrationRole::Source,
            Some("127.0.0.1:49152".parse().unwrap()),
            1.0,
        );
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["role"], "Source");
        assert_eq!(v["address"], "127.0.0.1:49152");
        let reply = ReplyFrame::decode(&json!({"id": 4, "result": v}).to_string(), Method::Migrate)
            .unwrap();
        assert_eq!(reply.outcome, Ok(Response::Migration(Box::new(st.clone()))));
        let ev = serde_json::to_value(Event::Migration(st.clone())).unwrap();
        assert_eq!(ev["event"], "Migration");
        assert_eq!(ev["qemuStatus"], "none");
        // Without block migration the status has none of its fields (older readers are
        // unaffected either way: they ignore unknown fields).
        assert!(ev.get("blockAddress").is_none() && ev.get("blockExports").is_none());
        // Downtime and total time are additive: absent until the source completes (so an
        // older reader never sees them), then plain milliseconds.
        assert!(v.get("downtimeMs").is_none() && v.get("totalTimeMs").is_none());
        let done = crate::api::MigrationStatus {
            completed: true,
            downtime_ms: Some(42),
            total_time_ms: Some(1234),
            ..st
        };
        let v = serde_json::to_value(&done).unwrap();
        assert_eq!(
            (&v["downtimeMs"], &v["totalTimeMs"]),
            (&json!(42), &json!(1234))
        );
        assert_eq!(
            serde_json::from_value::<crate::api::MigrationStatus>(v).unwrap(),
            done
        );
    }

    #[test]
    fn block_migration_fields_round_trip_against_the_literal_protocol() {
        use crate::api::migration::MigrationOptions;
        let line = r#"{"v":1,"id":1,"method":"migrate","params":{"target":"10.0.0.2:49152","blockTarget":"10.0.0.2:49153"}}"#;
        let want = Request::Migrate {
            target: "10.0.0.2:49152".parse().unwrap(),
            block_target: Some("10.0.0.2:49153".parse().unwrap()),
            options: MigrationOptions::default(),
        };
        assert_eq!(decode_request(line).1, Ok(want.clone()));
        let back = serde_json::to_value(RequestFrame::new(1, want)).unwrap();
        assert_eq!(back["params"]["blockTarget"], "10.0.0.2:49153");
        // IPv6 in brackets, as for `target`.
        let line = r#"{"v":1,"id":1,"method":"migrate","params":{"target":"[fd00::2]:1","blockTarget":"[fd00::2]:2"}}"#;
        assert!(decode_request(line).1.is_ok());
        // The target's reply: where its NBD server listens and what it exports.
        let mut st = crate::api::MigrationStatus::new(
            crate::api::MigrationRole::Target,
            Some("10.0.0.2:49152".parse().unwrap()),
            1.0,
        );
        st.block_address = Some("10.0.0.2:49153".parse().unwrap());
        st.block_exports = vec!["scratch".into(), "rootdisk".into()];
        st.block_transferred_bytes = 5;
        st.block_total_bytes = 10;
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["blockAddress"], "10.0.0.2:49153");
        assert_eq!(v["blockExports"], json!(["scratch", "rootdisk"]));
        assert_eq!(
            (
                v["blockTransferredBytes"].clone(),
                v["blockTotalBytes"].clone()
            ),
            (json!(5), json!(10))
        );
        let reply = ReplyFrame::decode(
            &json!({"id": 4, "result": v}).to_string(),
            Method::PrepareMigrationTarget,
        )
        .unwrap();
        assert_eq!(reply.outcome, Ok(Response::Migration(Box::new(st))));
    }

    /// `blockTarget` reaches QEMU's NBD client as a host and a port: it is held to the same
    /// rules as `target`.
    #[test]
    fn hostile_block_targets_are_refused_naming_the_field() {
        for value in [
            json!("example.com:10809"),
            json!("nbd:127.0.0.1:10809:exportname=x"),
            json!("nbd+unix:///x?socket=/run/x.sock"),
            json!("unix:/run/qmp.sock"),
            json!("1.2.3.4:5,x=y"),
            json!("1.2.3.4:5:exportname=../x"),
            json!("127.0.0.1:0"),
            json!("0.0.0.0:10809"),
            json!("[::]:10809"),
            json!("224.0.0.1:10809"),
            json!("[fe80::1%eth0]:10809"),
            json!("127.0.0.1"),
            json!(""),
            json!(10809),
            json!({"type": "inet", "host": "127.0.0.1", "port": "1"}),
        ] {
            let line = json!({"v": 1, "id": 1, "method": "migrate",
                              "params": {"target": "127.0.0.1:1", "blockTarget": value}})
            .to_string();
            let e = decode_request(&line).1.expect_err(&line);
            assert_eq!(e.code, ErrorCode::BadRequest, "{line}");
            assert!(
                e.message.contains("params.blockTarget")
                    || e.message.starts_with("params: invalid type"),
                "{line}: {}",
                e.message
            );
        }
        // A target does not take one: its NBD server listens on params.listen's IP.
        let line = json!({"v": 1, "id": 1, "method": "prepareMigrationTarget",
                          "params": {"listen": "127.0.0.1:0", "blockTarget": "127.0.0.1:2"}})
        .to_string();
        let e = decode_request(&line).1.expect_err(&line);
        assert!(e.message.starts_with("params.blockTarget"), "{}", e.message);
        // Misspelt, it is an unknown field rather than silently no block migration.
        let line = json!({"v": 1, "id": 1, "method": "migrate",
                          "params": {"target": "127.0.0.1:1", "blocktarget": "127.0.0.1:2"}})
        .to_string();
        let e = decode_request(&line).1.expect_err(&line);
        assert!(e.message.contains("unknown field"), "{}", e.message);
    }

    /// The addresses reach QEMU's URI: only an IP and a port may, never a name, a path, an
    /// option suffix or another transport.
    #[test]
    fn migration_addresses_must_be_an_ip_and_a_port() {
        for (method, field, value) in [
            ("migrate", "target", json!("example.com:4444")),
            ("migrate", "target", json!("127.0.0.1")),
            ("migrate", "target", json!("127.0.0.1:0")),
            ("migrate", "target", json!("0.0.0.0:4444")),
            ("migrate", "target", json!("224.0.0.1:4444")),
            ("migrate", "target", json!("127.0.0.1:4444,server=on")),
            ("migrate", "target", json!("tcp:127.0.0.1:4444")),
            ("migrate", "target", json!("exec:sh -c reboot")),
            ("migrate", "target", json!("unix:/run/x.sock")),
            ("migrate", "target", json!("127.0.0.1:70000")),
            ("migrate", "target", json!("[fe80::1%2]:4444")),
            ("migrate", "target", json!(4444)),
            ("migrate", "target", Value::Null),
            (
                "prepareMigrationTarget",
                "listen",
                json!("255.255.255.255:4444"),
            ),
            ("prepareMigrationTarget", "listen", json!("localhost:0")),
            ("prepareMigrationTarget", "listen", json!("")),
        ] {
            let line =
                json!({"v": 1, "id": 1, "method": method, "params": {field: value}}).to_string();
            let e = decode_request(&line).1.expect_err(&line);
            assert_eq!(e.code, ErrorCode::BadRequest, "{line}");
            assert!(e.message.starts_with("params"), "{line}: {}", e.message);
        }
        for (params, needle) in [
            (
                json!({"target": "127.0.0.1:1", "options": {"bandwidthPerMigration": "-1Mi"}}),
                "negative",
            ),
            (
                json!({"target": "127.0.0.1:1", "options": {"bandwidthPerMigration": -1}}),
                "negative",
            ),
            (
                json!({"target": "127.0.0.1:1", "options": {"parallelMigrationThreads": 0}}),
                "parallelMigrationThreads",
            ),
            (
                json!({"target": "127.0.0.1:1", "options": {"progressTimeout": -3}}),
                "invalid value",
            ),
            (
                json!({"target": "127.0.0.1:1", "listen": "127.0.0.1:2"}),
                "params.listen",
            ),
            (
                json!({"target": "127.0.0.1:1", "uri": "exec:true"}),
                "unknown field",
            ),
        ] {
            let line = json!({"v": 1, "id": 1, "method": "migrate", "params": params}).to_string();
            let e = decode_request(&line).1.expect_err(&line);
            assert_eq!(e.code, ErrorCode::BadRequest, "{line}");
            assert!(e.message.contains(needle), "{line}: {}", e.message);
        }
    }

    /// `saveState` takes no path, no file name and no URI: the state goes to the VMI
    /// directory's own file, so nothing a caller sends can point QEMU elsewhere.
    #[test]
    fn save_state_round_trips_and_refuses_anything_that_would_name_a_file() {
        use crate::api::memstate::{MachineFacts, SaveProgress, SavedState, FORMAT};
        let line = r#"{"v":1,"id":1,"method":"saveState","params":{"resume":true}}"#;
        assert_eq!(
            decode_request(line).1,
            Ok(Request::SaveState { resume: true })
        );
        let back = serde_json::to_value(RequestFrame::new(1, Request::SaveState { resume: true }))
            .unwrap();
        assert_eq!(back["params"], json!({"resume": true}));
        assert_eq!(
            decode_request(r#"{"v":1,"id":1,"method":"saveState"}"#).1,
            Ok(Request::SaveState { resume: false })
        );
        for params in [
            json!({"path": "/etc/shadow"}),
            json!({"file": "../../x"}),
            json!({"uri": "exec:sh -c reboot"}),
            json!({"resume": "yes"}),
            json!({"resume": true, "fd": 3}),
        ] {
            let line =
                json!({"v": 1, "id": 1, "method": "saveState", "params": params}).to_string();
            let e = decode_request(&line).1.expect_err(&line);
            assert_eq!(e.code, ErrorCode::BadRequest, "{line}");
            assert!(e.message.starts_with("params"), "{}", e.message);
        }
        let saved = SavedState {
            format: FORMAT,
            vmi: "default/demo".into(),
            qemu_version: "7.2.15".into(),
            machine: MachineFacts(vec!["-machine microvm".into(), "-m 256M".into()]),
            memory_bytes: 256 << 20,
            size_bytes: 82_000_000,
            duration_ms: 130,
            guest_running: true,
            saved_at: 1_700_000_000.5,
        };
        let reply = json!({"id": 3, "result": {
            "format": 1, "vmi": "default/demo", "qemuVersion": "7.2.15",
            "machine": ["-machine microvm", "-m 256M"], "memoryBytes": 268435456u64,
            "sizeBytes": 82000000, "durationMs": 130, "guestRunning": true,
            "savedAt": 1700000000.5}});
        let got = ReplyFrame::decode(&reply.to_string(), Method::SaveState).unwrap();
        assert_eq!(got.outcome, Ok(Response::SavedState(Box::new(saved))));
        assert_eq!(serde_json::to_value(&got).unwrap(), reply);
        // dumpMemory: no parameters at all, an ELF core's size back.
        assert_eq!(
            decode_request(r#"{"v":1,"id":1,"method":"dumpMemory"}"#).1,
            Ok(Request::DumpMemory)
        );
        for params in [
            json!({"path": "/var/lib/x.dump"}),
            json!({"format": "kdump-zlib"}),
        ] {
            let line =
                json!({"v": 1, "id": 1, "method": "dumpMemory", "params": params}).to_string();
            let e = decode_request(&line).1.expect_err(&line);
            assert_eq!(e.code, ErrorCode::BadRequest, "{line}");
        }
        let reply = json!({"id": 4, "result": {"format": "elf", "sizeBytes": 268500000u64, "durationMs": 900}});
        let got = ReplyFrame::decode(&reply.to_string(), Method::DumpMemory).unwrap();
        assert_eq!(
            got.outcome,
            Ok(Response::MemoryDump(crate::api::memstate::MemoryDump {
                format: "elf".into(),
                size_bytes: 268_500_000,
                duration_ms: 900
            }))
        );
        assert_eq!(serde_json::to_value(&got).unwrap(), reply);
        let ev: Event = serde_json::from_value(json!({"event": "StateSave", "status": "active",
            "transferredBytes": 5, "remainingBytes": 7, "totalBytes": 12}))
        .unwrap();
        assert_eq!(
            ev,
            Event::StateSave(SaveProgress {
                status: "active".into(),
                transferred_bytes: 5,
                remaining_bytes: 7,
                total_bytes: 12
            })
        );
    }

    #[test]
    fn subscribe_without_params_is_accepted() {
        // The handler's subscribe line before issue 10 had no params.
        let (id, req) = decode_request(r#"{"v":1,"id":1,"method":"subscribe"}"#);
        assert_eq!((id, req), (json!(1), Ok(Request::Subscribe)));
    }

    #[test]
    fn bad_requests_get_the_codes_they_got_before() {
        let (id, r) = decode_request("nope");
        assert_eq!(id, Value::Null);
        assert_eq!(r.unwrap_err().code, ErrorCode::BadRequest);
        let (id, r) = decode_request(r#"{"v":2,"id":3,"method":"state"}"#);
        assert_eq!(id, json!(3));
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);
        assert_eq!(
            e.message,
            "protocol version 2 is not supported; this launcher speaks v1"
        );
        let (_, r) = decode_request(r#"{"id":3,"method":"state"}"#);
        assert_eq!(r.unwrap_err().code, ErrorCode::UnsupportedVersion);
        let (_, r) = decode_request(r#"{"v":1,"id":3,"method":"explode"}"#);
        assert_eq!(
            r.unwrap_err(),
            RpcError::new(ErrorCode::UnknownMethod, "unknown method \"explode\"")
        );
        let (_, r) = decode_request(r#"{"v":1,"id":3,"method":"setBalloon","params":{}}"#);
        assert_eq!(r.unwrap_err().code, ErrorCode::BadRequest);
        let (_, r) = decode_request(r#"{"v":1,"id":3,"method":"sync","params":{"vmi":1}}"#);
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e
            .message
            .starts_with("params.vmi is not a VirtualMachineInstance"));
    }

    #[test]
    fn freeze_takes_a_bounded_timeout_and_nothing_else() {
        let (_, r) = decode_request(
            r#"{"v":1,"id":1,"method":"freeze","params":{"unfreezeTimeoutSeconds":300}}"#,
        );
        assert_eq!(
            r,
            Ok(Request::Freeze {
                unfreeze_timeout_seconds: 300
            })
        );
        let back = serde_json::to_value(RequestFrame::new(
            1,
            Request::Freeze {
                unfreeze_timeout_seconds: 300,
            },
        ))
        .unwrap();
        assert_eq!(back["params"], json!({"unfreezeTimeoutSeconds": 300}));
        for params in [
            "{}",
            r#"{"unfreezeTimeoutSeconds":0}"#,
            r#"{"unfreezeTimeoutSeconds":3601}"#,
            r#"{"unfreezeTimeoutSeconds":-1}"#,
            r#"{"unfreezeTimeoutSeconds":"5m"}"#,
            r#"{"unfreezeTimeoutSeconds":18446744073709551616}"#,
            r#"{"unfreezeTimeoutSeconds":5,"path":"/x"}"#,
        ] {
            let (_, r) = decode_request(&format!(
                r#"{{"v":1,"id":1,"method":"freeze","params":{params}}}"#
            ));
            let e = r.expect_err(params);
            assert_eq!(e.code, ErrorCode::BadRequest, "{params}");
            assert!(
                e.message.contains("params.unfreezeTimeoutSeconds"),
                "{params}: {}",
                e.message
            );
        }
        let (_, r) = decode_request(r#"{"v":1,"id":2,"method":"unfreeze"}"#);
        assert_eq!(r, Ok(Request::Unfreeze));
    }

    #[test]
    fn replies_round_trip_against_the_literal_protocol() {
        let st = serde_json::to_value(state()).unwrap();
        let cases: Vec<(Method, Value, ReplyFrame)> = vec![
            (
                Method::Pause,
                json!({"id": 2, "result": {}}),
                ReplyFrame {
                    id: json!(2),
                    outcome: Ok(Response::Done),
                },
            ),
            (
                Method::State,
                json!({"id": 1, "result": st}),
                ReplyFrame {
                    id: json!(1),
                    outcome: Ok(Response::State(Box::new(state()))),
                },
            ),
            (
                Method::Subscribe,
                json!({"id": 1, "result": {"subscribed": true, "state": st}}),
                ReplyFrame {
                    id: json!(1),
                    outcome: Ok(Response::Subscribed {
                        state: Box::new(state()),
                    }),
                },
            ),
            (
                Method::Stats,
                json!({"id": 4, "result": {"vcpus": [], "net": null}}),
                ReplyFrame {
                    id: json!(4),
                    outcome: Ok(Response::Stats(json!({"vcpus": [], "net": null}))),
                },
            ),
            (
                Method::Pause,
                json!({"id": 5, "error": {"code": "NotStarted",
                       "message": "no VMI has been started (sync first)"}}),
                ReplyFrame {
                    id: json!(5),
                    outcome: Err(RpcError::new(
                        ErrorCode::NotStarted,
                        "no VMI has been started (sync first)",
                    )),
                },
            ),
            (
                Method::Stop,
                json!({"id": 6, "error": {"code": "SomethingNew", "message": "m"}}),
                ReplyFrame {
                    id: json!(6),
                    outcome: Err(RpcError::new(ErrorCode::Other("SomethingNew".into()), "m")),
                },
            ),
        ];
        for (method, literal, want) in cases {
            let got = ReplyFrame::decode(&literal.to_string(), method).unwrap();
            assert_eq!(got, want, "{literal}");
            assert_eq!(serde_json::to_value(&got).unwrap(), literal);
        }
        assert!(ReplyFrame::decode(r#"{"id":1}"#, Method::State).is_err());
    }

    #[test]
    fn state_json_keeps_its_field_names() {
        let v = serde_json::to_value(state()).unwrap();
        for k in [
            "phase",
            "reason",
            "message",
            "vmi",
            "accelerator",
            "acceleratorReason",
            "qemuPid",
            "launcherPid",
            "interfaces",
            "vncSocket",
            "consoleSocket",
            "ports",
            "timestamp",
        ] {
            assert!(v.get(k).is_some(), "{k} missing from {v}");
        }
        assert_eq!(v["phase"], "Pending");
    }

    #[test]
    fn every_error_code_round_trips() {
        for code in [
            "BadRequest",
            "UnsupportedVersion",
            "UnknownMethod",
            "NotStarted",
            "InvalidSpec",
            "WrongPhase",
            "NoAccelerator",
            "Failed",
            "NoMigration",
        ] {
            let c: ErrorCode = serde_json::from_value(json!(code)).unwrap();
            assert!(!matches!(c, ErrorCode::Other(_)), "{code}");
            assert_eq!(serde_json::to_value(&c).unwrap(), json!(code));
        }
    }

    #[test]
    fn events_round_trip_against_the_literal_protocol() {
        let line = r#"{"event":"StateChanged","phase":"Paused","reason":"PausedByUser","message":"paused on request","timestamp":1700000000.25}"#;
        let ev: Event = serde_json::from_str(line).unwrap();
        assert_eq!(
            ev,
            Event::StateChanged(StateChange {
                phase: Phase::Paused,
                reason: "PausedByUser".into(),
                message: "paused on request".into(),
                timestamp: 1_700_000_000.25,
            })
        );
        assert_eq!(serde_json::to_string(&ev).unwrap(), line);
    }

    #[test]
    fn method_names_are_unique_and_parse_back() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.as_str()), Some(m));
        }
        assert_eq!(Method::parse("Pause"), None);
    }

    #[tokio::test]
    async fn overlong_lines_are_refused() {
        let mut big = vec![b'x'; MAX_LINE + 10];
        big.push(b'\n');
        let mut r = tokio::io::BufReader::new(&big[..]);
        let mut buf = Vec::new();
        assert!(read_line(&mut r, &mut buf).await.is_err());
        let mut r = tokio::io::BufReader::new(&b"a\nb"[..]);
        assert!(read_line(&mut r, &mut buf).await.unwrap());
        assert_eq!(buf, b"a\n");
        assert!(read_line(&mut r, &mut buf).await.unwrap());
        assert_eq!(buf, b"b");
        assert!(!read_line(&mut r, &mut buf).await.unwrap());
    }
}

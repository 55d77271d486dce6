//! The launcher's contract: the one place that knows the per-VMI directory's layout and the
//! `launcher.sock` protocol. The launcher serves it (`rpc.rs`); virt-handler, virt-api,
//! `kubevirt-rs launcher state|console` and the tests use it, never paths or JSON of their own.
//!
//! - [`VmiDir`]: every file and socket of `<data>/vms/<key>/` (keyed by a hash of namespace and name), built from a
//!   validated namespace (DNS-1123 label) and name (DNS-1123 subdomain), proven to stay under
//!   `<data>/vms`, and refused when a socket path would not fit a unix socket address.
//! - [`Request`], [`Response`], [`Event`], [`RpcError`] / [`ErrorCode`]: the wire format,
//!   newline-delimited JSON, version [`VERSION`]:
//!   request `{"v":1,"id":N,"method":"...","params":{...}}`, reply `{"id":N,"result":...}` or
//!   `{"id":N,"error":{"code":"...","message":"..."}}`, and after `subscribe` a stream of
//!   `{"event":"StateChanged","phase":...,"reason":...,"message":...,"timestamp":...}`.
//! - [`migration`]: what `migrate` / `prepareMigrationTarget` carry ([`MigrationOptions`],
//!   KubeVirt's `MigrationConfiguration` names) and report ([`MigrationStatus`]).
//! - [`memstate`]: memory snapshots: what `saveState` replies ([`memstate::SavedState`]) and
//!   the handler's `restore-memory.json` ([`memstate::MemoryRestore`]).
//! - [`LauncherClient`]: the async client (timeouts, typed errors), [`call_blocking`] for
//!   CLIs and synchronous tests.

mod client;
mod dir;
pub mod logs;
pub mod memstate;
pub mod migration;
mod protocol;
pub mod stats;

pub use crate::launcher::{GuestInterface, Phase, State};
pub use client::{call_blocking, ClientError, LauncherClient, Subscription};
pub use dir::{
    AgentCredentials, NodeVolumes, PodAddress, PodInterface, PodNetworkInfo, SriovDevice, VmiDir,
    VmiDirError, VmiOwner, SUN_PATH_MAX,
};
pub use migration::{MigrationOptions, MigrationRole, MigrationStatus};
pub(crate) use protocol::{decode_request, read_line};
pub use protocol::{
    ErrorCode, Event, HotplugVolume, Method, ReplyFrame, Request, RequestFrame, Response, RpcError,
    StateChange, MAX_LINE, VERSION,
};

//! virt-api's subresources (`/apis/subresources.kubevirt.io/v1/...`), with KubeVirt's rules,
//! status codes and messages:
//!
//! - VirtualMachine `start`, `stop`, `restart`: they change `spec.runStrategy` or add
//!   `status.stateChangeRequests`, exactly as KubeVirt's virt-api does; virt-controller acts
//!   on them. `migrate` creates a VirtualMachineInstanceMigration, as KubeVirt's virt-api does.
//! - VirtualMachineInstance `pause`, `unpause`, `softreboot`, `reset`: a call to the VMI's
//!   launcher.
//! - `console` and `vnc`: websockets (subprotocol `plain.kubevirt.io`, raw bytes in binary
//!   frames) joined to the launcher's console and QEMU's VNC server.
//! - `freeze` (`{"unfreezeTimeout": "5m"}`, [`kubevirt_api::freeze`]) and `unfreeze`: the
//!   snapshot controller's calls, to the launcher (guest-agent fsfreeze, or a drained QMP
//!   `stop` without an agent; the launcher ends a freeze by itself at its timeout).
//! - `savememory` (`{"key": "<uuid>"}`) and `resumememory` (ours, [`kubevirt_api::memsnap`]):
//!   a memory snapshot's save into the node agent's store and the guest's resumption.
//! - `guestosinfo`, `userlist`, `filesystemlist`: asked of the QEMU guest agent through the
//!   launcher; KubeVirt's 409 when the VMI is not running or has no agent connected.
//! - VirtualMachine `memorydump` (`{"claimName": ...}`) and `removememorydump`: KubeVirt's
//!   memory dump requests in `status.memoryDumpRequest` ([`memorydump`]); the memory dump
//!   controller then calls the VMI's `dumpmemory` (ours, [`kubevirt_api::memdump`]), which the
//!   node agent serves (the launcher's `dumpMemory`, the file moved into the claim).
//! - `addvolume`, `removevolume` (VM and VMI): volume hotplug, declaratively ([`volumes`]).
//! - `logs` (ours, `?container=launcher|qemu|serial&tailLines=N`): the end of a VMI's
//!   launcher, QEMU or serial console log, read by its node agent.
//!
//! As in KubeVirt, virt-api reaches a launcher through virt-handler on the VMI's node
//! (`status.nodeName`), whichever node that is, the server's own included: the node agent's
//! mutual-TLS endpoint ([`kubevirt_handler::rest`]), found on the Node
//! ([`HandlerEndpoint`]), with virt-api's certificate from the cluster CA
//! ([`kubevirt_handler::tls`]). virt-api opens no launcher socket itself.

// Errors here are finished HTTP responses, built once per request: their size does not matter.
#![allow(clippy::result_large_err)]

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::Client;
use kubevirt_api::status::{condition, RunStrategy, VmiPhase};
use kubevirt_api::{VirtualMachine, VirtualMachineInstance};
use kubevirt_handler::rest::{
    ClientError, HandlerClient, HandlerEndpoint, HandlerStream, LogsQuery, Reason, StreamKind,
};
use kubevirt_launcher::api as launcher;
use kubevirt_runtime::subresource::{Query, SubresourceHandler};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod eviction;
pub mod memorydump;
pub mod volumes;

/// The websocket subprotocol KubeVirt's console and VNC streams use.
pub const PLAIN_PROTOCOL: &str = "plain.kubevirt.io";

/// Largest options body accepted (`StartOptions` and friends are a few bytes).
const MAX_OPTIONS: usize = 64 * 1024;

/// KubeVirt's messages (pkg/virt-api/rest).
const VM_NOT_RUNNING: &str = "VM is not running";
const VMI_NOT_RUNNING: &str = "VMI is not running";
const VMI_NOT_PAUSED: &str = "VMI is not paused";
const VM_SNAPSHOT_IN_PROGRESS: &str = "VM snapshot is in progress";

/// virt-api's subresources for the VMs of every node.
pub struct VirtApi {
    client: Client,
    /// Calls and streams to node agents, as virt-api's certificate.
    handlers: HandlerClient,
}

/// A finished response, good or bad; `?` on a `Result<_, Response>` returns the error as is.
type Reply<T = Response> = Result<T, Response>;

/// A Kubernetes `Status` reply.
fn status(code: u16, reason: &str, message: String, details: Option<(&str, &str)>) -> Response {
    let mut v = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    if let Some((kind, name)) = details {
        v["details"] = json!({"name": name, "group": "kubevirt.io", "kind": kind});
    }
    json_reply(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &v,
    )
}

fn json_reply(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// `errors.NewConflict(v1.Resource(kind), name, err)`.
fn conflict(kind: &str, name: &str, msg: impl std::fmt::Display) -> Response {
    status(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on {kind}.kubevirt.io \"{name}\": {msg}"),
        Some((kind, name)),
    )
}

fn not_found(kind: &str, name: &str) -> Response {
    status(
        404,
        "NotFound",
        format!("{kind}.kubevirt.io \"{name}\" not found"),
        Some((kind, name)),
    )
}

/// A request body with a wrong field: 400 `BadRequest` (KubeVirt's code), the field in `details.causes` (as
/// Kubernetes reports a field error).
fn invalid_body(kind: &str, name: &str, e: &kubevirt_api::field::FieldError) -> Response {
    let v = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": "BadRequest", "code": 400,
        "message": format!("{kind}.kubevirt.io \"{name}\" is invalid: {e}"),
        "details": {"name": name, "group": "kubevirt.io", "kind": kind,
            "causes": [{"reason": e.reason.as_str(), "message": e.message, "field": e.field}]},
    });
    json_reply(StatusCode::BAD_REQUEST, &v)
}

fn bad_request(msg: impl Into<String>) -> Response {
    status(400, "BadRequest", msg.into(), None)
}

fn internal(msg: impl std::fmt::Display) -> Response {
    status(
        500,
        "InternalError",
        format!("Internal error occurred: {msg}"),
        None,
    )
}

/// An API error passed on with its own code and message; anything else is internal.
fn from_kube(e: kube::Error) -> Response {
    match e {
        kube::Error::Api(s) => status(s.code, &s.reason, s.message.clone(), None),
        e => internal(e),
    }
}

/// 503: try again (the node agent or the claim is not ready yet).
fn unavailable(msg: impl Into<String>) -> Response {
    status(503, "ServiceUnavailable", msg.into(), None)
}

fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

fn ok() -> Response {
    StatusCode::OK.into_response()
}

fn vmi_phase(vmi: &VirtualMachineInstance) -> Option<VmiPhase> {
    VmiPhase::of(vmi)
}

fn is_final(vmi: &VirtualMachineInstance) -> bool {
    vmi_phase(vmi).is_some_and(VmiPhase::is_final)
}

fn is_running(vmi: &VirtualMachineInstance) -> bool {
    vmi_phase(vmi) == Some(VmiPhase::Running)
}

fn has_condition(vmi: &VirtualMachineInstance, kind: &str, want_true: bool) -> bool {
    vmi.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.r#type == kind && (!want_true || c.status == "True"))
        })
}

/// `dryRun: ["All"]` in an options body.
fn dry_run(body: &Value) -> bool {
    body["dryRun"]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v == "All"))
}

/// KubeVirt's `getChangeRequestJson`: a JSON patch of the VM's status adding state change
/// requests, guarded by a test of the current ones so concurrent requests cannot both win.
pub fn change_request_patch(vm_status: &Value, changes: &[Value]) -> Result<Value, String> {
    let mut ops = Vec::new();
    let empty = match vm_status {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    };
    let current = &vm_status["stateChangeRequests"];
    if empty {
        ops.push(
            json!({"op": "add", "path": "/status", "value": {"stateChangeRequests": changes}}),
        );
    } else {
        ops.push(json!({"op": "test", "path": "/status/stateChangeRequests", "value": current}));
        let none = current.as_array().is_none_or(|a| a.is_empty());
        let only_stop = changes.len() == 1 && changes[0]["action"] == "Stop";
        if none {
            ops.push(json!({"op": "add", "path": "/status/stateChangeRequests", "value": changes}));
        } else if only_stop {
            ops.push(
                json!({"op": "replace", "path": "/status/stateChangeRequests", "value": changes}),
            );
        } else {
            return Err("unable to complete request: stop/start already underway".into());
        }
    }
    if !vm_status["startFailure"].is_null() {
        ops.push(json!({"op": "remove", "path": "/status/startFailure"}));
    }
    Ok(Value::Array(ops))
}

/// KubeVirt's `getRunningPatch`: `runStrategy` Always/Halted (or `running` true/false when the
/// VM still uses the deprecated field), guarded by a test of the current value.
pub fn running_patch(vm: &VirtualMachine, running: bool) -> Value {
    match &vm.spec.run_strategy {
        Some(current) => json!([
            {"op": "test", "path": "/spec/runStrategy", "value": current},
            {"op": "replace", "path": "/spec/runStrategy", "value": if running { RunStrategy::Always } else { RunStrategy::Halted }.as_str()},
        ]),
        None => json!([
            {"op": "test", "path": "/spec/running", "value": vm.spec.running},
            {"op": "replace", "path": "/spec/running", "value": running},
        ]),
    }
}

fn start_request(paused: bool) -> Value {
    if paused {
        json!({"action": "Start", "data": {"paused": "true"}})
    } else {
        json!({"action": "Start"})
    }
}

fn stop_request(vmi: &VirtualMachineInstance) -> Value {
    json!({"action": "Stop", "uid": vmi.metadata.uid})
}

impl VirtApi {
    /// `handlers`: a client with virt-api's certificate ([`kubevirt_handler::tls`]).
    pub fn new(client: Client, handlers: HandlerClient) -> Arc<Self> {
        Arc::new(VirtApi { client, handlers })
    }

    /// The endpoint of the handler on the VMI's node, with the VMI's namespace and name. A
    /// VMI on no node is not running; a node without a published endpoint is an internal
    /// error, as KubeVirt's virt-api answers when it cannot reach virt-handler.
    async fn handler_of<'v>(
        &self,
        vmi: &'v VirtualMachineInstance,
    ) -> Reply<(HandlerEndpoint, &'v str, &'v str)> {
        let ns = vmi.metadata.namespace.as_deref().unwrap_or("default");
        let name = vmi.metadata.name.as_deref().unwrap_or_default();
        let Some(node) = vmi.status.as_ref().and_then(|s| s.node_name.as_deref()) else {
            return Err(conflict("virtualmachineinstance", name, VMI_NOT_RUNNING));
        };
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = nodes
            .get_opt(node)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                internal(format!(
                    "VMI {ns}/{name} is on node {node}, which does not exist"
                ))
            })?;
        let ep = HandlerEndpoint::of_node(&node).map_err(internal)?;
        Ok((ep, ns, name))
    }

    async fn get_vm(&self, ns: &str, name: &str) -> Reply<VirtualMachine> {
        let api: Api<VirtualMachine> = Api::namespaced(self.client.clone(), ns);
        match api.get_opt(name).await {
            Ok(Some(vm)) => Ok(vm),
            Ok(None) => Err(not_found("virtualmachine", name)),
            Err(e) => Err(from_kube(e)),
        }
    }

    async fn get_vmi_opt(&self, ns: &str, name: &str) -> Reply<Option<VirtualMachineInstance>> {
        let api: Api<VirtualMachineInstance> = Api::namespaced(self.client.clone(), ns);
        api.get_opt(name).await.map_err(internal)
    }

    async fn get_vmi(&self, ns: &str, name: &str) -> Reply<VirtualMachineInstance> {
        self.get_vmi_opt(ns, name)
            .await?
            .ok_or_else(|| not_found("virtualmachineinstance", name))
    }

    /// A JSON patch of `path` (relative to the API root). A failed `test` is a conflict.
    async fn json_patch(
        &self,
        kind: &str,
        name: &str,
        path: String,
        ops: &Value,
        dry_run: bool,
    ) -> Reply<()> {
        let url = if dry_run {
            format!("{path}?dryRun=All")
        } else {
            path
        };
        let req = http::Request::patch(url)
            .header(header::CONTENT_TYPE, "application/json-patch+json")
            .body(serde_json::to_vec(ops).map_err(internal)?)
            .map_err(internal)?;
        match self.client.request::<Value>(req).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => {
                Err(conflict(kind, name, s.message))
            }
            Err(e) => Err(internal(e)),
        }
    }

    async fn patch_vm_status(&self, vm: &VirtualMachine, ops: &Value, dry_run: bool) -> Reply<()> {
        let ns = vm.metadata.namespace.as_deref().unwrap_or("default");
        let name = vm.metadata.name.as_deref().unwrap_or("");
        self.json_patch(
            "virtualmachine",
            name,
            format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}/status"),
            ops,
            dry_run,
        )
        .await
    }

    async fn patch_vm(&self, vm: &VirtualMachine, ops: &Value, dry_run: bool) -> Reply<()> {
        let ns = vm.metadata.namespace.as_deref().unwrap_or("default");
        let name = vm.metadata.name.as_deref().unwrap_or("");
        self.json_patch(
            "virtualmachine",
            name,
            format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}"),
            ops,
            dry_run,
        )
        .await
    }

    async fn add_requests(&self, vm: &VirtualMachine, changes: &[Value], dry: bool) -> Reply<()> {
        let st = serde_json::to_value(&vm.status).unwrap_or(Value::Null);
        let ops = change_request_patch(&st, changes).map_err(internal)?;
        self.patch_vm_status(vm, &ops, dry).await
    }

    /// `PUT .../virtualmachines/NAME/start` (StartOptions: `paused`, `dryRun`).
    async fn start(&self, ns: &str, name: &str, body: &Value) -> Reply {
        let vm = self.get_vm(ns, name).await?;
        let vmi = self.get_vmi_opt(ns, name).await?;
        if let Some(v) = &vmi {
            if !is_final(v) && !matches!(vmi_phase(v), None | Some(VmiPhase::Unknown)) {
                return Err(conflict("virtualmachine", name, "VM is already running"));
            }
        }
        let paused = body["paused"].as_bool().unwrap_or(false);
        let dry = dry_run(body);
        let strategy = RunStrategy::of(&vm.spec);
        match strategy {
            RunStrategy::Halted => {
                let template_paused = vm
                    .spec
                    .template
                    .spec
                    .as_ref()
                    .and_then(|s| s.start_strategy.as_deref())
                    == Some("Paused");
                if paused && !template_paused {
                    // The request carries "start paused" to the VMI virt-controller creates.
                    self.add_requests(&vm, &[start_request(true)], dry).await?;
                }
                self.patch_vm(&vm, &running_patch(&vm, true), dry).await?;
            }
            RunStrategy::RerunOnFailure | RunStrategy::Manual => {
                let phase = vmi.as_ref().and_then(vmi_phase);
                if strategy == RunStrategy::RerunOnFailure && phase == Some(VmiPhase::Failed) {
                    return Err(conflict(
                        "virtualmachine",
                        name,
                        "RerunOnFailure does not support starting VM from failed state",
                    ));
                }
                let restart = match &vmi {
                    Some(_) if strategy == RunStrategy::RerunOnFailure => {
                        phase == Some(VmiPhase::Succeeded)
                    }
                    Some(v) => is_final(v),
                    None => false,
                };
                let changes = match (&vmi, restart) {
                    (Some(v), true) => vec![stop_request(v), start_request(paused)],
                    _ => vec![start_request(paused)],
                };
                self.add_requests(&vm, &changes, dry).await?;
            }
            other @ (RunStrategy::Always | RunStrategy::Once) => {
                return Err(conflict(
                    "virtualmachine",
                    name,
                    format!("{other} does not support manual start requests"),
                ))
            }
        }
        Ok(accepted())
    }

    /// `PUT .../virtualmachines/NAME/stop` (StopOptions: `gracePeriod`, `dryRun`).
    async fn stop(&self, ns: &str, name: &str, body: &Value) -> Reply {
        let vm = self.get_vm(ns, name).await?;
        let strategy = RunStrategy::of(&vm.spec);
        let vmi = self.get_vmi_opt(ns, name).await?;
        let dry = dry_run(body);
        let grace = match &body["gracePeriod"] {
            Value::Null => None,
            g => Some(
                g.as_i64()
                    .ok_or_else(|| bad_request("gracePeriod must be an integer"))?,
            ),
        };
        let running = vmi.as_ref().filter(|v| !is_final(v));
        let old_grace = running.and_then(|v| v.spec.termination_grace_period_seconds);
        if let (Some(v), Some(g)) = (running, grace) {
            // A shorter grace period for this stop: the VMI's own field, which the handler
            // honours when it shuts the guest down.
            let ops = json!([
                {"op": "test", "path": "/spec/terminationGracePeriodSeconds", "value": old_grace},
                {"op": "replace", "path": "/spec/terminationGracePeriodSeconds", "value": g},
            ]);
            let vname = v.metadata.name.as_deref().unwrap_or(name);
            self.json_patch(
                "virtualmachineinstance",
                vname,
                format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{vname}"),
                &ops,
                dry,
            )
            .await?;
        }
        match strategy {
            RunStrategy::Halted => {
                let Some(v) = running else {
                    return Err(conflict("virtualmachine", name, VM_NOT_RUNNING));
                };
                let shorter = match (grace, old_grace) {
                    (None, _) => false,
                    (Some(g), Some(old)) => g < old,
                    (Some(_), None) => true,
                };
                if !shorter {
                    return Err(conflict(
                        "virtualmachine",
                        name,
                        "Halted only supports manual stop requests with a shorter graceperiod",
                    ));
                }
                self.add_requests(&vm, &[stop_request(v)], dry).await?;
            }
            RunStrategy::RerunOnFailure | RunStrategy::Manual => {
                let Some(v) = running else {
                    return Err(conflict("virtualmachine", name, VM_NOT_RUNNING));
                };
                self.add_requests(&vm, &[stop_request(v)], dry).await?;
            }
            _ => self.patch_vm(&vm, &running_patch(&vm, false), dry).await?,
        }
        if grace == Some(0) && !dry {
            // `--force --grace-period=0`: no wait for the guest.
            if let Some(v) = running {
                let _ = self.launcher_call(v, launcher::Request::Stop).await;
            }
        }
        Ok(accepted())
    }

    /// `PUT .../virtualmachines/NAME/restart` (RestartOptions: `gracePeriodSeconds`, `dryRun`).
    async fn restart(&self, ns: &str, name: &str, body: &Value) -> Reply {
        let grace = body["gracePeriodSeconds"].as_i64();
        match grace {
            Some(g) if g > 0 => {
                return Err(bad_request(
                    "For force restart, only gracePeriod=0 is supported for now",
                ))
            }
            Some(g) if g < 0 => {
                return Err(bad_request("gracePeriod has to be greater or equal to 0"))
            }
            _ => {}
        }
        let vm = self.get_vm(ns, name).await?;
        let strategy = RunStrategy::of(&vm.spec);
        if matches!(strategy, RunStrategy::Halted | RunStrategy::Once) {
            return Err(conflict(
                "virtualmachine",
                name,
                format!("RunStategy {strategy} does not support manual restart requests"),
            ));
        }
        let Some(vmi) = self.get_vmi_opt(ns, name).await? else {
            return Err(conflict(
                "virtualmachine",
                name,
                "VM is not running: Halted",
            ));
        };
        let dry = dry_run(body);
        self.add_requests(&vm, &[stop_request(&vmi), start_request(false)], dry)
            .await?;
        if grace == Some(0) && !dry {
            let _ = self.launcher_call(&vmi, launcher::Request::Stop).await;
        }
        Ok(accepted())
    }

    /// `PUT .../virtualmachines/NAME/migrate` (`MigrateOptions`: `addedNodeSelector`, `dryRun`):
    /// as KubeVirt, a VirtualMachineInstanceMigration `kubevirt-migrate-vm-*` for the VM's
    /// running VMI; the migration controller does the rest.
    async fn migrate(&self, ns: &str, name: &str, body: &Value) -> Reply {
        let selector = match &body["addedNodeSelector"] {
            Value::Null => None,
            Value::Object(m) if m.values().all(Value::is_string) => Some(Value::Object(m.clone())),
            _ => {
                return Err(bad_request(
                    "addedNodeSelector must be a map of label keys to string values",
                ))
            }
        };
        self.get_vm(ns, name).await?;
        let vmi = self.get_vmi(ns, name).await?;
        if !is_running(&vmi) {
            return Err(conflict("virtualmachine", name, VM_NOT_RUNNING));
        }
        let mut spec = json!({ "vmiName": name });
        if let Some(sel) = selector {
            spec["addedNodeSelector"] = sel;
        }
        let migration = json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstanceMigration",
            "metadata": { "generateName": "kubevirt-migrate-vm-", "namespace": ns },
            "spec": spec,
        });
        let mut url =
            format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstancemigrations");
        if dry_run(body) {
            url.push_str("?dryRun=All");
        }
        let req = http::Request::post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&migration).map_err(internal)?)
            .map_err(internal)?;
        match self.client.request::<Value>(req).await {
            Ok(created) => {
                tracing::info!(
                    namespace = ns,
                    name,
                    migration = created["metadata"]["name"].as_str().unwrap_or_default(),
                    "migration requested"
                );
                Ok(accepted())
            }
            // KubeVirt wraps any failure to create the migration as an internal error.
            Err(kube::Error::Api(s)) => Err(internal(s.message)),
            Err(e) => Err(internal(e)),
        }
    }

    /// One call to the VMI's launcher.
    async fn launcher_call(
        &self,
        vmi: &VirtualMachineInstance,
        request: launcher::Request,
    ) -> Reply<launcher::Response> {
        let (ep, ns, name) = self.handler_of(vmi).await?;
        let method = request.method();
        self.handlers
            .call(&ep, ns, name, request)
            .await
            .map_err(|e| internal(format!("{method} failed: {e}")))
    }

    /// pause / unpause / softreboot / reset: validate like KubeVirt, then ask the launcher.
    async fn vmi_action(&self, ns: &str, name: &str, action: &str, body: &Value) -> Reply {
        let vmi = self.get_vmi(ns, name).await?;
        let running = is_running(&vmi);
        let paused = has_condition(&vmi, condition::PAUSED, true);
        const KIND: &str = "virtualmachineinstance";
        let request = match action {
            "pause" => {
                if !running {
                    return Err(conflict(KIND, name, VM_NOT_RUNNING));
                }
                if vmi.spec.liveness_probe.is_some() {
                    return Err(status(
                        403,
                        "Forbidden",
                        format!("{KIND}.kubevirt.io \"{name}\" is forbidden: Pausing VMIs with LivenessProbe is currently not supported"),
                        Some((KIND, name)),
                    ));
                }
                if has_condition(&vmi, condition::PAUSED, false) {
                    return Err(conflict(KIND, name, "VMI is already paused"));
                }
                launcher::Request::Pause
            }
            "unpause" => {
                // KubeVirt's: a snapshot's freeze is the snapshot's to end.
                let vms: Api<VirtualMachine> = Api::namespaced(self.client.clone(), ns);
                if let Some(vm) = vms.get_opt(name).await.map_err(from_kube)? {
                    if vm
                        .status
                        .as_ref()
                        .and_then(|s| s.snapshot_in_progress.as_ref())
                        .is_some()
                    {
                        return Err(conflict("virtualmachine", name, VM_SNAPSHOT_IN_PROGRESS));
                    }
                }
                if !running {
                    return Err(conflict(KIND, name, VMI_NOT_RUNNING));
                }
                if !has_condition(&vmi, condition::PAUSED, false) {
                    return Err(conflict(KIND, name, VMI_NOT_PAUSED));
                }
                launcher::Request::Unpause
            }
            "softreboot" => {
                if !running {
                    return Err(conflict(KIND, name, VM_NOT_RUNNING));
                }
                if paused {
                    return Err(conflict(KIND, name, "VMI is paused"));
                }
                let acpi_off = vmi
                    .spec
                    .domain
                    .features
                    .as_ref()
                    .and_then(|f| f.acpi.as_ref())
                    .and_then(|a| a.enabled)
                    == Some(false);
                if acpi_off && !has_condition(&vmi, condition::AGENT_CONNECTED, false) {
                    return Err(conflict(
                        KIND,
                        name,
                        "VMI neither have the agent connected nor the ACPI feature enabled",
                    ));
                }
                launcher::Request::SoftReboot
            }
            "freeze" => {
                if !running {
                    return Err(conflict(KIND, name, VM_NOT_RUNNING));
                }
                let timeout = kubevirt_api::freeze::FreezeUnfreezeTimeout::parse(body)
                    .map_err(|e| invalid_body(KIND, name, &e))?;
                launcher::Request::Freeze {
                    unfreeze_timeout_seconds: timeout.as_secs(),
                }
            }
            "unfreeze" => {
                if !running {
                    return Err(conflict(KIND, name, VMI_NOT_RUNNING));
                }
                launcher::Request::Unfreeze
            }
            "reset" => {
                if !running {
                    return Err(internal(format!(
                        "Failed to reset non-running VMI with phase {}: {VMI_NOT_RUNNING}",
                        vmi_phase(&vmi).map(VmiPhase::as_str).unwrap_or("")
                    )));
                }
                launcher::Request::Reset
            }
            _ => return Err(not_found_path()),
        };
        if dry_run(body) {
            return Ok(ok());
        }
        self.launcher_call(&vmi, request).await?;
        Ok(ok())
    }

    /// `PUT .../savememory` / `.../resumememory` (ours, [`kubevirt_api::memsnap`]): the
    /// snapshot controller's memory snapshot, through the VMI's node agent, which saves the
    /// guest's memory into its store under the body's key (a UUID) and leaves it paused, or
    /// runs it on. The answer is the saved state's description.
    async fn memory(&self, ns: &str, name: &str, save: bool, body: &Value) -> Reply {
        const KIND: &str = "virtualmachineinstance";
        let vmi = self.get_vmi(ns, name).await?;
        if !is_running(&vmi) {
            return Err(conflict(KIND, name, VMI_NOT_RUNNING));
        }
        let req = kubevirt_api::memsnap::SaveMemory::parse(body).map_err(|e| {
            invalid_body(
                KIND,
                name,
                &kubevirt_api::field::FieldError::invalid("key", e),
            )
        })?;
        if save && !self.memory_snapshot_in_progress(ns, name, &req.key).await? {
            return Err(conflict(
                KIND,
                name,
                format!(
                    "no memory snapshot of virtualmachine {name} with uid {} is in progress",
                    req.key
                ),
            ));
        }
        let (ep, ns, name) = self.handler_of(&vmi).await?;
        match self.handlers.memory(&ep, ns, name, &req.key, save).await {
            Ok(saved) => Ok(json_reply(
                StatusCode::OK,
                &serde_json::to_value(&saved).map_err(internal)?,
            )),
            Err(ClientError::Refused { refusal, .. }) if refusal.reason == Reason::BadRequest => {
                Err(bad_request(refusal.message))
            }
            Err(e) => Err(internal(format!(
                "{}: {e}",
                if save { "saveState" } else { "resume" }
            ))),
        }
    }

    /// Whether `key` is the uid of the VirtualMachineSnapshot (opted in to memory) that VM
    /// `ns/name` has in progress: a save is only that snapshot's step, so no caller can store
    /// guest memory on a node under a key no snapshot owns (and fill its disk), nor save
    /// ahead of a snapshot under its uid.
    async fn memory_snapshot_in_progress(&self, ns: &str, name: &str, key: &str) -> Reply<bool> {
        let vms: Api<VirtualMachine> = Api::namespaced(self.client.clone(), ns);
        let Some(snapshot) = vms
            .get_opt(name)
            .await
            .map_err(internal)?
            .and_then(|vm| vm.status)
            .and_then(|s| s.snapshot_in_progress)
        else {
            return Ok(false);
        };
        let snaps: Api<kubevirt_api::VirtualMachineSnapshot> =
            Api::namespaced(self.client.clone(), ns);
        Ok(snaps
            .get_opt(&snapshot)
            .await
            .map_err(internal)?
            .is_some_and(|s| {
                s.metadata.uid.as_deref() == Some(key)
                    && kubevirt_api::memsnap::wanted(s.metadata.annotations.as_ref())
            }))
    }

    /// `PUT .../virtualmachines/NAME/memorydump` (`remove`: `.../removememorydump`):
    /// KubeVirt's `MemoryDumpVMRequestHandler` / `RemoveMemoryDumpVMRequestHandler`.
    async fn memory_dump_request(&self, ns: &str, name: &str, body: &Value, remove: bool) -> Reply {
        const VM: &str = "virtualmachine";
        let asked: kubevirt_api::VirtualMachineMemoryDumpRequest = if remove {
            Default::default()
        } else {
            serde_json::from_value(body.clone()).map_err(|e| {
                bad_request(format!(
                    "Can not unmarshal Request body to struct, error: {e}"
                ))
            })?
        };
        let path = format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}");
        let raw = self.get_raw(VM, name, path).await?;
        let vm: VirtualMachine = serde_json::from_value(raw.clone())
            .map_err(|e| internal(format!("decoding the VM: {e}")))?;
        let current = vm
            .status
            .as_ref()
            .and_then(|s| s.memory_dump_request.as_ref());
        let claim = if remove {
            String::new()
        } else {
            let claim = memorydump::claim_of(current, &asked.claim_name).map_err(
                |(is_conflict, msg)| {
                    if is_conflict {
                        conflict(VM, name, msg)
                    } else {
                        bad_request(msg)
                    }
                },
            )?;
            // A name that is no claim's never reaches a request path (KubeVirt's client
            // refuses it when it builds the claim's URL).
            kubevirt_api::memdump::check_claim(&claim).map_err(bad_request)?;
            let vmi = self.get_vmi(ns, name).await?;
            if !is_running(&vmi) {
                return Err(conflict("virtualmachineinstance", name, VMI_NOT_RUNNING));
            }
            let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
                Api::namespaced(self.client.clone(), ns);
            let pvc = match pvcs.get_opt(&claim).await {
                Ok(Some(p)) => p,
                Ok(None) => return Err(not_found("persistentvolumeclaim", &claim)),
                Err(e) => return Err(internal(format!("unable to retrieve pvc [{claim}]: {e}"))),
            };
            let configs: Api<kubevirt_api::CDIConfig> = Api::all(self.client.clone());
            let config = configs
                .get_opt("config")
                .await
                .map_err(|e| internal(format!("unable to retrieve cdi config: {e}")))?;
            let class = pvc
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref());
            let overhead = kubevirt_api::memdump::fs_overhead(config.as_ref(), class);
            memorydump::check_claim(&pvc, &vmi.spec, &overhead)
                .map_err(|e| conflict("persistentvolumeclaim", &claim, e))?;
            let lp = kube::api::ListParams::default();
            let vms = Api::<VirtualMachine>::namespaced(self.client.clone(), ns)
                .list(&lp)
                .await
                .map_err(internal)?;
            let vmis =
                Api::<kubevirt_api::VirtualMachineInstance>::namespaced(self.client.clone(), ns)
                    .list(&lp)
                    .await
                    .map_err(internal)?;
            memorydump::claim_taken(&claim, name, &vms.items, &vmis.items)
                .map_err(|e| conflict("persistentvolumeclaim", &claim, e))?;
            claim
        };
        let status = raw.get("status").cloned().unwrap_or(Value::Null);
        let ops = memorydump::request_patch(name, &status, &claim, remove)
            .map_err(|e| conflict(VM, name, e))?;
        tracing::info!(namespace = ns, name, claim = %claim, remove, "memory dump request");
        self.patch_vm_status(&vm, &ops, false).await?;
        Ok(accepted())
    }

    /// `PUT .../virtualmachineinstances/NAME/dumpmemory` (ours, [`kubevirt_api::memdump`]):
    /// the memory dump controller's call for the VM's request in progress; the VMI's node
    /// agent has the launcher dump and moves the file into the claim. Only the claim of the
    /// VM's `InProgress` request is accepted, so nobody with this verb writes guest memory
    /// into a claim no request names.
    async fn dump_memory(&self, ns: &str, name: &str, body: &Value) -> Reply {
        const KIND: &str = "virtualmachineinstance";
        let req = kubevirt_api::memdump::DumpMemory::parse(body).map_err(|e| {
            invalid_body(
                KIND,
                name,
                &kubevirt_api::field::FieldError::invalid("claimName", e),
            )
        })?;
        let vmi = self.get_vmi(ns, name).await?;
        if !is_running(&vmi) {
            return Err(conflict(KIND, name, VMI_NOT_RUNNING));
        }
        let vms: Api<VirtualMachine> = Api::namespaced(self.client.clone(), ns);
        let in_progress = vms
            .get_opt(name)
            .await
            .map_err(internal)?
            .and_then(|vm| vm.status)
            .and_then(|s| s.memory_dump_request)
            .is_some_and(|r| {
                r.claim_name == req.claim_name
                    && r.phase == kubevirt_api::memdump::phase::IN_PROGRESS
            });
        if !in_progress {
            return Err(conflict(
                KIND,
                name,
                format!(
                    "no memory dump of virtualmachine {name} to claim {} is in progress",
                    req.claim_name
                ),
            ));
        }
        let (ep, ns, name) = self.handler_of(&vmi).await?;
        match self
            .handlers
            .dump_memory(&ep, ns, name, &req.claim_name)
            .await
        {
            Ok(done) => Ok(json_reply(
                StatusCode::OK,
                &serde_json::to_value(&done).map_err(internal)?,
            )),
            Err(ClientError::Refused { refusal, .. }) => match refusal.reason {
                Reason::BadRequest | Reason::NotFound => Err(bad_request(refusal.message)),
                Reason::Launcher => Err(internal(format!("dumpMemory: {}", refusal.message))),
                _ => Err(unavailable(refusal.message)),
            },
            // Not reached: asked again. Lost mid-request: the dump may be running with the
            // guest stopped, and another would queue behind it; the request fails.
            Err(e @ ClientError::Connect { .. }) => Err(unavailable(e.to_string())),
            Err(e) => Err(internal(format!(
                "dumpMemory: {e}; the node agent's answer was lost"
            ))),
        }
    }

    /// `GET .../virtualmachineinstances/NAME/{guestosinfo,userlist,filesystemlist}`: asked of
    /// the guest agent through the launcher, with KubeVirt's refusals when there is none.
    async fn guest_agent(&self, ns: &str, name: &str, what: &str) -> Reply {
        let vmi = self.get_vmi(ns, name).await?;
        if !is_running(&vmi) {
            return Err(conflict("virtualmachineinstance", name, VMI_NOT_RUNNING));
        }
        if !has_condition(&vmi, condition::AGENT_CONNECTED, true) {
            return Err(conflict(
                "virtualmachineinstance",
                name,
                "VMI does not have guest agent connected",
            ));
        }
        let request = match what {
            "guestosinfo" => launcher::Request::GuestOsInfo,
            "userlist" => launcher::Request::UserList,
            _ => launcher::Request::FilesystemList,
        };
        let method = request.method();
        match self.launcher_call(&vmi, request).await? {
            launcher::Response::GuestAgent(v) => Ok(json_reply(StatusCode::OK, &v)),
            _ => Err(internal(format!("{method}: unexpected reply"))),
        }
    }

    /// `GET .../virtualmachineinstances/NAME/logs?container=launcher|qemu|serial&tailLines=N`
    /// (ours; KubeVirt has none): the end of one of the VMI's log files, read by the node
    /// agent of its node, as text.
    async fn logs(&self, ns: &str, name: &str, query: LogsQuery) -> Reply {
        let vmi = self.get_vmi(ns, name).await?;
        let (ep, _, _) = self.handler_of(&vmi).await?;
        match self.handlers.logs(&ep, ns, name, query).await {
            Ok(text) => {
                let mut r = Response::new(Body::from(text));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                Ok(r)
            }
            Err(ClientError::Refused { refusal, .. })
                if refusal.reason == Reason::NotOnThisNode =>
            {
                Err(conflict(
                    "virtualmachineinstance",
                    name,
                    "VMI has no launcher on its node",
                ))
            }
            Err(ClientError::Refused { refusal, .. }) if refusal.reason == Reason::BadRequest => {
                Err(bad_request(refusal.message))
            }
            Err(e) => Err(internal(format!("logs: {e}"))),
        }
    }

    /// `GET .../console` and `.../vnc`: checks, then the websocket upgrade.
    async fn stream(&self, ns: &str, name: &str, which: &str, req: Request) -> Reply {
        let vmi = self.get_vmi(ns, name).await?;
        let devices = &vmi.spec.domain.devices;
        let (enabled, missing, kind) = if which == "console" {
            (
                devices.autoattach_serial_console != Some(false),
                "No serial consoles are present.",
                StreamKind::Console,
            )
        } else {
            (
                devices.autoattach_graphics_device != Some(false),
                "No graphics devices are present.",
                StreamKind::Vnc,
            )
        };
        if !enabled {
            return Err(bad_request(missing));
        }
        if !is_running(&vmi) {
            return Err(conflict("virtualmachineinstance", name, VMI_NOT_RUNNING));
        }
        let (ep, _, _) = self.handler_of(&vmi).await?;
        let upstream = match self.handlers.stream(&ep, ns, name, kind).await {
            Ok(s) => s,
            Err(ClientError::Refused { refusal, .. }) if refusal.reason == Reason::NoDevice => {
                return Err(bad_request(missing))
            }
            Err(e) => return Err(internal(format!("{which}: {e}"))),
        };
        let (mut parts, _body) = req.into_parts();
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| {
                bad_request(format!(
                    "{which} is a websocket: connect with a websocket client (virtctl {which}): {e}"
                ))
            })?;
        let label = format!("{ns}/{name} {which}");
        Ok(ws
            .protocols([PLAIN_PROTOCOL])
            .on_upgrade(move |socket| pump(socket, upstream, label)))
    }

    /// The object at `path` as stored (raw JSON: a JSON patch's `test` must compare what the
    /// server holds, not a re-encoding of it).
    async fn get_raw(&self, kind: &str, name: &str, path: String) -> Reply<Value> {
        let req = http::Request::get(path)
            .body(Vec::new())
            .map_err(internal)?;
        match self.client.request::<Value>(req).await {
            Ok(v) => Ok(v),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(not_found(kind, name)),
            Err(e) => Err(from_kube(e)),
        }
    }

    /// `PUT .../{virtualmachines,virtualmachineinstances}/NAME/{addvolume,removevolume}`.
    async fn volume_request(
        &self,
        ns: &str,
        name: &str,
        resource: &str,
        action: &str,
        body: &Value,
    ) -> Reply {
        let req = if action == "addvolume" {
            volumes::parse_add(body)
        } else {
            volumes::parse_remove(body)
        }
        .map_err(bad_request)?;
        let dry = req.dry_run();
        let (kind, path, prefix, spec) = if resource == "virtualmachines" {
            let path = format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}");
            let vm = self.get_raw("virtualmachine", name, path.clone()).await?;
            let spec = vm["spec"]["template"]["spec"].clone();
            ("virtualmachine", path, "/spec/template", spec)
        } else {
            let path =
                format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}");
            let raw = self
                .get_raw("virtualmachineinstance", name, path.clone())
                .await?;
            let vmi: VirtualMachineInstance = serde_json::from_value(raw.clone())
                .map_err(|e| internal(format!("decoding the VMI: {e}")))?;
            // Without the deprecated HotplugVolumes gate, a VM's VMI changes through its VM.
            if vmi
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.kind == "VirtualMachine")
            {
                return Err(bad_request(format!("VMI {ns}/{name} is owned by a VM")));
            }
            if !is_running(&vmi) {
                return Err(conflict("virtualmachineinstance", name, VMI_NOT_RUNNING));
            }
            ("virtualmachineinstance", path, "", raw["spec"].clone())
        };
        volumes::verify(&spec["volumes"], &req).map_err(|e| conflict(kind, name, e))?;
        let ops = volumes::patch(prefix, &spec, &req).map_err(|e| conflict(kind, name, e))?;
        tracing::info!(
            namespace = ns,
            name,
            resource,
            action,
            volume = req.name(),
            dry,
            "volume request"
        );
        let url = if dry {
            format!("{path}?dryRun=All")
        } else {
            path
        };
        let patch = http::Request::patch(url)
            .header(header::CONTENT_TYPE, "application/json-patch+json")
            .body(serde_json::to_vec(&ops).map_err(internal)?)
            .map_err(internal)?;
        match self.client.request::<Value>(patch).await {
            Ok(_) => Ok(accepted()),
            // Invalid (admission refused the new spec): the API server's own answer.
            Err(kube::Error::Api(s)) if s.code == 422 => Err(status(
                422,
                &s.reason,
                s.message.clone(),
                Some((kind, name)),
            )),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(conflict(kind, name, s.message)),
            Err(e) => Err(internal(format!(
                "unable to patch {}: {e}",
                if prefix.is_empty() { "vmi" } else { "vm" }
            ))),
        }
    }

    async fn route(&self, path: &[String], req: Request) -> Reply {
        let method = req.method().clone();
        let segs: Vec<&str> = path.iter().map(String::as_str).collect();
        let (ns, resource, name, action) = match segs.as_slice() {
            ["namespaces", ns, resource, name, action] => (*ns, *resource, *name, *action),
            _ => return Err(not_found_path()),
        };
        let want = |m: Method| -> Reply<()> {
            if method == m {
                Ok(())
            } else {
                Err(status(
                    405,
                    "MethodNotAllowed",
                    format!(
                        "the server does not allow method {method} on {resource}/{action}: use {m}"
                    ),
                    None,
                ))
            }
        };
        match (resource, action) {
            ("virtualmachines", "start" | "stop" | "restart" | "migrate")
            | (
                "virtualmachineinstances",
                "pause" | "unpause" | "softreboot" | "reset" | "freeze" | "unfreeze",
            ) => {
                want(Method::PUT)?;
                let body = options(req.into_body()).await?;
                tracing::info!(
                    namespace = ns,
                    name,
                    resource,
                    action,
                    "subresource request"
                );
                match (resource, action) {
                    ("virtualmachines", "start") => self.start(ns, name, &body).await,
                    ("virtualmachines", "stop") => self.stop(ns, name, &body).await,
                    ("virtualmachines", "restart") => self.restart(ns, name, &body).await,
                    ("virtualmachines", _) => self.migrate(ns, name, &body).await,
                    _ => self.vmi_action(ns, name, action, &body).await,
                }
            }
            ("virtualmachines" | "virtualmachineinstances", "addvolume" | "removevolume") => {
                want(Method::PUT)?;
                let body = options(req.into_body()).await?;
                self.volume_request(ns, name, resource, action, &body).await
            }
            (
                "virtualmachineinstances",
                kubevirt_api::memsnap::SAVE_SUBRESOURCE | kubevirt_api::memsnap::RESUME_SUBRESOURCE,
            ) => {
                want(Method::PUT)?;
                let body = options(req.into_body()).await?;
                tracing::info!(namespace = ns, name, action, "subresource request");
                let save = action == kubevirt_api::memsnap::SAVE_SUBRESOURCE;
                self.memory(ns, name, save, &body).await
            }
            (
                "virtualmachines",
                kubevirt_api::memdump::SUBRESOURCE | kubevirt_api::memdump::REMOVE_SUBRESOURCE,
            ) => {
                want(Method::PUT)?;
                let body = options(req.into_body()).await?;
                let remove = action == kubevirt_api::memdump::REMOVE_SUBRESOURCE;
                self.memory_dump_request(ns, name, &body, remove).await
            }
            ("virtualmachineinstances", kubevirt_api::memdump::DUMP_SUBRESOURCE) => {
                want(Method::PUT)?;
                let body = options(req.into_body()).await?;
                tracing::info!(namespace = ns, name, action, "subresource request");
                self.dump_memory(ns, name, &body).await
            }
            ("virtualmachineinstances", "console" | "vnc") => {
                want(Method::GET)?;
                self.stream(ns, name, action, req).await
            }
            ("virtualmachineinstances", "guestosinfo" | "userlist" | "filesystemlist") => {
                want(Method::GET)?;
                self.guest_agent(ns, name, action).await
            }
            ("virtualmachineinstances", "logs") => {
                want(Method::GET)?;
                let query =
                    LogsQuery::parse(req.uri().query().unwrap_or("")).map_err(bad_request)?;
                self.logs(ns, name, query).await
            }
            _ => Err(not_found_path()),
        }
    }
}

fn not_found_path() -> Response {
    status(
        404,
        "NotFound",
        "the server could not find the requested resource".into(),
        None,
    )
}

/// An options body (`StartOptions`, `StopOptions`, ...): empty means defaults.
async fn options(body: Body) -> Reply<Value> {
    let bytes = axum::body::to_bytes(body, MAX_OPTIONS)
        .await
        .map_err(|e| bad_request(format!("reading the request body: {e}")))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| bad_request(format!("the request body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad_request("the request body must be a JSON object"));
    }
    Ok(v)
}

/// Joins a websocket to a node agent's stream until either side closes.
async fn pump(ws: WebSocket, upstream: HandlerStream, label: String) {
    tracing::info!(stream = %label, "stream opened");
    let (mut rd, mut wr) = tokio::io::split(upstream);
    let (mut tx, mut rx) = ws.split();
    let inbound = async {
        while let Some(Ok(msg)) = rx.next().await {
            let data: &[u8] = match &msg {
                Message::Binary(b) => b,
                Message::Text(t) => t.as_bytes(),
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(data).await.is_err() {
                break;
            }
        }
    };
    let outbound = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let frame = Message::Binary(buf[..n].to_vec().into());
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    };
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
    }
    tracing::info!(stream = %label, "stream closed");
}

#[async_trait::async_trait]
impl SubresourceHandler for VirtApi {
    async fn handle(
        &self,
        method: Method,
        path: Vec<String>,
        _query: Query,
        headers: HeaderMap,
        body: Body,
    ) -> Response {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.headers_mut() = headers;
        self.route(&path, req).await.unwrap_or_else(|e| e)
    }

    async fn handle_request(&self, path: Vec<String>, _query: Query, req: Request) -> Response {
        self.route(&path, req).await.unwrap_or_else(|e| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_request_adds_the_status() {
        let p = change_request_patch(&Value::Null, &[json!({"action": "Start"})]).unwrap();
        assert_eq!(
            p,
            json!([{"op": "add", "path": "/status", "value": {"stateChangeRequests": [{"action": "Start"}]}}])
        );
    }

    #[test]
    fn requests_are_guarded_by_a_test_of_the_current_ones() {
        let st =
            json!({"printableStatus": "Running", "startFailure": {"retryAfterTimestamp": "x"}});
        let p = change_request_patch(&st, &[json!({"action": "Stop", "uid": "u"})]).unwrap();
        assert_eq!(
            p[0],
            json!({"op": "test", "path": "/status/stateChangeRequests", "value": null})
        );
        assert_eq!(p[1]["op"], "add");
        assert_eq!(
            p[2],
            json!({"op": "remove", "path": "/status/startFailure"})
        );
    }

    #[test]
    fn a_stop_replaces_pending_requests_but_a_start_does_not() {
        let st = json!({"stateChangeRequests": [{"action": "Start"}]});
        let p = change_request_patch(&st, &[json!({"action": "Stop"})]).unwrap();
        assert_eq!(p[1]["op"], "replace");
        let e = change_request_patch(&st, &[json!({"action": "Start"})]).unwrap_err();
        assert_eq!(e, "unable to complete request: stop/start already underway");
    }

    #[test]
    fn running_patch_uses_the_field_the_vm_uses() {
        let mut vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "a"}, "spec": {"running": true, "template": {"spec": {"domain": {"devices": {}}}}}
        }))
        .unwrap();
        assert_eq!(
            running_patch(&vm, false)[1],
            json!({"op": "replace", "path": "/spec/running", "value": false})
        );
        vm.spec.running = None;
        vm.spec.run_strategy = Some("Manual".into());
        assert_eq!(
            running_patch(&vm, true),
            json!([{"op": "test", "path": "/spec/runStrategy", "value": "Manual"},
                   {"op": "replace", "path": "/spec/runStrategy", "value": "Always"}])
        );
    }

    #[test]
    fn conflicts_read_like_kubernetes_status_errors() {
        let r = conflict(
            "virtualmachine",
            "demo",
            "Always does not support manual start requests",
        );
        assert_eq!(r.status(), StatusCode::CONFLICT);
    }
}

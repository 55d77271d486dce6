//! KubeVirt's memory dump controller (pkg/storage/memorydump, driven by the VM controller in
//! KubeVirt): follows `status.memoryDumpRequest`, which virt-api's `memorydump` /
//! `removememorydump` set (docs/memory-snapshots.md, "Memory dump").
//!
//! - `Associating`, once the VM's VMI runs: `InProgress`.
//! - `InProgress`: virt-api's VMI subresource `dumpmemory` (ours,
//!   [`kubevirt_api::memdump::DUMP_SUBRESOURCE`]): the VMI's node agent has the launcher
//!   write the ELF core and moves it into the claim. Done: the claim gets
//!   `kubevirt.io/memory-dump: <file>` and the request `Completed` with `fileName`,
//!   `startTimestamp`, `endTimestamp`. Refused or failed: `Failed` with the reason, the claim
//!   `kubevirt.io/memory-dump: Memory dump failed`. A VMI that stopped meanwhile fails it too.
//!   Not ready yet (an unbound claim, an unreachable node agent, 503): asked again.
//! - `Dissociating` (`remove`): the request goes.
//!
//! The claim is not hotplugged into the VM or VMI (KubeVirt adds a `memoryDump` volume to both
//! while it mounts the claim into the launcher Pod): the node agent writes into the claim's
//! volume directly, so there is nothing to mount, and KubeVirt's `Unmounting` step is empty.
//! Every status change is a JSON patch guarded by a `test` of the request as read, so a user's
//! new request or removal in between is never overwritten.

use crate::{Context, Error};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use kubevirt_api::memdump::{self, phase, DumpMemory, DumpResult};
use kubevirt_api::status::VmiPhase;
use kubevirt_api::{VirtualMachine, VirtualMachineInstance, VirtualMachineMemoryDumpRequest};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing now (a VMI to wait for, or a request at rest).
    Wait,
    /// Take the request to this phase.
    Phase(&'static str),
    /// Dump now.
    Dump,
    /// The VMI stopped before the dump was taken.
    Fail(String),
    /// The removal is done: the request goes.
    Remove,
}

/// The next step for `req`, given whether the VM's VMI runs.
pub fn next(req: &VirtualMachineMemoryDumpRequest, vmi_running: bool) -> Step {
    if req.remove == Some(true) || req.phase == phase::DISSOCIATING {
        return Step::Remove;
    }
    match req.phase.as_str() {
        phase::ASSOCIATING if vmi_running => Step::Phase(phase::IN_PROGRESS),
        phase::IN_PROGRESS if vmi_running => Step::Dump,
        phase::IN_PROGRESS => Step::Fail(failed(&req.claim_name, "VMI is not running")),
        _ => Step::Wait,
    }
}

/// KubeVirt's volume status message of a failed dump.
pub fn failed(claim: &str, why: &str) -> String {
    format!("Memory dump to pvc {claim} failed: {why}")
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some(req) = vm
        .status
        .as_ref()
        .and_then(|s| s.memory_dump_request.clone())
    else {
        return Ok(Action::await_change());
    };
    let ns = crate::namespace_of(&vm.metadata)?;
    let name = vm.name_any();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let running = vmis.get_opt(&name).await?.is_some_and(|v| {
        VmiPhase::of(&v) == Some(VmiPhase::Running) && v.metadata.deletion_timestamp.is_none()
    });
    let current = serde_json::to_value(&req)?;
    let claim = req.claim_name.clone();
    match next(&req, running) {
        Step::Wait => return Ok(Action::requeue(Duration::from_secs(30))),
        Step::Phase(p) => {
            let mut new = current.clone();
            new["phase"] = json!(p);
            patch_request(&ctx, &ns, &name, &current, Some(new)).await?;
        }
        Step::Remove => patch_request(&ctx, &ns, &name, &current, None).await?,
        Step::Fail(message) => {
            fail(&ctx, &ns, &name, &current, &claim, message).await?;
        }
        Step::Dump => match dump(&ctx, &ns, &name, &claim).await {
            Ok(done) => {
                annotate_claim(&ctx, &ns, &claim, &done.file_name).await;
                let mut new = current.clone();
                new["phase"] = json!(phase::COMPLETED);
                new["fileName"] = json!(done.file_name);
                new["startTimestamp"] = json!(done.start_timestamp);
                new["endTimestamp"] = json!(done.end_timestamp);
                if let Some(o) = new.as_object_mut() {
                    o.remove("message");
                }
                tracing::info!(namespace = %ns, vm = %name, claim = %claim, file = %done.file_name, bytes = done.size_bytes, "memory dump completed");
                patch_request(&ctx, &ns, &name, &current, Some(new)).await?;
            }
            Err(kube::Error::Api(s)) if s.code == 503 => {
                tracing::info!(namespace = %ns, vm = %name, claim = %claim, reason = %s.message, "memory dump not possible yet");
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
            Err(kube::Error::Api(s)) => {
                let message = failed(&claim, &s.message);
                tracing::warn!(namespace = %ns, vm = %name, claim = %claim, %message, "memory dump failed");
                fail(&ctx, &ns, &name, &current, &claim, message).await?;
            }
            Err(e) => return Err(e.into()),
        },
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

async fn fail(
    ctx: &Context,
    ns: &str,
    name: &str,
    current: &Value,
    claim: &str,
    message: String,
) -> Result<(), Error> {
    annotate_claim(ctx, ns, claim, memdump::ANNOTATION_FAILED).await;
    let mut new = current.clone();
    new["phase"] = json!(phase::FAILED);
    new["message"] = json!(message);
    new["endTimestamp"] = json!(now());
    patch_request(ctx, ns, name, current, Some(new)).await
}

/// virt-api's `dumpmemory` on the VM's VMI.
async fn dump(ctx: &Context, ns: &str, name: &str, claim: &str) -> Result<DumpResult, kube::Error> {
    let body = serde_json::to_vec(&DumpMemory {
        claim_name: claim.to_string(),
    })
    .map_err(kube::Error::SerdeError)?;
    let req = http::Request::put(format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/{}",
        memdump::DUMP_SUBRESOURCE
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(body)
    .map_err(kube::Error::HttpError)?;
    ctx.client.request::<DumpResult>(req).await
}

/// KubeVirt's `patchMemoryDumpPVCAnnotation`; a failure is logged (as KubeVirt does).
async fn annotate_claim(ctx: &Context, ns: &str, claim: &str, value: &str) {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({"metadata": {"annotations": {memdump::ANNOTATION: value}}});
    if let Err(e) = pvcs
        .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(namespace = ns, claim, error = %e, "failed to annotate memory dump PVC");
    }
}

/// Replaces (`Some`) or removes (`None`) `status.memoryDumpRequest`, if it is still `current`.
async fn patch_request(
    ctx: &Context,
    ns: &str,
    name: &str,
    current: &Value,
    new: Option<Value>,
) -> Result<(), Error> {
    let path = "/status/memoryDumpRequest";
    let ops = match new {
        Some(v) => json!([
            {"op": "test", "path": path, "value": current},
            {"op": "replace", "path": path, "value": v},
        ]),
        None => json!([
            {"op": "test", "path": path, "value": current},
            {"op": "remove", "path": path},
        ]),
    };
    let req = http::Request::patch(format!(
        "/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}/status"
    ))
    .header(http::header::CONTENT_TYPE, "application/json-patch+json")
    .body(serde_json::to_vec(&ops)?)
    .map_err(kube::Error::HttpError)?;
    ctx.client.request::<Value>(req).await?;
    Ok(())
}

pub fn error_policy(_vm: Arc<VirtualMachine>, err: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(err.retry_after())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(phase: &str, remove: Option<bool>) -> VirtualMachineMemoryDumpRequest {
        VirtualMachineMemoryDumpRequest {
            claim_name: "c".into(),
            phase: phase.into(),
            remove,
            ..Default::default()
        }
    }

    #[test]
    fn requests_move_through_kubevirts_phases() {
        assert_eq!(next(&req(phase::ASSOCIATING, None), false), Step::Wait);
        assert_eq!(
            next(&req(phase::ASSOCIATING, None), true),
            Step::Phase(phase::IN_PROGRESS)
        );
        assert_eq!(next(&req(phase::IN_PROGRESS, None), true), Step::Dump);
        assert_eq!(
            next(&req(phase::IN_PROGRESS, None), false),
            Step::Fail("Memory dump to pvc c failed: VMI is not running".into())
        );
        for done in [phase::COMPLETED, phase::FAILED] {
            assert_eq!(next(&req(done, None), true), Step::Wait);
        }
        assert_eq!(
            next(&req(phase::DISSOCIATING, Some(true)), true),
            Step::Remove
        );
        assert_eq!(
            next(&req(phase::COMPLETED, Some(true)), false),
            Step::Remove
        );
    }
}

//! KubeVirt's VirtualMachineExport (`export.kubevirt.io/v1`): the controller that decides an
//! export's phase, conditions, token Secret, links and expiry, and the export server that
//! serves its volumes and manifests. KubeVirt's code is the reference
//! (`pkg/storage/export/export/{export,links,pvc-source,vm-source}.go` for the controller,
//! `pkg/storage/export/virt-exportserver/exportserver.go` for the server).
//!
//! Where KubeVirt starts an exporter Pod, a Service and (for external links) an Ingress per
//! export, here one [`ExportServer`] is plugged into the API server's own HTTPS listener
//! (`Running::set_export_server`) at the path shape of KubeVirt's external export proxy,
//! `/api/export.kubevirt.io/v1/namespaces/NS/virtualmachineexports/NAME/...`. Both
//! `status.links.internal` and `status.links.external` point there, with the API server's CA
//! as `cert`. Requests are authorised by the export's token only (header
//! `x-kubevirt-export-token`, or the query parameter of the same name, as KubeVirt's server
//! takes it), compared in constant time; the API's bearer tokens play no part.
//!
//! Every file served is a PersistentVolumeClaim's data, found through its bound
//! PersistentVolume and the one host-path policy ([`kubevirt_runtime::host_path`]); nothing
//! in the request names a path: the volume segment is only looked up among the export's
//! volumes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::{watcher, Controller};
use kube::ResourceExt;
use kubevirt_api::{DataVolume, VirtualMachine, VirtualMachineExport, VirtualMachineInstance};
use kubevirt_runtime::host_path::{self, HostPathPolicy};
use kubevirt_runtime::subresource::{Query, SubresourceHandler};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{Context, Error};

/// `status.phase` values (KubeVirt's `VirtualMachineExportPhase`).
pub mod phase {
    pub const PENDING: &str = "Pending";
    pub const READY: &str = "Ready";
    pub const TERMINATED: &str = "Terminated";
    /// A VirtualMachine source without any volume to export.
    pub const SKIPPED: &str = "Skipped";
}

/// Condition types and reasons (KubeVirt's `exportv1.Condition*` and export.go's reasons).
pub mod reason {
    pub const READY: &str = "Ready";
    pub const PVC_READY: &str = "PVCReady";
    pub const PVC_NOT_FOUND: &str = "PVCNotFound";
    pub const PVC_BOUND: &str = "PVCBound";
    pub const PVC_PENDING: &str = "PVCPending";
    pub const UNKNOWN: &str = "Unknown";
    pub const INITIALIZING: &str = "Initializing";
    pub const IN_USE: &str = "InUse";
    pub const POD_PENDING: &str = "PodPending";
    /// KubeVirt's reason once its exporter Pod is ready; here once the volumes may be served.
    pub const POD_READY: &str = "PodReady";
    pub const VM_NOT_FOUND: &str = "VMNotFound";
    pub const VOLUMES_NOT_POPULATED: &str = "VolumesNotPopulated";
    pub const NO_VOLUME_VM: &str = "VMNoVolumes";
    /// Ours: a source kind this server does not export (yet).
    pub const SOURCE_NOT_SUPPORTED: &str = "SourceNotSupported";
}

/// The header (and query parameter) that carries an export's token.
pub const TOKEN_HEADER: &str = "x-kubevirt-export-token";
/// The key of the token in the token Secret.
pub const TOKEN_KEY: &str = "token";
/// KubeVirt's `exportv1.DefaultDurationTTL`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2 * 3600);
/// The API version in the links (KubeVirt v1.9's `export.kubevirt.io/v1`).
pub const LINK_VERSION: &str = "v1";
/// Versions the server answers under (links written by older KubeVirt releases say v1beta1).
const SERVED_VERSIONS: &[&str] = &["v1", "v1beta1"];

/// Manifest types (`exportv1.AllManifests`, `exportv1.AuthHeader`).
pub const MANIFEST_ALL: &str = "all";
pub const MANIFEST_AUTH_HEADER: &str = "auth-header-secret";
/// Volume formats (`exportv1.KubeVirtRaw`, `exportv1.KubeVirtGz`).
pub const FORMAT_RAW: &str = "raw";
pub const FORMAT_GZIP: &str = "gzip";
/// KubeVirt's `ArchiveGz`: a directory volume as a gzipped tar.
pub const FORMAT_ARCHIVE_GZ: &str = "tar.gz";

/// How long a Pending export waits before it looks again (KubeVirt requeues on informer
/// events; here the controller polls its sources).
const PENDING_POLL: Duration = Duration::from_secs(1);
const READY_POLL: Duration = Duration::from_secs(10);
/// Chunk size of streamed volume data; also bounds the memory of one download.
const CHUNK: usize = 256 * 1024;

/// Where the export's links point and what they carry.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// `https://HOST:PORT` of the API server's listener.
    pub base_url: String,
    /// The API server's CA (PEM): `status.links.*.cert`.
    pub ca_pem: String,
    /// The host-path policy PersistentVolume paths must pass (the handler's).
    pub host_paths: HostPathPolicy,
}

/// KubeVirt's `naming.GetName(base, suffix, maxLength)` (openshift/library-go): `base-suffix`,
/// or shortened with an FNV-32a hash when longer than `max`.
pub fn get_name(base: &str, suffix: &str, max: usize) -> String {
    let name = format!("{base}-{suffix}");
    if name.len() <= max {
        return name;
    }
    let hash = |s: &str| {
        let h = s.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        format!("{h:08x}")
    };
    match max.checked_sub(10 + suffix.len()) {
        None => {
            let prefix = &base[..base.len().min(max.saturating_sub(9))];
            let short = format!("{prefix}-{}", hash(&name));
            short[..short.len().min(max)].to_string()
        }
        Some(base_len) => format!(
            "{}-{}-{suffix}",
            &base[..base_len.min(base.len())],
            hash(base)
        ),
    }
}

/// The token Secret the controller makes for an export without `spec.tokenSecretRef`
/// (KubeVirt's `getDefaultTokenSecretName`).
pub fn default_token_secret_name(export: &str) -> String {
    get_name("export-token", export, 63)
}

/// The Secret of `/manifests/secret`: CDI's extra header for importing from the export
/// (KubeVirt's `getSecretTokenName`).
pub fn header_secret_name(export: &str) -> String {
    format!("header-secret-{export}")
}

/// The CA ConfigMap of `/manifests/all` (KubeVirt's `createExportCaConfigMap`).
pub fn ca_config_map_name(export: &str) -> String {
    format!("export-ca-cm-{export}")
}

/// `https://HOST:PORT/api/export.kubevirt.io/v1/namespaces/NS/virtualmachineexports/NAME`.
pub fn export_base_url(base_url: &str, ns: &str, name: &str) -> String {
    format!(
        "{}/api/export.kubevirt.io/{LINK_VERSION}/namespaces/{ns}/virtualmachineexports/{name}",
        base_url.trim_end_matches('/')
    )
}

/// When an export expires: its creation time plus `spec.ttlDuration` (default 2 h).
pub fn expiration(vme: &VirtualMachineExport) -> Option<Timestamp> {
    let created = vme.metadata.creation_timestamp.as_ref()?.0;
    let ttl = match vme.spec.ttl_duration.as_deref() {
        Some(t) => kubevirt_api::duration::parse(t).ok()?,
        None => i64::try_from(DEFAULT_TTL.as_nanos()).ok()?,
    };
    created
        .checked_add(SignedDuration::from_nanos(ttl))
        .ok()
        .or(Some(Timestamp::MAX))
}

/// One condition: (type, status, reason, message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    fn ready(status: &'static str, reason: &'static str, message: impl Into<String>) -> Cond {
        Cond {
            type_: reason::READY,
            status,
            reason,
            message: message.into(),
        }
    }
    fn pvc(status: &'static str, reason: &'static str, message: impl Into<String>) -> Cond {
        Cond {
            type_: reason::PVC_READY,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// What an export's source offers now. One decision for the controller and the server.
#[derive(Clone, Debug)]
pub struct Source {
    /// The claims to export; each volume is named after its claim.
    pub claims: Vec<PersistentVolumeClaim>,
    /// Every claim populated and none in use: the export may be Ready.
    pub available: bool,
    /// The Ready condition while not available.
    pub ready: Cond,
    /// `PVCReady`, for PVC sources.
    pub pvc: Option<Cond>,
    /// A VirtualMachine source with nothing to export (phase Skipped).
    pub skipped: bool,
    /// `status.virtualMachineName`.
    pub vm_name: Option<String>,
}

impl Source {
    fn waiting(ready: Cond) -> Source {
        Source {
            claims: Vec::new(),
            available: false,
            ready,
            pvc: None,
            skipped: false,
            vm_name: None,
        }
    }

    fn is_vm(&self) -> bool {
        self.vm_name.is_some()
    }
}

fn bound(pvc: &PersistentVolumeClaim) -> bool {
    pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

/// CDI's `IsPopulated`: a claim a DataVolume fills is populated once the DataVolume
/// succeeded; other claims once bound.
async fn populated(client: &kube::Client, pvc: &PersistentVolumeClaim) -> Result<bool, Error> {
    if !bound(pvc) {
        return Ok(false);
    }
    let Some(owner) = pvc
        .owner_references()
        .iter()
        .find(|o| o.kind == "DataVolume" && o.controller == Some(true))
    else {
        return Ok(true);
    };
    let ns = pvc.namespace().unwrap_or_default();
    let dv = Api::<DataVolume>::namespaced(client.clone(), &ns)
        .get_opt(&owner.name)
        .await?;
    Ok(dv
        .and_then(|d| d.status)
        .and_then(|s| s.phase)
        .is_some_and(|p| p == kubevirt_api::cdi::phase::SUCCEEDED))
}

/// The claim a VMI/VM volume names (a PVC or a DataVolume, whose claim has its name).
fn claim_of(v: &kubevirt_api::Volume) -> Option<&str> {
    v.persistent_volume_claim
        .as_ref()
        .map(|p| p.claim_name.as_str())
        .or(v.data_volume.as_ref().map(|d| d.name.as_str()))
        .filter(|n| !n.is_empty())
}

fn vmi_finished(vmi: &VirtualMachineInstance) -> bool {
    matches!(
        vmi.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Whether a VMI that is not finished uses `claim` (KubeVirt: a Pod that mounts it).
async fn claim_in_use(client: &kube::Client, ns: &str, claim: &str) -> Result<bool, Error> {
    let vmis = Api::<VirtualMachineInstance>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?;
    let as_volume = vmis.items.iter().any(|vmi| {
        !vmi_finished(vmi)
            && vmi
                .spec
                .volumes
                .iter()
                .flatten()
                .any(|v| claim_of(v) == Some(claim))
    });
    // A claim a memory dump is being written into (not a VMI volume here: the node agent
    // writes into the claim's volume directly; KubeVirt hotplugs it, so there the check above
    // sees it).
    let dumping = || async {
        let vms = Api::<kubevirt_api::VirtualMachine>::namespaced(client.clone(), ns)
            .list(&Default::default())
            .await?;
        Ok::<bool, Error>(vms.items.iter().any(|vm| {
            vm.status
                .as_ref()
                .and_then(|s| s.memory_dump_request.as_ref())
                .is_some_and(|r| {
                    r.claim_name == claim
                        && matches!(
                            r.phase.as_str(),
                            kubevirt_api::memdump::phase::ASSOCIATING
                                | kubevirt_api::memdump::phase::IN_PROGRESS
                        )
                })
        }))
    };
    Ok(as_volume || dumping().await?)
}

/// Decides what `vme`'s source offers (KubeVirt's `getPVCFromSourcePVC`,
/// `getPVCFromSourceVM`).
pub async fn source(client: &kube::Client, vme: &VirtualMachineExport) -> Result<Source, Error> {
    let ns = vme.namespace().unwrap_or_default();
    let src = &vme.spec.source;
    let group = src.api_group.as_deref().unwrap_or("");
    match (src.kind.as_str(), group) {
        ("PersistentVolumeClaim", "") => pvc_source(client, &ns, &src.name).await,
        ("VirtualMachine", "kubevirt.io") => vm_source(client, &ns, &src.name).await,
        ("VirtualMachineSnapshot", _) => Ok(Source::waiting(Cond::ready(
            "False",
            reason::SOURCE_NOT_SUPPORTED,
            format!(
                "VirtualMachineSnapshot {ns}/{} cannot be exported: kubevirt-rs does not export VirtualMachineSnapshot sources yet (docs/export.md)",
                src.name
            ),
        ))),
        (kind, _) => Ok(Source::waiting(Cond::ready(
            "False",
            reason::SOURCE_NOT_SUPPORTED,
            format!("kubevirt-rs does not export {kind} sources"),
        ))),
    }
}

async fn pvc_source(client: &kube::Client, ns: &str, name: &str) -> Result<Source, Error> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?;
    let Some(pvc) = pvc else {
        let mut s = Source::waiting(Cond::ready("False", reason::INITIALIZING, ""));
        s.pvc = Some(Cond::pvc(
            "False",
            reason::PVC_NOT_FOUND,
            format!("PersistentVolumeClaim {ns}/{name} not found"),
        ));
        return Ok(s);
    };
    let pvc_cond = match pvc.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Bound") => Cond::pvc("True", reason::PVC_BOUND, ""),
        Some("Pending") => Cond::pvc("False", reason::PVC_PENDING, ""),
        _ => Cond::pvc("False", reason::UNKNOWN, ""),
    };
    let is_populated = populated(client, &pvc).await?;
    let in_use = is_populated && claim_in_use(client, ns, name).await?;
    let ready = if !is_populated {
        Cond::ready(
            "False",
            reason::PVC_PENDING,
            format!("PersistentVolumeClaim {ns}/{name} is not populated"),
        )
    } else if in_use {
        Cond::ready(
            "False",
            reason::IN_USE,
            format!("PersistentVolumeClaim {ns}/{name} is in use"),
        )
    } else {
        Cond::ready("False", reason::INITIALIZING, "")
    };
    Ok(Source {
        claims: vec![pvc],
        available: is_populated && !in_use,
        ready,
        pvc: Some(pvc_cond),
        skipped: false,
        vm_name: None,
    })
}

async fn vm_source(client: &kube::Client, ns: &str, name: &str) -> Result<Source, Error> {
    let vm = Api::<VirtualMachine>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?;
    let Some(vm) = vm else {
        return Ok(Source::waiting(Cond::ready(
            "False",
            reason::VM_NOT_FOUND,
            format!("Virtual Machine {ns}/{name} not found"),
        )));
    };
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
    let mut claims = Vec::new();
    let mut all_populated = true;
    let volumes = vm
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for v in &volumes {
        let Some(claim) = claim_of(v) else { continue };
        match pvcs.get_opt(claim).await? {
            Some(pvc) => {
                if !populated(client, &pvc).await? {
                    all_populated = false;
                }
                claims.push(pvc);
            }
            // A DataVolume whose claim does not exist yet.
            None if v.data_volume.is_some() => all_populated = false,
            None => {}
        }
    }
    let mut s = Source {
        claims,
        available: false,
        ready: Cond::ready("False", reason::INITIALIZING, ""),
        pvc: None,
        skipped: false,
        vm_name: Some(name.to_string()),
    };
    if s.claims.is_empty() {
        s.skipped = true;
        s.ready = Cond::ready(
            "False",
            reason::NO_VOLUME_VM,
            format!("Virtual Machine {ns}/{name} has no volumes"),
        );
    } else if !all_populated {
        s.ready = Cond::ready(
            "False",
            reason::VOLUMES_NOT_POPULATED,
            format!("Not all volumes in the Virtual Machine {ns}/{name} are populated"),
        );
    } else {
        let vmi = Api::<VirtualMachineInstance>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?;
        match vmi {
            Some(vmi) if !vmi_finished(&vmi) => {
                s.ready = Cond::ready(
                    "False",
                    reason::IN_USE,
                    format!("Virtual Machine {ns}/{name} is running"),
                );
            }
            _ => s.available = true,
        }
    }
    Ok(s)
}

/// Whether a claim holds a directory tree, not a disk image: CDI's content type `archive`, or
/// a claim holding memory dumps (`kubevirt.io/memory-dump`, which KubeVirt, seeing no
/// `kubevirt` content type on such a claim, exports as an archive too).
fn is_archive(pvc: &PersistentVolumeClaim) -> bool {
    let a = pvc.annotations();
    a.get("cdi.kubevirt.io/storage.contentType")
        .is_some_and(|c| c == "archive")
        || a.contains_key(kubevirt_api::memdump::ANNOTATION)
}

/// `status.links.internal`/`external` for an available source: each claim's `raw` and
/// `gzip` URLs, and for VirtualMachine sources the manifests.
pub fn link(cfg: &ExportConfig, vme: &VirtualMachineExport, src: &Source, kind: &str) -> Value {
    let ns = vme.namespace().unwrap_or_default();
    let base = export_base_url(&cfg.base_url, &ns, &vme.name_any());
    let volumes: Vec<Value> = src
        .claims
        .iter()
        .map(|c| {
            let n = c.name_any();
            if is_archive(c) {
                return json!({"name": n, "formats": [
                    {"format": FORMAT_ARCHIVE_GZ, "url": format!("{base}/volumes/{n}/disk.tar.gz")},
                ]});
            }
            json!({"name": n, "formats": [
                {"format": FORMAT_RAW, "url": format!("{base}/volumes/{n}/disk.img")},
                {"format": FORMAT_GZIP, "url": format!("{base}/volumes/{n}/disk.img.gz")},
            ]})
        })
        .collect();
    let mut l = json!({"cert": cfg.ca_pem, "volumes": volumes});
    if src.is_vm() {
        l["manifests"] = json!([
            {"type": MANIFEST_ALL, "url": format!("{base}/{kind}/manifests/all")},
            {"type": MANIFEST_AUTH_HEADER, "url": format!("{base}/{kind}/manifests/secret")},
        ]);
    }
    l
}

// ---------------------------------------------------------------------------------------
// The controller.

/// State of the export controller.
pub struct ExportContext {
    pub cdi: Arc<Context>,
    pub config: ExportConfig,
}

fn now_time() -> Value {
    json!(Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Conditions in KubeVirt's `updateCondition` way: a condition keeps its
/// `lastTransitionTime` while status, reason and message stay the same.
fn conditions(old: &Value, new: &[Cond]) -> Value {
    let old = old.as_array().cloned().unwrap_or_default();
    let mut out: Vec<Value> = old
        .iter()
        .filter(|c| !new.iter().any(|n| c["type"] == n.type_))
        .cloned()
        .collect();
    for n in new {
        let prev = old.iter().find(|c| c["type"] == n.type_);
        let same = prev.is_some_and(|p| {
            p["status"] == n.status
                && p["reason"] == n.reason
                && p["message"].as_str().unwrap_or("") == n.message
        });
        match prev {
            Some(p) if same => out.push(p.clone()),
            _ => {
                let mut c = json!({"type": n.type_, "status": n.status, "reason": n.reason,
                    "lastTransitionTime": now_time(), "lastProbeTime": null});
                if !n.message.is_empty() {
                    c["message"] = json!(n.message);
                }
                out.push(c);
            }
        }
    }
    // Ready first, as KubeVirt orders them.
    out.sort_by_key(|c| c["type"] != reason::READY);
    Value::Array(out)
}

/// A 20-character alphanumeric token (KubeVirt's `GenerateVMExportToken`).
fn generate_token() -> String {
    const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(20);
    while out.len() < 20 {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        // Rejection sampling keeps every character equally likely.
        for b in bytes.iter().filter(|b| usize::from(**b) < 248) {
            if out.len() < 20 {
                out.push(char::from(ALNUM[usize::from(*b) % ALNUM.len()]));
            }
        }
    }
    out
}

fn owner_ref(vme: &VirtualMachineExport) -> Value {
    json!({"apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport",
        "name": vme.name_any(), "uid": vme.uid().unwrap_or_default(),
        "controller": true, "blockOwnerDeletion": false})
}

/// Creates the default token Secret unless it exists (KubeVirt's `handleVMExportToken`).
async fn ensure_token_secret(
    ctx: &ExportContext,
    vme: &VirtualMachineExport,
    name: &str,
) -> Result<(), Error> {
    let ns = vme.namespace().unwrap_or_default();
    let secrets = Api::<Secret>::namespaced(ctx.cdi.client.clone(), &ns);
    if secrets.get_opt(name).await?.is_some() {
        return Ok(());
    }
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "ownerReferences": [owner_ref(vme)]},
        "type": "Opaque",
        // `data`, not `stringData`: the embedded API server stores `stringData` as given.
        "data": {TOKEN_KEY: base64::engine::general_purpose::STANDARD.encode(generate_token())},
    }))?;
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            ctx.cdi
                .event(
                    vme,
                    EventType::Normal,
                    "SecretCreated",
                    format!("Created default secret {ns}/{name}"),
                )
                .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The status an export should have; `None` for the links while not Ready.
pub fn desired_status(
    cfg: &ExportConfig,
    vme: &VirtualMachineExport,
    src: &Source,
    token_ref: Option<&str>,
    token_present: bool,
    old: &Value,
) -> Value {
    let ns = vme.namespace().unwrap_or_default();
    let ready = src.available && token_present;
    let (phase, ready_cond) = if ready {
        (phase::READY, Cond::ready("True", reason::POD_READY, ""))
    } else if src.skipped {
        (phase::SKIPPED, src.ready.clone())
    } else if src.available {
        (
            phase::PENDING,
            Cond::ready(
                "False",
                reason::POD_PENDING,
                format!(
                    "waiting for the token Secret {ns}/{}",
                    token_ref.unwrap_or_default()
                ),
            ),
        )
    } else {
        (phase::PENDING, src.ready.clone())
    };
    let mut conds = vec![ready_cond];
    conds.extend(src.pvc.clone());
    let links = if ready {
        json!({"internal": link(cfg, vme, src, "internal"),
               "external": link(cfg, vme, src, "external")})
    } else {
        json!({})
    };
    json!({
        "phase": phase,
        "conditions": conditions(&old["conditions"], &conds),
        "links": links,
        "tokenSecretRef": token_ref,
        "ttlExpirationTime": expiration(vme)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        "virtualMachineName": src.vm_name,
    })
}

async fn reconcile(
    vme: Arc<VirtualMachineExport>,
    ctx: Arc<ExportContext>,
) -> Result<Action, Error> {
    if vme.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = vme
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = vme.name_any();
    let client = &ctx.cdi.client;
    let api = Api::<VirtualMachineExport>::namespaced(client.clone(), &ns);
    // KubeVirt deletes an export once its TTL has passed.
    let expires = expiration(&vme);
    let now = Timestamp::now();
    if let Some(exp) = expires.filter(|e| *e <= now) {
        tracing::info!(%ns, %name, expired = %exp, "VirtualMachineExport TTL expired; deleting it");
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    let src = source(client, &vme).await?;
    let old = serde_json::to_value(&vme.status)?;
    let token_ref = match vme.spec.token_secret_ref.clone().filter(|s| !s.is_empty()) {
        Some(r) => Some(r),
        None if src.available && !src.claims.is_empty() => {
            let r = default_token_secret_name(&name);
            ensure_token_secret(&ctx, &vme, &r).await?;
            Some(r)
        }
        None => old["tokenSecretRef"].as_str().map(str::to_string),
    };
    let token_present = match &token_ref {
        Some(r) => Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt(r)
            .await?
            .is_some(),
        None => false,
    };
    let new = desired_status(
        &ctx.config,
        &vme,
        &src,
        token_ref.as_deref(),
        token_present,
        &old,
    );
    // Compared in the stored form (through the typed status), so an unchanged status is
    // never written again (each write wakes this controller).
    let typed: kubevirt_api::VirtualMachineExportStatus = serde_json::from_value(new.clone())?;
    if !same_status(&old, &serde_json::to_value(&typed)?) {
        // A merge patch: fields that went away (links of an export no longer Ready) are
        // written as null.
        let mut patch = new.clone();
        if new["links"] == json!({}) {
            patch["links"] = Value::Null;
        }
        kubevirt_runtime::status::write_status(&api, &name, patch).await?;
        tracing::debug!(%ns, %name, phase = %new["phase"], "VirtualMachineExport status written");
    }
    let ready = new["phase"] == phase::READY;
    let mut next = if ready { READY_POLL } else { PENDING_POLL };
    if let Some(left) = expires.and_then(|e| Duration::try_from(e.duration_since(now)).ok()) {
        next = next.min(left + Duration::from_millis(50));
    }
    Ok(Action::requeue(next))
}

fn same_status(old: &Value, new: &Value) -> bool {
    let pick = |v: &Value, k: &str| match &v[k] {
        Value::Null => Value::Null,
        Value::Object(m) if m.is_empty() => Value::Null,
        x => x.clone(),
    };
    [
        "phase",
        "conditions",
        "links",
        "tokenSecretRef",
        "ttlExpirationTime",
        "virtualMachineName",
    ]
    .iter()
    .all(|k| pick(old, k) == pick(new, k))
}

fn error_policy(vme: Arc<VirtualMachineExport>, err: &Error, _ctx: Arc<ExportContext>) -> Action {
    tracing::debug!(export = %vme.name_any(), error = %err, "vmexport reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the VirtualMachineExport controller until the future is dropped.
pub async fn run(cdi: Arc<Context>, config: ExportConfig) {
    let ctx = Arc::new(ExportContext { cdi, config });
    let exports: Api<VirtualMachineExport> = Api::all(ctx.cdi.client.clone());
    let secrets: Api<Secret> = Api::all(ctx.cdi.client.clone());
    Controller::new(exports, watcher::Config::default())
        .owns(secrets, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "vmexport controller");
            }
        })
        .await;
}

// ---------------------------------------------------------------------------------------
// The export server.

/// What a request asks for, after the export's prefix.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Raw(&'a str),
    Gzip(&'a str),
    Archive(&'a str),
    Manifests,
    HeaderSecret,
}

/// A refused request: the status and a message for the user.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl Refusal {
    fn not_found(m: impl Into<String>) -> Refusal {
        Refusal(StatusCode::NOT_FOUND, m.into())
    }
    fn internal(m: impl Into<String>) -> Refusal {
        Refusal(StatusCode::INTERNAL_SERVER_ERROR, m.into())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut m = self.1;
        m.push('\n');
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            m,
        )
            .into_response()
    }
}

impl From<kube::Error> for Refusal {
    fn from(e: kube::Error) -> Self {
        Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reading from the API: {e}"),
        )
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

/// The parsed request path: `VERSION/namespaces/NS/virtualmachineexports/NAME/REST...`.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    namespace: &'a str,
    name: &'a str,
    route: Route<'a>,
}

fn parse_path<'a>(p: &[&'a str]) -> Result<Target<'a>, Refusal> {
    let shown = format!("/api/export.kubevirt.io/{}", p.join("/"));
    if p.iter().any(|s| *s == ".." || *s == ".") {
        return Err(Refusal::not_found(format!(
            "{shown}: export paths have no \".\" or \"..\" segments"
        )));
    }
    let [version, "namespaces", namespace, "virtualmachineexports", name, rest @ ..] = p else {
        return Err(Refusal::not_found(format!(
            "{shown}: not an export path (/api/export.kubevirt.io/v1/namespaces/NS/virtualmachineexports/NAME/...)"
        )));
    };
    if !SERVED_VERSIONS.contains(version) {
        return Err(Refusal::not_found(format!(
            "{shown}: export.kubevirt.io has no version {version:?} (served: v1, v1beta1)"
        )));
    }
    if let Some(why) = kubevirt_api::names::dns1123_label(namespace) {
        return Err(Refusal::not_found(format!("{shown}: namespace {why}")));
    }
    if let Some(why) = kubevirt_api::names::dns1123_subdomain(name) {
        return Err(Refusal::not_found(format!("{shown}: export name {why}")));
    }
    let route = match rest {
        ["volumes", vol, "disk.img"] => Route::Raw(vol),
        ["volumes", vol, "disk.img.gz"] => Route::Gzip(vol),
        ["volumes", vol, "disk.tar.gz"] => Route::Archive(vol),
        ["internal" | "external", "manifests", "all"] => Route::Manifests,
        ["internal" | "external", "manifests", "secret"] => Route::HeaderSecret,
        _ => {
            return Err(Refusal::not_found(format!(
                "{shown}: no such export resource (volumes/VOLUME/disk.img, volumes/VOLUME/disk.img.gz, volumes/VOLUME/disk.tar.gz, external/manifests/all, external/manifests/secret)"
            )))
        }
    };
    Ok(Target {
        namespace,
        name,
        route,
    })
}

/// Constant-time equality of a presented token and the export's.
fn token_matches(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// Serves the export links (plug in with `Running::set_export_server`).
pub struct ExportServer {
    cdi: Arc<Context>,
    config: ExportConfig,
}

impl ExportServer {
    pub fn new(cdi: Arc<Context>, config: ExportConfig) -> Self {
        ExportServer { cdi, config }
    }

    async fn serve(
        &self,
        method: &Method,
        path: &[String],
        query: &Query,
        headers: &HeaderMap,
    ) -> Result<Response, Refusal> {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let t = parse_path(&p)?;
        if *method != Method::GET && *method != Method::HEAD {
            return Err(Refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on export links; use GET"),
            ));
        }
        let client = &self.cdi.client;
        let (ns, name) = (t.namespace, t.name);
        let Some(vme) = Api::<VirtualMachineExport>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
        else {
            return Err(Refusal::not_found(format!(
                "VirtualMachineExport {ns}/{name} not found"
            )));
        };
        self.authorize(&vme, query, headers).await?;
        let status = vme.status.clone().unwrap_or_default();
        if status.phase.as_deref() != Some(phase::READY) {
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "VirtualMachineExport {ns}/{name} is not ready (phase {})",
                    status.phase.as_deref().unwrap_or("none")
                ),
            ));
        }
        let src = source(client, &vme).await?;
        if !src.available {
            return Err(Refusal(
                StatusCode::CONFLICT,
                format!(
                    "VirtualMachineExport {ns}/{name} cannot be served now: {}",
                    src.ready.message
                ),
            ));
        }
        match t.route {
            Route::Raw(vol) | Route::Gzip(vol) | Route::Archive(vol) => {
                let archive = matches!(t.route, Route::Archive(_));
                let Some(pvc) = src
                    .claims
                    .iter()
                    .find(|c| c.name_any() == vol && is_archive(c) == archive)
                else {
                    let names: Vec<String> = src.claims.iter().map(|c| c.name_any()).collect();
                    return Err(Refusal::not_found(format!(
                        "VirtualMachineExport {ns}/{name} has no volume {vol:?} (volumes: {})",
                        names.join(", ")
                    )));
                };
                let head = *method == Method::HEAD;
                if archive {
                    let dir = self.volume_dir(pvc).await?;
                    return serve_archive(dir, head).await;
                }
                let file = self.volume_file(pvc).await?;
                if matches!(t.route, Route::Raw(_)) {
                    serve_raw(file, headers, head).await
                } else {
                    serve_gzip(file, head).await
                }
            }
            Route::Manifests => self.manifests(&vme, &src, headers).await,
            Route::HeaderSecret => {
                let token = self.token(&vme).await?.unwrap_or_default();
                let secret = json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": header_secret_name(name)},
                    "stringData": {TOKEN_KEY: format!("{TOKEN_HEADER}:{token}")}});
                Ok(manifest_response(headers, vec![secret]))
            }
        }
    }

    /// The export's token, from the Secret `status.tokenSecretRef` (else `spec`) names.
    async fn token(&self, vme: &VirtualMachineExport) -> Result<Option<String>, Refusal> {
        let ns = vme.namespace().unwrap_or_default();
        let secret_name = vme
            .status
            .as_ref()
            .and_then(|s| s.token_secret_ref.clone())
            .or(vme.spec.token_secret_ref.clone())
            .filter(|s| !s.is_empty());
        let Some(secret_name) = secret_name else {
            return Ok(None);
        };
        let secret = Api::<Secret>::namespaced(self.cdi.client.clone(), &ns)
            .get_opt(&secret_name)
            .await?;
        Ok(secret
            .and_then(|s| s.data)
            .and_then(|d| d.get(TOKEN_KEY).cloned())
            .and_then(|b| String::from_utf8(b.0).ok())
            .filter(|t| !t.is_empty()))
    }

    async fn authorize(
        &self,
        vme: &VirtualMachineExport,
        query: &Query,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        let expected = self.token(vme).await?.unwrap_or_default();
        let presented = [
            query.get(TOKEN_HEADER),
            headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()),
        ];
        // Both are compared, whatever the first gives, so the time taken says nothing.
        let ok = presented
            .iter()
            .map(|p| p.is_some_and(|p| token_matches(p, &expected)))
            .fold(false, |a, b| a | b);
        if ok {
            Ok(())
        } else {
            Err(Refusal(
                StatusCode::UNAUTHORIZED,
                format!("a valid export token is required: the {TOKEN_HEADER} header (or query parameter) with the token of the export's Secret (status.tokenSecretRef)"),
            ))
        }
    }

    /// The file of a claim: its bound PersistentVolume's `spec.local.path`, through the
    /// host-path policy; `disk.img` beneath it for Filesystem claims.
    async fn volume_file(&self, pvc: &PersistentVolumeClaim) -> Result<PathBuf, Refusal> {
        let dir = self.volume_dir(pvc).await?;
        if crate::provisioner::is_block(pvc) {
            return Ok(dir);
        }
        host_path::beneath(&dir, std::path::Path::new("disk.img")).map_err(|e| {
            Refusal(
                StatusCode::FORBIDDEN,
                format!(
                    "the disk image of PersistentVolumeClaim {}: {e}",
                    pvc.name_any()
                ),
            )
        })
    }

    /// A claim's bound PersistentVolume's `spec.local.path`, through the host-path policy.
    async fn volume_dir(&self, pvc: &PersistentVolumeClaim) -> Result<PathBuf, Refusal> {
        let claim = pvc.name_any();
        let pv_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                Refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("PersistentVolumeClaim {claim} is not bound"),
                )
            })?;
        let pv = Api::<PersistentVolume>::all(self.cdi.client.clone())
            .get_opt(&pv_name)
            .await?
            .ok_or_else(|| {
                Refusal::internal(format!("PersistentVolume {pv_name} does not exist"))
            })?;
        // A claim naming someone else's volume (`spec.volumeName` written by hand) exports
        // nothing of it.
        if !kubevirt_api::core_kinds::pv_bound_to(&pv, pvc) {
            return Err(Refusal::internal(format!(
                "PersistentVolume {pv_name} is not bound to PersistentVolumeClaim {claim}"
            )));
        }
        let node = &self.cdi.config.node_name;
        if let Some(why) = kubevirt_runtime::pv::off_node(&self.cdi.client, &pv, node).await? {
            return Err(Refusal::internal(format!(
                "PersistentVolume {pv_name} {why}"
            )));
        }
        let local = pv
            .spec
            .as_ref()
            .and_then(|s| s.local.as_ref())
            .ok_or_else(|| {
                Refusal::internal(format!(
                    "PersistentVolume {pv_name} has no spec.local.path: only local volumes can be exported"
                ))
            })?;
        let dir = self
            .config
            .host_paths
            .persistent_volume(&local.path)
            .map_err(|e| {
                Refusal(
                    StatusCode::FORBIDDEN,
                    format!("PersistentVolume {pv_name} spec.local.path: {e}"),
                )
            })?;
        Ok(dir)
    }

    /// `/manifests/all`: the CA ConfigMap, the VirtualMachine (status and server-set
    /// metadata dropped, its DataVolume templates importing from this export) and a
    /// DataVolume for each other volume (KubeVirt's `vmHandler`).
    async fn manifests(
        &self,
        vme: &VirtualMachineExport,
        src: &Source,
        headers: &HeaderMap,
    ) -> Result<Response, Refusal> {
        let ns = vme.namespace().unwrap_or_default();
        let name = vme.name_any();
        let Some(vm_name) = &src.vm_name else {
            return Err(Refusal::not_found(format!(
                "VirtualMachineExport {ns}/{name}: manifests are exported for VirtualMachine sources only"
            )));
        };
        let vm = Api::<VirtualMachine>::namespaced(self.cdi.client.clone(), &ns)
            .get_opt(vm_name)
            .await?
            .ok_or_else(|| {
                Refusal::not_found(format!("Virtual Machine {ns}/{vm_name} not found"))
            })?;
        let base = export_base_url(&self.config.base_url, &ns, &name);
        let http = |claim: &str| {
            json!({"http": {"url": format!("{base}/volumes/{claim}/disk.img.gz"),
                "certConfigMap": ca_config_map_name(&name),
                "secretExtraHeaders": [header_secret_name(&name)]}})
        };
        let ca = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ca_config_map_name(&name)},
            "data": {"ca.pem": self.config.ca_pem}});
        let mut vm_v = serde_json::to_value(&vm).map_err(|e| Refusal::internal(e.to_string()))?;
        let meta = &vm_v["metadata"];
        let mut clean_meta = json!({"name": meta["name"], "namespace": meta["namespace"]});
        for k in ["labels", "annotations"] {
            if !meta[k].is_null() {
                clean_meta[k] = meta[k].clone();
            }
        }
        vm_v["metadata"] = clean_meta;
        if let Some(o) = vm_v.as_object_mut() {
            o.remove("status");
        }
        vm_v["apiVersion"] = json!("kubevirt.io/v1");
        vm_v["kind"] = json!("VirtualMachine");
        let mut templated = Vec::new();
        if let Some(ts) = vm_v["spec"]["dataVolumeTemplates"].as_array_mut() {
            for t in ts {
                let tname = t["metadata"]["name"].as_str().unwrap_or("").to_string();
                if src.claims.iter().any(|c| c.name_any() == tname) {
                    t["spec"]["source"] = http(&tname);
                    if let Some(s) = t["spec"].as_object_mut() {
                        s.remove("sourceRef");
                    }
                    templated.push(tname);
                }
            }
        }
        let mut out = vec![ca, vm_v];
        for c in &src.claims {
            let cn = c.name_any();
            if templated.contains(&cn) {
                continue;
            }
            let spec = c.spec.clone().unwrap_or_default();
            let mut storage =
                json!({"accessModes": spec.access_modes, "resources": spec.resources});
            if let Some(m) = spec.volume_mode {
                storage["volumeMode"] = json!(m);
            }
            out.push(
                json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                "metadata": {"name": cn, "namespace": ns},
                "spec": {"source": http(&cn), "storage": storage}}),
            );
        }
        Ok(manifest_response(headers, out))
    }
}

/// JSON `List` by default, YAML documents for `Accept: application/yaml` (KubeVirt's
/// `resourceToBytesJson`/`resourceToBytesYaml`).
fn manifest_response(headers: &HeaderMap, items: Vec<Value>) -> Response {
    let yaml = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/yaml"));
    if yaml {
        let mut text = String::new();
        for i in &items {
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(i).unwrap_or_default());
        }
        ([(header::CONTENT_TYPE, "application/yaml")], text).into_response()
    } else {
        let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items});
        (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string_pretty(&list).unwrap_or_default(),
        )
            .into_response()
    }
}

/// A single `bytes=` range of a file of `len` bytes: `Ok(None)` for none (or several: the
/// whole file is then a valid answer), `Err` when it cannot be satisfied.
fn parse_range(h: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            len.checked_sub(1).ok_or(())?
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1))
        };
        if start >= len || end < start {
            return Err(());
        }
        (start, end)
    };
    Ok(Some(range))
}

async fn serve_raw(path: PathBuf, headers: &HeaderMap, head: bool) -> Result<Response, Refusal> {
    let mut f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Refusal::internal(format!("opening the volume: {e}")))?;
    let len = f
        .metadata()
        .await
        .map_err(|e| Refusal::internal(format!("reading the volume: {e}")))?
        .len();
    let len = if len == 0 {
        // A Block volume is a file here; a real block device reports its size by seeking.
        f.seek(std::io::SeekFrom::End(0))
            .await
            .map_err(|e| Refusal::internal(format!("sizing the volume: {e}")))?
    } else {
        len
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, count) = match parse_range(range, len) {
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        Err(()) => {
            let mut r = Refusal(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!(
                    "range {:?} is outside the volume's {len} bytes",
                    range.unwrap_or("")
                ),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    f.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| Refusal::internal(format!("seeking in the volume: {e}")))?;
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            f.take(count),
            CHUNK,
        ))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(r)
}

/// Sends what the gzip encoder writes, in chunks, through a bounded channel: the memory of
/// a download is a few chunks, whatever the volume's size.
struct ChunkWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

async fn serve_gzip(path: PathBuf, head: bool) -> Result<Response, Refusal> {
    let file = std::fs::File::open(&path)
        .map_err(|e| Refusal::internal(format!("opening the volume: {e}")))?;
    Ok(gzip_response(head, path, move |enc| {
        use std::io::{Read, Write};
        let mut file = file;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            enc.write_all(&buf[..n])?;
        }
    }))
}

/// `disk.tar.gz`: the regular files and directories of a Filesystem volume as a gzipped tar
/// (KubeVirt's `ArchiveGz`), streamed like [`serve_gzip`]. Symlinks are stored as links,
/// never followed.
async fn serve_archive(dir: PathBuf, head: bool) -> Result<Response, Refusal> {
    if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return Err(Refusal::internal(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let root = dir.clone();
    Ok(gzip_response(head, dir, move |enc| {
        let mut tar = tar::Builder::new(enc);
        tar.follow_symlinks(false);
        let mut entries: Vec<_> = std::fs::read_dir(&root)?.collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let t = e.file_type()?;
            if t.is_dir() {
                tar.append_dir_all(e.file_name(), e.path())?;
            } else if t.is_file() || t.is_symlink() {
                tar.append_path_with_name(e.path(), e.file_name())?;
            }
        }
        tar.finish()
    }))
}

/// A `application/gzip` answer whose body `produce` writes (on a blocking thread, through a
/// fast gzip encoder, sent in [`CHUNK`]s as it goes); empty for HEAD. A failure mid-way ends
/// the stream with an error, so the client sees a truncated gzip stream, which it can tell
/// from a whole one.
fn gzip_response(
    head: bool,
    what: PathBuf,
    produce: impl FnOnce(&mut flate2::write::GzEncoder<ChunkWriter>) -> std::io::Result<()>
        + Send
        + 'static,
) -> Response {
    let mut r = if head {
        Response::new(Body::empty())
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(
                ChunkWriter {
                    buf: Vec::with_capacity(CHUNK),
                    tx: tx.clone(),
                },
                flate2::Compression::fast(),
            );
            let res = produce(&mut enc).and_then(|()| enc.finish()?.flush());
            if let Err(e) = res {
                tracing::warn!(path = %what.display(), error = %e, "gzip export stream ended early");
                let _ = tx.blocking_send(Err(e));
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Response::new(Body::from_stream(stream))
    };
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    r
}

#[async_trait::async_trait]
impl SubresourceHandler for ExportServer {
    async fn handle(
        &self,
        method: Method,
        path: Vec<String>,
        query: Query,
        headers: HeaderMap,
        _body: Body,
    ) -> Response {
        match self.serve(&method, &path, &query, &headers).await {
            Ok(r) => r,
            Err(refusal) => {
                tracing::info!(path = %path.join("/"), code = %refusal.0, message = %refusal.1, "export request refused");
                refusal.into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubevirt() {
        assert_eq!(default_token_secret_name("e"), "export-token-e");
        let long = "a".repeat(60);
        let n = default_token_secret_name(&long);
        assert!(n.len() <= 63, "{n}");
        assert!(n.starts_with("export-"), "{n}");
        // Deterministic, and different names stay different.
        assert_eq!(n, default_token_secret_name(&long));
        assert_ne!(n, default_token_secret_name(&"b".repeat(60)));
        assert_eq!(header_secret_name("e"), "header-secret-e");
        assert_eq!(ca_config_map_name("e"), "export-ca-cm-e");
        // openshift naming.GetName with a short suffix: base cut, hash of base, suffix kept.
        let g = get_name(&"x".repeat(70), "sfx", 30);
        assert_eq!(g.len(), 30, "{g}");
        assert!(g.ends_with("-sfx"), "{g}");
    }

    #[test]
    fn paths_parse_or_are_refused_with_a_reason() {
        let ok = |p: &str| {
            let v: Vec<&str> = p.split('/').collect();
            parse_path(&v).map(|t| format!("{}/{}/{:?}", t.namespace, t.name, t.route))
        };
        assert_eq!(
            ok("v1/namespaces/ns/virtualmachineexports/e/volumes/disk1/disk.img").ok(),
            Some("ns/e/Raw(\"disk1\")".into())
        );
        assert_eq!(
            ok("v1beta1/namespaces/ns/virtualmachineexports/e/volumes/d/disk.img.gz").ok(),
            Some("ns/e/Gzip(\"d\")".into())
        );
        assert_eq!(
            ok("v1/namespaces/ns/virtualmachineexports/e/volumes/dump/disk.tar.gz").ok(),
            Some("ns/e/Archive(\"dump\")".into())
        );
        assert_eq!(
            ok("v1/namespaces/ns/virtualmachineexports/e/external/manifests/all").ok(),
            Some("ns/e/Manifests".into())
        );
        for bad in [
            "v1/namespaces/ns/virtualmachineexports/e/volumes/../disk.img",
            "v1/namespaces/../virtualmachineexports/e/volumes/d/disk.img",
            "v1/namespaces/ns/virtualmachineexports/e/volumes/./d/disk.img",
            "v2/namespaces/ns/virtualmachineexports/e/volumes/d/disk.img",
            "v1/namespaces/NS/virtualmachineexports/e/volumes/d/disk.img",
            "v1/namespaces/ns/virtualmachineexports/e%2Fx/volumes/d/disk.img",
            "v1/namespaces/ns/virtualmachineexports/e/volumes/d/etc/passwd",
            "v1/namespaces/ns/virtualmachineexports/e/volumes/d",
            "v1/namespaces/ns/pods/e/volumes/d/disk.img",
        ] {
            let r = ok(bad);
            assert!(
                matches!(&r, Err(Refusal(c, m)) if *c == StatusCode::NOT_FOUND && !m.is_empty()),
                "{bad}: {r:?}"
            );
        }
        let dots = ok("v1/namespaces/ns/virtualmachineexports/e/volumes/../disk.img");
        assert!(
            matches!(&dots, Err(Refusal(_, m)) if m.ends_with("no \".\" or \"..\" segments")),
            "{dots:?}"
        );
    }

    /// A memory dump claim is exported as KubeVirt exports it: a gzipped tar of its files,
    /// symlinks stored as links (their targets never read).
    #[tokio::test]
    async fn archive_volumes_stream_as_a_gzipped_tar_without_following_links() {
        use futures::StreamExt;
        let t = tempfile::tempdir().unwrap();
        let vol = t.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(
            vol.join("vm-c-20261130-230509.memory.dump"),
            b"\x7fELF core",
        )
        .unwrap();
        std::fs::write(t.path().join("secret"), b"not exported").unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), vol.join("link")).unwrap();
        let r = serve_archive(vol, false).await.unwrap();
        let mut body = r.into_body().into_data_stream();
        let mut gz = Vec::new();
        while let Some(c) = body.next().await {
            gz.extend_from_slice(&c.unwrap());
        }
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let mut seen = Vec::new();
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            seen.push((name, e.header().entry_type().is_symlink(), data));
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].0, "link");
        assert!(seen[0].1 && seen[0].2.is_empty());
        assert_eq!(seen[1].0, "vm-c-20261130-230509.memory.dump");
        assert_eq!(seen[1].2, b"\x7fELF core");
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({"metadata": {
            "name": "dump", "annotations": {kubevirt_api::memdump::ANNOTATION: "f"}}}))
        .unwrap();
        assert!(is_archive(&claim));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("abcd", "abc"));
        assert!(!token_matches("", ""), "an empty token never matches");
        let t = generate_token();
        assert_eq!(t.len(), 20);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric()), "{t}");
        assert_ne!(t, generate_token());
    }

    #[test]
    fn ranges_as_http_says() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=50-1000"), 100), Ok(Some((50, 99))));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=9-3"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=x-3"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=-0"), 100), Err(()));
    }

    #[test]
    fn expiry_is_creation_plus_ttl_default_two_hours() {
        let mk = |ttl: Option<&str>| {
            let mut v: VirtualMachineExport = serde_json::from_value(json!({
                "apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport",
                "metadata": {"name": "e", "namespace": "ns",
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"source": {"kind": "PersistentVolumeClaim", "name": "p"}}}))
            .expect("export");
            v.spec.ttl_duration = ttl.map(str::to_string);
            expiration(&v).map(|t| t.to_string())
        };
        assert_eq!(mk(None).as_deref(), Some("2026-01-01T02:00:00Z"));
        assert_eq!(mk(Some("90s")).as_deref(), Some("2026-01-01T00:01:30Z"));
        assert_eq!(mk(Some("nonsense")), None);
    }

    #[test]
    fn conditions_keep_their_transition_time() {
        let c = Cond::ready("False", reason::IN_USE, "busy");
        let first = conditions(&Value::Null, std::slice::from_ref(&c));
        let mut aged = first.clone();
        aged[0]["lastTransitionTime"] = json!("2000-01-01T00:00:00Z");
        let again = conditions(&aged, std::slice::from_ref(&c));
        assert_eq!(again[0]["lastTransitionTime"], "2000-01-01T00:00:00Z");
        let changed = conditions(&aged, &[Cond::ready("True", reason::POD_READY, "")]);
        assert_ne!(changed[0]["lastTransitionTime"], "2000-01-01T00:00:00Z");
        assert_eq!(changed[0]["reason"], "PodReady");
    }
}

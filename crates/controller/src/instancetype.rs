//! Instancetype and preference revisions and lookups for the VM controller: what KubeVirt's
//! `pkg/instancetype/revision` and `find` do with a live API server. Applying them to a VMI
//! spec is `kubevirt_api::instancetype::apply`, the same code admission validates a VM's
//! template with, so what was admitted is what the VMI gets.
//!
//! Revisions, as KubeVirt's `pkg/instancetype/revision`: the first time the VM controller sees
//! a VM's instancetype (preference), it stores a copy in an `apps/v1` ControllerRevision owned
//! by the VM and records it in `status.instancetypeRef.controllerRevisionRef`
//! (`status.preferenceRef`). From then on the VM is sized from that copy, so editing or
//! deleting the instancetype does not change the VM; pointing `spec.instancetype` at another
//! name or kind takes a new copy, and `spec.instancetype.revisionName` picks a stored one.

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, PostParams};
use kube::{Client, Resource};
use kubevirt_api::instancetype::{Matcher, Which};
pub use kubevirt_api::instancetype::{
    REVISION_GENERATION_LABEL, REVISION_KIND_LABEL, REVISION_NAME_LABEL, REVISION_UID_LABEL,
    REVISION_VERSION_LABEL,
};
use kubevirt_api::{
    ControllerRevisionRef, InstancetypeStatusRef, VirtualMachine,
    VirtualMachineClusterInstancetype, VirtualMachineClusterPreference, VirtualMachineInstancetype,
    VirtualMachineInstancetypeSpec, VirtualMachinePreference, VirtualMachinePreferenceSpec,
    VirtualMachineStatus,
};
use serde_json::Value;

use crate::Error;

fn read_error(m: &Matcher, source: kube::Error) -> Error {
    Error::Instancetype {
        kind: m.kind_name().to_ascii_lowercase(),
        name: m.name.clone(),
        source,
    }
}

/// The object itself, as stored (apiVersion and kind set).
async fn read(m: &Matcher, client: &Client, namespace: &str) -> Result<Value, Error> {
    if let Some(kind) = &m.unknown_kind {
        let which = match m.which {
            Which::Instancetype => "InstancetypeMatcher",
            Which::Preference => "PreferenceMatcher",
        };
        return Err(Error::Revision(format!(
            "got unexpected kind in {which}: {kind}"
        )));
    }
    let e = |source| read_error(m, source);
    let value = match (m.which, m.namespaced) {
        (Which::Instancetype, true) => {
            let api: Api<VirtualMachineInstancetype> = Api::namespaced(client.clone(), namespace);
            with_type(api.get(&m.name).await.map_err(e)?)?
        }
        (Which::Instancetype, false) => {
            let api: Api<VirtualMachineClusterInstancetype> = Api::all(client.clone());
            with_type(api.get(&m.name).await.map_err(e)?)?
        }
        (Which::Preference, true) => {
            let api: Api<VirtualMachinePreference> = Api::namespaced(client.clone(), namespace);
            with_type(api.get(&m.name).await.map_err(e)?)?
        }
        (Which::Preference, false) => {
            let api: Api<VirtualMachineClusterPreference> = Api::all(client.clone());
            with_type(api.get(&m.name).await.map_err(e)?)?
        }
    };
    Ok(value)
}

/// Where the status records the copy of an instancetype or a preference.
fn slot(status: &mut VirtualMachineStatus, which: Which) -> &mut Option<InstancetypeStatusRef> {
    match which {
        Which::Instancetype => &mut status.instancetype_ref,
        Which::Preference => &mut status.preference_ref,
    }
}

fn with_type<K: Resource<DynamicType = ()> + serde::Serialize>(obj: K) -> Result<Value, Error> {
    let mut v = serde_json::to_value(&obj)?;
    v["apiVersion"] = Value::String(K::api_version(&()).into_owned());
    v["kind"] = Value::String(K::kind(&()).into_owned());
    Ok(v)
}

/// The ControllerRevision KubeVirt stores for `object` (an instancetype or preference as
/// stored, apiVersion and kind set), owned by `vm`: name
/// `<vm>-<object>-<version>-<object uid>-<object generation>`, KubeVirt's labels, and the
/// object without labels, annotations, finalizers, owners and managedFields as data.
pub fn revision_for(vm: &VirtualMachine, mut object: Value) -> Result<ControllerRevision, Error> {
    let vm_name = crate::name_of(&vm.metadata)?;
    let owner = vm
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let meta = &object["metadata"];
    let name = text(&meta["name"]);
    let uid = text(&meta["uid"]);
    let generation = meta["generation"].as_i64().unwrap_or(0);
    let api_version = text(&object["apiVersion"]);
    let version = api_version
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let kind = text(&object["kind"]);
    if let Some(m) = object["metadata"].as_object_mut() {
        for k in [
            "labels",
            "annotations",
            "finalizers",
            "ownerReferences",
            "managedFields",
        ] {
            m.remove(k);
        }
    }
    let labels = [
        (REVISION_GENERATION_LABEL, generation.to_string()),
        (REVISION_KIND_LABEL, kind),
        (REVISION_NAME_LABEL, name.clone()),
        (REVISION_UID_LABEL, uid.clone()),
        (REVISION_VERSION_LABEL, version.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Ok(ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{vm_name}-{name}-{version}-{uid}-{generation}")),
            namespace: vm.metadata.namespace.clone(),
            owner_references: Some(vec![owner]),
            labels: Some(labels),
            ..Default::default()
        },
        data: Some(RawExtension(object)),
        revision: 0,
    })
}

/// Stores the revisions of the VM's instancetype and preference that it does not have yet and
/// records them in `status` (which the caller writes), as KubeVirt's revision handler does.
/// A changed name or kind drops the old reference; `revisionName` in the matcher wins.
pub async fn sync_revisions(
    client: &Client,
    vm: &VirtualMachine,
    namespace: &str,
    status: &mut VirtualMachineStatus,
) -> Result<(), Error> {
    for which in [Which::Instancetype, Which::Preference] {
        let Some(m) = Matcher::of(vm, which) else {
            *slot(status, which) = None;
            continue;
        };
        let mut r = slot(status, which).clone().unwrap_or_default();
        if r.name.as_deref() != Some(m.name.as_str()) || r.kind.as_deref() != Some(m.kind_name()) {
            r.name = Some(m.name.clone());
            r.kind = Some(m.kind_name().to_string());
            r.controller_revision_ref = None;
        }
        if let Some(rev) = &m.revision {
            r.controller_revision_ref = Some(ControllerRevisionRef {
                name: Some(rev.clone()),
            });
        }
        if r.controller_revision_ref
            .as_ref()
            .and_then(|c| c.name.as_deref())
            .unwrap_or_default()
            .is_empty()
        {
            let object = read(&m, client, namespace).await?;
            let stored = store_revision(client, namespace, revision_for(vm, object)?).await?;
            tracing::info!(
                namespace,
                vm = vm.metadata.name.as_deref().unwrap_or_default(),
                revision = stored.as_str(),
                "stored the {} of the VM",
                m.kind_name()
            );
            r.controller_revision_ref = Some(ControllerRevisionRef { name: Some(stored) });
        }
        *slot(status, which) = Some(r);
    }
    Ok(())
}

/// Creates the revision; one that exists already must hold the same data (KubeVirt's check).
async fn store_revision(
    client: &Client,
    namespace: &str,
    rev: ControllerRevision,
) -> Result<String, Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    let name = rev.metadata.name.clone().unwrap_or_default();
    match api.create(&PostParams::default(), &rev).await {
        Ok(_) => Ok(name),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = api.get(&name).await?;
            let spec = |r: &ControllerRevision| r.data.as_ref().map(|d| d.0["spec"].clone());
            if spec(&existing) == spec(&rev) {
                Ok(name)
            } else {
                Err(Error::Revision(format!(
                    "found existing ControllerRevision with unexpected data: {name}"
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The instancetype and preference a VM is sized from: the copies its status refers to
/// (see [`sync_revisions`]), or the objects themselves when no copy is recorded.
pub async fn fetch(
    client: &Client,
    vm: &VirtualMachine,
    status: &VirtualMachineStatus,
    namespace: &str,
) -> Result<
    (
        Option<VirtualMachineInstancetypeSpec>,
        Option<VirtualMachinePreferenceSpec>,
    ),
    Error,
> {
    let mut it = None;
    let mut pref = None;
    for which in [Which::Instancetype, Which::Preference] {
        let Some(m) = Matcher::of(vm, which) else {
            continue;
        };
        let recorded = match which {
            Which::Instancetype => &status.instancetype_ref,
            Which::Preference => &status.preference_ref,
        }
        .as_ref()
        .and_then(|r| r.controller_revision_ref.as_ref())
        .and_then(|c| c.name.clone())
        .filter(|n| !n.is_empty());
        let object = match recorded {
            Some(rev) => {
                let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
                let stored = api.get(&rev).await.map_err(|e| read_error(&m, e))?;
                stored.data.map(|d| d.0).ok_or_else(|| {
                    Error::Revision(format!("ControllerRevision {rev} has no data"))
                })?
            }
            None => read(&m, client, namespace).await?,
        };
        let spec = object.get("spec").cloned().unwrap_or(Value::Null);
        match which {
            Which::Instancetype => it = Some(serde_json::from_value(spec)?),
            Which::Preference => pref = Some(serde_json::from_value(spec)?),
        }
    }
    Ok((it, pref))
}

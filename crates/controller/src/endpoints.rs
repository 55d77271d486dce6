//! kube-controller-manager's endpoints and endpointslice controllers, for the Pods this
//! project has: a Service with a `selector` gets an Endpoints object of its name and
//! EndpointSlices (`discovery.k8s.io/v1`) listing the Pods it selects. The Pods are the VMIs'
//! launcher Pod records ([`crate::launcher_pod`]), which carry the VMI's labels, its
//! pod-network address (`status.podIP`) and Ready, so `virtctl expose vmi` (or any Service
//! selecting `kubevirt.io/domain: X`) finds the VMI's address.
//!
//! As kube's controllers do ([`plan_endpoints`], [`plan_slices`]):
//! - a Service without a selector (or of type ExternalName) is left alone: its Endpoints are
//!   the user's;
//! - a Pod is listed when it has an address, is not being deleted and is not finished; it is
//!   under `addresses` when Ready (or when the Service says `publishNotReadyAddresses`), else
//!   under `notReadyAddresses` (slices: `conditions.ready`);
//! - each Service port becomes an endpoint port named as the Service port, its number the
//!   `targetPort` (a number, or a name looked up in the Pod's container ports; a Pod where the
//!   name is not found does not serve that port); Pods with the same ports share a subset;
//! - EndpointSlices are labelled `kubernetes.io/service-name` and
//!   `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`, are controlled
//!   by the Service (so they go with it), and hold at most 100 endpoints each; a Service that
//!   selects nothing has one empty slice;
//! - when the Service goes, its Endpoints are deleted (and its slices, besides the garbage
//!   collector's own deletion).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};

use crate::{Context, Error};

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// kube's endpointslice controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// The label kube puts on the Endpoints and slices of a headless Service.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The label kube's endpoints controller puts on the Endpoints it manages (so the
/// endpointslice mirroring controller leaves them alone); here also how a leftover of ours is
/// told from Endpoints a user wrote.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// kube's `maxEndpointsPerSlice` default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// Whether `labels` has every key/value of `selector` (a Service's selector is a map).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The Service's selector, when this controller manages its endpoints.
fn managed_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

fn headless(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip == "None")
}

/// kube's `ShouldPodBeInEndpoints` (terminating Pods excluded): an address, not being deleted,
/// not finished.
fn serves(pod: &Pod) -> bool {
    let st = pod.status.as_ref();
    let has_ip = st
        .and_then(|s| s.pod_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty());
    let finished = matches!(
        st.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    has_ip && !finished && pod.metadata.deletion_timestamp.is_none()
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The Pod's addresses (`podIPs`, else `podIP`), valid ones only.
fn pod_ips(pod: &Pod) -> Vec<std::net::IpAddr> {
    let st = pod.status.as_ref();
    let mut ips: Vec<&str> = st
        .and_then(|s| s.pod_ips.as_ref())
        .map(|v| v.iter().map(|i| i.ip.as_str()).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        ips.extend(st.and_then(|s| s.pod_ip.as_deref()));
    }
    ips.iter().filter_map(|i| i.parse().ok()).collect()
}

/// kube's `podutil.FindPort`: a numeric `targetPort` as is (unset: the Service port), a named
/// one from the Pod's container ports of the same protocol.
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(0)) => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let proto = port.protocol.as_deref().unwrap_or("TCP");
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.iter().flatten().find_map(|p| {
                    (p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == proto)
                        .then_some(p.container_port)
                })
            })
        }
    }
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The Pod's DNS hostname within the Service: `spec.hostname` when `spec.subdomain` names it.
fn hostname(pod: &Pod, svc: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let sub = spec.subdomain.as_deref()?;
    (Some(sub) == svc.metadata.name.as_deref())
        .then(|| spec.hostname.clone())
        .flatten()
        .filter(|h| !h.is_empty())
}

/// A selected Pod's ports for the Service: the Service's ports resolved on the Pod.
fn endpoint_ports(pod: &Pod, svc: &Service) -> Vec<EndpointPort> {
    let mut out: Vec<EndpointPort> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let port = find_port(pod, p)?;
            (1..=65535).contains(&port).then(|| EndpointPort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port,
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.name, a.port, &a.protocol).cmp(&(&b.name, b.port, &b.protocol)));
    out
}

fn has_ports(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|p| !p.is_empty())
}

/// The Pods `svc` selects, in a stable order (by name).
pub fn selected<'a>(svc: &Service, pods: &'a [Pod]) -> Vec<&'a Pod> {
    let Some(selector) = managed_selector(svc) else {
        return Vec::new();
    };
    let ns = svc.metadata.namespace.as_deref();
    let mut out: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == ns)
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| selects(selector, l))
        })
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

fn labels_for(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    if headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

/// The Endpoints object `svc` should have, given the Pods of its namespace; `None` when the
/// controller does not manage them (no selector, ExternalName).
pub fn plan_endpoints(svc: &Service, pods: &[Pod]) -> Option<Endpoints> {
    managed_selector(svc)?;
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    // Subsets keyed by their port set (kube's RepackSubsets).
    type Addrs = (Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut subsets: BTreeMap<String, (Vec<EndpointPort>, Addrs)> = BTreeMap::new();
    for pod in selected(svc, pods).into_iter().filter(|p| serves(p)) {
        let Some(ip) = pod_ips(pod).into_iter().next() else {
            continue;
        };
        let ports = endpoint_ports(pod, svc);
        // A Service with ports of which none resolves on this Pod: the Pod serves none of
        // them. A headless Service without ports lists the address alone.
        if ports.is_empty() && (has_ports(svc) || !headless(svc)) {
            continue;
        }
        let addr = EndpointAddress {
            ip: ip.to_string(),
            hostname: hostname(pod, svc),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(pod)),
        };
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let entry = subsets
            .entry(key)
            .or_insert_with(|| (ports, Default::default()));
        if publish_not_ready || pod_ready(pod) {
            entry.1 .0.push(addr);
        } else {
            entry.1 .1.push(addr);
        }
    }
    let subsets: Vec<EndpointSubset> = subsets
        .into_values()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect();
    let mut labels = labels_for(svc);
    labels.insert(SKIP_MIRROR_LABEL.into(), "true".into());
    Some(Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    })
}

/// The slices' address family: the Service's first IP family (admission defaults IPv4).
fn address_type(svc: &Service) -> &'static str {
    let fam = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.as_ref())
        .and_then(|f| f.first().cloned());
    if fam.as_deref() == Some("IPv6") {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// The EndpointSlices `svc` should have (names left to `generateName`); `None` when the
/// controller does not manage them.
pub fn plan_slices(svc: &Service, pods: &[Pod]) -> Option<Vec<EndpointSlice>> {
    managed_selector(svc)?;
    let ty = address_type(svc);
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let mut groups: BTreeMap<String, (Vec<SlicePort>, Vec<Endpoint>)> = BTreeMap::new();
    for pod in selected(svc, pods).into_iter().filter(|p| serves(p)) {
        let Some(ip) = pod_ips(pod)
            .into_iter()
            .find(|ip| ip.is_ipv6() == (ty == "IPv6"))
        else {
            continue;
        };
        let ports: Vec<SlicePort> = endpoint_ports(pod, svc)
            .into_iter()
            .map(|p| SlicePort {
                name: Some(p.name.unwrap_or_default()),
                port: Some(p.port),
                protocol: p.protocol,
                app_protocol: p.app_protocol,
            })
            .collect();
        if ports.is_empty() && has_ports(svc) {
            continue;
        }
        let ready = pod_ready(pod);
        let ep = Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(ready || publish_not_ready),
                serving: Some(ready),
                terminating: Some(false),
            }),
            hostname: hostname(pod, svc),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(pod)),
            ..Default::default()
        };
        let key = serde_json::to_string(&ports).unwrap_or_default();
        groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(ep);
    }
    let mut labels = labels_for(svc);
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let owner = svc.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = Some(true);
        o
    });
    let slice = |ports: Vec<SlicePort>, endpoints: Vec<Endpoint>| EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", svc.name_any())),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels.clone()),
            owner_references: owner.clone().map(|o: OwnerReference| vec![o]),
            ..Default::default()
        },
        address_type: ty.into(),
        endpoints,
        ports: Some(ports),
    };
    let mut out = Vec::new();
    for (ports, eps) in groups.into_values() {
        for chunk in eps.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push(slice(ports.clone(), chunk.to_vec()));
        }
    }
    if out.is_empty() {
        // kube's placeholder: one empty slice.
        out.push(slice(Vec::new(), Vec::new()));
    }
    Some(out)
}

/// Whether the slice `have` already shows `want` (labels, ports, endpoints, owner).
fn slice_matches(have: &EndpointSlice, want: &EndpointSlice) -> bool {
    have.address_type == want.address_type
        && have.endpoints == want.endpoints
        && have.ports.clone().unwrap_or_default() == want.ports.clone().unwrap_or_default()
        && have.metadata.labels == want.metadata.labels
        && have.metadata.owner_references == want.metadata.owner_references
}

/// Whether a slice is this controller's for `svc`.
fn ours(slice: &EndpointSlice, svc: &Service) -> bool {
    let labels = slice.labels();
    labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        && labels.get(SERVICE_NAME_LABEL) == svc.metadata.name.as_ref()
}

/// The label selector of a Service's slices. Service names are DNS labels (admission), so
/// the name needs no quoting; one that is not is refused rather than pasted in.
fn slice_selector(svc_name: &str) -> Option<String> {
    kubevirt_api::names::dns1123_label(svc_name)
        .is_none()
        .then(|| format!("{SERVICE_NAME_LABEL}={svc_name},{MANAGED_BY_LABEL}={MANAGED_BY}"))
}

/// Keeps one Service's Endpoints and EndpointSlices.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = crate::namespace_of(&svc.metadata)?;
    let name = svc.name_any();
    if managed_selector(&svc).is_none() {
        return Ok(Action::await_change());
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    // All of the namespace's Pods, matched here: the selector is never pasted into a query.
    let pods = pods.list(&ListParams::default()).await?.items;

    let eps: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(want) = plan_endpoints(&svc, &pods) {
        match eps.get_opt(&name).await? {
            None => {
                eps.create(&PostParams::default(), &want).await?;
                tracing::info!(%ns, service = %name, "created endpoints");
            }
            Some(have) => {
                let same = have.subsets.clone().unwrap_or_default()
                    == want.subsets.clone().unwrap_or_default()
                    && have.metadata.labels.clone().unwrap_or_default()
                        == want.metadata.labels.clone().unwrap_or_default();
                if !same {
                    let mut next = want;
                    next.metadata.resource_version = have.metadata.resource_version.clone();
                    next.metadata.annotations = have.metadata.annotations.clone();
                    eps.replace(&name, &PostParams::default(), &next).await?;
                    tracing::debug!(%ns, service = %name, "updated endpoints");
                }
            }
        }
    }

    let slices_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    if let (Some(want), Some(sel)) = (plan_slices(&svc, &pods), slice_selector(&name)) {
        let have: Vec<EndpointSlice> = slices_api
            .list(&ListParams::default().labels(&sel))
            .await?
            .items
            .into_iter()
            .filter(|s| ours(s, &svc))
            .collect();
        let mut have = have.into_iter();
        for w in want {
            match have.next() {
                Some(h) if slice_matches(&h, &w) => {}
                Some(h) => {
                    let mut next = w;
                    next.metadata.generate_name = None;
                    next.metadata.name = h.metadata.name.clone();
                    next.metadata.resource_version = h.metadata.resource_version.clone();
                    slices_api
                        .replace(&h.name_any(), &PostParams::default(), &next)
                        .await?;
                }
                None => {
                    slices_api.create(&PostParams::default(), &w).await?;
                }
            }
        }
        for extra in have {
            match slices_api
                .delete(&extra.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Action::await_change())
}

pub fn error_policy(svc: Arc<Service>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::debug!(service = %svc.name_any(), error = %err, "endpoints reconcile failed");
    Action::requeue(err.retry_after())
}

/// Deletes a Service's Endpoints and slices once it is gone (kube's controllers do so when a
/// Service they sync no longer exists).
async fn delete_for(client: &Client, ns: &str, name: &str) {
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    match eps.delete(name, &DeleteParams::default()).await {
        Ok(_) => tracing::info!(%ns, service = %name, "deleted endpoints"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tracing::warn!(%ns, service = %name, error = %e, "deleting endpoints"),
    }
    if let Some(sel) = slice_selector(name) {
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
        if let Err(e) = slices
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&sel),
            )
            .await
        {
            tracing::warn!(%ns, service = %name, error = %e, "deleting endpoint slices");
        }
    }
}

/// Removes the Endpoints (and slices) this controller made for Services that no longer exist:
/// a Service deleted while the controller was down leaves them behind, as kube's endpoints
/// controller's `checkLeftoverEndpoints` finds at its start. Endpoints a user wrote (without
/// [`SKIP_MIRROR_LABEL`]) are never touched. Returns how many were removed.
pub async fn sweep_leftovers(client: &Client) -> Result<usize, kube::Error> {
    // The Endpoints first: one whose Service is missing from the later list was left behind
    // (a Service created after that list gets its Endpoints made again by the controller).
    let ours = Api::<Endpoints>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{SKIP_MIRROR_LABEL}=true")))
        .await?
        .items;
    let services: std::collections::BTreeSet<(String, String)> =
        Api::<Service>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|s| Some((s.metadata.namespace?, s.metadata.name?)))
            .collect();
    let mut removed = 0;
    for ep in ours {
        let (Some(ns), Some(name)) = (ep.metadata.namespace, ep.metadata.name) else {
            continue;
        };
        if !services.contains(&(ns.clone(), name.clone())) {
            delete_for(client, &ns, &name).await;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Runs the controller: Services, the Pods they select, their Endpoints and slices.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    match sweep_leftovers(&client).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed the endpoints of deleted services"),
        Err(e) => tracing::warn!(error = %e, "looking for the endpoints of deleted services"),
    }
    let ctl = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = ctl.store();
    let ctl = ctl
        // A Pod that comes, goes, or changes its labels, address or readiness: every Service
        // of its namespace that has a selector looks again (one that selected it before may
        // not now).
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            move |pod| {
                let ns = pod.metadata.namespace.clone();
                services
                    .state()
                    .into_iter()
                    .filter(|s| s.metadata.namespace == ns && managed_selector(s).is_some())
                    .map(|s| ObjectRef::from_obj(s.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        // Endpoints someone else changed or deleted are put back.
        .watches(
            Api::<Endpoints>::all(client.clone()),
            watcher::Config::default(),
            |ep| {
                let name = ep.metadata.name.clone()?;
                let ns = ep.metadata.namespace.clone()?;
                Some(ObjectRef::<Service>::new(&name).within(&ns))
            },
        )
        .owns(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    // Deleted Services: their Endpoints go (those of a Service deleted while the controller
    // was down went in `sweep_leftovers` above).
    let gone = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .for_each(|ev| {
        let client = client.clone();
        async move {
            if let Ok(watcher::Event::Delete(svc)) = ev {
                if let (Some(ns), Some(name)) = (
                    svc.metadata.namespace.as_deref(),
                    svc.metadata.name.as_deref(),
                ) {
                    if managed_selector(&svc).is_some() {
                        delete_for(&client, ns, name).await;
                    }
                }
            }
        }
    });
    futures::join!(ctl, gone);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "s1", "labels": {"app": "web"}},
            "spec": spec,
        }))
        .expect("service")
    }

    fn pod(name: &str, ip: Option<&str>, ready: bool, labels: serde_json::Value) -> Pod {
        let mut status = json!({"phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]});
        if let Some(ip) = ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("u-{name}"), "labels": labels},
            "spec": {"nodeName": "node01", "containers": [{"name": "compute",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": status,
        }))
        .expect("pod")
    }

    #[test]
    fn selected_pods_become_ready_and_not_ready_addresses_with_resolved_ports() {
        let s = svc(json!({"selector": {"kubevirt.io/domain": "vm1"}, "ports": [
            {"name": "ssh", "port": 22, "targetPort": 22, "protocol": "TCP"},
            {"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}]}));
        let pods = vec![
            pod(
                "a",
                Some("10.244.0.7"),
                true,
                json!({"kubevirt.io/domain": "vm1"}),
            ),
            pod(
                "b",
                Some("10.244.0.8"),
                false,
                json!({"kubevirt.io/domain": "vm1"}),
            ),
            // Not selected, no address, another namespace.
            pod(
                "c",
                Some("10.244.0.9"),
                true,
                json!({"kubevirt.io/domain": "vm2"}),
            ),
            pod("d", None, true, json!({"kubevirt.io/domain": "vm1"})),
        ];
        let ep = plan_endpoints(&s, &pods).expect("managed");
        let v = serde_json::to_value(&ep).expect("json");
        assert_eq!(
            v["subsets"],
            json!([{
                "addresses": [{"ip": "10.244.0.7", "nodeName": "node01",
                    "targetRef": {"kind": "Pod", "namespace": "ns", "name": "a", "uid": "u-a"}}],
                "notReadyAddresses": [{"ip": "10.244.0.8", "nodeName": "node01",
                    "targetRef": {"kind": "Pod", "namespace": "ns", "name": "b", "uid": "u-b"}}],
                "ports": [{"name": "ssh", "port": 22, "protocol": "TCP"},
                          {"name": "web", "port": 8080, "protocol": "TCP"}]
            }])
        );
        assert_eq!(
            v["metadata"]["labels"],
            json!({"app": "web", SKIP_MIRROR_LABEL: "true"})
        );
        let slices = plan_slices(&s, &pods).expect("managed");
        assert_eq!(slices.len(), 1);
        let sl = serde_json::to_value(&slices[0]).expect("json");
        assert_eq!(sl["addressType"], "IPv4");
        assert_eq!(sl["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
        assert_eq!(sl["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(sl["metadata"]["ownerReferences"][0]["uid"], "s1");
        assert_eq!(sl["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(sl["endpoints"][0]["addresses"], json!(["10.244.0.7"]));
        assert_eq!(sl["endpoints"][0]["conditions"]["ready"], true);
        assert_eq!(sl["endpoints"][1]["conditions"]["ready"], false);
        assert_eq!(
            sl["ports"][1],
            json!({"name": "web", "port": 8080, "protocol": "TCP"})
        );
    }

    #[test]
    fn unresolvable_named_ports_finished_pods_and_unmanaged_services() {
        // The named port is not on the Pod: the Pod serves none of the Service's ports.
        let s = svc(json!({"selector": {"app": "x"}, "ports": [
            {"name": "web", "port": 80, "targetPort": "nope", "protocol": "TCP"}]}));
        let pods = vec![pod("a", Some("10.244.0.7"), true, json!({"app": "x"}))];
        assert_eq!(plan_endpoints(&s, &pods).expect("managed").subsets, None);
        // A finished Pod is not listed.
        let s = svc(json!({"selector": {"app": "x"}, "ports": [{"port": 80, "targetPort": 80}]}));
        let mut done = pod("a", Some("10.244.0.7"), true, json!({"app": "x"}));
        if let Some(st) = done.status.as_mut() {
            st.phase = Some("Succeeded".into());
        }
        assert_eq!(plan_endpoints(&s, &[done]).expect("managed").subsets, None);
        let empty = plan_slices(&s, &[]).expect("managed");
        assert_eq!(empty.len(), 1);
        assert!(empty[0].endpoints.is_empty());
        // No selector, an empty one, ExternalName: the user's to manage.
        assert!(plan_endpoints(&svc(json!({"ports": [{"port": 80}]})), &pods).is_none());
        assert!(plan_endpoints(
            &svc(json!({"selector": {}, "ports": [{"port": 80}]})),
            &pods
        )
        .is_none());
        assert!(plan_slices(
            &svc(json!({"type": "ExternalName", "externalName": "a.b", "selector": {"app": "x"}})),
            &pods
        )
        .is_none());
        // A selector with more keys than the Pod has selects nothing.
        let s = svc(json!({"selector": {"app": "x", "tier": "db"}, "ports": [{"port": 80}]}));
        assert!(selected(&s, &pods).is_empty());
    }

    #[test]
    fn more_than_a_hundred_endpoints_are_split_across_slices() {
        let s = svc(json!({"selector": {"app": "x"}, "ports": [{"port": 80, "targetPort": 80}]}));
        let pods: Vec<Pod> = (0..150)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    Some(&format!("10.244.{}.{}", i / 200, i % 200 + 1)),
                    true,
                    json!({"app": "x"}),
                )
            })
            .collect();
        let slices = plan_slices(&s, &pods).expect("managed");
        assert_eq!(
            slices.iter().map(|s| s.endpoints.len()).collect::<Vec<_>>(),
            vec![100, 50]
        );
        assert_eq!(slice_selector("web\",x"), None);
    }
}

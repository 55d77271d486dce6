//! virt-controller: KubeVirt's cluster-wide control loops, written as `kube::runtime`
//! reconcilers.
//!
//! - [`vm`][]: VirtualMachine → VirtualMachineInstance, following `runStrategy`,
//!   `status.stateChangeRequests` and the crash-loop backoff; writes the VM's status.
//! - [`vmi`][]: VMI placement (onto the Node [`scheduler`] chooses) and the VMI finalizer;
//!   renders the cluster-mode launcher Pod.
//! - [`scheduler`][]: the pure placement decision (kube-scheduler's filters, fewest VMIs).
//! - [`migration`][]: VirtualMachineInstanceMigration: target node, hand-off to the node
//!   agents, phases, cancellation, limits.
//! - [`node`][]: KubeVirt's node controller: a Node whose virt-handler stopped heartbeating
//!   is marked `kubevirt.io/schedulable=false`.
//! - [`replicaset`][]: VirtualMachineInstanceReplicaSet.
//! - [`pool`][]: VirtualMachinePool (VMs named `<pool>-<index>`).
//! - [`instancetype`][]: instancetype/preference expansion (pure).
//! - [`launcher_pod`][]: the VMI's launcher Pod records (what `kubectl drain` evicts).
//! - [`evacuation`][]: a VirtualMachineInstanceMigration for each VMI an eviction marked.
//! - [`snapshot`][], [`restore`][]: VirtualMachineSnapshot (offline: content + one CSI
//!   VolumeSnapshot per claim) and VirtualMachineRestore (onto the stopped source VM, or to
//!   a new VM).
//! - [`clone`][]: VirtualMachineClone (a snapshot, then a restore to a new VM with the
//!   clone's changes as patches).
//! - [`memorydump`][]: KubeVirt's memory dump requests (`status.memoryDumpRequest`): the
//!   dump through virt-api and the VMI's node agent into the claim.
//! - [`endpoints`][]: kube's endpoints and endpointslice controllers, over the launcher
//!   Pods: Services that select VMIs' labels get their addresses.
//!
//! Every reconciler is level-based: it reads the whole object and what it owns, converges one
//! step, and relies on the watch (or `Action::requeue`) to take the next one.

pub mod clone;
pub mod endpoints;
pub mod evacuation;
pub mod instancetype;
pub mod launcher_pod;
pub mod memorydump;
pub mod migration;
pub mod migration_policy;
pub mod node;
pub mod pool;
pub mod replicaset;
pub mod restore;
pub mod scheduler;
pub mod snapshot;
pub mod vm;
pub mod vmi;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::{watcher, Controller};
use kube::{Client, Resource};
use kubevirt_api::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceReplicaSet};
use kubevirt_runtime::backoff::Backoff;
use kubevirt_runtime::events;
use kubevirt_runtime::workqueue;
use std::sync::Arc;
use std::time::Duration;

/// KubeVirt's `kubevirt.io/nodeName` label, set on a VMI when it is placed.
pub use kubevirt_api::status::label::NODE_NAME as NODE_NAME_LABEL;

/// What the controllers need to know about the installation.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster configuration, followed live: the defaults of VMIs the controller creates
    /// are those admission applies at that moment.
    pub cluster: kubevirt_runtime::cluster::ClusterConfigRx,
    /// The crash-loop backoff of VMs whose VMIs fail before reaching Running (KubeVirt:
    /// [`Backoff::kubevirt_crash_loop`]).
    pub crash_loop: Backoff,
    /// How often a VM with nothing pending is looked at again anyway.
    pub resync: Duration,
    /// A Node whose `kubevirt.io/heartbeat` is older than this is marked unschedulable
    /// (KubeVirt's node controller: 5 minutes).
    pub node_heartbeat_timeout: Duration,
}

impl Config {
    /// KubeVirt's numbers. VMIs go to whichever Node [`scheduler`] chooses; a single-node
    /// server's own Node is the only one.
    pub fn new() -> Self {
        Config {
            cluster: kubevirt_runtime::cluster::ClusterConfig::default().fixed(),
            crash_loop: Backoff::kubevirt_crash_loop(),
            resync: Duration::from_secs(300),
            node_heartbeat_timeout: node::HEARTBEAT_TIMEOUT,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

/// Shared by every reconcile call.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub config: Config,
}

impl Context {
    pub fn new(client: Client, config: Config) -> Self {
        let recorder = events::recorder(client.clone(), "virt-controller");
        Context {
            client,
            recorder,
            config,
        }
    }

    /// Publishes an event about `obj`; a failure to record is logged, never fatal.
    pub(crate) async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        events::publish_event(&self.recorder, &obj.object_ref(&()), type_, reason, note).await;
    }
}

/// Errors of one reconcile; the controller retries them (see each `error_policy`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed (conflicts included: the retry re-reads).
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// An object lacks a field every stored object has (namespace, uid...).
    #[error("the object has no {0}")]
    MissingField(&'static str),
    /// A status or patch could not be encoded.
    #[error("encoding a patch: {0}")]
    Encode(#[from] serde_json::Error),
    /// The VM names an instancetype or preference that could not be read.
    #[error("{kind} {name:?} could not be read: {source}")]
    Instancetype {
        kind: String,
        name: String,
        source: kube::Error,
    },
    /// A stored instancetype/preference revision cannot be used.
    #[error("{0}")]
    Revision(String),
    /// The VM's template sets what its instancetype provides (admission refuses such a VM; a
    /// changed revision can still bring it about).
    #[error(transparent)]
    Conflicts(#[from] kubevirt_api::instancetype::Conflicts),
}

/// The object's namespace: every namespaced object the API server stores has one.
pub(crate) fn namespace_of(meta: &ObjectMeta) -> Result<String, Error> {
    meta.namespace
        .clone()
        .ok_or(Error::MissingField("metadata.namespace"))
}

/// The object's name.
pub(crate) fn name_of(meta: &ObjectMeta) -> Result<String, Error> {
    meta.name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))
}

/// The object's uid: every stored object has one.
pub(crate) fn uid_of(meta: &ObjectMeta) -> Result<String, Error> {
    meta.uid.clone().ok_or(Error::MissingField("metadata.uid"))
}

impl Error {
    /// How soon a failed reconcile is retried: conflicts at once, the rest a little later.
    pub(crate) fn retry_after(&self) -> Duration {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => Duration::from_millis(200),
            _ => Duration::from_secs(2),
        }
    }
}

/// Runs every controller until the returned future is dropped (or a watch stream ends).
pub async fn run(client: Client, config: Config) -> anyhow::Result<()> {
    workqueue::register_families();
    let ctx = Arc::new(Context::new(client.clone(), config));
    let vms: Api<VirtualMachine> = Api::all(client.clone());
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let rss: Api<VirtualMachineInstanceReplicaSet> = Api::all(client.clone());

    let vm_ctl = Controller::new(vms, watcher::Config::default())
        .owns(vmis.clone(), watcher::Config::default())
        .run(
            workqueue::instrument("virt-controller-vm", vm::reconcile),
            vm::error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "vm controller");
            }
        });
    let memory_dump_ctl = Controller::new(
        Api::<VirtualMachine>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(vmis.clone(), watcher::Config::default())
    .run(
        workqueue::instrument("virt-controller-memorydump", memorydump::reconcile),
        memorydump::error_policy,
        ctx.clone(),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "memory dump controller");
        }
    });
    let vmi_ctl = Controller::new(vmis.clone(), watcher::Config::default());
    // A Node that comes, changes or goes may take (or refuse) the VMIs waiting for one.
    let waiting = vmi_ctl.store();
    // A claim that appears or binds, or the volume it is bound to, may let a VMI waiting for
    // it be placed.
    let waiting_for_claims = vmi_ctl.store();
    let waiting_for_volumes = vmi_ctl.store();
    let vmi_ctl = vmi_ctl
        .watches(
            Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(client.clone()),
            watcher::Config::default(),
            move |pv| {
                let claim = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
                let ns = claim.and_then(|r| r.namespace.clone());
                let name = claim.and_then(|r| r.name.clone()).unwrap_or_default();
                waiting_for_volumes
                    .state()
                    .into_iter()
                    .filter(|v| {
                        !name.is_empty()
                            && vmi::awaits_node(v)
                            && v.metadata.namespace == ns
                            && vmi::names_claim(v, &name)
                    })
                    .map(|v| kube::runtime::reflector::ObjectRef::from_obj(v.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
            move |claim| {
                let ns = claim.metadata.namespace.clone();
                let name = claim.metadata.name.clone().unwrap_or_default();
                waiting_for_claims
                    .state()
                    .into_iter()
                    .filter(|v| vmi::awaits_node(v) && v.metadata.namespace == ns)
                    .filter(|v| vmi::names_claim(v, &name))
                    .map(|v| kube::runtime::reflector::ObjectRef::from_obj(v.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<k8s_openapi::api::core::v1::Node>::all(client.clone()),
            watcher::Config::default(),
            move |_node| {
                waiting
                    .state()
                    .into_iter()
                    .filter(|v| vmi::awaits_node(v))
                    .map(|v| kube::runtime::reflector::ObjectRef::from_obj(v.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(
            workqueue::instrument("virt-controller-vmi", vmi::reconcile),
            vmi::error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "vmi controller");
            }
        });
    let rs_ctl = Controller::new(rss, watcher::Config::default())
        .owns(vmis, watcher::Config::default())
        .run(
            workqueue::instrument("virt-controller-replicaset", replicaset::reconcile),
            replicaset::error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "replicaset controller");
            }
        });
    let pools: Api<kubevirt_api::VirtualMachinePool> = Api::all(client.clone());
    let pool_ctl = Controller::new(pools, watcher::Config::default())
        .owns(
            Api::<VirtualMachine>::all(client.clone()),
            watcher::Config::default(),
        )
        .run(
            workqueue::instrument("virt-controller-pool", pool::reconcile),
            pool::error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "pool controller");
            }
        });
    let migrations: Api<kubevirt_api::VirtualMachineInstanceMigration> = Api::all(client.clone());
    let mig_ctl = Controller::new(migrations, watcher::Config::default());
    // A migration follows what the node agents write to its VMI.
    let by_vmi = mig_ctl.store();
    let mig_ctl = mig_ctl
        .watches(
            Api::<VirtualMachineInstance>::all(client.clone()),
            watcher::Config::default(),
            move |vmi| {
                let ns = vmi.metadata.namespace.clone();
                let name = vmi.metadata.name.clone();
                by_vmi
                    .state()
                    .into_iter()
                    .filter(|m| m.metadata.namespace == ns && m.spec.vmi_name == name)
                    .map(|m| kube::runtime::reflector::ObjectRef::from_obj(m.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(
            workqueue::instrument("virt-controller-migration", migration::reconcile),
            migration::error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "migration controller");
            }
        });
    let pod_ctl = Controller::new(
        Api::<VirtualMachineInstance>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<k8s_openapi::api::core::v1::Pod>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(
        workqueue::instrument("virt-controller-launcher-pod", launcher_pod::reconcile),
        launcher_pod::error_policy,
        ctx.clone(),
    )
    .for_each(|_| async {});
    let evacuation_ctl = Controller::new(
        Api::<VirtualMachineInstance>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(
        workqueue::instrument("virt-controller-evacuation", evacuation::reconcile),
        evacuation::error_policy,
        ctx.clone(),
    )
    .for_each(|_| async {});
    let snapshot_ctl = Controller::new(
        Api::<kubevirt_api::VirtualMachineSnapshot>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(
        workqueue::instrument("virt-controller-snapshot-vmsnapshot", snapshot::reconcile),
        snapshot::error_policy,
        ctx.clone(),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "snapshot controller");
        }
    });
    let restore_ctl = Controller::new(
        Api::<kubevirt_api::VirtualMachineRestore>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(
        workqueue::instrument("virt-controller-restore-vmrestore", restore::reconcile),
        restore::error_policy,
        ctx.clone(),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "restore controller");
        }
    });
    let clone_ctl = Controller::new(
        Api::<kubevirt_api::VirtualMachineClone>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<kubevirt_api::VirtualMachineSnapshot>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<kubevirt_api::VirtualMachineRestore>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(
        workqueue::instrument("virt-controller-vmclone", clone::reconcile),
        clone::error_policy,
        ctx.clone(),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "clone controller");
        }
    });
    futures::join!(
        vm_ctl,
        memory_dump_ctl,
        clone_ctl,
        snapshot_ctl,
        restore_ctl,
        vmi_ctl,
        mig_ctl,
        rs_ctl,
        pool_ctl,
        pod_ctl,
        evacuation_ctl,
        endpoints::run(ctx.clone()),
        node::monitor(ctx.clone())
    );
    Ok(())
}

/// Shared helpers over VMIs, on top of `kubevirt_api::status`.
pub(crate) mod phase {
    use kubevirt_api::status::VmiPhase;
    use kubevirt_api::VirtualMachineInstance;

    pub use kubevirt_api::status::{vmi_condition as condition, vmi_condition_true};

    pub fn of(vmi: &VirtualMachineInstance) -> Option<VmiPhase> {
        VmiPhase::of(vmi)
    }

    pub fn is(vmi: &VirtualMachineInstance, p: VmiPhase) -> bool {
        of(vmi) == Some(p)
    }

    pub fn is_final(vmi: &VirtualMachineInstance) -> bool {
        of(vmi).is_some_and(VmiPhase::is_final)
    }

    /// Whether the VMI ever reached Running: its phase now, or a recorded transition.
    pub fn ever_ran(vmi: &VirtualMachineInstance) -> bool {
        is(vmi, VmiPhase::Running)
            || vmi
                .status
                .as_ref()
                .and_then(|s| s.phase_transition_timestamps.as_ref())
                .is_some_and(|ts| {
                    ts.iter()
                        .any(|t| t.phase.as_deref() == Some(VmiPhase::Running.as_str()))
                })
    }
}

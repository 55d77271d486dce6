//! KubeVirt's status vocabulary as types with one owner: VMI phases, run strategies, condition
//! types, reasons, and the label and annotation keys the components agree on. Every crate
//! reads and writes these through this module, never as string literals of its own.

use crate::{VirtualMachineInstance, VirtualMachineInstanceCondition};
use std::fmt;

/// `status.phase` of a VirtualMachineInstance (KubeVirt's `VirtualMachineInstancePhase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VmiPhase {
    Pending,
    Scheduling,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl VmiPhase {
    pub const ALL: [VmiPhase; 7] = [
        VmiPhase::Pending,
        VmiPhase::Scheduling,
        VmiPhase::Scheduled,
        VmiPhase::Running,
        VmiPhase::Succeeded,
        VmiPhase::Failed,
        VmiPhase::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmiPhase::Pending => "Pending",
            VmiPhase::Scheduling => "Scheduling",
            VmiPhase::Scheduled => "Scheduled",
            VmiPhase::Running => "Running",
            VmiPhase::Succeeded => "Succeeded",
            VmiPhase::Failed => "Failed",
            VmiPhase::Unknown => "Unknown",
        }
    }

    /// The phase a `status.phase` string names; `None` for the empty (unset) phase or a
    /// string KubeVirt does not define.
    pub fn parse(s: &str) -> Option<VmiPhase> {
        VmiPhase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Succeeded and Failed are final: a VMI never leaves them.
    pub fn is_final(self) -> bool {
        matches!(self, VmiPhase::Succeeded | VmiPhase::Failed)
    }

    /// The phase of `vmi`, `None` while unset.
    pub fn of(vmi: &VirtualMachineInstance) -> Option<VmiPhase> {
        vmi.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .and_then(VmiPhase::parse)
    }
}

impl fmt::Display for VmiPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<VmiPhase> for String {
    fn from(p: VmiPhase) -> String {
        p.as_str().to_string()
    }
}

/// `spec.runStrategy` of a VirtualMachine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunStrategy {
    Always,
    Halted,
    Manual,
    RerunOnFailure,
    Once,
}

impl RunStrategy {
    pub const ALL: [RunStrategy; 5] = [
        RunStrategy::Always,
        RunStrategy::Halted,
        RunStrategy::Manual,
        RunStrategy::RerunOnFailure,
        RunStrategy::Once,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStrategy::Always => "Always",
            RunStrategy::Halted => "Halted",
            RunStrategy::Manual => "Manual",
            RunStrategy::RerunOnFailure => "RerunOnFailure",
            RunStrategy::Once => "Once",
        }
    }

    pub fn parse(s: &str) -> Option<RunStrategy> {
        RunStrategy::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// KubeVirt's `vm.RunStrategy()`: `runStrategy` if set, else `running: true` → Always,
    /// and `running: false` or nothing → Halted. An unknown value (validation refuses it) is
    /// Halted.
    pub fn of(spec: &crate::VirtualMachineSpec) -> RunStrategy {
        match spec.run_strategy.as_deref() {
            Some(s) if !s.is_empty() => RunStrategy::parse(s).unwrap_or(RunStrategy::Halted),
            _ if spec.running == Some(true) => RunStrategy::Always,
            _ => RunStrategy::Halted,
        }
    }
}

impl fmt::Display for RunStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spec.evictionStrategy` of a VMI, or the cluster's `spec.configuration.evictionStrategy`:
/// what an eviction of the VMI's launcher Pod (a node drain) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EvictionStrategy {
    /// The eviction is allowed: the launcher Pod goes and the VMI with it.
    None,
    /// The eviction is refused and the VMI is migrated away (refused without a migration
    /// when the VMI is not live-migratable).
    LiveMigrate,
    /// As LiveMigrate when the VMI is live-migratable, else as None.
    LiveMigrateIfPossible,
    /// The eviction is refused and `status.evacuationNodeName` set; someone else (e.g.
    /// cluster-api-provider-kubevirt) moves the VMI.
    External,
}

impl EvictionStrategy {
    pub const ALL: [EvictionStrategy; 4] = [
        EvictionStrategy::None,
        EvictionStrategy::LiveMigrate,
        EvictionStrategy::LiveMigrateIfPossible,
        EvictionStrategy::External,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EvictionStrategy::None => "None",
            EvictionStrategy::LiveMigrate => "LiveMigrate",
            EvictionStrategy::LiveMigrateIfPossible => "LiveMigrateIfPossible",
            EvictionStrategy::External => "External",
        }
    }

    pub fn parse(s: &str) -> Option<EvictionStrategy> {
        EvictionStrategy::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// KubeVirt's `migrations.VMIEvictionStrategy`: the VMI's own strategy if it sets one,
    /// else the cluster's. `None` (no strategy at all) acts as [`EvictionStrategy::None`]; an
    /// unknown value (validation refuses it) counts as unset.
    pub fn of_vmi(
        vmi: &VirtualMachineInstance,
        cluster: Option<EvictionStrategy>,
    ) -> Option<EvictionStrategy> {
        match vmi.spec.eviction_strategy.as_deref() {
            Some(s) => EvictionStrategy::parse(s).or(cluster),
            None => cluster,
        }
    }
}

impl fmt::Display for EvictionStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// KubeVirt's `vmi.IsMigratable()`: the `LiveMigratable` condition is True.
pub fn vmi_is_migratable(vmi: &VirtualMachineInstance) -> bool {
    vmi_condition_true(vmi, condition::LIVE_MIGRATABLE)
}

/// KubeVirt's `migrations.VMIMigratableOnEviction`: whether an eviction should move the VMI
/// by live migration (LiveMigrate, or LiveMigrateIfPossible on a migratable VMI).
pub fn vmi_migrates_on_eviction(
    vmi: &VirtualMachineInstance,
    cluster: Option<EvictionStrategy>,
) -> bool {
    match EvictionStrategy::of_vmi(vmi, cluster) {
        Some(EvictionStrategy::LiveMigrate) => true,
        Some(EvictionStrategy::LiveMigrateIfPossible) => vmi_is_migratable(vmi),
        _ => false,
    }
}

/// The VMI's `status.migrationState` as JSON (`Null` when absent): the form the migration
/// controller and the node agents compare and patch it in.
pub fn vmi_migration_state(vmi: &VirtualMachineInstance) -> serde_json::Value {
    vmi.status
        .as_ref()
        .and_then(|s| s.migration_state.as_ref())
        .and_then(|m| serde_json::to_value(m).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// KubeVirt's `VirtualMachineInstanceMigration.IsFinal()`: its phase is Succeeded or Failed.
pub fn migration_is_final(m: &crate::VirtualMachineInstanceMigration) -> bool {
    matches!(
        m.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// VMI condition types (KubeVirt's `VirtualMachineInstanceConditionType`) we set or read.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const PAUSED: &str = "Paused";
    pub const SOFTWARE_EMULATION: &str = "SoftwareEmulation";
    pub const AGENT_CONNECTED: &str = "AgentConnected";
    pub const LIVE_MIGRATABLE: &str = "LiveMigratable";
    pub const DATA_VOLUMES_READY: &str = "DataVolumesReady";
    /// KubeVirt's `Synchronized`: False while what the VMI needs on the node cannot be made
    /// (its launcher Pod), with the reason.
    pub const SYNCHRONIZED: &str = "Synchronized";
    /// Kubernetes' Pod condition KubeVirt copies to the VMI while its launcher Pod waits for
    /// a node: False with reason [`super::reason::UNSCHEDULABLE`] when no node takes it.
    pub const POD_SCHEDULED: &str = "PodScheduled";
}

/// Condition and status reasons (KubeVirt's where it has one).
pub mod reason {
    /// A VMI's claim does not exist yet (its `Synchronized=False` reason; its VM shows
    /// `ErrorPvcNotFound`).
    pub const FAILED_PVC_NOT_FOUND: &str = "FailedPvcNotFound";
    /// The launcher could not start the VMI (also KubeVirt's `FailedCreate`-style reason on
    /// the VMI's Ready condition).
    pub const FAILED_TO_START: &str = "FailedToStart";
    /// The launcher process is gone while the VMI was running.
    pub const LAUNCHER_EXITED: &str = "LauncherExited";
    /// Paused through the `pause` subresource.
    pub const PAUSED_BY_USER: &str = "PausedByUser";
    /// KubeVirt's reason when the launcher Pod cannot be created (e.g. a missing
    /// NetworkAttachmentDefinition).
    pub const FAILED_CREATE: &str = "FailedCreate";
    /// Kubernetes' `PodReasonUnschedulable`: no node takes the VMI (`PodScheduled=False`).
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// KubeVirt's `NodeUnresponsiveReason`: the node's virt-handler stopped heartbeating.
    pub const NODE_UNRESPONSIVE: &str = "NodeUnresponsive";
    /// `LiveMigratable=False` reasons (KubeVirt's `VirtualMachineInstanceReason*NotMigratable`).
    pub const DISKS_NOT_MIGRATABLE: &str = "DisksNotLiveMigratable";
    pub const INTERFACE_NOT_MIGRATABLE: &str = "InterfaceNotLiveMigratable";
    pub const HOTPLUG_NOT_MIGRATABLE: &str = "HotplugNotLiveMigratable";
    /// KubeVirt's spelling (sic): the reason of a host-passthrough CPU.
    pub const CPU_MODE_NOT_MIGRATABLE: &str = "CPUModeLiveMigratable";
    pub const HOST_DEVICE_NOT_MIGRATABLE: &str = "HostDeviceNotLiveMigratable";
    pub const VIRTIOFS_NOT_MIGRATABLE: &str = "VirtIOFSNotLiveMigratable";
    pub const SEV_NOT_MIGRATABLE: &str = "SEVNotLiveMigratable";
    pub const HYPERV_PASSTHROUGH_NOT_MIGRATABLE: &str = "HypervPassthroughNotLiveMigratable";
    /// Any other reason (KubeVirt's `VirtualMachineInstanceReasonNotMigratable`).
    pub const NOT_MIGRATABLE: &str = "NotMigratable";
}

/// Label and annotation keys.
pub mod label {
    /// The node a VMI is placed on.
    pub const NODE_NAME: &str = "kubevirt.io/nodeName";
    /// The uid of the VM that created a VMI.
    pub const CREATED_BY: &str = "kubevirt.io/created-by";
    /// The name of the VM a VMI belongs to.
    pub const VM_NAME: &str = "vm.kubevirt.io/name";
    /// Annotation: the VM generation a VMI was created from.
    pub const VM_GENERATION: &str = "kubevirt.io/vm-generation";
    /// Node label: the node accepts VMIs.
    pub const SCHEDULABLE: &str = "kubevirt.io/schedulable";
    /// Node annotation: virt-handler's last heartbeat (RFC 3339), KubeVirt's
    /// `VirtHandlerHeartbeat`.
    pub const HEARTBEAT: &str = "kubevirt.io/heartbeat";
    /// Node label: Kubernetes' `kubernetes.io/arch`, the host's architecture as Go names it
    /// (kubelet's label). The guest architectures a node runs are
    /// [`crate::arch::Arch::node_label`].
    pub const ARCH: &str = "kubernetes.io/arch";
    /// Node label: Kubernetes' `kubernetes.io/hostname` (the node's name here).
    pub const HOSTNAME: &str = "kubernetes.io/hostname";
    /// Node labels: whether the node can run VMs with KVM, and whether it may emulate.
    pub const KVM: &str = "kubevirt.io/kvm";
    pub const EMULATION: &str = "kubevirt.io/emulation";
    /// VMI label set by virt-controller while a migration moves the VMI: the node whose
    /// handler prepares the target (KubeVirt's `MigrationTargetNodeNameLabel`).
    pub const MIGRATION_TARGET_NODE_NAME: &str = "kubevirt.io/migrationTargetNodeName";
    /// Node label (ours): how the node's handler connects VMIs, `cni` (a network namespace
    /// per VMI, taps) or `user` (QEMU user networking). A guest's NIC cannot move between the
    /// two (QEMU refuses the device state: `vnet_hdr`), so a migration's target has the
    /// source's value.
    pub const POD_NETWORK: &str = "kubevirt-rs.io/pod-network";
    /// KubeVirt's `AppLabel`: what a Pod is (`virt-launcher` for a VMI's launcher Pod).
    pub const APP: &str = "kubevirt.io";
    /// The [`APP`] value of launcher Pods.
    pub const VIRT_LAUNCHER: &str = "virt-launcher";
    /// Annotation (KubeVirt's `DomainAnnotation`): on a launcher Pod, the name of its VMI.
    pub const DOMAIN: &str = "kubevirt.io/domain";
    /// Annotation (KubeVirt's `EvacuationMigrationAnnotation`): on a migration made by the
    /// evacuation controller, the node being drained.
    pub const EVACUATION_MIGRATION: &str = "kubevirt.io/evacuationMigration";
    /// Annotation (KubeVirt's `EvictionSourceAnnotation`): `descheduler` on a VMI whose
    /// eviction the descheduler asked for.
    pub const EVICTION_SOURCE: &str = "kubevirt.io/eviction-source";
}

/// Finalizers (`metadata.finalizers`) the components add, wait for or honour.
pub mod finalizer {
    /// KubeVirt's `VirtualMachineControllerFinalizer`: virt-controller's finalizer on every
    /// VirtualMachine it reconciles. A deleted VM keeps it until its VMI is gone (or, with
    /// orphan propagation, at once).
    pub const VM_CONTROLLER: &str = "kubevirt.io/virtualMachineControllerFinalize";
    /// KubeVirt's `VirtualMachineInstanceFinalizer`: a deleted VMI keeps it until the handler
    /// reports it final (its QEMU gone).
    pub const VMI: &str = "foregroundDeleteVirtualMachine";
    /// Kubernetes' `metav1.FinalizerOrphanDependents`: the API server's mark of a deletion with
    /// `propagationPolicy: Orphan` (`kubectl delete --cascade=orphan`).
    pub const ORPHAN_DEPENDENTS: &str = "orphan";
    /// Kubernetes' `metav1.FinalizerDeleteDependents`: a deletion with
    /// `propagationPolicy: Foreground`.
    pub const DELETE_DEPENDENTS: &str = "foregroundDeletion";
    /// KubeVirt's `VirtualMachineInstanceMigrationFinalizer`: a migration keeps it until it is
    /// final, so deleting a running migration cancels it first.
    pub const MIGRATION: &str = "kubevirt.io/migrationJobFinalize";
}

/// `status.phase` of a VirtualMachineInstanceMigration (KubeVirt's
/// `VirtualMachineInstanceMigrationPhase`), in the order a migration goes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MigrationPhase {
    Pending,
    Scheduling,
    Scheduled,
    PreparingTarget,
    TargetReady,
    Running,
    Succeeded,
    Failed,
}

impl MigrationPhase {
    pub const ALL: [MigrationPhase; 8] = [
        MigrationPhase::Pending,
        MigrationPhase::Scheduling,
        MigrationPhase::Scheduled,
        MigrationPhase::PreparingTarget,
        MigrationPhase::TargetReady,
        MigrationPhase::Running,
        MigrationPhase::Succeeded,
        MigrationPhase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MigrationPhase::Pending => "Pending",
            MigrationPhase::Scheduling => "Scheduling",
            MigrationPhase::Scheduled => "Scheduled",
            MigrationPhase::PreparingTarget => "PreparingTarget",
            MigrationPhase::TargetReady => "TargetReady",
            MigrationPhase::Running => "Running",
            MigrationPhase::Succeeded => "Succeeded",
            MigrationPhase::Failed => "Failed",
        }
    }

    /// `None` for the unset phase or a string KubeVirt does not define.
    pub fn parse(s: &str) -> Option<MigrationPhase> {
        MigrationPhase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, MigrationPhase::Succeeded | MigrationPhase::Failed)
    }

    /// The phase of a migration, `None` while unset.
    pub fn of(m: &crate::VirtualMachineInstanceMigration) -> Option<MigrationPhase> {
        m.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .and_then(MigrationPhase::parse)
    }
}

impl fmt::Display for MigrationPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The condition of `type_` on `vmi`, if set.
pub fn vmi_condition<'a>(
    vmi: &'a VirtualMachineInstance,
    type_: &str,
) -> Option<&'a VirtualMachineInstanceCondition> {
    vmi.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.r#type == type_))
}

/// Whether `vmi`'s condition `type_` has status `True`.
pub fn vmi_condition_true(vmi: &VirtualMachineInstance, type_: &str) -> bool {
    vmi_condition(vmi, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_and_unset_is_none() {
        for p in VmiPhase::ALL {
            assert_eq!(VmiPhase::parse(p.as_str()), Some(p));
        }
        assert_eq!(VmiPhase::parse(""), None);
        assert_eq!(VmiPhase::parse("running"), None);
        assert!(VmiPhase::Failed.is_final() && VmiPhase::Succeeded.is_final());
        assert!(!VmiPhase::Running.is_final());
    }

    #[test]
    fn eviction_strategy_is_the_vmis_else_the_clusters() {
        let vmi = |s: Option<&str>| -> VirtualMachineInstance {
            let mut v: VirtualMachineInstance = serde_json::from_value(
                serde_json::json!({"metadata": {"name": "v"}, "spec": {"domain": {"devices": {}}}}),
            )
            .expect("vmi");
            v.spec.eviction_strategy = s.map(str::to_string);
            v
        };
        for e in EvictionStrategy::ALL {
            assert_eq!(EvictionStrategy::parse(e.as_str()), Some(e));
        }
        let live = Some(EvictionStrategy::LiveMigrate);
        assert_eq!(EvictionStrategy::of_vmi(&vmi(None), live), live);
        assert_eq!(EvictionStrategy::of_vmi(&vmi(None), None), None);
        assert_eq!(
            EvictionStrategy::of_vmi(&vmi(Some("None")), live),
            Some(EvictionStrategy::None)
        );
        // A value validation would refuse counts as unset, not as a strategy of its own.
        assert_eq!(
            EvictionStrategy::of_vmi(&vmi(Some("livemigrate")), live),
            live
        );
        assert!(vmi_migrates_on_eviction(&vmi(Some("LiveMigrate")), None));
        // LiveMigrateIfPossible migrates only a migratable VMI.
        let mut v = vmi(Some("LiveMigrateIfPossible"));
        assert!(!vmi_migrates_on_eviction(&v, None));
        v.status = Some(crate::VirtualMachineInstanceStatus {
            conditions: Some(vec![VirtualMachineInstanceCondition {
                r#type: condition::LIVE_MIGRATABLE.into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(vmi_migrates_on_eviction(&v, None));
        assert!(!vmi_migrates_on_eviction(&vmi(Some("External")), live));
    }

    #[test]
    fn run_strategies_round_trip() {
        for r in RunStrategy::ALL {
            assert_eq!(RunStrategy::parse(r.as_str()), Some(r));
        }
        assert_eq!(
            RunStrategy::ALL.map(RunStrategy::as_str),
            *crate::validation::RUN_STRATEGIES
        );
    }
}

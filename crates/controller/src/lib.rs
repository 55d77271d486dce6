//! virt-controller: VM → VMI (runStrategy), VMI → node placement, migrations, DataVolumes,
//! snapshots, written as `kube::runtime` reconcilers. Filled by the control-loop issue.

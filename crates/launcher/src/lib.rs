//! virt-launcher: one process per VMI; VMI spec → `MachineSpec` → QEMU, driven over QMP.
//! Filled by the execution-layer issue.

//! virt-handler: the per-node agent that starts and re-adopts launchers, maps their events to
//! VMI status and labels the Node with what it can run. Filled by the control-loop issue.

//! virtctl: the user CLI, command-compatible with KubeVirt's for what we support.
//! Filled by the control-loop issue.

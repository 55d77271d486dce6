//! What the kubevirt-rs components share at run time, beside the API types.
//!
//! - [`cluster`]: the cluster configuration (the `KubeVirt` resource) as a watch channel that
//!   admission, virt-controller and virt-handler all read, so a change reaches every part.
//! - [`host_path`]: the one policy for host paths that come from the API (a PersistentVolume's
//!   `local.path`, a hostDisk `path`, a path the local-path provisioner is asked to delete):
//!   built from validated parts and proven to stay beneath an allowed root.

pub mod cluster;
pub mod host_path;

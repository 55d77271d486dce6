//! What the kubevirt-rs components share at run time, beside the API types: the plumbing that
//! virt-controller, virt-handler, virt-api, the CDI controllers and the API server would
//! otherwise each carry a copy of.
//!
//! - [`cluster`]: the cluster configuration (the `KubeVirt` resource) as a watch channel that
//!   admission, virt-controller and virt-handler all read, so a change reaches every part.
//! - [`host_path`]: the one policy for host paths that come from the API (a PersistentVolume's
//!   `local.path`, a hostDisk `path`, a path the local-path provisioner is asked to delete):
//!   built from validated parts and proven to stay beneath an allowed root.
//! - [`events`]: Kubernetes Events as KubeVirt records them (a [`kube::runtime::events::Recorder`]
//!   per component; a failure to record is logged, never fatal).
//! - [`backoff`]: retry delays after repeated failures: KubeVirt's quadratic crash-loop backoff
//!   with jitter, and the exponential one CDI's imports retry with.
//! - [`status`]: the one status writer: a merge patch `{"status": …}` on the `/status`
//!   subresource (optionally with a resourceVersion precondition), or through the main
//!   endpoint for kinds without one.
//! - [`subresource`]: the [`subresource::SubresourceHandler`] trait (and its
//!   [`subresource::Query`]) through which the API server hands aggregated API groups and the
//!   upload proxy to virt-api and the CDI controllers.
//! - [`alloc`]: the memory allocator of a process, chosen by its role (mimalloc for the
//!   server, the system allocator for launchers).

pub mod alloc;
pub mod backoff;
pub mod cluster;
pub mod events;
pub mod host_path;
pub mod metrics;
pub mod pv;
pub mod status;
pub mod subresource;
pub mod workqueue;

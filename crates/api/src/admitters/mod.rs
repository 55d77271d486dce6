//! KubeVirt's validating admitters other than VMI creation, one module per admitter.
//!
//! Messages and field paths are KubeVirt v1.9's (pkg/virt-api/webhooks/validating-webhook/
//! admitters, pkg/instancetype/webhooks, pkg/storage/admitters), so a user who greps for a
//! KubeVirt error finds ours too.

pub mod vm;

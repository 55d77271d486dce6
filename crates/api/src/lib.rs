//! KubeVirt's API resources as Rust types, with KubeVirt's defaulting and validation.
//!
//! - [`generated`](self) types come from KubeVirt's OpenAPI document (see `crates/api-gen`);
//!   every kind derives `kube::CustomResource`, so `VirtualMachineInstance::crd()` works.
//! - [`admission`] decodes, prunes unknown fields, defaults and validates one object.
//! - [`defaults`] and [`validation`] are pure functions, usable on their own.
//!
//! This crate does no I/O.

#[rustfmt::skip]
mod generated;
pub use generated::*;

pub mod admission;
pub mod admitters;
pub mod arch;
pub mod cdi;
pub mod core_kinds;
pub mod crd;
pub mod defaults;
pub mod duration;
pub mod field;
pub mod freeze;
pub mod guestagent;
pub mod instancetype;
pub mod memdump;
pub mod memsnap;
pub mod multus;
pub mod names;
pub mod quantity;
pub mod rbac;
pub mod status;
pub mod validation;
pub mod volumesnapshot;

pub use admission::{
    admit, AdmitOptions, Admitted, FieldValidation, KindInfo, Lookup, Operation, Request, UserInfo,
};
pub use cdi::{CDIConfig, StorageProfile};
pub use field::{CauseType, FieldError};
pub use multus::NetworkAttachmentDefinition;
pub use volumesnapshot::{VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent};

impl Volume {
    /// KubeVirt's hotpluggable volume: a `persistentVolumeClaim` or `dataVolume` marked
    /// `hotpluggable: true`. The one rule virt-api, the VM controller and the launcher share.
    pub fn is_hotpluggable(&self) -> bool {
        self.persistent_volume_claim
            .as_ref()
            .is_some_and(|p| p.hotpluggable == Some(true))
            || self
                .data_volume
                .as_ref()
                .is_some_and(|d| d.hotpluggable == Some(true))
    }
}

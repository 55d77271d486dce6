//! What KubeVirt's guest agent subresources answer (`subresources.kubevirt.io/v1`:
//! `guestosinfo`, `userlist`, `filesystemlist`), as KubeVirt's Go types serialize. These kinds
//! are not in KubeVirt's OpenAPI document (they are never stored), so they are written here.
//! The launcher fills them from the QEMU guest agent; virt-api relays them; virtctl prints them.

use crate::VirtualMachineInstanceGuestOSInfo;
use serde::{Deserialize, Serialize};

/// `VirtualMachineInstanceGuestAgentInfo`: the `guestosinfo` subresource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestAgentInfo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub guest_agent_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_commands: Vec<GuestAgentCommandInfo>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default)]
    pub os: VirtualMachineInstanceGuestOSInfo,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timezone: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_list: Vec<GuestOSUser>,
    #[serde(default)]
    pub fs_info: FileSystemInfo,
    /// `frozen` or `thawed`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fs_freeze_status: String,
}

/// `GuestAgentCommandInfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestAgentCommandInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enabled: bool,
}

/// `VirtualMachineInstanceGuestOSUser`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestOSUser {
    pub user_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Seconds since the epoch.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub login_time: f64,
}

fn is_zero(f: &f64) -> bool {
    *f == 0.0
}

/// `VirtualMachineInstanceFileSystemInfo`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FileSystemInfo {
    #[serde(default)]
    pub disks: Vec<FileSystem>,
}

/// `VirtualMachineInstanceFileSystem`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileSystem {
    pub disk_name: String,
    pub mount_point: String,
    pub file_system_type: String,
    pub used_bytes: u64,
    pub total_bytes: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk: Vec<FileSystemDisk>,
}

/// `VirtualMachineInstanceFileSystemDisk`: a disk a filesystem is on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileSystemDisk {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bus_type: String,
}

/// `VirtualMachineInstanceGuestOSUserList`: the `userlist` subresource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestOSUserList {
    pub items: Vec<GuestOSUser>,
}

/// `VirtualMachineInstanceFileSystemList`: the `filesystemlist` subresource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FileSystemList {
    pub items: Vec<FileSystem>,
}

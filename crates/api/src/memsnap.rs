//! Memory snapshots in VirtualMachineSnapshot/Restore (beyond KubeVirt; docs/memory-snapshots.md
//! and docs/snapshots.md): the one owner of their annotations, of the reference a snapshot
//! content and a restored VM carry, and of the virt-api subresource body.
//!
//! - [`MEMORY`] on a VirtualMachineSnapshot (`"true"`): save the running guest's memory with
//!   its disks.
//! - [`CONTENT_STATE`] on the VirtualMachineSnapshotContent: where the memory is
//!   ([`MemoryRef`], written by the snapshot controller).
//! - [`RESTORE`] on a VirtualMachine (written by the restore controller), moved by the VM
//!   controller onto the one VMI it creates next (honoured once): start that VMI from the
//!   memory instead of booting it.
//!
//! A [`MemoryRef`] names a node and a key (the snapshot's uid), never a namespace or a path:
//! the node's handler looks the key up only among the memory saved from the VMI's own
//! namespace (`<data>/memory-snapshots/<namespace>/<key>`), so a hand-written reference can
//! reach nothing of another namespace.

use serde::{Deserialize, Serialize};

/// On a VirtualMachineSnapshot: `"true"` saves the guest's memory too (a running VM only).
pub const MEMORY: &str = "snapshot.kubevirt-rs.io/memory";
/// On a VirtualMachineSnapshotContent: the saved memory's [`MemoryRef`] (JSON).
pub const CONTENT_STATE: &str = "snapshot.kubevirt-rs.io/memory-state";
/// On a VirtualMachine, then its next VMI: start from this [`MemoryRef`] (JSON).
pub const RESTORE: &str = "snapshot.kubevirt-rs.io/restore-memory";
/// virt-api's VMI subresource that saves the guest's memory into the node's store (PUT,
/// [`SaveMemory`]); the guest is left paused with its disks released.
pub const SAVE_SUBRESOURCE: &str = "savememory";
/// virt-api's VMI subresource that runs a guest on after [`SAVE_SUBRESOURCE`] (PUT, `{}`).
pub const RESUME_SUBRESOURCE: &str = "resumememory";
/// The VMI condition reason / event reason when a memory reference cannot be honoured.
pub const REASON_REFUSED: &str = "MemoryRestoreRefused";

/// Whether a VirtualMachineSnapshot asks for memory.
pub fn wanted(annotations: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    annotations
        .and_then(|a| a.get(MEMORY))
        .is_some_and(|v| v == "true")
}

/// Where a saved memory is: the node holding it, and its key there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRef {
    pub node: String,
    /// The VirtualMachineSnapshot's uid (a UUID).
    pub key: String,
}

impl MemoryRef {
    /// Reads and checks an annotation's value.
    pub fn parse(text: &str) -> Result<MemoryRef, String> {
        let r: MemoryRef =
            serde_json::from_str(text).map_err(|e| format!("not a memory reference: {e}"))?;
        if let Some(p) = crate::names::dns1123_subdomain(&r.node) {
            return Err(format!("node {:?}: {p}", r.node));
        }
        check_key(&r.key)?;
        Ok(r)
    }

    /// The annotation's value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A key is a lowercase UUID (`8-4-4-4-12` hex digits): never a path.
pub fn check_key(key: &str) -> Result<(), String> {
    let groups: Vec<&str> = key.split('-').collect();
    let ok = groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| {
            g.len() == n
                && g.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(format!("key {key:?} is not a UUID"))
    }
}

/// The body of [`SAVE_SUBRESOURCE`]: the key to save under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveMemory {
    pub key: String,
}

impl SaveMemory {
    pub fn parse(body: &serde_json::Value) -> Result<SaveMemory, String> {
        let s: SaveMemory =
            serde_json::from_value(body.clone()).map_err(|e| format!("key: {e}"))?;
        check_key(&s.key)?;
        Ok(s)
    }
}

/// Admission: a VM's (or VMI's) [`RESTORE`] annotation must be a valid reference.
pub fn admit_annotations(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Option<crate::FieldError> {
    let v = annotations?.get(RESTORE)?;
    MemoryRef::parse(v).err().map(|e| {
        crate::FieldError::invalid(
            format!("metadata.annotations[{RESTORE}]"),
            format!("{RESTORE}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    #[test]
    fn a_reference_round_trips() {
        let r = MemoryRef {
            node: "node01".into(),
            key: UID.into(),
        };
        assert_eq!(MemoryRef::parse(&r.to_annotation()), Ok(r));
    }

    #[test]
    fn hostile_references_are_refused() {
        for bad in [
            r#"{"node":"node01","key":"../../etc"}"#,
            r#"{"node":"node01","key":"other/0f8fad5b-d9cb-469f-a165-70867728950e"}"#,
            r#"{"node":"node01","key":"0F8FAD5B-D9CB-469F-A165-70867728950E"}"#,
            r#"{"node":"node01","key":"0f8fad5b-d9cb-469f-a165-70867728950e","namespace":"other"}"#,
            r#"{"node":"node01","key":"0f8fad5b-d9cb-469f-a165-70867728950e","path":"/x"}"#,
            r#"{"node":"../x","key":"0f8fad5b-d9cb-469f-a165-70867728950e"}"#,
            r#"{"key":"0f8fad5b-d9cb-469f-a165-70867728950e"}"#,
            "/var/lib/x",
            "",
        ] {
            assert!(MemoryRef::parse(bad).is_err(), "{bad}");
        }
        assert!(SaveMemory::parse(&serde_json::json!({"key": "../x"})).is_err());
        assert!(SaveMemory::parse(&serde_json::json!({"key": UID, "path": "/x"})).is_err());
        assert!(SaveMemory::parse(&serde_json::json!({"key": UID})).is_ok());
    }

    #[test]
    fn admission_names_the_annotation() {
        let mut a = std::collections::BTreeMap::new();
        assert!(admit_annotations(Some(&a)).is_none());
        a.insert(
            RESTORE.to_string(),
            r#"{"node":"n","key":"x/../y"}"#.to_string(),
        );
        let e = admit_annotations(Some(&a)).expect("refused");
        assert!(e.message.contains(RESTORE), "{e:?}");
        assert!(e.message.contains("not a UUID"), "{e:?}");
    }
}

//! Volume hotplug on this node: the running VMI's hotpluggable volumes are resolved to files
//! (as at start, under the host-path policy), handed to its launcher (`syncVolumes`), and
//! reported in `status.volumeStatus` as KubeVirt reports them:
//!
//! - `Pending` while the claim or DataVolume is not usable (reason `PVCNotReady`), or
//!   `HostPathRefused` when its PersistentVolume points outside the allowed roots;
//! - `AttachedToNode` (reason `SyncFailed`, the launcher's words) when the file is there but
//!   QEMU refused it;
//! - `Ready` (reason `VolumeReady`, "Successfully attach hotplugged volume X to VM") with the
//!   disk's `target` (`sda`, ...) once the guest has it;
//! - `Detaching` while a removed volume is still attached; gone from the list once detached.

use crate::volumes;
use kube::Client;
use kubevirt_api::VirtualMachineInstance;
use kubevirt_launcher::api::{HotplugVolume, LauncherClient, Request, Response, VmiDir};
use kubevirt_launcher::hotplug::hotpluggable;
use kubevirt_runtime::host_path::HostPathPolicy;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// KubeVirt's reason for an attached hotplugged volume (virt-handler `VolumeReadyReason`).
pub const VOLUME_READY: &str = "VolumeReady";

/// The new `status.volumeStatus`, and whether a volume is still on its way (look again
/// soon); `None` when the VMI has no hotplugged volume and had none.
pub async fn sync(
    client: &Client,
    policy: &HostPathPolicy,
    node_name: &str,
    vmi: &VirtualMachineInstance,
    dir: &VmiDir,
    current: &Value,
) -> Result<Option<(Value, bool)>, crate::Error> {
    let hot = hotpluggable(vmi);
    let had = current["volumeStatus"]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v.get("hotplugVolume").is_some()));
    if hot.is_empty() && !had {
        return Ok(None);
    }
    let (node, not_ready) = volumes::resolve_each(client, vmi, policy, node_name, &hot).await?;
    // The launcher gets the VMI without the volumes that cannot be attached yet.
    let mut ready_vmi = vmi.clone();
    if let Some(v) = ready_vmi.spec.volumes.as_mut() {
        v.retain(|v| !not_ready.contains_key(&v.name));
    }
    if let Some(d) = ready_vmi.spec.domain.devices.disks.as_mut() {
        d.retain(|d| !not_ready.contains_key(&d.name));
    }
    let request = Request::SyncVolumes {
        vmi: Box::new(ready_vmi),
        volumes: node,
    };
    let asked = async { LauncherClient::connect(dir).await?.call(request).await };
    let reported = match asked.await {
        Ok(Response::Volumes(v)) => v,
        Ok(other) => {
            tracing::warn!(reply = ?other, "syncVolumes: unexpected reply");
            return Ok(None);
        }
        Err(e) => {
            tracing::warn!(vmi = ?vmi.metadata.name, error = %e, "syncVolumes failed");
            return Ok(None);
        }
    };
    Ok(Some(volume_status(vmi, current, &reported, &not_ready)))
}

/// The volume status entries of the hotplugged volumes (other entries are kept as they are).
pub fn volume_status(
    vmi: &VirtualMachineInstance,
    current: &Value,
    reported: &[HotplugVolume],
    not_ready: &BTreeMap<String, volumes::NotReady>,
) -> (Value, bool) {
    let hot = hotpluggable(vmi);
    let by_name: BTreeMap<&str, &HotplugVolume> =
        reported.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut out: Vec<Value> = current["volumeStatus"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|v| v.get("hotplugVolume").is_none())
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut pending = false;
    let entry = |name: &str, target: &str, phase: &str, reason: &str, message: &str| {
        json!({
            "name": name, "target": target, "phase": phase, "reason": reason,
            "message": message, "hotplugVolume": {},
        })
    };
    for v in vmi.spec.volumes.iter().flatten() {
        if !hot.contains(&v.name) {
            continue;
        }
        let name = v.name.as_str();
        let e = if let Some(n) = not_ready.get(name) {
            pending = true;
            entry(name, "", "Pending", n.reason, &n.message)
        } else {
            match by_name.get(name) {
                Some(r) if r.attached => entry(
                    name,
                    &r.target,
                    "Ready",
                    VOLUME_READY,
                    &format!("Successfully attach hotplugged volume {name} to VM"),
                ),
                Some(r) => {
                    pending = true;
                    entry(name, "", "AttachedToNode", "SyncFailed", &r.message)
                }
                None => {
                    pending = true;
                    entry(name, "", "Pending", "", "")
                }
            }
        };
        out.push(e);
    }
    // Removed from the spec, not detached yet.
    for r in reported
        .iter()
        .filter(|r| r.attached && !hot.contains(&r.name))
    {
        pending = true;
        let message = if r.message.is_empty() {
            format!("Volume {} is being detached", r.name)
        } else {
            r.message.clone()
        };
        out.push(entry(
            &r.name,
            &r.target,
            "Detaching",
            "VolumeDetaching",
            &message,
        ));
    }
    (Value::Array(out), pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(hot: &[&str]) -> VirtualMachineInstance {
        let vols: Vec<Value> = hot
            .iter()
            .map(|n| json!({"name": n, "dataVolume": {"name": n, "hotpluggable": true}}))
            .chain([json!({"name": "root", "containerDisk": {"image": "x"}})])
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "t"},
            "spec": {"domain": {"devices": {}}, "volumes": vols},
        }))
        .expect("test VMI")
    }

    #[test]
    fn attached_pending_failed_and_detaching_volumes_read_like_kubevirts() {
        let v = vmi(&["a", "b", "c"]);
        let reported = vec![
            HotplugVolume {
                name: "a".into(),
                target: "sda".into(),
                attached: true,
                message: String::new(),
            },
            HotplugVolume {
                name: "c".into(),
                target: String::new(),
                attached: false,
                message: "QMP blockdev-add: GenericError: Could not open".into(),
            },
            HotplugVolume {
                name: "old".into(),
                target: "sdb".into(),
                attached: true,
                message: String::new(),
            },
        ];
        let not_ready = BTreeMap::from([(
            "b".to_string(),
            volumes::NotReady {
                reason: "PVCNotReady",
                message: "DataVolume default/b is not ready (phase \"ImportInProgress\")".into(),
            },
        )]);
        let current = json!({"volumeStatus": [{"name": "root", "target": "vda"}]});
        let (st, pending) = volume_status(&v, &current, &reported, &not_ready);
        assert!(pending);
        assert_eq!(st[0], json!({"name": "root", "target": "vda"}));
        assert_eq!(
            st[1],
            json!({"name": "a", "target": "sda", "phase": "Ready", "reason": "VolumeReady",
                   "message": "Successfully attach hotplugged volume a to VM", "hotplugVolume": {}})
        );
        assert_eq!(st[2]["phase"], "Pending");
        assert_eq!(st[2]["reason"], "PVCNotReady");
        assert_eq!(st[3]["phase"], "AttachedToNode");
        assert!(st[3]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Could not open")));
        assert_eq!(st[4]["name"], "old");
        assert_eq!(st[4]["phase"], "Detaching");

        // All attached, nothing removed: settled.
        let (st, pending) = volume_status(&vmi(&["a"]), &json!({}), &reported[..1], &not_ready);
        assert!(!pending);
        assert_eq!(st.as_array().map(Vec::len), Some(1));
    }
}

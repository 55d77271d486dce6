//! Declarative volume hotplug (KubeVirt's `DeclarativeHotplugVolumes`, Beta in v1.9 and on):
//! a `hotpluggable` persistentVolumeClaim or dataVolume volume added to a running VM's
//! template is added to its VMI (volume and disk), one removed from the template is removed
//! from the VMI. virt-handler then attaches or detaches it in the guest. Everything else in the
//! template waits for the next start, as before.

use kubevirt_api::{Disk, VirtualMachineInstanceSpec, Volume};
use serde_json::{json, Value};

/// `spec` without its hotpluggable volumes and their disks: what stays fixed while they come
/// and go on a running VM.
pub fn without_hotplugged(spec: &VirtualMachineInstanceSpec) -> VirtualMachineInstanceSpec {
    let mut s = spec.clone();
    let hot: Vec<String> = s
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.is_hotpluggable())
        .map(|v| v.name.clone())
        .collect();
    if hot.is_empty() {
        return s;
    }
    if let Some(vols) = s.volumes.as_mut() {
        vols.retain(|v| !hot.contains(&v.name));
    }
    if let Some(disks) = s.domain.devices.disks.as_mut() {
        disks.retain(|d| !hot.contains(&d.name));
    }
    s
}

/// The VMI's new volume and disk lists when the template's hotpluggable volumes differ from
/// the VMI's; `None` when they agree.
pub fn sync(
    template: &VirtualMachineInstanceSpec,
    vmi: &VirtualMachineInstanceSpec,
) -> Option<(Vec<Volume>, Vec<Disk>)> {
    let t_vols = template.volumes.as_deref().unwrap_or_default();
    let t_disks = template.domain.devices.disks.as_deref().unwrap_or_default();
    let mut vols: Vec<Volume> = vmi.volumes.clone().unwrap_or_default();
    let mut disks: Vec<Disk> = vmi.domain.devices.disks.clone().unwrap_or_default();
    let mut changed = false;
    // Removed from the template: unplugged.
    let before = vols.len();
    let gone: Vec<String> = vols
        .iter()
        .filter(|v| v.is_hotpluggable() && !t_vols.iter().any(|t| t.name == v.name))
        .map(|v| v.name.clone())
        .collect();
    vols.retain(|v| !gone.contains(&v.name));
    disks.retain(|d| !gone.contains(&d.name));
    changed |= vols.len() != before;
    // Added to the template: plugged.
    for t in t_vols.iter().filter(|t| t.is_hotpluggable()) {
        if vols.iter().any(|v| v.name == t.name) {
            continue;
        }
        vols.push(t.clone());
        if let Some(d) = t_disks.iter().find(|d| d.name == t.name) {
            disks.retain(|x| x.name != d.name);
            disks.push(d.clone());
        }
        changed = true;
    }
    changed.then_some((vols, disks))
}

/// A merge patch of the VMI's lists, guarded by its resourceVersion.
pub fn patch(resource_version: Option<&str>, vols: &[Volume], disks: &[Disk]) -> Value {
    json!({
        "metadata": {"resourceVersion": resource_version},
        "spec": {"volumes": vols, "domain": {"devices": {"disks": disks}}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> VirtualMachineInstanceSpec {
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn template_hotplug_changes_reach_the_vmi_and_nothing_else_does() {
        let vmi = spec(json!({
            "domain": {"devices": {"disks": [{"name": "root"}]}},
            "volumes": [{"name": "root", "containerDisk": {"image": "a"}}],
        }));
        let mut template = spec(json!({
            "domain": {"devices": {"disks": [{"name": "root"}, {"name": "cold"},
                {"name": "hot", "disk": {"bus": "scsi"}, "serial": "hot"}]}},
            "volumes": [{"name": "root", "containerDisk": {"image": "b"}},
                {"name": "cold", "dataVolume": {"name": "cold"}},
                {"name": "hot", "dataVolume": {"name": "hot", "hotpluggable": true}}],
        }));
        let (vols, disks) = sync(&template, &vmi).expect("a change");
        let names: Vec<&str> = vols.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            ["root", "hot"],
            "a cold volume waits for the next start"
        );
        assert_eq!(disks[1].serial.as_deref(), Some("hot"));
        assert_eq!(
            vols[0].container_disk.as_ref().map(|c| c.image.as_str()),
            Some("a")
        );

        let mut running = vmi.clone();
        running.volumes = Some(vols);
        running.domain.devices.disks = Some(disks);
        assert_eq!(sync(&template, &running), None, "in sync");

        template.volumes.as_mut().unwrap().pop();
        let (vols, disks) = sync(&template, &running).expect("an unplug");
        assert_eq!(vols.len(), 1);
        assert_eq!(disks.len(), 1);
    }
}

//! Volume hotplug, as KubeVirt does it: a `persistentVolumeClaim` or `dataVolume` volume
//! marked `hotpluggable: true` that appears in the running VMI's spec is attached to the
//! guest (QMP `blockdev-add`, then `device_add` of a `scsi-hd` on the `scsi0` controller
//! every q35 machine has); one that leaves the spec is detached (`device_del`, the wait for
//! `DEVICE_DELETED`, then `blockdev-del`).
//!
//! The disk is the same [`DiskSpec`] a cold-plugged disk would be (`MachineSpec::from_vmi` of
//! the new VMI: names checked as DNS-1123 labels, serials and cache modes as KubeVirt checks
//! them, the file the handler resolved beneath its volume root), and its QMP arguments pass
//! the option builder's checks ([`crate::qemu::disks::hotplug_args`]).

use crate::api::HotplugVolume;
use crate::launcher::{machine_spec, LaunchError, Options, Vm};
use crate::machine::{Bus, DiskSpec, MachineSpec};
use kubevirt_api::VirtualMachineInstance;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long an unplug may take before it is reported as failed.
const UNPLUG_WAIT: Duration = Duration::from_secs(30);

/// One attached hotpluggable volume.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Attached {
    target: String,
    /// Added with `blockdev-add` (so removed with `blockdev-del`); a disk present at start
    /// is a `-drive`, which QEMU deletes with its device.
    blockdev: bool,
}

/// The hotpluggable volumes attached to the guest now.
#[derive(Debug, Default)]
pub struct Plugged {
    disks: BTreeMap<String, Attached>,
}

/// The names of the VMI's hotpluggable volumes (`persistentVolumeClaim.hotpluggable` or
/// `dataVolume.hotpluggable`).
pub fn hotpluggable(vmi: &VirtualMachineInstance) -> BTreeSet<String> {
    vmi.spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.is_hotpluggable())
        .map(|v| v.name.clone())
        .collect()
}

/// libvirt's target names: `sda`, ..., `sdz`, `sdaa`, ... (`vd` for virtio).
fn target_name(prefix: &str, mut i: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push((b'a' + (i % 26) as u8) as char);
        if i < 26 {
            break;
        }
        i = i / 26 - 1;
    }
    letters.reverse();
    format!("{prefix}{}", letters.into_iter().collect::<String>())
}

/// The targets of the disks present at start, in order: SATA and SCSI disks share `sd`.
fn boot_targets(spec: &MachineSpec) -> BTreeMap<String, String> {
    let (mut sd, mut vd) = (0, 0);
    let mut out = BTreeMap::new();
    for d in &spec.disks {
        let t = if d.bus == Bus::Virtio {
            vd += 1;
            target_name("vd", vd - 1)
        } else {
            sd += 1;
            target_name("sd", sd - 1)
        };
        out.insert(d.name.clone(), t);
    }
    out
}

impl Plugged {
    /// The hotpluggable volumes of the VMI a machine started with: attached from the start.
    /// Whether a volume was attached at run time (a migration target, started from the
    /// spec's start-time devices, would not have it).
    pub fn any_hot_added(&self) -> bool {
        self.disks.values().any(|d| d.blockdev)
    }

    pub fn at_start(vmi: &VirtualMachineInstance, spec: &MachineSpec) -> Plugged {
        let hot = hotpluggable(vmi);
        let targets = boot_targets(spec);
        let disks = spec
            .disks
            .iter()
            .filter(|d| hot.contains(&d.name))
            .map(|d| {
                let target = targets.get(&d.name).cloned().unwrap_or_default();
                (
                    d.name.clone(),
                    Attached {
                        target,
                        blockdev: false,
                    },
                )
            })
            .collect();
        Plugged { disks }
    }

    /// The first `sd` name no disk present at start and no hotplugged disk has.
    fn free_target(&self, boot: &MachineSpec) -> String {
        let used: BTreeSet<String> = boot_targets(boot)
            .into_values()
            .chain(self.disks.values().map(|a| a.target.clone()))
            .collect();
        (0..)
            .map(|i| target_name("sd", i))
            .find(|t| !used.contains(t))
            .unwrap_or_default()
    }

    fn report(&self) -> Vec<HotplugVolume> {
        self.disks
            .iter()
            .map(|(name, a)| HotplugVolume {
                name: name.clone(),
                target: a.target.clone(),
                attached: true,
                message: String::new(),
            })
            .collect()
    }
}

/// Attach and detach until the guest has exactly the VMI's hotpluggable volumes. A volume that
/// cannot be attached (or detached) is reported with the reason; the others go on.
pub async fn sync(
    vm: &Vm,
    vmi: &VirtualMachineInstance,
    opts: &Options,
) -> Result<Vec<HotplugVolume>, LaunchError> {
    let phase = vm.state().phase;
    if phase.is_final() {
        return Err(LaunchError::WrongPhase(phase, "cannot hotplug volumes"));
    }
    let spec = machine_spec(vmi, opts, vm.spec.accelerator)?;
    let want = hotpluggable(vmi);
    let mut plugged = vm.hotplug.lock().await;
    let mut failed = Vec::new();

    let gone: Vec<String> = plugged
        .disks
        .keys()
        .filter(|n| !want.contains(*n))
        .cloned()
        .collect();
    for name in gone {
        let Some(a) = plugged.disks.get(&name).cloned() else {
            continue;
        };
        match detach(vm, &name, &a).await {
            Ok(()) => {
                tracing::info!(vmi = %vm.spec.vmi, volume = %name, "volume unplugged");
                plugged.disks.remove(&name);
            }
            Err(e) => {
                tracing::warn!(vmi = %vm.spec.vmi, volume = %name, error = %e, "unplug failed");
                failed.push(HotplugVolume {
                    name: name.clone(),
                    target: a.target.clone(),
                    attached: true,
                    message: format!("detaching: {e}"),
                });
            }
        }
    }

    for d in spec.disks.iter().filter(|d| want.contains(&d.name)) {
        if plugged.disks.contains_key(&d.name) {
            continue;
        }
        let target = plugged.free_target(&vm.spec);
        match attach(vm, d, opts).await {
            Ok(()) => {
                tracing::info!(vmi = %vm.spec.vmi, volume = %d.name, %target, "volume hotplugged");
                plugged.disks.insert(
                    d.name.clone(),
                    Attached {
                        target,
                        blockdev: true,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(vmi = %vm.spec.vmi, volume = %d.name, error = %e, "hotplug failed");
                failed.push(HotplugVolume {
                    name: d.name.clone(),
                    target: String::new(),
                    attached: false,
                    message: e.to_string(),
                });
            }
        }
    }
    let mut out = plugged.report();
    out.retain(|v| !failed.iter().any(|f| f.name == v.name));
    out.extend(failed);
    Ok(out)
}

async fn attach(vm: &Vm, d: &DiskSpec, opts: &Options) -> Result<(), LaunchError> {
    let (blockdev, device) = crate::qemu::disks::hotplug_args(d)
        .map_err(|e| LaunchError::Render(crate::qemu::RenderError::Disk(e)))?;
    crate::volumes::prepare_hotplug(d, opts.qemu_user)?;
    vm.qmp
        .blockdev_add(blockdev)
        .await
        .map_err(|e| vm.qmp_err(e))?;
    if let Err(e) = vm.qmp.device_add(device).await {
        // Leave nothing half-attached: the node goes again.
        let _ = vm.qmp.blockdev_del(&format!("drive-{}", d.name)).await;
        return Err(vm.qmp_err(e));
    }
    Ok(())
}

async fn detach(vm: &Vm, name: &str, a: &Attached) -> Result<(), LaunchError> {
    vm.qmp
        .device_del(&format!("ua-{name}"), UNPLUG_WAIT)
        .await
        .map_err(|e| vm.qmp_err(e))?;
    if a.blockdev {
        vm.qmp
            .blockdev_del(&format!("drive-{name}"))
            .await
            .map_err(|e| vm.qmp_err(e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_libvirts_letters() {
        assert_eq!(target_name("sd", 0), "sda");
        assert_eq!(target_name("sd", 25), "sdz");
        assert_eq!(target_name("sd", 26), "sdaa");
        assert_eq!(target_name("vd", 1), "vdb");
    }
}

//! addvolume / removevolume: hotplug a DataVolume or PersistentVolumeClaim into a running VM
//! (kubevirt/kubevirt pkg/virtctl/vm/add_volume.go, remove_volume.go), with KubeVirt's flags,
//! checks and messages. The VM's subresource is asked first (the volume then persists in
//! the VM's template: `--persist` is KubeVirt's deprecated no-op), the VMI's when there is no
//! such VM (a standalone VMI: ephemeral). Concurrent changes are retried, as virtctl does.

use crate::client::{connect, Conn, Error};
use crate::GlobalArgs;
use serde_json::{json, Value};

/// virtctl retries a conflicting request this many times.
const MAX_RETRIES: u32 = 15;

#[derive(clap::Args, Debug)]
pub struct AddVolumeArgs {
    /// The VirtualMachine (or standalone VirtualMachineInstance).
    #[arg(value_name = "VMI")]
    pub name: String,
    /// name used in volumes section of spec (a DataVolume or PersistentVolumeClaim of that name)
    #[arg(long, value_name = "NAME", required = true)]
    pub volume_name: String,
    /// serial number you want to assign to the disk
    #[arg(long, default_value = "")]
    pub serial: String,
    /// caching options attribute control the cache mechanism
    #[arg(long, default_value = "")]
    pub cache: String,
    /// [deprecated] this flag has no effect and will be removed in a future release
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub persist: bool,
    /// Perform a dry run: the server validates the request and changes nothing.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub dry_run: bool,
    /// specifies disk type to be hotplugged (disk/lun). Disk by default.
    #[arg(long, default_value = "disk")]
    pub disk_type: String,
    /// specifies disk bus. scsi by default.
    #[arg(long, default_value = "scsi")]
    pub bus: String,
}

#[derive(clap::Args, Debug)]
pub struct RemoveVolumeArgs {
    /// The VirtualMachine (or standalone VirtualMachineInstance).
    #[arg(value_name = "VMI")]
    pub name: String,
    /// name used in volumes section of spec
    #[arg(long, value_name = "NAME", required = true)]
    pub volume_name: String,
    /// [deprecated] this flag has no effect and will be removed in a future release
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub persist: bool,
    /// Perform a dry run: the server validates the request and changes nothing.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub dry_run: bool,
}

fn dry_run(dry: bool) -> Option<Vec<&'static str>> {
    dry.then(|| vec!["All"])
}

/// The disk of an `AddVolumeOptions`, with KubeVirt's checks of the flags.
pub fn disk(a: &AddVolumeArgs) -> Result<Value, String> {
    let mut disk = match a.disk_type.as_str() {
        "disk" => {
            if a.bus != "scsi" && a.bus != "virtio" {
                return Err(format!(
                    "Invalid bus type '{}' for disk. Only 'scsi' and 'virtio' are supported.",
                    a.bus
                ));
            }
            json!({"disk": {"bus": a.bus}})
        }
        "lun" => {
            if a.bus != "scsi" {
                return Err(format!(
                    "Invalid bus type '{}' for LUN disk. Only 'scsi' bus is supported.",
                    a.bus
                ));
            }
            json!({"lun": {"bus": a.bus}})
        }
        t => {
            return Err(format!(
                "Invalid disk type '{t}'. Only LUN and Disk are supported."
            ))
        }
    };
    disk["serial"] = json!(if a.serial.is_empty() {
        &a.volume_name
    } else {
        &a.serial
    });
    if !a.cache.is_empty() {
        if !matches!(a.cache.as_str(), "none" | "writethrough" | "writeback") {
            return Err(format!(
                "error adding volume, invalid cache value {}",
                a.cache
            ));
        }
        disk["cache"] = json!(a.cache);
    }
    Ok(disk)
}

/// `getVolumeSourceFromVolume`: a DataVolume of that name, else a PersistentVolumeClaim.
async fn volume_source(c: &Conn, name: &str) -> crate::Result<Value> {
    let ns = &c.namespace;
    let dv = format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/datavolumes/{name}");
    if c.get(&dv).await.is_ok() {
        return Ok(json!({"dataVolume": {"name": name, "hotpluggable": true}}));
    }
    let pvc = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}");
    if c.get(&pvc).await.is_ok() {
        return Ok(json!({"persistentVolumeClaim": {"claimName": name, "hotpluggable": true}}));
    }
    Err(Error::Failed(format!(
        "error adding volume, Volume {name} is not a DataVolume or PersistentVolumeClaim"
    )))
}

/// The VM's subresource, else (no such VM) the VMI's; a conflict is retried.
async fn put(c: &Conn, name: &str, sub: &str, body: &Value) -> crate::Result<()> {
    let mut retry = 0;
    loop {
        let mut r = c
            .put_subresource("virtualmachines", name, sub, Some(body))
            .await;
        if matches!(&r, Err(e) if e.api_code() == Some(404)) {
            r = c
                .put_subresource("virtualmachineinstances", name, sub, Some(body))
                .await;
        }
        match r {
            Err(e) if e.api_code() == Some(409) && retry + 1 < MAX_RETRIES => {
                // Another change won the race (the stored lists moved): try again.
                let conflict = e.to_string();
                if !conflict.contains("test operation failed") {
                    return Err(e);
                }
                retry += 1;
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(retry) * 3)).await;
            }
            r => return r,
        }
    }
}

pub async fn add(g: &GlobalArgs, a: AddVolumeArgs) -> crate::Result<i32> {
    let disk = disk(&a).map_err(Error::Failed)?;
    let c = connect(g, false).await?;
    let source = volume_source(&c, &a.volume_name).await?;
    let mut body = json!({"name": a.volume_name, "disk": disk, "volumeSource": source});
    if let Some(d) = dry_run(a.dry_run) {
        body["dryRun"] = json!(d);
    }
    put(&c, &a.name, "addvolume", &body)
        .await
        .map_err(|e| e.context("error adding volume, "))?;
    println!(
        "Successfully submitted add volume request to VM {} for volume {}",
        a.name, a.volume_name
    );
    Ok(0)
}

pub async fn remove(g: &GlobalArgs, a: RemoveVolumeArgs) -> crate::Result<i32> {
    let c = connect(g, false).await?;
    let mut body = json!({"name": a.volume_name});
    if let Some(d) = dry_run(a.dry_run) {
        body["dryRun"] = json!(d);
    }
    put(&c, &a.name, "removevolume", &body)
        .await
        .map_err(|e| e.context("error removing volume, "))?;
    println!(
        "Successfully submitted remove volume request to VM {} for volume {}",
        a.name, a.volume_name
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> AddVolumeArgs {
        #[derive(Parser)]
        struct P {
            #[command(flatten)]
            a: AddVolumeArgs,
        }
        let mut argv = vec!["addvolume", "vm", "--volume-name=data"];
        argv.extend_from_slice(extra);
        P::try_parse_from(argv).expect("flags").a
    }

    #[test]
    fn flags_become_kubevirts_disk_or_its_errors() {
        assert_eq!(
            disk(&args(&[])).unwrap(),
            json!({"disk": {"bus": "scsi"}, "serial": "data"})
        );
        assert_eq!(
            disk(&args(&["--serial=abc", "--cache=none", "--bus=virtio"])).unwrap(),
            json!({"disk": {"bus": "virtio"}, "serial": "abc", "cache": "none"})
        );
        assert_eq!(
            disk(&args(&["--bus=sata"])).unwrap_err(),
            "Invalid bus type 'sata' for disk. Only 'scsi' and 'virtio' are supported."
        );
        assert_eq!(
            disk(&args(&["--disk-type=lun", "--bus=virtio"])).unwrap_err(),
            "Invalid bus type 'virtio' for LUN disk. Only 'scsi' bus is supported."
        );
        assert_eq!(
            disk(&args(&["--disk-type=cdrom"])).unwrap_err(),
            "Invalid disk type 'cdrom'. Only LUN and Disk are supported."
        );
        assert_eq!(
            disk(&args(&["--cache=unsafe,x"])).unwrap_err(),
            "error adding volume, invalid cache value unsafe,x"
        );
        assert!(args(&["--persist"]).persist);
    }
}

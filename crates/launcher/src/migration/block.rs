//! Block migration: the VMI's local disks copied to the target over NBD, as libvirt does for
//! KubeVirt (`VIR_MIGRATE_NON_SHARED_INC` with QEMU's NBD server).
//!
//! - Target (`prepareMigrationTarget`): the launcher binds a TCP listener on the listen IP,
//!   port 0 (so the port is chosen by the kernel, race-free), hands it to QEMU (`getfd`,
//!   `nbd-server-start` with an `fd` address) and exports each local disk's top node writable
//!   (`block-export-add`, the export named after the disk). QEMU activates an exported node
//!   of an incoming VM itself. `nbd-server-stop` once the incoming migration is over.
//! - Source (`migrate` with `blockTarget`): an NBD client node per disk (`blockdev-add`) and a
//!   `blockdev-mirror` to it (`sync: top` over a containerDisk's base, `full` otherwise). When
//!   every job is ready the guest memory follows, with QEMU's `pause-before-switchover`: at
//!   `pre-switchover` the guest is stopped and its disks not yet handed over, so each ready
//!   job is cancelled gently (`block-job-cancel` without `force`: it copies what is left and
//!   ends, leaving the target a consistent copy — libvirt's sequence), then
//!   `migrate-continue`. On failure or cancel the jobs are cancelled with `force` and the
//!   nodes removed: the source goes on as before.
//!
//! QMP names: job `mirror-<disk>`, export `export-<disk>`, NBD client node `mig-nbd-<i>`
//! (node names are limited to 31 bytes, disk names are not). Disk names are DNS-1123 labels
//! (`machine::disks`), and every id is checked again here.

use crate::launcher::Vm;
use crate::machine::{DiskMigration, MachineSpec, MirrorSync};
use crate::qemu::opts::is_qemu_id;
use crate::qmp::{BlockJobInfo, QmpError};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The name of the NBD listener's descriptor in QEMU (`getfd`).
pub const NBD_LISTENER_FD: &str = "migration-nbd";

/// A disk a live migration copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalDisk {
    pub name: String,
    pub sync: MirrorSync,
}

/// The disks of `spec` that are copied ([`DiskMigration::Copy`]), in spec order.
pub fn local_disks(spec: &MachineSpec) -> Vec<LocalDisk> {
    spec.disks
        .iter()
        .filter_map(|d| match d.migration {
            DiskMigration::Copy(sync) => Some(LocalDisk {
                name: d.name.clone(),
                sync,
            }),
            _ => None,
        })
        .collect()
}

/// A disk name that cannot make a QMP id (it passed `machine::disks`' DNS-1123 check, so this
/// is defence in depth).
#[derive(Debug, thiserror::Error)]
#[error("disk {0:?} cannot name a QEMU job or export ([A-Za-z][A-Za-z0-9_.-]*)")]
pub struct BadDiskName(pub String);

fn id(prefix: &str, disk: &str) -> Result<String, BadDiskName> {
    let id = format!("{prefix}-{disk}");
    if is_qemu_id(&id) && !disk.is_empty() {
        Ok(id)
    } else {
        Err(BadDiskName(disk.to_string()))
    }
}

pub fn job_id(disk: &str) -> Result<String, BadDiskName> {
    id("mirror", disk)
}

pub fn export_id(disk: &str) -> Result<String, BadDiskName> {
    id("export", disk)
}

/// The NBD client node of the `index`th copied disk.
pub fn nbd_node(index: usize) -> String {
    format!("mig-nbd-{index}")
}

/// `nbd-server-start` on the descriptor handed over as [`NBD_LISTENER_FD`].
pub fn nbd_server_start_args() -> Value {
    json!({ "addr": { "type": "fd", "data": { "str": NBD_LISTENER_FD } } })
}

/// `block-export-add`: `node` (the disk's top node, from `query-block`) exported writable
/// under the disk's name.
pub fn export_args(disk: &str, node: &str) -> Result<Value, BadDiskName> {
    Ok(json!({
        "type": "nbd",
        "id": export_id(disk)?,
        "node-name": node,
        "name": disk,
        "writable": true,
    }))
}

/// `blockdev-add` of the NBD client node that writes to the target's export of `disk`. The
/// address is a typed IP and port (`blockTarget`), never a string to parse.
pub fn nbd_client_args(index: usize, to: SocketAddr, disk: &str) -> Value {
    json!({
        "driver": "nbd",
        "node-name": nbd_node(index),
        "server": { "type": "inet", "host": to.ip().to_string(), "port": to.port().to_string() },
        "export": disk,
    })
}

/// `blockdev-mirror` of `device` (the disk's top node) to the NBD client node. `speed`: bytes
/// per second, 0 for no limit (`bandwidthPerMigration` applies to the disks too, as in
/// libvirt). Not dismissed automatically, so a job that failed is seen with its error.
pub fn mirror_args(
    disk: &LocalDisk,
    index: usize,
    device: &str,
    speed: u64,
) -> Result<Value, BadDiskName> {
    Ok(json!({
        "job-id": job_id(&disk.name)?,
        "device": device,
        "target": nbd_node(index),
        "sync": disk.sync.as_str(),
        "speed": speed,
        "auto-finalize": true,
        "auto-dismiss": false,
    }))
}

/// The copy as a whole, from `query-block-jobs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub transferred: u64,
    pub total: u64,
    /// Every job is ready: the disks are in step.
    pub ready: bool,
    /// A job that ended on its own (an error, or gone): the disk and why.
    pub failed: Option<(String, String)>,
}

/// The progress of the jobs of `disks` among `jobs`.
pub fn progress(disks: &[LocalDisk], jobs: &[BlockJobInfo]) -> Progress {
    let mut p = Progress {
        ready: true,
        ..Default::default()
    };
    for d in disks {
        let job = job_id(&d.name).ok();
        let Some(j) = jobs.iter().find(|j| Some(&j.device) == job.as_ref()) else {
            p.ready = false;
            p.failed
                .get_or_insert((d.name.clone(), "its mirror job is gone".into()));
            continue;
        };
        p.transferred += j.offset;
        p.total += j.len;
        p.ready &= j.ready;
        if matches!(j.status.as_str(), "concluded" | "null" | "aborting") {
            let why = j
                .error
                .clone()
                .unwrap_or_else(|| format!("its mirror job ended ({})", j.status));
            p.failed.get_or_insert((d.name.clone(), why));
        }
    }
    p
}

/// How often block jobs are looked at while they finish.
const JOB_POLL: Duration = Duration::from_millis(100);

impl Vm {
    /// Target: serve the local disks over NBD on `ip`. Returns the address and the export
    /// names; `None` when the VMI has no local disk.
    pub(crate) async fn serve_local_disks(
        &self,
        ip: IpAddr,
    ) -> Result<Option<(SocketAddr, Vec<String>)>, ServeError> {
        let disks = local_disks(&self.spec);
        if disks.is_empty() {
            return Ok(None);
        }
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .map_err(|e| ServeError::Bind(SocketAddr::new(ip, 0), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServeError::Bind(SocketAddr::new(ip, 0), e))?;
        {
            use std::os::fd::AsFd;
            self.qmp.getfd(NBD_LISTENER_FD, listener.as_fd()).await?;
        }
        // QEMU holds its own copy of the socket now.
        drop(listener);
        self.qmp
            .command("nbd-server-start", nbd_server_start_args())
            .await?;
        let exported = async {
            let nodes = self.qmp.query_block().await?;
            for d in &disks {
                let device = crate::qemu::disks::drive_id(&d.name);
                let node = nodes
                    .iter()
                    .find(|b| b.device == device)
                    .and_then(|b| b.inserted.as_ref())
                    .ok_or_else(|| ServeError::NoNode(d.name.clone()))?;
                self.qmp
                    .command("block-export-add", export_args(&d.name, &node.node_name)?)
                    .await
                    .map_err(|e| ServeError::Disk(d.name.clone(), e))?;
            }
            Ok::<_, ServeError>(())
        }
        .await;
        if let Err(e) = exported {
            self.stop_nbd_server().await;
            return Err(e);
        }
        tracing::info!(vmi = %self.spec.vmi, %addr, disks = disks.len(), "serving the local disks for the incoming migration");
        Ok(Some((addr, disks.into_iter().map(|d| d.name).collect())))
    }

    /// Target: the NBD server is no longer needed (the incoming migration is over).
    pub(crate) async fn stop_nbd_server(&self) {
        if let Err(e) = self.qmp.nbd_server_stop().await {
            tracing::warn!(error = %e, "nbd-server-stop");
        }
    }

    /// Source: an NBD client node and a mirror job per disk, to `to`. Undoes what it did
    /// when one fails.
    pub(crate) async fn start_mirrors(
        &self,
        disks: &[LocalDisk],
        to: SocketAddr,
        speed: u64,
    ) -> Result<(), ServeError> {
        let nodes = self.qmp.query_block().await?;
        let mut started = 0;
        let mut result = Ok(());
        for (i, d) in disks.iter().enumerate() {
            let device = crate::qemu::disks::drive_id(&d.name);
            let Some(node) = nodes
                .iter()
                .find(|b| b.device == device)
                .and_then(|b| b.inserted.as_ref())
            else {
                result = Err(ServeError::NoNode(d.name.clone()));
                break;
            };
            let args = match mirror_args(d, i, &node.node_name, speed) {
                Ok(a) => a,
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            };
            if let Err(e) = self.qmp.blockdev_add(nbd_client_args(i, to, &d.name)).await {
                result = Err(ServeError::Disk(d.name.clone(), e));
                break;
            }
            started = i + 1;
            if let Err(e) = self.qmp.command("blockdev-mirror", args).await {
                result = Err(ServeError::Disk(d.name.clone(), e));
                break;
            }
        }
        if result.is_err() {
            self.drop_mirrors(&disks[..started]).await;
        }
        result
    }

    /// Source: how the copy goes.
    pub(crate) async fn mirror_progress(&self, disks: &[LocalDisk]) -> Result<Progress, QmpError> {
        Ok(progress(disks, &self.qmp.query_block_jobs().await?))
    }

    /// Source, failure or cancel: cancel the jobs at once (`force`), wait until they are over
    /// and remove the NBD client nodes. Best effort: what cannot be undone is logged.
    pub(crate) async fn drop_mirrors(&self, disks: &[LocalDisk]) {
        for d in disks {
            if let Ok(job) = job_id(&d.name) {
                // A job that is over already answers an error here: nothing to cancel.
                let _ = self
                    .qmp
                    .command("block-job-cancel", json!({ "device": job, "force": true }))
                    .await;
            }
        }
        if let Err(e) = self.wait_jobs_over(disks, Duration::from_secs(30)).await {
            tracing::warn!(error = %e, "cancelling the disk copies");
        }
        for i in 0..disks.len() {
            if let Err(e) = self.qmp.blockdev_del(&nbd_node(i)).await {
                tracing::debug!(error = %e, "blockdev-del of the NBD client node");
            }
        }
    }

    /// Source, at `pre-switchover` (the guest stopped): end each ready job gently, so it
    /// copies what is left and leaves the target a consistent copy; then remove the NBD
    /// client nodes. Fails naming the disk when a job ends with an error.
    pub(crate) async fn finish_mirrors(
        &self,
        disks: &[LocalDisk],
        within: Duration,
    ) -> Result<(), String> {
        for d in disks {
            let job = job_id(&d.name).map_err(|e| e.to_string())?;
            self.qmp
                .command("block-job-cancel", json!({ "device": job }))
                .await
                .map_err(|e| format!("finishing the copy of disk {}: {e}", d.name))?;
        }
        let errors = self
            .wait_jobs_over(disks, within)
            .await
            .map_err(|e| format!("finishing the disk copies: {e}"))?;
        if let Some((disk, why)) = errors.into_iter().next() {
            return Err(format!("copying disk {disk} failed: {why}"));
        }
        for i in 0..disks.len() {
            if let Err(e) = self.qmp.blockdev_del(&nbd_node(i)).await {
                tracing::warn!(error = %e, "blockdev-del of the NBD client node");
            }
        }
        Ok(())
    }

    /// Wait until the jobs of `disks` are concluded (then dismiss them) or gone; the errors
    /// the concluded ones report, by disk.
    async fn wait_jobs_over(
        &self,
        disks: &[LocalDisk],
        within: Duration,
    ) -> Result<Vec<(String, String)>, QmpError> {
        let ids: Vec<(String, String)> = disks
            .iter()
            .filter_map(|d| job_id(&d.name).ok().map(|j| (d.name.clone(), j)))
            .collect();
        let t = std::time::Instant::now();
        let mut errors = Vec::new();
        loop {
            let jobs = self.qmp.query_block_jobs().await?;
            let mut running = false;
            for (disk, id) in &ids {
                let Some(j) = jobs.iter().find(|j| &j.device == id) else {
                    continue;
                };
                if j.status == "concluded" {
                    if let Some(e) = &j.error {
                        errors.push((disk.clone(), e.clone()));
                    }
                    let _ = self.qmp.command("job-dismiss", json!({ "id": id })).await;
                } else {
                    running = true;
                }
            }
            if !running {
                return Ok(errors);
            }
            if t.elapsed() > within {
                return Err(QmpError::Timeout {
                    command: "block-job-cancel".into(),
                    after: within,
                });
            }
            tokio::time::sleep(JOB_POLL).await;
        }
    }
}

/// Why local disks could not be served or copied.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding the NBD listener on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("QEMU has no block node for disk {0:?}")]
    NoNode(String),
    #[error("disk {0}: {1}")]
    Disk(String, #[source] QmpError),
    #[error(transparent)]
    Name(#[from] BadDiskName),
    #[error(transparent)]
    Qmp(#[from] QmpError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{DiskSource, DiskSpec};

    #[test]
    fn qmp_arguments_carry_typed_addresses_and_ids_made_of_disk_names() {
        let d = LocalDisk {
            name: "scratch".into(),
            sync: MirrorSync::Full,
        };
        assert_eq!(
            mirror_args(&d, 0, "#block149", 1 << 20).unwrap(),
            json!({"job-id": "mirror-scratch", "device": "#block149", "target": "mig-nbd-0",
                   "sync": "full", "speed": 1048576, "auto-finalize": true, "auto-dismiss": false})
        );
        let top = LocalDisk {
            name: "0disk".into(),
            sync: MirrorSync::Top,
        };
        // A DNS-1123 label may start with a digit; the prefix makes it a QEMU id.
        assert_eq!(
            mirror_args(&top, 3, "n", 0).unwrap()["job-id"],
            "mirror-0disk"
        );
        assert_eq!(mirror_args(&top, 3, "n", 0).unwrap()["sync"], "top");
        assert_eq!(
            nbd_client_args(1, "[fd00::2]:10809".parse().unwrap(), "scratch"),
            json!({"driver": "nbd", "node-name": "mig-nbd-1",
                   "server": {"type": "inet", "host": "fd00::2", "port": "10809"},
                   "export": "scratch"})
        );
        assert_eq!(
            export_args("scratch", "#block101").unwrap(),
            json!({"type": "nbd", "id": "export-scratch", "node-name": "#block101",
                   "name": "scratch", "writable": true})
        );
        assert_eq!(
            nbd_server_start_args(),
            json!({"addr": {"type": "fd", "data": {"str": "migration-nbd"}}})
        );
        // QEMU's node names are limited to 31 bytes.
        assert!(nbd_node(usize::MAX).len() <= 31);
    }

    #[test]
    fn names_that_are_no_qemu_id_never_reach_qmp() {
        for bad in ["", "a,b", "a b", "x\"y", "é", "a\nb"] {
            assert!(job_id(bad).is_err(), "{bad:?}");
            assert!(export_args(bad, "n").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_disks_the_guest_writes_on_this_node_are_copied() {
        let mut spec = crate::qemu::test_spec();
        let disk = |name: &str, migration| DiskSpec {
            name: name.into(),
            device: crate::machine::DiskDevice::Disk,
            bus: crate::machine::Bus::Virtio,
            boot_order: None,
            cache: None,
            io: None,
            readonly: false,
            format: crate::machine::DiskFormat::Qcow2,
            path: "/d/x".into(),
            serial: None,
            source: DiskSource::File,
            migration,
        };
        spec.disks = vec![
            disk("pvc", DiskMigration::Shared),
            disk("root", DiskMigration::Copy(MirrorSync::Top)),
            disk("cloudinit", DiskMigration::NotCopied),
            disk("scratch", DiskMigration::Copy(MirrorSync::Full)),
        ];
        assert_eq!(
            local_disks(&spec),
            [
                LocalDisk {
                    name: "root".into(),
                    sync: MirrorSync::Top
                },
                LocalDisk {
                    name: "scratch".into(),
                    sync: MirrorSync::Full
                }
            ]
        );
    }

    #[test]
    fn progress_sums_the_jobs_and_names_a_failed_disk() {
        let disks = [
            LocalDisk {
                name: "a".into(),
                sync: MirrorSync::Full,
            },
            LocalDisk {
                name: "b".into(),
                sync: MirrorSync::Top,
            },
        ];
        let job = |id: &str, status: &str, ready, offset, len, error: Option<&str>| BlockJobInfo {
            device: id.into(),
            status: status.into(),
            ready,
            offset,
            len,
            error: error.map(Into::into),
        };
        let p = progress(
            &disks,
            &[
                job("mirror-a", "ready", true, 10, 10, None),
                job("mirror-b", "running", false, 5, 20, None),
                job("someone-else", "running", false, 100, 100, None),
            ],
        );
        assert_eq!(
            p,
            Progress {
                transferred: 15,
                total: 30,
                ready: false,
                failed: None
            }
        );
        let p = progress(
            &disks,
            &[
                job("mirror-a", "ready", true, 10, 10, None),
                job("mirror-b", "ready", true, 20, 20, None),
            ],
        );
        assert!(p.ready && p.failed.is_none(), "{p:?}");
        let p = progress(
            &disks,
            &[
                job("mirror-a", "ready", true, 10, 10, None),
                job(
                    "mirror-b",
                    "concluded",
                    false,
                    5,
                    20,
                    Some("No space left on device"),
                ),
            ],
        );
        assert_eq!(
            p.failed,
            Some(("b".into(), "No space left on device".into()))
        );
        let p = progress(&disks, &[job("mirror-a", "ready", true, 10, 10, None)]);
        assert_eq!(p.failed.map(|f| f.0), Some("b".into()));
    }
}

//! `freeze`/`unfreeze` (KubeVirt's VMI subresources, asked by the snapshot controller through
//! virt-api and the node agent): the guest's disks made consistent while their volumes are
//! snapshotted.
//!
//! - With the guest agent connected: `guest-fsfreeze-freeze` (the guest flushes and freezes
//!   its filesystems: application-consistent), thawed by `guest-fsfreeze-thaw`.
//! - Without one: QEMU's `stop`, which pauses the vCPUs and drains and flushes every block
//!   device before it returns, so the volume files hold everything the guest wrote and nothing
//!   changes them until `cont` (crash-consistent: as if the power went off at that instant).
//!   The phase is Paused, reason `Frozen`. KubeVirt instead snapshots such a guest running,
//!   "without freezing FS" (its words), which for a copying snapshotter is not even
//!   crash-consistent.
//! - A guest that is already paused is left as it is (its I/O was drained when it stopped).
//!
//! The launcher owns the end of every freeze: a timer ends it after the requested timeout, so a
//! caller that crashes between `freeze` and `unfreeze` never leaves the guest frozen.

use std::sync::Arc;
use std::time::Duration;

use crate::api::Phase;
use crate::launcher::{LaunchError, Vm};

/// How the guest is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrozenBy {
    /// `guest-fsfreeze-freeze`.
    Agent,
    /// QMP `stop` by the freeze: `cont` ends it.
    Stop,
    /// Paused before (or by its user during) the freeze: stays paused.
    AlreadyPaused,
}

/// The freeze in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    pub by: FrozenBy,
    /// [`crate::launcher::Inner::freezes`] when it began: its timer ends only this one.
    pub id: u64,
}

/// How long the guest agent may take to freeze or thaw the guest's filesystems.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

impl Vm {
    /// `freeze`: see [`crate::api::Request::Freeze`].
    pub async fn freeze(self: &Arc<Self>, unfreeze_after: Duration) -> Result<(), LaunchError> {
        // One freeze or unfreeze at a time: two freezes racing would both stop the guest.
        let _one = self.freeze_lock.lock().await;
        self.ensure_guest("cannot freeze")?;
        if self.lock().frozen.is_some() {
            return Ok(()); // the first freeze's timer stands
        }
        let agent = self.lock().state.guest_agent.is_some();
        let by = if agent {
            let frozen = match self.agent().await {
                Ok(mut a) => a
                    .execute_value("guest-fsfreeze-freeze", None, AGENT_TIMEOUT)
                    .await
                    .map_err(LaunchError::from),
                Err(e) => Err(LaunchError::from(e)),
            };
            if let Err(e) = frozen {
                // The agent may have frozen some filesystems (or all, after our timeout)
                // before it failed: nothing would thaw them, so thaw now, whatever it says.
                if let Ok(mut a) = self.agent().await {
                    let _ = a
                        .execute_value("guest-fsfreeze-thaw", None, AGENT_TIMEOUT)
                        .await;
                }
                return Err(e);
            }
            FrozenBy::Agent
        } else {
            let running = self
                .qmp
                .query_status()
                .await
                .map_err(|e| self.qmp_err(e))?
                .running;
            if running {
                // Our own STOP: reported as Frozen below, not as a pause by QEMU.
                self.lock().expected_stops += 1;
                if let Err(e) = self.qmp.stop().await {
                    let mut i = self.lock();
                    i.expected_stops = i.expected_stops.saturating_sub(1);
                    drop(i);
                    return Err(self.qmp_err(e));
                }
                self.set_phase(
                    Phase::Paused,
                    "Frozen",
                    "stopped for a snapshot (block I/O drained) until unfreeze",
                );
                FrozenBy::Stop
            } else {
                FrozenBy::AlreadyPaused
            }
        };
        let id = {
            let mut i = self.lock();
            i.freezes += 1;
            i.frozen = Some(Hold { by, id: i.freezes });
            i.freezes
        };
        tracing::info!(vmi = %self.spec.vmi, ?by, timeout_s = unfreeze_after.as_secs(), "guest frozen");
        let vm = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(unfreeze_after).await;
            // Until this freeze has ended (by a caller's unfreeze, or here): an unfreeze that
            // fails (the agent slow to thaw, a QMP error) is tried again, never given up.
            let mut retry = Duration::from_secs(1);
            loop {
                let Some(vm) = vm.upgrade() else { return };
                let ours = vm.lock().frozen.is_some_and(|h| h.id == id);
                if !ours || vm.lock().state.phase.is_final() {
                    return;
                }
                tracing::warn!(vmi = %vm.spec.vmi, "unfreeze timeout reached: unfreezing the guest");
                match vm.unfreeze().await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(vmi = %vm.spec.vmi, error = %e, retry_s = retry.as_secs(), "unfreeze at timeout failed");
                    }
                }
                drop(vm);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        });
        Ok(())
    }

    /// Refuses `what` while a freeze holds the guest: a migration would carry a frozen guest
    /// away from the timer that ends its freeze, and a memory save or dump would `cont` a
    /// guest the freeze stopped.
    pub(crate) fn ensure_not_frozen(&self, what: &'static str) -> Result<(), LaunchError> {
        let i = self.lock();
        if i.frozen.is_some() {
            return Err(LaunchError::WrongPhase(i.state.phase, what));
        }
        Ok(())
    }

    /// `unfreeze`: ends the freeze in force; nothing when there is none.
    pub async fn unfreeze(&self) -> Result<(), LaunchError> {
        let _one = self.freeze_lock.lock().await;
        let Some(hold) = self.lock().frozen.take() else {
            return Ok(());
        };
        if self.lock().state.phase.is_final() {
            return Ok(());
        }
        let r = match hold.by {
            FrozenBy::Agent => self
                .agent()
                .await?
                .execute_value("guest-fsfreeze-thaw", None, AGENT_TIMEOUT)
                .await
                .map(drop)
                .map_err(LaunchError::from),
            FrozenBy::Stop => {
                let r = self.qmp.cont().await.map_err(|e| self.qmp_err(e));
                if r.is_ok() {
                    self.set_phase(Phase::Running, "Unfrozen", "");
                }
                r
            }
            FrozenBy::AlreadyPaused => Ok(()),
        };
        if r.is_err() {
            // Still frozen: a retry (or the timer, which keeps trying) ends it.
            self.lock().frozen.get_or_insert(hold);
        }
        tracing::info!(vmi = %self.spec.vmi, by = ?hold.by, ok = r.is_ok(), "guest unfrozen");
        r
    }
}

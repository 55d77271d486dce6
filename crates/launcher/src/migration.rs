//! Live migration over QMP, KubeVirt's way (virt-launcher's `live-migration-source.go` /
//! `-target.go`, with QEMU commands where KubeVirt has libvirt calls).
//!
//! - Target: the launcher runs with `--migration-target`, so QEMU starts with the source's
//!   machine and `-incoming defer` (phase `WaitingForMigration`); `prepareMigrationTarget`
//!   sets the capabilities both ends must share and runs `migrate-incoming tcp:IP:PORT`. When
//!   QEMU reports `completed` the guest runs here: phase Running (or Paused, if it was paused
//!   at the source), reason `Migrated`. A failed incoming migration ends QEMU: Failed,
//!   `MigrationFailed`.
//! - Source: `migrate` sets capabilities and parameters from [`MigrationOptions`], runs
//!   `migrate tcp:IP:PORT` and follows `query-migrate` every [`MONITOR_PERIOD`]: progress is
//!   published ([`crate::api::Event::Migration`]), [`Convergence`] enforces KubeVirt's progress
//!   and completion timeouts (cancel, or with `allowWorkloadDisruption` post-copy / pause).
//!   On `completed` the launcher quits QEMU: phase Succeeded, reason `Migrated`, like
//!   KubeVirt's source pod. `cancelMigration` is `migrate_cancel`; the guest keeps running.
//!
//! Local disks (containerDisk overlays, emptyDisks, hostDisks, node-local volumes) are copied
//! first, over NBD ([`block`]); shared volumes are not, and what the target makes from the VMI
//! (cloud-init ISOs) is made there again. See docs/migration.md.

pub mod block;

use crate::api::migration::{failure, reason, AbortStatus, MigrationMode, MigrationOptions};
use crate::api::{MigrationRole, MigrationStatus};
use crate::launcher::{now, LaunchError, Phase, Vm};
use crate::qmp::MigrationInfo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How often the source asks QEMU how the migration goes (KubeVirt: 400 ms).
pub const MONITOR_PERIOD: Duration = Duration::from_millis(400);

/// Why a migration request cannot be honoured now.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("no migration in progress")]
    NoMigration,
    #[error("no migration has run on this launcher")]
    NeverMigrated,
    #[error("a migration is in progress: {0}")]
    InProgress(&'static str),
    #[error(
        "this launcher was not started as a migration target (launcher run --migration-target)"
    )]
    NotTarget,
    #[error("this launcher is a migration target: its guest has not arrived yet")]
    IsTarget,
    #[error("the migration target already listens on {0}")]
    AlreadyListening(SocketAddr),
    #[error("the VM is {0:?}: only a Running or Paused guest can migrate")]
    NotMigratable(Phase),
    /// What the target could not start with: it is started from the VMI spec, not from the
    /// source's live changes.
    #[error("{0} changed since start: the target would not match (restart the VM to apply it before migrating)")]
    Changed(&'static str),
    #[error("QEMU reported no TCP address for the incoming migration: {0:?}")]
    NoListenAddress(Box<MigrationInfo>),
    /// `migrate` without `blockTarget` for a VMI whose disks must be copied.
    #[error("params.blockTarget is required: disk(s) {0} are on this node only and are copied to the target's NBD server (the blockAddress of its prepareMigrationTarget reply)")]
    NoBlockTarget(String),
    /// `migrate` with `blockTarget` for a VMI that has nothing to copy.
    #[error("params.blockTarget: this VMI has no local disk to copy (its disks are shared or made again by the target)")]
    NothingToCopy,
    /// The local disks could not be served (target) or their copy started (source).
    #[error("block migration: {0}")]
    Block(#[from] block::ServeError),
}

/// `migrate-set-capabilities` for either end: `events` (MIGRATION events), and what the two
/// ends must agree on (`return-path`, `multifd`, `postcopy-ram`). `return-path` lets the
/// target tell the source that it could not load the guest: without it the source would
/// count a migration as completed (and end its QEMU) that the target refused, and the guest
/// would be gone from both. `auto-converge` only matters at the source,
/// and so does `pause-before-switchover`, on when disks are copied (`block`): the source
/// stops at `pre-switchover` so the disk copies end while the guest is stopped.
pub fn capabilities(o: &MigrationOptions, role: MigrationRole, block: bool) -> Value {
    let mut caps = vec![
        ("events", true),
        ("return-path", true),
        ("multifd", o.parallel_migration_threads.is_some()),
        ("postcopy-ram", o.allow_post_copy),
    ];
    if role == MigrationRole::Source {
        caps.push(("auto-converge", o.allow_auto_converge));
        caps.push(("pause-before-switchover", block));
    }
    Value::Array(
        caps.into_iter()
            .map(|(c, on)| json!({ "capability": c, "state": on }))
            .collect(),
    )
}

/// No bandwidth limit: QEMU's default is 32 MiB/s, so "unlimited" must be said (libvirt sends
/// its maximum too).
pub const UNLIMITED_BANDWIDTH: u64 = i64::MAX as u64;

/// `migrate-set-parameters` at the source: `max-bandwidth` (bytes/s; 0 or absent: no limit,
/// KubeVirt's default), `downtime-limit` (ms), `multifd-channels`.
pub fn source_parameters(o: &MigrationOptions) -> Value {
    let bandwidth = match o.bandwidth_per_migration {
        None | Some(0) => UNLIMITED_BANDWIDTH,
        Some(b) => b,
    };
    let mut p = json!({ "max-bandwidth": bandwidth });
    if let Some(ms) = o.max_downtime_ms {
        p["downtime-limit"] = json!(ms);
    }
    if let Some(n) = o.parallel_migration_threads {
        p["multifd-channels"] = json!(n);
    }
    p
}

/// `migrate-set-parameters` at the target: only the multifd channel count must match.
pub fn target_parameters(o: &MigrationOptions) -> Option<Value> {
    o.parallel_migration_threads
        .map(|n| json!({ "multifd-channels": n }))
}

/// QEMU's migration URI for a typed address (IPv6 in brackets, as `SocketAddr` prints it).
pub fn uri(addr: &SocketAddr) -> String {
    format!("tcp:{addr}")
}

/// The mirror jobs' `speed`: `bandwidthPerMigration` bytes/s, 0 (QEMU's "no limit") when
/// absent or 0.
pub fn mirror_speed(o: &MigrationOptions) -> u64 {
    o.bandwidth_per_migration.unwrap_or(0)
}

/// The TCP address an incoming migration listens on, from `query-migrate`'s `socket-address`
/// (the real port when port 0 was asked for).
pub fn listening_address(info: &MigrationInfo, asked: SocketAddr) -> Option<SocketAddr> {
    info.socket_address
        .iter()
        .filter(|a| a.r#type == "inet")
        .find_map(|a| {
            let port: u16 = a.port.parse().ok()?;
            let ip = a.host.trim_start_matches('[').trim_end_matches(']');
            let ip = ip.parse().unwrap_or(asked.ip());
            Some(SocketAddr::new(ip, port))
        })
}

/// QEMU's downtime and total time of a completed migration, in ms, once it has computed them:
/// QEMU 7.2 sets the status to `completed` a moment before it records the two (they read 0
/// until then, and a `query-migrate` in between sees that), so a total time of 0 is "not
/// yet", never an answer.
pub fn completion_times(info: &MigrationInfo) -> Option<(u64, u64)> {
    if info.status.as_deref() != Some("completed") {
        return None;
    }
    match (info.downtime, info.total_time) {
        (Some(d), Some(t)) if t > 0 => Some((d, t)),
        _ => None,
    }
}

/// How long the source waits for [`completion_times`] before it ends its QEMU without them.
const COMPLETION_TIMES_WAIT: Duration = Duration::from_millis(500);

/// What the source does after one look at the migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// `migrate-start-postcopy` (completion timeout, post-copy and disruption allowed).
    StartPostCopy,
    /// Pause the guest so the migration converges (completion timeout, disruption allowed,
    /// no post-copy); the completion time allowed doubles, as in KubeVirt.
    PauseGuest,
    /// `migrate_cancel`, with KubeVirt's failure reason.
    Abort(String),
}

/// KubeVirt's "legacy convergence" of the migration monitor, as a pure state machine over
/// (seconds since start, bytes remaining) samples: progress is the remaining data going
/// below its lowest mark; no progress for `progressTimeout` seconds aborts; past the
/// acceptable completion time the migration is assisted (post-copy or pause) when workload
/// disruption is allowed, else aborted. Nothing is decided once in post-copy: the guest
/// runs at the target then, and cancelling would lose it.
#[derive(Clone, Debug)]
pub struct Convergence {
    progress_timeout: u64,
    acceptable_completion: u64,
    allow_post_copy: bool,
    allow_disruption: bool,
    last_progress: f64,
    watermark: Option<u64>,
    mode: MigrationMode,
    aborting: bool,
}

impl Convergence {
    /// `data_bytes`: the guest memory, plus the copied disks under block migration.
    pub fn new(o: &MigrationOptions, data_bytes: u64) -> Convergence {
        Convergence {
            progress_timeout: o.progress_timeout(),
            acceptable_completion: o.acceptable_completion_seconds(data_bytes),
            allow_post_copy: o.allow_post_copy,
            allow_disruption: o.allow_workload_disruption(),
            last_progress: 0.0,
            watermark: None,
            mode: MigrationMode::PreCopy,
            aborting: false,
        }
    }

    pub fn mode(&self) -> MigrationMode {
        self.mode
    }

    /// A new phase (guest memory after the disks) starts at `elapsed` seconds: its progress is
    /// measured from there, against a remaining amount of its own. The completion time still
    /// counts from the start of the migration.
    pub fn new_phase(&mut self, elapsed: f64) {
        self.last_progress = elapsed;
        self.watermark = None;
    }

    /// One sample: `elapsed` seconds since the migration started, `remaining` bytes (when
    /// QEMU reported them).
    pub fn step(&mut self, elapsed: f64, remaining: Option<u64>) -> Action {
        if let Some(r) = remaining {
            if self.watermark.is_none_or(|w| r < w) {
                self.last_progress = elapsed;
            }
            self.watermark = Some(r);
        }
        if self.mode == MigrationMode::PostCopy || self.aborting {
            return Action::Continue;
        }
        let over_time =
            self.acceptable_completion != 0 && elapsed > self.acceptable_completion as f64;
        if over_time && self.allow_disruption && self.mode != MigrationMode::Paused {
            if self.allow_post_copy {
                self.mode = MigrationMode::PostCopy;
                return Action::StartPostCopy;
            }
            self.mode = MigrationMode::Paused;
            self.acceptable_completion = self.acceptable_completion.saturating_mul(2);
            return Action::PauseGuest;
        }
        let stuck = elapsed - self.last_progress;
        if self.progress_timeout != 0 && stuck > self.progress_timeout as f64 {
            self.aborting = true;
            return Action::Abort(format!(
                "{}: stuck for {} seconds (progressTimeout {})",
                failure::ABORTED,
                stuck as u64,
                self.progress_timeout
            ));
        }
        if over_time {
            self.aborting = true;
            return Action::Abort(format!(
                "{}: not completed after {} seconds (completionTimeoutPerGiB)",
                failure::ABORTED,
                self.acceptable_completion
            ));
        }
        Action::Continue
    }
}

impl Vm {
    fn migration_error(&self, e: crate::qmp::QmpError) -> LaunchError {
        self.qmp_err(e)
    }

    /// Update `state.migration` (and publish it, as a state change and an
    /// [`crate::api::Event::Migration`]) when `f` changed it.
    pub(crate) fn update_migration(&self, f: impl FnOnce(&mut MigrationStatus)) {
        let changed = {
            let mut i = self.lock();
            let Some(m) = i.state.migration.as_mut() else {
                return;
            };
            let before = m.clone();
            f(m);
            let changed = (*m != before).then(|| m.clone());
            if changed.is_some() {
                i.state.timestamp = now();
            }
            changed
        };
        if let Some(m) = changed {
            self.publish();
            let _ = self.migration_events.send(m);
        }
    }

    /// The last migration's status.
    pub fn migration_status(&self) -> Result<MigrationStatus, LaunchError> {
        self.state()
            .migration
            .ok_or(MigrationError::NeverMigrated.into())
    }

    /// Target: listen for the incoming migration on `listen`.
    pub async fn prepare_migration_target(
        &self,
        listen: SocketAddr,
        options: &MigrationOptions,
    ) -> Result<MigrationStatus, LaunchError> {
        let _one = self.migration_lock.lock().await;
        let (target, phase, address) = {
            let i = self.lock();
            (
                i.target,
                i.state.phase,
                i.state.migration.as_ref().and_then(|m| m.address),
            )
        };
        if !target {
            return Err(MigrationError::NotTarget.into());
        }
        if phase != Phase::WaitingForMigration {
            return Err(LaunchError::WrongPhase(
                phase,
                "the incoming migration is over",
            ));
        }
        if let Some(a) = address {
            return Err(MigrationError::AlreadyListening(a).into());
        }
        let q = &self.qmp;
        q.migrate_set_capabilities(capabilities(options, MigrationRole::Target, false))
            .await
            .map_err(|e| self.migration_error(e))?;
        if let Some(p) = target_parameters(options) {
            q.migrate_set_parameters(p)
                .await
                .map_err(|e| self.migration_error(e))?;
        }
        // The local disks first: the source copies them before it sends the guest memory.
        let served = self
            .serve_local_disks(listen.ip())
            .await
            .map_err(MigrationError::from)?;
        let listening = async {
            q.migrate_incoming(&uri(&listen)).await?;
            q.query_migrate().await
        }
        .await;
        let info = match listening {
            Ok(info) => info,
            Err(e) => {
                if served.is_some() {
                    self.stop_nbd_server().await;
                }
                return Err(self.migration_error(e));
            }
        };
        let actual = listening_address(&info, listen)
            .ok_or_else(|| MigrationError::NoListenAddress(Box::new(info.clone())))?;
        tracing::info!(vmi = %self.spec.vmi, %actual, "waiting for the incoming migration");
        let (block_address, block_exports) = served.unzip();
        self.update_migration(|m| {
            m.address = Some(actual);
            m.block_address = block_address;
            m.block_exports = block_exports.unwrap_or_default();
            m.qemu_status = info.status.clone().unwrap_or_else(|| "setup".into());
            m.start_timestamp = now();
        });
        self.migration_status()
    }

    /// A MIGRATION event. The target's outcome is decided here; the source's monitor task
    /// follows its own migration through `query-migrate`.
    pub(crate) async fn on_migration_event(&self, status: &str) {
        let (target, nbd) = {
            let i = self.lock();
            (
                i.target && i.state.phase == Phase::WaitingForMigration,
                i.state
                    .migration
                    .as_ref()
                    .is_some_and(|m| m.block_address.is_some()),
            )
        };
        if !target {
            return;
        }
        if nbd && matches!(status, "completed" | "failed" | "cancelled") {
            // The source ended its disk copies before the switch-over.
            self.stop_nbd_server().await;
        }
        match status {
            "completed" => {
                // QEMU has resumed the guest if it ran at the source (no -S at the target).
                let running = match self.qmp.query_status().await {
                    Ok(s) => s.running,
                    Err(e) => {
                        tracing::warn!(error = %e, "query-status after the incoming migration");
                        true
                    }
                };
                let stats = self.qmp.query_migrate().await.ok().and_then(|i| i.ram);
                self.update_migration(|m| {
                    m.qemu_status = status.into();
                    m.completed = true;
                    m.end_timestamp = Some(now());
                    if let Some(r) = &stats {
                        m.transferred_bytes = r.transferred;
                        m.total_bytes = r.total;
                        m.remaining_bytes = r.remaining;
                    }
                });
                if running {
                    self.set_phase(Phase::Running, reason::MIGRATED, "the guest migrated here");
                } else {
                    self.set_phase(
                        Phase::Paused,
                        reason::MIGRATED,
                        "the guest migrated here paused, as it was at the source",
                    );
                }
            }
            "failed" => self.update_migration(|m| {
                m.qemu_status = status.into();
                m.failed = true;
                m.failure_reason = "the incoming migration failed (see qemu.log)".into();
                m.end_timestamp = Some(now());
            }),
            s => self.update_migration(|m| m.qemu_status = s.into()),
        }
    }

    /// The machine is still the one started from the spec: what a migration target or a
    /// restore is made from. CPU and memory hotplug and hotplugged volumes are not.
    pub(crate) async fn check_unchanged(&self) -> Result<(), LaunchError> {
        let st = self.state();
        if st
            .cpu_topology
            .is_some_and(|t| t.sockets != self.spec.cpu.sockets)
        {
            return Err(MigrationError::Changed("spec.domain.cpu.sockets (CPU hotplug)").into());
        }
        if st
            .memory
            .is_some_and(|m| m.guest_requested != self.spec.memory.bytes)
        {
            return Err(
                MigrationError::Changed("spec.domain.memory.guest (memory hotplug)").into(),
            );
        }
        if self.hotplug.lock().await.any_hot_added() {
            return Err(MigrationError::Changed("the hotplugged volumes").into());
        }
        Ok(())
    }

    /// Source: start the migration to `target`, then follow it in the background.
    pub async fn migrate(
        self: &Arc<Self>,
        target: SocketAddr,
        block_target: Option<SocketAddr>,
        options: &MigrationOptions,
    ) -> Result<MigrationStatus, LaunchError> {
        let _one = self.migration_lock.lock().await;
        let st = self.state();
        if self.lock().target && st.phase == Phase::WaitingForMigration {
            return Err(MigrationError::IsTarget.into());
        }
        if !matches!(st.phase, Phase::Running | Phase::Paused) {
            return Err(MigrationError::NotMigratable(st.phase).into());
        }
        if self.lock().migrating {
            return Err(MigrationError::InProgress("cannot start another").into());
        }
        self.ensure_not_frozen("cannot migrate a guest frozen for a snapshot")?;
        self.check_unchanged().await?;
        let disks = block::local_disks(&self.spec);
        match (disks.is_empty(), block_target) {
            (false, None) => {
                let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
                return Err(MigrationError::NoBlockTarget(names.join(", ")).into());
            }
            (true, Some(_)) => return Err(MigrationError::NothingToCopy.into()),
            _ => {}
        }
        let q = &self.qmp;
        q.migrate_set_capabilities(capabilities(
            options,
            MigrationRole::Source,
            !disks.is_empty(),
        ))
        .await
        .map_err(|e| self.migration_error(e))?;
        q.migrate_set_parameters(source_parameters(options))
            .await
            .map_err(|e| self.migration_error(e))?;
        {
            let mut i = self.lock();
            i.migrating = true;
            i.cancel_reason = None;
            let mut m = MigrationStatus::new(MigrationRole::Source, Some(target), now());
            m.block_address = block_target;
            m.block_exports = disks.iter().map(|d| d.name.clone()).collect();
            i.state.migration = Some(m);
        }
        // With local disks, their copy starts here and the guest memory follows once they
        // are in step (the monitor); without, the guest memory goes at once.
        let started = match block_target {
            Some(to) => self
                .start_mirrors(&disks, to, mirror_speed(options))
                .await
                .map_err(|e| LaunchError::from(MigrationError::from(e))),
            None => q
                .migrate(&uri(&target))
                .await
                .map_err(|e| self.migration_error(e)),
        };
        if let Err(e) = started {
            self.fail_migration(e.to_string());
            return Err(e);
        }
        tracing::info!(vmi = %self.spec.vmi, %target, ?block_target, "migration started");
        self.publish();
        tokio::spawn(self.clone().monitor(target, disks, options.clone()));
        self.migration_status()
    }

    /// The outgoing migration is over, failed with `reason` (a cancel's, if one was asked).
    fn fail_migration(&self, reason: String) {
        let cancel = {
            let mut i = self.lock();
            i.migrating = false;
            i.cancel_reason.clone()
        };
        self.update_migration(|m| {
            m.failed = true;
            m.failure_reason = cancel.clone().unwrap_or(reason.clone());
            m.end_timestamp = Some(now());
            if cancel.is_some() {
                m.abort_status = Some(AbortStatus::Succeeded);
            }
        });
        tracing::warn!(vmi = %self.spec.vmi, "migration failed: {reason}");
    }

    /// Source: copy the local disks until every one is in step with the target (then the
    /// guest's writes reach both), following the timeouts; the failure reason otherwise.
    async fn copy_disks(
        &self,
        disks: &[block::LocalDisk],
        options: &MigrationOptions,
        data_bytes: u64,
        start: std::time::Instant,
    ) -> Result<(), String> {
        // Nothing to assist with before the guest memory moves: only the aborts apply.
        let only_aborts = MigrationOptions {
            allow_post_copy: false,
            allow_workload_disruption: Some(false),
            ..options.clone()
        };
        let mut conv = Convergence::new(&only_aborts, data_bytes);
        loop {
            tokio::time::sleep(MONITOR_PERIOD).await;
            if let Some(why) = self.lock().cancel_reason.clone() {
                return Err(why);
            }
            let p = self
                .mirror_progress(disks)
                .await
                .map_err(|e| format!("following the disk copies: {e}"))?;
            self.update_migration(|m| {
                m.block_transferred_bytes = p.transferred;
                m.block_total_bytes = p.total;
                m.block_ready = p.ready && p.failed.is_none();
            });
            if let Some((disk, why)) = p.failed {
                return Err(format!("copying disk {disk} failed: {why}"));
            }
            if p.ready {
                return Ok(());
            }
            let remaining = p.total.saturating_sub(p.transferred);
            if let Action::Abort(why) = conv.step(start.elapsed().as_secs_f64(), Some(remaining)) {
                self.lock().cancel_reason.get_or_insert(why.clone());
                return Err(why);
            }
        }
    }

    /// Source: cancel the migration in progress.
    pub async fn cancel_migration(&self) -> Result<MigrationStatus, LaunchError> {
        if !self.lock().migrating {
            return Err(MigrationError::NoMigration.into());
        }
        self.abort(failure::ABORTED.to_string()).await?;
        self.migration_status()
    }

    async fn abort(&self, why: String) -> Result<(), LaunchError> {
        tracing::warn!(vmi = %self.spec.vmi, "aborting the migration: {why}");
        self.lock().cancel_reason.get_or_insert(why);
        self.update_migration(|m| m.abort_status = Some(AbortStatus::Aborting));
        if let Err(e) = self.qmp.migrate_cancel().await {
            self.update_migration(|m| m.abort_status = Some(AbortStatus::Failed));
            return Err(self.migration_error(e));
        }
        Ok(())
    }

    /// The completed migration's downtime and total time, asking QEMU again for a moment if
    /// its first `completed` answer came before it had them ([`completion_times`]).
    async fn completion_times(&self, first: &MigrationInfo) -> Option<(u64, u64)> {
        let t = std::time::Instant::now();
        let mut info = first.clone();
        loop {
            if let Some(times) = completion_times(&info) {
                return Some(times);
            }
            if t.elapsed() > COMPLETION_TIMES_WAIT {
                tracing::warn!(vmi = %self.spec.vmi, "QEMU reported no downtime for the completed migration");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            info = self.qmp.query_migrate().await.ok()?;
        }
    }

    /// The source's migration monitor: the disk copies (when there are local disks), then the
    /// guest memory: progress, timeouts, outcome.
    async fn monitor(
        self: Arc<Self>,
        target: SocketAddr,
        disks: Vec<block::LocalDisk>,
        options: MigrationOptions,
    ) {
        let start = std::time::Instant::now();
        // KubeVirt's acceptable completion time counts the copied disks with the memory.
        let mut data_bytes = self.spec.memory.bytes;
        if !disks.is_empty() {
            if let Ok(p) = self.mirror_progress(&disks).await {
                data_bytes = data_bytes.saturating_add(p.total);
            }
            if let Err(why) = self.copy_disks(&disks, &options, data_bytes, start).await {
                self.drop_mirrors(&disks).await;
                self.fail_migration(why);
                return;
            }
            tracing::info!(vmi = %self.spec.vmi, "the local disks are in step; sending the guest memory");
            if let Err(e) = self.qmp.migrate(&uri(&target)).await {
                self.drop_mirrors(&disks).await;
                self.fail_migration(e.to_string());
                return;
            }
            // A cancel that came while `migrate` was sent.
            if self.lock().cancel_reason.is_some() {
                if let Err(e) = self.qmp.migrate_cancel().await {
                    tracing::warn!(error = %e, "migrate_cancel");
                }
            }
        }
        let mut conv = Convergence::new(&options, data_bytes);
        conv.new_phase(start.elapsed().as_secs_f64());
        let mut paused_by_us = false;
        let mut switched_over = false;
        let mut block_failure: Option<String> = None;
        loop {
            tokio::time::sleep(MONITOR_PERIOD).await;
            let info = match self.qmp.query_migrate().await {
                Ok(i) => i,
                Err(e) => {
                    // QEMU is gone: on_exit has the last word.
                    tracing::warn!(error = %e, "query-migrate");
                    self.lock().migrating = false;
                    return;
                }
            };
            let status = info.status.clone().unwrap_or_default();
            let ram = info.ram.clone();
            self.update_migration(|m| {
                m.qemu_status = status.clone();
                if let Some(r) = &ram {
                    m.transferred_bytes = r.transferred;
                    m.remaining_bytes = r.remaining;
                    m.total_bytes = r.total;
                }
                if status == "postcopy-active" {
                    m.mode = MigrationMode::PostCopy;
                }
            });
            match status.as_str() {
                "completed" => {
                    {
                        let mut i = self.lock();
                        i.migrated = true;
                    }
                    let times = self.completion_times(&info).await;
                    self.update_migration(|m| {
                        m.completed = true;
                        m.remaining_bytes = 0;
                        m.end_timestamp = Some(now());
                        m.downtime_ms = times.map(|t| t.0);
                        m.total_time_ms = times.map(|t| t.1);
                    });
                    tracing::info!(vmi = %self.spec.vmi, "migration completed; ending the source QEMU");
                    self.lock().migrating = false;
                    // The guest runs at the target now: this QEMU is done.
                    if self.qmp.quit().await.is_err() {
                        unsafe { libc::kill(self.qemu_pid as i32, libc::SIGKILL) };
                    }
                    return;
                }
                "pre-switchover" if !switched_over => {
                    // The guest is stopped and its disks not handed over yet: end the copies
                    // (what is left goes now), then let QEMU switch over.
                    switched_over = true;
                    let within = Duration::from_secs(match options.progress_timeout() {
                        0 => crate::api::migration::DEFAULT_PROGRESS_TIMEOUT,
                        t => t,
                    });
                    let continued = match self.finish_mirrors(&disks, within).await {
                        Ok(()) => self
                            .qmp
                            .command("migrate-continue", json!({ "state": "pre-switchover" }))
                            .await
                            .map_err(|e| e.to_string()),
                        Err(why) => Err(why),
                    };
                    if let Err(why) = continued {
                        // Not switching over to a target whose disks are not complete; the
                        // guest resumes here.
                        tracing::warn!(vmi = %self.spec.vmi, "cancelling the migration: {why}");
                        block_failure = Some(why);
                        if let Err(e) = self.qmp.migrate_cancel().await {
                            tracing::warn!(error = %e, "migrate_cancel");
                        }
                    }
                    continue;
                }
                "failed" | "cancelled" => {
                    if !disks.is_empty() {
                        self.drop_mirrors(&disks).await;
                    }
                    let cancel = self.lock().cancel_reason.clone();
                    let reason = match (&cancel, status.as_str()) {
                        (Some(r), _) => r.clone(),
                        (None, _) if block_failure.is_some() => {
                            block_failure.clone().unwrap_or_default()
                        }
                        (None, "cancelled") => failure::ABORTED.to_string(),
                        (None, _) => info
                            .error_desc
                            .clone()
                            .unwrap_or_else(|| "the migration failed (see qemu.log)".into()),
                    };
                    if paused_by_us {
                        // KubeVirt resumes a guest it paused for a migration that failed.
                        if let Err(e) = self.qmp.cont().await {
                            tracing::warn!(error = %e, "resuming the guest after the migration");
                        }
                    }
                    self.lock().migrating = false;
                    self.update_migration(|m| {
                        m.failed = true;
                        m.failure_reason = reason.clone();
                        m.end_timestamp = Some(now());
                        if cancel.is_some() {
                            m.abort_status = Some(AbortStatus::Succeeded);
                        }
                    });
                    tracing::warn!(vmi = %self.spec.vmi, "migration failed: {reason}");
                    return;
                }
                _ => {}
            }
            let remaining = ram.as_ref().map(|r| r.remaining);
            match conv.step(start.elapsed().as_secs_f64(), remaining) {
                Action::Continue => {}
                Action::Abort(why) => {
                    if let Err(e) = self.abort(why).await {
                        tracing::warn!(error = %e, "migrate_cancel");
                    }
                }
                Action::StartPostCopy => {
                    tracing::info!(vmi = %self.spec.vmi, "completion timeout: switching to post-copy");
                    match self.qmp.migrate_start_postcopy().await {
                        Ok(()) => self.update_migration(|m| m.mode = MigrationMode::PostCopy),
                        Err(e) => tracing::warn!(error = %e, "migrate-start-postcopy"),
                    }
                }
                Action::PauseGuest => {
                    tracing::info!(vmi = %self.spec.vmi, "completion timeout: pausing the guest so the migration completes");
                    match self.qmp.stop().await {
                        Ok(()) => {
                            paused_by_us = true;
                            self.update_migration(|m| m.mode = MigrationMode::Paused);
                        }
                        Err(e) => tracing::warn!(error = %e, "pausing for the migration"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(v: &Value) -> Vec<(String, bool)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["capability"].as_str().unwrap().to_string(),
                    c["state"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn kubevirt_options_map_to_qmp_capabilities_and_parameters() {
        let o = MigrationOptions {
            bandwidth_per_migration: Some(64 << 20),
            allow_auto_converge: true,
            allow_post_copy: true,
            parallel_migration_threads: Some(8),
            max_downtime_ms: Some(300),
            ..Default::default()
        };
        assert_eq!(
            caps(&capabilities(&o, MigrationRole::Source, false)),
            [
                ("events".into(), true),
                ("return-path".into(), true),
                ("multifd".into(), true),
                ("postcopy-ram".into(), true),
                ("auto-converge".into(), true),
                ("pause-before-switchover".into(), false)
            ]
        );
        // With local disks the source stops before the switch-over, to end the disk copies.
        assert!(caps(&capabilities(&o, MigrationRole::Source, true))
            .contains(&("pause-before-switchover".into(), true)));
        // The target shares what both ends must agree on, and nothing of auto-converge.
        assert_eq!(
            caps(&capabilities(&o, MigrationRole::Target, true)),
            [
                ("events".into(), true),
                ("return-path".into(), true),
                ("multifd".into(), true),
                ("postcopy-ram".into(), true)
            ]
        );
        assert_eq!(
            source_parameters(&o),
            json!({"max-bandwidth": 64 << 20, "downtime-limit": 300, "multifd-channels": 8})
        );
        assert_eq!(target_parameters(&o), Some(json!({"multifd-channels": 8})));

        // Defaults: everything off, and no bandwidth limit (QEMU's own default is 32 MiB/s).
        let d = MigrationOptions::default();
        assert_eq!(
            caps(&capabilities(&d, MigrationRole::Source, false)),
            [
                ("events".into(), true),
                ("return-path".into(), true),
                ("multifd".into(), false),
                ("postcopy-ram".into(), false),
                ("auto-converge".into(), false),
                ("pause-before-switchover".into(), false)
            ]
        );
        assert_eq!(
            source_parameters(&d),
            json!({"max-bandwidth": UNLIMITED_BANDWIDTH})
        );
        assert_eq!(target_parameters(&d), None);
        // The disks are copied at the same bandwidth (0: QEMU's "no limit").
        assert_eq!(mirror_speed(&o), 64 << 20);
        assert_eq!(mirror_speed(&d), 0);
        // KubeVirt's 0 is "no limit" too.
        let zero = MigrationOptions {
            bandwidth_per_migration: Some(0),
            ..Default::default()
        };
        assert_eq!(
            source_parameters(&zero)["max-bandwidth"],
            json!(UNLIMITED_BANDWIDTH)
        );
    }

    #[test]
    fn uris_and_listening_addresses() {
        let v4: SocketAddr = "127.0.0.1:4444".parse().unwrap();
        let v6: SocketAddr = "[::1]:4444".parse().unwrap();
        assert_eq!(uri(&v4), "tcp:127.0.0.1:4444");
        assert_eq!(uri(&v6), "tcp:[::1]:4444");
        let info: MigrationInfo = serde_json::from_value(json!({
            "status": "setup",
            "socket-address": [{"type": "inet", "host": "127.0.0.1", "port": "40123"}]
        }))
        .unwrap();
        let asked: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(
            listening_address(&info, asked),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        let info6: MigrationInfo = serde_json::from_value(json!({
            "socket-address": [{"type": "inet", "host": "::1", "port": "5"}]
        }))
        .unwrap();
        assert_eq!(
            listening_address(&info6, v6),
            Some("[::1]:5".parse().unwrap())
        );
        assert_eq!(listening_address(&MigrationInfo::default(), v4), None);
        // The source's numbers once completed (QEMU 7.2's query-migrate, abridged).
        let done: MigrationInfo = serde_json::from_value(json!({
            "status": "completed", "setup-time": 1, "downtime": 37, "total-time": 812,
            "ram": {"transferred": 1, "remaining": 0, "total": 2, "duplicate": 3}
        }))
        .unwrap();
        assert_eq!((done.downtime, done.total_time), (Some(37), Some(812)));
        assert_eq!(completion_times(&done), Some((37, 812)));
        // Completed, but QEMU has not recorded the times yet: not an answer.
        let early: MigrationInfo = serde_json::from_value(json!({
            "status": "completed", "downtime": 0, "total-time": 0
        }))
        .unwrap();
        assert_eq!(completion_times(&early), None);
        let active: MigrationInfo =
            serde_json::from_value(json!({"status": "active", "total-time": 5})).unwrap();
        assert_eq!(completion_times(&active), None);
    }

    /// 256Mi of guest memory: 1 GB, so a completion timeout of 10 s per GiB allows 10 s.
    fn opts(progress: u64, per_gib: u64) -> MigrationOptions {
        MigrationOptions {
            progress_timeout: Some(progress),
            completion_timeout_per_gib: Some(per_gib),
            ..Default::default()
        }
    }

    #[test]
    fn a_migration_that_makes_no_progress_is_aborted_after_the_progress_timeout() {
        let mut c = Convergence::new(&opts(5, 0), 256 << 20);
        assert_eq!(c.step(0.4, Some(1000)), Action::Continue);
        assert_eq!(c.step(3.0, Some(900)), Action::Continue);
        // Remaining grows back (dirty pages) and stays above the mark: no progress.
        assert_eq!(c.step(6.0, Some(950)), Action::Continue);
        assert_eq!(c.step(7.9, Some(950)), Action::Continue);
        match c.step(8.5, Some(950)) {
            Action::Abort(r) => {
                assert!(r.starts_with("Live migration has been aborted"), "{r}");
                assert!(r.contains("stuck for 5 seconds"), "{r}");
            }
            a => panic!("{a:?}"),
        }
        // Once aborting, nothing more is decided.
        assert_eq!(c.step(20.0, Some(950)), Action::Continue);
        // 0 disables it.
        let mut never = Convergence::new(&opts(0, 0), 256 << 20);
        assert_eq!(never.step(0.0, Some(1)), Action::Continue);
        assert_eq!(never.step(1e6, Some(1)), Action::Continue);
    }

    #[test]
    fn completion_timeout_aborts_or_assists_as_kubevirt_does() {
        // Progressing, but too slow: aborted past 10 s.
        let mut c = Convergence::new(&opts(0, 10), 256 << 20);
        assert_eq!(c.step(9.0, Some(100)), Action::Continue);
        match c.step(10.5, Some(50)) {
            Action::Abort(r) => assert!(r.contains("not completed after 10 seconds"), "{r}"),
            a => panic!("{a:?}"),
        }
        // allowPostCopy (and so allowWorkloadDisruption): post-copy instead, once.
        let mut o = opts(0, 10);
        o.allow_post_copy = true;
        let mut c = Convergence::new(&o, 256 << 20);
        assert_eq!(c.step(10.5, Some(50)), Action::StartPostCopy);
        assert_eq!(c.mode(), MigrationMode::PostCopy);
        assert_eq!(c.step(1000.0, Some(50)), Action::Continue);
        // Disruption without post-copy: pause the guest, double the time, then abort.
        let mut o = opts(0, 10);
        o.allow_workload_disruption = Some(true);
        let mut c = Convergence::new(&o, 256 << 20);
        assert_eq!(c.step(10.5, Some(50)), Action::PauseGuest);
        assert_eq!(c.mode(), MigrationMode::Paused);
        assert_eq!(c.step(19.0, Some(40)), Action::Continue);
        assert!(matches!(c.step(20.5, Some(30)), Action::Abort(_)));
        // Post-copy allowed but disruption explicitly refused: abort, as KubeVirt.
        let mut o = opts(0, 10);
        o.allow_post_copy = true;
        o.allow_workload_disruption = Some(false);
        let mut c = Convergence::new(&o, 256 << 20);
        assert!(matches!(c.step(10.5, Some(50)), Action::Abort(_)));
    }
}

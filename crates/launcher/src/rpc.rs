//! The server side of `DIR/launcher.sock`. The protocol (requests, replies, events, error
//! codes) and the directory's file names are [`crate::api`]'s; this module maps requests to
//! [`Vm`] operations.
//!
//! The launcher also keeps `DIR/launcher.pid` and `DIR/state.json`, so a restarted handler
//! finds it again and knows the last state even after it has exited.

use crate::api::memstate::{MemoryStateError, SaveProgress};
use crate::api::{
    decode_request, read_line, ErrorCode, Event, ReplyFrame, Request, Response, RpcError, VmiDir,
    VmiDirError,
};
use crate::launcher::{LaunchError, Options, Phase, State, StateEvent, Vm};
use crate::migration::MigrationError;
use kubevirt_api::VirtualMachineInstance;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

/// One launcher: at most one VMI, started by `sync`.
pub struct Launcher {
    pub opts: Options,
    dir: VmiDir,
    vm: tokio::sync::Mutex<Option<Arc<Vm>>>,
    events: broadcast::Sender<StateEvent>,
    /// The VM's migration events, forwarded (the VM comes and goes; subscribers stay).
    migration_events: broadcast::Sender<crate::api::MigrationStatus>,
    /// The VM's `saveState` progress, forwarded likewise.
    save_events: broadcast::Sender<SaveProgress>,
    /// The state while there is no VM (pending, or failed to start).
    idle_state: Mutex<State>,
}

/// A guest agent answer, as the subresource's JSON.
fn agent<T: serde::Serialize>(
    r: Result<T, crate::agent::AgentError>,
) -> Result<Response, RpcError> {
    let v = r.map_err(|e| RpcError::new(ErrorCode::Failed, format!("guest agent: {e}")))?;
    serde_json::to_value(v)
        .map(Response::GuestAgent)
        .map_err(|e| RpcError::new(ErrorCode::Failed, e.to_string()))
}

fn rpc_error(e: LaunchError) -> RpcError {
    let code = match &e {
        LaunchError::Spec(_) | LaunchError::Hotplug(_) => ErrorCode::InvalidSpec,
        LaunchError::MemoryState(m) => match m {
            MemoryStateError::InProgress => ErrorCode::WrongPhase,
            MemoryStateError::Qemu { .. } => ErrorCode::Failed,
            _ => ErrorCode::InvalidSpec,
        },
        LaunchError::WrongPhase(..) => ErrorCode::WrongPhase,
        LaunchError::Accel(_) => ErrorCode::NoAccelerator,
        LaunchError::Migration(m) => match m {
            MigrationError::NoMigration | MigrationError::NeverMigrated => ErrorCode::NoMigration,
            MigrationError::NoListenAddress(_) | MigrationError::Block(_) => ErrorCode::Failed,
            MigrationError::NoBlockTarget(_) | MigrationError::NothingToCopy => {
                ErrorCode::BadRequest
            }
            _ => ErrorCode::WrongPhase,
        },
        _ => ErrorCode::Failed,
    };
    RpcError::new(code, e.to_string())
}

impl Launcher {
    pub fn new(opts: Options) -> Arc<Launcher> {
        let (events, _) = broadcast::channel(256);
        let (migration_events, _) = broadcast::channel(256);
        let (save_events, _) = broadcast::channel(256);
        Arc::new(Launcher {
            save_events,
            migration_events,
            dir: VmiDir::unchecked(&opts.dir),
            opts,
            vm: tokio::sync::Mutex::new(None),
            events,
            idle_state: Mutex::new(State::pending("")),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StateEvent> {
        self.events.subscribe()
    }

    pub async fn vm(&self) -> Option<Arc<Vm>> {
        self.vm.lock().await.clone()
    }

    pub async fn state(&self) -> State {
        match self.vm().await {
            Some(vm) => vm.state(),
            None => self
                .idle_state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Start the VMI unless one is already started. A start failure becomes phase Failed,
    /// reason FailedToStart, with the error (and QEMU's stderr) as the message.
    pub async fn sync(&self, vmi: &VirtualMachineInstance) -> Result<State, LaunchError> {
        let mut slot = self.vm.lock().await;
        if let Some(vm) = slot.as_ref() {
            return Ok(vm.state());
        }
        let name = format!(
            "{}/{}",
            vmi.metadata.namespace.as_deref().unwrap_or("default"),
            vmi.metadata.name.as_deref().unwrap_or("")
        );
        self.set_idle(Phase::Starting, "Starting", "", &name);
        match Vm::start(vmi, &self.opts, self.events.clone()).await {
            Ok(vm) => {
                let s = vm.state();
                forward(vm.subscribe_migration(), self.migration_events.clone());
                forward(vm.subscribe_saves(), self.save_events.clone());
                *slot = Some(vm);
                Ok(s)
            }
            Err(e) => {
                self.set_idle(Phase::Failed, "FailedToStart", &e.to_string(), &name);
                Err(e)
            }
        }
    }

    fn set_idle(&self, phase: Phase, reason: &str, message: &str, vmi: &str) {
        let s = {
            let mut s = self.idle_state.lock().unwrap_or_else(|e| e.into_inner());
            s.phase = phase;
            s.reason = reason.into();
            s.message = message.into();
            s.vmi = vmi.into();
            s.timestamp = crate::launcher::now();
            s.clone()
        };
        if let Err(e) = self.dir.write_state(&s) {
            tracing::warn!(error = %e, "cannot record the state");
        }
        let _ = self.events.send(StateEvent {
            phase,
            reason: reason.into(),
            message: message.into(),
            timestamp: s.timestamp,
        });
    }

    /// Bind `DIR/launcher.sock`, write `DIR/launcher.pid`, and serve until the process ends.
    /// A directory whose socket paths do not fit a socket address is refused here, by name.
    pub fn listen(self: &Arc<Self>) -> std::io::Result<()> {
        let dir = VmiDir::from_path(&self.opts.dir).map_err(|e| match e {
            VmiDirError::Io { source, .. } | VmiDirError::Absolute { source, .. } => source,
            e => std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        std::fs::create_dir_all(dir.path())?;
        let sock = dir.launcher_socket();
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock)?;
        dir.write_launcher_pid(std::process::id())
            .map_err(std::io::Error::other)?;
        let idle = self
            .idle_state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        dir.write_state(&idle).map_err(std::io::Error::other)?;
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move { me.serve_conn(stream).await });
            }
        });
        Ok(())
    }

    async fn serve_conn(&self, stream: UnixStream) {
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let mut buf = Vec::new();
        loop {
            match read_line(&mut rd, &mut buf).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "launcher.sock: dropping a connection");
                    return;
                }
            }
            let line = String::from_utf8_lossy(&buf);
            if line.trim().is_empty() {
                continue;
            }
            let (id, request) = decode_request(&line);
            let subscribe = matches!(request, Ok(Request::Subscribe));
            let outcome = match request {
                Ok(r) => self.call(r).await,
                Err(e) => Err(e),
            };
            let ok = outcome.is_ok();
            if write_line(&mut wr, &ReplyFrame { id, outcome })
                .await
                .is_err()
            {
                return;
            }
            if subscribe && ok {
                let mut rx = self.events.subscribe();
                let mut mrx = self.migration_events.subscribe();
                let mut srx = self.save_events.subscribe();
                loop {
                    let ev = tokio::select! {
                        ev = rx.recv() => ev.map(Event::StateChanged),
                        m = mrx.recv() => m.map(Event::Migration),
                        p = srx.recv() => p.map(Event::StateSave),
                    };
                    match ev {
                        Ok(ev) => {
                            if write_line(&mut wr, &ev).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        }
    }

    async fn call(&self, request: Request) -> Result<Response, RpcError> {
        let vm = || async {
            self.vm().await.ok_or(RpcError::new(
                ErrorCode::NotStarted,
                "no VMI has been started (sync first)",
            ))
        };
        let done = |r: Result<(), LaunchError>| r.map(|()| Response::Done).map_err(rpc_error);
        match request {
            Request::Sync { vmi } => {
                let s = self.sync(&vmi).await.map_err(rpc_error)?;
                Ok(Response::State(Box::new(s)))
            }
            Request::State => Ok(Response::State(Box::new(self.state().await))),
            Request::Pause => done(vm().await?.pause().await),
            Request::Unpause => done(vm().await?.unpause().await),
            Request::Shutdown {
                grace_period_seconds,
            } => {
                let vm = vm().await?;
                let grace =
                    grace_period_seconds.unwrap_or(vm.spec.termination_grace_period_seconds);
                done(vm.shutdown(Duration::from_secs(grace)).await)
            }
            Request::Stop => done(vm().await?.stop().await),
            Request::Reset => done(vm().await?.reset().await),
            Request::SoftReboot => done(vm().await?.soft_reboot().await),
            Request::SetBalloon { bytes } => done(vm().await?.set_balloon(bytes).await),
            Request::Stats => vm()
                .await?
                .stats()
                .await
                .map(Response::Stats)
                .map_err(rpc_error),
            Request::Subscribe => Ok(Response::Subscribed {
                state: Box::new(self.state().await),
            }),
            Request::GuestOsInfo => agent(vm().await?.guest_info().await),
            Request::UserList => agent(vm().await?.user_list().await),
            Request::FilesystemList => agent(vm().await?.filesystem_list().await),
            Request::SyncVolumes { vmi, volumes } => {
                let vm = vm().await?;
                self.sync_volumes(&vm, &vmi, volumes).await
            }
            Request::SetResources {
                sockets,
                guest_memory_bytes,
            } => vm()
                .await?
                .set_resources(sockets, guest_memory_bytes)
                .await
                .map(|s| Response::State(Box::new(s)))
                .map_err(rpc_error),
            Request::PrepareMigrationTarget { listen, options } => vm()
                .await?
                .prepare_migration_target(listen, &options)
                .await
                .map(migration)
                .map_err(rpc_error),
            Request::Migrate {
                target,
                block_target,
                options,
            } => vm()
                .await?
                .migrate(target, block_target, &options)
                .await
                .map(migration)
                .map_err(rpc_error),
            Request::CancelMigration => match self.vm().await {
                Some(vm) => vm
                    .cancel_migration()
                    .await
                    .map(migration)
                    .map_err(rpc_error),
                None => Err(rpc_error(MigrationError::NoMigration.into())),
            },
            Request::SaveState { resume } => vm()
                .await?
                .save_state(resume)
                .await
                .map(|s| Response::SavedState(Box::new(s)))
                .map_err(rpc_error),
            Request::DumpMemory => vm()
                .await?
                .dump_memory()
                .await
                .map(Response::MemoryDump)
                .map_err(rpc_error),
            Request::Freeze {
                unfreeze_timeout_seconds,
            } => done(
                vm().await?
                    .freeze(Duration::from_secs(unfreeze_timeout_seconds))
                    .await,
            ),
            Request::Unfreeze => match self.vm().await {
                Some(vm) => done(vm.unfreeze().await),
                None => Ok(Response::Done),
            },
            Request::MigrationStatus => match self.vm().await {
                Some(vm) => vm.migration_status().map(migration).map_err(rpc_error),
                None => Err(rpc_error(MigrationError::NeverMigrated.into())),
            },
        }
    }

    /// `syncVolumes`: the launcher's options with the volume files the handler resolved now.
    async fn sync_volumes(
        &self,
        vm: &Vm,
        vmi: &VirtualMachineInstance,
        volumes: crate::api::NodeVolumes,
    ) -> Result<Response, RpcError> {
        let mut opts = self.opts.clone();
        opts.pvc_paths = volumes.persistent_volume_claims;
        opts.data_volume_paths = volumes.data_volumes;
        opts.node_local_claims = volumes.local_claims;
        crate::hotplug::sync(vm, vmi, &opts)
            .await
            .map(Response::Volumes)
            .map_err(rpc_error)
    }
}

/// Forward a VM's events to the launcher's subscribers until the VM goes.
fn forward<T: Clone + Send + 'static>(mut rx: broadcast::Receiver<T>, tx: broadcast::Sender<T>) {
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(m) => {
                    let _ = tx.send(m);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

fn migration(m: crate::api::MigrationStatus) -> Response {
    Response::Migration(Box::new(m))
}

async fn write_line(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    v: &impl serde::Serialize,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LauncherClient, VmiDir};
    use tokio::io::AsyncBufReadExt;

    /// The server against the client, without a VM: what a launcher waiting for `sync` says.
    #[tokio::test]
    async fn a_launcher_without_a_vm_answers_state_and_refuses_operations() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmiDir::new(tmp.path(), "default", "demo").unwrap();
        let launcher = Launcher::new(Options::new(dir.path()));
        launcher.listen().unwrap();
        assert_eq!(dir.launcher_pid(), Some(std::process::id()));
        assert_eq!(dir.read_state().unwrap().phase, Phase::Pending);

        let mut c = LauncherClient::connect(&dir).await.unwrap();
        let st = c.call(Request::State).await.unwrap().into_state().unwrap();
        assert_eq!(
            (st.phase, st.reason.as_str()),
            (Phase::Pending, "WaitingForSync")
        );
        let e = c.call(Request::Pause).await.unwrap_err();
        assert_eq!(e.code(), Some(&ErrorCode::NotStarted));

        // Today's literal lines, written by hand: a wrong version and an unknown method.
        let s = UnixStream::connect(dir.launcher_socket()).await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut lines = BufReader::new(rd).lines();
        wr.write_all(b"{\"v\":2,\"id\":7,\"method\":\"state\"}\n{\"v\":1,\"id\":8,\"method\":\"nope\",\"params\":{}}\n")
            .await
            .unwrap();
        let a: serde_json::Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(a["id"], 7);
        assert_eq!(a["error"]["code"], "UnsupportedVersion");
        let b: serde_json::Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(
            b,
            serde_json::json!({"id": 8, "error": {"code": "UnknownMethod", "message": "unknown method \"nope\""}})
        );

        // A subscriber gets the state, then every change.
        let mut sub = LauncherClient::connect(&dir)
            .await
            .unwrap()
            .subscribe()
            .await
            .unwrap();
        assert_eq!(sub.state().phase, Phase::Pending);
        launcher.set_idle(Phase::Failed, "FailedToStart", "boom", "default/demo");
        let Some(Ok(Event::StateChanged(ev))) = sub.next().await else {
            panic!("no state change")
        };
        assert_eq!(
            (ev.phase, ev.reason.as_str()),
            (Phase::Failed, "FailedToStart")
        );
        assert_eq!(dir.read_state().unwrap().message, "boom");
    }
}

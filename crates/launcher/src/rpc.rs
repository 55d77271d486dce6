//! The handler-facing interface: a versioned RPC on `DIR/launcher.sock`.
//!
//! Newline-delimited JSON. Request `{"v":1,"id":N,"method":"...","params":{...}}`, reply
//! `{"id":N,"result":...}` or `{"id":N,"error":{"code":"...","message":"..."}}`. Methods:
//! `sync` {vmi} (start it if not started), `pause`, `unpause`, `shutdown` {gracePeriodSeconds},
//! `stop`, `reset`, `softReboot`, `setBalloon` {bytes}, `state`, `stats`, `subscribe` (the
//! connection then streams `{"event":"StateChanged","phase":...,"reason":...,"timestamp":...}`).
//!
//! The launcher also keeps `DIR/launcher.pid` and `DIR/state.json`, so a restarted handler
//! finds it again and knows the last state even after it has exited.

use crate::launcher::{write_state, LaunchError, Options, Phase, State, StateEvent, Vm};
use kubevirt_api::VirtualMachineInstance;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

pub const VERSION: u64 = 1;

/// One launcher: at most one VMI, started by `sync`.
pub struct Launcher {
    pub opts: Options,
    vm: tokio::sync::Mutex<Option<Arc<Vm>>>,
    events: broadcast::Sender<StateEvent>,
    /// The state while there is no VM (pending, or failed to start).
    idle_state: Mutex<State>,
}

#[derive(Debug)]
struct RpcError {
    code: &'static str,
    message: String,
}

impl From<LaunchError> for RpcError {
    fn from(e: LaunchError) -> Self {
        let code = match &e {
            LaunchError::Spec(_) => "InvalidSpec",
            LaunchError::WrongPhase(..) => "WrongPhase",
            LaunchError::Accel(_) => "NoAccelerator",
            _ => "Failed",
        };
        RpcError {
            code,
            message: e.to_string(),
        }
    }
}

fn bad(message: impl Into<String>) -> RpcError {
    RpcError {
        code: "BadRequest",
        message: message.into(),
    }
}

impl Launcher {
    pub fn new(opts: Options) -> Arc<Launcher> {
        let (events, _) = broadcast::channel(256);
        Arc::new(Launcher {
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
        write_state(&self.opts.dir, &s);
        let _ = self.events.send(StateEvent {
            event: "StateChanged".into(),
            phase,
            reason: reason.into(),
            message: message.into(),
            timestamp: s.timestamp,
        });
    }

    /// Bind `DIR/launcher.sock`, write `DIR/launcher.pid`, and serve until the process ends.
    pub fn listen(self: &Arc<Self>) -> std::io::Result<()> {
        let dir = &self.opts.dir;
        std::fs::create_dir_all(dir)?;
        let sock = dir.join("launcher.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock)?;
        std::fs::write(
            dir.join("launcher.pid"),
            format!("{}\n", std::process::id()),
        )?;
        write_state(
            dir,
            &self.idle_state.lock().unwrap_or_else(|e| e.into_inner()),
        );
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
        let mut lines = BufReader::new(rd).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim().is_empty() {
                continue;
            }
            let (id, reply, subscribe) = match serde_json::from_str::<Value>(&line) {
                Err(e) => (Value::Null, Err(bad(format!("not JSON: {e}"))), false),
                Ok(req) => {
                    let id = req.get("id").cloned().unwrap_or(Value::Null);
                    let method = req["method"].as_str().unwrap_or("").to_string();
                    let v = req.get("v").and_then(Value::as_u64).unwrap_or(0);
                    if v != VERSION {
                        let e = RpcError {
                            code: "UnsupportedVersion",
                            message: format!("protocol version {v} is not supported; this launcher speaks v{VERSION}"),
                        };
                        (id, Err(e), false)
                    } else {
                        let params = req.get("params").cloned().unwrap_or(Value::Null);
                        let r = self.call(&method, &params).await;
                        (id, r, method == "subscribe")
                    }
                }
            };
            let ok = reply.is_ok();
            let msg = match reply {
                Ok(result) => json!({ "id": id, "result": result }),
                Err(e) => json!({ "id": id, "error": { "code": e.code, "message": e.message } }),
            };
            if write_line(&mut wr, &msg).await.is_err() {
                return;
            }
            if subscribe && ok {
                let mut rx = self.events.subscribe();
                loop {
                    match rx.recv().await {
                        Ok(ev) => {
                            if write_line(&mut wr, &json!(ev)).await.is_err() {
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

    async fn call(&self, method: &str, params: &Value) -> Result<Value, RpcError> {
        let vm = || async {
            self.vm().await.ok_or(RpcError {
                code: "NotStarted",
                message: "no VMI has been started (sync first)".into(),
            })
        };
        let done = Ok(json!({}));
        match method {
            "sync" => {
                let vmi_v = params.get("vmi").unwrap_or(params);
                let vmi: VirtualMachineInstance = serde_json::from_value(vmi_v.clone())
                    .map_err(|e| bad(format!("params.vmi is not a VirtualMachineInstance: {e}")))?;
                let s = self.sync(&vmi).await?;
                Ok(json!(s))
            }
            "state" => Ok(json!(self.state().await)),
            "pause" => vm().await?.pause().await.map_err(Into::into).and(done),
            "unpause" => vm().await?.unpause().await.map_err(Into::into).and(done),
            "shutdown" => {
                let vm = vm().await?;
                let grace = params
                    .get("gracePeriodSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(vm.spec.termination_grace_period_seconds);
                vm.shutdown(Duration::from_secs(grace))
                    .await
                    .map_err(Into::into)
                    .and(done)
            }
            "stop" => vm().await?.stop().await.map_err(Into::into).and(done),
            "reset" => vm().await?.reset().await.map_err(Into::into).and(done),
            "softReboot" => vm()
                .await?
                .soft_reboot()
                .await
                .map_err(Into::into)
                .and(done),
            "setBalloon" => {
                let bytes = params
                    .get("bytes")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad("params.bytes (an integer) is required"))?;
                vm().await?
                    .set_balloon(bytes)
                    .await
                    .map_err(Into::into)
                    .and(done)
            }
            "stats" => vm().await?.stats().await.map_err(Into::into),
            "subscribe" => Ok(json!({ "subscribed": true, "state": self.state().await })),
            m => Err(RpcError {
                code: "UnknownMethod",
                message: format!("unknown method {m:?}"),
            }),
        }
    }
}

async fn write_line(w: &mut tokio::net::unix::OwnedWriteHalf, v: &Value) -> std::io::Result<()> {
    let mut s = v.to_string();
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("launcher replied {code}: {message}")]
    Remote { code: String, message: String },
    #[error("bad reply from the launcher: {0}")]
    Protocol(String),
}

/// A blocking one-shot call to a launcher (for CLIs and tests).
pub fn call(dir: &Path, method: &str, params: Value) -> Result<Value, ClientError> {
    use std::io::{BufRead, Write};
    let path = dir.join("launcher.sock");
    let ioe = |source| ClientError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(ioe)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(ioe)?;
    let req = json!({ "v": VERSION, "id": 1, "method": method, "params": params });
    s.write_all(format!("{req}\n").as_bytes()).map_err(ioe)?;
    let mut line = String::new();
    std::io::BufReader::new(&s)
        .read_line(&mut line)
        .map_err(ioe)?;
    let v: Value =
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("{e}: {line:?}")))?;
    if let Some(e) = v.get("error") {
        return Err(ClientError::Remote {
            code: e["code"].as_str().unwrap_or("").into(),
            message: e["message"].as_str().unwrap_or("").into(),
        });
    }
    v.get("result")
        .cloned()
        .ok_or_else(|| ClientError::Protocol(format!("no result: {line}")))
}

//! The client side of `launcher.sock`.

use super::dir::VmiDir;
use super::protocol::{
    read_line, ErrorCode, Event, ReplyFrame, Request, RequestFrame, Response, RpcError,
};
use crate::launcher::State;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no answer within {after:?} ({what})", path.display())]
    Timeout {
        path: PathBuf,
        what: &'static str,
        after: Duration,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: the launcher closed the connection", path.display())]
    Closed { path: PathBuf },
    #[error("launcher replied {0}")]
    Remote(RpcError),
    #[error("{}: bad reply from the launcher: {detail}", path.display())]
    Protocol { path: PathBuf, detail: String },
    #[error("call_blocking cannot run on an async runtime's thread; use LauncherClient")]
    InsideRuntime,
    #[error("starting a runtime for a blocking launcher call: {0}")]
    Runtime(std::io::Error),
}

impl ClientError {
    /// The launcher's error code, when it answered with an error.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            ClientError::Remote(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// One connection to a launcher. Calls on it are sequential.
pub struct LauncherClient {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    timeout: Option<Duration>,
    line: Vec<u8>,
    peer_pid: Option<u32>,
}

impl LauncherClient {
    /// How long connecting may take.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// How long a call may take unless [`LauncherClient::with_timeout`] says otherwise.
    pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
    /// `sync` starts a VM (images may be extracted first): it gets longer.
    pub const SYNC_TIMEOUT: Duration = Duration::from_secs(300);
    /// `saveState` writes the guest's memory to disk (a few GiB at disk speed).
    pub const SAVE_TIMEOUT: Duration = Duration::from_secs(600);

    /// Connect to the VMI's `launcher.sock`.
    pub async fn connect(dir: &VmiDir) -> Result<LauncherClient, ClientError> {
        let path = dir.launcher_socket();
        let stream =
            match tokio::time::timeout(Self::CONNECT_TIMEOUT, UnixStream::connect(&path)).await {
                Ok(Ok(s)) => s,
                Ok(Err(source)) => return Err(ClientError::Connect { path, source }),
                Err(_) => {
                    return Err(ClientError::Timeout {
                        path,
                        what: "connect",
                        after: Self::CONNECT_TIMEOUT,
                    })
                }
            };
        // The kernel's word for who listens on the socket (`SO_PEERCRED`).
        let peer_pid = stream
            .peer_cred()
            .ok()
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        let (rd, wr) = stream.into_split();
        Ok(LauncherClient {
            path,
            peer_pid,
            reader: BufReader::new(rd),
            writer: wr,
            next_id: 1,
            timeout: None,
            line: Vec::new(),
        })
    }

    /// The pid of the process serving the socket when it was connected, as the kernel
    /// reports it (`SO_PEERCRED`), not as the launcher says.
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer_pid
    }

    /// Use this timeout for every call instead of the per-method default.
    pub fn with_timeout(mut self, timeout: Duration) -> LauncherClient {
        self.timeout = Some(timeout);
        self
    }

    /// Send `request`, wait for its reply.
    pub async fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let after = self.timeout.unwrap_or(match request {
            Request::Sync { .. } => Self::SYNC_TIMEOUT,
            Request::SaveState { .. } | Request::DumpMemory => Self::SAVE_TIMEOUT,
            _ => Self::CALL_TIMEOUT,
        });
        let what = request.method().as_str();
        match tokio::time::timeout(after, self.exchange(request)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                path: self.path.clone(),
                what,
                after,
            }),
        }
    }

    async fn exchange(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let method = request.method();
        tracing::debug!(socket = %self.path.display(), %method, id, "launcher call");
        let frame = RequestFrame::new(id, request);
        let mut bytes = serde_json::to_vec(&frame).map_err(|e| self.protocol(e))?;
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .await
            .map_err(|source| self.io(source))?;
        self.read_next_line().await?;
        let text = String::from_utf8_lossy(&self.line);
        let reply = ReplyFrame::decode(&text, method)
            .map_err(|e| self.protocol(format!("{e}: {:?}", text.trim_end())))?;
        if reply.id != serde_json::json!(id) {
            return Err(self.protocol(format!("reply id {} to request {id}", reply.id)));
        }
        reply.outcome.map_err(ClientError::Remote)
    }

    async fn read_next_line(&mut self) -> Result<(), ClientError> {
        match read_line(&mut self.reader, &mut self.line).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ClientError::Closed {
                path: self.path.clone(),
            }),
            Err(source) => Err(self.io(source)),
        }
    }

    /// `subscribe`: the launcher's state now, then its [`Event`]s as they happen.
    pub async fn subscribe(mut self) -> Result<Subscription, ClientError> {
        let state = match self.call(Request::Subscribe).await? {
            Response::Subscribed { state } => *state,
            other => {
                return Err(self.protocol(format!("subscribe answered {other:?}")));
            }
        };
        Ok(Subscription {
            client: self,
            state,
        })
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn protocol(&self, detail: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }
}

/// A subscribed connection: [`Subscription::next`] yields events until the launcher exits.
pub struct Subscription {
    client: LauncherClient,
    state: State,
}

impl Subscription {
    /// The state when the subscription began.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The next event; `None` once the launcher closed the connection. Lines that are not an
    /// event this client knows (a newer launcher) are skipped.
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        loop {
            match self.client.read_next_line().await {
                Ok(()) => {}
                Err(ClientError::Closed { .. }) => return None,
                Err(e) => return Some(Err(e)),
            }
            match serde_json::from_slice::<Event>(&self.client.line) {
                Ok(ev) => return Some(Ok(ev)),
                Err(e) => {
                    tracing::debug!(socket = %self.client.path.display(), error = %e, "skipping an unknown launcher event");
                }
            }
        }
    }

    /// The events as a [`futures::Stream`].
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<Event, ClientError>> + Send {
        futures::stream::unfold(
            self,
            |mut s| async move { s.next().await.map(|ev| (ev, s)) },
        )
    }
}

/// One call from synchronous code (CLIs, tests): connects, calls, disconnects, on a private
/// runtime. Refused on an async runtime's thread (use [`LauncherClient`] there).
pub fn call_blocking(dir: &VmiDir, request: Request) -> Result<Response, ClientError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(ClientError::InsideRuntime);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)?;
    rt.block_on(async { LauncherClient::connect(dir).await?.call(request).await })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::protocol::StateChange;
    use crate::launcher::Phase;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A fake launcher: answers each request line with `reply(line)`, then writes `after`.
    async fn fake(
        dir: &VmiDir,
        reply: impl Fn(&serde_json::Value) -> serde_json::Value + Send + 'static,
        after: Vec<String>,
    ) {
        std::fs::create_dir_all(dir.path()).unwrap();
        let l = UnixListener::bind(dir.launcher_socket()).unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (rd, mut wr) = s.into_split();
            let mut lines = BufReader::new(rd).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let r = reply(&v);
                wr.write_all(format!("{r}\n").as_bytes()).await.unwrap();
                for a in &after {
                    wr.write_all(format!("{a}\n").as_bytes()).await.unwrap();
                }
            }
        });
    }

    fn dir(tmp: &tempfile::TempDir) -> VmiDir {
        VmiDir::new(tmp.path(), "default", "demo").unwrap()
    }

    #[tokio::test]
    async fn calls_send_todays_lines_and_decode_the_replies() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(&tmp);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        fake(
            &d,
            move |v| {
                let _ = tx.send(v.clone());
                match v["method"].as_str() {
                    Some("pause") => serde_json::json!({"id": v["id"], "result": {}}),
                    _ => serde_json::json!({"id": v["id"], "error": {"code": "WrongPhase", "message": "the VM is Succeeded"}}),
                }
            },
            vec![],
        )
        .await;
        let mut c = LauncherClient::connect(&d).await.unwrap();
        assert_eq!(c.call(Request::Pause).await.unwrap(), Response::Done);
        assert_eq!(
            rx.recv().await.unwrap(),
            serde_json::json!({"v": 1, "id": 1, "method": "pause", "params": {}})
        );
        let e = c
            .call(Request::Shutdown {
                grace_period_seconds: Some(5),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(&ErrorCode::WrongPhase));
        assert_eq!(
            rx.recv().await.unwrap(),
            serde_json::json!({"v": 1, "id": 2, "method": "shutdown", "params": {"gracePeriodSeconds": 5}})
        );
    }

    #[tokio::test]
    async fn a_launcher_that_does_not_answer_times_out() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(&tmp);
        std::fs::create_dir_all(d.path()).unwrap();
        let _l = UnixListener::bind(d.launcher_socket()).unwrap();
        let mut c = LauncherClient::connect(&d)
            .await
            .unwrap()
            .with_timeout(Duration::from_millis(100));
        let e = c.call(Request::State).await.unwrap_err();
        assert!(
            matches!(e, ClientError::Timeout { what: "state", .. }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn no_launcher_is_a_connect_error() {
        let tmp = tempfile::tempdir().unwrap();
        let e = LauncherClient::connect(&dir(&tmp)).await.err().unwrap();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    }

    #[tokio::test]
    async fn subscribe_yields_the_state_then_events_until_the_launcher_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(&tmp);
        let st = serde_json::to_value(State::pending("default/demo")).unwrap();
        fake(
            &d,
            move |v| serde_json::json!({"id": v["id"], "result": {"subscribed": true, "state": st}}),
            vec![
                r#"{"event":"StateChanged","phase":"Running","reason":"Started","message":"","timestamp":2.0}"#.into(),
                r#"{"event":"SomethingNew"}"#.into(),
                r#"{"event":"StateChanged","phase":"Succeeded","reason":"Stopped","message":"","timestamp":3.0}"#.into(),
            ],
        )
        .await;
        let mut sub = LauncherClient::connect(&d)
            .await
            .unwrap()
            .subscribe()
            .await
            .unwrap();
        assert_eq!(sub.state().phase, Phase::Pending);
        let ev = sub.next().await.unwrap().unwrap();
        assert_eq!(
            ev,
            Event::StateChanged(StateChange {
                phase: Phase::Running,
                reason: "Started".into(),
                message: String::new(),
                timestamp: 2.0,
            })
        );
        let Some(Ok(Event::StateChanged(last))) = sub.next().await else {
            panic!("no state change")
        };
        assert_eq!(last.phase, Phase::Succeeded);
    }

    #[test]
    fn call_blocking_is_refused_on_a_runtime_thread() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(&tmp);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt
            .block_on(async { call_blocking(&d, Request::State) })
            .unwrap_err();
        assert!(matches!(e, ClientError::InsideRuntime));
        assert!(matches!(
            call_blocking(&d, Request::State).unwrap_err(),
            ClientError::Connect { .. }
        ));
    }
}

//! The guest agent client against a real `qemu-ga`, which runs on the host as a child process and
//! listens on a unix socket (`--method=unix-listen`), so its answers describe this machine. Fake
//! peers stand in for the cases a real agent does not produce on demand: an agent that is
//! absent, a channel full of garbage, an oversized reply, a shutdown that never answers.
//! Without `/usr/sbin/qemu-ga`, the real-agent test skips loudly.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kubevirt_launcher::agent::{Agent, AgentError, AgentOptions, IpAddressType, ShutdownMode};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;

const QEMU_GA: &str = "/usr/sbin/qemu-ga";

/// Commands the agent under test must never run, because its "guest" is this host. The test
/// checks through `guest-info` that `guest-shutdown` is disabled before it calls it.
const BLOCKED: &str = "guest-shutdown,guest-suspend-disk,guest-suspend-ram,guest-suspend-hybrid,\
guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,guest-set-user-password,guest-set-time,\
guest-set-vcpus,guest-set-memory-blocks,guest-exec,guest-file-open,guest-file-write,\
guest-ssh-add-authorized-keys,guest-ssh-remove-authorized-keys,guest-fstrim";

struct QemuGa {
    child: tokio::process::Child,
    sock: PathBuf,
    dir: tempfile::TempDir,
}

/// Starts qemu-ga on a socket in a temporary directory, with its pid file, state and log
/// there as well. Returns `None` (after saying so) when qemu-ga is not installed.
async fn qemu_ga() -> Option<QemuGa> {
    if !Path::new(QEMU_GA).exists() {
        eprintln!(
            "\n*** SKIP: {QEMU_GA} is absent, so the guest agent client is not tested against \
             a real agent (install qemu-guest-agent, e.g. scripts/deps.sh) ***\n"
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qga.sock");
    let child = tokio::process::Command::new(QEMU_GA)
        .arg("--method=unix-listen")
        .arg(format!("--path={}", sock.display()))
        .arg(format!(
            "--pidfile={}",
            dir.path().join("qga.pid").display()
        ))
        .arg(format!("--statedir={}", dir.path().display()))
        .arg(format!(
            "--logfile={}",
            dir.path().join("qga.log").display()
        ))
        .arg(format!("--block-rpcs={BLOCKED}"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn qemu-ga");
    let mut ga = QemuGa { child, sock, dir };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ga.sock.exists() {
        if let Some(status) = ga.child.try_wait().unwrap() {
            panic!("qemu-ga exited early with {status}: {}", ga.log());
        }
        assert!(Instant::now() < deadline, "qemu-ga never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Some(ga)
}

impl QemuGa {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("qga.log")).unwrap_or_default()
    }

    async fn stop(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

/// `ID=` of /etc/os-release, unquoted.
fn os_release_id() -> String {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("ID="))
        .map(|v| v.trim_matches(['"', '\'']).to_string())
        .expect("ID in os-release")
}

#[tokio::test]
async fn a_real_qemu_ga_describes_this_host() {
    let Some(ga) = qemu_ga().await else {
        return;
    };
    let mut agent = Agent::connect(&ga.sock).await.unwrap();
    assert!(!agent.is_synced());
    agent.sync().await.unwrap();
    assert!(agent.is_synced());
    agent.ping().await.unwrap();

    let info = agent.info().await.unwrap();
    assert!(!info.version.is_empty());
    assert!(info.enabled("guest-ping"), "{info:?}");
    assert!(info.enabled("guest-get-osinfo"));
    // The block list holds: guest-shutdown is listed but disabled.
    assert!(info
        .supported_commands
        .iter()
        .any(|c| c.name == "guest-shutdown" && !c.enabled && !c.success_response));

    let os = agent.os_info().await.unwrap();
    assert_eq!(os.id.as_deref(), Some(os_release_id().as_str()), "{os:?}");
    assert_eq!(os.machine.as_deref(), Some(std::env::consts::ARCH));
    assert!(os.kernel_release.is_some(), "{os:?}");

    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(agent.host_name().await.unwrap(), host.trim());

    let ifs = agent.network_interfaces().await.unwrap();
    let lo = ifs.iter().find(|i| i.name == "lo").expect("lo");
    assert!(
        lo.ip_addresses
            .iter()
            .any(|a| a.ip_address_type == IpAddressType::Ipv4
                && a.ip_address == "127.0.0.1"
                && a.prefix == 8),
        "{lo:?}"
    );

    // fsinfo reads /proc/self/mountinfo and sysfs. It works in this sandbox (a virtio disk),
    // but a container without a block device may give an error instead of an entry for "/".
    match agent.fs_info().await {
        Ok(fs) => {
            let root = fs.iter().find(|f| f.mountpoint == "/").expect("/ mounted");
            assert!(!root.fs_type.is_empty());
            if let (Some(used), Some(total)) = (root.used_bytes, root.total_bytes) {
                assert!(used <= total, "{root:?}");
            }
        }
        Err(e) => {
            eprintln!("NOTE: guest-get-fsinfo failed on this host: {e}");
            assert!(matches!(e, AgentError::Command { .. }), "{e:?}");
        }
    }

    let tz = agent.timezone().await.unwrap();
    assert!(tz.offset.abs() <= 14 * 3600, "{tz:?}");
    for u in agent.users().await.unwrap() {
        assert!(!u.user.is_empty() && u.login_time > 0.0, "{u:?}");
    }

    // An agent error is a typed error, and the channel stays synchronised.
    let e = agent
        .execute_value("no-such-command", None, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AgentError::Command { class, .. } if class == "CommandNotFound"),
        "{e:?}"
    );
    assert!(agent.is_synced());

    // guest-shutdown's error reply is an error, not the silence of success. The call is made
    // only after checking that the agent has the command disabled, because this agent's guest
    // is the host.
    assert!(!agent.info().await.unwrap().enabled("guest-shutdown"));
    let e = agent.shutdown(ShutdownMode::Powerdown).await.unwrap_err();
    assert!(
        matches!(&e, AgentError::Command { command, class, .. }
            if command == "guest-shutdown" && class == "CommandNotFound"),
        "{e:?}"
    );

    // A command abandoned mid-exchange (a timeout, or a caller's `select!` dropping the
    // future) leaves its reply to arrive later. The next call resynchronises and skips that
    // reply, so the next answer belongs to the next question. The future is polled once: it
    // writes the command, finds no reply yet, and is dropped.
    tokio::select! {
        biased;
        r = agent.network_interfaces() => panic!("answered within one poll: {r:?}"),
        () = std::future::ready(()) => {}
    }
    assert!(!agent.is_synced());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(agent.host_name().await.unwrap(), host.trim());
    agent.ping().await.unwrap();

    // A second client queues behind the first: qemu-ga serves one connection at a time, and
    // the second connection looks like an absent agent until the first closes. Once served,
    // the agent answers the sync that timed out, then the new one. The client skips the stale
    // reply by its id.
    let quick = AgentOptions {
        sync_timeout: Duration::from_millis(300),
        ..AgentOptions::default()
    };
    let mut second = Agent::connect_with(&ga.sock, quick).await.unwrap();
    let e = second.sync().await.unwrap_err();
    assert!(matches!(e, AgentError::Timeout { .. }), "{e:?}");
    // `agent` has read every reply it was sent. qemu-ga 7.2 in unix-listen mode exits (status
    // 0) when a client closes with replies still unread: its read gets ECONNRESET, which it
    // treats as fatal. In a VM the agent sees a virtio port instead, so this cannot happen there.
    drop(agent);
    let mut tries = 0;
    while let Err(e) = second.sync().await {
        assert!(matches!(e, AgentError::Timeout { .. }), "{e:?}");
        tries += 1;
        assert!(tries < 10, "qemu-ga never served the second client");
    }
    assert_eq!(second.host_name().await.unwrap(), host.trim());

    ga.stop().await;
}

/// A fake agent on a unix socket. It serves one connection with `script`.
async fn fake_agent<F, Fut>(dir: &Path, script: F) -> PathBuf
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let sock = dir.join("fake.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, w) = stream.into_split();
        script(Peer {
            r: BufReader::new(r),
            w,
        })
        .await;
    });
    sock
}

/// The agent's reply to `guest-sync-delimited`: 0xFF, then the id.
fn delimited(id: u64) -> Vec<u8> {
    let mut reply = vec![0xFF];
    reply.extend_from_slice(format!("{{\"return\": {id}}}\n").as_bytes());
    reply
}

struct Peer {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Peer {
    /// The next request, without the 0xFF bytes a client sends before a sync.
    async fn request(&mut self) -> Value {
        let mut line = Vec::new();
        self.r.read_until(b'\n', &mut line).await.unwrap();
        let start = line.iter().rposition(|&b| b == 0xFF).map_or(0, |i| i + 1);
        serde_json::from_slice(&line[start..]).unwrap()
    }

    /// Reads a sync request and returns its id.
    async fn sync_id(&mut self) -> u64 {
        let req = self.request().await;
        assert_eq!(req["execute"], "guest-sync-delimited", "{req}");
        req["arguments"]["id"].as_u64().unwrap()
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    async fn sync_reply(&mut self, id: u64) {
        self.send(&delimited(id)).await;
    }
}

#[tokio::test]
async fn a_silent_peer_makes_sync_time_out_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let sock = fake_agent(dir.path(), |peer| async move {
        // Accept, read everything, never answer, never close.
        let Peer { mut r, w } = peer;
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut sink).await;
        drop(w);
    })
    .await;
    let opts = AgentOptions {
        sync_timeout: Duration::from_millis(300),
        ..AgentOptions::default()
    };
    let mut agent = Agent::connect_with(&sock, opts).await.unwrap();
    let t = Instant::now();
    let e = agent.sync().await.unwrap_err();
    assert!(
        matches!(&e, AgentError::Timeout { command, after }
            if command == "guest-sync-delimited" && *after == Duration::from_millis(300)),
        "{e:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // A command also resynchronises first, so it times out the same way and does not wait for
    // a reply that an unsynchronised channel could mismatch.
    let t = Instant::now();
    let e = agent.ping().await.unwrap_err();
    assert!(
        matches!(&e, AgentError::Timeout { command, .. } if command == "guest-sync-delimited"),
        "{e:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    // So does shutdown. The silence of an absent agent is not the silence of success.
    let e = agent.shutdown(ShutdownMode::Reboot).await.unwrap_err();
    assert!(
        matches!(&e, AgentError::Timeout { command, .. } if command == "guest-sync-delimited"),
        "{e:?}"
    );
}

#[tokio::test]
async fn garbage_then_the_delimited_reply_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let sock = fake_agent(dir.path(), |mut peer| async move {
        let id = peer.sync_id().await;
        // What an earlier client left behind: a stale reply, invalid UTF-8, half a line,
        // a reply to somebody else's sync, an error line. Then the answer.
        peer.send(b"{\"return\": {\"host-name\": \"stale\"}}\n\xc3\x28\xfe garbage {\"ret")
            .await;
        peer.send(&delimited(id.wrapping_add(1))).await;
        peer.send(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}\n")
            .await;
        peer.sync_reply(id).await;
        let req = peer.request().await;
        assert_eq!(req["execute"], "guest-get-host-name");
        peer.send(b"{\"return\": {\"host-name\": \"fresh\"}}\n")
            .await;
        let req = peer.request().await;
        assert_eq!(req["execute"], "guest-get-timezone");
        peer.send(b"{\"return\": {\"offset\": -18000}}\n").await;
    })
    .await;
    let mut agent = Agent::connect(&sock).await.unwrap();
    agent.sync().await.unwrap();
    assert_eq!(agent.host_name().await.unwrap(), "fresh");
    let tz = agent.timezone().await.unwrap();
    assert_eq!((tz.zone, tz.offset), (None, -18000));
}

#[tokio::test]
async fn an_oversized_reply_is_an_error_and_the_next_call_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 64 * 1024;
    let sock = fake_agent(dir.path(), move |mut peer| async move {
        let id = peer.sync_id().await;
        peer.sync_reply(id).await;
        assert_eq!(peer.request().await["execute"], "guest-get-users");
        // Four times the limit, and the line has no end yet.
        let mut huge = b"{\"return\": [\"".to_vec();
        huge.resize(4 * limit, b'a');
        // The client stops reading at the limit, so this write may block. Writing from another
        // task lets this peer go on reading.
        let (mut r, mut w) = (peer.r, peer.w);
        let writer = tokio::spawn(async move {
            w.write_all(&huge).await.unwrap();
            w.write_all(b"\"]}\n").await.unwrap();
            w
        });
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).await.unwrap();
        let start = line.iter().rposition(|&b| b == 0xFF).unwrap() + 1;
        let req: Value = serde_json::from_slice(&line[start..]).unwrap();
        assert_eq!(req["execute"], "guest-sync-delimited");
        let id = req["arguments"]["id"].as_u64().unwrap();
        let mut w = writer.await.unwrap();
        w.write_all(&delimited(id)).await.unwrap();
        line.clear();
        r.read_until(b'\n', &mut line).await.unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&line).unwrap()["execute"],
            "guest-ping"
        );
        w.write_all(b"{\"return\": {}}\n").await.unwrap();
    })
    .await;
    let opts = AgentOptions {
        max_reply: limit,
        ..AgentOptions::default()
    };
    let mut agent = Agent::connect_with(&sock, opts).await.unwrap();
    let e = agent.users().await.unwrap_err();
    assert!(
        matches!(&e, AgentError::ReplyTooLong { command, limit: l }
            if command == "guest-get-users" && *l == limit),
        "{e:?}"
    );
    assert!(!agent.is_synced());
    // The rest of the oversized line is skipped during the resync.
    agent.ping().await.unwrap();
    assert!(agent.is_synced());
}

#[tokio::test]
async fn the_default_limit_is_one_mebibyte() {
    let dir = tempfile::tempdir().unwrap();
    let sock = fake_agent(dir.path(), |mut peer| async move {
        let id = peer.sync_id().await;
        peer.sync_reply(id).await;
        peer.request().await;
        let mut huge = b"{\"return\": \"".to_vec();
        huge.resize(kubevirt_launcher::agent::MAX_REPLY + 1, b'a');
        huge.extend_from_slice(b"\"}\n");
        // The client may stop reading and close, so a failed write is expected here.
        let _ = peer.w.write_all(&huge).await;
    })
    .await;
    let mut agent = Agent::connect(&sock).await.unwrap();
    let e = agent.host_name().await.unwrap_err();
    assert!(matches!(e, AgentError::ReplyTooLong { .. }), "{e:?}");
}

#[tokio::test]
async fn shutdown_succeeds_on_silence_or_close_and_fails_on_an_error_reply() {
    let dir = tempfile::tempdir().unwrap();
    let opts = AgentOptions {
        shutdown_wait: Duration::from_millis(200),
        ..AgentOptions::default()
    };

    // Silence after the command: the guest is shutting down.
    let sock = fake_agent(dir.path(), |mut peer| async move {
        let id = peer.sync_id().await;
        peer.sync_reply(id).await;
        let req = peer.request().await;
        assert_eq!(req["execute"], "guest-shutdown");
        assert_eq!(req["arguments"]["mode"], "halt");
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let mut agent = Agent::connect_with(&sock, opts).await.unwrap();
    let t = Instant::now();
    agent.shutdown(ShutdownMode::Halt).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(!agent.is_synced());

    // The connection closes after the command: also success.
    let sub = dir.path().join("close");
    std::fs::create_dir(&sub).unwrap();
    let sock = fake_agent(&sub, |mut peer| async move {
        let id = peer.sync_id().await;
        peer.sync_reply(id).await;
        peer.request().await;
    })
    .await;
    let mut agent = Agent::connect_with(&sock, opts).await.unwrap();
    agent.shutdown(ShutdownMode::Powerdown).await.unwrap();
    // The connection is gone, and the next call reconnects. The fake serves one connection
    // only, so that fails with a timeout or a connect error, not a hang.
    let t = Instant::now();
    let e = agent.ping().await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{e:?}");

    // An error reply: the shutdown did not happen.
    let sub = dir.path().join("error");
    std::fs::create_dir(&sub).unwrap();
    let sock = fake_agent(&sub, |mut peer| async move {
        let id = peer.sync_id().await;
        peer.sync_reply(id).await;
        peer.request().await;
        peer.send(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"child process has failed to shutdown\"}}\n")
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    let mut agent = Agent::connect_with(&sock, opts).await.unwrap();
    let e = agent.shutdown(ShutdownMode::Reboot).await.unwrap_err();
    assert!(
        matches!(&e, AgentError::Command { desc, .. } if desc.contains("failed to shutdown")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_closed_connection_is_disconnected_and_a_missing_socket_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = fake_agent(dir.path(), |mut peer| async move {
        let id = peer.sync_id().await;
        peer.sync_reply(id).await;
        peer.request().await;
        // Close without answering: QEMU exited.
    })
    .await;
    let mut agent = Agent::connect(&sock).await.unwrap();
    let e = agent.os_info().await.unwrap_err();
    assert!(
        matches!(&e, AgentError::Disconnected { command } if command == "guest-get-osinfo"),
        "{e:?}"
    );
    let e = Agent::connect(&dir.path().join("absent.sock"))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, AgentError::Connect { .. }), "{e:?}");
}

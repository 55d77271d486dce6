//! `virtctl console VMI`: the guest's serial console over the `console` websocket.
//!
//! Interactive (stdin is a terminal): the terminal is put in raw mode, so every key, Ctrl+C
//! included, goes to the guest; `Ctrl+]` leaves, and the terminal is restored on every way out
//! (escape, closed connection, error, SIGTERM/SIGHUP). From a pipe: stdin is forwarded as is,
//! and after it ends the output keeps being printed until the connection closes or the guest
//! has been quiet for [`QUIET_AFTER_EOF`], so `echo cmd | virtctl console vm` shows the
//! command's output.

use crate::client::{connect, Error};
use crate::stream::{self, is_closed};
use crate::GlobalArgs;
use futures::{SinkExt, StreamExt};
use std::io::{Read, Write};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// `Ctrl+]`, KubeVirt's escape sequence.
pub const ESCAPE: u8 = 0x1d;

/// With stdin from a pipe: how long the console may stay silent after stdin ended before
/// virtctl exits.
pub const QUIET_AFTER_EOF: Duration = Duration::from_secs(3);

#[derive(clap::Args, Debug)]
#[command(after_long_help = "\
Interactive use (stdin is a terminal): the escape sequence ^] (Ctrl+]) leaves the console.

Non-interactive use (stdin is a pipe or file): stdin is forwarded to the guest; after stdin
ends, virtctl keeps printing the console output until the connection closes or no output has
arrived for 3 seconds, then exits. Example:
  echo 'uname -a' | virtctl console myvmi")]
pub struct ConsoleArgs {
    /// The VirtualMachineInstance.
    #[arg(value_name = "VMI")]
    pub name: String,
    /// The number of minutes to wait for the virtual machine instance to be ready.
    #[arg(long, default_value_t = 5, value_name = "MINUTES")]
    pub timeout: u64,
}

/// Raw mode on a terminal, undone when dropped.
pub struct RawMode {
    fd: libc::c_int,
    saved: libc::termios,
}

impl RawMode {
    /// Puts `fd` in raw mode (as Go's `term.MakeRaw`: no echo, no line editing, no signals).
    pub fn enter(fd: libc::c_int) -> std::io::Result<RawMode> {
        // SAFETY: tcgetattr/tcsetattr/cfmakeraw only read and write the termios struct we own.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(RawMode { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved by `enter` on the same descriptor.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

/// Splits an input chunk at the escape byte: what to forward, and whether to leave.
pub fn split_escape(chunk: &[u8]) -> (&[u8], bool) {
    match chunk.iter().position(|&b| b == ESCAPE) {
        Some(i) => (&chunk[..i], true),
        None => (chunk, false),
    }
}

/// Whether an answer means "not running yet": KubeVirt's `SerialConsole` retries on 400 until
/// its timeout; virt-api also answers 409 for a VMI that is not Running. "No serial consoles
/// are present." is a 400 that waiting cannot fix.
fn not_ready_yet(e: &stream::OpenError) -> bool {
    match e.code {
        Some(409) => true,
        Some(400) => !e.error.to_string().contains("are present"),
        _ => false,
    }
}

/// Opens the console, retrying while the VMI is not running yet, until `timeout`.
async fn open_with_retry(
    conn: &crate::client::Conn,
    name: &str,
    timeout: Duration,
) -> crate::Result<stream::Ws> {
    let deadline = Instant::now() + timeout;
    loop {
        match stream::open(conn, name, "console").await {
            Ok(ws) => return Ok(ws),
            Err(e) if not_ready_yet(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) if not_ready_yet(&e) => {
                return Err(Error::Failed(format!(
                    "Timeout trying to connect to the virtual machine instance ({})",
                    e.error
                )))
            }
            Err(e) => return Err(e.error),
        }
    }
}

/// Resolves when SIGTERM or SIGHUP arrives (SIGINT too, though in raw mode Ctrl+C is a byte).
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = hup.recv() => {}
        _ = int.recv() => {}
    }
}

pub async fn run(g: &GlobalArgs, a: ConsoleArgs) -> crate::Result<i32> {
    let conn = connect(g, true).await?;
    let timeout = Duration::from_secs(a.timeout.saturating_mul(60));
    let ws = tokio::select! {
        ws = open_with_retry(&conn, &a.name, timeout) => ws?,
        _ = terminated() => {
            eprintln!();
            return Ok(0);
        }
    };
    let interactive = stdin_is_terminal();
    eprintln!(
        "Successfully connected to {} console. The escape sequence is ^]",
        a.name
    );
    // Restored when this function returns, whichever way it does.
    let _raw = if interactive {
        Some(RawMode::enter(0).map_err(|e| Error::io("Make raw terminal failed", e))?)
    } else {
        None
    };

    // stdin is read on a plain thread: a blocking read cannot be cancelled, and the runtime is
    // shut down without waiting for it.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let (mut sink, mut source) = ws.split();
    let mut stdout = std::io::stdout();
    let mut stdin_open = true;
    let mut last_output = Instant::now();
    let term = terminated();
    tokio::pin!(term);
    let result: crate::Result<()> = loop {
        let quiet_deadline = last_output + QUIET_AFTER_EOF;
        tokio::select! {
            msg = source.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    last_output = Instant::now();
                    if stdout.write_all(&b).and_then(|_| stdout.flush()).is_err() {
                        break Ok(());
                    }
                }
                Some(Ok(Message::Close(_))) | None => break Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) if is_closed(&e) => break Ok(()),
                Some(Err(e)) => break Err(Error::Transport(format!("console connection: {e}"))),
            },
            chunk = rx.recv(), if stdin_open => match chunk {
                Some(chunk) => {
                    let (data, leave) = split_escape(&chunk);
                    if !data.is_empty() {
                        if let Err(e) = sink.send(Message::Binary(data.to_vec().into())).await {
                            if is_closed(&e) {
                                break Ok(());
                            }
                            break Err(Error::Transport(format!("console connection: {e}")));
                        }
                    }
                    if leave {
                        break Ok(());
                    }
                }
                None => {
                    if interactive {
                        break Ok(());
                    }
                    stdin_open = false;
                    last_output = last_output.max(Instant::now());
                }
            },
            _ = tokio::time::sleep_until(quiet_deadline), if !stdin_open => break Ok(()),
            _ = &mut term => break Ok(()),
        }
    };
    let _ = sink.send(Message::Close(None)).await;
    drop(_raw);
    if interactive {
        eprintln!();
    }
    result.map(|_| 0)
}

//! The serial console: QEMU's serial chardev socket, fanned out to any number of clients on
//! `DIR/console.sock` (both ways) and appended to `DIR/serial.log` (KubeVirt's
//! logSerialConsole). Lines are scanned for what the launcher reports: the guest's `eth0: <ip>`.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc};

/// What the serial output told us.
#[derive(Clone, Debug, Default)]
pub struct ConsoleFacts {
    pub guest_ip: Option<String>,
    pub first_byte: Option<std::time::Instant>,
}

#[derive(Clone)]
pub struct Console {
    pub output: broadcast::Sender<Vec<u8>>,
    pub input: mpsc::Sender<Vec<u8>>,
    pub facts: Arc<Mutex<ConsoleFacts>>,
}

impl Console {
    /// Attach to QEMU's serial socket and serve `console_sock`.
    pub async fn start(
        serial_sock: &Path,
        console_sock: &Path,
        log: &Path,
    ) -> std::io::Result<Console> {
        let serial = UnixStream::connect(serial_sock).await?;
        let (mut rd, mut wr) = serial.into_split();
        let (output, _) = broadcast::channel::<Vec<u8>>(1024);
        let (input, mut input_rx) = mpsc::channel::<Vec<u8>>(64);
        let facts = Arc::new(Mutex::new(ConsoleFacts::default()));
        let mut logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let out = output.clone();
        let f2 = facts.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut line = Vec::new();
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                let _ = logf.write_all(chunk);
                {
                    let mut f = f2.lock().unwrap_or_else(|e| e.into_inner());
                    f.first_byte.get_or_insert_with(std::time::Instant::now);
                    for &b in chunk {
                        if b == b'\n' {
                            if let Some(ip) = guest_ip(&String::from_utf8_lossy(&line)) {
                                f.guest_ip = Some(ip);
                            }
                            line.clear();
                        } else if line.len() < 512 {
                            line.push(b);
                        }
                    }
                }
                let _ = out.send(chunk.to_vec());
            }
        });
        tokio::spawn(async move {
            while let Some(data) = input_rx.recv().await {
                if wr.write_all(&data).await.is_err() {
                    break;
                }
            }
        });
        let _ = std::fs::remove_file(console_sock);
        let listener = UnixListener::bind(console_sock)?;
        let console = Console {
            output,
            input,
            facts,
        };
        let c = console.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move { c.serve_client(stream).await });
            }
        });
        Ok(console)
    }

    async fn serve_client(&self, stream: UnixStream) {
        let (mut rd, mut wr) = stream.into_split();
        let mut rx = self.output.subscribe();
        let input = self.input.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if input.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        loop {
            match rx.recv().await {
                Ok(data) => {
                    if wr.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        reader.abort();
    }
}

/// The demo guest prints `eth0: 10.0.2.15/24` on a DHCP lease.
fn guest_ip(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("eth0: ")?;
    let ip = rest.split('/').next()?.trim();
    ip.parse::<std::net::IpAddr>().ok().map(|i| i.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn guest_ip_comes_from_the_eth0_line() {
        assert_eq!(
            super::guest_ip("eth0: 10.0.2.2/24\r").as_deref(),
            Some("10.0.2.2")
        );
        assert_eq!(super::guest_ip("eth0: link up"), None);
    }
}

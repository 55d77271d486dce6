//! The serial console: QEMU's serial chardev socket, fanned out to any number of clients on
//! `DIR/console.sock` (both ways) and appended to `DIR/serial.log` (KubeVirt's
//! logSerialConsole). Nothing the guest prints is taken as a fact about it beyond when it first
//! printed (the launcher benchmark's boot time): addresses come from the launcher's own
//! network setup.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc};

/// What the serial output told us.
#[derive(Clone, Debug, Default)]
pub struct ConsoleFacts {
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
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                let _ = logf.write_all(chunk);
                f2.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .first_byte
                    .get_or_insert_with(std::time::Instant::now);
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

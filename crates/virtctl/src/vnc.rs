//! `virtctl vnc --proxy-only VMI`: a local TCP port whose connections are spliced to the
//! VMI's `vnc` websocket. It prints `{"port":N}` on stdout as KubeVirt's virtctl does, then
//! serves connections (each gets its own websocket) until interrupted.

use crate::client::{connect, Error};
use crate::stream;
use crate::GlobalArgs;
use tokio::net::TcpListener;

#[derive(clap::Args, Debug)]
pub struct VncArgs {
    /// The VirtualMachineInstance.
    #[arg(value_name = "VMI")]
    pub name: String,
    /// Only run the local proxy and print its port as {"port":N}; required here, since this
    /// virtctl does not launch a VNC viewer.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub proxy_only: bool,
    /// Local port to listen on (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
}

/// What to say when a viewer would have to be launched.
pub const VIEWER_UNSUPPORTED: &str = "launching a VNC viewer is not supported by this virtctl: \
run `virtctl vnc --proxy-only VMI`, which prints {\"port\":N}, and connect your viewer to \
127.0.0.1:N (e.g. `remote-viewer vnc://127.0.0.1:N`)";

pub async fn run(g: &GlobalArgs, a: VncArgs) -> crate::Result<i32> {
    if !a.proxy_only {
        return Err(Error::Usage(VIEWER_UNSUPPORTED.into()));
    }
    let conn = connect(g, true).await?;
    // Connect once before listening, so a missing or stopped VMI fails right away.
    let first = stream::open(&conn, &a.name, "vnc")
        .await
        .map_err(|e| e.error.context(format!("Can't access VMI {}: ", a.name)))?;
    let listener = TcpListener::bind((a.address.as_str(), a.port))
        .await
        .map_err(|e| Error::io(format!("Can't listen on {}:{}", a.address, a.port), e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("local address", e))?
        .port();
    println!("{}", serde_json::json!({ "port": port }));
    let mut first = Some(first);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        let (tcp, _) = accepted.map_err(|e| Error::io("accepting a VNC client", e))?;
        let ws = match first.take() {
            Some(ws) => ws,
            None => match stream::open(&conn, &a.name, "vnc").await {
                Ok(ws) => ws,
                Err(e) => {
                    eprintln!("Can't access VMI {}: {}", a.name, e.error);
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            if let Err(e) = stream::splice(ws, tcp).await {
                eprintln!("vnc connection: {e}");
            }
        });
    }
}

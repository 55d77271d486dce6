//! KubeVirt's streaming subresources (console, vnc): a websocket upgrade of
//! `GET .../virtualmachineinstances/NAME/SUB` with the `plain.kubevirt.io` subprotocol, raw
//! bytes in binary frames both ways (kubevirt/client-go `kubevirt/typed/core/v1/websocket.go`).
//!
//! The upgrade goes through the kube client, so every kubeconfig authentication method and
//! its TLS settings apply. kube's own `Client::connect` is not used: it insists on the
//! Kubernetes `v4/v5.channel.k8s.io` subprotocols, which virt-api does not speak.

use crate::client::{subresource_path, Conn, Error};
use futures::{SinkExt, StreamExt};
use http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// KubeVirt's subprotocol for raw byte streams (`subresources.PlainStreamProtocolName`).
pub const PLAIN_STREAM_PROTOCOL: &str = "plain.kubevirt.io";

pub type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Why a stream could not be opened.
#[derive(Debug)]
pub struct OpenError {
    /// The HTTP status, when the server answered without upgrading.
    pub code: Option<u16>,
    pub error: Error,
}

/// Opens the websocket of `virtualmachineinstances/NAME/SUB`.
pub async fn open(conn: &Conn, name: &str, sub: &str) -> Result<Ws, OpenError> {
    let path = subresource_path(&conn.namespace, "virtualmachineinstances", name, sub);
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let fail = |code: Option<u16>, error: Error| OpenError { code, error };
    let req = Request::get(&path)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, key.as_str())
        .header(header::SEC_WEBSOCKET_PROTOCOL, PLAIN_STREAM_PROTOCOL)
        .body(kube::client::Body::empty())
        .map_err(|e| fail(None, Error::Failed(format!("bad request {path}: {e}"))))?;
    let res = conn.client.send(req).await.map_err(|e| {
        fail(
            None,
            Error::Transport(format!(
                "cannot reach the API server at {}: {e}",
                conn.config.cluster_url
            )),
        )
    })?;
    let status = res.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = res
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).trim().to_string();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        let reason = status.canonical_reason().unwrap_or("").to_string();
        return Err(fail(
            Some(status.as_u16()),
            Error::Api {
                code: status.as_u16(),
                reason,
                message: format!(
                    "Can't connect to websocket ({}): {message}",
                    status.as_u16()
                ),
            },
        ));
    }
    let accept = res
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept != derive_accept_key(key.as_bytes()) {
        return Err(fail(
            None,
            Error::Transport(
                "the server's websocket handshake is invalid (Sec-WebSocket-Accept)".into(),
            ),
        ));
    }
    let upgraded = hyper::upgrade::on(res).await.map_err(|e| {
        fail(
            None,
            Error::Transport(format!("websocket upgrade failed: {e}")),
        )
    })?;
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
}

/// Whether a websocket error only means the peer went away.
pub fn is_closed(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    use tokio_tungstenite::tungstenite::Error as E;
    matches!(
        e,
        E::ConnectionClosed
            | E::AlreadyClosed
            | E::Protocol(ProtocolError::ResetWithoutClosingHandshake)
    ) || matches!(e, E::Io(io) if matches!(io.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof))
}

/// Copies bytes both ways between `io` (a local TCP connection) and `ws` until either side
/// closes. Returns an error only when a side breaks, not when it closes.
pub async fn splice<S>(ws: Ws, io: S) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut source) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(io);
    let up = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = rd
                .read(&mut buf)
                .await
                .map_err(|e| Error::io("reading the local connection", e))?;
            if n == 0 {
                let _ = sink.send(Message::Close(None)).await;
                return Ok::<(), Error>(());
            }
            if let Err(e) = sink.send(Message::Binary(buf[..n].to_vec().into())).await {
                if is_closed(&e) {
                    return Ok(());
                }
                return Err(Error::Transport(format!("websocket send: {e}")));
            }
        }
    };
    let down = async {
        while let Some(msg) = source.next().await {
            match msg {
                Ok(Message::Binary(b)) => {
                    if wr.write_all(&b).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(Message::Close(_)) => break,
                Ok(_) => {}
                Err(e) if is_closed(&e) => break,
                Err(e) => return Err(Error::Transport(format!("websocket receive: {e}"))),
            }
        }
        let _ = wr.shutdown().await;
        Ok::<(), Error>(())
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

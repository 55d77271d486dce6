//! The node agent's `/metrics` (virt-handler's metrics port, 8443 in KubeVirt): this node's
//! per-VMI families ([`crate::metrics::NodeStats`]) and `kubevirt_virt_handler_ready_status`,
//! in Prometheus' text format, for a Prometheus scraping every node.
//!
//! A listener of its own beside the mutual-TLS endpoint ([`crate::rest`]), on the node's
//! address: HTTPS with the node's certificate from the cluster CA ([`crate::tls`]), but no
//! client certificate: a scraper presents a bearer token, which the agent checks against the
//! API server as kube-rbac-proxy does — a TokenReview (who is it?) and a SubjectAccessReview
//! (may they `get` the non-resource URL `/metrics`?). No token or an unknown one: 401; a
//! token whose user may not: 403. Positive answers are cached for [`AUTH_CACHE_FOR`], so a
//! scrape every few seconds costs the API server two reviews per token and interval.
//!
//! The address is published on the Node ([`METRICS_ENDPOINT_ANNOTATION`]); a Prometheus
//! configuration is written from it (`docs/observability.md`).

use crate::tls::Issued;
use bytes::Bytes;
use http::{header, Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// The Node annotation holding the node agent's metrics endpoint (`IP:PORT`).
pub const METRICS_ENDPOINT_ANNOTATION: &str = "kubevirt-rs.io/handler-metrics-endpoint";
/// KubeVirt's virt-handler metrics port; `kubevirt-rs node --metrics-port` (0: any free
/// port, published on the Node all the same).
pub const KUBEVIRT_METRICS_PORT: u16 = 8443;
/// How long an allowed token stays allowed without asking the API server again.
pub const AUTH_CACHE_FOR: Duration = Duration::from_secs(30);
/// The path served, and the non-resource URL a reader must be allowed to `get`.
pub const PATH: &str = "/metrics";
/// The longest a scrape waits for the launchers' statistics (the API server's is the same).
const SCRAPE_BUDGET: Duration = Duration::from_secs(3);
/// Tokens remembered at most; past that, the expired go, or all of them.
const AUTH_CACHE_MAX: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = http::Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = http::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn text(status: StatusCode, body: String) -> Reply {
    reply(status, "text/plain; charset=utf-8", body)
}

/// Why a scrape was refused, as kube-rbac-proxy answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No bearer token, or one the API server does not know: 401.
    Unauthorized,
    /// A known user without `get` on `/metrics`: 403.
    Forbidden { user: String },
    /// The API server could not be asked: 503.
    Unavailable(String),
}

impl Refused {
    fn reply(&self) -> Reply {
        match self {
            Refused::Unauthorized => {
                let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n".into());
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                r
            }
            Refused::Forbidden { user } => text(
                StatusCode::FORBIDDEN,
                format!("Forbidden (user={user}, verb=get, resource=, subresource=)\n"),
            ),
            Refused::Unavailable(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check the token: {why}\n"),
            ),
        }
    }
}

/// The bearer token of a request's `Authorization` header.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The `/metrics` server of a node agent.
pub struct MetricsEndpoint {
    client: Client,
    /// Allowed tokens and when they were allowed.
    allowed: Mutex<HashMap<String, Instant>>,
}

impl MetricsEndpoint {
    pub fn new(client: Client) -> Arc<MetricsEndpoint> {
        Arc::new(MetricsEndpoint {
            client,
            allowed: Mutex::default(),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.allowed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `token`'s user may read `/metrics`: from the cache, else TokenReview and
    /// SubjectAccessReview.
    pub async fn authorize(&self, token: Option<&str>) -> Result<(), Refused> {
        let token = token.ok_or(Refused::Unauthorized)?;
        if self
            .cache()
            .get(token)
            .is_some_and(|at| at.elapsed() < AUTH_CACHE_FOR)
        {
            return Ok(());
        }
        let unavailable = |e: kube::Error| Refused::Unavailable(e.to_string());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(unavailable)?;
        let status = reviewed.status.unwrap_or_default();
        let user = match status.user {
            Some(u) if status.authenticated == Some(true) => u,
            _ => return Err(Refused::Unauthorized),
        };
        let name = user.username.clone().unwrap_or_default();
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(PATH.to_string()),
                    verb: Some("get".to_string()),
                }),
                resource_attributes: None,
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await
            .map_err(unavailable)?;
        if !answer.status.is_some_and(|s| s.allowed) {
            tracing::info!(user = %name, "refused a /metrics scrape");
            return Err(Refused::Forbidden { user: name });
        }
        let mut cache = self.cache();
        if cache.len() >= AUTH_CACHE_MAX {
            cache.retain(|_, at| at.elapsed() < AUTH_CACHE_FOR);
            if cache.len() >= AUTH_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), Instant::now());
        Ok(())
    }

    async fn handle(&self, req: http::Request<Incoming>) -> Reply {
        if req.uri().path() != PATH {
            return text(StatusCode::NOT_FOUND, "404 page not found\n".into());
        }
        if req.method() != Method::GET {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{PATH}: use GET, not {}\n", req.method()),
            );
        }
        if let Err(r) = self.authorize(bearer(req.headers())).await {
            return r.reply();
        }
        kubevirt_runtime::metrics::refresh(SCRAPE_BUDGET).await;
        match kubevirt_runtime::metrics::encode() {
            Ok(body) => reply(
                StatusCode::OK,
                kubevirt_runtime::metrics::CONTENT_TYPE,
                body,
            ),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding the metrics: {e}\n"),
            ),
        }
    }

    /// Accepts connections on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a metrics connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let ep = self.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "metrics TLS handshake");
                        return;
                    }
                    Err(_) => return,
                };
                let service = hyper::service::service_fn(move |req| {
                    let ep = ep.clone();
                    async move { Ok::<_, std::convert::Infallible>(ep.handle(req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "metrics connection");
                }
            });
        }
    }
}

/// The metrics endpoint a Node advertises, if any (its annotation, an `IP:PORT`).
pub fn endpoint_of(node: &Node) -> Option<SocketAddr> {
    node.metadata
        .annotations
        .as_ref()?
        .get(METRICS_ENDPOINT_ANNOTATION)?
        .parse()
        .ok()
}

/// Serves this node's `/metrics` on `node_address:port` with its certificate `issued`,
/// registers the node's collectors and publishes the endpoint on the Node. Returns when the
/// listener stops.
pub async fn run(
    client: Client,
    config: crate::Config,
    port: u16,
    issued: Arc<Issued>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let tls = issued.server_config_for_bearer_clients()?;
    let listener = TcpListener::bind((config.node_address, port))
        .await
        .with_context(|| {
            format!(
                "listening on {}:{port} (--metrics-port)",
                config.node_address
            )
        })?;
    let address = listener.local_addr()?;
    crate::metrics::NodeStats::register(&config.data_dir, &config.node_name);
    kubevirt_runtime::metrics::handler_ready().set(1);
    let patch =
        json!({"metadata": {"annotations": {METRICS_ENDPOINT_ANNOTATION: address.to_string()}}});
    Api::<Node>::all(client.clone())
        .patch(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .context("publishing the metrics endpoint on the Node")?;
    tracing::info!(%address, "node metrics serving (HTTPS, bearer tokens)");
    MetricsEndpoint::new(client).serve(listener, tls).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_token_is_taken() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().expect("header"));
            m
        };
        assert_eq!(bearer(&h("Bearer abc.def")), Some("abc.def"));
        assert_eq!(bearer(&h("bearer  abc")), Some("abc"));
        for bad in ["Basic YWRtaW46eA==", "Bearer", "Bearer ", "abc"] {
            assert_eq!(bearer(&h(bad)), None, "{bad}");
        }
        assert_eq!(bearer(&http::HeaderMap::new()), None);
    }
}

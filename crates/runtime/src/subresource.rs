//! The plug between the API server and the components that serve paths of their own: an
//! aggregated API group (virt-api's `subresources.kubevirt.io`, CDI's
//! `upload.cdi.kubevirt.io`) or CDI's upload proxy. The API server routes a request to a
//! [`SubresourceHandler`] with its path and [`Query`]; the handler answers with any response.
//!
//! Also the one webhook of virt-api's that the embedded API server calls: the
//! [`EvictionAdmitter`] that decides the evictions of launcher Pods (`pods/eviction`).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use std::collections::HashMap;

/// Query parameters of a request, as given.
#[derive(Clone, Debug, Default)]
pub struct Query(pub HashMap<String, String>);

impl Query {
    /// Parses a URL query string (`a=1&b=x`); `None` is the empty query.
    pub fn parse(q: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The value of `k`; an empty value counts as absent.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// Whether `k` is `true` or `1`.
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true") | Some("1"))
    }

    /// `dryRun=All`.
    pub fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }
}

/// Serves an aggregated API group or the CDI upload proxy; plugged into the API server by the
/// control plane.
#[async_trait::async_trait]
pub trait SubresourceHandler: Send + Sync {
    /// `path`: the segments after `/apis/<group>/<version>/` (for the upload proxy: the whole
    /// path, e.g. `["v1beta1", "upload"]`).
    async fn handle(
        &self,
        method: Method,
        path: Vec<String>,
        query: Query,
        headers: HeaderMap,
        body: Body,
    ) -> Response;

    /// The whole request, for handlers that need more than the body (a websocket upgrade
    /// needs the connection's upgrade handle). By default: [`Self::handle`].
    async fn handle_request(&self, path: Vec<String>, query: Query, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        self.handle(parts.method, path, query, parts.headers, body)
            .await
    }
}

/// virt-api's answer to an eviction (KubeVirt's pod-eviction admitter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EvictionVerdict {
    /// The eviction goes ahead: the API server deletes the Pod.
    Allow,
    /// Refused; the API server answers as kube-apiserver relays a webhook's denial.
    Deny {
        /// The webhook's name, as the client sees it in the message.
        webhook: &'static str,
        /// The HTTP status (KubeVirt: 429 TooManyRequests, which `kubectl drain` retries).
        code: u16,
        message: String,
    },
}

/// Decides the eviction of a Pod before the API server deletes it: KubeVirt's
/// `virt-launcher-eviction-interceptor` validating webhook, plugged into the embedded API
/// server by the control plane (a real cluster calls virt-api's webhook instead).
#[async_trait::async_trait]
pub trait EvictionAdmitter: Send + Sync {
    /// `pod`: the Pod as stored; `eviction`: the `policy/v1` Eviction of the request (its
    /// name and namespace already checked against the URL); `dry_run`: nothing may change.
    async fn admit(
        &self,
        pod: &serde_json::Value,
        eviction: &serde_json::Value,
        dry_run: bool,
    ) -> EvictionVerdict;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parses_and_reads() {
        let q = Query::parse(Some("dryRun=All&watch=1&empty=&name=a%20b"));
        assert!(q.dry_run());
        assert!(q.flag("watch"));
        assert_eq!(q.get("empty"), None);
        assert_eq!(q.get("name"), Some("a b"));
        assert!(!Query::parse(None).flag("watch"));
    }
}

//! The API server's own metrics, named as kube-apiserver's: `apiserver_request_total`,
//! `apiserver_request_duration_seconds`, and the store's commit latency. Registered in the
//! process registry (`kubevirt_runtime::metrics`) that `GET /metrics` encodes.

use kubevirt_runtime::metrics::{register, HistogramFamily, Labels};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::LazyLock;
use std::time::Duration;

/// kube-apiserver's `apiserver_request_duration_seconds` buckets.
const REQUEST_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// Commit latencies of a local store with group commit: 100 µs to 10 s.
const COMMIT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

struct ApiMetrics {
    requests: Family<Labels, Counter>,
    duration: HistogramFamily,
    commit: Histogram,
}

static METRICS: LazyLock<ApiMetrics> = LazyLock::new(|| {
    let m = ApiMetrics {
        requests: Family::default(),
        duration: Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS)),
        commit: Histogram::new(COMMIT_BUCKETS),
    };
    register(
        "apiserver_request",
        "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.",
        m.requests.clone(),
    );
    register(
        "apiserver_request_duration_seconds",
        "Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.",
        m.duration.clone(),
    );
    register(
        "apiserver_storage_commit_duration_seconds",
        "Latency in seconds of the store's durable commits (one redb transaction and fsync per group of writes).",
        m.commit.clone(),
    );
    m
});

/// Registers the families (so `/metrics` lists them before the first request).
pub fn init() {
    LazyLock::force(&METRICS);
}

/// kube-apiserver's metric verb: the request verb upper-cased, `LIST`/`WATCH` for collection
/// reads and watches, `APPLY` for server-side apply.
fn metric_verb(attrs: &crate::rbac::Attributes, apply: bool) -> String {
    match attrs.verb.as_str() {
        "list" => "LIST".into(),
        "watch" => "WATCH".into(),
        "get" => "GET".into(),
        "create" => "POST".into(),
        "update" => "PUT".into(),
        "patch" if apply => "APPLY".into(),
        "patch" => "PATCH".into(),
        "delete" | "deletecollection" => "DELETE".into(),
        other => other.to_ascii_uppercase(),
    }
}

/// Records one served request.
pub fn observe_request(
    attrs: &crate::rbac::Attributes,
    segs: &[&str],
    apply: bool,
    code: u16,
    took: Duration,
) {
    let (version, scope) = if attrs.resource_request {
        let version = match segs {
            ["api", v, ..] | ["apis", _, v, ..] => v.to_string(),
            _ => String::new(),
        };
        let scope = if !attrs.name.is_empty() {
            "resource"
        } else if !attrs.namespace.is_empty() {
            "namespace"
        } else {
            "cluster"
        };
        (version, scope)
    } else {
        (String::new(), "")
    };
    let mut labels: Labels = vec![
        ("verb", metric_verb(attrs, apply)),
        ("group", attrs.group.clone()),
        ("version", version),
        ("resource", attrs.resource.clone()),
        ("subresource", attrs.subresource.clone()),
        ("scope", scope.to_string()),
        ("component", "apiserver".into()),
    ];
    METRICS
        .duration
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
    labels.push(("code", code.to_string()));
    METRICS.requests.get_or_create(&labels).inc();
}

/// Records one durable commit of the store.
pub fn observe_commit(took: Duration) {
    METRICS.commit.observe(took.as_secs_f64());
}

/// The longest a scrape waits for collectors' refreshes (the launchers' statistics).
const SCRAPE_BUDGET: Duration = Duration::from_secs(3);

/// `GET /metrics`: the process registry in Prometheus' text format. Authorized before this by
/// RBAC as kube-apiserver does: `get` on the non-resource URL `/metrics`.
pub async fn serve() -> crate::error::ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    kubevirt_runtime::metrics::refresh(SCRAPE_BUDGET).await;
    let text = kubevirt_runtime::metrics::encode().map_err(|e| {
        crate::error::ApiError::new(500, "InternalError", format!("encoding metrics: {e}"))
    })?;
    Ok((
        [(
            http::header::CONTENT_TYPE,
            kubevirt_runtime::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response())
}

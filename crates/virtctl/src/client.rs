//! The connection to the API server: kubeconfig loading (kubectl's rules), the namespace, and
//! JSON requests whose failures carry the API's `Status` message.

use crate::GlobalArgs;
use http::{Method, Request};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

/// Everything virtctl can fail with. The `Display` text is what the user sees.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or argument is wrong or missing; the message names it and says what to do.
    #[error("{0}")]
    Usage(String),
    /// No kubeconfig could be loaded, or it is unusable.
    #[error("{0}")]
    Config(String),
    /// The API server answered with a failure `Status`; `message` is its message.
    #[error("{message}")]
    Api {
        /// HTTP status code (e.g. 404, 409).
        code: u16,
        /// Machine-readable reason (`NotFound`, `Conflict`, ...), empty if the server gave none.
        reason: String,
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("{0}")]
    Transport(String),
    /// Reading or writing a local file or stream failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A failure wrapped with KubeVirt's wording for the command (e.g. "Error starting
    /// VirtualMachine "), followed by the cause.
    #[error("{prefix}{source}")]
    Command {
        prefix: String,
        #[source]
        source: Box<Error>,
    },
    /// A failure that is fully described by its message.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// Prefixes the error with KubeVirt's wording for the failed command.
    pub fn context(self, prefix: impl Into<String>) -> Error {
        Error::Command {
            prefix: prefix.into(),
            source: Box::new(self),
        }
    }

    /// The HTTP status of an API failure, looking through command context.
    pub fn api_code(&self) -> Option<u16> {
        match self {
            Error::Api { code, .. } => Some(*code),
            Error::Command { source, .. } => source.api_code(),
            _ => None,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => Error::Api {
                code: s.code,
                reason: s.reason.clone(),
                message: if s.message.is_empty() {
                    format!("the server answered {} {}", s.code, s.reason)
                } else {
                    s.message.clone()
                },
            },
            other => Error::Transport(other.to_string()),
        }
    }
}

/// A client for one cluster and the namespace commands act in.
#[derive(Clone)]
pub struct Conn {
    pub client: kube::Client,
    pub config: kube::Config,
    pub namespace: String,
}

/// The `-n` namespace if given, else the context's (kube sets `default` when it has none).
pub fn namespace_of(g: &GlobalArgs, config: &kube::Config) -> String {
    g.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| config.default_namespace.clone())
}

/// Loads the kubeconfig the way kubectl does: `--kubeconfig`, else `$KUBECONFIG` (a
/// `:`-separated list, merged), else `~/.kube/config`, else the in-cluster service account.
pub async fn load_config(g: &GlobalArgs) -> crate::Result<kube::Config> {
    let opts = KubeConfigOptions {
        context: g.context.clone(),
        cluster: g.cluster.clone(),
        user: g.user.clone(),
    };
    let kubeconfig = match &g.kubeconfig {
        Some(path) => Kubeconfig::read_from(path)
            .map_err(|e| Error::Config(format!("--kubeconfig {}: {e}", path.display())))?,
        None => match Kubeconfig::read() {
            Ok(k) => k,
            Err(read_err) => {
                return kube::Config::incluster().map_err(|_| {
                    Error::Config(format!(
                        "no kubeconfig found ({read_err}); set KUBECONFIG or pass --kubeconfig PATH"
                    ))
                });
            }
        },
    };
    kube::Config::from_custom_kubeconfig(kubeconfig, &opts)
        .await
        .map_err(|e| Error::Config(format!("invalid kubeconfig: {e}")))
}

/// Connects with the kubeconfig; `streaming` drops the read timeout, for consoles and proxies
/// that stay idle for long.
pub async fn connect(g: &GlobalArgs, streaming: bool) -> crate::Result<Conn> {
    let mut config = load_config(g).await?;
    if streaming {
        config.read_timeout = None;
        config.write_timeout = None;
    }
    let namespace = namespace_of(g, &config);
    let client = kube::Client::try_from(config.clone())
        .map_err(|e| Error::Config(format!("cannot build a client from the kubeconfig: {e}")))?;
    Ok(Conn {
        client,
        config,
        namespace,
    })
}

/// `/apis/subresources.kubevirt.io/v1/namespaces/NS/RESOURCE/NAME/SUB`.
pub fn subresource_path(namespace: &str, resource: &str, name: &str, sub: &str) -> String {
    format!("/apis/subresources.kubevirt.io/v1/namespaces/{namespace}/{resource}/{name}/{sub}")
}

impl Conn {
    /// Sends a request with an optional JSON body and returns the JSON answer (`Null` when
    /// the body is empty). A failure `Status` becomes [`Error::Api`] with its message.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> crate::Result<Value> {
        let bytes = match body {
            Some(v) => serde_json::to_vec(v).map_err(|e| Error::Failed(e.to_string()))?,
            None => Vec::new(),
        };
        let mut req = Request::builder().method(method).uri(path);
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        req = req.header(http::header::ACCEPT, "application/json");
        let req = req
            .body(bytes)
            .map_err(|e| Error::Failed(format!("bad request {path}: {e}")))?;
        let text = self
            .client
            .request_text(req)
            .await
            .map_err(|e| match Error::from(e) {
                Error::Transport(t) => Error::Transport(format!(
                    "cannot reach the API server at {}: {t}",
                    self.config.cluster_url
                )),
                other => other,
            })?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        // Subresources answer with an empty body or a Status; neither needs to be JSON to succeed.
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> crate::Result<Value> {
        self.json(Method::GET, path, None).await
    }

    /// `PUT` on a KubeVirt subresource with a JSON options body.
    pub async fn put_subresource(
        &self,
        resource: &str,
        name: &str,
        sub: &str,
        body: Option<&Value>,
    ) -> crate::Result<()> {
        let path = subresource_path(&self.namespace, resource, name, sub);
        self.json(Method::PUT, &path, body).await.map(|_| ())
    }

    /// `GET` of a subresource that answers text (`logs`), with a query string.
    pub async fn get_subresource_text(
        &self,
        resource: &str,
        name: &str,
        sub: &str,
        query: &str,
    ) -> crate::Result<String> {
        let path = format!(
            "{}?{query}",
            subresource_path(&self.namespace, resource, name, sub)
        );
        let req = Request::builder()
            .method(Method::GET)
            .uri(&path)
            .header(http::header::ACCEPT, "text/plain")
            .body(Vec::new())
            .map_err(|e| Error::Failed(format!("bad request {path}: {e}")))?;
        self.client
            .request_text(req)
            .await
            .map_err(|e| match Error::from(e) {
                Error::Transport(t) => Error::Transport(format!(
                    "cannot reach the API server at {}: {t}",
                    self.config.cluster_url
                )),
                other => other,
            })
    }

    /// `GET` of a subresource that answers JSON (`guestosinfo`, ...).
    pub async fn get_subresource(
        &self,
        resource: &str,
        name: &str,
        sub: &str,
    ) -> crate::Result<Value> {
        let path = subresource_path(&self.namespace, resource, name, sub);
        self.json(Method::GET, &path, None).await
    }
}

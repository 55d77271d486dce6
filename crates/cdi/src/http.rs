//! HTTP(S) transport shared by the `http`, `s3` and `registry` sources: TLS roots from the
//! DataVolume's `certConfigMap`, `insecureSkipVerify`, basic auth, extra headers, and the
//! transient/permanent classification the controller's retry logic relies on.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;

/// User name and password (CDI's `accessKeyId` / `secretKey` secret keys).
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// TLS settings of a source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Extra trusted CAs, PEM (the concatenated values of the `certConfigMap`).
    pub ca_pem: Option<Vec<u8>>,
    /// `insecureSkipVerify`: accept any server certificate.
    pub insecure_skip_verify: bool,
}

/// Errors of an HTTP transfer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the CA bundle (certConfigMap) holds no usable PEM certificate: {source}")]
    BadCaBundle { source: reqwest::Error },
    #[error("extra header {header:?} is not of the form \"Name: value\"")]
    BadHeader { header: String },
    #[error("cannot build the HTTP client: {source}")]
    Client { source: reqwest::Error },
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: reqwest::Error },
    #[error("TLS certificate of {url} was rejected: {source} (add its CA with certConfigMap, or set insecureSkipVerify)")]
    Certificate { url: String, source: reqwest::Error },
    #[error("timed out talking to {url}: {source}")]
    Timeout { url: String, source: reqwest::Error },
    #[error("{url} answered {status}{}", hint_for(*status))]
    Status { url: String, status: StatusCode },
    #[error("request to {url} failed: {source}")]
    Request { url: String, source: reqwest::Error },
}

fn hint_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => ": the credentials (secretRef) are missing or wrong",
        403 => ": access denied for these credentials",
        404 => ": no such file; check the URL",
        _ => "",
    }
}

impl HttpError {
    /// True when retrying later may succeed (connection refused/reset, timeouts, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            HttpError::Connect { .. } | HttpError::Timeout { .. } | HttpError::Request { .. } => {
                true
            }
            HttpError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            _ => false,
        }
    }

    pub(crate) fn from_reqwest(url: &str, e: reqwest::Error) -> Self {
        let url = url.to_string();
        if is_certificate_error(&e) {
            HttpError::Certificate { url, source: e }
        } else if e.is_timeout() {
            HttpError::Timeout { url, source: e }
        } else if e.is_connect() {
            HttpError::Connect { url, source: e }
        } else {
            HttpError::Request { url, source: e }
        }
    }
}

/// Walks the error chain for a rustls certificate rejection (retrying will not fix it).
fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if is_rustls_cert(inner) {
                    return true;
                }
            }
        }
        if is_rustls_cert(err) {
            return true;
        }
        cur = err.source();
    }
    false
}

fn is_rustls_cert(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        e.downcast_ref::<rustls::Error>(),
        Some(rustls::Error::InvalidCertificate(_)) | Some(rustls::Error::NoCertificatesPresented)
    )
}

/// Settings for a client.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClientOptions {
    pub(crate) tls: TlsOptions,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) read_timeout: Option<Duration>,
}

pub(crate) fn client(o: &ClientOptions) -> Result<reqwest::Client, HttpError> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("kubevirt-rs-cdi/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(o.connect_timeout.unwrap_or(Duration::from_secs(30)))
        .read_timeout(o.read_timeout.unwrap_or(Duration::from_secs(60)))
        .redirect(reqwest::redirect::Policy::limited(10));
    if let Some(pem) = &o.tls.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|source| HttpError::BadCaBundle { source })?;
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if o.tls.insecure_skip_verify {
        b = b.danger_accept_invalid_certs(true);
    }
    b.build().map_err(|source| HttpError::Client { source })
}

/// Parses CDI's `extraHeaders` entries (`"Name: value"`).
pub fn parse_headers(lines: &[String]) -> Result<HeaderMap, HttpError> {
    let mut m = HeaderMap::new();
    for l in lines {
        let bad = || HttpError::BadHeader { header: l.clone() };
        let (name, value) = l.split_once(':').ok_or_else(bad)?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
        m.append(name, value);
    }
    Ok(m)
}

/// Sends a GET and returns the response if it is a success.
pub(crate) async fn get(
    client: &reqwest::Client,
    url: &str,
    headers: HeaderMap,
    auth: Option<&BasicAuth>,
) -> Result<reqwest::Response, HttpError> {
    let mut req = client.get(url).headers(headers);
    if let Some(a) = auth {
        req = req.basic_auth(&a.username, Some(&a.password));
    }
    let resp = req
        .send()
        .await
        .map_err(|e| HttpError::from_reqwest(url, e))?;
    check_status(url, resp)
}

pub(crate) fn check_status(
    url: &str,
    resp: reqwest::Response,
) -> Result<reqwest::Response, HttpError> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(HttpError::Status {
            url: url.to_string(),
            status: resp.status(),
        })
    }
}

/// The response body as an `AsyncRead`, for the blocking pipeline (via `SyncIoBridge`).
pub(crate) fn body_reader(
    resp: reqwest::Response,
) -> impl tokio::io::AsyncRead + Send + Unpin + 'static {
    use futures_util::TryStreamExt;
    tokio_util::io::StreamReader::new(resp.bytes_stream().map_err(std::io::Error::other))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let m = parse_headers(&["X-Token: abc def".into(), "Accept:  */*".into()]).unwrap();
        assert_eq!(m["x-token"], "abc def");
        assert_eq!(m["accept"], "*/*");
        assert!(parse_headers(&["nocolon".into()]).is_err());
    }

    #[test]
    fn status_classes() {
        let s = |c: u16| HttpError::Status {
            url: "u".into(),
            status: StatusCode::from_u16(c).unwrap(),
        };
        assert!(!s(404).is_transient());
        assert!(!s(403).is_transient());
        assert!(!s(401).is_transient());
        assert!(s(503).is_transient());
        assert!(s(429).is_transient());
        assert!(s(404).to_string().contains("404 Not Found: no such file"));
    }
}

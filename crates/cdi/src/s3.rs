//! S3 sources: a plain HTTP GET of the object, signed with AWS Signature Version 4 when
//! credentials are given (CDI's `accessKeyId`/`secretKey` secret).
//!
//! URLs: `s3://bucket/key` (AWS, virtual-hosted style) or `http(s)://endpoint/bucket/key`
//! (path style, e.g. MinIO or Ceph RGW), used as given.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// sha256 of an empty payload (every GET).
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Errors of S3 URL handling.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("invalid S3 URL {url:?}: {reason}")]
    Url { url: String, reason: String },
}

/// Resolves an S3 source URL to the HTTP(S) URL to GET and the signing region.
pub fn resolve_url(raw: &str, region: Option<&str>) -> Result<(url::Url, String), S3Error> {
    let bad = |reason: &str| S3Error::Url {
        url: raw.to_string(),
        reason: reason.to_string(),
    };
    let u = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    match u.scheme() {
        "s3" => {
            let bucket = u.host_str().ok_or_else(|| bad("no bucket"))?;
            let key = u.path().trim_start_matches('/');
            if key.is_empty() {
                return Err(bad("no object key"));
            }
            let region = region.unwrap_or("us-east-1").to_string();
            let host = if region == "us-east-1" {
                format!("{bucket}.s3.amazonaws.com")
            } else {
                format!("{bucket}.s3.{region}.amazonaws.com")
            };
            let https = url::Url::parse(&format!("https://{host}/{key}"))
                .map_err(|e| bad(&e.to_string()))?;
            Ok((https, region))
        }
        "http" | "https" => {
            let host = u.host_str().unwrap_or_default();
            let region = region
                .map(str::to_string)
                .or_else(|| region_from_host(host))
                .unwrap_or_else(|| "us-east-1".to_string());
            Ok((u, region))
        }
        other => Err(bad(&format!("scheme {other:?} is not s3, http or https"))),
    }
}

/// `s3.eu-west-1.amazonaws.com`, `bucket.s3.eu-west-1.amazonaws.com`, `s3-eu-west-1...`.
fn region_from_host(host: &str) -> Option<String> {
    let parts: Vec<&str> = host.split('.').collect();
    let i = parts
        .iter()
        .position(|p| *p == "s3" || p.starts_with("s3-"))?;
    if let Some(r) = parts[i].strip_prefix("s3-") {
        return Some(r.to_string());
    }
    let next = parts.get(i + 1)?;
    if *next == "amazonaws" {
        None
    } else {
        Some(next.to_string())
    }
}

/// One request to sign.
#[derive(Clone, Debug)]
pub struct SigningRequest<'a> {
    pub method: &'a str,
    pub url: &'a url::Url,
    /// Headers to sign besides `host` (name, value), e.g. `x-amz-date`, `x-amz-content-sha256`.
    pub headers: &'a [(String, String)],
    pub payload_sha256: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// AWS's URI encoding: everything but unreserved characters, `/` kept in paths.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
        if unreserved || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for Hmac<Sha256>.
    let mut m = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// `YYYYMMDD'T'HHMMSS'Z'`.
pub fn amz_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The `Authorization` header value for `req` at `amz_date` (`YYYYMMDDTHHMMSSZ`, which must
/// also be one of the signed `x-amz-date` headers).
pub fn authorization(req: &SigningRequest<'_>, creds: &S3Credentials, amz_date: &str) -> String {
    let host = match (req.url.host_str(), req.url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    };
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if !headers.iter().any(|(k, _)| k == "host") {
        headers.push(("host".into(), host));
    }
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();

    let path = if req.url.path().is_empty() {
        "/".to_string()
    } else {
        // S3 signs the path encoded once (not twice like the other services).
        uri_encode(&percent_decode(req.url.path()), true)
    };
    let mut query: Vec<(String, String)> = req
        .url
        .query_pairs()
        .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
        .collect();
    query.sort();
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        path,
        query.join("&"),
        canonical_headers,
        signed,
        req.payload_sha256
    );
    let date = &amz_date[..8.min(amz_date.len())];
    let scope = format!("{date}/{}/{}/aws4_request", req.region, req.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(
        format!("AWS4{}", creds.secret_key).as_bytes(),
        date.as_bytes(),
    );
    let k_region = hmac(&k_date, req.region.as_bytes());
    let k_service = hmac(&k_region, req.service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let signature = hex::encode(hmac(&k_signing, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
        creds.access_key_id
    )
}

/// Headers for a signed S3 GET of `url` now.
pub(crate) fn signed_get_headers(
    url: &url::Url,
    region: &str,
    creds: &S3Credentials,
    now: OffsetDateTime,
) -> Vec<(String, String)> {
    let date = amz_date(now);
    let mut headers = vec![
        ("x-amz-content-sha256".to_string(), EMPTY_SHA256.to_string()),
        ("x-amz-date".to_string(), date.clone()),
    ];
    if let Some(t) = &creds.session_token {
        headers.push(("x-amz-security-token".to_string(), t.clone()));
    }
    let auth = authorization(
        &SigningRequest {
            method: "GET",
            url,
            headers: &headers,
            payload_sha256: EMPTY_SHA256,
            region,
            service: "s3",
        },
        creds,
        &date,
    );
    headers.push(("authorization".to_string(), auth));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example "GET Object" (S3 API reference, "Signature Calculations for
    /// the Authorization Header: Transferring Payload in a Single Chunk").
    #[test]
    fn aws_s3_get_object_example() {
        let url = url::Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        let creds = S3Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let headers = vec![
            ("Range".to_string(), "bytes=0-9".to_string()),
            ("x-amz-content-sha256".to_string(), EMPTY_SHA256.to_string()),
            ("x-amz-date".to_string(), "20130524T000000Z".to_string()),
        ];
        let auth = authorization(
            &SigningRequest {
                method: "GET",
                url: &url,
                headers: &headers,
                payload_sha256: EMPTY_SHA256,
                region: "us-east-1",
                service: "s3",
            },
            &creds,
            "20130524T000000Z",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// `get-vanilla` from AWS's Signature Version 4 test suite.
    #[test]
    fn aws_sigv4_suite_get_vanilla() {
        let url = url::Url::parse("https://example.amazonaws.com/").unwrap();
        let creds = S3Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let headers = vec![("X-Amz-Date".to_string(), "20150830T123600Z".to_string())];
        let auth = authorization(
            &SigningRequest {
                method: "GET",
                url: &url,
                headers: &headers,
                payload_sha256: EMPTY_SHA256,
                region: "us-east-1",
                service: "service",
            },
            &creds,
            "20150830T123600Z",
        );
        assert!(
            auth.ends_with(
                "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            ),
            "{auth}"
        );
    }

    #[test]
    fn urls() {
        let (u, r) = resolve_url("s3://bucket/dir/disk.img", None).unwrap();
        assert_eq!(u.as_str(), "https://bucket.s3.amazonaws.com/dir/disk.img");
        assert_eq!(r, "us-east-1");
        let (_, r) = resolve_url("https://s3.eu-west-1.amazonaws.com/b/k", None).unwrap();
        assert_eq!(r, "eu-west-1");
        let (u, r) = resolve_url("http://127.0.0.1:9000/b/k", None).unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:9000/b/k");
        assert_eq!(r, "us-east-1");
        assert!(resolve_url("ftp://x/y", None).is_err());
        assert_eq!(
            amz_date(OffsetDateTime::from_unix_timestamp(1369353600).unwrap()),
            "20130524T000000Z"
        );
    }
}

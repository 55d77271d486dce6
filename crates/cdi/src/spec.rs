//! From a `DataVolumeSpec` to a [`Source`]: the controller first asks [`references`] which
//! Secrets, ConfigMaps and PVC it must read, resolves them, and passes them back in
//! [`Resolved`]. This module does no I/O.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kubevirt_api::{CdiDataVolumeSource, DataVolumeSpec};

use crate::checksum::{Checksum, ChecksumError};
use crate::http::{BasicAuth, TlsOptions};
use crate::registry::RegistrySource;
use crate::s3::S3Credentials;
use crate::{HttpSource, S3Source, Source};

/// CDI's secret keys for basic auth / S3 credentials.
pub const KEY_ACCESS_KEY_ID: &str = "accessKeyId";
pub const KEY_SECRET_KEY: &str = "secretKey";

/// Errors of turning a spec into a source.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("DataVolume has no spec.source (a sourceRef must be resolved to a source first)")]
    NoSource,
    #[error("spec.source.{0} is not supported by this importer")]
    Unsupported(&'static str),
    #[error("spec.source has more than one source set ({0})")]
    Ambiguous(String),
    #[error("spec.source.{field} references Secret {name:?}, which was not resolved")]
    MissingSecret { field: &'static str, name: String },
    #[error("Secret {name:?} lacks key {key:?} (CDI expects accessKeyId and secretKey)")]
    SecretKey { name: String, key: &'static str },
    #[error("spec.source.{field} references ConfigMap {name:?}, which was not resolved")]
    MissingConfigMap { field: &'static str, name: String },
    #[error("spec.source.pvc {namespace}/{name} has no resolved volume path")]
    MissingPvc { namespace: String, name: String },
    #[error("spec.source.registry has no url (imageStream is OpenShift-only)")]
    NoRegistryUrl,
    #[error("spec.contentType {0:?} is not supported (only \"kubevirt\")")]
    ContentType(String),
    #[error("spec.source.http.checksum: {0}")]
    Checksum(#[from] ChecksumError),
}

/// What the controller must look up before calling [`source_from_spec`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    pub secrets: Vec<String>,
    pub config_maps: Vec<String>,
    /// (namespace, name) of a clone source PVC.
    pub pvc: Option<(String, String)>,
}

/// Resolved objects, by name (in the DataVolume's namespace).
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    /// Secret name → decoded data.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// ConfigMap name → data (each value a PEM certificate for certConfigMap).
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Path of the clone source volume's raw file.
    pub pvc_path: Option<PathBuf>,
    /// Registries to reach over plain HTTP (CDIConfig's `insecureRegistries`), `host:port`.
    pub insecure_registries: Vec<String>,
    /// CDI's `spec.source.http.checksum` (`sha256:<hex>`, `md5:<hex>`): newer CDI has the field,
    /// the generated `DataVolumeSourceHTTP` does not, so the controller passes it from the raw
    /// object.
    pub http_checksum: Option<String>,
}

fn one_source(src: &CdiDataVolumeSource) -> Result<&'static str, SpecError> {
    let set: Vec<&'static str> = [
        ("http", src.http.is_some()),
        ("s3", src.s3.is_some()),
        ("registry", src.registry.is_some()),
        ("blank", src.blank.is_some()),
        ("pvc", src.pvc.is_some()),
        ("upload", src.upload.is_some()),
        ("gcs", src.gcs.is_some()),
        ("imageio", src.imageio.is_some()),
        ("vddk", src.vddk.is_some()),
        ("snapshot", src.snapshot.is_some()),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| n)
    .collect();
    match set.as_slice() {
        [one] => Ok(one),
        [] => Err(SpecError::NoSource),
        many => Err(SpecError::Ambiguous(many.join(", "))),
    }
}

/// Secrets, ConfigMaps and the PVC the spec's source refers to.
pub fn references(spec: &DataVolumeSpec, namespace: &str) -> References {
    let mut r = References::default();
    let Some(src) = &spec.source else {
        return r;
    };
    if let Some(h) = &src.http {
        r.secrets.extend(h.secret_ref.iter().cloned());
        r.secrets
            .extend(h.secret_extra_headers.iter().flatten().cloned());
        r.config_maps.extend(h.cert_config_map.iter().cloned());
    }
    if let Some(s) = &src.s3 {
        r.secrets.extend(s.secret_ref.iter().cloned());
        r.config_maps.extend(s.cert_config_map.iter().cloned());
    }
    if let Some(g) = &src.registry {
        r.secrets.extend(g.secret_ref.iter().cloned());
        r.config_maps.extend(g.cert_config_map.iter().cloned());
    }
    if let Some(p) = &src.pvc {
        let ns = if p.namespace.is_empty() {
            namespace.to_string()
        } else {
            p.namespace.clone()
        };
        r.pvc = Some((ns, p.name.clone()));
    }
    r
}

fn secret<'a>(
    res: &'a Resolved,
    field: &'static str,
    name: &str,
) -> Result<&'a BTreeMap<String, Vec<u8>>, SpecError> {
    res.secrets
        .get(name)
        .ok_or_else(|| SpecError::MissingSecret {
            field,
            name: name.to_string(),
        })
}

fn key(s: &BTreeMap<String, Vec<u8>>, name: &str, key: &'static str) -> Result<String, SpecError> {
    s.get(key)
        .map(|v| {
            String::from_utf8_lossy(v)
                .trim_end_matches('\n')
                .to_string()
        })
        .ok_or_else(|| SpecError::SecretKey {
            name: name.to_string(),
            key,
        })
}

fn basic_auth(
    res: &Resolved,
    field: &'static str,
    name: &Option<String>,
) -> Result<Option<BasicAuth>, SpecError> {
    let Some(name) = name else { return Ok(None) };
    let s = secret(res, field, name)?;
    Ok(Some(BasicAuth {
        username: key(s, name, KEY_ACCESS_KEY_ID)?,
        password: key(s, name, KEY_SECRET_KEY)?,
    }))
}

fn ca_bundle(
    res: &Resolved,
    field: &'static str,
    name: &Option<String>,
) -> Result<Option<Vec<u8>>, SpecError> {
    let Some(name) = name else { return Ok(None) };
    let cm = res
        .config_maps
        .get(name)
        .ok_or_else(|| SpecError::MissingConfigMap {
            field,
            name: name.clone(),
        })?;
    let mut pem = Vec::new();
    for v in cm.values() {
        pem.extend_from_slice(v.as_bytes());
        pem.push(b'\n');
    }
    Ok(Some(pem))
}

/// Builds the [`Source`] for a DataVolume spec. `upload` sources are served by
/// [`crate::import_upload`] and give [`SpecError::Unsupported`] here.
pub fn source_from_spec(spec: &DataVolumeSpec, res: &Resolved) -> Result<Source, SpecError> {
    if let Some(ct) = &spec.content_type {
        if !ct.is_empty() && ct != "kubevirt" {
            return Err(SpecError::ContentType(ct.clone()));
        }
    }
    let src = spec.source.as_ref().ok_or(SpecError::NoSource)?;
    match one_source(src)? {
        "http" => {
            let Some(h) = &src.http else {
                return Err(SpecError::NoSource);
            };
            let mut extra_headers = h.extra_headers.clone().unwrap_or_default();
            for name in h.secret_extra_headers.iter().flatten() {
                let s = secret(res, "http.secretExtraHeaders", name)?;
                for v in s.values() {
                    extra_headers.push(String::from_utf8_lossy(v).trim().to_string());
                }
            }
            let checksum: Option<Checksum> = match &res.http_checksum {
                Some(c) => Some(c.parse()?),
                None => None,
            };
            Ok(Source::Http(HttpSource {
                url: h.url.clone(),
                checksum,
                auth: basic_auth(res, "http.secretRef", &h.secret_ref)?,
                tls: TlsOptions {
                    ca_pem: ca_bundle(res, "http.certConfigMap", &h.cert_config_map)?,
                    insecure_skip_verify: h.insecure_skip_verify.unwrap_or(false),
                },
                extra_headers,
            }))
        }
        "s3" => {
            let Some(s) = &src.s3 else {
                return Err(SpecError::NoSource);
            };
            let credentials = match basic_auth(res, "s3.secretRef", &s.secret_ref)? {
                Some(a) => Some(S3Credentials {
                    access_key_id: a.username,
                    secret_key: a.password,
                    session_token: None,
                }),
                None => None,
            };
            Ok(Source::S3(S3Source {
                url: s.url.clone(),
                credentials,
                region: None,
                tls: TlsOptions {
                    ca_pem: ca_bundle(res, "s3.certConfigMap", &s.cert_config_map)?,
                    insecure_skip_verify: false,
                },
            }))
        }
        "registry" => {
            let Some(g) = &src.registry else {
                return Err(SpecError::NoSource);
            };
            let url = g.url.clone().ok_or(SpecError::NoRegistryUrl)?;
            let mut r = RegistrySource::new(url.clone());
            r.auth = basic_auth(res, "registry.secretRef", &g.secret_ref)?;
            r.tls.ca_pem = ca_bundle(res, "registry.certConfigMap", &g.cert_config_map)?;
            if let Some(arch) = g.platform.as_ref().and_then(|p| p.architecture.clone()) {
                r.architecture = arch;
            }
            if let Ok(img) = crate::registry::ImageRef::parse(&url) {
                r.insecure_http = res.insecure_registries.contains(&img.registry);
            }
            Ok(Source::Registry(r))
        }
        "blank" => Ok(Source::Blank),
        "pvc" => {
            let Some(p) = &src.pvc else {
                return Err(SpecError::NoSource);
            };
            let path = res.pvc_path.clone().ok_or_else(|| SpecError::MissingPvc {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            })?;
            Ok(Source::Clone { source_path: path })
        }
        other => Err(SpecError::Unsupported(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> DataVolumeSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn http_with_secret_and_certs() {
        let s = spec(serde_json::json!({
            "source": {"http": {"url": "https://example.com/disk.qcow2", "secretRef": "creds",
                "certConfigMap": "ca", "extraHeaders": ["X-A: 1"], "insecureSkipVerify": true}},
            "storage": {"resources": {"requests": {"storage": "1Gi"}}}
        }));
        let refs = references(&s, "default");
        assert_eq!(refs.secrets, vec!["creds".to_string()]);
        assert_eq!(refs.config_maps, vec!["ca".to_string()]);
        let mut res = Resolved::default();
        assert!(matches!(
            source_from_spec(&s, &res),
            Err(SpecError::MissingSecret { .. })
        ));
        res.secrets.insert(
            "creds".into(),
            BTreeMap::from([
                ("accessKeyId".into(), b"user".to_vec()),
                ("secretKey".into(), b"pw".to_vec()),
            ]),
        );
        res.config_maps.insert(
            "ca".into(),
            BTreeMap::from([("ca.pem".into(), "-----BEGIN CERTIFICATE-----".into())]),
        );
        let Source::Http(h) = source_from_spec(&s, &res).unwrap() else {
            panic!()
        };
        assert_eq!(h.auth.unwrap().username, "user");
        assert!(h.tls.insecure_skip_verify);
        assert_eq!(h.extra_headers, vec!["X-A: 1".to_string()]);
        assert!(h.tls.ca_pem.is_some());
    }

    #[test]
    fn registry_blank_pvc() {
        let s = spec(
            serde_json::json!({"source": {"registry": {"url": "docker://127.0.0.1:5000/demo:latest"}}}),
        );
        let res = Resolved {
            insecure_registries: vec!["127.0.0.1:5000".into()],
            ..Default::default()
        };
        let Source::Registry(r) = source_from_spec(&s, &res).unwrap() else {
            panic!()
        };
        assert!(r.insecure_http);
        let s = spec(serde_json::json!({"source": {"blank": {}}}));
        assert_eq!(source_from_spec(&s, &res).unwrap(), Source::Blank);
        let s = spec(serde_json::json!({"source": {"pvc": {"name": "src", "namespace": "ns"}}}));
        assert_eq!(references(&s, "x").pvc, Some(("ns".into(), "src".into())));
        assert!(matches!(
            source_from_spec(&s, &res),
            Err(SpecError::MissingPvc { .. })
        ));
        let s = spec(serde_json::json!({"source": {"upload": {}}}));
        assert!(matches!(
            source_from_spec(&s, &res),
            Err(SpecError::Unsupported("upload"))
        ));
    }
}

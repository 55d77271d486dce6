//! Starting the server: data directory, TLS (our own CA and serving certificate), the admin
//! token and kubeconfig, the built-in namespaces and CRDs, and the HTTPS listener.

use crate::http::{handle, AppState, SubresourceHandler};
use crate::objects::{ApiServer, Query};
use crate::store::Store;
use anyhow::{Context, Result};
use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
}

/// A running server.
pub struct Running {
    pub api: Arc<ApiServer>,
    pub state: Arc<AppState>,
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub ca_pem: String,
    pub token: String,
}

impl Running {
    /// Serve `subresources.kubevirt.io/v1` (virt-api's subresources) with `h`.
    pub fn set_subresource_handler(&self, h: Arc<dyn SubresourceHandler>) {
        self.set_group_handler("subresources.kubevirt.io", h);
    }

    /// Serve one of the aggregated groups in [`crate::discovery::AGGREGATED`] with `h`.
    pub fn set_group_handler(&self, group: &str, h: Arc<dyn SubresourceHandler>) {
        self.state.aggregated.write().insert(group.to_string(), h);
    }

    /// Serve CDI's upload proxy paths (`/v1beta1/upload`, `/v1beta1/upload-async`, ...) with
    /// `h`; these requests carry an upload token instead of the API token.
    pub fn set_upload_proxy(&self, h: Arc<dyn SubresourceHandler>) {
        *self.state.upload_proxy.write() = Some(h);
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Loads or creates the CA and the serving certificate (SANs localhost, 127.0.0.1, ::1 and the
/// host name). The CA is separate from the leaf: rustls clients refuse a self-signed leaf.
fn tls_material(dir: &Path) -> Result<(String, String, String)> {
    let (ca_crt, srv_crt, srv_key) = (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    if ca_crt.exists() && srv_crt.exists() && srv_key.exists() {
        return Ok((
            std::fs::read_to_string(&ca_crt)?,
            std::fs::read_to_string(&srv_crt)?,
            std::fs::read_to_string(&srv_key)?,
        ));
    }
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubevirt-rs-ca");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca_params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);

    let host = std::fs::read_to_string("/etc/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !host.is_empty() {
        sans.push(host);
    }
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubevirt-rs-apiserver");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let leaf = params.signed_by(&key, &issuer)?;
    let (ca_pem, leaf_pem, key_pem) = (ca.pem(), leaf.pem(), key.serialize_pem());
    write_private(&ca_crt, ca_pem.as_bytes())?;
    write_private(&srv_crt, leaf_pem.as_bytes())?;
    write_private(&srv_key, key_pem.as_bytes())?;
    Ok((ca_pem, leaf_pem, key_pem))
}

fn admin_token(dir: &Path) -> Result<String> {
    let path = dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    write_private(&path, token.as_bytes())?;
    Ok(token)
}

pub fn kubeconfig_yaml(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubevirt-rs\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: kubevirt-rs\n  context:\n    cluster: kubevirt-rs\n    user: admin\n    namespace: default\ncurrent-context: kubevirt-rs\n"
    )
}

/// Objects every server has: the namespaces and our CRDs (so `kubectl get crds` works).
async fn bootstrap(api: &ApiServer) -> Result<()> {
    let q = Query::default();
    let ns_def = api
        .registry
        .find("", "v1", "namespaces")
        .context("namespaces not registered")?;
    for ns in ["default", "kube-system", "kube-public", "kubevirt"] {
        if api.store.get(&ApiServer::key(ns_def, "", ns)).is_none() {
            api.create(ns_def, "", json!({"metadata": {"name": ns}}), &q)
                .await
                .map_err(|e| anyhow::anyhow!("creating namespace {ns}: {e}"))?;
        }
    }
    let crd_def = api
        .registry
        .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .context("CRDs not registered")?;
    for def in &api.registry.resources {
        let Some(json) = &def.crd_json else { continue };
        let v: serde_json::Value = serde_json::from_slice(json)?;
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if api.store.get(&ApiServer::key(crd_def, "", &name)).is_none() {
            api.create(crd_def, "", v, &q)
                .await
                .map_err(|e| anyhow::anyhow!("creating CRD {name}: {e}"))?;
        }
    }
    Ok(())
}

pub async fn start(cfg: Config) -> Result<Running> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))?;
    tracing::debug!("opening store");
    let store =
        Store::open(&cfg.data_dir.join("store.redb")).context("opening the object store")?;
    let api = Arc::new(ApiServer::new(store));
    tracing::debug!("store open");
    bootstrap(&api).await?;
    tracing::debug!("bootstrapped");
    crate::gc::spawn(api.clone());
    crate::gc::release_free_memory();

    let (ca_pem, cert_pem, key_pem) = tls_material(&cfg.data_dir)?;
    let token = admin_token(&cfg.data_dir)?;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the serving certificate")?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("parsing the serving key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let server_url = format!(
        "https://{}",
        if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        }
    );
    let kubeconfig = cfg.data_dir.join("kubeconfig");
    write_private(
        &kubeconfig,
        kubeconfig_yaml(&server_url, &ca_pem, &token).as_bytes(),
    )?;

    let state = Arc::new(AppState {
        api: api.clone(),
        token: token.clone(),
        address: addr.to_string(),
        aggregated: Default::default(),
        upload_proxy: Default::default(),
    });
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(state.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let app = app.clone();
                        async move {
                            use tower::ServiceExt;
                            app.oneshot(req.map(axum::body::Body::new)).await
                        }
                    },
                );
                if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http1_only()
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    });
    tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "API server listening");
    Ok(Running {
        api,
        state,
        addr,
        kubeconfig,
        ca_pem,
        token,
    })
}

//! Starting the server: data directory, TLS (our own CA and serving certificate), the admin
//! token and kubeconfig, the built-in namespaces and CRDs, and the HTTPS listener.

use crate::http::{handle, AppState, SubresourceHandler};
use crate::limits::Limits;
use crate::objects::{ApiServer, Query};
use crate::store::{Store, StoreFile, WindowLimits};
use anyhow::{Context, Result};
use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Start with an empty store even though the data directory already has other content
    /// (a missing or empty `store.redb` there is otherwise refused: it usually means the
    /// objects were lost, and starting empty would hide that).
    pub init: bool,
    /// Connection and watch-window limits.
    pub limits: Limits,
}

impl Config {
    /// A server on `listen` with its data in `data_dir`, default limits, no `--init`.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen,
            init: false,
            limits: Limits::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the data directory {dir} already has content ({found}) but its object store {store} is {state}: \
         the objects may have been lost. Restore store.redb, or pass --init to start with an empty store"
    )]
    StoreMissing {
        dir: String,
        store: String,
        found: String,
        state: &'static str,
    },
}

/// File descriptors kept free of client connections, for the store, VM files and sockets.
const RESERVED_FDS: u64 = 256;

/// Raises the soft open-file limit towards `max_connections` plus a reserve (as Go servers
/// do), and returns how many connections can be served without running out of descriptors.
fn connection_capacity(max_connections: usize) -> usize {
    let want = max_connections as u64 + RESERVED_FDS;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return max_connections;
        }
        if lim.rlim_cur < want && lim.rlim_cur != libc::RLIM_INFINITY {
            let raised = libc::rlimit {
                rlim_cur: want.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if raised.rlim_cur > lim.rlim_cur && libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0
            {
                lim.rlim_cur = raised.rlim_cur;
            }
        }
        lim.rlim_cur
    };
    if soft == libc::RLIM_INFINITY || soft >= want {
        return max_connections;
    }
    let fit = soft.saturating_sub(RESERVED_FDS).max(16) as usize;
    tracing::warn!(
        max_connections,
        open_files_limit = soft,
        serving = fit,
        "the open-file limit is too low for max_connections: serving fewer connections at once"
    );
    fit.min(max_connections)
}

/// Refuses a data directory whose store is missing or empty while the directory has other
/// content; a missing or empty directory is a first start.
fn check_data_dir(dir: &Path, init: bool) -> Result<()> {
    let store = dir.join("store.redb");
    let state = Store::probe(&store).context("inspecting the object store")?;
    let state = match state {
        StoreFile::Present => return Ok(()),
        StoreFile::Missing => "missing",
        StoreFile::Empty => "empty",
    };
    let mut others: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            // The store itself, and the default image store a user may fill before the
            // first start, say nothing about lost objects.
            .filter(|n| n != "store.redb" && n != "images")
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    if others.is_empty() {
        return Ok(());
    }
    if init {
        tracing::warn!(dir = %dir.display(), state, "--init: starting with an empty object store");
        return Ok(());
    }
    others.sort();
    others.truncate(5);
    Err(StartError::StoreMissing {
        dir: dir.display().to_string(),
        store: store.display().to_string(),
        found: others.join(", "),
        state,
    }
    .into())
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
    /// A kube client of the administrator, through the kubeconfig the server wrote: what the
    /// in-process controllers and the tests talk to the server with.
    pub async fn client(&self) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(cfg)?)
    }

    /// Serve `subresources.kubevirt.io/v1` (virt-api's subresources) with `h`.
    pub fn set_subresource_handler(&self, h: Arc<dyn SubresourceHandler>) {
        self.set_group_handler("subresources.kubevirt.io", h);
    }

    /// Let `a` decide Pod evictions (virt-api's eviction webhook).
    pub fn set_eviction_admitter(&self, a: Arc<dyn crate::http::EvictionAdmitter>) {
        *self.state.eviction.write() = Some(a);
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

    /// Serve KubeVirt's VirtualMachineExport links (`/api/export.kubevirt.io/...`) with `h`;
    /// these requests carry the export's token (`x-kubevirt-export-token`) instead of the API
    /// token. `h` gets the segments after `/api/export.kubevirt.io/`.
    pub fn set_export_server(&self, h: Arc<dyn SubresourceHandler>) {
        *self.state.export_server.write() = Some(h);
    }
}

pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Loads or creates the CA and the serving certificate (SANs localhost, 127.0.0.1, ::1, the
/// host name and `listen_ip`, the address the server listens on when it is a specific one, so
/// that clients on other nodes can verify it there). The CA is separate from the leaf: rustls
/// clients refuse a self-signed leaf.
fn tls_material(dir: &Path, listen_ip: IpAddr) -> Result<(String, String, String)> {
    let (ca_crt, srv_crt, srv_key) = (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    if ca_crt.exists() && srv_crt.exists() && srv_key.exists() {
        let (ca_pem, leaf_pem, key_pem) = (
            std::fs::read_to_string(&ca_crt)?,
            std::fs::read_to_string(&srv_crt)?,
            std::fs::read_to_string(&srv_key)?,
        );
        if !listen_ip.is_unspecified() && !certificate_names(&ca_pem, &leaf_pem, listen_ip)? {
            anyhow::bail!(
                "the serving certificate {} was made for other addresses than {listen_ip}, \
                 which the server is to listen on; remove ca.crt, server.crt and server.key \
                 from {} to make new ones (kubeconfigs made before then name the old CA)",
                srv_crt.display(),
                dir.display()
            );
        }
        return Ok((ca_pem, leaf_pem, key_pem));
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
    let ip = listen_ip.to_string();
    if !listen_ip.is_unspecified() && !sans.contains(&ip) {
        sans.push(ip);
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

/// Whether the certificate `leaf_pem`, verified against `ca_pem`, is valid for `ip`.
fn certificate_names(ca_pem: &str, leaf_pem: &str, ip: IpAddr) -> Result<bool> {
    use rustls::client::danger::ServerCertVerifier;
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(ca.context("parsing ca.crt")?)
            .context("ca.crt is not a CA certificate")?;
    }
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(leaf_pem.as_bytes())
        .next()
        .context("server.crt holds no certificate")?
        .context("parsing server.crt")?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .context("verifying server.crt")?;
    let name = rustls_pki_types::ServerName::IpAddress(ip.into());
    Ok(verifier
        .verify_server_cert(&leaf, &[], &name, &[], rustls_pki_types::UnixTime::now())
        .is_ok())
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

/// Objects every server has: the namespaces, the `kubernetes` Service, the default
/// StorageClass and our CRDs (so `kubectl get crds` works).
async fn bootstrap(api: &ApiServer, port: u16) -> Result<()> {
    let q = Query::default();
    let reg = api.registry();
    let ns_def = reg
        .find("", "v1", "namespaces")
        .context("namespaces not registered")?;
    for ns in ["default", "kube-system", "kube-public", "kubevirt"] {
        if api.store.get(&ApiServer::key(ns_def, "", ns)).is_none() {
            api.create(ns_def, "", json!({"metadata": {"name": ns}}), &q)
                .await
                .map_err(|e| anyhow::anyhow!("creating namespace {ns}: {e}"))?;
        }
    }
    let svc_def = reg
        .find("", "v1", "services")
        .context("services not registered")?;
    if api
        .store
        .get(&ApiServer::key(svc_def, "default", "kubernetes"))
        .is_none()
    {
        let svc = json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": crate::services::KUBERNETES_SERVICE_IP.to_string(),
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
        });
        api.create(svc_def, "default", svc, &q)
            .await
            .map_err(|e| anyhow::anyhow!("creating the kubernetes Service: {e}"))?;
    }
    let sc_def = reg
        .find("storage.k8s.io", "v1", "storageclasses")
        .context("storage classes not registered")?;
    let (classes, _) = api.store.list(&crate::store::Key::prefix(
        "storage.k8s.io",
        "storageclasses",
        None,
    ));
    if classes.is_empty() {
        // The first start: the one class of this node's local-path volumes, the default.
        let sc = json!({
            "metadata": {"name": kubevirt_api::core_kinds::LOCAL_PATH_CLASS,
                         "annotations": {kubevirt_api::core_kinds::DEFAULT_CLASS_ANNOTATION: "true"}},
            "provisioner": kubevirt_api::core_kinds::LOCAL_PATH_PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        });
        api.create(sc_def, "", sc, &q)
            .await
            .map_err(|e| anyhow::anyhow!("creating the default StorageClass: {e}"))?;
    }
    // The snapshot class of the same storage (external-snapshotter's VolumeSnapshotClass),
    // the default for its driver, so that a VolumeSnapshot without a class and KubeVirt's VM
    // snapshots find it.
    {
        use kubevirt_api::volumesnapshot as vs;
        let def = reg
            .find(vs::GROUP, "v1", "volumesnapshotclasses")
            .context("volume snapshot classes not registered")?;
        let (existing, _) = api.store.list(&crate::store::Key::prefix(
            vs::GROUP,
            "volumesnapshotclasses",
            None,
        ));
        if existing.is_empty() {
            let class = json!({
                "metadata": {"name": vs::LOCAL_PATH_SNAPSHOT_CLASS,
                             "annotations": {vs::DEFAULT_SNAPSHOT_CLASS_ANNOTATION: "true"}},
                "driver": kubevirt_api::core_kinds::LOCAL_PATH_PROVISIONER,
                "deletionPolicy": vs::DELETION_POLICY_DELETE,
            });
            api.create(def, "", class, &q)
                .await
                .map_err(|e| anyhow::anyhow!("creating the default VolumeSnapshotClass: {e}"))?;
        }
    }
    // The default RBAC policy; existing objects (perhaps edited by the admin) are kept, but
    // for KubeVirt's and CDI's own, which follow their definition.
    let kubevirt_owned: Vec<String> = kubevirt_api::rbac::cluster_roles()
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .chain(
            kubevirt_api::rbac::cluster_role_bindings()
                .into_iter()
                .filter_map(|b| b.metadata.name),
        )
        .collect();
    for (plural, objects) in [
        ("clusterroles", crate::rbac::default_cluster_roles()),
        (
            "clusterrolebindings",
            crate::rbac::default_cluster_role_bindings(),
        ),
    ] {
        let def = reg
            .find(crate::rbac::GROUP, "v1", plural)
            .with_context(|| format!("{plural} not registered"))?;
        for o in objects {
            let name = o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match api.store.get(&ApiServer::key(def, "", &name)) {
                None => {
                    api.create(def, "", o, &q)
                        .await
                        .map_err(|e| anyhow::anyhow!("creating {plural} {name}: {e}"))?;
                }
                Some(stored) if kubevirt_owned.contains(&name) => {
                    // KubeVirt's and CDI's roles are reconciled to their definition, as
                    // virt-operator and cdi-operator reconcile them.
                    let mut v = stored.value();
                    let mut changed = false;
                    for field in ["rules", "roleRef", "subjects"] {
                        if o.get(field).is_some() && v.get(field) != o.get(field) {
                            v[field] = o[field].clone();
                            changed = true;
                        }
                    }
                    for (k, want) in o["metadata"]["labels"].as_object().into_iter().flatten() {
                        if v["metadata"]["labels"].get(k) != Some(want) {
                            v["metadata"]["labels"][k] = want.clone();
                            changed = true;
                        }
                    }
                    if changed {
                        tracing::info!(%plural, %name, "updating KubeVirt's RBAC object to its definition");
                        api.update(def, "", &name, v, &q, None)
                            .await
                            .map_err(|e| anyhow::anyhow!("updating {plural} {name}: {e}"))?;
                    }
                }
                Some(_) => {}
            }
        }
    }
    let crd_def = reg
        .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .context("CRDs not registered")?;
    for def in &reg.resources {
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
    crate::metrics::init();
    check_data_dir(&cfg.data_dir, cfg.init)?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))?;
    tracing::debug!("opening store");
    let store = Store::open_with(
        &cfg.data_dir.join("store.redb"),
        WindowLimits {
            events: cfg.limits.watch_window_events,
            bytes: cfg.limits.watch_window_bytes,
        },
    )
    .context("opening the object store")?;
    let api = Arc::new(ApiServer::new(store));
    tracing::debug!("store open");
    // The `kubernetes` Service points at the port we serve (kube-apiserver's 6443 when the
    // port is chosen at bind time).
    let port = match cfg.listen.port() {
        0 => 6443,
        p => p,
    };
    bootstrap(&api, port).await?;
    api.refresh_crds().await;
    tracing::debug!("bootstrapped");
    crate::gc::spawn(api.clone());
    crate::gc::release_free_memory();

    let (ca_pem, cert_pem, key_pem) = tls_material(&cfg.data_dir, cfg.listen.ip())?;
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

    let auth = Arc::new(crate::auth::Authenticator::load(&cfg.data_dir, &token)?);
    let audit = crate::audit::AuditLog::open(&cfg.data_dir)
        .map_err(|e| tracing::warn!(error = %e, "the audit log cannot be opened; writes are not audited"))
        .ok();
    let state = Arc::new(AppState {
        api: api.clone(),
        auth,
        audit,
        address: addr.to_string(),
        aggregated: Default::default(),
        upload_proxy: Default::default(),
        export_server: Default::default(),
        eviction: Default::default(),
    });
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(state.clone());
    let limits = cfg.limits.clone();
    let max_connections = connection_capacity(limits.max_connections);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    tokio::spawn(async move {
        let (mut refused, mut last_warn) = (0u64, None);
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(tcp);
                refused += 1;
                // Once per 10 s at most: a flood must not flood the log too.
                if last_warn.is_none_or(|t: std::time::Instant| t.elapsed().as_secs() >= 10) {
                    tracing::warn!(%peer, max = max_connections, refused, "too many connections: closing new ones");
                    last_warn = Some(std::time::Instant::now());
                    refused = 0;
                }
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = app.clone();
            let limits = limits.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let tls =
                    match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(t)) => t,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
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
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout);
                if let Err(e) = builder
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_certificate_names_a_specific_listen_address_and_is_not_reused_for_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node_ip: IpAddr = "10.250.0.1".parse().expect("ip");
        let (ca, leaf, _) = tls_material(dir.path(), node_ip).expect("made");
        assert!(certificate_names(&ca, &leaf, node_ip).expect("checked"));
        for local in ["127.0.0.1", "::1"] {
            let ip: IpAddr = local.parse().expect("ip");
            assert!(certificate_names(&ca, &leaf, ip).expect("checked"), "{ip}");
        }
        let other: IpAddr = "10.250.0.5".parse().expect("ip");
        assert!(!certificate_names(&ca, &leaf, other).expect("checked"));
        // The same address or any address: the stored certificate serves.
        assert_eq!(tls_material(dir.path(), node_ip).expect("reused").1, leaf);
        let any: IpAddr = "0.0.0.0".parse().expect("ip");
        assert_eq!(tls_material(dir.path(), any).expect("reused").1, leaf);
        // Another specific address: refused, saying what to do, and nothing is replaced.
        let e = tls_material(dir.path(), other).expect_err("refused");
        assert!(
            e.to_string()
                .contains("made for other addresses than 10.250.0.5"),
            "{e}"
        );
        let again = std::fs::read_to_string(dir.path().join("server.crt")).expect("read");
        assert_eq!(again, leaf);
    }
}

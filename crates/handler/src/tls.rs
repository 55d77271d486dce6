//! The cluster CA and the certificates of virt-handler's mutual-TLS endpoint ([`crate::rest`]),
//! as KubeVirt's virt-operator keeps `kubevirt-ca` and issues
//! `kubevirt-virt-handler-server-certs` and virt-api's client certificate.
//!
//! - [`ClusterCa`]: the CA, kept by the server in its data directory (`kubevirt-ca.crt`, and
//!   its key `kubevirt-ca.key`, 0600). It is not the API server's CA (`ca.crt`): that one's
//!   key was never kept, and kubeconfigs trust it; this one signs node agents' and virt-api's
//!   certificates only. The key stays on the server's disk and is never served by the API.
//! - [`Identity`]: who a certificate names. A node agent's names its node (DNS SAN = the node
//!   name, IP SAN = its address); virt-api's names [`VIRT_API`].
//! - [`issue_node_certificates`]: the server's loop that gives every Node a Secret
//!   ([`secret_name`], namespace `kubevirt`) holding its certificate, key and the CA, which a
//!   node agent joining with `kubevirt-rs node --kubeconfig` reads with its credentials
//!   ([`wait_for_node_certificate`]): nothing is copied by hand.
//! - [`Issued::server_config`] refuses, at the handshake, a peer without a certificate, with
//!   one from another CA, or with one that does not name an accepted client;
//!   [`Issued::client_config`] trusts the cluster CA only.

use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The CA's certificate in the server's data directory.
pub const CA_CERT_FILE: &str = "kubevirt-ca.crt";
/// The CA's key (0600), next to it.
pub const CA_KEY_FILE: &str = "kubevirt-ca.key";
/// The namespace of the node certificate Secrets (KubeVirt's install namespace).
pub const NAMESPACE: &str = "kubevirt";
/// The DNS name in virt-api's client certificate; node agents accept only it.
pub const VIRT_API: &str = "virt-api.kubevirt.io";
/// The Secret annotation saying which node address a certificate was issued for.
pub const ADDRESS_ANNOTATION: &str = "kubevirt-rs.io/node-address";

const CA_NAME: &str = "kubevirt-rs-cluster-ca";
const SECRET_PREFIX: &str = "kubevirt-virt-handler-server-certs-";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("reading {what}: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("building the TLS configuration: {0}")]
    Config(String),
    #[error("node name {0:?} is too long for a certificate Secret name")]
    NodeName(String),
    #[error("Secret {name}: {detail}")]
    Secret { name: String, detail: String },
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The CA's parameters: an issuer is rebuilt from them and the kept key (rcgen signs with the
/// issuer's name and key; the certificate itself is only the clients' trust anchor).
fn ca_params() -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, CA_NAME);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    p.not_after = rcgen::date_time_ymd(2099, 1, 1);
    Ok(p)
}

/// The cluster CA, with its key.
pub struct ClusterCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert_pem: String,
}

/// Who a certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A node agent: server and client certificate for its node name and address.
    Node { name: String, address: IpAddr },
    /// virt-api, a client of node agents.
    VirtApi,
}

/// A certificate with its key and the CA that issued it: what one party holds.
#[derive(Clone)]
pub struct Issued {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Loads the CA of `data_dir`, or creates it (key 0600) at first start.
    pub fn load_or_create(data_dir: &Path) -> Result<ClusterCa, TlsError> {
        let (crt, key) = (data_dir.join(CA_CERT_FILE), data_dir.join(CA_KEY_FILE));
        let params = ca_params()?;
        if crt.exists() && key.exists() {
            let cert_pem = std::fs::read_to_string(&crt).map_err(io(&crt))?;
            let key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
            let key_pair = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Pem {
                what: CA_KEY_FILE,
                detail: e.to_string(),
            })?;
            return Ok(ClusterCa {
                issuer: rcgen::Issuer::new(params, key_pair),
                cert_pem,
            });
        }
        let key_pair = rcgen::KeyPair::generate()?;
        let cert_pem = params.self_signed(&key_pair)?.pem();
        write_private(&key, key_pair.serialize_pem().as_bytes())?;
        write_private(&crt, cert_pem.as_bytes())?;
        Ok(ClusterCa {
            issuer: rcgen::Issuer::new(params, key_pair),
            cert_pem,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `who`, with a new key.
    pub fn issue(&self, who: &Identity) -> Result<Issued, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        let (cn, usages) = match who {
            Identity::Node { name, address } => {
                params.subject_alt_names = vec![
                    rcgen::SanType::DnsName(name.clone().try_into()?),
                    rcgen::SanType::IpAddress(*address),
                ];
                (
                    format!("kubevirt.io:system:node:{name}"),
                    vec![
                        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                    ],
                )
            }
            Identity::VirtApi => {
                params.subject_alt_names =
                    vec![rcgen::SanType::DnsName(VIRT_API.to_string().try_into()?)];
                (
                    "kubevirt.io:system:client:virt-api".to_string(),
                    vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
                )
            }
        };
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = usages;
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            ca_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Issued {
    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what: "the certificate",
                detail: e.to_string(),
            })
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "the key",
            detail: e.to_string(),
        })
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            let c = c.map_err(|e| TlsError::Pem {
                what: "the CA",
                detail: e.to_string(),
            })?;
            roots
                .add(c)
                .map_err(|e| TlsError::Config(format!("the CA: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    /// A server that requires a client certificate from the cluster CA naming one of
    /// `clients` (DNS names); anything else is refused at the handshake.
    pub fn server_config(&self, clients: &[&str]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let inner =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let names = clients
            .iter()
            .map(|n| {
                ServerName::try_from(n.to_string())
                    .map_err(|e| TlsError::Config(format!("client name {n:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let verifier = Arc::new(NamedClients { inner, names });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain()?, self.key()?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A server that asks for no client certificate: the node agent's `/metrics` listener
    /// ([`crate::scrape`]), whose clients (Prometheus) authenticate with a bearer token.
    pub fn server_config_for_bearer_clients(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain()?, self.key()?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A client presenting this certificate and trusting only the cluster CA; the server's
    /// name is checked against what the caller connects to (a node name).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain()?, self.key()?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    fn to_secret(&self, name: &str, address: IpAddr) -> Secret {
        let data = BTreeMap::from([
            (
                "ca.crt".to_string(),
                ByteString(self.ca_pem.clone().into_bytes()),
            ),
            (
                "tls.crt".to_string(),
                ByteString(self.cert_pem.clone().into_bytes()),
            ),
            (
                "tls.key".to_string(),
                ByteString(self.key_pem.clone().into_bytes()),
            ),
        ]);
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(NAMESPACE.to_string()),
                annotations: Some(BTreeMap::from([(
                    ADDRESS_ANNOTATION.to_string(),
                    address.to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Default::default()
        }
    }

    fn from_secret(s: &Secret) -> Option<Issued> {
        let data = s.data.as_ref()?;
        let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
        Some(Issued {
            ca_pem: text("ca.crt")?,
            cert_pem: text("tls.crt")?,
            key_pem: text("tls.key")?,
        })
    }
}

/// Delegates chain verification to webpki, then requires one of `names` in the certificate.
#[derive(Debug)]
struct NamedClients {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ClientCertVerifier for NamedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if self
            .names
            .iter()
            .any(|n| cert.verify_is_valid_for_subject_name(n).is_ok())
        {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The Secret holding `node`'s certificate.
pub fn secret_name(node: &str) -> Result<String, TlsError> {
    let name = format!("{SECRET_PREFIX}{node}");
    if name.len() > 253 {
        return Err(TlsError::NodeName(node.to_string()));
    }
    Ok(name)
}

/// A Node's `InternalIP`.
pub fn internal_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()
}

/// Gives `node` a certificate Secret for its current address, unless it has one.
async fn ensure_node_secret(client: &Client, ca: &ClusterCa, node: &Node) -> Result<(), TlsError> {
    let Some(name) = node.metadata.name.as_deref() else {
        return Ok(());
    };
    let Some(address) = internal_ip(node) else {
        return Ok(());
    };
    let secret = secret_name(name)?;
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let current = api.get_opt(&secret).await?;
    let issued_for = current
        .as_ref()
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(ADDRESS_ANNOTATION))
        .and_then(|a| a.parse::<IpAddr>().ok());
    if issued_for == Some(address) && current.as_ref().and_then(Issued::from_secret).is_some() {
        return Ok(());
    }
    let issued = ca.issue(&Identity::Node {
        name: name.to_string(),
        address,
    })?;
    api.patch(
        &secret,
        &PatchParams::apply("kubevirt-rs-cluster-ca").force(),
        &Patch::Apply(issued.to_secret(&secret, address)),
    )
    .await?;
    tracing::info!(node = name, %address, secret, "issued the node agent's certificate");
    Ok(())
}

/// The server's side (virt-operator's job in KubeVirt): every Node gets a certificate for its
/// name and `InternalIP`, reissued when its address changes. Runs until the watch ends.
pub async fn issue_node_certificates(client: Client, ca: Arc<ClusterCa>) {
    use futures::StreamExt;
    use kube::runtime::{watcher, WatchStreamExt};
    let nodes: Api<Node> = Api::all(client.clone());
    let mut events = std::pin::pin!(watcher(nodes, watcher::Config::default())
        .default_backoff()
        .applied_objects());
    while let Some(ev) = events.next().await {
        match ev {
            Ok(node) => {
                if let Err(e) = ensure_node_secret(&client, &ca, &node).await {
                    tracing::warn!(node = ?node.metadata.name, error = %e, "issuing a node certificate");
                }
            }
            Err(e) => tracing::debug!(error = %e, "watching Nodes for certificates"),
        }
    }
}

/// The node agent's side: waits until the server has written this node's certificate for
/// `address`, and returns it.
pub async fn wait_for_node_certificate(
    client: &Client,
    node: &str,
    address: IpAddr,
) -> Result<Issued, TlsError> {
    let name = secret_name(node)?;
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let mut logged = false;
    loop {
        match api.get_opt(&name).await {
            Ok(Some(s)) => {
                let for_address = s
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ADDRESS_ANNOTATION))
                    .is_some_and(|a| a.parse::<IpAddr>().ok() == Some(address));
                if for_address {
                    return Issued::from_secret(&s).ok_or_else(|| TlsError::Secret {
                        name: name.clone(),
                        detail: "ca.crt, tls.crt or tls.key is missing".into(),
                    });
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, secret = name, "reading the node certificate"),
        }
        if !logged {
            tracing::info!(secret = name, %address, "waiting for the server to issue this node's certificate");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

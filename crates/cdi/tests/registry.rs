//! containerDisk imports: the demo guest's OCI image pushed (by our own test code: blob
//! uploads, then a manifest PUT) to a real registry (Debian's `docker-registry`, on a free loopback port),
//! then imported by tag, by digest, through an index, with a gzipped layer; and from an
//! `oci-archive://` tar and an OCI layout directory. The bearer-token flow is tested against a
//! small fake registry, because Debian's registry needs a JWT-signing token server for it.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use kubevirt_cdi::{
    import, BasicAuth, ErrorKind, Format, ImportOptions, ProgressSink, RegistrySource, Source,
    Target,
};
use sha2::Digest;

const VOLUME: u64 = 128 * MIB;
fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// Pushes a blob: POST an upload session, then one monolithic PUT with the digest.
async fn push_blob(c: &reqwest::Client, addr: &str, repo: &str, data: Vec<u8>) -> String {
    let d = digest(&data);
    let r = c
        .post(format!("http://{addr}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "start upload");
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("http://{addr}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{loc}{sep}digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "finish upload of {d}");
    d
}

async fn push_manifest(
    c: &reqwest::Client,
    addr: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: Vec<u8>,
) -> String {
    let d = digest(&body);
    let r = c
        .put(format!("http://{addr}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "PUT manifest {reference}: {:?}",
        r.text().await
    );
    d
}

fn blob(oci: &Path, d: &str) -> Vec<u8> {
    std::fs::read(
        oci.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:")),
    )
    .unwrap()
}

struct Pushed {
    manifest_digest: String,
}

/// Pushes the guest image as `demo:latest` (uncompressed layer), `demo:gz` (gzipped layer)
/// and `demo:multi` (an index with arm64 and amd64 entries).
async fn push_guest(addr: &str) -> Pushed {
    let oci = guest_out().join("oci");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    let mdig = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest_bytes = blob(&oci, &mdig);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let cdig = manifest["config"]["digest"].as_str().unwrap();
    let ldig = manifest["layers"][0]["digest"].as_str().unwrap();
    let c = reqwest::Client::new();
    let repo = "kubevirt/demo";
    push_blob(&c, addr, repo, blob(&oci, cdig)).await;
    let layer = blob(&oci, ldig);
    push_blob(&c, addr, repo, layer.clone()).await;
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let manifest_digest = push_manifest(&c, addr, repo, "latest", mt, manifest_bytes.clone()).await;

    // The same image with a gzipped layer.
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&layer).unwrap();
        e.finish().unwrap()
    };
    let gz_len = gz.len();
    let gz_dig = push_blob(&c, addr, repo, gz).await;
    let mut m2 = manifest.clone();
    m2["layers"][0] = serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": gz_dig, "size": gz_len,
    });
    let m2_bytes = serde_json::to_vec(&m2).unwrap();
    let m2_dig = push_manifest(&c, addr, repo, "gz", mt, m2_bytes.clone()).await;

    // An index: arm64 points at the gzip variant, amd64 at the original.
    let idx = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": mt, "digest": m2_dig, "size": m2_bytes.len(),
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": mt, "digest": manifest_digest, "size": manifest_bytes.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    });
    push_manifest(
        &c,
        addr,
        repo,
        "multi",
        "application/vnd.oci.image.index.v1+json",
        serde_json::to_vec(&idx).unwrap(),
    )
    .await;
    Pushed { manifest_digest }
}

async fn import_to(
    source: &Source,
) -> (
    Result<kubevirt_cdi::ImportOutcome, kubevirt_cdi::ImportError>,
    tempfile::TempDir,
    PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let (sink, rx) = ProgressSink::watch();
    let r = import(
        source,
        &Target::new(&path, VOLUME),
        &ImportOptions::default(),
        sink,
    )
    .await;
    if r.is_ok() {
        assert_eq!(rx.borrow().percent_string(), "100.00%");
    }
    (r, dir, path)
}

fn registry_source(url: String) -> Source {
    let mut r = RegistrySource::new(url);
    r.insecure_http = true;
    Source::Registry(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_imports_by_tag_digest_index_and_gzip_layer() {
    let Some(reg) = kubevirt_testsupport::docker_registry() else {
        return;
    };
    let pushed = push_guest(&reg.addr).await;
    let reference = guest_out().join("disk.qcow2");
    for r in [
        "latest".to_string(),
        "gz".to_string(),
        "multi".to_string(),
        pushed.manifest_digest.clone(),
    ] {
        let sep = if r.starts_with("sha256:") { '@' } else { ':' };
        let src = registry_source(format!("docker://{}/kubevirt/demo{sep}{r}", reg.addr));
        let (res, _dir, path) = import_to(&src).await;
        let out = res.unwrap_or_else(|e| panic!("import {r}: {e}"));
        assert_eq!(out.formats, vec![Format::Qcow2], "{r}");
        assert_matches_qemu_img(&path, &reference, VOLUME);
        assert!(!Path::new(&format!("{}.scratch", path.display())).exists());
    }

    // An unknown tag is a permanent error that names the status.
    let src = registry_source(format!("docker://{}/kubevirt/demo:nope", reg.addr));
    let (res, _dir, path) = import_to(&src).await;
    let e = res.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permanent, "{e}");
    assert!(e.to_string().contains("404"), "{e}");
    assert_no_leftovers(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_archive_and_layout_dir() {
    let oci = guest_out().join("oci");
    let reference = guest_out().join("disk.qcow2");
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("image.tar");
    run(
        "tar",
        &[
            "-C",
            &oci.to_string_lossy(),
            "-cf",
            &archive.to_string_lossy(),
            ".",
        ],
    );
    for src in [
        Source::Registry(RegistrySource::new(format!(
            "oci-archive://{}",
            archive.display()
        ))),
        Source::OciLayout {
            path: oci.clone(),
            ref_name: Some("latest".into()),
        },
    ] {
        let (res, _dir, path) = import_to(&src).await;
        let out = res.unwrap_or_else(|e| panic!("{src:?}: {e}"));
        assert_eq!(out.formats, vec![Format::Qcow2]);
        assert_matches_qemu_img(&path, &reference, VOLUME);
    }
}

/// A fake registry (the fault-free path of the bearer-token flow, which Debian's registry
/// only offers with a JWT-signing token server): `/v2/...` answers 401 with a Bearer
/// challenge unless given the token, `/token` hands the token out for basic auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow_fake_registry() {
    use axum::extract::Request;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use base64::Engine;

    let oci = guest_out().join("oci");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let oci2 = oci.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let oci = oci2.clone();
        async move {
            let path = req.uri().path().to_string();
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            if path == "/token" {
                let q = req.uri().query().unwrap_or_default();
                let want = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
                );
                if auth != want || !q.contains("scope=repository%3Akubevirt%2Fdemo%3Apull") {
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                return ([("content-type", "application/json")], r#"{"token":"T0KEN"}"#)
                    .into_response();
            }
            if auth != "Bearer T0KEN" {
                let ch = format!(
                    "Bearer realm=\"http://{addr}/token\",service=\"fake\",scope=\"repository:kubevirt/demo:pull\""
                );
                return (StatusCode::UNAUTHORIZED, [("www-authenticate", ch)]).into_response();
            }
            let index: serde_json::Value =
                serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
            let body: Vec<u8> = if path.ends_with("/manifests/latest") {
                blob(&oci, index["manifests"][0]["digest"].as_str().unwrap())
            } else if let Some(d) = path.strip_prefix("/v2/kubevirt/demo/blobs/") {
                blob(&oci, d)
            } else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let mut r = Response::new(axum::body::Body::from(body));
            if path.contains("/manifests/") {
                r.headers_mut().insert(
                    "content-type",
                    "application/vnd.oci.image.manifest.v1+json".parse().unwrap(),
                );
            }
            r
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut r = RegistrySource::new(format!("docker://{addr}/kubevirt/demo:latest"));
    r.insecure_http = true;
    r.auth = Some(BasicAuth {
        username: USER.into(),
        password: PASSWORD.into(),
    });
    let (res, _dir, path) = import_to(&Source::Registry(r.clone())).await;
    res.unwrap();
    assert_matches_qemu_img(&path, &guest_out().join("disk.qcow2"), VOLUME);

    // Wrong password: the token service refuses; permanent, names secretRef.
    r.auth = Some(BasicAuth {
        username: USER.into(),
        password: "wrong".into(),
    });
    let (res, _dir, path) = import_to(&Source::Registry(r)).await;
    let e = res.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permanent, "{e}");
    assert!(e.to_string().contains("secretRef"), "{e}");
    assert_no_leftovers(&path);
}

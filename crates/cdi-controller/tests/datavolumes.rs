//! The CDI control plane against the real embedded API server (in-process) and a real local
//! HTTP server: DataVolumes imported from http in every format, from a real registry
//! (Debian's `docker-registry`), cloned and blank; PV/PVC binding and reclaim; bad inputs;
//! uploads through the token and the upload proxy. Every imported volume is compared with
//! `qemu-img convert -O raw` of the same source.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use kubevirt_api::DataVolume;
use kubevirt_cdi_controller::{Config, Context};
use kubevirt_runtime::backoff::Backoff;
use serde_json::{json, Value};

const NODE: &str = "node01";
const MIB: u64 = 1 << 20;

struct Env {
    dir: tempfile::TempDir,
    client: Client,
    running: kubevirt_apiserver::Running,
    ctx: Arc<Context>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Env {
    async fn start() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = kubevirt_apiserver::start(kubevirt_apiserver::Config::new(
            dir.path().join("api"),
            "127.0.0.1:0".parse().expect("addr"),
        ))
        .await
        .expect("API server");
        let client = running.client().await.expect("client");
        let mut config = Config::single_node(NODE, dir.path().join("data"));
        config.retry = Backoff::exponential(Duration::from_millis(300), Duration::from_secs(1));
        config.progress_interval = Duration::from_millis(200);
        let ctx = Context::new(client.clone(), config);
        running.set_group_handler(
            "upload.cdi.kubevirt.io",
            Arc::new(kubevirt_cdi_controller::upload::TokenHandler(ctx.clone())),
        );
        running.set_upload_proxy(Arc::new(kubevirt_cdi_controller::upload::UploadProxy(
            ctx.clone(),
        )));
        kubevirt_cdi_controller::ensure_cdi_config(&client, &format!("https://{}", running.addr))
            .await
            .expect("CDIConfig");
        let c = ctx.clone();
        let task = tokio::spawn(async move {
            let _ = kubevirt_cdi_controller::run(c).await;
        });
        Env {
            dir,
            client,
            running,
            ctx,
            task,
        }
    }

    fn dvs(&self) -> Api<DataVolume> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn create_dv(&self, name: &str, spec: Value) {
        let dv: DataVolume = serde_json::from_value(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("DataVolume");
        self.dvs()
            .create(&PostParams::default(), &dv)
            .await
            .expect("create DataVolume");
    }

    /// Waits until the DataVolume satisfies `f`; panics with its status after `secs`.
    async fn wait_dv(&self, name: &str, secs: u64, f: impl Fn(&DataVolume) -> bool) -> DataVolume {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let dv = self.dvs().get_opt(name).await.expect("get DataVolume");
            if let Some(dv) = &dv {
                if f(dv) {
                    return dv.clone();
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "DataVolume {name} did not reach the expected state: {}",
                    serde_json::to_string_pretty(&dv.map(|d| d.status)).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_phase(&self, name: &str, phase: &str, secs: u64) -> DataVolume {
        self.wait_dv(name, secs, |d| phase_of(d) == phase).await
    }

    async fn pvc(&self, name: &str) -> Option<PersistentVolumeClaim> {
        Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), "default")
            .get_opt(name)
            .await
            .expect("get PVC")
    }

    async fn pv_of(&self, claim: &str) -> PersistentVolume {
        let pvc = self.pvc(claim).await.expect("PVC exists");
        let name = pvc.spec.unwrap().volume_name.expect("volumeName set");
        Api::<PersistentVolume>::all(self.client.clone())
            .get(&name)
            .await
            .expect("PV exists")
    }

    async fn volume_path(&self, claim: &str) -> PathBuf {
        let pv = self.pv_of(claim).await;
        PathBuf::from(pv.spec.unwrap().local.unwrap().path)
    }
}

fn phase_of(dv: &DataVolume) -> String {
    dv.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn condition<'a>(
    dv: &'a DataVolume,
    t: &str,
) -> Option<&'a kubevirt_api::cdi::DataVolumeCondition> {
    dv.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.r#type == t))
}

fn running_message(dv: &DataVolume) -> String {
    condition(dv, "Running")
        .and_then(|c| c.message.clone())
        .unwrap_or_default()
}

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().expect(cmd);
    assert!(st.success(), "{cmd} {args:?} failed");
}

/// The demo guest's disks (built once), or None after a loud SKIP.
fn guest() -> Option<PathBuf> {
    if !kubevirt_testsupport::have("qemu-img", &["--version"], "apt-get install qemu-utils") {
        return None;
    }
    kubevirt_testsupport::guest(env!("CARGO_TARGET_TMPDIR"))
}

/// The images the tests serve, made from the guest's disks.
fn images(guest: &Path, dir: &Path) {
    let g = |f: &str| guest.join(f).to_string_lossy().into_owned();
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    std::fs::copy(guest.join("disk.raw"), dir.join("disk.raw")).expect("copy raw");
    std::fs::copy(guest.join("disk.qcow2"), dir.join("disk.qcow2")).expect("copy qcow2");
    run(
        "sh",
        &[
            "-c",
            &format!("gzip -1 -c {} > {}", g("disk.qcow2"), d("disk.qcow2.gz")),
        ],
    );
    run(
        "sh",
        &[
            "-c",
            &format!("xz -0 -T2 -c {} > {}", g("disk.raw"), d("disk.raw.xz")),
        ],
    );
    let q = std::fs::read(guest.join("disk.qcow2")).expect("read qcow2");
    std::fs::write(dir.join("truncated.qcow2"), &q[..q.len() / 2]).expect("truncated");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-u",
            "-b",
            "/nonexistent/base.raw",
            &d("backed.qcow2"),
            "64M",
        ],
    );
    run(
        "qemu-img",
        &["convert", "-O", "raw", &g("disk.qcow2"), &d("ref.raw")],
    );
}

/// A real HTTP server over `dir`: `/files/<name>`, `/status/<code>`.
async fn serve(dir: PathBuf) -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(move |req: Request| {
        let dir = dir.clone();
        async move {
            let path = req.uri().path().to_string();
            if let Some(code) = path.strip_prefix("/status/") {
                return StatusCode::from_u16(code.parse().unwrap_or(500))
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                    .into_response();
            }
            if let Some(name) = path.strip_prefix("/slow/") {
                // 1 MiB every 100 ms: long enough to interrupt an import.
                let Ok(data) = tokio::fs::read(dir.join(name)).await else {
                    return StatusCode::NOT_FOUND.into_response();
                };
                let chunks: Vec<bytes::Bytes> = data
                    .chunks(MIB as usize)
                    .map(bytes::Bytes::copy_from_slice)
                    .collect();
                let stream = futures::stream::iter(chunks).then(|c| async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, std::io::Error>(c)
                });
                let mut r = Response::new(Body::from_stream(stream));
                r.headers_mut().insert(
                    "content-length",
                    data.len().to_string().parse().expect("header"),
                );
                return r;
            }
            let Some(name) = path.strip_prefix("/files/") else {
                return StatusCode::NOT_FOUND.into_response();
            };
            match tokio::fs::read(dir.join(name)).await {
                Ok(b) => Response::new(Body::from(b)),
                Err(_) => StatusCode::NOT_FOUND.into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// `out` holds `reference` then zeros, and is `len` bytes long.
fn assert_same_disk(out: &Path, reference: &Path, len: u64) {
    let a = std::fs::read(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    let b = std::fs::read(reference).expect("reference");
    assert_eq!(a.len() as u64, len, "{}: volume file length", out.display());
    assert!(a.len() >= b.len(), "volume smaller than the image");
    assert!(
        a[..b.len()] == b[..],
        "{}: content differs from qemu-img's",
        out.display()
    );
    assert!(
        a[b.len()..].iter().all(|&x| x == 0),
        "{}: non-zero data past the image",
        out.display()
    );
}

fn storage(size: &str) -> Value {
    json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_imports_in_every_format_clone_blank_and_reclaim() {
    let Some(guest) = guest() else { return };
    let env = Env::start().await;
    let files = env.dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    images(&guest, &files);
    let addr = serve(files.clone()).await;

    let formats = [
        ("raw", "disk.raw"),
        ("qcow2", "disk.qcow2"),
        ("qcow2-gz", "disk.qcow2.gz"),
        ("raw-xz", "disk.raw.xz"),
    ];
    for (name, file) in formats {
        env.create_dv(
            name,
            json!({"source": {"http": {"url": format!("http://{addr}/files/{file}")}},
                   "storage": storage("100Mi")}),
        )
        .await;
    }
    for (name, _) in formats {
        let dv = env.wait_phase(name, "Succeeded", 120).await;
        let st = dv.status.clone().unwrap();
        assert_eq!(st.progress.as_deref(), Some("100.0%"), "{name}");
        assert_eq!(st.claim_name.as_deref(), Some(name));
        assert_eq!(condition(&dv, "Ready").unwrap().status, "True", "{name}");
        let bound = condition(&dv, "Bound").unwrap();
        assert_eq!(bound.status, "True");
        assert_eq!(
            bound.message.as_deref(),
            Some(format!("PVC {name} Bound").as_str())
        );
        let running = condition(&dv, "Running").unwrap();
        assert_eq!(
            (running.status.as_str(), running.reason.as_deref()),
            ("False", Some("Completed"))
        );

        // PVC: owned by the DataVolume, bound, sized with CDI's filesystem overhead.
        let pvc = env.pvc(name).await.unwrap();
        assert_eq!(
            pvc.metadata.owner_references.as_ref().unwrap()[0].kind,
            "DataVolume"
        );
        assert_eq!(pvc.status.as_ref().unwrap().phase.as_deref(), Some("Bound"));
        let req = &pvc
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests;
        let want = kubevirt_cdi_controller::datavolume::with_overhead(100 * MIB, 0.055);
        assert_eq!(req.as_ref().unwrap()["storage"].0, want.to_string());
        assert_eq!(
            pvc.metadata.annotations.as_ref().unwrap()["cdi.kubevirt.io/storage.import.source"],
            "http"
        );

        // PV: local path, bound to the claim, pinned to the node, reclaim Delete.
        let pv = env.pv_of(name).await;
        let spec = pv.spec.clone().unwrap();
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        let claim = spec.claim_ref.unwrap();
        assert_eq!(claim.name.as_deref(), Some(name));
        assert_eq!(claim.uid, pvc.metadata.uid);
        let terms = spec
            .node_affinity
            .unwrap()
            .required
            .unwrap()
            .node_selector_terms;
        assert_eq!(
            terms[0].match_expressions.as_ref().unwrap()[0].values,
            Some(vec![NODE.to_string()])
        );
        assert_eq!(pv.status.unwrap().phase.as_deref(), Some("Bound"));
        let dir = PathBuf::from(spec.local.unwrap().path);
        assert!(dir.starts_with(env.dir.path().join("data/volumes")));
        assert_same_disk(&dir.join("disk.img"), &files.join("ref.raw"), 100 * MIB);
        assert!(!dir.join("disk.img.importing").exists());
    }

    // Clone the raw volume; a blank Block volume.
    env.create_dv(
        "clone",
        json!({"source": {"pvc": {"name": "raw", "namespace": "default"}},
               "storage": storage("100Mi")}),
    )
    .await;
    env.create_dv(
        "blank-block",
        json!({"source": {"blank": {}},
               "pvc": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block",
                       "storageClassName": "rook-ceph-block",
                       "resources": {"requests": {"storage": "16Mi"}}}}),
    )
    .await;
    env.wait_phase("clone", "Succeeded", 120).await;
    let clone_dir = env.volume_path("clone").await;
    assert_same_disk(
        &clone_dir.join("disk.img"),
        &files.join("ref.raw"),
        100 * MIB,
    );
    env.wait_phase("blank-block", "Succeeded", 60).await;
    let block = env.volume_path("blank-block").await;
    let meta = std::fs::metadata(&block).unwrap();
    assert!(meta.is_file(), "a Block volume is a raw file");
    assert_eq!(meta.len(), 16 * MIB);
    // A class from another cluster's manifest is served by the one local provisioner.
    let spec = env.pv_of("blank-block").await.spec.unwrap();
    assert_eq!(
        (
            spec.volume_mode.as_deref(),
            spec.storage_class_name.as_deref()
        ),
        (Some("Block"), Some("rook-ceph-block"))
    );

    // Deleting the DataVolume deletes its PVC (owner), its PV and the data.
    let pv_name = env.pv_of("raw-xz").await.metadata.name.unwrap();
    let path = env.volume_path("raw-xz").await;
    env.dvs()
        .delete("raw-xz", &DeleteParams::default())
        .await
        .unwrap();
    let pvs: Api<PersistentVolume> = Api::all(env.client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let gone = env.pvc("raw-xz").await.is_none()
            && pvs.get_opt(&pv_name).await.unwrap().is_none()
            && !path.exists();
        if gone {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "PVC/PV/volume of a deleted DataVolume not reclaimed (path exists: {})",
            path.exists()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_inputs_fail_with_the_cause_and_transient_errors_retry() {
    let Some(guest) = guest() else { return };
    let env = Env::start().await;
    let files = env.dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    images(&guest, &files);
    let addr = serve(files.clone()).await;
    let http = |f: &str| json!({"http": {"url": format!("http://{addr}/{f}")}});
    let wrong_sum = json!({"http": {"url": format!("http://{addr}/files/disk.raw"),
        "checksum": format!("sha256:{}", "0".repeat(64))}});
    let cases: [(&str, Value, Value, &[&str]); 5] = [
        (
            "bad-checksum",
            wrong_sum,
            storage("100Mi"),
            &["checksum mismatch"],
        ),
        (
            "missing",
            http("files/nope.img"),
            storage("100Mi"),
            &["404"],
        ),
        (
            "truncated",
            http("files/truncated.qcow2"),
            storage("100Mi"),
            &["truncated"],
        ),
        (
            "backed",
            http("files/backed.qcow2"),
            storage("100Mi"),
            &["backing file"],
        ),
        (
            "too-big",
            http("files/disk.raw"),
            json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "32Mi"}}}),
            &["larger than the volume"],
        ),
    ];
    for (name, src, st, _) in &cases {
        env.create_dv(name, json!({"source": src, "pvc": st})).await;
    }
    env.create_dv(
        "flaky",
        json!({"source": http("status/503"), "storage": storage("100Mi")}),
    )
    .await;
    for (name, _, _, needles) in &cases {
        let dv = env.wait_phase(name, "Failed", 60).await;
        let msg = running_message(&dv);
        for n in *needles {
            assert!(msg.contains(n), "{name}: {msg:?} does not name {n:?}");
        }
        assert_eq!(
            condition(&dv, "Running").unwrap().reason.as_deref(),
            Some("Error")
        );
        assert_eq!(condition(&dv, "Ready").unwrap().status, "False");
        let dir = env.volume_path(name).await;
        assert!(
            !dir.join("disk.img").exists(),
            "{name}: a failed import left disk.img"
        );
        assert!(!dir.join("disk.img.importing").exists());
    }
    // Transient: stays in progress, restartCount moves, the message names the cause. Each
    // retry first reports the new attempt running (no message), then its error: sample a
    // state after an error was reported, not the instant between.
    let dv = env
        .wait_dv("flaky", 60, |d| {
            d.status.as_ref().and_then(|s| s.restart_count).unwrap_or(0) >= 2
                && !running_message(d).is_empty()
        })
        .await;
    assert_eq!(phase_of(&dv), "ImportInProgress");
    assert!(
        running_message(&dv).contains("503"),
        "{:?}",
        running_message(&dv)
    );
    // Events name the failure.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), "default");
    let evs = events.list(&Default::default()).await.unwrap();
    assert!(
        evs.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Error")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("missing")
                && e.note.as_deref().unwrap_or("").contains("404")),
        "no Error event naming the 404"
    );
}

fn sha256(b: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(b)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    let s = String::from_utf8_lossy(&out.stdout);
    format!("sha256:{}", s.split_whitespace().next().unwrap_or_default())
}

/// Pushes the guest's OCI image (layout `oci`) as `kubevirt/demo:latest`.
async fn push_guest(addr: &str, oci: &Path) {
    let c = reqwest::Client::new();
    let repo = "kubevirt/demo";
    let blob = |d: &str| {
        std::fs::read(
            oci.join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let index: Value =
        serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    let mdig = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest_bytes = blob(&mdig);
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
    for l in manifest["layers"].as_array().unwrap() {
        blobs.push(l["digest"].as_str().unwrap().to_string());
    }
    for d in blobs {
        let data = blob(&d);
        assert_eq!(sha256(&data), d);
        let r = c
            .post(format!("http://{addr}/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
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
        assert_eq!(r.status(), 201, "blob {d}");
    }
    let r = c
        .put(format!("http://{addr}/v2/{repo}/manifests/latest"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest_bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "manifest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_and_oci_archive_imports() {
    let Some(guest) = guest() else { return };
    let env = Env::start().await;
    // oci-archive:// (a tar of the layout).
    let archive = env.dir.path().join("demo.tar");
    run(
        "tar",
        &[
            "-C",
            &guest.join("oci").to_string_lossy(),
            "-cf",
            &archive.to_string_lossy(),
            ".",
        ],
    );
    let reference = env.dir.path().join("ref.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            &guest.join("disk.qcow2").to_string_lossy(),
            &reference.to_string_lossy(),
        ],
    );
    env.create_dv(
        "archive",
        json!({"source": {"registry": {"url": format!("oci-archive://{}", archive.display())}},
               "storage": storage("100Mi")}),
    )
    .await;
    let registry = kubevirt_testsupport::docker_registry();
    if let Some(reg) = &registry {
        push_guest(&reg.addr, &guest.join("oci")).await;
        // Plain-HTTP registries are listed in CDIConfig, as with CDI.
        let cfgs: Api<kubevirt_api::CDIConfig> = Api::all(env.client.clone());
        cfgs.patch(
            "config",
            &Default::default(),
            &kube::api::Patch::Merge(json!({"spec": {"insecureRegistries": [reg.addr]}})),
        )
        .await
        .unwrap();
        env.create_dv(
            "registry",
            json!({"source": {"registry": {"url": format!("docker://{}/kubevirt/demo:latest", reg.addr)}},
                   "storage": storage("100Mi")}),
        )
        .await;
    }
    env.wait_phase("archive", "Succeeded", 180).await;
    assert_same_disk(
        &env.volume_path("archive").await.join("disk.img"),
        &reference,
        100 * MIB,
    );
    if registry.is_some() {
        env.wait_phase("registry", "Succeeded", 180).await;
        assert_same_disk(
            &env.volume_path("registry").await.join("disk.img"),
            &reference,
            100 * MIB,
        );
    }
}

fn https_client(env: &Env) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(env.running.ca_pem.as_bytes()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap()
}

async fn upload_token(env: &Env, pvc: &str) -> String {
    let c = https_client(env);
    let r = c
        .post(format!(
            "https://{}/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/default/uploadtokenrequests",
            env.running.addr
        ))
        .bearer_auth(&env.running.token)
        .json(
            &json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
                      "metadata": {"name": "token-for-test"}, "spec": {"pvcName": pvc}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["kind"], "UploadTokenRequest");
    v["status"]["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_through_token_and_proxy() {
    let Some(guest) = guest() else { return };
    let env = Env::start().await;
    let reference = env.dir.path().join("ref.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            &guest.join("disk.qcow2").to_string_lossy(),
            &reference.to_string_lossy(),
        ],
    );
    // CDIConfig names the upload proxy.
    let cfg = Api::<kubevirt_api::CDIConfig>::all(env.client.clone())
        .get("config")
        .await
        .unwrap();
    assert_eq!(
        cfg.status.unwrap().upload_proxy_url,
        Some(format!("https://{}", env.running.addr))
    );
    for name in ["up-sync", "up-async", "up-form"] {
        env.create_dv(
            name,
            json!({"source": {"upload": {}}, "storage": storage("100Mi")}),
        )
        .await;
    }
    for name in ["up-sync", "up-async", "up-form"] {
        env.wait_phase(name, "UploadReady", 60).await;
        let pvc = env.pvc(name).await.unwrap();
        assert_eq!(
            pvc.metadata.annotations.unwrap()["cdi.kubevirt.io/storage.pod.ready"],
            "true"
        );
    }
    let c = https_client(&env);
    let base = format!("https://{}", env.running.addr);
    let qcow2 = std::fs::read(guest.join("disk.qcow2")).unwrap();

    // No token, a bad token: 401, nothing imported.
    let r = c
        .post(format!("{base}/v1beta1/upload"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{base}/v1beta1/upload"))
        .bearer_auth("not-a-token")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        phase_of(&env.dvs().get("up-sync").await.unwrap()),
        "UploadReady"
    );

    // Sync: answered once imported.
    let token = upload_token(&env, "up-sync").await;
    let r = c
        .post(format!("{base}/v1beta1/upload"))
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .body(qcow2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(
        phase_of(&env.dvs().get("up-sync").await.unwrap()),
        "Succeeded"
    );
    assert_same_disk(
        &env.volume_path("up-sync").await.join("disk.img"),
        &reference,
        100 * MIB,
    );
    let pvc = env.pvc("up-sync").await.unwrap();
    assert_eq!(
        pvc.metadata.annotations.unwrap()["cdi.kubevirt.io/storage.pod.phase"],
        "Succeeded"
    );

    // Async: virtctl's HEAD probe, then the upload; the import completes after the answer.
    let token = upload_token(&env, "up-async").await;
    let r = c
        .head(format!("{base}/v1beta1/upload-async"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{base}/v1beta1/upload-async"))
        .bearer_auth(&token)
        .body(qcow2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    env.wait_phase("up-async", "Succeeded", 60).await;
    assert_same_disk(
        &env.volume_path("up-async").await.join("disk.img"),
        &reference,
        100 * MIB,
    );

    // Form upload (field "file").
    let token = upload_token(&env, "up-form").await;
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(qcow2.clone()).file_name("disk.qcow2"),
    );
    let r = c
        .post(format!("{base}/v1beta1/upload-form"))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    env.wait_phase("up-form", "Succeeded", 10).await;
    assert_same_disk(
        &env.volume_path("up-form").await.join("disk.img"),
        &reference,
        100 * MIB,
    );

    // A bare PVC annotated for upload (`virtctl image-upload pvc`): ready once bound.
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "bare", "annotations": {"cdi.kubevirt.io/storage.upload.target": ""}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Mi"}}}
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), "default")
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env
        .pvc("bare")
        .await
        .and_then(|p| p.metadata.annotations)
        .and_then(|a| a.get("cdi.kubevirt.io/storage.pod.ready").cloned())
        .as_deref()
        != Some("true")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bare PVC never ready for upload"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let token = upload_token(&env, "bare").await;
    let r = c
        .post(format!("{base}/v1beta1/upload"))
        .bearer_auth(&token)
        .body(qcow2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let pvc = env.pvc("bare").await.unwrap();
    assert_eq!(
        pvc.metadata.annotations.unwrap()["cdi.kubevirt.io/storage.pod.phase"],
        "Succeeded"
    );
    // spec.pvc semantics: the usable size is the claim minus CDI's filesystem overhead.
    let usable = kubevirt_cdi_controller::datavolume::usable(100 * MIB, 0.055);
    assert_same_disk(
        &env.volume_path("bare").await.join("disk.img"),
        &reference,
        usable,
    );
    // Once imported, the target takes no second upload.
    let r = c
        .post(format!("{base}/v1beta1/upload"))
        .bearer_auth(&token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "a finished upload target is not ready again"
    );
}

/// A restarted control plane resumes an unfinished import (level-based: the DataVolume's phase
/// is the record), and the volume is never handed over half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_import_is_resumed_by_a_new_controller() {
    let Some(guest) = guest() else { return };
    let mut env = Env::start().await;
    let files = env.dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    images(&guest, &files);
    let addr = serve(files.clone()).await;
    env.create_dv(
        "slow",
        json!({"source": {"http": {"url": format!("http://{addr}/slow/disk.raw")}},
               "storage": storage("100Mi")}),
    )
    .await;
    // Wait until the import is under way with some progress, then "crash".
    env.wait_dv("slow", 60, |d| {
        phase_of(d) == "ImportInProgress"
            && d.status
                .as_ref()
                .and_then(|s| s.progress.as_deref())
                .is_some_and(|p| p != "N/A" && p != "0.00%")
    })
    .await;
    env.task.abort();
    env.ctx.abort_imports();
    let dir = env.volume_path("slow").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !dir.join("disk.img").exists(),
        "a half-written volume was handed over"
    );
    assert_eq!(
        phase_of(&env.dvs().get("slow").await.unwrap()),
        "ImportInProgress"
    );

    // A new controller (as after a server restart) finds it and imports again.
    let mut config = Config::single_node(NODE, env.dir.path().join("data"));
    config.progress_interval = Duration::from_millis(200);
    let ctx = Context::new(env.client.clone(), config);
    let c = ctx.clone();
    env.task = tokio::spawn(async move {
        let _ = kubevirt_cdi_controller::run(c).await;
    });
    env.ctx = ctx;
    env.wait_phase("slow", "Succeeded", 120).await;
    assert_same_disk(&dir.join("disk.img"), &files.join("ref.raw"), 100 * MIB);
}

/// A claim's StorageClass is honoured: a class of ours sets the volume's class and reclaim
/// policy, a claim without a class gets the default class, and a class of another
/// provisioner is left to it (the claim stays Pending), as in a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_classes_chosen_by_name_are_honoured() {
    let env = Env::start().await;
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(env.client.clone());
    let default = classes
        .get("local-path")
        .await
        .expect("the default class exists");
    assert_eq!(
        default
            .metadata
            .annotations
            .unwrap_or_default()
            .get("storageclass.kubernetes.io/is-default-class")
            .map(String::as_str),
        Some("true")
    );
    for (name, provisioner, reclaim) in [
        ("keep", kubevirt_cdi_controller::PROVISIONER_NAME, "Retain"),
        ("nfs", "example.com/nfs", "Delete"),
    ] {
        let sc = serde_json::from_value(json!({
            "metadata": {"name": name}, "provisioner": provisioner, "reclaimPolicy": reclaim,
        }))
        .expect("class");
        classes
            .create(&PostParams::default(), &sc)
            .await
            .expect("create class");
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), "default");
    for (name, class) in [
        ("kept", Some("keep")),
        ("foreign", Some("nfs")),
        ("plain", None),
    ] {
        let mut spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}});
        if let Some(c) = class {
            spec["storageClassName"] = json!(c);
        }
        let pvc = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))
            .expect("claim");
        pvcs.create(&PostParams::default(), &pvc)
            .await
            .expect("create claim");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let bound = |p: &Option<PersistentVolumeClaim>| {
        p.as_ref()
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| s.volume_name.as_deref())
            .is_some_and(|v| !v.is_empty())
    };
    while !(bound(&env.pvc("kept").await) && bound(&env.pvc("plain").await)) {
        assert!(tokio::time::Instant::now() < deadline, "claims not bound");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = env.pv_of("kept").await.spec.expect("spec");
    assert_eq!(kept.storage_class_name.as_deref(), Some("keep"));
    assert_eq!(
        kept.persistent_volume_reclaim_policy.as_deref(),
        Some("Retain")
    );
    let plain_claim = env.pvc("plain").await.expect("claim");
    assert_eq!(
        plain_claim
            .spec
            .and_then(|s| s.storage_class_name)
            .as_deref(),
        Some("local-path")
    );
    assert_eq!(
        env.pv_of("plain")
            .await
            .spec
            .expect("spec")
            .storage_class_name
            .as_deref(),
        Some("local-path")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !bound(&env.pvc("foreign").await),
        "a claim of another provisioner's class was provisioned here"
    );
    // CDI's StorageProfiles: ours say how volumes are made; another provisioner's say nothing.
    let profiles: Api<kubevirt_api::StorageProfile> = Api::all(env.client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (keep, nfs) = loop {
        let keep = profiles.get_opt("keep").await.expect("get profile");
        let nfs = profiles.get_opt("nfs").await.expect("get profile");
        let ready = |p: &Option<kubevirt_api::StorageProfile>| {
            p.as_ref()
                .and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.provisioner.is_some())
        };
        if ready(&keep) && ready(&nfs) {
            break (keep.expect("keep"), nfs.expect("nfs"));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "storage profiles not reported"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let sets = keep
        .status
        .and_then(|s| s.claim_property_sets)
        .unwrap_or_default();
    assert!(
        sets.iter()
            .any(|s| s.volume_mode.as_deref() == Some("Block")),
        "{sets:?}"
    );
    assert!(nfs.status.and_then(|s| s.claim_property_sets).is_none());

    // Retain: the volume and its data outlive the claim.
    let pv_name = env.pv_of("kept").await.metadata.name.expect("name");
    let path = env.volume_path("kept").await;
    pvcs.delete("kept", &DeleteParams::default())
        .await
        .expect("delete claim");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pvs: Api<PersistentVolume> = Api::all(env.client.clone());
    assert!(pvs.get_opt(&pv_name).await.expect("get PV").is_some());
    assert!(path.exists(), "a Retain volume's data was deleted");
}

/// Polls `f` every 200 ms until it returns `Some`; panics with `what` after `secs`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_claim(env: &Env, ns: &str, name: &str, spec: Value) {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), ns);
    let pvc =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("claim");
    pvcs.create(&PostParams::default(), &pvc)
        .await
        .expect("create claim");
}

async fn wait_bound(env: &Env, name: &str) -> PathBuf {
    eventually(30, &format!("claim {name} bound"), || async {
        let p = env.pvc(name).await?;
        (p.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(())
    })
    .await;
    env.volume_path(name).await
}

async fn create_snapshot(
    env: &Env,
    ns: &str,
    name: &str,
    source: Value,
) -> Result<(), kube::Error> {
    let snaps: Api<kubevirt_api::VolumeSnapshot> = Api::namespaced(env.client.clone(), ns);
    let vs = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": name}, "spec": {"source": source},
    }))
    .expect("VolumeSnapshot");
    snaps.create(&PostParams::default(), &vs).await.map(|_| ())
}

async fn wait_snapshot(
    env: &Env,
    name: &str,
    f: impl Fn(&kubevirt_api::volumesnapshot::VolumeSnapshotStatus) -> bool,
) -> kubevirt_api::VolumeSnapshot {
    let snaps: Api<kubevirt_api::VolumeSnapshot> = Api::namespaced(env.client.clone(), "default");
    eventually(30, &format!("VolumeSnapshot {name}"), || async {
        let s = snaps.get_opt(name).await.expect("get VolumeSnapshot")?;
        f(s.status.as_ref()?).then_some(s)
    })
    .await
}

fn claim_spec(size: &str, mode: &str, snapshot: Option<&str>) -> Value {
    let mut spec = json!({"accessModes": ["ReadWriteOnce"], "volumeMode": mode,
                          "resources": {"requests": {"storage": size}}});
    if let Some(s) = snapshot {
        spec["dataSource"] =
            json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": s});
    }
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_snapshots_keep_the_data_of_their_moment_and_restore_it() {
    use kubevirt_api::{VolumeSnapshotClass, VolumeSnapshotContent};
    let env = Env::start().await;
    // The default VolumeSnapshotClass of the local-path driver exists from the start.
    let classes: Api<VolumeSnapshotClass> = Api::all(env.client.clone());
    let class = classes
        .get(kubevirt_api::volumesnapshot::LOCAL_PATH_SNAPSHOT_CLASS)
        .await
        .expect("default snapshot class");
    assert_eq!(class.spec.driver, kubevirt_cdi_controller::PROVISIONER_NAME);

    for (claim, mode) in [("fs", "Filesystem"), ("blk", "Block")] {
        create_claim(&env, "default", claim, claim_spec("16Mi", mode, None)).await;
        let vol = wait_bound(&env, claim).await;
        let data = if mode == "Block" {
            vol
        } else {
            vol.join("disk.img")
        };
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&data)
                .expect("open volume");
            f.set_len(8 * MIB).expect("size");
            f.write_all_at(b"before the snapshot", MIB).expect("write");
            f.sync_all().expect("sync");
        }
        let before = std::fs::read(&data).expect("read");
        let snap = format!("{claim}-snap");
        create_snapshot(
            &env,
            "default",
            &snap,
            json!({"persistentVolumeClaimName": claim}),
        )
        .await
        .expect("create VolumeSnapshot");
        let vs = wait_snapshot(&env, &snap, |s| s.ready_to_use == Some(true)).await;
        let st = vs.status.clone().expect("status");
        let content_name = format!("snapcontent-{}", vs.metadata.uid.clone().expect("uid"));
        assert_eq!(
            st.bound_volume_snapshot_content_name.as_deref(),
            Some(content_name.as_str())
        );
        assert!(st.creation_time.is_some(), "{st:?}");
        assert_eq!(
            st.restore_size.as_ref().map(|q| q.0.as_str()),
            Some("16777216")
        );
        let content = Api::<VolumeSnapshotContent>::all(env.client.clone())
            .get(&content_name)
            .await
            .expect("content");
        let cs = content.status.clone().expect("content status");
        assert_eq!(cs.snapshot_handle.as_deref(), Some(content_name.as_str()));
        assert_eq!(cs.ready_to_use, Some(true));
        assert_eq!(cs.restore_size, Some(16 * MIB as i64));
        assert!(cs.creation_time.is_some_and(|t| t > 0));
        assert_eq!(
            content.spec.volume_snapshot_ref.name.as_deref(),
            Some(snap.as_str())
        );

        // A write after the snapshot is not in it.
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&data)
                .expect("open");
            f.write_all_at(b"AFTER", MIB).expect("write");
            f.write_all_at(b"after too", 4 * MIB).expect("write");
        }
        let restored = format!("{claim}-restored");
        create_claim(
            &env,
            "default",
            &restored,
            claim_spec("16Mi", mode, Some(&snap)),
        )
        .await;
        let rvol = wait_bound(&env, &restored).await;
        let rdata = if mode == "Block" {
            rvol
        } else {
            rvol.join("disk.img")
        };
        let got = std::fs::read(&rdata).expect("read restored");
        assert_eq!(
            got[..before.len()],
            before[..],
            "{mode}: restored bytes differ"
        );
        assert!(
            got.windows(5).all(|w| w != b"AFTER") && got.windows(9).all(|w| w != b"after too"),
            "{mode}: a write made after the snapshot is in the restored volume"
        );
    }

    // Too small a claim for the snapshot: Pending, with an event naming the field.
    create_claim(
        &env,
        "default",
        "small",
        claim_spec("1Mi", "Filesystem", Some("fs-snap")),
    )
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), "default");
    let note = eventually(
        30,
        "ProvisioningFailed event for the small claim",
        || async {
            events
                .list(&Default::default())
                .await
                .expect("events")
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("ProvisioningFailed")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("small")
                })
                .and_then(|e| e.note)
        },
    )
    .await;
    assert!(
        note.contains("spec.resources.requests.storage") && note.contains("16777216"),
        "{note}"
    );
    assert!(env
        .pvc("small")
        .await
        .and_then(|p| p.spec)
        .and_then(|s| s.volume_name)
        .is_none());

    // Deleting the VolumeSnapshot (deletionPolicy Delete) removes the content and the data.
    let snaps_dir = env.ctx.config.snapshots_dir();
    let snaps: Api<kubevirt_api::VolumeSnapshot> = Api::namespaced(env.client.clone(), "default");
    let uid = snaps
        .get("blk-snap")
        .await
        .expect("get")
        .metadata
        .uid
        .expect("uid");
    let content_dir = snaps_dir.join(format!("snapcontent-{uid}"));
    assert!(content_dir.join("disk.img").exists());
    snaps
        .delete("blk-snap", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(30, "the deleted snapshot's data removed", || async {
        let gone = Api::<VolumeSnapshotContent>::all(env.client.clone())
            .get_opt(&format!("snapcontent-{uid}"))
            .await
            .expect("get content")
            .is_none();
        (gone && !content_dir.exists()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_volume_snapshots_reach_nothing_outside_their_namespace_or_directory() {
    use kubevirt_api::VolumeSnapshotContent;
    let env = Env::start().await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "other"}})).expect("ns"),
    )
    .await
    .expect("namespace");
    create_claim(
        &env,
        "other",
        "secret",
        claim_spec("1Mi", "Filesystem", None),
    )
    .await;

    // A claim name that is a path, or names another namespace, is refused at admission.
    for bad in ["other/secret", "../secret", "..", ""] {
        let err = create_snapshot(
            &env,
            "default",
            "bad",
            json!({"persistentVolumeClaimName": bad}),
        )
        .await
        .expect_err(bad);
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422),
            "{bad}: {err}"
        );
    }
    // A claim that exists only in another namespace is not found from this one.
    create_snapshot(
        &env,
        "default",
        "cross",
        json!({"persistentVolumeClaimName": "secret"}),
    )
    .await
    .expect("create");
    let vs = wait_snapshot(&env, "cross", |s| s.error.is_some()).await;
    let msg = vs
        .status
        .and_then(|s| s.error)
        .and_then(|e| e.message)
        .unwrap_or_default();
    assert!(
        msg.contains("\"secret\" not found in namespace \"default\""),
        "{msg}"
    );
    let contents: Api<VolumeSnapshotContent> = Api::all(env.client.clone());
    assert!(contents
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .is_empty());

    // A pre-provisioned content whose handle would leave the snapshots directory: a claim
    // restored from it stays Pending and nothing is read.
    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("dir");
    std::fs::write(outside.join("disk.img"), b"not yours").expect("file");
    for (i, handle) in ["../outside", "..", "snapcontent-x/../../outside"]
        .iter()
        .enumerate()
    {
        let content = format!("planted-{i}");
        let snap = format!("planted-{i}");
        let c = serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": content},
            "spec": {"deletionPolicy": "Delete", "driver": kubevirt_cdi_controller::PROVISIONER_NAME,
                     "source": {"snapshotHandle": handle},
                     "volumeSnapshotRef": {"namespace": "default", "name": snap}},
        }))
        .expect("content");
        contents
            .create(&PostParams::default(), &c)
            .await
            .expect("create content");
        kubevirt_runtime::status::write_status(
            &contents,
            &content,
            json!({"snapshotHandle": handle, "readyToUse": true, "restoreSize": 1024}),
        )
        .await
        .expect("content status");
        create_snapshot(
            &env,
            "default",
            &snap,
            json!({"volumeSnapshotContentName": content}),
        )
        .await
        .expect("create");
        wait_snapshot(&env, &snap, |s| s.ready_to_use == Some(true)).await;
        let claim = format!("from-planted-{i}");
        create_claim(
            &env,
            "default",
            &claim,
            claim_spec("1Mi", "Filesystem", Some(&snap)),
        )
        .await;
    }
    for i in 0..3 {
        let claim = format!("from-planted-{i}");
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(env.client.clone(), "default");
        let note = eventually(30, "ProvisioningFailed for a planted handle", || async {
            events
                .list(&Default::default())
                .await
                .expect("events")
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("ProvisioningFailed")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some(claim.as_str())
                })
                .and_then(|e| e.note)
        })
        .await;
        assert!(
            note.contains("is not one of this node's snapshots"),
            "{note}"
        );
    }
    for i in 0..3 {
        let p = env.pvc(&format!("from-planted-{i}")).await.expect("claim");
        assert!(
            p.spec.and_then(|s| s.volume_name).is_none(),
            "claim {i} was provisioned"
        );
    }
    // Deleting those contents never removes what their handle points at.
    for i in 0..3 {
        contents
            .delete(&format!("planted-{i}"), &DeleteParams::default())
            .await
            .expect("delete");
    }
    eventually(30, "planted contents deleted", || async {
        contents
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(
        outside.join("disk.img").exists(),
        "data outside the snapshots directory was removed"
    );
}

//! Shared test fixtures: the demo guest images, a real HTTP server on 127.0.0.1 serving
//! files, and comparison against `qemu-img convert -O raw`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;

pub const MIB: u64 = 1 << 20;

/// The demo guest outputs (`guest/build.sh`): the same build, in the same directory and under
/// the same lock, as every other test binary's ([`kubevirt_testsupport::build_guest`]).
pub fn guest_out() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        kubevirt_testsupport::build_guest(env!("CARGO_TARGET_TMPDIR"))
            .unwrap_or_else(|e| panic!("the demo guest: {e}"))
    })
    .clone()
}

pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Test images derived from the guest disk, made once per target dir and shared by every test
/// process.
pub struct Images {
    pub dir: PathBuf,
}

impl Images {
    /// Built once under cargo's target tmpdir and reused while the guest disk is unchanged.
    pub fn get() -> &'static Images {
        static IMGS: OnceLock<Images> = OnceLock::new();
        IMGS.get_or_init(|| {
            let out = guest_out();
            let raw = out.join("disk.raw");
            let m = std::fs::metadata(&raw).unwrap();
            let stamp = format!("v1 {} {}", m.len(), m.mtime());
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cdi-images");
            // One test process at a time makes the set (nextest runs one per test): the others
            // wait here, then find it made, instead of replacing a directory a test reads.
            let lock = std::fs::File::create(dir.with_extension("lock")).unwrap();
            lock.lock().unwrap();
            if std::fs::read_to_string(dir.join(".stamp")).ok().as_deref() == Some(stamp.as_str()) {
                return Images { dir };
            }
            let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("cdi-images.tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).unwrap();
            let d = |n: &str| tmp.join(n).to_string_lossy().into_owned();
            std::fs::copy(&raw, tmp.join("disk.raw")).unwrap();
            run("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", &d("disk.raw"), &d("disk.qcow2")]);
            run("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", "-o", "compat=0.10", &d("disk.raw"), &d("v2.qcow2")]);
            run("qemu-img", &["convert", "-c", "-f", "raw", "-O", "qcow2", &d("disk.raw"), &d("compressed.qcow2")]);
            run("qemu-img", &["convert", "-f", "raw", "-O", "vmdk", &d("disk.raw"), &d("disk.vmdk")]);
            run("sh", &["-c", &format!("gzip -1 -c {} > {}", d("disk.qcow2"), d("disk.qcow2.gz"))]);
            run("sh", &["-c", &format!("xz -0 -T2 -c {} > {}", d("disk.raw"), d("disk.raw.xz"))]);
            run("sh", &["-c", &format!("zstd -q -1 -c {} > {}", d("disk.raw"), d("disk.raw.zst"))]);
            // A truncated qcow2: header and tables intact, data cut off.
            let q = std::fs::read(tmp.join("disk.qcow2")).unwrap();
            std::fs::write(tmp.join("truncated.qcow2"), &q[..q.len() / 2]).unwrap();
            // A qcow2 with an external backing file (named by its final path).
            run("qemu-img", &["create", "-f", "qcow2", "-F", "raw", "-u", "-b",
                &dir.join("disk.raw").to_string_lossy(), &d("overlay.qcow2"), "64M"]);
            // 10 GiB of zeros as gzip: 100 concatenated members of 100 MiB each (~10 MiB).
            run("sh", &["-c", &format!(
                "head -c 100M /dev/zero | gzip -9 > {m} && for i in $(seq 100); do cat {m}; done > {b} && rm {m}",
                m = d("member.gz"), b = d("bomb.gz"))]);
            // A qcow2 bigger than the test volumes.
            run("qemu-img", &["create", "-f", "qcow2", &d("big.qcow2"), "2G"]);
            std::fs::write(tmp.join(".stamp"), &stamp).unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).unwrap();
            Images { dir }
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Asserts `out` holds exactly what `qemu-img convert -O raw` makes of `src`, then zeros up to
/// the volume size; and that it is sparse.
pub fn assert_matches_qemu_img(out: &Path, src: &Path, volume: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("ref.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            &src.to_string_lossy(),
            &reference.to_string_lossy(),
        ],
    );
    assert_raw_equal(out, &reference, volume);
}

pub fn assert_raw_equal(out: &Path, reference: &Path, volume: u64) {
    use std::io::Read;
    let meta = std::fs::metadata(out).unwrap();
    assert_eq!(meta.len(), volume, "volume file length");
    let mut a = std::fs::File::open(out).unwrap();
    let mut b = std::fs::File::open(reference).unwrap();
    let mut ba = vec![0u8; MIB as usize];
    let mut bb = vec![0u8; MIB as usize];
    let mut off = 0u64;
    loop {
        let n = read_full(&mut a, &mut ba);
        if n == 0 {
            break;
        }
        let m = read_full(&mut b, &mut bb[..n]);
        if m > 0 {
            assert!(ba[..m] == bb[..m], "content differs in the MiB at {off}");
        }
        assert!(
            ba[m..n].iter().all(|&x| x == 0),
            "non-zero past the image at {off}"
        );
        off += n as u64;
    }
    fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        n
    }
    // Sparse: the demo disk holds ~10 MiB of data in 64 MiB.
    let allocated = meta.blocks() * 512;
    assert!(
        allocated < volume / 3,
        "volume is not sparse: {allocated} bytes allocated of {volume}"
    );
}

/// Asserts nothing was left behind for `target`.
pub fn assert_no_leftovers(target: &Path) {
    let t = target.to_string_lossy();
    for p in [
        t.to_string(),
        format!("{t}.importing"),
        format!("{t}.scratch"),
    ] {
        assert!(!Path::new(&p).exists(), "{p} was left behind");
    }
}

pub const USER: &str = "alice";
pub const PASSWORD: &str = "s3cret";
pub const S3_KEY: &str = "AKIDTEST";
pub const S3_SECRET: &str = "testsecret";

#[derive(Clone)]
pub struct ServerState {
    pub dir: PathBuf,
    pub requests: Arc<Mutex<Vec<String>>>,
}

/// A real HTTP server on 127.0.0.1 serving `dir`:
/// - `/files/<name>`: the file, with Content-Length;
/// - `/chunked/<name>`: the file, without Content-Length;
/// - `/auth/<name>`: needs basic auth USER:PASSWORD;
/// - `/hdr/<name>`: needs `X-Test: yes` and `Authorization: Bearer tok`;
/// - `/s3/<bucket>/<name>`: needs a valid SigV4 signature with S3_KEY/S3_SECRET;
/// - `/status/<code>`: answers that status.
pub async fn serve(dir: PathBuf) -> SocketAddr {
    let state = ServerState {
        dir,
        requests: Arc::default(),
    };
    let app = axum::Router::new().fallback(handler).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

async fn file_response(path: &Path, with_len: bool) -> Response {
    let Ok(f) = tokio::fs::File::open(path).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = f.metadata().await.unwrap().len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 << 10));
    let mut r = Response::new(body);
    if with_len {
        r.headers_mut()
            .insert("content-length", len.to_string().parse().unwrap());
    }
    r
}

async fn handler(State(st): State<ServerState>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    st.requests.lock().unwrap().push(path.clone());
    let h = req.headers().clone();
    if let Some(code) = path.strip_prefix("/status/") {
        return StatusCode::from_u16(code.parse().unwrap())
            .unwrap()
            .into_response();
    }
    if let Some(name) = path.strip_prefix("/files/") {
        return file_response(&st.dir.join(name), true).await;
    }
    if let Some(name) = path.strip_prefix("/chunked/") {
        return file_response(&st.dir.join(name), false).await;
    }
    if let Some(name) = path.strip_prefix("/auth/") {
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
        );
        if header(&h, "authorization") != want {
            return (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", "Basic realm=\"t\"")],
            )
                .into_response();
        }
        return file_response(&st.dir.join(name), true).await;
    }
    if let Some(name) = path.strip_prefix("/hdr/") {
        if header(&h, "x-test") != "yes" || header(&h, "authorization") != "Bearer tok" {
            return StatusCode::FORBIDDEN.into_response();
        }
        return file_response(&st.dir.join(name), true).await;
    }
    if let Some(rest) = path.strip_prefix("/s3/") {
        let host = header(&h, "host");
        let url = url::Url::parse(&format!("http://{host}{path}")).unwrap();
        let date = header(&h, "x-amz-date");
        let headers = vec![
            (
                "x-amz-content-sha256".to_string(),
                header(&h, "x-amz-content-sha256"),
            ),
            ("x-amz-date".to_string(), date.clone()),
        ];
        let want = kubevirt_cdi::s3::authorization(
            &kubevirt_cdi::s3::SigningRequest {
                method: "GET",
                url: &url,
                headers: &headers,
                payload_sha256: kubevirt_cdi::s3::EMPTY_SHA256,
                region: "us-east-1",
                service: "s3",
            },
            &kubevirt_cdi::S3Credentials {
                access_key_id: S3_KEY.into(),
                secret_key: S3_SECRET.into(),
                session_token: None,
            },
            &date,
        );
        if date.is_empty() || header(&h, "authorization") != want {
            return StatusCode::FORBIDDEN.into_response();
        }
        let name = rest.split_once('/').map(|(_, k)| k).unwrap_or(rest);
        return file_response(&st.dir.join(name), true).await;
    }
    StatusCode::NOT_FOUND.into_response()
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A free loopback port nobody listens on.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

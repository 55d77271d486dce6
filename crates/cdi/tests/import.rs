//! Imports of the demo guest disk through real HTTP on 127.0.0.1, upload streams, clone and
//! blank; each result compared byte for byte with `qemu-img convert -O raw`; and the failure
//! cases, each leaving nothing behind.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::*;
use kubevirt_cdi::{
    import, import_upload, BasicAuth, ErrorKind, Format, HttpSource, ImportError, ImportOptions,
    ImportOutcome, Progress, ProgressSink, S3Credentials, S3Source, Source, Target,
};

const VOLUME: u64 = 128 * MIB;

fn http(url: String) -> Source {
    Source::Http(HttpSource {
        url,
        ..Default::default()
    })
}

/// Imports `source` into a fresh 128 MiB volume; returns the outcome, the progress updates
/// and the target path (inside the returned tempdir).
async fn run_import(
    source: &Source,
    volume: u64,
) -> (
    Result<ImportOutcome, ImportError>,
    Vec<Progress>,
    tempfile::TempDir,
    Target,
) {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::new(dir.path().join("disk.img"), volume);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let sink = ProgressSink::from_fn(move |p| s2.lock().unwrap().push(p.clone()));
    let r = import(source, &target, &ImportOptions::default(), sink).await;
    let seen = seen.lock().unwrap().clone();
    (r, seen, dir, target)
}

fn assert_progress_ok(seen: &[Progress]) {
    let pcts: Vec<f64> = seen.iter().filter_map(|p| p.percent).collect();
    assert!(
        pcts.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {pcts:?}"
    );
    let last = seen.last().expect("no progress at all");
    assert_eq!(last.percent_string(), "100.00%");
    assert!(last.done);
}

async fn http_case(file: &str, expect: &[Format]) {
    let imgs = Images::get();
    let addr = serve(imgs.dir.clone()).await;
    let src = http(format!("http://{addr}/files/{file}"));
    let (r, seen, _dir, target) = run_import(&src, VOLUME).await;
    let out = r.unwrap_or_else(|e| panic!("import of {file}: {e}"));
    assert_eq!(out.formats, expect);
    assert_matches_qemu_img(&target.path, &imgs.path(file_for_reference(file)), VOLUME);
    assert_progress_ok(&seen);
    assert!(!target.importing_path().exists());
    assert!(!target.scratch_path().exists());
}

/// qemu-img does not read compressed streams: compare against the uncompressed image.
fn file_for_reference(file: &str) -> &str {
    file.trim_end_matches(".gz")
        .trim_end_matches(".xz")
        .trim_end_matches(".zst")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_raw() {
    http_case("disk.raw", &[Format::Raw]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_qcow2() {
    http_case("disk.qcow2", &[Format::Qcow2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_qcow2_v2() {
    http_case("v2.qcow2", &[Format::Qcow2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_qcow2_compressed_clusters() {
    http_case("compressed.qcow2", &[Format::Qcow2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_qcow2_gz() {
    http_case("disk.qcow2.gz", &[Format::Gzip, Format::Qcow2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_raw_xz() {
    http_case("disk.raw.xz", &[Format::Xz, Format::Raw]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_raw_zst() {
    http_case("disk.raw.zst", &[Format::Zstd, Format::Raw]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_vmdk_via_qemu_img() {
    http_case("disk.vmdk", &[Format::Vmdk]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_without_content_length_qcow2() {
    let imgs = Images::get();
    let addr = serve(imgs.dir.clone()).await;
    let src = http(format!("http://{addr}/chunked/disk.qcow2"));
    let (r, seen, _dir, target) = run_import(&src, VOLUME).await;
    r.unwrap();
    assert_matches_qemu_img(&target.path, &imgs.path("disk.qcow2"), VOLUME);
    assert_progress_ok(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checksum_basic_auth_and_extra_headers() {
    let imgs = Images::get();
    let addr = serve(imgs.dir.clone()).await;
    let sum = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(imgs.path("disk.qcow2.gz")).unwrap(),
        ))
    };
    let src = Source::Http(HttpSource {
        url: format!("http://{addr}/auth/disk.qcow2.gz"),
        checksum: Some(format!("sha256:{sum}").parse().unwrap()),
        auth: Some(BasicAuth {
            username: USER.into(),
            password: PASSWORD.into(),
        }),
        ..Default::default()
    });
    let (r, _, _dir, target) = run_import(&src, VOLUME).await;
    let out = r.unwrap();
    assert_eq!(out.checksum.unwrap().hex, sum);
    assert_matches_qemu_img(&target.path, &imgs.path("disk.qcow2"), VOLUME);

    // Without credentials: 401, permanent, and the message says what to fix.
    let src = http(format!("http://{addr}/auth/disk.raw"));
    let (r, _, _dir, target) = run_import(&src, VOLUME).await;
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(e.to_string().contains("401"), "{e}");
    assert!(e.to_string().contains("secretRef"), "{e}");
    assert_no_leftovers(&target.path);

    let src = Source::Http(HttpSource {
        url: format!("http://{addr}/hdr/disk.raw"),
        extra_headers: vec!["X-Test: yes".into(), "Authorization: Bearer tok".into()],
        ..Default::default()
    });
    let (r, _, _dir, target) = run_import(&src, VOLUME).await;
    r.unwrap();
    assert_matches_qemu_img(&target.path, &imgs.path("disk.raw"), VOLUME);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_signed_get() {
    let imgs = Images::get();
    let addr = serve(imgs.dir.clone()).await;
    let src = Source::S3(S3Source {
        url: format!("http://{addr}/s3/bucket/disk.qcow2"),
        credentials: Some(S3Credentials {
            access_key_id: S3_KEY.into(),
            secret_key: S3_SECRET.into(),
            session_token: None,
        }),
        ..Default::default()
    });
    let (r, _, _dir, target) = run_import(&src, VOLUME).await;
    r.unwrap();
    assert_matches_qemu_img(&target.path, &imgs.path("disk.qcow2"), VOLUME);

    // Wrong secret: the server refuses the signature (403, permanent).
    let src = Source::S3(S3Source {
        url: format!("http://{addr}/s3/bucket/disk.qcow2"),
        credentials: Some(S3Credentials {
            access_key_id: S3_KEY.into(),
            secret_key: "wrong".into(),
            session_token: None,
        }),
        ..Default::default()
    });
    let (r, _, _dir, target) = run_import(&src, VOLUME).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Permanent);
    assert_no_leftovers(&target.path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_stream_qcow2_gz() {
    use futures_util::StreamExt;
    let imgs = Images::get();
    let dir = tempfile::tempdir().unwrap();
    let target = Target::new(dir.path().join("disk.img"), VOLUME);
    let f = tokio::fs::File::open(imgs.path("disk.qcow2.gz"))
        .await
        .unwrap();
    let len = f.metadata().await.unwrap().len();
    // Small, uneven chunks, as an HTTP body arrives.
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 7919).map(|r| r);
    let (sink, rx) = ProgressSink::watch();
    let out = import_upload(stream, Some(len), &target, &ImportOptions::default(), sink)
        .await
        .unwrap();
    assert_eq!(out.formats, vec![Format::Gzip, Format::Qcow2]);
    assert_eq!(out.transferred, len);
    assert_eq!(rx.borrow().percent_string(), "100.00%");
    assert_matches_qemu_img(&target.path, &imgs.path("disk.qcow2"), VOLUME);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_stream_error_is_transient_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::new(dir.path().join("disk.img"), VOLUME);
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
        Ok(bytes::Bytes::from(vec![1u8; 100_000])),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ];
    let e = import_upload(
        futures_util::stream::iter(chunks),
        None,
        &target,
        &ImportOptions::default(),
        ProgressSink::none(),
    )
    .await
    .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_no_leftovers(&target.path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_is_sparse_and_identical() {
    let imgs = Images::get();
    let src = Source::Clone {
        source_path: imgs.path("disk.raw"),
    };
    let (r, seen, _dir, target) = run_import(&src, VOLUME).await;
    r.unwrap();
    assert_raw_equal(&target.path, &imgs.path("disk.raw"), VOLUME);
    assert_progress_ok(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blank_is_sparse() {
    let (r, seen, _dir, target) = run_import(&Source::Blank, VOLUME).await;
    r.unwrap();
    let m = std::fs::metadata(&target.path).unwrap();
    assert_eq!(m.len(), VOLUME);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(m.blocks(), 0);
    assert_progress_ok(&seen);
}

async fn expect_failure(src: Source, volume: u64, kind: ErrorKind, needles: &[&str]) {
    let (r, _, _dir, target) = run_import(&src, volume).await;
    let e = match r {
        Ok(o) => panic!("import succeeded: {o:?}"),
        Err(e) => e,
    };
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
    assert_eq!(e.kind(), kind, "{msg}");
    assert_no_leftovers(&target.path);
    let dir_entries: Vec<_> = std::fs::read_dir(target.path.parent().unwrap())
        .unwrap()
        .collect();
    assert!(dir_entries.is_empty(), "files left: {dir_entries:?}");
}

async fn served(file: &str) -> Source {
    let addr = serve(Images::get().dir.clone()).await;
    http(format!("http://{addr}/files/{file}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_404_permanent() {
    expect_failure(
        served("missing.img").await,
        VOLUME,
        ErrorKind::Permanent,
        &["404"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_503_transient() {
    let addr = serve(Images::get().dir.clone()).await;
    expect_failure(
        http(format!("http://{addr}/status/503")),
        VOLUME,
        ErrorKind::Transient,
        &["503"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_connection_refused_transient() {
    let port = closed_port();
    expect_failure(
        http(format!("http://127.0.0.1:{port}/disk.img")),
        VOLUME,
        ErrorKind::Transient,
        &["cannot connect"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_truncated_qcow2() {
    expect_failure(
        served("truncated.qcow2").await,
        VOLUME,
        ErrorKind::Permanent,
        &["truncated", "beyond the end of the file"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_wrong_checksum() {
    let addr = serve(Images::get().dir.clone()).await;
    let wrong = format!("sha256:{}", "0".repeat(64));
    let src = Source::Http(HttpSource {
        url: format!("http://{addr}/files/disk.raw.xz"),
        checksum: Some(wrong.parse().unwrap()),
        ..Default::default()
    });
    expect_failure(
        src,
        VOLUME,
        ErrorKind::Permanent,
        &["checksum mismatch", &wrong, "sha256:"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_backing_file() {
    let backing = Images::get().path("disk.raw");
    expect_failure(
        served("overlay.qcow2").await,
        VOLUME,
        ErrorKind::Permanent,
        &["backing file", &backing.to_string_lossy(), "refused"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_zip_bomb() {
    expect_failure(
        served("bomb.gz").await,
        64 * MIB,
        ErrorKind::Permanent,
        &["decompressed stream is larger than the volume (64.0 MiB)"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_image_bigger_than_volume() {
    expect_failure(
        served("big.qcow2").await,
        VOLUME,
        ErrorKind::Permanent,
        &["image is 2.0 GiB but the volume holds 128.0 MiB: request at least 2.0 GiB"],
    )
    .await;
    // A raw image bigger than the volume.
    expect_failure(
        served("disk.raw").await,
        32 * MIB,
        ErrorKind::Permanent,
        &["larger than the volume"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_raw_xz_bigger_than_volume() {
    expect_failure(
        served("disk.raw.xz").await,
        16 * MIB,
        ErrorKind::Permanent,
        &["larger than the volume"],
    )
    .await;
}

#[test]
fn image_dir_exists() {
    assert!(Path::new(&Images::get().dir).exists());
}

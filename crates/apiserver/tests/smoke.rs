#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts() {
    let dir = tempfile::tempdir().unwrap();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        kubevirt_apiserver::start(kubevirt_apiserver::Config {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
        }),
    )
    .await;
    assert!(r.is_ok(), "start timed out");
    r.unwrap().unwrap();
}

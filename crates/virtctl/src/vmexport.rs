//! `virtctl vmexport create|delete|download NAME`: KubeVirt's pkg/virtctl/vmexport, flag for
//! flag where kubevirt-rs serves what the flag needs.
//!
//! - `create` makes a VirtualMachineExport of `--vm`, `--pvc` or `--snapshot` with
//!   `spec.tokenSecretRef: secret-NAME` and then that Secret with a random token (KubeVirt's
//!   order and names), `--ttl` as `spec.ttlDuration`.
//! - `download` creates the export first when given a source (and deletes it afterwards
//!   unless `--keep-vme`), waits until it is Ready with links, then fetches the volume (the
//!   `gzip` link, decompressed on the fly with `--format=raw`, as KubeVirt's virtctl does) or
//!   with `--manifest` the VM's manifests, sending the token in `x-kubevirt-export-token`.
//!   The server's certificate is checked against the link's `cert` (else the kubeconfig's CA),
//!   or not at all with `--insecure`.
//!
//! Not here: `--port-forward`/`--local-port` (kubevirt-rs serves the links on the API server's
//! own listener, which the client reaches already), `--vmtemplate` and `--format=oci`.

use crate::client::{connect, Conn, Error};
use crate::GlobalArgs;
use base64::Engine;
use futures::StreamExt;
use http::Method;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

const TOKEN_HEADER: &str = "x-kubevirt-export-token";
const TOKEN_KEY: &str = "token";
const POLL: Duration = Duration::from_secs(1);
const DEFAULT_READINESS_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(clap::Args, Debug, Clone, Default)]
#[command(after_long_help = "\
Examples:
  # Create a VirtualMachineExport to export a volume from a virtual machine:
  virtctl vmexport create vm1-export --vm=vm1

  # Create a VirtualMachineExport to export a volume from a PVC
  virtctl vmexport create pvc1-export --pvc=pvc1

  # Delete a VirtualMachineExport resource
  virtctl vmexport delete vm1-export

  # Download a volume from an already existing VirtualMachineExport (--volume is optional when only one volume is available)
  virtctl vmexport download vm1-export --volume=volume1 --output=disk.img.gz

  # Create a VirtualMachineExport and download the requested volume from it
  virtctl vmexport download vm1-export --vm=vm1 --volume=volume1 --output=disk.img.gz

  # Create a VirtualMachineExport and get the VirtualMachine manifest in Yaml format
  virtctl vmexport download vm1-export --vm=vm1 --manifest")]
pub struct VmExportArgs {
    /// create, delete or download.
    #[arg(value_name = "create|delete|download")]
    pub function: String,
    /// The VirtualMachineExport's name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Sets VirtualMachine as vmexport kind and specifies the vm name.
    #[arg(long)]
    pub vm: Option<String>,
    /// Sets VirtualMachineSnapshot as vmexport kind and specifies the snapshot name.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Sets PersistentVolumeClaim as vmexport kind and specifies the PVC name.
    #[arg(long)]
    pub pvc: Option<String>,
    /// Specifies the output path of the volume to be downloaded.
    #[arg(long)]
    pub output: Option<String>,
    /// Specifies the volume to be downloaded.
    #[arg(long)]
    pub volume: Option<String>,
    /// Used to specify the format of the downloaded image. There's two options: gzip (default) and raw.
    #[arg(long)]
    pub format: Option<String>,
    /// When used with the 'download' option, specifies that the http request should be insecure.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub insecure: bool,
    /// When used with the 'download' option, specifies that the vmexport object should always be retained after the download finishes.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub keep_vme: bool,
    /// When used with the 'download' option, specifies that the vmexport object should always be deleted after the download finishes.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub delete_vme: bool,
    /// The time after the export was created that it is eligible to be automatically deleted, defaults to 2 hours by the server side if not specified
    #[arg(long)]
    pub ttl: Option<String>,
    /// Manifest output format, defaults to Yaml. Valid options are yaml or json
    #[arg(long)]
    pub manifest_output_format: Option<String>,
    /// Specify service url to use in the returned manifest, instead of the external URL in the Virtual Machine export status.
    #[arg(long)]
    pub service_url: Option<String>,
    /// When export server returns a transient error, we retry this number of times before giving up
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub retry: i64,
    /// When used with manifest and set to true include a secret that contains proper headers for CDI to import using the manifest
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub include_secret: bool,
    /// Instead of downloading a volume, retrieve the VM manifest
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub manifest: bool,
    /// Specify custom labels to VM export object and its associated pod
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Specify custom annotations to VM export object and its associated pod
    #[arg(long, value_delimiter = ',')]
    pub annotations: Vec<String>,
    /// Specify maximum wait for VM export object to be ready
    #[arg(long)]
    pub readiness_timeout: Option<String>,
}

fn incompatible(flag: &str, function: &str) -> Error {
    Error::Usage(format!(
        "the '{flag}' flag is incompatible with '{function}'"
    ))
}

fn invalid_value(flag: &str, acceptable: &str) -> Error {
    Error::Usage(format!(
        "{flag} is not a valid value, acceptable values are {acceptable}"
    ))
}

impl VmExportArgs {
    fn has_source(&self) -> bool {
        self.vm.is_some() || self.snapshot.is_some() || self.pvc.is_some()
    }

    /// `spec.source` (KubeVirt's `getExportSource`: the last given wins).
    fn source(&self) -> Value {
        let mut s = Value::Null;
        if let Some(v) = &self.vm {
            s = json!({"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": v});
        }
        if let Some(v) = &self.snapshot {
            s = json!({"apiGroup": "snapshot.kubevirt.io", "kind": "VirtualMachineSnapshot", "name": v});
        }
        if let Some(v) = &self.pvc {
            s = json!({"apiGroup": "", "kind": "PersistentVolumeClaim", "name": v});
        }
        s
    }

    /// The flags that make no sense for create/delete (KubeVirt's `handleCreateFlags` and
    /// `handleDeleteFlags`).
    fn download_only_flags(&self) -> [(&'static str, bool); 6] {
        [
            ("--output", self.output.is_some()),
            ("--volume", self.volume.is_some()),
            ("--insecure", self.insecure),
            ("--keep-vme", self.keep_vme),
            ("--delete-vme", self.delete_vme),
            ("--format", self.format.is_some()),
        ]
    }
}

/// Checks the flags of `a.function` with KubeVirt's messages.
pub fn validate(a: &VmExportArgs) -> Result<(), Error> {
    match a.function.as_str() {
        "create" => {
            if !a.has_source() {
                return Err(Error::Usage("need to specify export kind when attempting to create a VirtualMachineExport [--pvc|--vm|--snapshot|--vmtemplate]".into()));
            }
            for (flag, set) in a.download_only_flags() {
                if set {
                    return Err(incompatible(flag, "create"));
                }
            }
            if a.service_url.is_some() {
                return Err(incompatible("--service-url", "create"));
            }
            if a.retry != 0 {
                return Err(incompatible("--retry", "create"));
            }
        }
        "delete" => {
            if a.has_source() {
                return Err(Error::Usage("should not specify export kind".into()));
            }
            for (flag, set) in a.download_only_flags() {
                if set {
                    return Err(incompatible(flag, "delete"));
                }
            }
            if a.service_url.is_some() {
                return Err(incompatible("--service-url", "delete"));
            }
            if a.retry != 0 {
                return Err(incompatible("--retry", "delete"));
            }
            if a.readiness_timeout.is_some() {
                return Err(incompatible("--readiness-timeout", "delete"));
            }
            if !a.labels.is_empty() {
                return Err(incompatible("--labels", "delete"));
            }
            if !a.annotations.is_empty() {
                return Err(incompatible("--annotations", "delete"));
            }
        }
        "download" => {
            if let Some(f) = &a.format {
                if f != "gzip" && f != "raw" {
                    // `oci` is KubeVirt's third; kubevirt-rs does not serve OCI artifacts.
                    return Err(invalid_value("--format", "gzip/raw"));
                }
            }
            if a.retry < 0 {
                return Err(invalid_value("--retry", "positive integers"));
            }
            if a.manifest {
                if a.volume.is_some() {
                    return Err(incompatible("--volume", "--manifest"));
                }
                let f = a
                    .manifest_output_format
                    .as_deref()
                    .unwrap_or("")
                    .to_lowercase();
                if !f.is_empty() && f != "json" && f != "yaml" {
                    return Err(invalid_value("--manifest-output-format", "json/yaml"));
                }
                if a.pvc.is_some() {
                    return Err(incompatible("--pvc", "--manifest"));
                }
            }
            if !a.manifest && a.output.is_none() {
                return Err(Error::Usage("warning: Binary output can mess up your terminal. Use '--output -' to output into stdout anyway or consider '--output <FILE>' to save to a file".into()));
            }
        }
        other => return Err(Error::Usage(format!("invalid function '{other}'"))),
    }
    if let Some(t) = &a.ttl {
        kubevirt_api::duration::parse(t).map_err(|e| Error::Usage(format!("--ttl: {e}")))?;
    }
    if let Some(t) = &a.readiness_timeout {
        kubevirt_api::duration::parse(t)
            .map_err(|e| Error::Usage(format!("--readiness-timeout: {e}")))?;
    }
    Ok(())
}

/// Where progress messages go: stdout, or stderr when the data itself goes to stdout.
#[derive(Clone, Copy)]
struct Printer {
    stderr: bool,
}

impl Printer {
    fn say(&self, msg: &str) {
        if self.stderr {
            eprintln!("{msg}");
        } else {
            println!("{msg}");
        }
    }
}

fn export_path(ns: &str, name: &str) -> String {
    format!("/apis/export.kubevirt.io/v1/namespaces/{ns}/virtualmachineexports/{name}")
}

/// KubeVirt's virtctl names the token Secret it makes `secret-NAME`.
pub fn token_secret_name(export: &str) -> String {
    format!("secret-{export}")
}

/// `key=value` items; anything else is ignored, as KubeVirt's `convertSliceToMap` does.
fn to_map(items: &[String]) -> Value {
    let mut m = serde_json::Map::new();
    for i in items {
        if let Some((k, v)) = i.split_once('=') {
            m.insert(k.to_string(), json!(v));
        }
    }
    Value::Object(m)
}

async fn get_export(c: &Conn, name: &str) -> crate::Result<Option<Value>> {
    match c.get(&export_path(&c.namespace, name)).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.api_code() == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A 20-character alphanumeric token, as KubeVirt's `GenerateVMExportToken`.
fn generate_token() -> String {
    const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::new();
    while out.len() < 20 {
        // uuid v4 is 122 random bits from the OS generator; bytes above 247 are dropped so
        // every character is equally likely.
        for b in uuid::Uuid::new_v4().as_bytes() {
            if *b < 248 && out.len() < 20 {
                out.push(char::from(ALNUM[usize::from(*b) % ALNUM.len()]));
            }
        }
    }
    out
}

async fn create(c: &Conn, a: &VmExportArgs, p: Printer) -> crate::Result<()> {
    let ns = &c.namespace;
    if get_export(c, &a.name).await?.is_some() {
        return Err(Error::Failed(format!(
            "VirtualMachineExport '{ns}/{}' already exists",
            a.name
        )));
    }
    let mut vme = json!({
        "apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport",
        "metadata": {"name": a.name, "namespace": ns},
        "spec": {"tokenSecretRef": token_secret_name(&a.name), "source": a.source()},
    });
    if !a.labels.is_empty() {
        vme["metadata"]["labels"] = to_map(&a.labels);
    }
    if !a.annotations.is_empty() {
        vme["metadata"]["annotations"] = to_map(&a.annotations);
    }
    if let Some(t) = &a.ttl {
        let nanos =
            kubevirt_api::duration::parse(t).map_err(|e| Error::Usage(format!("--ttl: {e}")))?;
        if nanos > 0 {
            vme["spec"]["ttlDuration"] = json!(kubevirt_api::duration::format(nanos));
        }
    }
    let path = format!("/apis/export.kubevirt.io/v1/namespaces/{ns}/virtualmachineexports");
    let created = c.json(Method::POST, &path, Some(&vme)).await?;
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": token_secret_name(&a.name), "namespace": ns,
            "ownerReferences": [{"apiVersion": "export.kubevirt.io/v1",
                "kind": "VirtualMachineExport", "name": a.name,
                "uid": created["metadata"]["uid"], "controller": true,
                "blockOwnerDeletion": false}]},
        "type": "Opaque",
        // `data`, as the API server would store `stringData` anyway.
        "data": {TOKEN_KEY: base64::engine::general_purpose::STANDARD.encode(generate_token())},
    });
    let spath = format!("/api/v1/namespaces/{ns}/secrets");
    match c.json(Method::POST, &spath, Some(&secret)).await {
        Ok(_) => {}
        Err(e) if e.api_code() == Some(409) => {}
        Err(e) => return Err(e),
    }
    p.say(&format!(
        "VirtualMachineExport '{ns}/{}' created successfully",
        a.name
    ));
    Ok(())
}

async fn delete(c: &Conn, name: &str, p: Printer) -> crate::Result<()> {
    let ns = &c.namespace;
    match c.json(Method::DELETE, &export_path(ns, name), None).await {
        Ok(_) => p.say(&format!(
            "VirtualMachineExport '{ns}/{name}' deleted successfully"
        )),
        Err(e) if e.api_code() == Some(404) => p.say(&format!(
            "VirtualMachineExport '{ns}/{name}' does not exist"
        )),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Which links a download uses: external ones, or internal ones with `--service-url`.
fn links<'v>(vme: &'v Value, a: &VmExportArgs) -> &'v Value {
    let l = &vme["status"]["links"];
    if a.service_url.is_none() && l["external"].is_object() {
        &l["external"]
    } else {
        &l["internal"]
    }
}

async fn wait_ready(
    c: &Conn,
    a: &VmExportArgs,
    p: Printer,
    timeout: Duration,
) -> crate::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match get_export(c, &a.name).await? {
            None => p.say(&format!(
                "couldn't get VM Export {}, waiting for it to be created...",
                a.name
            )),
            Some(v) if v["status"]["phase"] != "Ready" => p.say(&format!(
                "waiting for VM Export {} status to be ready...",
                a.name
            )),
            Some(v) => {
                let kind = if a.service_url.is_none() {
                    "external"
                } else {
                    "internal"
                };
                if v["status"]["links"][kind].is_object() {
                    return Ok(());
                }
                p.say(&format!(
                    "waiting for VM Export {} {kind} links to be available...",
                    a.name
                ));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Failed(format!(
                "context deadline exceeded: VM Export {} was not ready within {}",
                a.name,
                kubevirt_api::duration::format(
                    i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX)
                )
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The download URL and whether it is the gzip one (KubeVirt's
/// `GetUrlFromVirtualMachineExport`: gzip preferred, raw otherwise).
fn volume_url(vme: &Value, a: &VmExportArgs) -> crate::Result<(String, bool)> {
    let ns = vme["metadata"]["namespace"].as_str().unwrap_or("");
    let name = vme["metadata"]["name"].as_str().unwrap_or("");
    let vols = links(vme, a)["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if vols.is_empty() {
        return Err(Error::Failed(format!(
            "unable to access the volume info from '{ns}/{name}' VirtualMachineExport"
        )));
    }
    if vols.len() > 1 && a.volume.is_none() {
        return Err(Error::Failed(format!("detected more than one downloadable volume in '{ns}/{name}' VirtualMachineExport: Select the expected volume using the --volume flag")));
    }
    let mut found: Option<(String, bool)> = None;
    for v in &vols {
        if vols.len() != 1 && v["name"].as_str() != a.volume.as_deref() {
            continue;
        }
        for f in v["formats"].as_array().into_iter().flatten() {
            let url = f["url"].as_str().unwrap_or("").to_string();
            match f["format"].as_str() {
                Some("gzip") | Some("tar.gz") => {
                    found = Some((url, true));
                    break;
                }
                Some("raw") => found = Some((url, false)),
                _ => {}
            }
        }
    }
    let (url, gz) = found.ok_or_else(|| {
        Error::Failed(format!(
            "unable to get a valid URL from '{ns}/{name}' VirtualMachineExport"
        ))
    })?;
    Ok((with_service_url(&url, a)?, gz))
}

/// `--service-url` replaces the host of a link.
fn with_service_url(url: &str, a: &VmExportArgs) -> crate::Result<String> {
    let Some(host) = &a.service_url else {
        return Ok(url.to_string());
    };
    let mut u: http::Uri = url
        .parse()
        .map_err(|e| Error::Failed(format!("bad export URL {url}: {e}")))?;
    let mut parts = u.into_parts();
    parts.authority = Some(
        host.parse()
            .map_err(|e| Error::Usage(format!("--service-url {host}: {e}")))?,
    );
    u = http::Uri::from_parts(parts).map_err(|e| Error::Failed(e.to_string()))?;
    Ok(u.to_string())
}

/// An HTTPS client trusting the link's `cert` (else the kubeconfig's CA), or nothing is
/// checked with `--insecure`.
fn http_client(c: &Conn, cert: &str, insecure: bool) -> crate::Result<reqwest::Client> {
    if cert.trim().is_empty() || insecure {
        return crate::upload::tls_client(c, insecure);
    }
    let mut b = reqwest::Client::builder().tls_built_in_root_certs(false);
    for pem in cert.split_inclusive("-----END CERTIFICATE-----") {
        if pem.contains("BEGIN CERTIFICATE") {
            let ca = reqwest::Certificate::from_pem(pem.trim().as_bytes())
                .map_err(|e| Error::Failed(format!("the export's certificate: {e}")))?;
            b = b.add_root_certificate(ca);
        }
    }
    b.build()
        .map_err(|e| Error::Failed(format!("cannot build the download client: {e}")))
}

async fn token(c: &Conn, vme: &Value) -> crate::Result<String> {
    let name = vme["status"]["tokenSecretRef"].as_str().unwrap_or("");
    let s = c
        .get(&format!(
            "/api/v1/namespaces/{}/secrets/{name}",
            c.namespace
        ))
        .await?;
    let b64 = s["data"][TOKEN_KEY].as_str().unwrap_or("");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| Error::Failed(format!("the token Secret {name}: {e}")))?;
    String::from_utf8(raw).map_err(|e| Error::Failed(format!("the token Secret {name}: {e}")))
}

async fn get(
    c: &Conn,
    vme: &Value,
    a: &VmExportArgs,
    url: &str,
    accept: Option<&str>,
) -> crate::Result<reqwest::Response> {
    let cert = links(vme, a)["cert"].as_str().unwrap_or("");
    let client = http_client(c, cert, a.insecure)?;
    let mut req = client.get(url).header(TOKEN_HEADER, token(c, vme).await?);
    if let Some(acc) = accept {
        req = req.header(http::header::ACCEPT, acc);
    }
    req.send()
        .await
        .map_err(|e| Error::Transport(format!("GET {url}: {e}")))
}

/// Where the data goes: a file, or stdout for `--output -` / no `--output`.
fn open_output(a: &VmExportArgs) -> crate::Result<Box<dyn Write + Send>> {
    match a.output.as_deref() {
        Some(path) if path != "-" => {
            let f =
                std::fs::File::create(path).map_err(|e| Error::io(format!("open {path}"), e))?;
            Ok(Box::new(std::io::BufWriter::with_capacity(1 << 20, f)))
        }
        _ => Ok(Box::new(std::io::stdout())),
    }
}

/// Copies the response to `out`, gunzipping it on the way when `decompress`; a progress
/// line on stderr. Memory stays at a few chunks whatever the size.
async fn copy_body(
    resp: reqwest::Response,
    out: Box<dyn Write + Send>,
    decompress: bool,
    p: Printer,
) -> crate::Result<()> {
    let bar = indicatif::ProgressBar::with_draw_target(
        resp.content_length(),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("Downloading file: {bytes} {binary_bytes_per_sec}")
    {
        bar.set_style(style);
    }
    if decompress {
        p.say("Decompressing image:");
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut out = out;
        if decompress {
            let mut dec = flate2::write::GzDecoder::new(out);
            while let Some(chunk) = rx.blocking_recv() {
                dec.write_all(&chunk)?;
            }
            let mut inner = dec.finish()?;
            inner.flush()
        } else {
            while let Some(chunk) = rx.blocking_recv() {
                out.write_all(&chunk)?;
            }
            out.flush()
        }
    });
    let mut stream = resp.bytes_stream();
    let mut failed = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => {
                bar.inc(b.len() as u64);
                if tx.send(b).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failed = Some(Error::Transport(format!("reading the download: {e}")));
                break;
            }
        }
    }
    drop(tx);
    bar.finish();
    let written = writer
        .await
        .map_err(|e| Error::Failed(format!("writing the output: {e}")))?;
    if let Some(e) = failed {
        return Err(e);
    }
    written.map_err(|e| Error::io("writing the output", e))
}

async fn download_once(c: &Conn, a: &VmExportArgs, p: Printer) -> crate::Result<bool> {
    let timeout = match &a.readiness_timeout {
        Some(t) => Duration::from_nanos(
            u64::try_from(kubevirt_api::duration::parse(t).map_err(Error::Usage)?).unwrap_or(0),
        ),
        None => DEFAULT_READINESS_TIMEOUT,
    };
    wait_ready(c, a, p, timeout).await?;
    let vme = get_export(c, &a.name).await?.ok_or_else(|| {
        Error::Failed(format!(
            "unable to get '{}/{}' VirtualMachineExport",
            c.namespace, a.name
        ))
    })?;
    if a.manifest {
        let ns = &c.namespace;
        let manifests = links(&vme, a)["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let url_of = |t: &str| {
            manifests
                .iter()
                .find(|m| m["type"] == t)
                .and_then(|m| m["url"].as_str())
                .map(str::to_string)
        };
        let Some(all) = url_of("all") else {
            return Err(Error::Failed(format!(
                "unable to access the manifest info from '{ns}/{}' VirtualMachineExport",
                a.name
            )));
        };
        let accept = match a.manifest_output_format.as_deref().map(str::to_lowercase) {
            Some(f) if f == "json" => "application/json",
            _ => "application/yaml",
        };
        let mut urls = vec![all];
        if a.include_secret {
            urls.extend(url_of("auth-header-secret"));
        }
        let mut out = open_output(a)?;
        for u in urls {
            let resp = get(c, &vme, a, &with_service_url(&u, a)?, Some(accept)).await?;
            if resp.status() != reqwest::StatusCode::OK {
                p.say(&format!("Bad status: {}", resp.status()));
                return Ok(false);
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| Error::Transport(format!("GET {u}: {e}")))?;
            out.write_all(&body)
                .and_then(|_| out.flush())
                .map_err(|e| Error::io("writing the manifest", e))?;
        }
        return Ok(true);
    }
    let (url, is_gzip) = volume_url(&vme, a)?;
    let decompress = is_gzip && a.format.as_deref() == Some("raw");
    let resp = get(c, &vme, a, &url, None).await?;
    if resp.status() != reqwest::StatusCode::OK {
        p.say(&format!("Bad status: {}", resp.status()));
        return Ok(false);
    }
    copy_body(resp, open_output(a)?, decompress, p).await?;
    p.say("Download finished successfully");
    Ok(true)
}

async fn download(c: &Conn, a: &VmExportArgs, p: Printer) -> crate::Result<()> {
    let should_create = a.has_source();
    let mut keep = a.keep_vme;
    if should_create {
        if let Err(e) = create(c, a, p).await {
            // An export that already exists is used, and kept, as KubeVirt does.
            if e.to_string().contains("already exists") {
                keep = true;
            } else {
                return Err(e);
            }
        }
    }
    let delete_after = !a.manifest && (a.delete_vme || (should_create && !keep));
    let mut result = Err(Error::Failed(
        "retry count reached, exiting unsuccessfully".into(),
    ));
    for attempt in 0..=a.retry {
        match download_once(c, a, p).await {
            Ok(true) => {
                result = Ok(());
                break;
            }
            Ok(false) if attempt < a.retry => {
                p.say("Retrying...");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Ok(false) => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if delete_after {
        delete(c, &a.name, p).await?;
    }
    result
}

pub async fn run(g: &GlobalArgs, a: VmExportArgs) -> crate::Result<i32> {
    validate(&a)?;
    // Data to stdout: messages go to stderr.
    let p = Printer {
        stderr: matches!(a.output.as_deref(), None | Some("-")) && a.function == "download",
    };
    let c = connect(g, false).await?;
    match a.function.as_str() {
        "create" => create(&c, &a, p).await?,
        "delete" => delete(&c, &a.name, p).await?,
        _ => download(&c, &a, p).await?,
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(function: &str) -> VmExportArgs {
        VmExportArgs {
            function: function.into(),
            name: "e".into(),
            ..Default::default()
        }
    }

    #[test]
    fn flags_are_checked_as_kubevirt() {
        let err = |a: &VmExportArgs| validate(a).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(&args("create")).starts_with("need to specify export kind"));
        let mut a = args("create");
        a.pvc = Some("p".into());
        assert!(validate(&a).is_ok());
        a.output = Some("f".into());
        assert_eq!(err(&a), "the '--output' flag is incompatible with 'create'");
        let mut d = args("delete");
        d.vm = Some("v".into());
        assert_eq!(err(&d), "should not specify export kind");
        let mut dl = args("download");
        assert!(err(&dl).starts_with("warning: Binary output can mess up your terminal"));
        dl.output = Some("-".into());
        dl.format = Some("qcow2".into());
        assert_eq!(
            err(&dl),
            "--format is not a valid value, acceptable values are gzip/raw"
        );
        dl.format = None;
        dl.manifest = true;
        dl.pvc = Some("p".into());
        assert_eq!(
            err(&dl),
            "the '--pvc' flag is incompatible with '--manifest'"
        );
        assert_eq!(err(&args("list")), "invalid function 'list'");
        // Hostile --ttl values are refused before anything is sent.
        let mut t = args("create");
        t.vm = Some("v".into());
        for bad in ["10", "2d", "-", "99999999999999h", "1h\n"] {
            t.ttl = Some(bad.into());
            assert!(err(&t).starts_with("--ttl: time: "), "{bad}: {}", err(&t));
        }
        t.ttl = Some("90m".into());
        assert!(validate(&t).is_ok());
    }

    #[test]
    fn download_prefers_gzip_and_picks_the_named_volume() {
        let vme = json!({"metadata": {"name": "e", "namespace": "ns"}, "status": {"links": {
            "external": {"volumes": [
                {"name": "a", "formats": [{"format": "raw", "url": "https://h/a/disk.img"},
                                          {"format": "gzip", "url": "https://h/a/disk.img.gz"}]},
                {"name": "b", "formats": [{"format": "raw", "url": "https://h/b/disk.img"}]}]},
            "internal": {"volumes": [
                {"name": "a", "formats": [{"format": "gzip", "url": "https://in:443/a/disk.img.gz"}]}]}}}});
        let mut a = args("download");
        assert!(volume_url(&vme, &a).err().is_some_and(|e| e
            .to_string()
            .contains("Select the expected volume using the --volume flag")));
        a.volume = Some("a".into());
        assert_eq!(
            volume_url(&vme, &a).ok(),
            Some(("https://h/a/disk.img.gz".into(), true))
        );
        a.volume = Some("b".into());
        assert_eq!(
            volume_url(&vme, &a).ok(),
            Some(("https://h/b/disk.img".into(), false))
        );
        a.volume = None;
        a.service_url = Some("127.0.0.1:9999".into());
        assert_eq!(
            volume_url(&vme, &a).ok(),
            Some(("https://127.0.0.1:9999/a/disk.img.gz".into(), true))
        );
    }

    #[test]
    fn tokens_are_twenty_alphanumerics() {
        let t = generate_token();
        assert_eq!(t.len(), 20);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(t, generate_token());
    }
}

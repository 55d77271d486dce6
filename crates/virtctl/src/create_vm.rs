//! `virtctl create vm`: prints a VirtualMachine manifest, offline, shaped as KubeVirt's
//! virtctl prints it (kubevirt/kubevirt pkg/virtctl/create/vm: same flags, defaults, volume
//! names, boot order and cloud-init user data; keys sorted, `creationTimestamp: null` and
//! `status: {}` as Go's YAML encoder leaves them).
//!
//! Supported `--volume-import` types: blank, http, registry, s3, gcs, pvc, snapshot, ds.
//! Not supported: imageio and vddk imports, `--volume-sysprep`, `--access-cred`.

use crate::client::Error;
use crate::params::{check_quantity, flag_err, split_prefixed_name, Params};
use crate::GlobalArgs;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

const RUN_STRATEGIES: &[&str] = &["Always", "Manual", "Halted", "Once", "RerunOnFailure"];
const CLOUD_INIT_DISK: &str = "cloudinitdisk";
const CLOUD_INIT_HEADER: &str = "#cloud-config";

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[command(subcommand)]
    pub kind: CreateKind,
}

#[derive(clap::Subcommand, Debug)]
pub enum CreateKind {
    /// Create a VirtualMachine manifest.
    ///
    /// If no boot order was specified volumes have the following fixed boot order:
    /// Containerdisk > PVC > DataSource > Clone PVC > Blank > Imported volumes
    Vm(Box<VmArgs>),
}

#[derive(clap::Args, Debug, Default, Clone)]
pub struct VmArgs {
    /// Specify the name of the VM (default: vm-XXXXX, random).
    #[arg(long)]
    pub name: Option<String>,
    /// Specify the RunStrategy of the VM (Always, Manual, Halted, Once, RerunOnFailure).
    #[arg(long, value_name = "STRATEGY")]
    pub run_strategy: Option<String>,
    /// Specify the termination grace period of the VM (default 180).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub termination_grace_period: Option<i64>,
    /// Specify the memory of the VM (default 512Mi).
    #[arg(long, conflicts_with_all = ["instancetype", "infer_instancetype", "infer_instancetype_from"])]
    pub memory: Option<String>,
    /// Specify the Instance Type of the VM ([kind/]name). Mutually exclusive with instancetype
    /// inference flags.
    #[arg(long, conflicts_with_all = ["infer_instancetype", "infer_instancetype_from"])]
    pub instancetype: Option<String>,
    /// Specify if the Instance Type of the VM should be inferred from the first boot disk.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", conflicts_with = "infer_instancetype_from")]
    pub infer_instancetype: Option<bool>,
    /// Specify the volume to infer the Instance Type of the VM from.
    #[arg(long, value_name = "VOLUME")]
    pub infer_instancetype_from: Option<String>,
    /// Specify the Preference of the VM ([kind/]name). Mutually exclusive with preference
    /// inference flags.
    #[arg(long, conflicts_with_all = ["infer_preference", "infer_preference_from"])]
    pub preference: Option<String>,
    /// Specify if the Preference of the VM should be inferred from the first boot disk.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", conflicts_with = "infer_preference_from")]
    pub infer_preference: Option<bool>,
    /// Specify the volume to infer the Preference of the VM from.
    #[arg(long, value_name = "VOLUME")]
    pub infer_preference_from: Option<String>,
    /// Specify a containerdisk to be used by the VM. Can be provided multiple times.
    /// Supported parameters: name:string,src:string,bootorder:uint
    #[arg(long, value_name = "PARAMS")]
    pub volume_containerdisk: Vec<String>,
    /// Specify a PVC to be used by the VM. Can be provided multiple times.
    /// Supported parameters: name:string,src:string,bootorder:uint
    #[arg(long, value_name = "PARAMS")]
    pub volume_pvc: Vec<String>,
    /// Specify the source for DataVolume. Can be provided multiple times.
    /// Supported parameters: type:blank|http|registry|s3|gcs|pvc|snapshot|ds, name:string,
    /// size:resource.Quantity, bootorder:uint, and per type: url, secretref, certconfigmap
    /// (http, registry, s3, gcs), pullmethod, imagestream (registry), src:[namespace/]name
    /// (pvc, snapshot, ds).
    #[arg(long, value_name = "PARAMS")]
    pub volume_import: Vec<String>,
    /// DEPRECATED: use --volume-import with type:ds. Supported parameters:
    /// name:string,src:string,bootorder:uint,size:resource.Quantity
    #[arg(long, value_name = "PARAMS")]
    pub volume_datasource: Vec<String>,
    /// DEPRECATED: use --volume-import with type:pvc. Supported parameters:
    /// name:string,src:string,bootorder:uint,size:resource.Quantity
    #[arg(long, value_name = "PARAMS")]
    pub volume_clone_pvc: Vec<String>,
    /// DEPRECATED: use --volume-import with type:blank. Supported parameters:
    /// name:string,size:resource.Quantity
    #[arg(long, value_name = "PARAMS")]
    pub volume_blank: Vec<String>,
    /// Specify the user in the cloud-init user data that is added to the VM.
    #[arg(long)]
    pub user: Option<String>,
    /// Specify a file to read the password from for the cloud-init user data that is added
    /// to the VM.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Specify one or more SSH authorized keys in the cloud-init user data that is added to
    /// the VM (comma-separated, or the flag repeated).
    #[arg(long, value_delimiter = ',', value_name = "KEY")]
    pub ssh_key: Vec<String>,
    /// Specify if the qemu-guest-agent should be able to manage SSH in the cloud-init user
    /// data that is added to the VM.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub ga_manage_ssh: Option<bool>,
    /// Specify the type of the generated cloud-init data source: nocloud, configdrive, none.
    #[arg(long, value_name = "TYPE")]
    pub cloud_init: Option<String>,
    /// Specify the base64 encoded cloud-init user data of the VM.
    #[arg(long, value_name = "BASE64", conflicts_with_all = ["user", "password_file", "ssh_key", "ga_manage_ssh"])]
    pub cloud_init_user_data: Option<String>,
    /// Specify the base64 encoded cloud-init network data of the VM.
    #[arg(long, value_name = "BASE64")]
    pub cloud_init_network_data: Option<String>,
}

/// Five characters from Kubernetes' `rand.String` alphabet (no vowels, no look-alikes).
pub fn rand5() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The manifest, and warnings for stderr.
pub struct Built {
    pub vm: Value,
    pub warnings: Vec<String>,
}

/// Builds the VM. `namespace` is set only when `-n` was given, as KubeVirt does.
pub fn build(a: &VmArgs, namespace: Option<&str>) -> Result<Built, Error> {
    let mut b = Builder {
        a,
        name: a.name.clone().unwrap_or_else(|| format!("vm-{}", rand5())),
        volumes: Vec::new(),
        disks: Vec::new(),
        dvts: Vec::new(),
        boot_orders: BTreeMap::new(),
        warnings: Vec::new(),
    };
    let memory = a.memory.clone().unwrap_or_else(|| "512Mi".into());
    check_quantity(&memory).map_err(|m| flag_err("memory", m))?;
    let run_strategy = a.run_strategy.clone().unwrap_or_else(|| "Always".into());
    if !RUN_STRATEGIES.contains(&run_strategy.as_str()) {
        return Err(flag_err(
            "run-strategy",
            format!(
                "invalid RunStrategy \"{run_strategy}\", supported values are: {}",
                RUN_STRATEGIES.join(", ")
            ),
        ));
    }
    let mut memory = Some(memory);
    let mut instancetype = None;
    let mut preference = None;
    if let Some(it) = &a.instancetype {
        let (kind, name) = split_prefixed_name(it).map_err(|m| flag_err("instancetype", m))?;
        if let Some(k) = &kind {
            if k != "virtualmachineinstancetype" && k != "virtualmachineclusterinstancetype" {
                return Err(flag_err("instancetype", format!("invalid instancetype kind \"{k}\", supported values are: virtualmachineinstancetype, virtualmachineclusterinstancetype")));
            }
        }
        memory = None;
        instancetype = Some(matcher(kind, name));
    }
    if let Some(p) = &a.preference {
        let (kind, name) = split_prefixed_name(p).map_err(|m| flag_err("preference", m))?;
        if let Some(k) = &kind {
            if k != "virtualmachinepreference" && k != "virtualmachineclusterpreference" {
                return Err(flag_err("preference", format!("invalid preference kind \"{k}\", supported values are: virtualmachinepreference, virtualmachineclusterpreference")));
            }
        }
        preference = Some(matcher(kind, name));
    }
    b.containerdisks()?;
    b.pvcs()?;
    let mut imports: Vec<String> = Vec::new();
    for (flag, ty, vols) in [
        ("volume-datasource", "ds", &a.volume_datasource),
        ("volume-clone-pvc", "pvc", &a.volume_clone_pvc),
        ("volume-blank", "blank", &a.volume_blank),
    ] {
        if vols.is_empty() {
            continue;
        }
        b.warnings.push(format!(
            "Flag --{flag} has been deprecated, use flag --volume-import instead"
        ));
        for v in vols {
            if v.is_empty() {
                return Err(flag_err("volume-import", "params may not be empty"));
            }
            imports.push(format!("type:{ty},{v}"));
        }
    }
    imports.extend(a.volume_import.iter().cloned());
    for v in &imports {
        b.import(v)?;
    }
    b.cloud_init()?;

    // Inference from the first boot volume, as KubeVirt: implicit inference (the default)
    // ignores failures and keeps the memory as a fallback; explicit inference reports them.
    let explicit_it = a.infer_instancetype.is_some() || a.infer_instancetype_from.is_some();
    let explicit_pref = a.infer_preference.is_some() || a.infer_preference_from.is_some();
    if a.infer_instancetype.unwrap_or(true) && a.instancetype.is_none() && a.memory.is_none() {
        match b.infer_from(a.infer_instancetype_from.as_deref()) {
            Ok(vol) => {
                let mut m = Map::new();
                m.insert("inferFromVolume".into(), json!(vol));
                if explicit_it {
                    memory = None;
                } else {
                    m.insert("inferFromVolumeFailurePolicy".into(), json!("Ignore"));
                }
                instancetype = Some(Value::Object(m));
            }
            Err(e) if explicit_it => return Err(e),
            Err(_) => {}
        }
    }
    if a.infer_preference.unwrap_or(true) && a.preference.is_none() {
        match b.infer_from(a.infer_preference_from.as_deref()) {
            Ok(vol) => {
                let mut m = Map::new();
                m.insert("inferFromVolume".into(), json!(vol));
                if !explicit_pref {
                    m.insert("inferFromVolumeFailurePolicy".into(), json!("Ignore"));
                }
                preference = Some(Value::Object(m));
            }
            Err(e) if explicit_pref => return Err(e),
            Err(_) => {}
        }
    }

    let mut domain = Map::new();
    let mut devices = Map::new();
    if !b.disks.is_empty() {
        devices.insert("disks".into(), Value::Array(b.disks.clone()));
    }
    domain.insert("devices".into(), Value::Object(devices));
    if let Some(m) = memory {
        domain.insert("memory".into(), json!({ "guest": m }));
    }
    domain.insert("resources".into(), json!({}));
    let mut vmi_spec = Map::new();
    vmi_spec.insert("domain".into(), Value::Object(domain));
    vmi_spec.insert(
        "terminationGracePeriodSeconds".into(),
        json!(a.termination_grace_period.unwrap_or(180)),
    );
    if !b.volumes.is_empty() {
        vmi_spec.insert("volumes".into(), Value::Array(b.volumes.clone()));
    }
    let mut spec = Map::new();
    if !b.dvts.is_empty() {
        spec.insert("dataVolumeTemplates".into(), Value::Array(b.dvts.clone()));
    }
    if let Some(it) = instancetype {
        spec.insert("instancetype".into(), it);
    }
    if let Some(p) = preference {
        spec.insert("preference".into(), p);
    }
    spec.insert("runStrategy".into(), json!(run_strategy));
    spec.insert(
        "template".into(),
        json!({ "metadata": { "creationTimestamp": null }, "spec": Value::Object(vmi_spec) }),
    );
    let mut metadata = Map::new();
    metadata.insert("creationTimestamp".into(), Value::Null);
    metadata.insert("name".into(), json!(b.name));
    if let Some(ns) = namespace {
        metadata.insert("namespace".into(), json!(ns));
    }
    let vm = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": Value::Object(metadata),
        "spec": Value::Object(spec),
        "status": {},
    });
    Ok(Built {
        vm,
        warnings: b.warnings,
    })
}

fn matcher(kind: Option<String>, name: String) -> Value {
    let mut m = Map::new();
    if let Some(k) = kind {
        m.insert("kind".into(), json!(k));
    }
    m.insert("name".into(), json!(name));
    Value::Object(m)
}

struct Builder<'a> {
    a: &'a VmArgs,
    name: String,
    volumes: Vec<Value>,
    disks: Vec<Value>,
    dvts: Vec<Value>,
    boot_orders: BTreeMap<u32, String>,
    warnings: Vec<String>,
}

impl Builder<'_> {
    fn has_volume(&self, name: &str) -> bool {
        self.volumes.iter().any(|v| v["name"] == name)
    }

    fn ensure_new(&self, flag: &str, name: &str) -> Result<(), Error> {
        if self.has_volume(name) {
            return Err(flag_err(
                flag,
                format!("there is already a volume with name '{name}'"),
            ));
        }
        Ok(())
    }

    fn boot_order(&mut self, flag: &str, name: &str, order: Option<u32>) -> Result<(), Error> {
        let Some(order) = order else { return Ok(()) };
        if order == 0 {
            return Err(flag_err(flag, "bootorder must be greater than 0"));
        }
        if self.boot_orders.contains_key(&order) {
            return Err(flag_err(
                flag,
                format!("bootorder {order} was specified multiple times"),
            ));
        }
        self.disks.push(json!({ "bootOrder": order, "name": name }));
        self.boot_orders.insert(order, name.to_string());
        Ok(())
    }

    fn containerdisks(&mut self) -> Result<(), Error> {
        const FLAG: &str = "volume-containerdisk";
        for (i, s) in self.a.volume_containerdisk.iter().enumerate() {
            let mut p = Params::parse(FLAG, s)?;
            let name = p.take("name");
            let src = p.take("src");
            let order = p.take_uint("bootorder")?;
            p.finish()?;
            let src = src
                .filter(|s| !s.is_empty())
                .ok_or_else(|| flag_err(FLAG, "src must be specified"))?;
            let name = name.unwrap_or_else(|| format!("{}-containerdisk-{i}", self.name));
            self.ensure_new(FLAG, &name)?;
            self.volumes
                .push(json!({ "containerDisk": { "image": src }, "name": name }));
            self.boot_order(FLAG, &name, order)?;
        }
        Ok(())
    }

    fn pvcs(&mut self) -> Result<(), Error> {
        const FLAG: &str = "volume-pvc";
        for s in &self.a.volume_pvc {
            let mut p = Params::parse(FLAG, s)?;
            let name = p.take("name");
            let src = p.take("src");
            let order = p.take_uint("bootorder")?;
            p.finish()?;
            let src = src
                .filter(|s| !s.is_empty())
                .ok_or_else(|| flag_err(FLAG, "src must be specified"))?;
            let (ns, claim) = split_prefixed_name(&src)
                .map_err(|m| flag_err(FLAG, format!("src invalid: {m}")))?;
            if ns.is_some() {
                return Err(flag_err(
                    FLAG,
                    format!("not allowed to specify namespace of pvc '{claim}'"),
                ));
            }
            let name = name.unwrap_or_else(|| claim.clone());
            self.ensure_new(FLAG, &name)?;
            self.volumes
                .push(json!({ "name": name, "persistentVolumeClaim": { "claimName": claim } }));
            self.boot_order(FLAG, &name, order)?;
        }
        Ok(())
    }

    /// One `--volume-import`: a DataVolumeTemplate and its `dataVolume` volume.
    fn import(&mut self, s: &str) -> Result<(), Error> {
        const FLAG: &str = "volume-import";
        let mut p = Params::parse(FLAG, s)?;
        let ty = p
            .take("type")
            .ok_or_else(|| flag_err(FLAG, "type must be specified"))?;
        let name = p.take("name");
        let size = p.take_quantity("size")?;
        let order = p.take_uint("bootorder")?;
        let url_source = |p: &mut Params, what: &str| -> Result<Map<String, Value>, Error> {
            let url = p.take("url").filter(|u| !u.is_empty()).ok_or_else(|| {
                flag_err(FLAG, format!("URL is required with {what} volume source"))
            })?;
            let mut m = Map::new();
            m.insert("url".into(), json!(url));
            if let Some(v) = p.take("secretref") {
                m.insert("secretRef".into(), json!(v));
            }
            if let Some(v) = p.take("certconfigmap") {
                m.insert("certConfigMap".into(), json!(v));
            }
            Ok(m)
        };
        let src_ref = |p: &mut Params,
                       what: &str,
                       need_ns: bool|
         -> Result<(Option<String>, String), Error> {
            let src = p
                .take("src")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| flag_err(FLAG, "src must be specified"))?;
            let (ns, n) = split_prefixed_name(&src)
                .map_err(|m| flag_err(FLAG, format!("src invalid: {m}")))?;
            if need_ns && ns.is_none() {
                return Err(flag_err(
                    FLAG,
                    format!("namespace of {what} '{n}' must be specified"),
                ));
            }
            Ok((ns, n))
        };
        let mut spec = Map::new();
        let size_optional = matches!(ty.as_str(), "pvc" | "snapshot" | "ds");
        match ty.as_str() {
            "blank" => {
                spec.insert("source".into(), json!({ "blank": {} }));
            }
            "http" => {
                let m = url_source(&mut p, "http")?;
                spec.insert("source".into(), json!({ "http": m }));
            }
            "s3" => {
                let m = url_source(&mut p, "S3")?;
                spec.insert("source".into(), json!({ "s3": m }));
            }
            "gcs" => {
                let mut m = url_source(&mut p, "GCS")?;
                m.remove("certConfigMap");
                spec.insert("source".into(), json!({ "gcs": m }));
            }
            "registry" => {
                let mut m = Map::new();
                let url = p.take("url").filter(|s| !s.is_empty());
                let stream = p.take("imagestream").filter(|s| !s.is_empty());
                if url.is_some() == stream.is_some() {
                    return Err(flag_err(FLAG, "exactly one of url or imagestream must be defined"));
                }
                if let Some(pm) = p.take("pullmethod") {
                    if pm != "pod" && pm != "node" {
                        return Err(flag_err(FLAG, "pullmethod must be set to pod or node"));
                    }
                    m.insert("pullMethod".into(), json!(pm));
                }
                if let Some(v) = p.take("certconfigmap") {
                    m.insert("certConfigMap".into(), json!(v));
                }
                if let Some(v) = stream {
                    m.insert("imageStream".into(), json!(v));
                }
                if let Some(v) = p.take("secretref") {
                    m.insert("secretRef".into(), json!(v));
                }
                if let Some(v) = url {
                    m.insert("url".into(), json!(v));
                }
                spec.insert("source".into(), json!({ "registry": m }));
            }
            "pvc" => {
                let (ns, n) = src_ref(&mut p, "pvc", true)?;
                spec.insert("source".into(), json!({ "pvc": { "name": n, "namespace": ns } }));
            }
            "snapshot" => {
                let (ns, n) = src_ref(&mut p, "snapshot", true)?;
                spec.insert(
                    "source".into(),
                    json!({ "snapshot": { "name": n, "namespace": ns } }),
                );
            }
            "ds" => {
                let (ns, n) = src_ref(&mut p, "DataSource", false)?;
                let mut r = Map::new();
                r.insert("kind".into(), json!("DataSource"));
                r.insert("name".into(), json!(n));
                if let Some(ns) = ns {
                    r.insert("namespace".into(), json!(ns));
                }
                spec.insert("sourceRef".into(), Value::Object(r));
            }
            other => {
                return Err(flag_err(
                    FLAG,
                    format!("unknown source type used - {other} (supported here: blank, http, registry, s3, gcs, pvc, snapshot, ds)"),
                ))
            }
        }
        p.finish()?;
        if size.is_none() && !size_optional {
            return Err(flag_err(FLAG, "size must be specified"));
        }
        let name = name.unwrap_or_else(|| format!("imported-volume-{}", rand5()));
        self.ensure_new(FLAG, &name)?;
        let storage = match size {
            Some(s) => json!({ "resources": { "requests": { "storage": s } } }),
            None => json!({ "resources": {} }),
        };
        spec.insert("storage".into(), storage);
        self.dvts.push(json!({
            "metadata": { "creationTimestamp": null, "name": name },
            "spec": Value::Object(spec),
        }));
        self.volumes
            .push(json!({ "dataVolume": { "name": name }, "name": name }));
        self.boot_order(FLAG, &name, order)
    }

    fn cloud_init(&mut self) -> Result<(), Error> {
        let a = self.a;
        let requested = a.user.is_some()
            || a.password_file.is_some()
            || !a.ssh_key.is_empty()
            || a.ga_manage_ssh.is_some()
            || a.cloud_init.is_some()
            || a.cloud_init_user_data.is_some()
            || a.cloud_init_network_data.is_some();
        if !requested {
            return Ok(());
        }
        if a.password_file.is_some() {
            self.warnings.push(
                "WARNING: --password-file: The password is stored in cleartext in the VM definition!"
                    .into(),
            );
        }
        if self.has_volume(CLOUD_INIT_DISK) {
            return Err(Error::Usage(format!(
                "there is already a volume with name '{CLOUD_INIT_DISK}'"
            )));
        }
        let kind = a
            .cloud_init
            .as_deref()
            .unwrap_or("nocloud")
            .to_ascii_lowercase();
        let field = match kind.as_str() {
            "nocloud" => "cloudInitNoCloud",
            "configdrive" => "cloudInitConfigDrive",
            "none" => {
                if a.password_file.is_some()
                    || !a.ssh_key.is_empty()
                    || a.ga_manage_ssh.is_some()
                    || a.cloud_init_user_data.is_some()
                    || a.cloud_init_network_data.is_some()
                {
                    self.warnings.push("WARNING: --cloud-init: was set to none, not creating a data source although other cloud-init options were set".into());
                }
                return Ok(());
            }
            other => {
                return Err(flag_err(
                    "cloud-init",
                    format!("invalid cloud-init data source type \"{other}\", supported values are: nocloud, configdrive, none"),
                ))
            }
        };
        let mut src = Map::new();
        if let Some(n) = &a.cloud_init_network_data {
            src.insert("networkDataBase64".into(), json!(n));
        }
        let user_data = match &a.cloud_init_user_data {
            Some(u) => {
                src.insert("userDataBase64".into(), json!(u));
                None
            }
            None => {
                let config = self.cloud_config()?;
                src.insert("userData".into(), json!(config));
                Some(config)
            }
        };
        // Only the header and no network data: nothing to add unless --cloud-init asked for it.
        if a.cloud_init.is_none()
            && user_data.as_deref() == Some(CLOUD_INIT_HEADER)
            && a.cloud_init_network_data.is_none()
        {
            return Ok(());
        }
        self.volumes
            .push(json!({ field: Value::Object(src), "name": CLOUD_INIT_DISK }));
        Ok(())
    }

    /// KubeVirt's generated `#cloud-config` user data.
    fn cloud_config(&self) -> Result<String, Error> {
        let a = self.a;
        let mut config = CLOUD_INIT_HEADER.to_string();
        if let Some(u) = &a.user {
            config += &format!("\nuser: {u}");
        }
        if let Some(path) = &a.password_file {
            let data = std::fs::read_to_string(path)
                .map_err(|e| flag_err("password-file", format!("{}: {e}", path.display())))?;
            let password = data.trim();
            if !password.is_empty() {
                config += &format!("\npassword: {password}\nchpasswd: {{ expire: False }}");
            }
        }
        if !a.ssh_key.is_empty() {
            config += "\nssh_authorized_keys:";
            for k in &a.ssh_key {
                config += &format!("\n  - {k}");
            }
        }
        if a.ga_manage_ssh == Some(true) {
            config += "\nruncmd:\n  - [ setsebool, -P, 'virt_qemu_ga_manage_ssh', 'on' ]";
        }
        Ok(config)
    }

    /// The volume to infer from: the one named, else the lowest boot order, else the first.
    fn infer_from(&self, named: Option<&str>) -> Result<String, Error> {
        let vol_name = match named {
            Some(n) => n.to_string(),
            None => {
                if self.volumes.is_empty() {
                    return Err(Error::Usage(
                        "at least one volume is needed to infer an instance type or preference"
                            .into(),
                    ));
                }
                match self.boot_orders.values().next() {
                    Some(n) => n.clone(),
                    None => self.volumes[0]["name"].as_str().unwrap_or("").to_string(),
                }
            }
        };
        let vol = self
            .volumes
            .iter()
            .find(|v| v["name"] == vol_name.as_str())
            .ok_or_else(|| Error::Usage(format!("there is no volume with name '{vol_name}'")))?;
        if vol.get("persistentVolumeClaim").is_some() {
            return Ok(vol_name);
        }
        if let Some(dv) = vol["dataVolume"]["name"].as_str() {
            if let Some(t) = self.dvts.iter().find(|t| t["metadata"]["name"] == dv) {
                let s = &t["spec"];
                let ok = ["pvc", "registry", "snapshot"]
                    .iter()
                    .any(|k| s["source"].get(*k).is_some())
                    || s["sourceRef"]["kind"] == "DataSource";
                if !ok {
                    return Err(Error::Usage("this DataVolume is not valid to infer an instancetype or preference from (source needs to be PVC, Registry or Snapshot, sourceRef needs to be DataSource)".into()));
                }
            }
            return Ok(vol_name);
        }
        Err(Error::Usage("inference of instancetype or preference works only with DataSources, DataVolumes or PersistentVolumeClaims".into()))
    }
}

/// The manifest as YAML (keys sorted, as KubeVirt's output).
pub fn to_yaml(vm: &Value) -> Result<String, Error> {
    serde_yaml::to_string(vm).map_err(|e| Error::Failed(format!("encoding YAML: {e}")))
}

pub fn run(g: &GlobalArgs, a: CreateArgs) -> crate::Result<i32> {
    match a.kind {
        CreateKind::Vm(args) => {
            let built = build(&args, g.namespace.as_deref())?;
            for w in &built.warnings {
                eprintln!("{w}");
            }
            print!("{}", to_yaml(&built.vm)?);
            Ok(0)
        }
    }
}

//! start, stop, restart, pause, unpause, soft-reboot and version: one `PUT` (or `GET`) on a
//! KubeVirt subresource each, with KubeVirt's option bodies and messages
//! (kubevirt/kubevirt pkg/virtctl/vm, pkg/virtctl/pause, pkg/virtctl/softreboot).

use crate::client::{connect, Conn, Error};
use crate::GlobalArgs;
use serde_json::{json, Map, Value};

/// `metav1.DryRunAll`.
const DRY_RUN_ALL: &str = "All";

#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// The VirtualMachine to start.
    #[arg(value_name = "VM")]
    pub name: String,
    /// Start the virtual machine in paused state.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub paused: bool,
    /// Perform a dry run: the server validates the request and changes nothing.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub dry_run: bool,
}

#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// The VirtualMachine to stop.
    #[arg(value_name = "VM")]
    pub name: String,
    /// Seconds given to the VMI to terminate gracefully; needs --force.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub grace_period: Option<i64>,
    /// Force the stop with --grace-period (0 for an immediate stop); needs --grace-period.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub force: bool,
    /// Perform a dry run: the server validates the request and changes nothing.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub dry_run: bool,
}

pub type RestartArgs = StopArgs;

#[derive(clap::Args, Debug)]
pub struct PauseArgs {
    /// `vm` (the VMI of that VirtualMachine) or `vmi`.
    #[arg(value_name = "vm|vmi")]
    pub kind: String,
    /// The VirtualMachine or VirtualMachineInstance.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Perform a dry run: the server validates the request and changes nothing.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub dry_run: bool,
}

#[derive(clap::Args, Debug)]
pub struct NameArg {
    /// The VirtualMachineInstance.
    #[arg(value_name = "VMI")]
    pub name: String,
}

/// The logs `virtctl logs --container` reads (the `logs` subresource's `container`).
pub const LOG_CONTAINERS: [&str; 3] = ["launcher", "qemu", "serial"];

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The VirtualMachineInstance.
    #[arg(value_name = "VMI")]
    pub name: String,
    /// Which log: the launcher's, QEMU's, or the guest's serial console.
    #[arg(long, short = 'c', default_value = "launcher", value_parser = LOG_CONTAINERS)]
    pub container: String,
    /// Only the last N lines (1 to 100000; default: the last MiB).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub tail: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct VersionArgs {
    /// Print the client version only, without contacting the server.
    #[arg(short = 'c', long)]
    pub client: bool,
}

/// KubeVirt announces a dry run on stdout before sending it.
fn announce_dry_run(dry_run: bool) {
    if dry_run {
        println!("Dry Run execution");
    }
}

/// `PauseOptions`/`UnpauseOptions`: only `dryRun`.
pub fn dry_run_options(dry_run: bool) -> Value {
    let mut o = Map::new();
    if dry_run {
        o.insert("dryRun".into(), json!([DRY_RUN_ALL]));
    }
    Value::Object(o)
}

/// KubeVirt's `StartOptions`, encoded as Go encodes it (empty fields omitted).
pub fn start_options(paused: bool, dry_run: bool) -> Value {
    let mut o = Map::new();
    if paused {
        o.insert("paused".into(), json!(true));
    }
    if dry_run {
        o.insert("dryRun".into(), json!([DRY_RUN_ALL]));
    }
    Value::Object(o)
}

/// KubeVirt's rule for stop and restart: `--force` and `--grace-period` go together.
pub fn check_force(a: &StopArgs) -> Result<(), Error> {
    if a.grace_period.is_some() != a.force {
        return Err(Error::Usage(
            "Must both use --force=true and set --grace-period.".into(),
        ));
    }
    Ok(())
}

/// `StopOptions` (`gracePeriod`) or `RestartOptions` (`gracePeriodSeconds`).
pub fn stop_options(a: &StopArgs, grace_field: &str) -> Value {
    let mut o = Map::new();
    if a.force {
        if let Some(g) = a.grace_period {
            o.insert(grace_field.into(), json!(g));
        }
    }
    if a.dry_run {
        o.insert("dryRun".into(), json!([DRY_RUN_ALL]));
    }
    Value::Object(o)
}

pub async fn start(g: &GlobalArgs, a: StartArgs) -> crate::Result<i32> {
    let c = connect(g, false).await?;
    announce_dry_run(a.dry_run);
    let body = start_options(a.paused, a.dry_run);
    c.put_subresource("virtualmachines", &a.name, "start", Some(&body))
        .await
        .map_err(|e| e.context("Error starting VirtualMachine "))?;
    println!("VM {} was scheduled to start", a.name);
    Ok(0)
}

pub async fn stop(g: &GlobalArgs, a: StopArgs) -> crate::Result<i32> {
    check_force(&a)?;
    let c = connect(g, false).await?;
    announce_dry_run(a.dry_run);
    let body = stop_options(&a, "gracePeriod");
    let prefix = if a.force {
        "error force stopping VirtualMachine: "
    } else {
        "error stopping VirtualMachine "
    };
    c.put_subresource("virtualmachines", &a.name, "stop", Some(&body))
        .await
        .map_err(|e| e.context(prefix))?;
    println!("VM {} was scheduled to stop", a.name);
    Ok(0)
}

pub async fn restart(g: &GlobalArgs, a: RestartArgs) -> crate::Result<i32> {
    check_force(&a)?;
    let c = connect(g, false).await?;
    announce_dry_run(a.dry_run);
    let body = stop_options(&a, "gracePeriodSeconds");
    let prefix = if a.force {
        "error force restarting VirtualMachine: "
    } else {
        "error restarting VirtualMachine: "
    };
    c.put_subresource("virtualmachines", &a.name, "restart", Some(&body))
        .await
        .map_err(|e| e.context(prefix))?;
    println!("VM {} was scheduled to restart", a.name);
    Ok(0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseOp {
    Pause,
    Unpause,
}

impl PauseOp {
    fn verb(self) -> &'static str {
        match self {
            PauseOp::Pause => "pause",
            PauseOp::Unpause => "unpause",
        }
    }
}

/// Whether the first argument of pause/unpause names a VirtualMachine (`true`) or a VMI.
pub fn pause_target_is_vm(kind: &str) -> Result<bool, Error> {
    match kind.to_ascii_lowercase().as_str() {
        "vm" | "vms" | "virtualmachine" | "virtualmachines" => Ok(true),
        "vmi" | "vmis" | "virtualmachineinstance" | "virtualmachineinstances" => Ok(false),
        other => Err(Error::Usage(format!(
            "invalid resource type {other}: the first argument is vm (VirtualMachine) or vmi (VirtualMachineInstance)"
        ))),
    }
}

pub async fn pause(g: &GlobalArgs, a: PauseArgs, op: PauseOp) -> crate::Result<i32> {
    let is_vm = pause_target_is_vm(&a.kind)?;
    let c = connect(g, false).await?;
    announce_dry_run(a.dry_run);
    let body = dry_run_options(a.dry_run);
    let ing = match op {
        PauseOp::Pause => "pausing",
        PauseOp::Unpause => "unpausing",
    };
    // `pause vm NAME` acts on the VMI of the same name, as in KubeVirt.
    let result = c
        .put_subresource("virtualmachineinstances", &a.name, op.verb(), Some(&body))
        .await;
    if let Err(e) = result {
        if is_vm && op == PauseOp::Pause && e.api_code() == Some(404) {
            return Err(explain_missing_vmi(&c, &a.name).await);
        }
        return Err(e.context(format!("Error {ing} VirtualMachineInstance {}: ", a.name)));
    }
    println!("VMI {} was scheduled to {}", a.name, op.verb());
    Ok(0)
}

/// Why `pause vm NAME` found no VMI: no such VM, a halted VM, or a VM not running yet.
async fn explain_missing_vmi(c: &Conn, name: &str) -> Error {
    let path = format!(
        "/apis/kubevirt.io/v1/namespaces/{}/virtualmachines/{name}",
        c.namespace
    );
    match c.get(&path).await {
        Err(e) => e.context(format!("Error getting VirtualMachine {name}: ")),
        Ok(vm) => {
            let halted = vm["spec"]["runStrategy"].as_str() == Some("Halted")
                || vm["spec"]["running"].as_bool() == Some(false);
            if halted {
                Error::Failed(format!(
                    "Error pausing VirtualMachineInstance {name}. VirtualMachine {name} is not set to run"
                ))
            } else {
                Error::Failed(format!(
                    "Error pausing VirtualMachineInstance {name}, it was not found"
                ))
            }
        }
    }
}

pub async fn soft_reboot(g: &GlobalArgs, a: NameArg) -> crate::Result<i32> {
    let c = connect(g, false).await?;
    c.put_subresource("virtualmachineinstances", &a.name, "softreboot", None)
        .await
        .map_err(|e| {
            e.context(format!(
                "Error soft rebooting VirtualMachineInstance {}: ",
                a.name
            ))
        })?;
    println!("VMI {} was scheduled to soft-reboot", a.name);
    Ok(0)
}

/// Which guest agent subresource: `guestosinfo`, `userlist`, `fslist` (`filesystemlist`).
#[derive(Clone, Copy, Debug)]
pub enum GuestQuery {
    OsInfo,
    Users,
    Filesystems,
}

/// `virtctl guestosinfo|userlist|fslist VMI`: the guest agent's answer, as KubeVirt's virtctl
/// prints it (indented JSON).
pub async fn guest_agent(g: &GlobalArgs, a: NameArg, q: GuestQuery) -> crate::Result<i32> {
    let (sub, what) = match q {
        GuestQuery::OsInfo => ("guestosinfo", "guestosinfo"),
        GuestQuery::Users => ("userlist", "userlist"),
        GuestQuery::Filesystems => ("filesystemlist", "filesystem list"),
    };
    let c = connect(g, false).await?;
    let v = c
        .get_subresource("virtualmachineinstances", &a.name, sub)
        .await
        .map_err(|e| e.context(format!("error getting {what}: ")))?;
    let text = serde_json::to_string_pretty(&v).map_err(|e| crate::Error::Failed(e.to_string()))?;
    println!("{text}");
    Ok(0)
}

/// `virtctl logs VMI [--container launcher|qemu|serial] [--tail N]` (ours: KubeVirt's
/// launcher logs are its Pod's, `kubectl logs`): the end of the VMI's log, as it is.
pub async fn logs(g: &GlobalArgs, a: LogsArgs) -> crate::Result<i32> {
    let mut query = format!("container={}", a.container);
    if let Some(n) = a.tail {
        query.push_str(&format!("&tailLines={n}"));
    }
    let c = connect(g, false).await?;
    let text = c
        .get_subresource_text("virtualmachineinstances", &a.name, "logs", &query)
        .await
        .map_err(|e| e.context(format!("error getting the {} log: ", a.container)))?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::Failed(e.to_string()))?;
    Ok(0)
}

/// Go's `GOARCH` name of this machine, as KubeVirt's `Platform` field shows it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The client's `version.Info`, formatted as Go's `%#v` (what KubeVirt's virtctl prints).
pub fn client_version_line() -> String {
    format!(
        "Client Version: version.Info{{GitVersion:\"v{}\", GitCommit:\"{}\", GitTreeState:\"{}\", BuildDate:\"{}\", GoVersion:\"{}\", Compiler:\"{}\", Platform:\"{}/{}\"}}",
        env!("CARGO_PKG_VERSION"),
        option_env!("KUBEVIRT_RS_GIT_COMMIT").unwrap_or(""),
        if option_env!("KUBEVIRT_RS_GIT_COMMIT").is_some() { "clean" } else { "" },
        option_env!("KUBEVIRT_RS_BUILD_DATE").unwrap_or(""),
        "rust",
        "rustc",
        std::env::consts::OS,
        go_arch()
    )
}

/// The server's `/apis/subresources.kubevirt.io/v1/version` answer in the same format.
pub fn server_version_line(v: &Value) -> String {
    let f = |k: &str| v[k].as_str().unwrap_or("").to_string();
    format!(
        "Server Version: version.Info{{GitVersion:\"{}\", GitCommit:\"{}\", GitTreeState:\"{}\", BuildDate:\"{}\", GoVersion:\"{}\", Compiler:\"{}\", Platform:\"{}\"}}",
        f("gitVersion"),
        f("gitCommit"),
        f("gitTreeState"),
        f("buildDate"),
        f("goVersion"),
        f("compiler"),
        f("platform")
    )
}

pub async fn version(g: &GlobalArgs, a: VersionArgs) -> crate::Result<i32> {
    println!("{}", client_version_line());
    if a.client {
        return Ok(0);
    }
    let c = connect(g, false).await?;
    let v = c.get("/apis/subresources.kubevirt.io/v1/version").await?;
    println!("{}", server_version_line(&v));
    Ok(0)
}

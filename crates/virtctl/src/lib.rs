//! virtctl: KubeVirt's user CLI, command-compatible for what kubevirt-rs serves.
//!
//! Every command speaks KubeVirt's wire protocol (the `subresources.kubevirt.io/v1` API, the
//! `plain.kubevirt.io` websocket streams, CDI's upload API, the VirtualMachineExport links), so it works against
//! `kubevirt-rs server` and against a real KubeVirt cluster alike. The binary (`virtctl`, or the
//! multi-call `kubevirt-rs` invoked as `virtctl`) only calls [`main_from`].

use clap::{CommandFactory, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

pub mod client;
pub mod console;
pub mod create_vm;
pub mod lifecycle;
pub mod memorydump;
pub mod migrate;
pub mod params;
pub mod stream;
pub mod upload;
pub mod vmexport;
pub mod vnc;
pub mod volume;

pub use client::Error;
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Connection flags shared by every command, named as kubectl and KubeVirt's virtctl name them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GlobalArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The kubeconfig cluster to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub cluster: Option<String>,
    /// The kubeconfig user to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub user: Option<String>,
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Parser, Debug)]
#[command(
    name = "virtctl",
    version,
    about = "virtctl controls virtual machine related operations on your kubernetes cluster."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a virtual machine.
    Start(lifecycle::StartArgs),
    /// Stop a virtual machine.
    Stop(lifecycle::StopArgs),
    /// Restart a virtual machine.
    Restart(lifecycle::RestartArgs),
    /// Pause a virtual machine (vm|vmi NAME). Machine state is kept in memory.
    Pause(lifecycle::PauseArgs),
    /// Unpause a virtual machine (vm|vmi NAME).
    Unpause(lifecycle::PauseArgs),
    /// Soft reboot a virtual machine instance (ACPI power button, or the guest agent).
    SoftReboot(lifecycle::NameArg),
    /// Connect to a console of a virtual machine instance.
    Console(console::ConsoleArgs),
    /// Open a vnc connection to a virtual machine instance.
    Vnc(vnc::VncArgs),
    /// Create a manifest for the specified kind.
    Create(create_vm::CreateArgs),
    /// Print the client and server version information.
    Version(lifecycle::VersionArgs),
    /// Upload a VM image to a DataVolume/PersistentVolumeClaim.
    ImageUpload(upload::ImageUploadArgs),
    /// Return guest agent info about the operating system.
    Guestosinfo(lifecycle::NameArg),
    /// Return a list of active users from the guest agent.
    Userlist(lifecycle::NameArg),
    /// Return a list of file systems from the guest agent.
    Fslist(lifecycle::NameArg),
    /// Print a VMI's launcher, QEMU or serial console log (kubevirt-rs's `logs` subresource).
    Logs(lifecycle::LogsArgs),
    /// add a volume to a running VM
    Addvolume(volume::AddVolumeArgs),
    /// remove a volume from a running VM
    Removevolume(volume::RemoveVolumeArgs),
    /// Migrate a virtual machine.
    Migrate(migrate::MigrateArgs),
    /// Cancel migration of a virtual machine.
    MigrateCancel(migrate::MigrateCancelArgs),
    /// Export a VM volume.
    Vmexport(vmexport::VmExportArgs),
    /// Dump the memory of a running VM to a pvc
    MemoryDump(memorydump::MemoryDumpArgs),
}

/// Runs virtctl with `args` (`args[0]` is the program name) and returns the exit status:
/// 0 on success, 1 when the command failed (the error is printed to stderr), 2 for usage errors.
pub fn main_from<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(run(cli));
    // The console reads stdin on a plain thread; do not wait for it.
    rt.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", e.to_string().trim());
            1
        }
    }
}

/// Runs one parsed command; `Ok` carries the exit status.
pub async fn run(cli: Cli) -> Result<i32> {
    let g = &cli.global;
    match cli.command {
        Command::Start(a) => lifecycle::start(g, a).await,
        Command::Stop(a) => lifecycle::stop(g, a).await,
        Command::Restart(a) => lifecycle::restart(g, a).await,
        Command::Pause(a) => lifecycle::pause(g, a, lifecycle::PauseOp::Pause).await,
        Command::Unpause(a) => lifecycle::pause(g, a, lifecycle::PauseOp::Unpause).await,
        Command::SoftReboot(a) => lifecycle::soft_reboot(g, a).await,
        Command::Console(a) => console::run(g, a).await,
        Command::Vnc(a) => vnc::run(g, a).await,
        Command::Create(a) => create_vm::run(g, a),
        Command::Version(a) => lifecycle::version(g, a).await,
        Command::ImageUpload(a) => upload::run(g, a).await,
        Command::Guestosinfo(a) => {
            lifecycle::guest_agent(g, a, lifecycle::GuestQuery::OsInfo).await
        }
        Command::Userlist(a) => lifecycle::guest_agent(g, a, lifecycle::GuestQuery::Users).await,
        Command::Fslist(a) => {
            lifecycle::guest_agent(g, a, lifecycle::GuestQuery::Filesystems).await
        }
        Command::Logs(a) => lifecycle::logs(g, a).await,
        Command::Addvolume(a) => volume::add(g, a).await,
        Command::Removevolume(a) => volume::remove(g, a).await,
        Command::Migrate(a) => migrate::migrate(g, a).await,
        Command::MigrateCancel(a) => migrate::migrate_cancel(g, a).await,
        Command::Vmexport(a) => vmexport::run(g, a).await,
        Command::MemoryDump(a) => memorydump::run(g, a).await,
    }
}

/// The help text of the whole CLI (used by tests and docs).
pub fn long_help() -> String {
    Cli::command().render_long_help().to_string()
}

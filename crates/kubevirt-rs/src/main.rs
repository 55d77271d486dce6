//! kubevirt-rs: one multi-call binary. The subcommands only wire the library crates together.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::io::Write;

/// mimalloc for `kubevirt-rs server` (the API server and the controllers), the system
/// allocator for every other subcommand: a launcher is one per VM and measured by how little
/// it adds beside QEMU ([`kubevirt_runtime::alloc`], docs/apiserver.md).
#[global_allocator]
static ALLOC: kubevirt_runtime::alloc::ByRole = kubevirt_runtime::alloc::ByRole::new(is_server);

fn is_server(subcommand: &[u8]) -> bool {
    subcommand == b"server"
}

mod cluster_config;
mod logging;
mod node;
mod server;
mod validate;

#[derive(Parser, Debug)]
#[command(
    name = "kubevirt-rs",
    version,
    about = "KubeVirt-compatible virtualization, in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Default and validate KubeVirt manifests offline; exit status 1 if any is invalid.
    Validate(validate::ValidateArgs),
    /// Print the CustomResourceDefinitions of every kind, as YAML.
    Crds {
        /// Also print KubeVirt's and CDI's ClusterRoles (kubevirt.io:admin|edit|view, ...,
        /// aggregated into admin/edit/view) and their bindings: the same roles the embedded
        /// server serves, for a real cluster.
        #[arg(long)]
        with_rbac: bool,
    },
    /// virt-launcher: run one VMI under QEMU, attach to its console, show its state.
    Launcher(kubevirt_launcher::cli::LauncherArgs),
    /// Run the single-node server: an embedded Kubernetes API server with KubeVirt's resources.
    Server(server::ServerArgs),
    /// Run virt-handler for one more node of a server (its launchers too): the node registers
    /// its Node, heartbeats, and runs the VMIs placed on it.
    Node(node::NodeArgs),
    /// Manage the single-node server's users.
    #[command(subcommand)]
    User(UserCommand),
    /// KubeVirt's user CLI (also run when this binary is invoked as `virtctl`).
    #[command(disable_help_flag = true)]
    Virtctl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Add a user with their own token, bound to a role in one namespace, and write their
    /// kubeconfig to DATA_DIR/users/NAME.kubeconfig (the server must be running).
    Add {
        /// The user name (letters, digits and - _ . : @).
        name: String,
        /// The namespace the role applies in.
        #[arg(long, short = 'n')]
        namespace: String,
        /// admin, edit or view (Kubernetes' aggregated roles, which include KubeVirt's
        /// kubevirt.io:admin|edit|view).
        #[arg(long, default_value = "edit")]
        role: String,
        /// The server's data directory.
        #[arg(long, default_value = "/var/lib/kubevirt-rs")]
        data_dir: std::path::PathBuf,
    },
}

fn main() {
    // Multi-call: `virtctl ...` (a link named virtctl) or `kubevirt-rs virtctl ...`.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = argv
        .first()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if invoked_as == "virtctl" {
        std::process::exit(kubevirt_virtctl::main_from(argv));
    }
    if argv.get(1).is_some_and(|a| a == "virtctl") {
        std::process::exit(kubevirt_virtctl::main_from(argv.into_iter().skip(1)));
    }
    let cli = Cli::parse();
    let (format, component) = match &cli.command {
        Command::Server(a) => (a.log_format, logging::Component::ByTarget),
        Command::Node(a) => (a.log_format, logging::Component::Fixed("virt-handler")),
        Command::Launcher(a) => (a.log_format, logging::Component::Fixed("virt-launcher")),
        _ => (Default::default(), logging::Component::ByTarget),
    };
    logging::init(format, component);
    match run(cli) {
        Ok(code) => std::process::exit(code),
        // `kubevirt-rs crds | head` is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Validate(args) => validate::run(args),
        Command::Launcher(args) => kubevirt_launcher::cli::run(args),
        Command::Server(args) => server::run(args),
        Command::Node(args) => node::run(args),
        Command::User(UserCommand::Add {
            name,
            namespace,
            role,
            data_dir,
        }) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let path = rt.block_on(kubevirt_apiserver::users::add(
                &data_dir, &name, &namespace, &role,
            ))?;
            println!(
                "user {name} may {role} in namespace {namespace}; kubeconfig: {}",
                path.display()
            );
            Ok(0)
        }
        // Dispatched before parsing, in main; listed so `--help` shows it.
        Command::Virtctl { args } => Ok(kubevirt_virtctl::main_from(
            std::iter::once(std::ffi::OsString::from("virtctl")).chain(args),
        )),
        Command::Crds { with_rbac } => {
            let mut docs = Vec::new();
            for crd in kubevirt_api::crd::crds() {
                docs.push(serde_yaml::to_string(&crd)?);
            }
            if with_rbac {
                for role in kubevirt_api::rbac::cluster_roles() {
                    docs.push(serde_yaml::to_string(&role)?);
                }
                for binding in kubevirt_api::rbac::cluster_role_bindings() {
                    docs.push(serde_yaml::to_string(&binding)?);
                }
            }
            let mut out = std::io::stdout().lock();
            for (i, doc) in docs.iter().enumerate() {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                write!(out, "{doc}")?;
            }
            Ok(0)
        }
    }
}

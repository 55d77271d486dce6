//! `kubevirt-launcher`: the launcher subcommands as a binary of their own (the shipped binary is
//! `kubevirt-rs launcher ...`; this one lets the launcher crate's tests run the CLI).

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "kubevirt-launcher",
    about = "virt-launcher: run one VMI under QEMU"
)]
struct Cli {
    #[command(flatten)]
    args: kubevirt_launcher::cli::LauncherArgs,
}

fn main() {
    let cli = Cli::parse();
    match kubevirt_launcher::cli::run(cli.args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

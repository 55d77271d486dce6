//! virt-launcher: one process per VMI. A VMI becomes a [`machine::MachineSpec`]
//! (backend-neutral), the QEMU backend renders it ([`qemu::render`]), [`volumes::prepare`]
//! creates its files, and [`launcher`] runs QEMU and drives it over [`qmp`].
//!
//! Where things are decided:
//! - a VMI field → machine property: `machine.rs` (`MachineSpec::from_vmi`);
//! - a machine property → QEMU argument: `qemu.rs` (one module per device family under
//!   `qemu/`, every option string through `qemu/opts.rs`);
//! - a spec name → a file of the VMI directory: `paths.rs`;
//! - who QEMU runs as (uid/gid, sandbox): `confine.rs`;
//! - KVM or TCG: `accel.rs`;
//! - a phase transition (Starting/Running/Paused/Succeeded/Failed): `launcher.rs` (`Phase`,
//!   `Vm::on_event`/`Vm::on_exit`);
//! - the per-VMI directory's layout and the `launcher.sock` protocol (the contract with
//!   virt-handler, virt-api and the CLIs): [`api`] (`VmiDir`, `Request`/`Response`/`Event`,
//!   `LauncherClient`);
//! - live migration (target `-incoming defer`, source monitor, KubeVirt's timeouts):
//!   `migration.rs`;
//! - memory snapshots (save the guest's state to a file, start from it): `memstate.rs`;
//! - serving that RPC and the console socket: `rpc.rs`, `console.rs`.

pub mod accel;
pub mod agent;
pub mod api;
pub mod cli;
pub mod cloudinit;
pub mod confine;
pub mod console;
pub mod dhcp;
pub mod freeze;
pub mod hotplug;
pub mod launcher;
pub mod logging;
pub mod machine;
pub mod memstate;
pub mod migration;
pub mod network;
pub mod paths;
pub mod qemu;
pub mod qmp;
pub mod rpc;
pub mod volumes;

//! virt-launcher: one process per VMI. A VMI becomes a [`machine::MachineSpec`]
//! (backend-neutral), the QEMU backend renders it ([`qemu::render`]), [`volumes::prepare`]
//! creates its files, and [`launcher`] runs QEMU and drives it over [`qmp`].
//!
//! Where things are decided:
//! - a VMI field → machine property: `machine.rs` (`MachineSpec::from_vmi`);
//! - a machine property → QEMU argument: `qemu.rs`;
//! - KVM or TCG: `accel.rs`;
//! - a phase transition (Starting/Running/Paused/Succeeded/Failed): `launcher.rs` (`Phase`,
//!   `Vm::on_event`/`Vm::on_exit`);
//! - the handler-facing RPC and console sockets: `rpc.rs`, `console.rs`.

pub mod accel;
pub mod cli;
pub mod cloudinit;
pub mod console;
pub mod launcher;
pub mod machine;
pub mod qemu;
pub mod qmp;
pub mod rpc;
pub mod volumes;

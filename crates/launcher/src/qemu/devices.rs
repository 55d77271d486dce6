//! Control and other devices: QMP, sandbox, serial console, VGA+VNC, USB tablet, RNG, balloon,
//! watchdog.

use super::cpu::push;
use super::opts::{Opts, OptsError};
use crate::machine::{MachineSpec, Profile, WatchdogAction};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("QMP socket: {0}")]
    Qmp(#[source] OptsError),
    #[error("serial console: {0}")]
    Serial(#[source] OptsError),
    #[error("VNC: {0}")]
    Vnc(#[source] OptsError),
    #[error("{device}: {source}")]
    Other {
        device: &'static str,
        #[source]
        source: OptsError,
    },
}

/// QEMU's seccomp sandbox: no obsolete system calls, no setuid/setgid/capability changes, no
/// fork/exec (QEMU never needs them with `script=no` taps), no scheduler/affinity/rlimit
/// changes. QEMU's own "system call not allowed" is a SIGSYS kill.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The fixed process options, then the QMP monitor (a chardev with explicit keys, so the
/// socket path is a plain escaped value).
pub fn render_control(spec: &MachineSpec, a: &mut Vec<String>) -> Result<(), DeviceError> {
    a.extend(
        [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-S",
            "-no-shutdown",
            "-msg",
            "timestamp=on",
            "-sandbox",
            SANDBOX,
        ]
        .map(String::from),
    );
    push(
        a,
        "-chardev",
        qmp_chardev(&spec.qmp_socket()).map_err(DeviceError::Qmp)?,
    );
    push(
        a,
        "-mon",
        Opts::keyed()
            .set("chardev", "qmp")
            .set("mode", "control")
            .build()
            .map_err(DeviceError::Qmp)?,
    );
    Ok(())
}

/// The `-chardev` value of QEMU's QMP socket at `path`: the launcher starts QEMU with it, and
/// the node agent recognises a VMI's QEMU by it in `/proc/<pid>/cmdline`
/// ([`crate::api::stats::is_qemu_of`]).
pub fn qmp_chardev(path: &std::path::Path) -> Result<String, OptsError> {
    Opts::new("socket")
        .set("id", "qmp")
        .set_path("path", path)
        .set("server", "on")
        .set("wait", "off")
        .build()
}

/// Serial console, graphics and input.
pub fn render_console(spec: &MachineSpec, a: &mut Vec<String>) -> Result<(), DeviceError> {
    if spec.serial_console {
        push(
            a,
            "-chardev",
            Opts::new("socket")
                .set("id", "serial0")
                .set_path("path", &spec.serial_socket())
                .set("server", "on")
                .set("wait", "off")
                .build()
                .map_err(DeviceError::Serial)?,
        );
        push(a, "-serial", "chardev:serial0".into());
    }
    if spec.vnc {
        // arm64 and s390x have no VGA: KubeVirt gives them virtio-gpu.
        let video = match spec.profile {
            Profile::Virt => "virtio-gpu-pci",
            Profile::S390Ccw => "virtio-gpu-ccw",
            Profile::Q35 | Profile::Microvm => "VGA",
        };
        push(
            a,
            "-device",
            fixed(Opts::new(video).set("id", "video0"), "video")?,
        );
        // `vnc=` is the implied key of -vnc; the value after `unix:` is the socket path.
        let sock = spec.qemu_vnc_socket();
        let Some(path) = sock.to_str() else {
            return Err(DeviceError::Vnc(OptsError::NotUtf8 {
                key: "vnc".into(),
                path: sock.to_string_lossy().into(),
            }));
        };
        push(
            a,
            "-vnc",
            Opts::keyed()
                .set("vnc", format!("unix:{path}"))
                .build()
                .map_err(DeviceError::Vnc)?,
        );
    }
    if spec.tablet {
        push(
            a,
            "-device",
            fixed(Opts::new("qemu-xhci").set("id", "usb0"), "USB controller")?,
        );
        push(
            a,
            "-device",
            fixed(
                Opts::new("usb-tablet")
                    .set("id", "input0")
                    .set("bus", "usb0.0"),
                "USB tablet",
            )?,
        );
    }
    Ok(())
}

/// RNG, the guest agent's channel, balloon, watchdog.
pub fn render_other(spec: &MachineSpec, a: &mut Vec<String>) -> Result<(), DeviceError> {
    let virtio_suffix = spec.profile.virtio_transport();
    if spec.rng {
        push(
            a,
            "-object",
            fixed(
                Opts::new("rng-random")
                    .set("id", "rng0")
                    .set("filename", "/dev/urandom"),
                "rng",
            )?,
        );
        push(
            a,
            "-device",
            fixed(
                Opts::new(&format!("virtio-rng-{virtio_suffix}"))
                    .set("rng", "rng0")
                    .set("id", "rng"),
                "rng",
            )?,
        );
    }
    // The guest agent's channel, which KubeVirt gives every VMI: a virtio-serial port named
    // `org.qemu.guest_agent.0` on a unix socket only the launcher connects to.
    push(
        a,
        "-chardev",
        Opts::new("socket")
            .set("id", "qga0")
            .set_path("path", &spec.guest_agent_socket())
            .set("server", "on")
            .set("wait", "off")
            .build()
            .map_err(|source| DeviceError::Other {
                device: "guest agent channel",
                source,
            })?,
    );
    push(
        a,
        "-device",
        fixed(
            Opts::new(&format!("virtio-serial-{virtio_suffix}")).set("id", "virtio-serial0"),
            "virtio-serial",
        )?,
    );
    push(
        a,
        "-device",
        fixed(
            Opts::new("virtserialport")
                .set("bus", "virtio-serial0.0")
                .set("chardev", "qga0")
                .set("name", "org.qemu.guest_agent.0"),
            "guest agent channel",
        )?,
    );
    if spec.balloon.is_some() {
        push(
            a,
            "-device",
            fixed(
                Opts::new(&format!("virtio-balloon-{virtio_suffix}")).set("id", "balloon0"),
                "balloon",
            )?,
        );
    }
    if let Some(w) = spec.watchdog {
        // s390x's watchdog is the diag288 hypercall device; elsewhere the PCI i6300esb.
        let model = if spec.profile == Profile::S390Ccw {
            "diag288"
        } else {
            "i6300esb"
        };
        push(
            a,
            "-device",
            fixed(Opts::new(model).set("id", "watchdog0"), "watchdog")?,
        );
        // KubeVirt's "shutdown" is a graceful ACPI shutdown, "poweroff" the immediate one.
        let action = match w {
            WatchdogAction::Reset => "reset",
            WatchdogAction::Poweroff => "poweroff",
            WatchdogAction::Shutdown => "shutdown",
        };
        push(a, "-watchdog-action", action.into());
    }
    Ok(())
}

fn fixed(o: Opts, device: &'static str) -> Result<String, DeviceError> {
    o.build()
        .map_err(|source| DeviceError::Other { device, source })
}

#[cfg(test)]
mod tests {
    use super::super::test_spec;
    use super::*;

    #[test]
    fn qmp_is_a_chardev_with_an_escaped_path_and_the_sandbox_is_on() {
        let mut s = test_spec();
        s.dir = "/run/a,b".into();
        let mut a = vec![];
        render_control(&s, &mut a).unwrap();
        let i = a.iter().position(|x| x == "-sandbox").unwrap();
        assert_eq!(a[i + 1], SANDBOX);
        assert!(a.contains(
            &"socket,id=qmp,path=/run/a,,b/sockets/qmp.sock,server=on,wait=off".to_string()
        ));
        assert!(a.contains(&"chardev=qmp,mode=control".to_string()));
    }

    #[test]
    fn socket_paths_qemu_cannot_take_are_refused_with_the_device_named() {
        use std::os::unix::ffi::OsStrExt;
        let mut s = test_spec();
        s.dir = "/run/a\nb".into();
        let e = render_control(&s, &mut vec![]).unwrap_err();
        assert!(
            matches!(&e, DeviceError::Qmp(OptsError::BadValue { key, .. }) if key == "path"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            r#"QMP socket: path="/run/a\nb/sockets/qmp.sock": NUL and line breaks cannot be passed to QEMU"#
        );
        // The same failure through `qemu::render`, which names the family.
        assert_eq!(
            super::super::render(&s).unwrap_err().to_string(),
            format!("devices: {e}")
        );
        s.dir = std::ffi::OsStr::from_bytes(b"/run/\xff").into();
        s.serial_console = true;
        let e = render_console(&s, &mut vec![]).unwrap_err();
        assert!(
            matches!(&e, DeviceError::Serial(OptsError::NotUtf8 { .. })),
            "{e}"
        );
        assert!(e.to_string().starts_with("serial console: path: "), "{e}");
        s.serial_console = false;
        s.vnc = true;
        let e = render_console(&s, &mut vec![]).unwrap_err();
        assert!(
            matches!(&e, DeviceError::Vnc(OptsError::NotUtf8 { .. })),
            "{e}"
        );
        assert!(e.to_string().starts_with("VNC: vnc: path "), "{e}");
    }

    #[test]
    fn vnc_path_is_a_keyed_value() {
        let mut s = test_spec();
        s.vnc = true;
        s.serial_console = false;
        s.dir = "/run/x=y,z".into();
        let mut a = vec![];
        render_console(&s, &mut a).unwrap();
        assert_eq!(a[3], "vnc=unix:/run/x=y,,z/sockets/vnc.sock");
    }
}

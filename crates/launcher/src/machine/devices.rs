//! Other devices (serial console, VNC, tablet, RNG, balloon, watchdog) and `startStrategy`.

use super::*;

/// A device (or `startStrategy`) the QEMU backend cannot provide.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("spec.domain.devices.autoattachGraphicsDevice: microvm has no graphics device")]
    MicrovmGraphics,
    /// `field` is `spec.domain.devices.inputs[i]`.
    #[error("{field}: microvm has no USB")]
    MicrovmInput { field: String },
    /// `field` is `spec.domain.devices.inputs[i]`.
    #[error("{field}: only a usb tablet is supported")]
    Input { field: String },
    #[error("spec.domain.devices.watchdog: only the i6300esb watchdog exists on x86_64")]
    WatchdogModel,
    #[error("spec.domain.devices.watchdog.i6300esb: microvm has no PCI bus for an i6300esb")]
    MicrovmWatchdog,
    #[error("spec.domain.devices.watchdog: Arm64 not support Watchdog device")]
    Arm64Watchdog,
    /// KubeVirt's s390x rule; the diag288 watchdog is the only one on s390x.
    #[error("spec.domain.devices.watchdog: s390x only supports Diag288 watchdog device")]
    S390xWatchdog,
    /// `field` is `spec.domain.devices.inputs[i]`.
    #[error("{field}: s390x has no USB for a tablet")]
    S390xInput { field: String },
    /// `field` is `spec.domain.devices.watchdog.<model>.action`.
    #[error("{field}: {action}: use reset, poweroff or shutdown")]
    WatchdogAction { field: &'static str, action: String },
    #[error("spec.startStrategy: {strategy}: only Paused is supported")]
    StartStrategy { strategy: String },
}

impl DeviceError {
    /// The KubeVirt field path the error is about.
    pub fn field(&self) -> &str {
        match self {
            DeviceError::MicrovmGraphics => "spec.domain.devices.autoattachGraphicsDevice",
            DeviceError::MicrovmInput { field }
            | DeviceError::Input { field }
            | DeviceError::S390xInput { field } => field,
            DeviceError::WatchdogModel
            | DeviceError::Arm64Watchdog
            | DeviceError::S390xWatchdog => "spec.domain.devices.watchdog",
            DeviceError::MicrovmWatchdog => "spec.domain.devices.watchdog.i6300esb",
            DeviceError::WatchdogAction { field, .. } => field,
            DeviceError::StartStrategy { .. } => "spec.startStrategy",
        }
    }
}

pub(super) struct Devices {
    pub serial_console: bool,
    pub vnc: bool,
    pub tablet: bool,
    pub rng: bool,
    pub balloon: Option<u32>,
    pub watchdog: Option<WatchdogAction>,
    pub start_paused: bool,
}

pub(super) fn devices(ctx: &Ctx) -> Result<Devices, DeviceError> {
    let microvm = ctx.microvm;
    let spec = &ctx.vmi.spec;
    let dev = &spec.domain.devices;
    // Other devices.
    let serial_console = dev.autoattach_serial_console != Some(false);
    let vnc = match dev.autoattach_graphics_device {
        Some(true) if microvm => return Err(DeviceError::MicrovmGraphics),
        None if microvm => false,
        v => v != Some(false),
    };
    let mut tablet = false;
    for (i, input) in dev.inputs.iter().flatten().enumerate() {
        if microvm {
            return Err(DeviceError::MicrovmInput {
                field: format!("spec.domain.devices.inputs[{i}]"),
            });
        }
        if ctx.profile == Profile::S390Ccw {
            return Err(DeviceError::S390xInput {
                field: format!("spec.domain.devices.inputs[{i}]"),
            });
        }
        if input.r#type != "tablet" || input.bus.as_deref().unwrap_or("usb") != "usb" {
            return Err(DeviceError::Input {
                field: format!("spec.domain.devices.inputs[{i}]"),
            });
        }
        tablet = true;
    }
    let rng = dev.rng.is_some();
    let balloon =
        (dev.autoattach_mem_balloon != Some(false)).then_some(BALLOON_STATS_PERIOD_SECONDS);
    let watchdog = match &dev.watchdog {
        None => None,
        // s390x's diag288 (KubeVirt's s390x defaulting gives a watchdog without a model one).
        Some(w) if ctx.profile == Profile::S390Ccw => {
            let (Some(d), None) = (&w.diag288, &w.i6300esb) else {
                return Err(DeviceError::S390xWatchdog);
            };
            Some(watchdog_action(
                d.action.as_deref(),
                "spec.domain.devices.watchdog.diag288.action",
            )?)
        }
        Some(w) => {
            let Some(esb) = &w.i6300esb else {
                return Err(DeviceError::WatchdogModel);
            };
            if microvm {
                return Err(DeviceError::MicrovmWatchdog);
            }
            if ctx.profile == Profile::Virt {
                return Err(DeviceError::Arm64Watchdog);
            }
            Some(watchdog_action(
                esb.action.as_deref(),
                "spec.domain.devices.watchdog.i6300esb.action",
            )?)
        }
    };
    let start_paused = match spec.start_strategy.as_deref() {
        None | Some("") => false,
        Some("Paused") => true,
        Some(s) => return Err(DeviceError::StartStrategy { strategy: s.into() }),
    };
    Ok(Devices {
        serial_console,
        vnc,
        tablet,
        rng,
        balloon,
        watchdog,
        start_paused,
    })
}

fn watchdog_action(
    action: Option<&str>,
    field: &'static str,
) -> Result<WatchdogAction, DeviceError> {
    Ok(match action.unwrap_or("reset") {
        "reset" => WatchdogAction::Reset,
        "poweroff" => WatchdogAction::Poweroff,
        "shutdown" => WatchdogAction::Shutdown,
        a => {
            return Err(DeviceError::WatchdogAction {
                field,
                action: a.into(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::{convert, SpecError};
    use super::*;

    fn device_err(spec: &str) -> DeviceError {
        match convert(spec) {
            Err(SpecError::Device(e)) => {
                assert!(
                    e.to_string().starts_with(&format!("{}: ", e.field())),
                    "{e}"
                );
                e
            }
            other => panic!("not a device error: {other:?}"),
        }
    }

    #[test]
    fn hostile_watchdog_actions_and_strategies_are_refused() {
        for bad in ["reset,id=x", "poweroff=1", "../reset", "reset\\u0000"] {
            let e = device_err(&format!(
                "  domain:\n    memory: {{guest: 64Mi}}\n    devices: {{watchdog: {{name: w, i6300esb: {{action: \"{bad}\"}}}}}}\n"
            ));
            assert!(
                matches!(e, DeviceError::WatchdogAction { .. }),
                "{bad}: {e}"
            );
        }
        let e = device_err("  domain:\n    memory: {guest: 64Mi}\n    devices: {watchdog: {name: w, i6300esb: {action: \"reset,id=x\"}}}\n");
        assert_eq!(
            e.to_string(),
            "spec.domain.devices.watchdog.i6300esb.action: reset,id=x: use reset, poweroff or shutdown"
        );
        let e = device_err("  startStrategy: \"Paused,x\"\n  domain:\n    memory: {guest: 64Mi}\n");
        assert_eq!(
            e,
            DeviceError::StartStrategy {
                strategy: "Paused,x".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "spec.startStrategy: Paused,x: only Paused is supported"
        );
    }

    #[test]
    fn inputs_and_watchdog_models_say_what_is_wrong() {
        let e = device_err("  domain:\n    memory: {guest: 64Mi}\n    devices: {inputs: [{name: t, type: tablet}, {name: k, type: \"keyboard,id=x\"}]}\n");
        assert_eq!(
            e,
            DeviceError::Input {
                field: "spec.domain.devices.inputs[1]".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "spec.domain.devices.inputs[1]: only a usb tablet is supported"
        );
        let e = device_err(
            "  domain:\n    memory: {guest: 64Mi}\n    devices: {watchdog: {name: w}}\n",
        );
        assert_eq!(e, DeviceError::WatchdogModel);
        assert_eq!(
            e.to_string(),
            "spec.domain.devices.watchdog: only the i6300esb watchdog exists on x86_64"
        );
    }

    #[test]
    fn watchdog_and_start_strategy_are_checked() {
        let e = convert("  domain:\n    memory: {guest: 64Mi}\n    devices: {watchdog: {name: w, i6300esb: {action: explode}}}\n").unwrap_err();
        assert_eq!(e.field(), "spec.domain.devices.watchdog.i6300esb.action");
        let e =
            convert("  startStrategy: Later\n  domain:\n    memory: {guest: 64Mi}\n").unwrap_err();
        assert_eq!(e.field(), "spec.startStrategy");
        let s = convert("  domain:\n    memory: {guest: 64Mi}\n    devices: {autoattachMemBalloon: false, inputs: [{name: t, type: tablet}]}\n").unwrap();
        assert!(s.tablet && s.balloon.is_none() && s.vnc);
    }
}

//! Other devices (serial console, VNC, tablet, RNG, balloon, watchdog) and `startStrategy`.

use super::*;

pub(super) struct Devices {
    pub serial_console: bool,
    pub vnc: bool,
    pub tablet: bool,
    pub rng: bool,
    pub balloon: Option<u32>,
    pub watchdog: Option<WatchdogAction>,
    pub start_paused: bool,
}

pub(super) fn devices(ctx: &Ctx) -> Result<Devices, SpecError> {
    let microvm = ctx.microvm;
    let spec = &ctx.vmi.spec;
    let dev = &spec.domain.devices;
    // Other devices.
    let serial_console = dev.autoattach_serial_console != Some(false);
    let vnc = match dev.autoattach_graphics_device {
        Some(true) if microvm => {
            return Err(SpecError::new(
                "spec.domain.devices.autoattachGraphicsDevice",
                "microvm has no graphics device",
            ))
        }
        None if microvm => false,
        v => v != Some(false),
    };
    let mut tablet = false;
    for (i, input) in dev.inputs.iter().flatten().enumerate() {
        if microvm {
            return Err(SpecError::new(
                format!("spec.domain.devices.inputs[{i}]"),
                "microvm has no USB",
            ));
        }
        if input.r#type != "tablet" || input.bus.as_deref().unwrap_or("usb") != "usb" {
            return Err(SpecError::new(
                format!("spec.domain.devices.inputs[{i}]"),
                "only a usb tablet is supported",
            ));
        }
        tablet = true;
    }
    let rng = dev.rng.is_some();
    let balloon =
        (dev.autoattach_mem_balloon != Some(false)).then_some(BALLOON_STATS_PERIOD_SECONDS);
    let watchdog = match &dev.watchdog {
        None => None,
        Some(w) => {
            let Some(esb) = &w.i6300esb else {
                return Err(SpecError::new(
                    "spec.domain.devices.watchdog",
                    "only the i6300esb watchdog exists on x86_64",
                ));
            };
            if microvm {
                return Err(SpecError::new(
                    "spec.domain.devices.watchdog.i6300esb",
                    "microvm has no PCI bus for an i6300esb",
                ));
            }
            Some(match esb.action.as_deref().unwrap_or("reset") {
                "reset" => WatchdogAction::Reset,
                "poweroff" => WatchdogAction::Poweroff,
                "shutdown" => WatchdogAction::Shutdown,
                a => {
                    return Err(SpecError::new(
                        "spec.domain.devices.watchdog.i6300esb.action",
                        format!("{a}: use reset, poweroff or shutdown"),
                    ))
                }
            })
        }
    };
    let start_paused = match spec.start_strategy.as_deref() {
        None | Some("") => false,
        Some("Paused") => true,
        Some(s) => {
            return Err(SpecError::new(
                "spec.startStrategy",
                format!("{s}: only Paused is supported"),
            ))
        }
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

#[cfg(test)]
mod tests {
    use super::super::convert;

    #[test]
    fn watchdog_and_start_strategy_are_checked() {
        let e = convert("  domain:\n    memory: {guest: 64Mi}\n    devices: {watchdog: {name: w, i6300esb: {action: explode}}}\n").unwrap_err();
        assert_eq!(e.field, "spec.domain.devices.watchdog.i6300esb.action");
        let e =
            convert("  startStrategy: Later\n  domain:\n    memory: {guest: 64Mi}\n").unwrap_err();
        assert_eq!(e.field, "spec.startStrategy");
        let s = convert("  domain:\n    memory: {guest: 64Mi}\n    devices: {autoattachMemBalloon: false, inputs: [{name: t, type: tablet}]}\n").unwrap();
        assert!(s.tablet && s.balloon.is_none() && s.vnc);
    }
}

//! The log format of a `kubevirt-rs` process (`--log-format text|json` of `server`, `node` and
//! `launcher`): one type for the flag, the subscriber that `main` installs, and the flag the
//! node agent passes to the launchers it spawns, so a launcher logs as its agent does.

use std::sync::OnceLock;

/// How a process writes its log lines to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// tracing-subscriber's human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, as KubeVirt's components log: `timestamp`, `level`,
    /// `component`, `msg`, and the event's and its spans' fields (`namespace`, `name`,
    /// `uid`, `reason`, ...).
    Json,
}

impl LogFormat {
    /// The flag's accepted values.
    pub const VALUES: [&'static str; 2] = ["text", "json"];
    /// The flag.
    pub const FLAG: &'static str = "--log-format";

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }

    /// The flag's value; anything else is refused with the accepted values.
    pub fn parse(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "{s:?} is not a log format: use {}",
                Self::VALUES.join(" or ")
            )),
        }
    }
}

static PROCESS: OnceLock<LogFormat> = OnceLock::new();

/// Records the format this process logs in (once, where the subscriber is installed).
pub fn set_process_format(f: LogFormat) {
    let _ = PROCESS.set(f);
}

/// The format this process logs in ([`LogFormat::Text`] until set).
pub fn process_format() -> LogFormat {
    PROCESS.get().copied().unwrap_or_default()
}

/// The arguments that make a spawned `kubevirt-rs launcher run` log as this process does.
pub fn launcher_args() -> [String; 2] {
    [
        LogFormat::FLAG.to_string(),
        process_format().as_str().to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_text_and_json_are_formats() {
        for v in LogFormat::VALUES {
            assert_eq!(LogFormat::parse(v).map(LogFormat::as_str), Ok(v));
        }
        for bad in ["", "JSON", "xml", "json ", "text\n", "logfmt"] {
            let e = LogFormat::parse(bad).expect_err(bad);
            assert!(e.contains("use text or json"), "{e}");
        }
    }
}

//! A VMI's log files, as the `logs` subresource serves them (`virtctl logs`): which files a
//! user may read ([`LogContainer`], mapped to [`VmiDir`] paths only, never to a path from a
//! request), reading their end ([`tail`]), and QEMU's log kept and rotated ([`QemuLog`]).

use super::VmiDir;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The log files of a VMI (KubeVirt's launcher Pod has containers; ours has files).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogContainer {
    /// The launcher's own log (`launcher.log`).
    Launcher,
    /// QEMU's stdout and stderr (`qemu.log`).
    Qemu,
    /// The guest's serial console (`serial.log`).
    Serial,
}

impl LogContainer {
    pub const ALL: [LogContainer; 3] = [
        LogContainer::Launcher,
        LogContainer::Qemu,
        LogContainer::Serial,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LogContainer::Launcher => "launcher",
            LogContainer::Qemu => "qemu",
            LogContainer::Serial => "serial",
        }
    }

    /// The query's `container`; anything else is refused, naming the choices.
    pub fn parse(s: &str) -> Result<LogContainer, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("container {s:?} is not one of launcher, qemu, serial"))
    }

    /// Its file in `dir`.
    pub fn path(self, dir: &VmiDir) -> PathBuf {
        match self {
            LogContainer::Launcher => dir.launcher_log(),
            LogContainer::Qemu => dir.qemu_log(),
            LogContainer::Serial => dir.serial_log(),
        }
    }
}

/// The most lines `tailLines` may ask for.
pub const MAX_TAIL_LINES: u64 = 100_000;
/// The most bytes of a log one request returns (its end).
pub const MAX_BYTES: u64 = 1024 * 1024;

/// The query's `tailLines`: a count from 1 to [`MAX_TAIL_LINES`].
pub fn parse_tail_lines(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_TAIL_LINES).contains(n))
        .ok_or_else(|| format!("tailLines {s:?} is not a number from 1 to {MAX_TAIL_LINES}"))
}

/// The end of the file at `path`: at most [`MAX_BYTES`] (from a line start when cut), and of
/// those the last `lines` lines when given. A file that does not exist (yet) is empty.
pub fn tail(path: &Path, lines: Option<u64>) -> std::io::Result<String> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(MAX_BYTES);
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.take(MAX_BYTES).read_to_end(&mut bytes)?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0 {
        // Cut mid-line: drop the partial first line.
        text = text
            .split_once('\n')
            .map(|(_, r)| r.to_string())
            .unwrap_or_default();
    }
    if let Some(n) = lines {
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let from = body
            .rmatch_indices('\n')
            .nth(n.saturating_sub(1) as usize)
            .map(|(i, _)| i + 1)
            .unwrap_or(0);
        text = text[from..].to_string();
    }
    Ok(text)
}

/// QEMU's log of a VMI: `qemu.log`, and `qemu.log.1` holding what came before — the previous
/// QEMU's log when QEMU starts again, or the older part once the log grows past its cap.
pub struct QemuLog {
    current: PathBuf,
    old: PathBuf,
    /// The size past which the log is rotated.
    pub max_bytes: u64,
}

/// The default cap of `qemu.log` (KubeVirt keeps QEMU's log in the Pod's, capped by the
/// kubelet's rotation; ours is a file per VMI).
pub const QEMU_LOG_MAX_BYTES: u64 = 8 * 1024 * 1024;

impl QemuLog {
    pub fn of(dir: &VmiDir) -> QemuLog {
        QemuLog {
            current: dir.qemu_log(),
            old: dir.qemu_log_old(),
            max_bytes: QEMU_LOG_MAX_BYTES,
        }
    }

    /// The log a new QEMU writes to: the previous one (if any) becomes the old file, and the
    /// new one is opened for appending, so that [`QemuLog::rotate_if_full`] can empty it
    /// under a running QEMU.
    pub fn open_for_new_qemu(&self) -> std::io::Result<std::fs::File> {
        if std::fs::metadata(&self.current).is_ok_and(|m| m.len() > 0) {
            std::fs::rename(&self.current, &self.old)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.current)
    }

    /// Past the cap: copies the log to the old file and empties it (logrotate's
    /// `copytruncate`; QEMU's descriptor appends, so it writes on from the start). Returns
    /// whether it rotated.
    pub fn rotate_if_full(&self) -> std::io::Result<bool> {
        let len = match std::fs::metadata(&self.current) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if len <= self.max_bytes {
            return Ok(false);
        }
        std::fs::copy(&self.current, &self.old)?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.current)?
            .set_len(0)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn only_the_three_logs_and_sane_line_counts_are_accepted() {
        for c in LogContainer::ALL {
            assert_eq!(LogContainer::parse(c.as_str()), Ok(c));
        }
        for bad in [
            "",
            "../launcher",
            "qemu.log",
            "QEMU",
            "serial ",
            "state.json",
            "/etc/passwd",
        ] {
            assert!(LogContainer::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_tail_lines("1"), Ok(1));
        assert_eq!(parse_tail_lines("100000"), Ok(100_000));
        for bad in ["0", "-1", "", "1e3", "100001", "18446744073709551616", " 5"] {
            assert!(parse_tail_lines(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tail_returns_the_last_lines() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("log");
        assert_eq!(tail(&p, Some(3)).expect("missing"), "");
        std::fs::write(&p, "a\nb\nc\nd\n").expect("write");
        assert_eq!(tail(&p, Some(2)).expect("tail"), "c\nd\n");
        assert_eq!(tail(&p, Some(10)).expect("tail"), "a\nb\nc\nd\n");
        assert_eq!(tail(&p, None).expect("tail"), "a\nb\nc\nd\n");
        std::fs::write(&p, "a\nb\nno newline").expect("write");
        assert_eq!(tail(&p, Some(1)).expect("tail"), "no newline");
        // Larger than a reply: the end, from a line start.
        let line = "x".repeat(99) + "\n";
        std::fs::write(&p, line.repeat(20_000)).expect("write");
        let t = tail(&p, None).expect("tail");
        assert!(
            t.len() as u64 <= MAX_BYTES && t.len() > 1_000_000,
            "{}",
            t.len()
        );
        assert!(t.starts_with(&line) && t.ends_with(&line));
    }

    #[test]
    fn qemus_log_is_kept_across_starts_and_rotated_at_its_cap() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = VmiDir::from_path(d.path()).expect("dir");
        let mut log = QemuLog::of(&dir);
        log.max_bytes = 100;
        let mut f = log.open_for_new_qemu().expect("open");
        f.write_all(b"first qemu\n").expect("write");
        drop(f);
        // A second QEMU: the first one's log becomes the old file.
        let mut f = log.open_for_new_qemu().expect("open");
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        assert_eq!(read(dir.qemu_log_old()), "first qemu\n");
        assert_eq!(read(dir.qemu_log()), "");
        f.write_all(&[b'y'; 150]).expect("write");
        assert!(!QemuLog {
            max_bytes: 200,
            ..QemuLog::of(&dir)
        }
        .rotate_if_full()
        .expect("rotate"));
        assert!(log.rotate_if_full().expect("rotate"));
        assert_eq!(read(dir.qemu_log_old()).len(), 150);
        // The writer goes on at the start of the emptied file, not past a hole.
        f.write_all(b"after\n").expect("write");
        assert_eq!(read(dir.qemu_log()), "after\n");
    }
}

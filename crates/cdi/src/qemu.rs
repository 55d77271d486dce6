//! `qemu-img` for the formats we do not read ourselves (vmdk, vdi, vhdx, vpc), as CDI does.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors of running `qemu-img`.
#[derive(Debug, thiserror::Error)]
pub enum QemuImgError {
    #[error("cannot run {program}: {source} (install the qemu-utils package)")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("`qemu-img info` printed JSON without a virtual-size: {source}")]
    BadInfo { source: serde_json::Error },
}

fn run(qemu_img: &Path, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, QemuImgError> {
    let out = Command::new(qemu_img)
        .args(args)
        .output()
        .map_err(|source| QemuImgError::Spawn {
            program: qemu_img.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        let mut command = qemu_img.display().to_string();
        for a in args {
            command.push(' ');
            command.push_str(&a.to_string_lossy());
        }
        return Err(QemuImgError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

#[derive(serde::Deserialize)]
struct Info {
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
}

/// The virtual size of the image at `path`, read as format `fmt` (never probed: probing is how
/// a raw image pretending to be something else escapes).
pub fn virtual_size(qemu_img: &Path, path: &Path, fmt: &str) -> Result<u64, QemuImgError> {
    let out = run(
        qemu_img,
        &[
            "info".as_ref(),
            "--output=json".as_ref(),
            "-f".as_ref(),
            fmt.as_ref(),
            path.as_os_str(),
        ],
    )?;
    let info: Info =
        serde_json::from_slice(&out).map_err(|source| QemuImgError::BadInfo { source })?;
    Ok(info.virtual_size)
}

/// Converts `src` (format `fmt`) into the existing, zero-filled raw file `dst`.
pub fn convert_to_raw(
    qemu_img: &Path,
    src: &Path,
    fmt: &str,
    dst: &Path,
) -> Result<(), QemuImgError> {
    run(
        qemu_img,
        &[
            "convert".as_ref(),
            "-n".as_ref(),
            "--target-is-zero".as_ref(),
            "-f".as_ref(),
            fmt.as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            src.as_os_str(),
            dst.as_os_str(),
        ],
    )?;
    Ok(())
}

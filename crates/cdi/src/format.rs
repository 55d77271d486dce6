//! Image format detection by content (magic bytes), never by file name: CDI's importer
//! trusts neither URLs nor upload file names, and neither do we.

use std::fmt;

/// How many leading bytes [`detect`] wants to see: an ISO9660 volume descriptor sits at
/// 0x8001, so 32 KiB + a few bytes.
pub const DETECT_LEN: usize = 0x8006;

/// What a byte stream is, judged from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// A disk image with no container: copied as-is.
    Raw,
    /// ISO9660 (a CD-ROM image): copied as-is, like raw.
    Iso,
    Qcow2,
    Vmdk,
    Vdi,
    Vhdx,
    /// Dynamic VHD ("conectix" cookie at the start). Fixed VHDs only have a footer and look raw.
    Vpc,
    Gzip,
    Xz,
    Zstd,
}

impl Format {
    /// A compression layer wraps another image; the importer decompresses it as a stream and
    /// detects again.
    pub fn is_compression(self) -> bool {
        matches!(self, Format::Gzip | Format::Xz | Format::Zstd)
    }

    /// Formats converted by `qemu-img` rather than our own code.
    pub fn needs_qemu_img(self) -> bool {
        matches!(
            self,
            Format::Vmdk | Format::Vdi | Format::Vhdx | Format::Vpc
        )
    }

    /// The format name as `qemu-img -f` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Iso => "iso",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vdi => "vdi",
            Format::Vhdx => "vhdx",
            Format::Vpc => "vpc",
            Format::Gzip => "gzip",
            Format::Xz => "xz",
            Format::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Detects the format of a stream from its first bytes (give at least [`DETECT_LEN`] bytes when
/// the stream has that many; fewer only lose ISO detection).
pub fn detect(head: &[u8]) -> Format {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(b"QFI\xfb") {
        Format::Qcow2
    } else if starts(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Format::Xz
    } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Format::Zstd
    } else if starts(b"KDMV") || starts(b"COWD") || is_vmdk_descriptor(head) {
        Format::Vmdk
    } else if head.len() >= 0x44 && head[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe] {
        // VDI: signature 0xbeda107f (little endian) at 0x40, after the "<<< ... >>>" banner.
        Format::Vdi
    } else if starts(b"vhdxfile") {
        Format::Vhdx
    } else if starts(b"conectix") {
        Format::Vpc
    } else if head.len() >= 0x8006 && &head[0x8001..0x8006] == b"CD001" {
        Format::Iso
    } else {
        Format::Raw
    }
}

/// A text VMDK descriptor (monolithicFlat etc.) starts with a comment line naming it.
fn is_vmdk_descriptor(head: &[u8]) -> bool {
    let n = head.len().min(512);
    let text = String::from_utf8_lossy(&head[..n]);
    text.starts_with("# Disk DescriptorFile")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_magic() {
        assert_eq!(detect(b"QFI\xfb\0\0\0\x03"), Format::Qcow2);
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Format::Gzip);
        assert_eq!(detect(b"\xfd7zXZ\0\0\x04"), Format::Xz);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Format::Zstd);
        assert_eq!(detect(b"KDMV\x01\0\0\0"), Format::Vmdk);
        assert_eq!(detect(b"# Disk DescriptorFile\nversion=1\n"), Format::Vmdk);
        assert_eq!(detect(b"vhdxfile"), Format::Vhdx);
        assert_eq!(detect(b"conectix"), Format::Vpc);
        let mut vdi = vec![0u8; 512];
        vdi[..4].copy_from_slice(b"<<< ");
        vdi[0x40..0x44].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
        assert_eq!(detect(&vdi), Format::Vdi);
        let mut iso = vec![0u8; DETECT_LEN];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        assert_eq!(detect(&iso), Format::Iso);
        assert_eq!(detect(&[0u8; 4096]), Format::Raw);
        assert_eq!(detect(b""), Format::Raw);
        // A file *named* .qcow2 holding raw data is raw.
        assert_eq!(detect(b"\xeb\x63\x90MBR"), Format::Raw);
    }
}

//! The forms a name or value from a spec must have before it may become a file name, a QEMU id
//! or a QEMU option value. One owner for these rules: admission (`validation`) reports them as
//! field errors, and the launcher, the handler and the VMI directory layout check them again
//! (defense in depth: admission is not the only guard).
//!
//! Each check is a pure function returning `None` when the value is acceptable, or the message
//! fragment saying what the allowed form is (Kubernetes' own wording where it has one).

/// Kubernetes' `DNS1123LabelMaxLength`.
pub const DNS1123_LABEL_MAX: usize = 63;
/// Kubernetes' `DNS1123SubdomainMaxLength`.
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;

/// Kubernetes' `dns1123LabelErrMsg` (`k8s.io/apimachinery/pkg/util/validation`).
pub const DNS1123_LABEL_FORM: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
/// Kubernetes' `dns1123SubdomainErrorMsg`.
pub const DNS1123_SUBDOMAIN_FORM: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// KubeVirt's rule for interface (and so network) names: `^[A-Za-z0-9-_]+$`.
pub const INTERFACE_NAME_FORM: &str = "Network interface name can only contain alphabetical characters, numbers, dashes (-) or underscores (_)";

/// Libvirt's (and KubeVirt's) rule for disk and firmware serials: `^[A-Za-z0-9_.+-]+$`.
pub const SERIAL_CHARS: &str = "[A-Za-z0-9_.+-]";
/// KubeVirt's `maxStrLen` for serials.
pub const SERIAL_MAX: usize = 256;

/// The form of QEMU/libvirt CPU model and feature names we pass on (`Skylake-Client-IBRS`,
/// `host-model`, `tsc-deadline`, `lahf_lm`, `avx512f`).
pub const CPU_NAME_FORM: &str =
    "letters, digits, '_', '.' and '-', starting with a letter or digit";

fn alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `Some(problem)` unless `s` is a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, ≤ 63).
pub fn dns1123_label(s: &str) -> Option<String> {
    if s.len() > DNS1123_LABEL_MAX {
        return Some(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if is_label(s.as_bytes()) {
        None
    } else {
        Some(DNS1123_LABEL_FORM.to_string())
    }
}

fn is_label(b: &[u8]) -> bool {
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) => {
            alnum_lower(f) && alnum_lower(l) && b.iter().all(|&c| alnum_lower(c) || c == b'-')
        }
        _ => false,
    }
}

/// `Some(problem)` unless `s` is a DNS-1123 subdomain (dot-separated labels, ≤ 253): the form
/// of most Kubernetes object names. Such a name never contains `/` and is never `.` or `..`.
pub fn dns1123_subdomain(s: &str) -> Option<String> {
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        return Some(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    if !s.is_empty() && s.split('.').all(|l| is_label(l.as_bytes())) {
        None
    } else {
        Some(DNS1123_SUBDOMAIN_FORM.to_string())
    }
}

/// `Some(problem)` unless `s` matches KubeVirt's interface name rule.
pub fn interface_name(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    (!ok).then(|| INTERFACE_NAME_FORM.to_string())
}

/// `true` when `s` is a non-empty serial of libvirt's characters.
pub fn serial_chars_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'+' | b'-'))
}

/// `Some(problem)` unless `s` is a CPU model or feature name of the form QEMU knows.
pub fn cpu_name(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let ok = b.first().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.len() <= 128
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    (!ok).then(|| CPU_NAME_FORM.to_string())
}

/// A MAC address as Go's `net.ParseMAC` reads it (what KubeVirt uses): `xx:xx:…`, `xx-xx-…` or
/// `xxxx.xxxx.xxxx`, of 6, 8 or 20 octets. Returns the octets.
pub fn parse_mac(s: &str) -> Option<Vec<u8>> {
    // The separator decides the group width: two hex digits per `:`/`-` group, four per `.`.
    let (sep, width) = [(':', 2), ('-', 2), ('.', 4)]
        .into_iter()
        .find(|(c, _)| s.contains(*c))?;
    let mut octets = Vec::new();
    for group in s.split(sep) {
        if group.len() != width || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        for i in (0..width).step_by(2) {
            octets.push(u8::from_str_radix(group.get(i..i + 2)?, 16).ok()?);
        }
    }
    matches!(octets.len(), 6 | 8 | 20).then_some(octets)
}

/// `true` when `s` is a PCI address of KubeVirt's form `dddd:bb:ss.f` (hex domain, bus and slot,
/// function 0-7), the only form that may reach QEMU's `addr=`.
pub fn pci_address_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
}

/// `Some(problem)` unless `p` is an absolute, normalised host path: starts with `/`, and has no
/// empty, `.` or `..` component and no NUL. Whether it is beneath a root the administrator
/// allows is a question for the node (`--host-path-root`), not for admission.
pub fn absolute_clean_path(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return Some("must be an absolute path".into());
    }
    if p.contains('\0') {
        return Some("must not contain NUL".into());
    }
    let rest = p.trim_start_matches('/');
    if rest.is_empty() {
        return Some("must name a file, not /".into());
    }
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Some("must be normalised: no empty, '.' or '..' components".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "disk0", "cloudinitdisk", "a-b", &"a".repeat(63)] {
            assert_eq!(dns1123_label(ok), None, "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "..",
            "../x",
            "a/b",
            "x,romfile=/etc/shadow",
            &"a".repeat(64),
        ] {
            assert!(dns1123_label(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn subdomains() {
        assert_eq!(dns1123_subdomain("a.b-c.d"), None);
        for bad in ["", ".", "..", "a..b", "a/b", "a.", "A", &"a".repeat(254)] {
            assert!(dns1123_subdomain(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn interface_names() {
        assert_eq!(interface_name("default"), None);
        assert_eq!(interface_name("Net_1-a"), None);
        for bad in ["", "x,romfile=/etc/shadow", "a.b", "a b", "a/b"] {
            assert!(interface_name(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn macs_as_go_parses_them() {
        assert_eq!(
            parse_mac("de:ad:00:00:be:af"),
            Some(vec![0xde, 0xad, 0, 0, 0xbe, 0xaf])
        );
        assert!(parse_mac("DE-AD-00-00-BE-AF").is_some());
        assert!(parse_mac("dead.0000.beaf").is_some());
        assert_eq!(
            parse_mac("00:00:00:00:fe:80:00:00").map(|m| m.len()),
            Some(8)
        );
        for bad in [
            "",
            "de:ad:00:00:be",
            "de:ad:00:00:be:af,romfile=/x",
            "de:ad:00:00:be:gg",
            "de:ad:00:00:be:+f",
            "dead.0000.beaf.",
            "de:ad-00:00:be:af",
            "deadbeefcafe",
        ] {
            assert!(parse_mac(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn cpu_names() {
        for ok in [
            "Skylake-Client-IBRS",
            "host-model",
            "lahf_lm",
            "avx512f",
            "EPYC-v4",
        ] {
            assert_eq!(cpu_name(ok), None, "{ok}");
        }
        for bad in ["", "-x", "pcid,romfile=/x", "a b", "x=y"] {
            assert!(cpu_name(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn host_paths() {
        assert_eq!(absolute_clean_path("/var/lib/disks/a.img"), None);
        for bad in ["rel/a", "/", "/a/../b", "/a//b", "/a/./b", "/a/"] {
            assert!(absolute_clean_path(bad).is_some(), "{bad}");
        }
    }
}

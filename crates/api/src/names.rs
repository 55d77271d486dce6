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

// ---- Kubernetes' name and label checks, every problem at once ----
//
// `k8s.io/apimachinery/pkg/util/validation` reports each rule a value breaks (too long *and* of
// the wrong form), where the checks above stop at the first. Kubernetes' pod validation, which
// KubeVirt copies for `spec.affinity` and `spec.topologySpreadConstraints`, uses these.

/// Kubernetes' `qualifiedNameFmt`.
pub const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
/// Kubernetes' `RegexError(qualifiedNameErrMsg, qualifiedNameFmt, "MyName", "my.name", "123-abc")`.
pub const QUALIFIED_NAME_FORM: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
/// Kubernetes' label value rule (`labelValueErrMsg` with its regex and examples).
pub const LABEL_VALUE_FORM: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
/// Kubernetes' `qualifiedNameMaxLength` and `LabelValueMaxLength`.
pub const QUALIFIED_NAME_MAX: usize = 63;

fn max_len(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn is_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Kubernetes' `IsDNS1123Label`: every problem, empty when `s` is a label.
pub fn dns1123_label_problems(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errs.push(max_len(DNS1123_LABEL_MAX));
    }
    if !is_label(s.as_bytes()) {
        if is_subdomain(s) {
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(DNS1123_LABEL_FORM.to_string());
        }
    }
    errs
}

fn is_subdomain(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(|l| is_label(l.as_bytes()))
}

/// Kubernetes' `IsDNS1123Subdomain`: every problem, empty when `s` is a subdomain.
pub fn dns1123_subdomain_problems(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(max_len(DNS1123_SUBDOMAIN_MAX));
    }
    if !is_subdomain(s) {
        errs.push(DNS1123_SUBDOMAIN_FORM.to_string());
    }
    errs
}

/// Kubernetes' `IsQualifiedName` (label keys, topology keys): an optional DNS subdomain prefix
/// and `/`, then a name of at most 63 characters. Every problem, empty when `s` is one.
pub fn qualified_name_problems(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = s.splitn(3, '/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    dns1123_subdomain_problems(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!("a qualified name {QUALIFIED_NAME_FORM} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > QUALIFIED_NAME_MAX {
        errs.push(format!("name part {}", max_len(QUALIFIED_NAME_MAX)));
    }
    if !is_qualified_part(name) {
        errs.push(format!("name part {QUALIFIED_NAME_FORM}"));
    }
    errs
}

/// Kubernetes' `IsValidLabelValue`: empty, or a qualified name part of at most 63 characters.
pub fn label_value_problems(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > QUALIFIED_NAME_MAX {
        errs.push(max_len(QUALIFIED_NAME_MAX));
    }
    if !s.is_empty() && !is_qualified_part(s) {
        errs.push(LABEL_VALUE_FORM.to_string());
    }
    errs
}

/// A string as Go's `%q` prints it (`strconv.Quote`), the form Kubernetes' field errors show a
/// bad value in: `"a\"b"`, control characters as `\n`, `\x01`, `\u0085`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
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

    #[test]
    fn kubernetes_qualified_names_report_every_problem() {
        for ok in [
            "a",
            "kubernetes.io/hostname",
            "MyName",
            "my.name",
            "123-abc",
            "a_b",
        ] {
            assert!(qualified_name_problems(ok).is_empty(), "{ok}");
        }
        assert_eq!(qualified_name_problems("").len(), 2);
        assert_eq!(
            qualified_name_problems("a/b/c"),
            vec![format!("a qualified name {QUALIFIED_NAME_FORM} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')")]
        );
        assert_eq!(
            qualified_name_problems("/x"),
            vec!["prefix part must be non-empty".to_string()]
        );
        assert_eq!(
            qualified_name_problems(&"a".repeat(64)),
            vec!["name part must be no more than 63 characters".to_string()]
        );
        let both = qualified_name_problems(&format!("{}-", "a".repeat(64)));
        assert_eq!(both.len(), 2, "{both:?}");
        assert_eq!(
            qualified_name_problems("Example.com/x"),
            vec![format!("prefix part {DNS1123_SUBDOMAIN_FORM}")]
        );
        assert!(label_value_problems("").is_empty());
        assert_eq!(label_value_problems(&"a".repeat(64)).len(), 1);
        assert_eq!(label_value_problems("-").len(), 1);
        assert_eq!(
            dns1123_label_problems("a.b"),
            vec!["must not contain dots".to_string()]
        );
        assert_eq!(dns1123_subdomain_problems(&"A".repeat(254)).len(), 2);
    }

    #[test]
    fn go_quoting() {
        assert_eq!(
            go_quote("a\"b\\c\n\u{1}\u{85}é"),
            "\"a\\\"b\\\\c\\n\\x01\\u0085é\""
        );
    }
}

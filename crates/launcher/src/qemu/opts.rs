//! The one builder of QEMU option strings (`-device virtio-net-pci,netdev=net0,mac=...`).
//!
//! QEMU parses these values with `qemu_opts_parse` / `keyval_parse`: items are split on `,`,
//! a literal comma is written `,,`, and each item is `key=value` (the first item may be the
//! implied key's value, e.g. the `-device` driver). A VMI value that reaches such a string
//! unescaped can add options of its own: an interface named `x,romfile=/root/secret` made QEMU
//! load a root-only host file as the NIC's option ROM (security issue 10). So every option
//! string of `render` is built here, and nowhere else:
//!
//! - every value is escaped (`,` → `,,`);
//! - keys must be fixed identifiers (`[a-z][a-z0-9_-]*`), or dotted paths of them for QEMU's
//!   keyval nesting (`addr.type`); keys are always written in our code, never taken from a
//!   spec;
//! - values of keys that name or reference a QEMU object (`id`, `netdev`, `drive`, `chardev`,
//!   ...) must be well-formed QEMU ids (`[A-Za-z][A-Za-z0-9_.-]*`, QEMU's `id_wellformed`):
//!   QEMU refuses others anyway, and refusing them here gives an error that says why;
//! - NUL and line breaks are refused: they cannot be passed through argv (NUL) or would end
//!   up in QEMU's logs and `qemu.cmdline` as fake lines;
//! - `-cpu` does not use QemuOpts (its features are split on `,` with no escape), so CPU model
//!   and feature names are refused unless they are `[A-Za-z0-9_.-]+` ([`cpu`]).

use std::fmt::Write;
use std::path::Path;

/// Why an option string could not be built; the value is kept for the message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptsError {
    #[error("option key {0:?} is not a fixed identifier ([a-z][a-z0-9_-]*, dotted for nesting)")]
    BadKey(String),
    #[error("{0:?} is not a QEMU type name ([A-Za-z0-9][A-Za-z0-9_.-]*)")]
    BadKind(String),
    #[error("{key}={value:?}: not a QEMU id ([A-Za-z][A-Za-z0-9_.-]*)")]
    BadId { key: String, value: String },
    #[error("{key}={value:?}: NUL and line breaks cannot be passed to QEMU")]
    BadValue { key: String, value: String },
    #[error("{0:?}: an implied first value cannot contain `=` (QEMU would read a key)")]
    ImpliedHasEquals(String),
    #[error("{key}: path {path:?} is not valid UTF-8")]
    NotUtf8 { key: String, path: String },
    #[error("CPU {what} {name:?} is not [A-Za-z0-9_.-]+ (QEMU splits -cpu on `,` with no escape)")]
    BadCpuName { what: &'static str, name: String },
}

/// Keys whose value names or references a QEMU object: ids, or bus names made of an id.
const ID_KEYS: &[&str] = &[
    "id",
    "netdev",
    "drive",
    "chardev",
    "rng",
    "memdev",
    "memory-backend",
    "bus",
];

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
pub fn is_qemu_id(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|x| x.is_ascii_alphanumeric() || matches!(x, '-' | '.' | '_'))
}

/// A fixed identifier, or a dotted path of them (QEMU's keyval nesting, as `addr.type`).
fn is_key(s: &str) -> bool {
    s.split('.').all(|part| {
        let mut c = part.chars();
        c.next().is_some_and(|f| f.is_ascii_lowercase())
            && c.all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, '-' | '_'))
    })
}

fn is_kind(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphanumeric())
        && c.all(|x| x.is_ascii_alphanumeric() || matches!(x, '-' | '.' | '_'))
}

/// `[A-Za-z0-9_.-]+`: what `-cpu` can carry as a model or feature name.
/// The rule has one owner, `kubevirt_api::names`, which admission uses too.
pub fn is_cpu_name(s: &str) -> bool {
    kubevirt_api::names::cpu_name(s).is_none()
}

fn clean(key: &str, value: &str) -> Result<(), OptsError> {
    if value.contains(['\0', '\n', '\r']) {
        return Err(OptsError::BadValue {
            key: key.into(),
            value: value.into(),
        });
    }
    Ok(())
}

/// QEMU's option escape: a literal comma is written `,,`.
fn escape_into(out: &mut String, value: &str) {
    for ch in value.chars() {
        if ch == ',' {
            out.push_str(",,");
        } else {
            out.push(ch);
        }
    }
}

/// A QEMU option string under construction. Errors are kept and returned by [`Opts::build`],
/// so a chain of `set`s reads like the option it makes.
#[derive(Debug)]
#[must_use = "an option string does nothing until build()"]
pub struct Opts {
    out: String,
    err: Option<OptsError>,
}

impl Opts {
    /// An option whose implied first value is a fixed type name: a `-device` driver, a
    /// `-netdev`/`-chardev` backend, an `-object` type, a machine type.
    pub fn new(kind: &str) -> Opts {
        let mut o = Opts::keyed();
        if is_kind(kind) {
            o.out.push_str(kind);
        } else {
            o.err = Some(OptsError::BadKind(kind.into()));
        }
        o
    }

    /// An option of `key=value` items only (`-drive`, `-smbios`, `-name`).
    pub fn keyed() -> Opts {
        Opts {
            out: String::new(),
            err: None,
        }
    }

    /// An option whose implied first value is data (escaped, and refused if it has a `=`,
    /// which would make QEMU read it as a key).
    pub fn implied(value: &str) -> Opts {
        let mut o = Opts::keyed();
        if let Err(e) = clean("(implied)", value) {
            o.err = Some(e);
        } else if value.contains('=') {
            o.err = Some(OptsError::ImpliedHasEquals(value.into()));
        } else {
            escape_into(&mut o.out, value);
        }
        o
    }

    /// `key=value`, escaped; see the module documentation for what is refused.
    pub fn set(mut self, key: &str, value: impl AsRef<str>) -> Opts {
        if self.err.is_some() {
            return self;
        }
        let value = value.as_ref();
        let checked = if !is_key(key) {
            Err(OptsError::BadKey(key.into()))
        } else if ID_KEYS.contains(&key) && !is_qemu_id(value) {
            Err(OptsError::BadId {
                key: key.into(),
                value: value.into(),
            })
        } else {
            clean(key, value)
        };
        match checked {
            Err(e) => self.err = Some(e),
            Ok(()) => {
                if !self.out.is_empty() {
                    self.out.push(',');
                }
                self.out.push_str(key);
                self.out.push('=');
                escape_into(&mut self.out, value);
            }
        }
        self
    }

    /// `key=value` when `value` is `Some`.
    pub fn set_opt(self, key: &str, value: Option<impl AsRef<str>>) -> Opts {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }

    /// `key=value` when `cond` holds.
    pub fn set_if(self, cond: bool, key: &str, value: impl AsRef<str>) -> Opts {
        if cond {
            self.set(key, value)
        } else {
            self
        }
    }

    /// A file name: must be UTF-8 (a lossy conversion would make QEMU open another file).
    pub fn set_path(mut self, key: &str, path: &Path) -> Opts {
        match path.to_str() {
            Some(s) => self.set(key, s),
            None => {
                if self.err.is_none() {
                    self.err = Some(OptsError::NotUtf8 {
                        key: key.into(),
                        path: path.to_string_lossy().into(),
                    });
                }
                self
            }
        }
    }

    pub fn build(self) -> Result<String, OptsError> {
        match self.err {
            Some(e) => Err(e),
            None => Ok(self.out),
        }
    }
}

/// The `-cpu` value: `model,+feature,-feature`. Not QemuOpts: x86's feature parser splits on
/// `,` with no escape, so names are restricted instead of escaped.
pub fn cpu(model: &str, features: &[(char, &str)]) -> Result<String, OptsError> {
    if !is_cpu_name(model) {
        return Err(OptsError::BadCpuName {
            what: "model",
            name: model.into(),
        });
    }
    let mut out = model.to_string();
    for (sign, name) in features {
        if !matches!(sign, '+' | '-') || !is_cpu_name(name) {
            return Err(OptsError::BadCpuName {
                what: "feature",
                name: format!("{sign}{name}"),
            });
        }
        // Writing to a String cannot fail.
        let _ = write!(out, ",{sign}{name}");
    }
    Ok(out)
}

/// A plain argument that QEMU takes as it is (`-kernel`, `-append`): only NUL and line breaks
/// are refused (NUL cannot be passed; a line break would forge lines in `qemu.cmdline`).
pub fn plain(what: &str, value: &str) -> Result<String, OptsError> {
    clean(what, value)?;
    Ok(value.to_string())
}

/// A plain path argument (`-kernel`, `-initrd`).
pub fn plain_path(what: &str, path: &Path) -> Result<String, OptsError> {
    match path.to_str() {
        Some(s) => plain(what, s),
        None => Err(OptsError::NotUtf8 {
            key: what.into(),
            path: path.to_string_lossy().into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_keys_kept() {
        let s = Opts::new("virtio-net-pci")
            .set("netdev", "net0")
            .set("serial", "a,romfile=/etc/shadow")
            .set("romfile", "")
            .build()
            .unwrap();
        assert_eq!(
            s,
            "virtio-net-pci,netdev=net0,serial=a,,romfile=/etc/shadow,romfile="
        );
    }

    #[test]
    fn ids_must_be_well_formed() {
        for bad in ["x,romfile=/etc/shadow", "", "1a", "a/b", "a b", "ä"] {
            let e = Opts::new("e1000").set("id", bad).build().unwrap_err();
            assert!(matches!(e, OptsError::BadId { .. }), "{bad}: {e}");
        }
        assert!(Opts::new("e1000").set("id", "ua-a.b_c-1").build().is_ok());
        assert!(Opts::new("ide-hd").set("bus", "ide.0").build().is_ok());
    }

    #[test]
    fn keys_kinds_and_values_are_checked() {
        for bad in ["a,b", "a=b", "a..b", ".a", "a.", "A"] {
            assert_eq!(
                Opts::keyed().set(bad, "x").build().unwrap_err(),
                OptsError::BadKey(bad.into())
            );
        }
        assert_eq!(
            Opts::keyed().set("addr.type", "unix").build().unwrap(),
            "addr.type=unix"
        );
        assert_eq!(
            Opts::new("a,b").build().unwrap_err(),
            OptsError::BadKind("a,b".into())
        );
        assert!(matches!(
            Opts::keyed().set("serial", "a\nb").build().unwrap_err(),
            OptsError::BadValue { .. }
        ));
        assert!(matches!(
            Opts::keyed().set("serial", "a\0b").build().unwrap_err(),
            OptsError::BadValue { .. }
        ));
        assert_eq!(
            Opts::implied("unix:/a=b").build().unwrap_err(),
            OptsError::ImpliedHasEquals("unix:/a=b".into())
        );
        assert_eq!(Opts::implied("a,b").build().unwrap(), "a,,b");
    }

    #[test]
    fn the_first_error_wins() {
        let e = Opts::new("x")
            .set("id", "1")
            .set("B", "y")
            .build()
            .unwrap_err();
        assert!(matches!(e, OptsError::BadId { .. }));
    }

    #[test]
    fn non_utf8_paths_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/a/\xff"));
        assert!(matches!(
            Opts::keyed().set_path("file", p).build().unwrap_err(),
            OptsError::NotUtf8 { .. }
        ));
    }

    #[test]
    fn cpu_names_are_restricted() {
        assert_eq!(
            cpu("Skylake-Client", &[('+', "pcid"), ('-', "vmx")]).unwrap(),
            "Skylake-Client,+pcid,-vmx"
        );
        assert!(cpu("max,+x", &[]).is_err());
        assert!(cpu("max", &[('+', "a,b")]).is_err());
        assert!(cpu("max", &[('+', "a=b")]).is_err());
        assert!(cpu("max", &[('+', "")]).is_err());
    }

    /// QEMU's `opts_do_parse` / `get_opt_name_value` / `get_opt_value` (util/qemu-option.c),
    /// written from the grammar: a name runs to the first `=` or `,`; a value runs to the first
    /// `,` not followed by another `,`, and `,,` is one literal comma; without `=` the first
    /// item is the implied key's value (later ones would be flags).
    fn qemu_parse(s: &str, implied: Option<&str>) -> Vec<(String, String)> {
        fn value(p: &str) -> (String, &str) {
            let mut out = String::new();
            let mut p = p;
            loop {
                match p.find(',') {
                    Some(i) if p[i + 1..].starts_with(',') => {
                        out.push_str(&p[..=i]);
                        p = &p[i + 2..];
                    }
                    Some(i) => {
                        out.push_str(&p[..i]);
                        return (out, &p[i..]);
                    }
                    None => {
                        out.push_str(p);
                        return (out, "");
                    }
                }
            }
        }
        let mut out = Vec::new();
        let mut first = implied;
        let mut p = s;
        while !p.is_empty() {
            let len = p.find(['=', ',']).unwrap_or(p.len());
            let (name, val, rest) = if p[len..].starts_with('=') {
                let (v, rest) = value(&p[len + 1..]);
                (p[..len].to_string(), v, rest)
            } else if let Some(k) = first {
                let (v, rest) = value(p);
                (k.to_string(), v, rest)
            } else {
                (p[..len].to_string(), "on".to_string(), &p[len..])
            };
            out.push((name, val));
            first = None;
            p = rest.strip_prefix(',').unwrap_or(rest);
        }
        out
    }

    #[test]
    fn the_test_parser_reads_qemu_examples() {
        assert_eq!(
            qemu_parse("e1000,netdev=n,romfile=", Some("driver")),
            [
                ("driver".into(), "e1000".into()),
                ("netdev".into(), "n".into()),
                ("romfile".into(), String::new())
            ]
        );
        assert_eq!(
            qemu_parse("serial=a,,romfile=/x", None),
            [("serial".into(), "a,romfile=/x".into())]
        );
        assert_eq!(
            qemu_parse("serial=a,romfile=/x", None),
            [
                ("serial".into(), "a".into()),
                ("romfile".into(), "/x".into())
            ]
        );
    }

    const KEYS: &[&str] = &[
        "serial", "file", "path", "mac", "guest", "romfile", "hostfwd",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Any values (without NUL or line breaks) come back from QEMU's grammar exactly as
        /// they were set: no value can add, drop or change another option.
        #[test]
        fn values_round_trip_through_qemus_grammar(
            values in proptest::collection::vec(
                (0..KEYS.len(), "[^\\x00\\n\\r]{0,24}"),
                0..6,
            ),
            kind in proptest::option::of("[A-Za-z0-9][A-Za-z0-9_.-]{0,12}"),
        ) {
            let mut o = match &kind {
                Some(k) => Opts::new(k),
                None => Opts::keyed(),
            };
            let mut want = Vec::new();
            if let Some(k) = &kind {
                want.push(("driver".to_string(), k.clone()));
            }
            for (k, v) in &values {
                o = o.set(KEYS[*k], v);
                want.push((KEYS[*k].to_string(), v.clone()));
            }
            let built = o.build().unwrap();
            proptest::prop_assert_eq!(qemu_parse(&built, Some("driver")), want);
        }

        /// Arbitrary strings, including commas, `=`, NUL and line breaks, as a value or an id:
        /// either refused, or exactly one key with exactly that value.
        #[test]
        fn any_value_is_refused_or_kept_whole(v in "\\PC{0,16}|[,=a-z\\x00\\n]{0,8}", id in proptest::bool::ANY) {
            let key = if id { "id" } else { "serial" };
            match Opts::new("virtio-net-pci").set(key, &v).build() {
                Ok(s) => {
                    proptest::prop_assert!(!v.contains(['\0', '\n', '\r']));
                    proptest::prop_assert!(!id || is_qemu_id(&v));
                    proptest::prop_assert_eq!(
                        qemu_parse(&s, Some("driver")),
                        vec![("driver".to_string(), "virtio-net-pci".to_string()), (key.to_string(), v.clone())]
                    );
                }
                Err(OptsError::BadValue { .. }) => {
                    proptest::prop_assert!(v.contains(['\0', '\n', '\r']));
                }
                Err(OptsError::BadId { .. }) => proptest::prop_assert!(id && !is_qemu_id(&v)),
                Err(e) => proptest::prop_assert!(false, "unexpected {e}"),
            }
        }
    }
}

//! Go's `time.Duration` text form, as a `metav1.Duration` field carries it (`"2h0m0s"`,
//! `"90s"`, `"1.5h"`): Go's `time.ParseDuration` and `Duration.String`. KubeVirt's
//! `VirtualMachineExport.spec.ttlDuration` is such a field; admission, the export controller
//! and `virtctl vmexport --ttl` all read it through here.

/// Nanoseconds per unit, as `time.ParseDuration` accepts them.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Go's `time.ParseDuration`: a signed sequence of decimal numbers, each with an optional
/// fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`); `"0"` alone needs no unit.
/// Returns nanoseconds; the error is Go's message (`time: invalid duration "x"`).
pub fn parse(s: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {}", crate::names::go_quote(s));
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(if unit.is_empty() {
                format!(
                    "time: missing unit in duration {}",
                    crate::names::go_quote(s)
                )
            } else {
                format!(
                    "time: unknown unit {} in duration {}",
                    crate::names::go_quote(unit),
                    crate::names::go_quote(s)
                )
            });
        };
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| invalid())?
        };
        let mut part = whole.checked_mul(scale).ok_or_else(invalid)?;
        // The fraction, to nanosecond precision (Go truncates the same way).
        let mut f_scale = scale;
        for d in frac.bytes() {
            f_scale /= 10;
            if f_scale == 0 {
                break;
            }
            part += u128::from(d - b'0') * f_scale;
        }
        total = total.checked_add(part).ok_or_else(invalid)?;
        if total > i64::MAX as u128 + u128::from(neg) {
            return Err(invalid());
        }
        rest = after;
    }
    let total = i128::try_from(total).map_err(|_| invalid())?;
    let signed = if neg { -total } else { total };
    i64::try_from(signed).map_err(|_| invalid())
}

/// Go's `Duration.String`: `"2h0m0s"`, `"1m30s"`, `"1.5s"`, `"100ms"`, `"0s"`.
pub fn format(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let neg = nanos < 0;
    let mut u = nanos.unsigned_abs();
    let mut out = String::new();
    if u < 1_000_000_000 {
        let (div, unit) = if u < 1_000 {
            (1, "ns")
        } else if u < 1_000_000 {
            (1_000, "µs")
        } else {
            (1_000_000, "ms")
        };
        out.push_str(&fraction(u, div));
        out.push_str(unit);
    } else {
        let h = u / 3_600_000_000_000;
        u -= h * 3_600_000_000_000;
        let m = u / 60_000_000_000;
        u -= m * 60_000_000_000;
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&fraction(u, 1_000_000_000));
        out.push('s');
    }
    if neg {
        out.insert(0, '-');
    }
    out
}

/// `v / div` with the remainder as a decimal fraction without trailing zeros.
fn fraction(v: u64, div: u64) -> String {
    let (int, rem) = (v / div, v % div);
    if rem == 0 {
        return int.to_string();
    }
    let width = div.ilog10() as usize;
    let digits = format!("{rem:0width$}");
    format!("{int}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn parses_as_go() {
        assert_eq!(parse("2h"), Ok(7200 * S));
        assert_eq!(parse("2h0m0s"), Ok(7200 * S));
        assert_eq!(parse("1h30m"), Ok(5400 * S));
        assert_eq!(parse("1.5h"), Ok(5400 * S));
        assert_eq!(parse("90s"), Ok(90 * S));
        assert_eq!(parse(".5s"), Ok(S / 2));
        assert_eq!(parse("100ms"), Ok(S / 10));
        assert_eq!(parse("1µs"), Ok(1_000));
        assert_eq!(parse("-5s"), Ok(-5 * S));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("2562047h47m16.854775807s"), Ok(i64::MAX));
    }

    #[test]
    fn refuses_what_go_refuses() {
        assert_eq!(parse(""), Err("time: invalid duration \"\"".into()));
        assert_eq!(parse("abc"), Err("time: invalid duration \"abc\"".into()));
        assert_eq!(
            parse("10"),
            Err("time: missing unit in duration \"10\"".into())
        );
        assert_eq!(
            parse("10d"),
            Err("time: unknown unit \"d\" in duration \"10d\"".into())
        );
        assert!(parse("1h-5m").is_err());
        assert!(parse("9999999999999h").is_err());
        assert!(parse("2562047h47m16.854775808s").is_err());
        assert!(parse(".s").is_err());
        assert!(parse("-").is_err());
        assert!(parse("1s\0").is_err());
    }

    #[test]
    fn formats_as_go() {
        assert_eq!(format(7200 * S), "2h0m0s");
        assert_eq!(format(90 * S), "1m30s");
        assert_eq!(format(S + S / 2), "1.5s");
        assert_eq!(format(S / 10), "100ms");
        assert_eq!(format(1_500), "1.5µs");
        assert_eq!(format(0), "0s");
        assert_eq!(format(-5 * S), "-5s");
        for v in [7200 * S, 90 * S, S + S / 2, S / 10, 1_500, -5 * S, 42] {
            assert_eq!(parse(&format(v)), Ok(v));
        }
    }
}

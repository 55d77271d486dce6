//! Kubernetes resource quantities ("128Mi", "1.5G", "500m", "2e3") as exact numbers.
//!
//! The value is kept in nano-units in an `i128`, which is exact for every suffix Kubernetes
//! accepts (up to `E`/`Ei`) and rounds the way `resource.Quantity.Value()` does (up).

use std::fmt;

/// A parsed quantity, in nano-units (1 = 10^-9 of the base unit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity {
    nanos: i128,
}

/// The error `resource.ParseQuantity` reports, with the same wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)]
pub struct QuantityError;

const NANO: i128 = 1_000_000_000;

impl Quantity {
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        let s = s.trim();
        let split = s
            .char_indices()
            .find(|(i, c)| {
                !(c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '+' || *c == '-')))
            })
            .map(|(i, _)| i)
            .unwrap_or(s.len());
        let (num, suffix) = s.split_at(split);
        let (neg, digits) = match num.as_bytes().first() {
            Some(b'-') => (true, &num[1..]),
            Some(b'+') => (false, &num[1..]),
            _ => (false, num),
        };
        if digits.is_empty() || digits.matches('.').count() > 1 || digits == "." {
            return Err(QuantityError);
        }
        let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
        // Mantissa as an integer scaled by 10^frac_len.
        let mut mantissa: i128 = 0;
        for c in int_part.chars().chain(frac_part.chars()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(c as u8 - b'0')))
                .ok_or(QuantityError)?;
        }
        let frac_len = frac_part.len() as u32;
        // Multiplier as numerator/denominator-free: binary suffixes multiply, decimal ones shift.
        let (mul, exp10): (i128, i32) = match suffix {
            "" => (1, 0),
            "Ki" => (1 << 10, 0),
            "Mi" => (1 << 20, 0),
            "Gi" => (1 << 30, 0),
            "Ti" => (1 << 40, 0),
            "Pi" => (1 << 50, 0),
            "Ei" => (1 << 60, 0),
            "n" => (1, -9),
            "u" => (1, -6),
            "m" => (1, -3),
            "k" => (1, 3),
            "M" => (1, 6),
            "G" => (1, 9),
            "T" => (1, 12),
            "P" => (1, 15),
            "E" => (1, 18),
            e if e.starts_with(['e', 'E']) => {
                let exp: i32 = e[1..].parse().map_err(|_| QuantityError)?;
                if !(-30..=30).contains(&exp) {
                    return Err(QuantityError);
                }
                (1, exp)
            }
            _ => return Err(QuantityError),
        };
        // nanos = mantissa * mul * 10^(exp10 + 9 - frac_len)
        let shift = exp10 + 9 - frac_len as i32;
        let base = mantissa.checked_mul(mul).ok_or(QuantityError)?;
        let nanos = if shift >= 0 {
            base.checked_mul(10i128.checked_pow(shift as u32).ok_or(QuantityError)?)
                .ok_or(QuantityError)?
        } else {
            let d = 10i128.checked_pow((-shift) as u32).ok_or(QuantityError)?;
            // Kubernetes rounds sub-nano precision up.
            (base + d - 1) / d
        };
        Ok(Quantity {
            nanos: if neg { -nanos } else { nanos },
        })
    }

    /// From a k8s-openapi quantity (a string on the wire).
    pub fn from_k8s(
        q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    ) -> Result<Self, QuantityError> {
        Self::parse(&q.0)
    }

    /// The value rounded up to a whole unit, like `Quantity.Value()`.
    pub fn value(&self) -> i128 {
        div_ceil(self.nanos, NANO)
    }

    /// The value in thousandths rounded up, like `Quantity.MilliValue()`.
    pub fn milli(&self) -> i128 {
        div_ceil(self.nanos, 1_000_000)
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    pub fn from_value(v: i128) -> Self {
        Quantity { nanos: v * NANO }
    }
}

fn div_ceil(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b > 0 {
        q + 1
    } else {
        q
    }
}

impl fmt::Display for Quantity {
    /// Bytes-style rendering used in messages: exact binary suffix when it divides, else the
    /// plain value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos % NANO != 0 {
            return write!(f, "{}m", self.milli());
        }
        let v = self.nanos / NANO;
        for (suffix, size) in [("Gi", 1i128 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            if v != 0 && v % size == 0 {
                return write!(f, "{}{suffix}", v / size);
            }
        }
        write!(f, "{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_suffixes_kubernetes_accepts() {
        assert_eq!(Quantity::parse("64Mi").unwrap().value(), 64 << 20);
        assert_eq!(Quantity::parse("64M").unwrap().value(), 64_000_000);
        assert_eq!(Quantity::parse("1.5Gi").unwrap().value(), 3 << 29);
        assert_eq!(Quantity::parse("500m").unwrap().milli(), 500);
        assert_eq!(
            Quantity::parse("500m").unwrap().value(),
            1,
            "Value() rounds up"
        );
        assert_eq!(Quantity::parse("2").unwrap().milli(), 2000);
        assert_eq!(Quantity::parse("129e6").unwrap().value(), 129_000_000);
        assert_eq!(
            Quantity::parse("1E").unwrap().value(),
            1_000_000_000_000_000_000
        );
        assert!(Quantity::parse("-1Gi").unwrap().is_negative());
    }

    #[test]
    fn rejects_malformed_quantities() {
        for bad in ["", "Gi", "1GB", "1..2", "abc", "1 Gi", "true", "1e99"] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn displays_binary_sizes_compactly() {
        assert_eq!(Quantity::parse("1024Mi").unwrap().to_string(), "1Gi");
        assert_eq!(Quantity::parse("64M").unwrap().to_string(), "62500Ki");
        assert_eq!(Quantity::parse("100m").unwrap().to_string(), "100m");
    }
}

//! Checksums of downloaded bytes (`sha256:<hex>`, `sha512:<hex>`, `md5:<hex>`), as CDI's
//! `checksum` field of an HTTP source.

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};

/// Errors of a checksum.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    #[error("checksum {0:?} is not of the form <algorithm>:<hex> (sha256, sha512 or md5)")]
    Syntax(String),
    #[error("checksum algorithm {0:?} is not supported (use sha256, sha512 or md5)")]
    Algorithm(String),
    #[error("checksum mismatch: expected {expected}, the downloaded data has {actual}")]
    Mismatch { expected: String, actual: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
    Md5,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Md5 => "md5",
        }
    }
}

/// An expected checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: Algorithm,
    /// Lower-case hex.
    pub hex: String,
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl std::str::FromStr for Checksum {
    type Err = ChecksumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| ChecksumError::Syntax(s.to_string()))?;
        let algorithm = match alg.to_ascii_lowercase().as_str() {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            "md5" => Algorithm::Md5,
            _ => return Err(ChecksumError::Algorithm(alg.to_string())),
        };
        let want_len = match algorithm {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
            Algorithm::Md5 => 32,
        };
        let hex = hex.trim().to_ascii_lowercase();
        if hex.len() != want_len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChecksumError::Syntax(s.to_string()));
        }
        Ok(Self { algorithm, hex })
    }
}

/// A running hash.
#[derive(Clone, Debug)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
    Md5(Md5),
}

impl Hasher {
    pub fn new(a: Algorithm) -> Self {
        match a {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
            Algorithm::Md5 => Hasher::Md5(Md5::new()),
        }
    }

    pub fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
            Hasher::Md5(h) => h.update(b),
        }
    }

    pub fn finish(self) -> Checksum {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
            Hasher::Md5(h) => (Algorithm::Md5, hex::encode(h.finalize())),
        };
        Checksum { algorithm, hex }
    }
}

/// Compares, with an error naming both sums.
pub fn verify(expected: &Checksum, actual: &Checksum) -> Result<(), ChecksumError> {
    if expected == actual {
        Ok(())
    } else {
        Err(ChecksumError::Mismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_hash() {
        let c: Checksum = "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
            .parse()
            .unwrap();
        assert_eq!(Hasher::new(Algorithm::Sha256).finish(), c);
        let m: Checksum = "md5:d41d8cd98f00b204e9800998ecf8427e".parse().unwrap();
        assert_eq!(Hasher::new(Algorithm::Md5).finish(), m);
        assert!("sha1:abc".parse::<Checksum>().is_err());
        assert!("sha256:xyz".parse::<Checksum>().is_err());
        let e = verify(&c, &m).unwrap_err().to_string();
        assert!(
            e.contains("expected sha256:e3b0") && e.contains("md5:d41d"),
            "{e}"
        );
    }
}

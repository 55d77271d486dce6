//! KubeVirt's multi-parameter flag values, `key:value,key:value`
//! (kubevirt/kubevirt pkg/virtctl/create/params), with its error wording.

use crate::client::Error;
use std::collections::BTreeMap;

/// `failed to parse "--FLAG" flag: MESSAGE`, KubeVirt's wording for a bad flag.
pub fn flag_err(flag: &str, message: impl std::fmt::Display) -> Error {
    Error::Usage(format!("failed to parse \"--{flag}\" flag: {message}"))
}

/// The parameters of one flag value, taken out one by one; [`Params::finish`] refuses the rest.
#[derive(Debug)]
pub struct Params {
    flag: String,
    map: BTreeMap<String, String>,
}

impl Params {
    /// Splits `key:value,key:value` (the value may contain further colons).
    pub fn parse(flag: &str, s: &str) -> Result<Params, Error> {
        if s.is_empty() {
            return Err(flag_err(flag, "params may not be empty"));
        }
        let mut map = BTreeMap::new();
        for param in s.split(',') {
            let Some((k, v)) = param.split_once(':') else {
                return Err(flag_err(
                    flag,
                    format!("params need to have at least one colon: {param}"),
                ));
            };
            map.insert(k.to_string(), v.to_string());
        }
        Ok(Params {
            flag: flag.to_string(),
            map,
        })
    }

    pub fn take(&mut self, key: &str) -> Option<String> {
        self.map.remove(key)
    }

    pub fn peek(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// A `uint` parameter (KubeVirt's `bootorder`).
    pub fn take_uint(&mut self, key: &str) -> Result<Option<u32>, Error> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<u32>()
                .map(Some)
                .map_err(|e| flag_err(&self.flag, format!("failed to parse param \"{key}\": {e}"))),
        }
    }

    /// A `resource.Quantity` parameter (`size`).
    pub fn take_quantity(&mut self, key: &str) -> Result<Option<String>, Error> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => {
                check_quantity(&v).map_err(|m| {
                    flag_err(&self.flag, format!("failed to parse param \"{key}\": {m}"))
                })?;
                Ok(Some(v))
            }
        }
    }

    /// Refuses parameters nobody took, as KubeVirt does.
    pub fn finish(self) -> Result<(), Error> {
        if self.map.is_empty() {
            return Ok(());
        }
        let unknown: Vec<String> = self.map.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        Err(flag_err(
            &self.flag,
            format!("unknown param(s): {}", unknown.join(",")),
        ))
    }
}

/// A Kubernetes quantity (`512Mi`, `1G`, `50Gi`), or the reason it is not one.
pub fn check_quantity(s: &str) -> Result<(), String> {
    kubevirt_api::quantity::Quantity::parse(s)
        .map(|_| ())
        .map_err(|_| "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'".to_string())
}

/// `prefix/name` or `name` (KubeVirt's `SplitPrefixedName`).
pub fn split_prefixed_name(s: &str) -> Result<(Option<String>, String), String> {
    let parts: Vec<&str> = s.split('/').collect();
    let (prefix, name) = match parts.as_slice() {
        [name] => (None, *name),
        [prefix, name] => (Some(prefix.to_string()), *name),
        _ => {
            return Err(format!(
                "invalid count {} of slashes in prefix/name",
                parts.len()
            ))
        }
    };
    if name.is_empty() {
        return Err("name cannot be empty".into());
    }
    Ok((prefix.filter(|p| !p.is_empty()), name.to_string()))
}

//! Multus' `NetworkAttachmentDefinition` (`k8s.cni.cncf.io/v1`): a CNI configuration, by name,
//! that a VMI's `multus` network attaches (KubeVirt's secondary networks).
//!
//! The configuration is run as root on the node by virt-handler, so what it may ask for is
//! limited to what cannot reach beyond the VMI's network namespace and the node's own
//! interfaces ([`check_config`]), at admission and again before it runs:
//! - plugin types from an allowlist of the standard plugins ([`PLUGINS`], [`IPAM_PLUGINS`]);
//!   `host-device` (moves a host interface away), `dhcp` (needs a daemon), `tuning` (writes
//!   sysctls) and any other binary are refused;
//! - no host paths: IPAM's `dataDir` (the node chooses where leases live) and `resolvConf`
//!   (would read any host file into the result) are refused;
//! - no runtime keys a runtime passes itself (`runtimeConfig`, `prevResult`, `args`'s
//!   `cni` arguments are allowed as Multus allows them).

use crate::field::{FieldError, Path};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `spec` of a NetworkAttachmentDefinition: the CNI configuration as a JSON string (a single
/// plugin's `.conf` or a `.conflist`).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "k8s.cni.cncf.io",
    version = "v1",
    kind = "NetworkAttachmentDefinition",
    plural = "network-attachment-definitions",
    singular = "network-attachment-definition",
    namespaced,
    shortname = "net-attach-def",
    derive = "PartialEq",
    derive = "Default",
    doc = "NetworkAttachmentDefinition (k8s.cni.cncf.io/v1): Multus' CNI configuration for a secondary network."
)]
pub struct NetworkAttachmentDefinitionSpec {
    /// NetworkAttachmentDefinition config is a JSON-formatted CNI configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// The main plugins a NetworkAttachmentDefinition may name.
pub const PLUGINS: &[&str] = &[
    "bridge",
    "macvlan",
    "ipvlan",
    "ptp",
    "vlan",
    "bandwidth",
    "portmap",
    "firewall",
    "sbr",
];

/// The SR-IOV network type. Its configuration is not run as a CNI plugin here: it names the
/// virtual function to pass through (`deviceID`, a PCI address, as sriov-cni reads it when no
/// device plugin hands one over), which the launcher gives the guest as a vfio-pci device.
pub const SRIOV: &str = "sriov";

/// A PCI address (`0000:81:10.2`: domain, bus, device ≤ 1f, function ≤ 7) in lower case, or
/// `None`.
pub fn pci_address(s: &str) -> Option<String> {
    let (domain, rest) = s.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    let hex = |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = hex(domain, 4)
        && hex(bus, 2)
        && hex(device, 2)
        && u8::from_str_radix(device, 16).is_ok_and(|d| d <= 0x1f)
        && function.len() == 1
        && function.bytes().all(|b| (b'0'..=b'7').contains(&b));
    ok.then(|| s.to_ascii_lowercase())
}

/// The virtual function an SR-IOV configuration names (`{"type": "sriov", "deviceID": ...}`,
/// alone or as the first plugin of a list), when the configuration is one.
pub fn sriov_device(config: &str) -> Option<Result<String, String>> {
    let v: Value = serde_json::from_str(config).ok()?;
    let p = match v.get("plugins").and_then(Value::as_array) {
        Some(list) => list.first()?.clone(),
        None => v,
    };
    if p.get("type").and_then(Value::as_str) != Some(SRIOV) {
        return None;
    }
    Some(match p.get("deviceID").and_then(Value::as_str) {
        Some(id) => pci_address(id)
            .ok_or_else(|| format!("\"deviceID\" {id:?} is not a PCI address (0000:81:10.2)")),
        None => Err(
            "an sriov network needs \"deviceID\": the PCI address of the virtual function \
             (there is no SR-IOV device plugin on this node)"
                .into(),
        ),
    })
}

/// The IPAM plugins it may name.
pub const IPAM_PLUGINS: &[&str] = &["host-local", "static"];

/// Longest configuration accepted (Multus has no limit; ours keeps the node's work bounded).
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// A CNI network name, plugin type or interface name: 1-`max` characters that may become
/// part of a file name or a binary's name (not `.` or `..`). The node's CNI runtime checks
/// its names with this too.
pub fn plain(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks a NetworkAttachmentDefinition's `spec.config` (`field` is its path) against what
/// the node will run; each problem names the key and what is allowed. An empty config is
/// allowed, as Multus allows it (the network is then unusable and says so at attach time).
pub fn check_config(field: &Path, config: &str) -> Vec<FieldError> {
    let f = field.as_str();
    if config.len() > MAX_CONFIG_BYTES {
        return vec![FieldError::invalid(
            f,
            format!("the CNI configuration is longer than {MAX_CONFIG_BYTES} bytes"),
        )];
    }
    let value: Value = match serde_json::from_str(config) {
        Ok(v) => v,
        Err(e) => {
            return vec![FieldError::invalid(
                f,
                format!("the CNI configuration is not JSON: {e}"),
            )]
        }
    };
    let Some(obj) = value.as_object() else {
        return vec![FieldError::invalid(
            f,
            "the CNI configuration must be a JSON object",
        )];
    };
    if let Some(device) = sriov_device(config) {
        return match device {
            Ok(_) => Vec::new(),
            Err(why) => vec![FieldError::invalid(f, why)],
        };
    }
    let mut errs = Vec::new();
    match obj.get("name").and_then(Value::as_str) {
        Some(n) if plain(n, 128) => {}
        Some(n) => errs.push(FieldError::invalid(
            f,
            format!("CNI network name {n:?} must be 1-128 characters of [A-Za-z0-9_.-]"),
        )),
        None => errs.push(FieldError::required(
            f,
            "the CNI configuration needs a \"name\"",
        )),
    }
    let plugins: Vec<&Value> = match obj.get("plugins") {
        Some(Value::Array(list)) if !list.is_empty() => list.iter().collect(),
        Some(_) => {
            errs.push(FieldError::invalid(
                f,
                "\"plugins\" must be a non-empty list of plugin configurations",
            ));
            vec![]
        }
        None => vec![&value],
    };
    for (i, p) in plugins.iter().enumerate() {
        let at = if obj.contains_key("plugins") {
            format!("plugins[{i}]")
        } else {
            "the configuration".to_string()
        };
        let Some(p) = p.as_object() else {
            errs.push(FieldError::invalid(f, format!("{at} must be an object")));
            continue;
        };
        match p.get("type").and_then(Value::as_str) {
            Some(t) if PLUGINS.contains(&t) => {}
            Some(t) => errs.push(FieldError::not_supported(
                f,
                format!(
                    "{at}: CNI plugin type {t:?} is not allowed on this node; use one of: {}",
                    PLUGINS.join(", ")
                ),
            )),
            None => errs.push(FieldError::required(f, format!("{at} needs a \"type\""))),
        }
        for key in ["runtimeConfig", "prevResult"] {
            if p.contains_key(key) {
                errs.push(FieldError::invalid(
                    f,
                    format!("{at}: {key:?} is set by the runtime, not by the configuration"),
                ));
            }
        }
        for key in ["bridge", "master"] {
            if let Some(v) = p.get(key) {
                if !v.as_str().is_some_and(|s| plain(s, 15)) {
                    errs.push(FieldError::invalid(
                        f,
                        format!("{at}: {key:?} must be an interface name (1-15 characters of [A-Za-z0-9_.-])"),
                    ));
                }
            }
        }
        if let Some(ipam) = p.get("ipam") {
            let Some(ipam) = ipam.as_object() else {
                errs.push(FieldError::invalid(
                    f,
                    format!("{at}: \"ipam\" must be an object"),
                ));
                continue;
            };
            match ipam.get("type").and_then(Value::as_str) {
                Some(t) if IPAM_PLUGINS.contains(&t) => {}
                // An empty ipam ({}) means none, as the plugins read it.
                None if ipam.is_empty() => {}
                Some(t) => errs.push(FieldError::not_supported(
                    f,
                    format!(
                        "{at}: IPAM plugin type {t:?} is not allowed on this node; use one of: {}",
                        IPAM_PLUGINS.join(", ")
                    ),
                )),
                None => errs.push(FieldError::required(
                    f,
                    format!("{at}: \"ipam\" needs a \"type\""),
                )),
            }
            for key in ["dataDir", "resolvConf"] {
                if ipam.contains_key(key) {
                    errs.push(FieldError::invalid(
                        f,
                        format!(
                            "{at}: ipam {key:?} names a host path; remove it (the node keeps \
                             leases in its own directory)"
                        ),
                    ));
                }
            }
        }
    }
    errs
}

/// Admission of a NetworkAttachmentDefinition: its configuration is checked.
pub fn validate_nad(nad: &NetworkAttachmentDefinition) -> Vec<FieldError> {
    match nad.spec.config.as_deref() {
        Some(c) if !c.trim().is_empty() => check_config(&Path::root("spec").child("config"), c),
        _ => Vec::new(),
    }
}

/// A `multus.networkName` (`name` or `namespace/name`) resolved against the VMI's namespace;
/// `None` when no object can have that name (it becomes part of an API path: `a/../b` must
/// never be requested).
pub fn network_name(vmi_namespace: &str, network_name: &str) -> Option<(String, String)> {
    let (ns, name) = network_name
        .split_once('/')
        .unwrap_or((vmi_namespace, network_name));
    let valid = crate::names::dns1123_label(ns).is_none()
        && crate::names::dns1123_subdomain(name).is_none();
    valid.then(|| (ns.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(config: &str) -> Vec<String> {
        check_config(&Path::root("spec").child("config"), config)
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn standard_bridge_and_macvlan_configs_pass() {
        assert!(errs(r#"{"cniVersion":"0.3.1","name":"blue","type":"bridge","bridge":"br-blue","ipam":{"type":"host-local","subnet":"192.168.50.0/24"}}"#).is_empty());
        assert!(errs(r#"{"cniVersion":"1.0.0","name":"m","plugins":[{"type":"macvlan","master":"eth0","mode":"bridge","ipam":{"type":"static","addresses":[{"address":"10.1.1.2/24"}]}}]}"#).is_empty());
        assert!(errs(r#"{"name":"l2","type":"bridge","bridge":"br1","ipam":{}}"#).is_empty());
    }

    #[test]
    fn hostile_configs_are_refused_with_the_key_named() {
        for (config, says) in [
            ("not json", "not JSON"),
            ("[]", "JSON object"),
            (r#"{"type":"bridge"}"#, "\"name\""),
            (r#"{"name":"../x","type":"bridge"}"#, "network name"),
            (r#"{"name":"x","type":"../../bin/sh"}"#, "not allowed"),
            (
                r#"{"name":"x","type":"host-device","device":"eth0"}"#,
                "not allowed",
            ),
            (
                r#"{"name":"x","type":"tuning","sysctl":{"net.ipv4.ip_forward":"1"}}"#,
                "not allowed",
            ),
            (
                r#"{"name":"x","type":"bridge","ipam":{"type":"host-local","dataDir":"/etc"}}"#,
                "dataDir",
            ),
            (
                r#"{"name":"x","type":"bridge","ipam":{"type":"host-local","resolvConf":"/etc/shadow"}}"#,
                "resolvConf",
            ),
            (
                r#"{"name":"x","type":"bridge","ipam":{"type":"dhcp"}}"#,
                "IPAM plugin type",
            ),
            (
                r#"{"name":"x","type":"bridge","bridge":"a,b;rm -rf /"}"#,
                "interface name",
            ),
            (
                r#"{"name":"x","type":"macvlan","master":"averyveryverylongname"}"#,
                "interface name",
            ),
            (
                r#"{"name":"x","type":"bridge","runtimeConfig":{}}"#,
                "runtimeConfig",
            ),
            (r#"{"name":"x","plugins":[]}"#, "non-empty"),
            (r#"{"name":"x","plugins":[1]}"#, "must be an object"),
        ] {
            let e = errs(config);
            assert!(e.iter().any(|m| m.contains(says)), "{config}: {e:?}");
        }
        let huge = format!(
            r#"{{"name":"x","type":"bridge","pad":"{}"}}"#,
            "a".repeat(70_000)
        );
        assert!(errs(&huge)[0].contains("longer than"));
    }

    /// An SR-IOV network names its virtual function by PCI address; nothing else reaches the
    /// host from it.
    #[test]
    fn sriov_networks_name_a_pci_address() {
        let ok = r#"{"cniVersion":"0.3.1","name":"sriov-net","type":"sriov","deviceID":"0000:81:10.2","vlan":100}"#;
        assert!(errs(ok).is_empty());
        assert_eq!(sriov_device(ok), Some(Ok("0000:81:10.2".into())));
        assert_eq!(sriov_device(r#"{"name":"b","type":"bridge"}"#), None);
        for (config, says) in [
            (r#"{"name":"s","type":"sriov"}"#, "needs \"deviceID\""),
            (
                r#"{"name":"s","type":"sriov","deviceID":"../../sys"}"#,
                "not a PCI address",
            ),
            (
                r#"{"name":"s","type":"sriov","deviceID":"0000:81:20.0"}"#,
                "not a PCI address",
            ),
            (
                r#"{"name":"s","type":"sriov","deviceID":"0000:81:10.8"}"#,
                "not a PCI address",
            ),
            (
                r#"{"name":"s","type":"sriov","deviceID":"0000:81:10.2,x=y"}"#,
                "not a PCI address",
            ),
        ] {
            let e = errs(config);
            assert!(e.iter().any(|m| m.contains(says)), "{config}: {e:?}");
        }
        assert_eq!(pci_address("0000:AF:1F.7").as_deref(), Some("0000:af:1f.7"));
    }

    #[test]
    fn network_names_resolve_against_the_vmi_namespace() {
        assert_eq!(
            network_name("ns", "blue"),
            Some(("ns".into(), "blue".into()))
        );
        assert_eq!(
            network_name("ns", "other/blue"),
            Some(("other".into(), "blue".into()))
        );
        for hostile in [
            "a/../b",
            "../secrets",
            "ns/b/c",
            "ns/",
            "/b",
            "NS/b",
            "ns/b?x=1",
            "",
        ] {
            assert_eq!(network_name("ns", hostile), None, "{hostile}");
        }
    }
}

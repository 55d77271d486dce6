//! Service address allocation, as kube-apiserver's service registry does it: a `clusterIP`
//! from the service CIDR and a `nodePort` from the node port range for each port of a
//! NodePort or LoadBalancer Service. Requested values are checked (in range, not taken);
//! a Service keeps its addresses across updates.
//!
//! Allocation reads the other stored Services, so writes of Services are serialized by
//! [`crate::objects::ApiServer`] while they allocate.

use crate::error::{ApiError, ApiResult};
use crate::store::{Key, Store};
use kubevirt_api::FieldError;
use serde_json::{json, Value};
use std::net::Ipv4Addr;

/// kube-apiserver's default `--service-cluster-ip-range`.
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
/// kube-apiserver's default `--service-node-port-range`.
pub const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;
/// The address of the `kubernetes` Service in `default`: the first of the range.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

fn in_cidr(ip: Ipv4Addr) -> bool {
    let (base, bits) = SERVICE_CIDR;
    let mask = u32::MAX << (32 - bits);
    u32::from(ip) & mask == u32::from(base) & mask
}

/// Addresses and node ports in use by Services other than `except` (namespace, name).
fn in_use(store: &Store, except: (&str, &str)) -> (Vec<Ipv4Addr>, Vec<i64>) {
    let (all, _) = store.list(&Key::prefix("", "services", None));
    let mut ips = Vec::new();
    let mut ports = Vec::new();
    for o in all {
        if (o.key.namespace(), o.key.name()) == except {
            continue;
        }
        let v = o.value();
        if let Some(ip) = v["spec"]["clusterIP"]
            .as_str()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        {
            ips.push(ip);
        }
        for p in v["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(n) = p["nodePort"].as_i64() {
                ports.push(n);
            }
        }
    }
    (ips, ports)
}

fn invalid(name: &str, errs: Vec<FieldError>) -> ApiError {
    ApiError::invalid(
        "Service",
        "",
        name,
        &format!("Service \"{name}\" is invalid: "),
        &errs,
    )
}

/// Fills in `spec.clusterIP(s)`, `ipFamilies`, `ipFamilyPolicy` and node ports of an
/// admitted Service; `old` is the stored Service on update.
pub fn allocate(store: &Store, obj: &mut Value, old: Option<&Value>) -> ApiResult<()> {
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let ty = obj["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    let spec = &mut obj["spec"];
    if ty == "ExternalName" {
        if let Some(s) = spec.as_object_mut() {
            for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                s.remove(k);
            }
        }
        return Ok(());
    }
    let (ips, node_ports) = in_use(store, (&ns, &name));
    let mut errs = Vec::new();
    let old_ip = old
        .and_then(|o| o["spec"]["clusterIP"].as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let asked = spec["clusterIP"]
        .as_str()
        .or_else(|| spec["clusterIPs"][0].as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let ip = match (old_ip, asked) {
        (Some(old), Some(new)) if old != new => {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                format!("Invalid value: {new:?}: may not change once set"),
            ));
            old
        }
        (Some(old), _) => old,
        (None, Some(none)) if none == "None" => none,
        (None, Some(asked)) => match asked.parse::<Ipv4Addr>() {
            Ok(ip) if !in_cidr(ip) => {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    format!(
                        "Invalid value: {asked:?}: failed to allocate IP {asked}: the provided IP ({asked}) is not in the valid range. The range of valid IPs is {}/{}",
                        SERVICE_CIDR.0, SERVICE_CIDR.1
                    ),
                ));
                asked
            }
            Ok(ip) if ips.contains(&ip) => {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    format!("Invalid value: {asked:?}: failed to allocate IP {asked}: provided IP is already allocated"),
                ));
                asked
            }
            Ok(_) => asked,
            Err(_) => {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    format!("Invalid value: {asked:?}: must be a valid IPv4 address in {}/{} (this server serves IPv4 only)", SERVICE_CIDR.0, SERVICE_CIDR.1),
                ));
                asked
            }
        },
        (None, None) => {
            let base = u32::from(SERVICE_CIDR.0);
            let size = 1u32 << (32 - SERVICE_CIDR.1);
            // .1 is the kubernetes Service's; the broadcast address is never handed out.
            match (2..size - 1)
                .map(|i| Ipv4Addr::from(base + i))
                .find(|ip| !ips.contains(ip))
            {
                Some(ip) => ip.to_string(),
                None => {
                    return Err(ApiError::new(
                        500,
                        "InternalError",
                        "Internal error occurred: failed to allocate a serviceIP: range is full",
                    ))
                }
            }
        }
    };
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    if ip != "None" || spec["ipFamilies"].is_null() {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    spec["ipFamilyPolicy"] = json!("SingleStack");

    let wants_node_ports = matches!(ty.as_str(), "NodePort" | "LoadBalancer");
    let old_ports: Vec<Value> = old
        .and_then(|o| o["spec"]["ports"].as_array().cloned())
        .unwrap_or_default();
    let mut taken = node_ports;
    if let Some(ports) = spec["ports"].as_array_mut() {
        for (i, p) in ports.iter_mut().enumerate() {
            if !wants_node_ports {
                if let Some(m) = p.as_object_mut() {
                    m.remove("nodePort");
                }
                continue;
            }
            let requested = p["nodePort"].as_i64().filter(|n| *n != 0);
            // An update keeps the node port of the same port.
            let kept = old_ports
                .iter()
                .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                .and_then(|o| o["nodePort"].as_i64());
            let n = match (requested, kept) {
                (Some(r), Some(k)) if r == k => r,
                (Some(r), _) => {
                    if !NODE_PORTS.contains(&r) {
                        errs.push(FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            format!("Invalid value: {r}: provided port is not in the valid range. The range of valid ports is {}-{}", NODE_PORTS.start(), NODE_PORTS.end()),
                        ));
                    } else if taken.contains(&r) {
                        errs.push(FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            format!("Invalid value: {r}: provided port is already allocated"),
                        ));
                    }
                    r
                }
                (None, Some(k)) => k,
                (None, None) => {
                    match NODE_PORTS.clone().find(|n| !taken.contains(n)) {
                        Some(n) => n,
                        None => return Err(ApiError::new(
                            500,
                            "InternalError",
                            "Internal error occurred: failed to allocate a nodePort: range is full",
                        )),
                    }
                }
            };
            taken.push(n);
            p["nodePort"] = json!(n);
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(invalid(&name, errs))
    }
}

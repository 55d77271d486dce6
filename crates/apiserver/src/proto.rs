//! Decoding of the Kubernetes protobuf encoding for the few core kinds kubectl sends that way.
//!
//! kubectl's typed clients (`kubectl create namespace|configmap|secret`) send bodies as
//! `application/vnd.kubernetes.protobuf`: the magic `k8s\0` and a `runtime.Unknown` envelope
//! around the object's protobuf (k8s.io/api/core/v1/generated.proto). We decode those kinds
//! into JSON; everything else is refused with 415 and a message to send JSON.

use base64::Engine;
use serde_json::{json, Map, Value};

struct Reader<'a> {
    buf: &'a [u8],
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                if len > self.buf.len() {
                    return Err("truncated field".into());
                }
                let (data, rest) = self.buf.split_at(len);
                self.buf = rest;
                Field::Bytes(data)
            }
            1 => {
                if self.buf.len() < 8 {
                    return Err("truncated fixed64".into());
                }
                self.buf = &self.buf[8..];
                Field::Varint(0)
            }
            5 => {
                if self.buf.len() < 4 {
                    return Err("truncated fixed32".into());
                }
                self.buf = &self.buf[4..];
                Field::Varint(0)
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        Ok(Some((num, field)))
    }
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut r = Reader { buf };
    let mut out = Vec::new();
    while let Some(f) = r.next()? {
        out.push(f);
    }
    Ok(out)
}

fn string(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in a string field".to_string())
}

/// A `map<string, string>` (or bytes, base64-encoded as JSON carries them) entry.
fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), String> {
    let mut k = String::new();
    let mut v = Value::String(String::new());
    for (n, f) in fields(b)? {
        if let Field::Bytes(d) = f {
            match n {
                1 => k = string(d)?,
                2 if bytes_value => v = json!(base64::engine::general_purpose::STANDARD.encode(d)),
                2 => v = json!(string(d)?),
                _ => {}
            }
        }
    }
    Ok((k, v))
}

fn object_meta(b: &[u8]) -> Result<Value, String> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(d)) => {
                m.insert("name".into(), json!(string(d)?));
            }
            (2, Field::Bytes(d)) => {
                m.insert("generateName".into(), json!(string(d)?));
            }
            (3, Field::Bytes(d)) => {
                m.insert("namespace".into(), json!(string(d)?));
            }
            (6, Field::Bytes(d)) => {
                m.insert("resourceVersion".into(), json!(string(d)?));
            }
            (11, Field::Bytes(d)) => {
                let (k, v) = map_entry(d, false)?;
                labels.insert(k, v);
            }
            (12, Field::Bytes(d)) => {
                let (k, v) = map_entry(d, false)?;
                annotations.insert(k, v);
            }
            (14, Field::Bytes(d)) => finalizers.push(json!(string(d)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(m))
}

/// `k8s.io.apimachinery.pkg.util.intstr.IntOrString`: type (0 int, 1 string), intVal, strVal.
fn int_or_string(b: &[u8]) -> Result<Value, String> {
    let (mut ty, mut int, mut s) = (0, 0i64, String::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Varint(v)) => ty = v,
            (2, Field::Varint(v)) => int = v as i32 as i64,
            (3, Field::Bytes(d)) => s = string(d)?,
            _ => {}
        }
    }
    Ok(if ty == 1 { json!(s) } else { json!(int) })
}

fn service_port(b: &[u8]) -> Result<Value, String> {
    let mut p = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(d)) if !d.is_empty() => {
                p.insert("name".into(), json!(string(d)?));
            }
            (2, Field::Bytes(d)) if !d.is_empty() => {
                p.insert("protocol".into(), json!(string(d)?));
            }
            (3, Field::Varint(v)) => {
                p.insert("port".into(), json!(v as i32));
            }
            (4, Field::Bytes(d)) => {
                p.insert("targetPort".into(), int_or_string(d)?);
            }
            (5, Field::Varint(v)) if v != 0 => {
                p.insert("nodePort".into(), json!(v as i32));
            }
            (6, Field::Bytes(d)) if !d.is_empty() => {
                p.insert("appProtocol".into(), json!(string(d)?));
            }
            _ => {}
        }
    }
    Ok(Value::Object(p))
}

/// `ServiceSpec`: the fields `kubectl create service` and typed clients set.
fn service_spec(b: &[u8]) -> Result<Value, String> {
    let mut spec = Map::new();
    let mut ports = Vec::new();
    let mut selector = Map::new();
    let mut lists: [(&str, Vec<Value>); 3] = [
        ("externalIPs", vec![]),
        ("clusterIPs", vec![]),
        ("ipFamilies", vec![]),
    ];
    for (n, f) in fields(b)? {
        let key = match n {
            3 => "clusterIP",
            4 => "type",
            7 => "sessionAffinity",
            8 => "loadBalancerIP",
            10 => "externalName",
            11 => "externalTrafficPolicy",
            17 => "ipFamilyPolicy",
            21 => "loadBalancerClass",
            22 => "internalTrafficPolicy",
            _ => "",
        };
        match (n, f) {
            (1, Field::Bytes(d)) => ports.push(service_port(d)?),
            (2, Field::Bytes(d)) => {
                let (k, v) = map_entry(d, false)?;
                selector.insert(k, v);
            }
            (5, Field::Bytes(d)) => lists[0].1.push(json!(string(d)?)),
            (18, Field::Bytes(d)) => lists[1].1.push(json!(string(d)?)),
            (19, Field::Bytes(d)) => lists[2].1.push(json!(string(d)?)),
            (13, Field::Varint(v)) => {
                spec.insert("publishNotReadyAddresses".into(), json!(v != 0));
            }
            (20, Field::Varint(v)) => {
                spec.insert("allocateLoadBalancerNodePorts".into(), json!(v != 0));
            }
            // Go's protobuf writes unset strings as "": they stay unset.
            (_, Field::Bytes(d)) if !key.is_empty() && !d.is_empty() => {
                spec.insert(key.into(), json!(string(d)?));
            }
            _ => {}
        }
    }
    if !ports.is_empty() {
        spec.insert("ports".into(), Value::Array(ports));
    }
    if !selector.is_empty() {
        spec.insert("selector".into(), Value::Object(selector));
    }
    for (k, v) in lists {
        if !v.is_empty() {
            spec.insert(k.into(), Value::Array(v));
        }
    }
    Ok(Value::Object(spec))
}

/// How one protobuf field maps to JSON, for the kinds decoded by table ([`decode_table`]).
enum Ty {
    Str,
    RepStr,
    Int,
    Bool,
    Msg(&'static [F]),
    RepMsg(&'static [F]),
    /// ObjectMeta.
    Meta,
}

/// (field number, JSON name, type).
type F = (u64, &'static str, Ty);

const RESOURCE_ATTRIBUTES: &[F] = &[
    (1, "namespace", Ty::Str),
    (2, "verb", Ty::Str),
    (3, "group", Ty::Str),
    (4, "version", Ty::Str),
    (5, "resource", Ty::Str),
    (6, "subresource", Ty::Str),
    (7, "name", Ty::Str),
];
const NON_RESOURCE_ATTRIBUTES: &[F] = &[(1, "path", Ty::Str), (2, "verb", Ty::Str)];
const ACCESS_REVIEW_SPEC: &[F] = &[
    (1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES)),
    (2, "nonResourceAttributes", Ty::Msg(NON_RESOURCE_ATTRIBUTES)),
    (3, "user", Ty::Str),
    (4, "groups", Ty::RepStr),
    (6, "uid", Ty::Str),
];
const RULES_REVIEW_SPEC: &[F] = &[(1, "namespace", Ty::Str)];
const TOKEN_REQUEST_SPEC: &[F] = &[
    (1, "audiences", Ty::RepStr),
    (4, "expirationSeconds", Ty::Int),
];
const POLICY_RULE: &[F] = &[
    (1, "verbs", Ty::RepStr),
    (2, "apiGroups", Ty::RepStr),
    (3, "resources", Ty::RepStr),
    (4, "resourceNames", Ty::RepStr),
    (5, "nonResourceURLs", Ty::RepStr),
];
const SUBJECT: &[F] = &[
    (1, "kind", Ty::Str),
    (2, "apiGroup", Ty::Str),
    (3, "name", Ty::Str),
    (4, "namespace", Ty::Str),
];
const ROLE_REF: &[F] = &[
    (1, "apiGroup", Ty::Str),
    (2, "kind", Ty::Str),
    (3, "name", Ty::Str),
];

/// The kinds decoded by table: (kind, fields of the object).
const TABLES: &[(&str, &[F])] = &[
    (
        "SelfSubjectAccessReview",
        &[
            (1, "metadata", Ty::Meta),
            (2, "spec", Ty::Msg(ACCESS_REVIEW_SPEC)),
        ],
    ),
    (
        "SubjectAccessReview",
        &[
            (1, "metadata", Ty::Meta),
            (2, "spec", Ty::Msg(ACCESS_REVIEW_SPEC)),
        ],
    ),
    (
        "SelfSubjectRulesReview",
        &[
            (1, "metadata", Ty::Meta),
            (2, "spec", Ty::Msg(RULES_REVIEW_SPEC)),
        ],
    ),
    (
        "TokenRequest",
        &[
            (1, "metadata", Ty::Meta),
            (2, "spec", Ty::Msg(TOKEN_REQUEST_SPEC)),
        ],
    ),
    (
        "ServiceAccount",
        &[
            (1, "metadata", Ty::Meta),
            (4, "automountServiceAccountToken", Ty::Bool),
        ],
    ),
    (
        "Role",
        &[
            (1, "metadata", Ty::Meta),
            (2, "rules", Ty::RepMsg(POLICY_RULE)),
        ],
    ),
    (
        "ClusterRole",
        &[
            (1, "metadata", Ty::Meta),
            (2, "rules", Ty::RepMsg(POLICY_RULE)),
        ],
    ),
    (
        "RoleBinding",
        &[
            (1, "metadata", Ty::Meta),
            (2, "subjects", Ty::RepMsg(SUBJECT)),
            (3, "roleRef", Ty::Msg(ROLE_REF)),
        ],
    ),
    (
        "ClusterRoleBinding",
        &[
            (1, "metadata", Ty::Meta),
            (2, "subjects", Ty::RepMsg(SUBJECT)),
            (3, "roleRef", Ty::Msg(ROLE_REF)),
        ],
    ),
];

/// Decodes a message by its table. Go writes unset strings as "": those stay unset.
fn decode_table(b: &[u8], table: &[F]) -> Result<Value, String> {
    let mut out = Map::new();
    for (n, f) in fields(b)? {
        let Some((_, name, ty)) = table.iter().find(|(num, _, _)| *num == n) else {
            continue;
        };
        let name = name.to_string();
        match (ty, f) {
            (Ty::Str, Field::Bytes(d)) if !d.is_empty() => {
                out.insert(name, json!(string(d)?));
            }
            (Ty::RepStr, Field::Bytes(d)) => {
                if let Value::Array(a) = out.entry(name).or_insert_with(|| json!([])) {
                    a.push(json!(string(d)?));
                }
            }
            (Ty::Int, Field::Varint(v)) => {
                out.insert(name, json!(v as i64));
            }
            (Ty::Bool, Field::Varint(v)) => {
                out.insert(name, json!(v != 0));
            }
            (Ty::Msg(t), Field::Bytes(d)) => {
                out.insert(name, decode_table(d, t)?);
            }
            (Ty::RepMsg(t), Field::Bytes(d)) => {
                let v = decode_table(d, t)?;
                if let Value::Array(a) = out.entry(name).or_insert_with(|| json!([])) {
                    a.push(v);
                }
            }
            (Ty::Meta, Field::Bytes(d)) => {
                out.insert(name, object_meta(d)?);
            }
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

fn decode_kind(kind: &str, raw: &[u8]) -> Result<Value, String> {
    let mut obj = json!({"apiVersion": "v1", "kind": kind});
    let mut maps: [Map<String, Value>; 3] = Default::default();
    for (n, f) in fields(raw)? {
        match (kind, n, f) {
            (_, 1, Field::Bytes(d)) => obj["metadata"] = object_meta(d)?,
            ("ConfigMap", 2, Field::Bytes(d)) => {
                let (k, v) = map_entry(d, false)?;
                maps[0].insert(k, v);
            }
            ("ConfigMap", 3, Field::Bytes(d)) => {
                let (k, v) = map_entry(d, true)?;
                maps[1].insert(k, v);
            }
            ("ConfigMap", 4, Field::Varint(b)) | ("Secret", 5, Field::Varint(b)) => {
                obj["immutable"] = json!(b != 0)
            }
            ("Secret", 2, Field::Bytes(d)) => {
                let (k, v) = map_entry(d, true)?;
                maps[0].insert(k, v);
            }
            ("Secret", 3, Field::Bytes(d)) => obj["type"] = json!(string(d)?),
            ("Service", 2, Field::Bytes(d)) => obj["spec"] = service_spec(d)?,
            ("Secret", 4, Field::Bytes(d)) => {
                let (k, v) = map_entry(d, false)?;
                maps[2].insert(k, v);
            }
            _ => {}
        }
    }
    let [data, binary, string_data] = maps;
    if !data.is_empty() {
        obj["data"] = Value::Object(data);
    }
    if !binary.is_empty() {
        obj["binaryData"] = Value::Object(binary);
    }
    if !string_data.is_empty() {
        obj["stringData"] = Value::Object(string_data);
    }
    Ok(obj)
}

/// Decodes a `k8s\0`-prefixed protobuf body of a Namespace, ConfigMap, Secret or Service
/// into JSON.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let env = body
        .strip_prefix(b"k8s\0")
        .ok_or("protobuf body without the k8s magic prefix")?;
    let mut kind = String::new();
    let mut api_version = String::new();
    let mut raw: &[u8] = &[];
    for (n, f) in fields(env)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (tn, tf) in fields(tm)? {
                    match (tn, tf) {
                        (1, Field::Bytes(v)) => api_version = string(v)?,
                        (2, Field::Bytes(k)) => kind = string(k)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    if let Some((_, table)) = TABLES.iter().find(|(k, _)| *k == kind) {
        let mut obj = decode_table(raw, table)?;
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        return Ok(obj);
    }
    match kind.as_str() {
        "Namespace" | "ConfigMap" | "Secret" | "Service" => decode_kind(&kind, raw),
        other => Err(format!(
            "protobuf bodies are not accepted for {other:?}; send JSON (protobuf is decoded for Namespace, ConfigMap, Secret, Service, ServiceAccount, RBAC objects, access reviews and TokenRequest)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(n: u8, data: &[u8]) -> Vec<u8> {
        let mut v = vec![(n << 3) | 2, data.len() as u8];
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn decodes_a_namespace_and_a_configmap() {
        let meta = ld(1, b"demo");
        let ns = ld(1, &meta);
        let tm = [ld(1, b"v1"), ld(2, b"Namespace")].concat();
        let body = [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &ns)].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
        );

        let entry = [ld(1, b"k"), ld(2, b"v")].concat();
        let cm = [ld(1, &[ld(1, b"c"), ld(3, b"ns1")].concat()), ld(2, &entry)].concat();
        let tm = [ld(1, b"v1"), ld(2, b"ConfigMap")].concat();
        let body = [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &cm)].concat();
        let v = decode(&body).unwrap();
        assert_eq!(v["data"], json!({"k": "v"}));
        assert_eq!(v["metadata"]["namespace"], "ns1");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"nope").is_err());
        assert!(decode(b"k8s\0\x0a\xff").is_err());
        let tm = [ld(1, b"v1"), ld(2, b"Pod")].concat();
        assert!(decode(&[b"k8s\0".to_vec(), ld(1, &tm)].concat()).is_err());
    }
}

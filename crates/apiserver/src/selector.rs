//! Label selectors (`app=x,tier!=y,env in (a,b),!legacy`) and field selectors
//! (`metadata.name=x`), parsed as kube-apiserver parses them.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<Req>);

/// Split on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        let s = s.trim();
        if s.is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s) {
            let p = part.trim();
            let bad = || format!("unable to parse requirement: invalid label selector {p:?}");
            if let Some(k) = p.strip_prefix('!') {
                let k = k.trim();
                if !valid_key(k) {
                    return Err(bad());
                }
                reqs.push(Req::NotExists(k.into()));
            } else if let Some((k, v)) = p.split_once("!=") {
                let (k, v) = (k.trim(), v.trim());
                if !valid_key(k) || !valid_value(v) {
                    return Err(bad());
                }
                reqs.push(Req::NotEq(k.into(), v.into()));
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                let (k, v) = (k.trim(), v.trim());
                if !valid_key(k) || !valid_value(v) {
                    return Err(bad());
                }
                reqs.push(Req::Eq(k.into(), v.into()));
            } else if let Some(idx) = p.find(" notin ").or_else(|| p.find(" in ")) {
                let k = p[..idx].trim();
                let rest = p[idx..].trim_start();
                let (neg, rest) = match rest.strip_prefix("notin") {
                    Some(r) => (true, r),
                    None => (false, rest.strip_prefix("in").unwrap_or(rest)),
                };
                let rest = rest.trim();
                let inner = rest
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(bad)?;
                let vals: Vec<String> = inner
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                if !valid_key(k) || vals.iter().any(|v| !valid_value(v)) {
                    return Err(bad());
                }
                reqs.push(if neg {
                    Req::NotIn(k.into(), vals)
                } else {
                    Req::In(k.into(), vals)
                });
            } else {
                if !valid_key(p) {
                    return Err(bad());
                }
                reqs.push(Req::Exists(p.into()));
            }
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    pub fn from_json(v: &serde_json::Value) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        for (k, val) in v["matchLabels"].as_object().into_iter().flatten() {
            let val = val.as_str().unwrap_or_default();
            if !valid_key(k) || !valid_value(val) {
                return Err(format!("invalid matchLabels entry {k:?}: {val:?}"));
            }
            reqs.push(Req::Eq(k.clone(), val.to_string()));
        }
        for e in v["matchExpressions"].as_array().into_iter().flatten() {
            let k = e["key"].as_str().unwrap_or_default().to_string();
            let vals: Vec<String> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect();
            reqs.push(match e["operator"].as_str().unwrap_or_default() {
                "In" => Req::In(k, vals),
                "NotIn" => Req::NotIn(k, vals),
                "Exists" => Req::Exists(k),
                "DoesNotExist" => Req::NotExists(k),
                other => return Err(format!("invalid operator {other:?}")),
            });
        }
        Ok(LabelSelector(reqs))
    }

    /// Matches a `metadata.labels` JSON object (absent: no labels).
    pub fn matches_value(&self, labels: &serde_json::Value) -> bool {
        let map: BTreeMap<String, String> = labels
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect();
        self.matches(&map)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => labels.get(k) == Some(v),
            Req::NotEq(k, v) => labels.get(k) != Some(v),
            Req::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Req::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Req::Exists(k) => labels.contains_key(k),
            Req::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// The fields besides `metadata.name`/`metadata.namespace` a resource can be selected by, as
/// kube-apiserver offers them.
pub fn selectable_fields(group: &str, plural: &str) -> &'static [&'static str] {
    match (group, plural) {
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        // kube-apiserver's pod fields (`kubectl drain` lists a node's Pods by `spec.nodeName`).
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("events.k8s.io", "events") => &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reason",
            "reportingController",
            "type",
        ],
        _ => &[],
    }
}

/// Field selectors support `metadata.name` and `metadata.namespace` with `=`, `==`, `!=`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        Self::parse_with(s, &[])
    }

    /// Also accepts the resource's own selectable fields (core Events: `involvedObject.name`,
    /// `reason`, ... — what `kubectl describe` asks for).
    pub fn parse_with(s: &str, extra: &[&str]) -> Result<FieldSelector, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, neg, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, false, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            let field = field.trim();
            if field != "metadata.name" && field != "metadata.namespace" && !extra.contains(&field)
            {
                let mut supported = vec!["metadata.name", "metadata.namespace"];
                supported.extend(extra);
                return Err(format!(
                    "field label not supported: {field} (supported: {})",
                    supported.join(", ")
                ));
            }
            out.push((field.to_string(), neg, value.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        self.0.iter().all(|(f, neg, v)| {
            let actual = if f == "metadata.name" {
                name
            } else {
                namespace
            };
            (actual == v) != *neg
        })
    }

    /// Matches a stored object; fields other than name and namespace are read from its JSON.
    pub fn matches_stored(&self, o: &crate::store::Stored) -> bool {
        if !self.matches_meta(o.key.namespace(), o.key.name()) {
            return false;
        }
        let other: Vec<_> = self
            .0
            .iter()
            .filter(|(f, _, _)| !f.starts_with("metadata."))
            .collect();
        if other.is_empty() {
            return true;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.json) else {
            return false;
        };
        other.iter().all(|(f, neg, want)| {
            let actual = f
                .split('.')
                .try_fold(&v, |cur, k| cur.get(k))
                .map(|x| match x {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            (actual == *want) != *neg
        })
    }

    fn matches_meta(&self, namespace: &str, name: &str) -> bool {
        self.0
            .iter()
            .filter(|(f, _, _)| f.starts_with("metadata."))
            .all(|(f, neg, v)| {
                let actual = if f == "metadata.name" {
                    name
                } else {
                    namespace
                };
                (actual == v) != *neg
            })
    }

    /// The one name this selector pins, if any (lets a watch skip other objects cheaply).
    pub fn name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, neg, _)| f == "metadata.name" && !neg)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_operator() {
        let l = labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("kubevirt.io/nodeName", "n1"),
        ]);
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web,db)", true),
            ("app notin (web,db)", false),
            ("tier", true),
            ("!tier", false),
            ("!legacy", true),
            ("app=web,tier in (front)", true),
            ("kubevirt.io/nodeName=n1", true),
            ("app=db", false),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&l),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn bad_selectors_are_errors() {
        for bad in ["app in web", "=x", "a=b c", "app in (we b)"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
        assert!(FieldSelector::parse("status.phase=Running").is_err());
        assert!(FieldSelector::parse("metadata.name").is_err());
    }

    #[test]
    fn field_selectors() {
        let f = FieldSelector::parse("metadata.name=a,metadata.namespace!=kube-system").unwrap();
        assert!(f.matches("default", "a"));
        assert!(!f.matches("kube-system", "a"));
        assert!(!f.matches("default", "b"));
        assert_eq!(f.name(), Some("a"));
    }
}

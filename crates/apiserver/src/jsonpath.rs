//! The JSONPath subset printer columns use: `.a.b`, `[0]`, `[*]` and
//! `[?(@.field=='value')]` filters.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    Filter {
        path: Vec<String>,
        value: String,
        negate: bool,
    },
}

fn parse(path: &str) -> Result<Vec<Step>, String> {
    let p = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut steps = Vec::new();
    let mut rest = p.strip_prefix('$').unwrap_or(p);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end > 0 {
                steps.push(Step::Field(r[..end].to_string()));
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(|| format!("unclosed [ in {path}"))?;
            // A filter may itself contain ']' only inside quotes; our columns never do.
            let inner = &r[..end];
            rest = &r[end + 1..];
            if inner == "*" {
                steps.push(Step::All);
            } else if let Ok(i) = inner.parse::<usize>() {
                steps.push(Step::Index(i));
            } else if let Some(f) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
                let (lhs, rhs, negate) = match f.split_once("!=") {
                    Some((l, r)) => (l, r, true),
                    None => {
                        let (l, r) = f
                            .split_once("==")
                            .ok_or_else(|| format!("unsupported filter {f}"))?;
                        (l, r, false)
                    }
                };
                let field = lhs
                    .trim()
                    .strip_prefix("@.")
                    .ok_or_else(|| format!("unsupported filter {f}"))?;
                let value = rhs
                    .trim()
                    .trim_matches(|c| c == '\'' || c == '"')
                    .to_string();
                steps.push(Step::Filter {
                    path: field.split('.').map(str::to_string).collect(),
                    value,
                    negate,
                });
            } else {
                let key = inner.trim_matches(|c| c == '\'' || c == '"');
                steps.push(Step::Field(key.to_string()));
            }
        } else {
            return Err(format!("unexpected {rest:?} in JSONPath {path}"));
        }
    }
    Ok(steps)
}

/// Every value `path` selects in `v`.
pub fn select<'a>(v: &'a Value, path: &str) -> Result<Vec<&'a Value>, String> {
    let steps = parse(path)?;
    let mut cur = vec![v];
    for s in &steps {
        let mut next = Vec::new();
        for x in cur {
            match s {
                Step::Field(f) => {
                    if let Some(y) = x.get(f) {
                        next.push(y);
                    }
                }
                Step::Index(i) => {
                    if let Some(y) = x.get(*i) {
                        next.push(y);
                    }
                }
                Step::All => match x {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Step::Filter {
                    path,
                    value,
                    negate,
                } => {
                    if let Value::Array(a) = x {
                        for item in a {
                            let mut f = Some(item);
                            for p in path {
                                f = f.and_then(|f| f.get(p));
                            }
                            let s = f.map(|f| match f {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            });
                            if (s.as_deref() == Some(value.as_str())) != *negate {
                                next.push(item);
                            }
                        }
                    }
                }
            }
        }
        cur = next;
    }
    Ok(cur)
}

/// A column cell as kubectl shows it: values joined by commas, strings unquoted.
pub fn cell(v: &Value, path: &str) -> Value {
    match select(v, path) {
        Ok(vals) if vals.len() == 1 => vals[0].clone(),
        Ok(vals) if vals.is_empty() => Value::Null,
        Ok(vals) => Value::String(
            vals.iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
        Err(_) => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn printer_column_paths() {
        let v = json!({"status": {"phase": "Running",
            "interfaces": [{"ipAddress": "10.0.2.2"}],
            "conditions": [{"type": "Paused", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(cell(&v, ".status.phase"), json!("Running"));
        assert_eq!(
            cell(&v, ".status.interfaces[0].ipAddress"),
            json!("10.0.2.2")
        );
        assert_eq!(
            cell(&v, ".status.conditions[?(@.type=='Ready')].status"),
            json!("True")
        );
        assert_eq!(
            cell(&v, ".status.conditions[*].type"),
            json!("Paused,Ready")
        );
        assert_eq!(cell(&v, ".status.nodeName"), Value::Null);
        assert!(select(&v, ".status[").is_err());
    }
}

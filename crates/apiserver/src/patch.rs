//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch for
//! the core kinds (what `kubectl apply` sends for them).

use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let ct = ct.split(';').next().unwrap_or("").trim();
        match ct {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// RFC 7386: objects merge, `null` deletes, everything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// RFC 6902, with kube-apiserver's leniency: a `test` of a path that does not exist compares
/// with `null` (kube-rs's finalizer helper tests `/metadata/finalizers` against null).
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    let mut kept = Vec::with_capacity(ops.len());
    for op in ops {
        let is_null_test = op["op"] == "test"
            && op["value"].is_null()
            && op["path"]
                .as_str()
                .is_some_and(|p| target.pointer(p).is_none_or(Value::is_null));
        if is_null_test {
            continue;
        }
        if op["op"] == "test" && op["value"].is_null() {
            return Err(format!(
                "the test operation failed: {} is not null",
                op["path"].as_str().unwrap_or("")
            ));
        }
        kept.push(op.clone());
    }
    let p: json_patch::Patch = serde_json::from_value(Value::Array(kept))
        .map_err(|e| format!("invalid JSON patch: {e}"))?;
    if !p
        .0
        .iter()
        .any(|op| matches!(op, json_patch::PatchOperation::Copy(_)))
    {
        return json_patch::patch(target, &p).map_err(|e| e.to_string());
    }
    // `copy` can double the document with each operation: apply one operation at a time and
    // stop as soon as the document passes the object limits. (The caller patches a copy, so
    // an error leaves nothing half-applied.)
    for op in p.0 {
        let copy = matches!(op, json_patch::PatchOperation::Copy(_));
        json_patch::patch(target, &json_patch::Patch(vec![op])).map_err(|e| e.to_string())?;
        if copy {
            crate::limits::check_object(target).map_err(|e| e.to_string())?;
            crate::limits::check_size(target, crate::limits::MAX_OBJECT_BYTES)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Merge keys of the lists strategic merge patch merges element-wise in the kinds we serve;
/// every other list is replaced (or, for primitive lists marked `merge`, united).
fn merge_key(path: &[&str]) -> Option<&'static str> {
    let p: Vec<&str> = path.to_vec();
    match p.as_slice() {
        ["metadata", "ownerReferences"] => Some("uid"),
        ["status", "conditions"] => Some("type"),
        ["status", "addresses"] => Some("type"),
        ["spec", "ports"] => Some("port"),
        ["spec", "taints"] => Some("key"),
        ["status", "images"] => None,
        _ => None,
    }
}

fn primitive_merge(path: &[&str]) -> bool {
    matches!(path, ["metadata", "finalizers"])
}

/// Strategic merge patch with the directives kubectl sends: `$patch: replace|delete` on maps
/// and list elements, `$deleteFromPrimitiveList/<field>`, `$setElementOrder/<field>` (order
/// only, ignored), `$retainKeys` (ignored: we do not serve unions).
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), String> {
    smp(target, patch, &mut Vec::new())
}

fn smp<'a>(target: &mut Value, patch: &'a Value, path: &mut Vec<&'a str>) -> Result<(), String> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut clean = p.clone();
            clean.remove("$patch");
            *target = Value::Object(clean);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown $patch directive {other:?}")),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        unreachable!("made an object above")
    };
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (t.get_mut(field), v) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        path.push(k.as_str());
        match v {
            Value::Object(_) => {
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                smp(entry, v, path)?;
                if entry.is_null() {
                    t.remove(k);
                }
            }
            Value::Array(items) => {
                if let Some(key) = merge_key(path) {
                    let cur = t
                        .entry(k.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if !cur.is_array() {
                        *cur = Value::Array(Vec::new());
                    }
                    let Value::Array(list) = cur else {
                        unreachable!("made an array above")
                    };
                    for item in items {
                        let id = item.get(key).cloned();
                        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        let pos = list
                            .iter()
                            .position(|e| id.is_some() && e.get(key) == id.as_ref());
                        match (pos, delete) {
                            (Some(i), true) => {
                                list.remove(i);
                            }
                            (None, true) => {}
                            (Some(i), false) => smp(&mut list[i], item, path)?,
                            (None, false) => {
                                let mut fresh = Value::Null;
                                smp(&mut fresh, item, path)?;
                                list.push(fresh);
                            }
                        }
                    }
                } else if primitive_merge(path) {
                    let cur = t
                        .entry(k.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(list) = cur {
                        for item in items {
                            if !list.contains(item) {
                                list.push(item.clone());
                            }
                        }
                    }
                } else {
                    t.insert(k.clone(), v.clone());
                }
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
        path.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_deletes_with_null() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge(&mut t, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(t, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn json_patch_test_of_a_missing_path_compares_with_null() {
        let mut t = json!({"metadata": {"name": "x"}});
        json_patch(
            &mut t,
            &json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]),
        )
        .unwrap();
        assert_eq!(t["metadata"]["finalizers"], json!(["f"]));
        let err = json_patch(
            &mut t,
            &json!([{"op": "test", "path": "/metadata/finalizers", "value": null}]),
        );
        assert!(err.is_err());
        assert!(json_patch(&mut t, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn json_patch_copies_stop_at_the_object_limits() {
        let mut t = json!({"a": "x".repeat(100_000)});
        let ops: Vec<Value> = (0..40)
            .map(|i| json!({"op": "copy", "from": "", "path": format!("/c{i}")}))
            .collect();
        let err = json_patch(&mut t, &Value::Array(ops)).unwrap_err();
        assert!(err.contains("bytes"), "{err}");
        let mut t = json!({"a": {"b": 1}});
        json_patch(&mut t, &json!([{"op": "copy", "from": "/a", "path": "/c"}])).unwrap();
        assert_eq!(t["c"], json!({"b": 1}));
    }

    #[test]
    fn strategic_merge_merges_lists_by_key() {
        let mut t = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "X", "status": "True"}]},
                           "metadata": {"finalizers": ["a"]}, "spec": {"ports": [{"port": 80, "name": "http"}]}});
        strategic_merge(
            &mut t,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "X", "$patch": "delete"}]},
                    "metadata": {"finalizers": ["b"]},
                    "$setElementOrder/spec": [],
                    "spec": {"ports": [{"port": 443, "name": "https"}]}}),
        )
        .unwrap();
        assert_eq!(
            t["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}])
        );
        assert_eq!(t["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(t["spec"]["ports"].as_array().unwrap().len(), 2);
        strategic_merge(
            &mut t,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .unwrap();
        assert_eq!(t["metadata"]["finalizers"], json!(["b"]));
        strategic_merge(
            &mut t,
            &json!({"spec": {"$patch": "replace", "type": "ClusterIP"}}),
        )
        .unwrap();
        assert_eq!(t["spec"], json!({"type": "ClusterIP"}));
    }
}

//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! A field set is a set of paths such as `f:spec/f:template/f:spec/f:domain/f:devices/f:disks/
//! k:{"name":"root"}/f:bus`, stored as Kubernetes' `FieldsV1` tree. Lists of objects are
//! keyed by the schema's `x-kubernetes-list-map-keys`, or by `name` when every element has
//! one; other lists are atomic (owned as a whole), as kube-apiserver does for lists without a
//! list type.

use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

pub type FieldSet = BTreeSet<String>;

/// How the lists of one kind merge, read once from its OpenAPI schema: for each list (by
/// field path, `[]` for list items: `spec.template.spec.volumes`), its
/// `x-kubernetes-list-map-keys` or whether it is a set. Keeping this instead of the schema
/// itself keeps the server's memory small.
#[derive(Clone, Debug, Default)]
pub struct ListIndex {
    maps: std::collections::HashMap<String, Vec<String>>,
    sets: std::collections::HashSet<String>,
}

impl ListIndex {
    pub fn build(root: &Value, components: &Map<String, Value>) -> ListIndex {
        let mut idx = ListIndex::default();
        idx.walk(root, components, String::new(), &mut Vec::new());
        idx
    }

    /// `refs`: the `$ref`s followed to get here; a recursive schema (a CRD's JSONSchemaProps)
    /// stops at its second visit instead of unfolding forever.
    fn walk<'a>(
        &mut self,
        node: &'a Value,
        components: &'a Map<String, Value>,
        path: String,
        refs: &mut Vec<&'a str>,
    ) {
        if refs.len() > 32 || path.len() > 512 {
            return;
        }
        let mut node = node;
        let mut followed = 0;
        for _ in 0..8 {
            if let Some(r) = node.get("$ref").and_then(Value::as_str) {
                let name = r.rsplit('/').next().unwrap_or(r);
                if refs.contains(&name) {
                    refs.truncate(refs.len() - followed);
                    return;
                }
                match components.get(name) {
                    Some(n) => {
                        refs.push(name);
                        followed += 1;
                        node = n;
                    }
                    None => {
                        refs.truncate(refs.len() - followed);
                        return;
                    }
                }
            } else if let Some(first) = node
                .get("allOf")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
            {
                node = first;
            } else {
                break;
            }
        }
        match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => {
                if let Some(keys) = node
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                {
                    self.maps.insert(
                        path.clone(),
                        keys.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect(),
                    );
                }
            }
            Some("set") => {
                self.sets.insert(path.clone());
            }
            _ => {}
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                self.walk(v, components, p, refs);
            }
        }
        if let Some(items) = node.get("items") {
            self.walk(items, components, format!("{path}[]"), refs);
        }
        if let Some(ap) = node.get("additionalProperties").filter(|a| a.is_object()) {
            self.walk(ap, components, format!("{path}{{}}"), refs);
        }
        refs.truncate(refs.len() - followed);
    }
}

/// A position in an object, to look up how the list there merges.
#[derive(Clone)]
pub struct Schema<'a> {
    index: &'a ListIndex,
    path: String,
}

impl<'a> Schema<'a> {
    pub fn new(index: &'a ListIndex) -> Self {
        Schema {
            index,
            path: String::new(),
        }
    }

    fn child(&self, field: &str) -> Self {
        // Map values (labels, resource quantities) share one schema: `{}`.
        let candidate = if self.path.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.path)
        };
        let path = if self
            .index
            .maps
            .keys()
            .chain(self.index.sets.iter())
            .any(|k| k.starts_with(&candidate))
        {
            candidate
        } else {
            format!("{}{{}}", self.path)
        };
        Schema {
            index: self.index,
            path,
        }
    }

    fn items(&self) -> Self {
        Schema {
            index: self.index,
            path: format!("{}[]", self.path),
        }
    }

    fn list_keys(&self) -> Option<Vec<String>> {
        self.index.maps.get(&self.path).cloned()
    }

    fn is_set(&self) -> bool {
        self.index.sets.contains(&self.path)
    }
}

/// How the elements of a list are identified, if they are.
fn list_keys(schema: &Schema, items: &[Value]) -> Option<Vec<String>> {
    if let Some(k) = schema.list_keys() {
        return Some(k);
    }
    let all_named = !items.is_empty()
        && items
            .iter()
            .all(|i| i.get("name").is_some_and(Value::is_string));
    all_named.then(|| vec!["name".to_string()])
}

fn key_of(item: &Value, keys: &[String]) -> String {
    let mut m = Map::new();
    for k in keys {
        if let Some(v) = item.get(k) {
            m.insert(k.clone(), v.clone());
        }
    }
    format!("k:{}", Value::Object(m))
}

/// The set of fields an object sets (leaves, plus a `.` marker for each keyed list element).
pub fn fields_of(v: &Value, schema: &Schema) -> FieldSet {
    let mut out = FieldSet::new();
    walk(v, schema, "", &mut out);
    out
}

fn join(prefix: &str, seg: &str) -> String {
    if prefix.is_empty() {
        seg.to_string()
    } else {
        format!("{prefix}/{seg}")
    }
}

fn walk(v: &Value, schema: &Schema, prefix: &str, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() || prefix.is_empty() => {
            for (k, child) in m {
                if prefix.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "status") {
                    continue;
                }
                if prefix == "f:metadata"
                    && !matches!(
                        k.as_str(),
                        "labels" | "annotations" | "finalizers" | "ownerReferences"
                    )
                {
                    continue;
                }
                let p = if prefix.is_empty() {
                    format!("f:{k}")
                } else {
                    format!("{prefix}/f:{k}")
                };
                walk(child, &schema.child(k), &p, out);
            }
        }
        Value::Array(items) => match list_keys(schema, items) {
            Some(keys) if items.iter().all(Value::is_object) => {
                for item in items {
                    let p = join(prefix, &key_of(item, &keys));
                    out.insert(join(&p, "."));
                    walk(item, &schema.items(), &p, out);
                }
            }
            _ if schema.is_set() => {
                for item in items {
                    out.insert(join(prefix, &format!("v:{item}")));
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        },
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// FieldSet → FieldsV1 JSON tree.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for seg in path.split('/') {
            let next = node.entry(seg.to_string()).or_insert_with(|| json!({}));
            node = match next {
                Value::Object(m) => m,
                _ => unreachable!("only objects are inserted"),
            };
        }
    }
    Value::Object(root)
}

/// FieldsV1 JSON tree → FieldSet (the leaves).
pub fn from_fields_v1(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    fn rec(v: &Value, prefix: &str, out: &mut FieldSet) {
        if let Value::Object(m) = v {
            if m.is_empty() && !prefix.is_empty() {
                out.insert(prefix.to_string());
            }
            for (k, c) in m {
                rec(c, &join(prefix, k), out);
            }
        }
    }
    rec(v, "", &mut out);
    out
}

/// Finds the value a path names in an object.
pub fn value_at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path.split('/') {
        if seg == "." {
            return Some(cur);
        }
        if let Some(f) = seg.strip_prefix("f:") {
            cur = cur.get(f)?;
        } else if let Some(k) = seg.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur = cur
                .as_array()?
                .iter()
                .find(|item| key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))?;
        } else if let Some(x) = seg.strip_prefix("v:") {
            let want: Value = serde_json::from_str(x).ok()?;
            cur = cur.as_array()?.iter().find(|i| **i == want)?;
        } else {
            return None;
        }
    }
    Some(cur)
}

/// Removes what a path names from an object (a field, a keyed element, a set member).
pub fn remove_at(v: &mut Value, path: &str) {
    let segs: Vec<&str> = path.split('/').filter(|s| *s != ".").collect();
    let Some((last, parents)) = segs.split_last() else {
        return;
    };
    let mut cur = v;
    for seg in parents {
        let next = if let Some(f) = seg.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = seg.strip_prefix("k:") {
            let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) else {
                return;
            };
            cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|item| key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))
            })
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(key), Some(a)) = (
            serde_json::from_str::<Map<String, Value>>(k),
            cur.as_array_mut(),
        ) {
            a.retain(|item| !key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)));
        }
    } else if let Some(x) = last.strip_prefix("v:") {
        if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(x), cur.as_array_mut()) {
            a.retain(|i| *i != want);
        }
    }
}

/// Merges an applied configuration into the live object: maps merge, keyed lists merge by key,
/// everything else is replaced.
pub fn apply_merge(live: &mut Value, applied: &Value, schema: &Schema) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                if av.is_null() {
                    continue;
                }
                match l.get_mut(k) {
                    Some(lv) => apply_merge(lv, av, &schema.child(k)),
                    None => {
                        l.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(a)) => match list_keys(schema, a) {
            Some(keys) if a.iter().all(Value::is_object) && l.iter().all(Value::is_object) => {
                for item in a {
                    let id = key_of(item, &keys);
                    match l.iter_mut().find(|x| key_of(x, &keys) == id) {
                        Some(existing) => apply_merge(existing, item, &schema.items()),
                        None => l.push(item.clone()),
                    }
                }
            }
            _ => *l = a.clone(),
        },
        (l, a) => *l = a.clone(),
    }
}

/// One manager's entry in `metadata.managedFields`.
#[derive(Clone, Debug)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
    pub subresource: Option<String>,
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: e["manager"].as_str().unwrap_or_default().to_string(),
                    operation: e["operation"].as_str().unwrap_or("Update").to_string(),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
                    time: e["time"].as_str().unwrap_or_default().to_string(),
                    fields: from_fields_v1(&e["fieldsV1"]),
                    subresource: e["subresource"].as_str().map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Leaves whose value differs between two objects (or exist in only one).
fn changed(old: &FieldSet, new: &FieldSet, old_v: &Value, new_v: &Value) -> FieldSet {
    old.union(new)
        .filter(|p| value_at(old_v, p) != value_at(new_v, p))
        .cloned()
        .collect()
}

/// After a non-apply write by `manager`, it owns what it changed; nobody else does.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    schema: &Schema,
    now: &str,
    api_version: &str,
) {
    let Some(old_v) = old else {
        // A create: the manager owns every field it set (what `changed` finds against
        // nothing, without comparing each field with an absent one).
        let fields: FieldSet = fields_of(new, schema)
            .into_iter()
            .filter(|p| value_at(new, p).is_some())
            .collect();
        let entry = Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version: api_version.to_string(),
            time: now.to_string(),
            fields,
            subresource: subresource.map(str::to_string),
        };
        write_entries(new, std::slice::from_ref(&entry));
        return;
    };
    let mut entries = read_entries(old_v);
    let old_set = fields_of(old_v, schema);
    let new_set = fields_of(new, schema);
    let changed = changed(&old_set, &new_set, old_v, new);
    if changed.is_empty() {
        write_entries(new, &entries);
        return;
    }
    for e in &mut entries {
        e.fields
            .retain(|p| !changed.contains(p) && new_set.contains(p));
    }
    let ours: FieldSet = changed.intersection(&new_set).cloned().collect();
    match entries.iter_mut().find(|e| {
        e.manager == manager && e.operation == "Update" && e.subresource.as_deref() == subresource
    }) {
        Some(e) => {
            e.fields.extend(ours);
            e.time = now.to_string();
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version: api_version.to_string(),
            time: now.to_string(),
            fields: ours,
            subresource: subresource.map(str::to_string),
        }),
    }
    write_entries(new, &entries);
}

/// A field another manager owns with a different value than the applied one.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub manager: String,
    pub path: String,
}

/// Server-side apply onto a live object. Returns the new object or the conflicts.
pub fn apply(
    live: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
    schema: &Schema,
    now: &str,
    api_version: &str,
) -> Result<Value, Vec<Conflict>> {
    let mut entries = read_entries(live);
    let applied_set = fields_of(applied, schema);
    let mut conflicts = Vec::new();
    for e in &entries {
        if e.manager == manager && e.operation == "Apply" {
            continue;
        }
        for p in e.fields.intersection(&applied_set) {
            if !p.ends_with('.') && value_at(live, p) != value_at(applied, p) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    path: p.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let previous: FieldSet = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply")
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut new = live.clone();
    apply_merge(&mut new, applied, schema);
    // Fields this manager applied before and no longer applies go, unless someone else owns them.
    for p in previous.difference(&applied_set) {
        let owned_elsewhere = entries
            .iter()
            .any(|e| !(e.manager == manager && e.operation == "Apply") && e.fields.contains(p));
        if !owned_elsewhere {
            remove_at(&mut new, p);
        }
    }
    if force {
        let taken: BTreeSet<&String> = conflicts.iter().map(|c| &c.path).collect();
        for e in &mut entries {
            e.fields.retain(|p| !taken.contains(p));
        }
    }
    entries.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    entries.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: api_version.to_string(),
        time: now.to_string(),
        fields: applied_set,
        subresource: None,
    });
    write_entries(&mut new, &entries);
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> ListIndex {
        ListIndex::build(&json!({"type": "object"}), &Map::new())
    }

    #[test]
    fn fields_of_keys_named_lists_and_round_trips_fields_v1() {
        let idx = index();
        let v = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a", "labels": {"l": "1"}},
                       "spec": {"disks": [{"name": "root", "bus": "virtio"}], "args": ["a", "b"]}});
        let f = fields_of(&v, &Schema::new(&idx));
        assert!(
            f.contains(r#"f:spec/f:disks/k:{"name":"root"}/f:bus"#),
            "{f:?}"
        );
        assert!(f.contains("f:spec/f:args"));
        assert!(f.contains("f:metadata/f:labels/f:l"));
        assert!(!f
            .iter()
            .any(|p| p.contains("f:name") && p.starts_with("f:metadata")));
        assert_eq!(from_fields_v1(&to_fields_v1(&f)), f);
    }

    #[test]
    fn reapplying_without_a_field_removes_it_and_conflicts_are_reported() {
        let idx = index();
        let sc = &Schema::new(&idx);
        let live = json!({"metadata": {"name": "a"}, "spec": {}});
        let v1 = apply(
            &live,
            &json!({"metadata": {"name": "a"}, "spec": {"x": 1, "y": 2}}),
            "me",
            false,
            sc,
            "t",
            "v1",
        )
        .unwrap();
        assert_eq!(v1["spec"], json!({"x": 1, "y": 2}));
        let v2 = apply(
            &v1,
            &json!({"metadata": {"name": "a"}, "spec": {"x": 1}}),
            "me",
            false,
            sc,
            "t",
            "v1",
        )
        .unwrap();
        assert_eq!(
            v2["spec"],
            json!({"x": 1}),
            "y was applied by me before and is gone now"
        );
        let err = apply(
            &v2,
            &json!({"metadata": {"name": "a"}, "spec": {"x": 5}}),
            "other",
            false,
            sc,
            "t",
            "v1",
        )
        .unwrap_err();
        assert_eq!(err[0].manager, "me");
        let v3 = apply(
            &v2,
            &json!({"metadata": {"name": "a"}, "spec": {"x": 5}}),
            "other",
            true,
            sc,
            "t",
            "v1",
        )
        .unwrap();
        assert_eq!(v3["spec"]["x"], 5);
    }

    #[test]
    fn updates_take_ownership_of_what_they_change() {
        let idx = index();
        let sc = &Schema::new(&idx);
        let old = apply(
            &json!({"metadata": {}}),
            &json!({"metadata": {}, "spec": {"x": 1}}),
            "applier",
            false,
            sc,
            "t",
            "v1",
        )
        .unwrap();
        let mut new = old.clone();
        new["spec"]["x"] = json!(2);
        record_update(Some(&old), &mut new, "editor", None, sc, "t", "v1");
        let entries = read_entries(&new);
        let editor = entries.iter().find(|e| e.manager == "editor").unwrap();
        assert!(editor.fields.contains("f:spec/f:x"));
        assert!(
            !entries.iter().any(|e| e.manager == "applier"),
            "applier lost its only field"
        );
    }
}

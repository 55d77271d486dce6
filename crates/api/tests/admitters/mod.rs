//! Table tests of KubeVirt's admitters: each case is an object, optionally the stored object
//! it replaces, the user and the other stored objects, and what KubeVirt answers (accepted,
//! or the field and a substring of the message).
#![allow(dead_code)]

use kubevirt_api::admission::{kind_of, AdmitOptions, Lookup, Operation, Request, UserInfo};
use kubevirt_api::FieldError;
use serde_json::Value;

/// Stored objects for the admitters that look others up.
#[derive(Default)]
pub struct Store(pub Vec<Value>);

impl Lookup for Store {
    fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.list(group, plural, namespace)
            .into_iter()
            .find(|o| o["metadata"]["name"] == name)
    }

    fn list(&self, group: &str, plural: &str, namespace: &str) -> Vec<Value> {
        self.0
            .iter()
            .filter(|o| {
                let k = kind_of(
                    o["apiVersion"].as_str().unwrap_or(""),
                    o["kind"].as_str().unwrap_or(""),
                )
                .expect("a known kind");
                k.group == group
                    && k.plural == plural
                    && o["metadata"]["namespace"].as_str().unwrap_or("") == namespace
            })
            .cloned()
            .collect()
    }
}

pub fn user(name: &str) -> UserInfo {
    UserInfo {
        username: name.into(),
        groups: vec!["system:authenticated".into()],
    }
}

pub fn admin() -> UserInfo {
    UserInfo {
        username: "admin".into(),
        groups: vec!["system:masters".into(), "system:authenticated".into()],
    }
}

pub struct Case {
    pub name: &'static str,
    pub obj: Value,
    pub old: Option<Value>,
    pub user: Option<UserInfo>,
    pub store: Vec<Value>,
    pub opts: AdmitOptions,
    /// `None`: accepted; `Some((field, message))`: refused with that cause.
    pub want: Option<(&'static str, &'static str)>,
}

impl Case {
    pub fn new(name: &'static str, obj: Value) -> Case {
        Case {
            name,
            obj,
            old: None,
            user: Some(user("alice")),
            store: Vec::new(),
            opts: AdmitOptions::default(),
            want: None,
        }
    }
    pub fn old(mut self, old: Value) -> Case {
        self.old = Some(old);
        self
    }
    pub fn by(mut self, u: UserInfo) -> Case {
        self.user = Some(u);
        self
    }
    pub fn stored(mut self, objs: Vec<Value>) -> Case {
        self.store = objs;
        self
    }
    pub fn gates(mut self, gates: &[&str]) -> Case {
        self.opts.validation.feature_gates = gates.iter().map(|g| g.to_string()).collect();
        self
    }
    pub fn refused(mut self, field: &'static str, msg: &'static str) -> Case {
        self.want = Some((field, msg));
        self
    }

    pub fn run(&self) -> Result<Value, Vec<FieldError>> {
        let k = kind_of(
            self.obj["apiVersion"].as_str().unwrap_or(""),
            self.obj["kind"].as_str().unwrap_or(""),
        )
        .expect("a known kind");
        let store = Store(self.store.clone());
        let req = Request {
            operation: if self.old.is_some() {
                Operation::Update
            } else {
                Operation::Create
            },
            old: self.old.as_ref(),
            user: self.user.as_ref(),
            subresource: None,
            lookup: Some(&store),
        };
        k.admit_request(&self.obj, &req, &self.opts)
            .map(|a| a.value)
    }
}

/// Runs every case and reports all mismatches at once.
pub fn check(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        match (c.run(), c.want) {
            (Ok(_), None) => {}
            (Ok(_), Some((f, m))) => failures.push(format!("{}: accepted, want {f}: {m}", c.name)),
            (Err(errs), None) => failures.push(format!("{}: refused: {errs:?}", c.name)),
            (Err(errs), Some((f, m))) => {
                if !errs.iter().any(|e| e.field == f && e.message.contains(m)) {
                    failures.push(format!("{}: want {f:?}: {m:?}, got {errs:?}", c.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Sets `value` at a dotted path (`spec.domain.cpu.sockets`), creating objects on the way.
pub fn with(mut obj: Value, path: &str, value: Value) -> Value {
    let mut cur = &mut obj;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        if !cur[*p].is_object() {
            cur[*p] = serde_json::json!({});
        }
        cur = &mut cur[*p];
    }
    cur[parts[parts.len() - 1]] = value;
    obj
}

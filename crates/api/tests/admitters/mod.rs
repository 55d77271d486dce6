//! The one table harness of the admitter tests: each case is an object, optionally the stored
//! object it replaces, the user and the other stored objects, and what KubeVirt answers
//! (accepted, or the field and a substring of the message).
//!
//! The VMI tables (`case!`) start from [`base`], a valid VMI, apply an edit and a cluster
//! configuration, and are admitted as the server's own offline validation (no user, no
//! lookups), as `kubectl create --dry-run` of the VMI alone would be.
#![allow(dead_code, unused_macros)]

use kubevirt_api::admission::{kind_of, AdmitOptions, Lookup, Operation, Request, UserInfo};
use kubevirt_api::validation::ValidationConfig;
use kubevirt_api::FieldError;
use serde_json::{json, Value};

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
    /// No [`Lookup`] at all (offline validation), rather than an empty store.
    pub offline: bool,
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
            offline: false,
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
    /// Under a cluster configuration (e.g. [`stage`]).
    pub fn configured(mut self, cfg: fn(&mut ValidationConfig)) -> Case {
        cfg(&mut self.opts.validation);
        self
    }
    pub fn gates(mut self, gates: &[&str]) -> Case {
        self.opts.validation.feature_gates = gates.iter().map(|g| g.to_string()).collect();
        self
    }
    /// As a user who is none of KubeVirt's components and not in `system:masters`.
    pub fn anonymous(mut self) -> Case {
        self.user = None;
        self
    }
    pub fn refused(mut self, field: &'static str, msg: &'static str) -> Case {
        self.want = Some((field, msg));
        self
    }

    pub fn run(&self) -> Result<Value, Vec<FieldError>> {
        self.admitted().map(|a| a.value)
    }

    /// Offline validation (`kubevirt-rs validate`): no lookups.
    pub fn offline(mut self) -> Case {
        self.offline = true;
        self
    }

    /// The whole admission result (the stored object and the warnings).
    pub fn admitted(&self) -> Result<kubevirt_api::Admitted, Vec<FieldError>> {
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
            lookup: if self.offline { None } else { Some(&store) },
        };
        k.admit_request(&self.obj, &req, &self.opts)
    }
}

/// Runs every case and reports all mismatches at once.
pub fn check(cases: Vec<Case>) {
    run(&cases)
}

/// [`check`] over a borrowed table.
pub fn run(cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
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

// ---- VMI tables: a valid VMI, an edit, a configuration, an expectation ----

pub fn base() -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "testvmi"},
        "spec": {
            "domain": {
                "devices": {
                    "disks": [
                        {"name": "root", "disk": {"bus": "virtio"}},
                        {"name": "cloudinit", "disk": {"bus": "virtio"}}
                    ],
                    "interfaces": [{"name": "default", "masquerade": {}}]
                },
                "resources": {"requests": {"memory": "128Mi"}}
            },
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [
                {"name": "root", "containerDisk": {"image": "demo"}},
                {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#!/bin/sh\necho hi\n"}}
            ]
        }
    })
}

/// Sets the value at a JSON pointer, creating objects on the way (array items must exist).
pub fn set(v: &mut Value, ptr: &str, value: Value) {
    let mut cur = v;
    let parts: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        cur = match cur {
            Value::Array(a) => {
                let idx: usize = part.parse().expect("array index");
                &mut a[idx]
            }
            Value::Object(o) => {
                if last {
                    o.insert((*part).to_string(), value);
                    return;
                }
                o.entry((*part).to_string()).or_insert_with(|| json!({}))
            }
            other => panic!("cannot descend into {other} at {part}"),
        };
        if last {
            *cur = value;
            return;
        }
    }
}

/// Appends to the array at `ptr`.
pub fn push(v: &mut Value, ptr: &str, value: Value) {
    v.pointer_mut(ptr)
        .and_then(Value::as_array_mut)
        .unwrap_or_else(|| panic!("no array at {ptr}"))
        .push(value);
}

pub enum Expect {
    Accept,
    /// Refused with an error at this field whose message contains this text.
    Reject(&'static str, &'static str),
}
pub use Expect::{Accept, Reject};

pub fn default_cfg(_: &mut ValidationConfig) {}

/// A VMI-table case: [`base`] with `edit` applied, admitted offline under `cfg`.
pub fn vmi_case(
    name: &'static str,
    cfg: fn(&mut ValidationConfig),
    edit: fn(&mut Value),
    expect: Expect,
) -> Case {
    let mut v = base();
    edit(&mut v);
    let mut c = Case::new(name, v);
    c.user = None;
    c.offline = true;
    cfg(&mut c.opts.validation);
    c.want = match expect {
        Accept => None,
        Reject(f, m) => Some((f, m)),
    };
    c
}

macro_rules! case {
    ($name:expr, $edit:expr, $expect:expr) => {
        $crate::admitters::vmi_case($name, $crate::admitters::default_cfg, $edit, $expect)
    };
    ($name:expr, cfg = $cfg:expr, $edit:expr, $expect:expr) => {
        $crate::admitters::vmi_case($name, $cfg, $edit, $expect)
    };
}

pub fn stage(c: &mut ValidationConfig) {
    c.vm_rollout_live_update = false;
}

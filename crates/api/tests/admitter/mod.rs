//! The table harness shared by the admitter tests: a valid VMI, edits, expected outcomes.
#![allow(dead_code)]

use kubevirt_api::admission::{admit, AdmitOptions};
use kubevirt_api::validation::ValidationConfig;
use kubevirt_api::FieldError;
use serde_json::{json, Value};

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

pub struct Case {
    pub name: &'static str,
    pub cfg: fn(&mut ValidationConfig),
    pub edit: fn(&mut Value),
    pub expect: Expect,
}

pub fn default_cfg(_: &mut ValidationConfig) {}

pub fn run(cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let mut v = base();
        (c.edit)(&mut v);
        let mut opts = AdmitOptions::default();
        (c.cfg)(&mut opts.validation);
        let errs: Vec<FieldError> = admit(&v, &opts).err().unwrap_or_default();
        match &c.expect {
            Accept if !errs.is_empty() => {
                failures.push(format!("{}: expected accepted, got {errs:#?}", c.name))
            }
            Reject(field, msg)
                if !errs
                    .iter()
                    .any(|e| e.field == *field && e.message.contains(msg)) =>
            {
                failures.push(format!(
                    "{}: expected {field}: {msg}\n got {errs:#?}",
                    c.name
                ))
            }
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

macro_rules! case {
    ($name:expr, $edit:expr, $expect:expr) => {
        Case {
            name: $name,
            cfg: $crate::admitter::default_cfg,
            edit: $edit,
            expect: $expect,
        }
    };
    ($name:expr, cfg = $cfg:expr, $edit:expr, $expect:expr) => {
        Case {
            name: $name,
            cfg: $cfg,
            edit: $edit,
            expect: $expect,
        }
    };
}

pub fn stage(c: &mut ValidationConfig) {
    c.vm_rollout_live_update = false;
}

//! `events.k8s.io/v1` Events (what kube-rs's recorder writes) also appear as core `v1`
//! Events, because kube-apiserver stores both versions as one object: `kubectl get events`
//! and `kubectl describe` read the core version. We keep a converted copy, written after
//! each successful write of the new version.

use crate::objects::{ApiServer, Query};
use serde_json::{json, Value};

/// The core/v1 form of an events.k8s.io/v1 Event (kube-apiserver's conversion).
pub fn to_core(ev: &Value) -> Value {
    let md = &ev["metadata"];
    let series = &ev["series"];
    // core/v1 timestamps are whole seconds.
    let secs = |t: &Value| {
        t.as_str()
            .map(|t| format!("{}Z", t.get(..19).unwrap_or(t).trim_end_matches('Z')))
    };
    let first = secs(&ev["deprecatedFirstTimestamp"]).or(secs(&ev["eventTime"]));
    let last = secs(&series["lastObservedTime"])
        .or(secs(&ev["deprecatedLastTimestamp"]))
        .or(secs(&ev["eventTime"]));
    let count = series["count"]
        .as_i64()
        .or(ev["deprecatedCount"].as_i64())
        .unwrap_or(1);
    let mut core = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": md["name"],
            "namespace": md["namespace"],
        },
        "involvedObject": ev["regarding"],
        "reason": ev["reason"],
        "message": ev["note"],
        "type": ev["type"],
        "count": count,
        "firstTimestamp": first,
        "lastTimestamp": last,
        "source": {"component": ev["reportingController"]},
        "reportingComponent": ev["reportingController"],
        "reportingInstance": ev["reportingInstance"],
        "action": ev["action"],
    });
    if !ev["related"].is_null() {
        core["related"] = ev["related"].clone();
    }
    core
}

/// Writes the core copy of `ev` (create, or replace the previous copy).
pub async fn mirror(api: &ApiServer, ev: &Value) {
    let reg = api.registry();
    let Some(def) = reg.find("", "v1", "events") else {
        return;
    };
    let ns = ev["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = ev["metadata"]["name"].as_str().unwrap_or("");
    if name.is_empty() {
        return;
    }
    let core = to_core(ev);
    let q = Query::default();
    let result = match api.get(def, ns, name) {
        Ok(old) => {
            let mut body = core;
            body["metadata"]["resourceVersion"] = json!(old.rv.to_string());
            api.update(def, ns, name, body, &q, None).await.map(|_| ())
        }
        Err(_) => api.create(def, ns, core, &q).await.map(|_| ()),
    };
    if let Err(e) = result {
        tracing::debug!(event = name, error = ?e, "could not mirror an event to core/v1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_copy_names_the_object_reason_and_count() {
        let ev = json!({
            "metadata": {"name": "demo.1", "namespace": "default"},
            "regarding": {"kind": "VirtualMachine", "name": "demo", "uid": "u"},
            "reason": "SuccessfulCreate", "note": "Started the virtual machine", "type": "Normal",
            "eventTime": "2026-11-26T12:00:00.123456Z", "reportingController": "virt-controller",
            "series": {"count": 3, "lastObservedTime": "2026-11-26T12:05:00.000000Z"}
        });
        let c = to_core(&ev);
        assert_eq!(c["involvedObject"]["name"], "demo");
        assert_eq!(c["message"], "Started the virtual machine");
        assert_eq!(c["count"], 3);
        assert_eq!(c["firstTimestamp"], "2026-11-26T12:00:00Z");
        assert_eq!(c["lastTimestamp"], "2026-11-26T12:05:00Z");
        assert_eq!(c["source"]["component"], "virt-controller");
    }
}

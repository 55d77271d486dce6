//! The one way status is written: a JSON merge patch `{"status": …}`, so only the fields sent
//! change and a field sent as `null` is removed.
//!
//! - [`write_status`]: on the `/status` subresource.
//! - [`write_status_at`]: the same, with `metadata.resourceVersion` as a precondition (a
//!   conflict means the object changed meanwhile: re-read and retry).
//! - [`write_status_no_subresource`]: through the main endpoint, for kinds that have no status
//!   subresource (KubeVirt's VirtualMachineInstance).
//!
//! The status is anything [`Serialize`]: a typed status struct or a `serde_json::Value`
//! holding only the fields to change. An encoding failure is [`kube::Error::SerdeError`].
//!
//! Conditions follow one rule, Kubernetes': a condition's `lastTransitionTime` is when its
//! `status` last changed, so it is kept from the previous condition of the same type while the
//! status stays, whatever else (reason, message, other fields, other conditions) changes.
//! [`transition_time`] is that rule, for every writer and every condition type (typed VMI, VM
//! and DataVolume conditions, JSON ones); [`condition`] builds a KubeVirt condition as JSON with
//! it.

use kube::api::{Api, Patch, PatchParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

/// The body of a status merge patch.
#[derive(Serialize)]
struct StatusPatch<'a, S> {
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Precondition<'a>>,
    status: S,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Precondition<'a> {
    resource_version: Option<&'a str>,
}

impl<S: Serialize> Debug for StatusPatch<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(e) => write!(f, "<unencodable status: {e}>"),
        }
    }
}

/// Where a status patch goes.
#[derive(Clone, Copy)]
enum Endpoint {
    Status,
    Main,
}

/// The one place a status patch is sent.
async fn send<K>(
    api: &Api<K>,
    name: &str,
    endpoint: Endpoint,
    metadata: Option<Precondition<'_>>,
    status: impl Serialize,
) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    tracing::debug!(
        resource = api.resource_url(),
        name,
        resource_version = metadata.as_ref().and_then(|m| m.resource_version),
        subresource = matches!(endpoint, Endpoint::Status),
        "writing status"
    );
    let patch = Patch::Merge(StatusPatch { metadata, status });
    match endpoint {
        Endpoint::Status => {
            api.patch_status(name, &PatchParams::default(), &patch)
                .await
        }
        Endpoint::Main => api.patch(name, &PatchParams::default(), &patch).await,
    }
}

/// Merge-patches `status` into `name`'s `/status` subresource; returns the object written.
pub async fn write_status<K>(
    api: &Api<K>,
    name: &str,
    status: impl Serialize,
) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    send(api, name, Endpoint::Status, None, status).await
}

/// As [`write_status`], with `resource_version` as a precondition in the same patch
/// (`metadata.resourceVersion`): 409 Conflict when the object is at another version. `None`
/// sends `"resourceVersion": null`, i.e. no precondition.
pub async fn write_status_at<K>(
    api: &Api<K>,
    name: &str,
    resource_version: Option<&str>,
    status: impl Serialize,
) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let pre = Precondition { resource_version };
    send(api, name, Endpoint::Status, Some(pre), status).await
}

/// Merge-patches `{"status": status}` through the main endpoint, for kinds without a status
/// subresource (KubeVirt's VirtualMachineInstance: its status is written like its spec).
pub async fn write_status_no_subresource<K>(
    api: &Api<K>,
    name: &str,
    status: impl Serialize,
) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    send(api, name, Endpoint::Main, None, status).await
}

/// A previous condition, as [`transition_time`] sees it: its type, its status and when that
/// status began.
pub struct Previous<'a, T> {
    pub type_: &'a str,
    pub status: &'a str,
    pub since: Option<T>,
}

/// The `lastTransitionTime` a condition of `type_` with `status` gets: the previous condition's
/// of that type when its status is the same (and it has a time), else `now`.
pub fn transition_time<'a, T>(
    previous: impl IntoIterator<Item = Previous<'a, T>>,
    type_: &str,
    status: &str,
    now: T,
) -> T {
    previous
        .into_iter()
        .find(|p| p.type_ == type_)
        .filter(|p| p.status == status)
        .and_then(|p| p.since)
        .unwrap_or(now)
}

/// The conditions of a status in JSON (`status.conditions`), for [`transition_time`].
pub fn previous_json(
    status: &serde_json::Value,
) -> impl Iterator<Item = Previous<'_, serde_json::Value>> {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| Previous {
            type_: c["type"].as_str().unwrap_or(""),
            status: c["status"].as_str().unwrap_or(""),
            since: c
                .get("lastTransitionTime")
                .filter(|t| t.is_string())
                .cloned(),
        })
}

/// A KubeVirt condition as JSON (`type`, `status` "True"/"False", `reason`, `message`,
/// `lastProbeTime: null`, `lastTransitionTime`), its transition time kept from `current`'s
/// (a status in JSON) by [`transition_time`].
pub fn condition(
    current: &serde_json::Value,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &str,
) -> serde_json::Value {
    let status = if status { "True" } else { "False" };
    let since = transition_time(
        previous_json(current),
        type_,
        status,
        serde_json::Value::String(now.to_string()),
    );
    serde_json::json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastProbeTime": null, "lastTransitionTime": since})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn transition_time_changes_only_with_the_status() {
        let current = json!({"conditions": [
            {"type": "Ready", "status": "True", "reason": "", "lastTransitionTime": "T1"},
            {"type": "Paused", "status": "True", "lastTransitionTime": "T2"},
            {"type": "Odd", "status": "True", "lastTransitionTime": null},
        ]});
        // Same status, other reason and message: kept.
        let c = condition(&current, "Ready", true, "Why", "msg", "T9");
        assert_eq!(c["lastTransitionTime"], "T1");
        assert_eq!(
            (c["reason"].as_str(), c["message"].as_str()),
            (Some("Why"), Some("msg"))
        );
        // Status changed: now.
        assert_eq!(
            condition(&current, "Ready", false, "", "", "T9")["lastTransitionTime"],
            "T9"
        );
        // New type, or a previous one without a time: now.
        assert_eq!(
            condition(&current, "AgentConnected", true, "", "", "T9")["lastTransitionTime"],
            "T9"
        );
        assert_eq!(
            condition(&current, "Odd", true, "", "", "T9")["lastTransitionTime"],
            "T9"
        );
        assert_eq!(
            condition(&json!(null), "Ready", true, "", "", "T9")["lastTransitionTime"],
            "T9"
        );
        // Typed conditions: the same rule.
        let prev = [Previous {
            type_: "Ready",
            status: "False",
            since: Some(3),
        }];
        assert_eq!(transition_time(prev, "Ready", "False", 7), 3);
        let prev = [Previous {
            type_: "Ready",
            status: "False",
            since: Some(3),
        }];
        assert_eq!(transition_time(prev, "Ready", "True", 7), 7);
    }

    #[test]
    fn patches_carry_status_and_the_precondition() {
        let p = StatusPatch {
            metadata: None,
            status: json!({"phase": "Bound", "gone": null}),
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"status": {"phase": "Bound", "gone": null}})
        );
        let p = StatusPatch {
            metadata: Some(Precondition {
                resource_version: Some("42"),
            }),
            status: json!({"ready": true}),
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"metadata": {"resourceVersion": "42"}, "status": {"ready": true}})
        );
        let p = StatusPatch {
            metadata: Some(Precondition {
                resource_version: None,
            }),
            status: json!({}),
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"metadata": {"resourceVersion": null}, "status": {}})
        );
    }
}

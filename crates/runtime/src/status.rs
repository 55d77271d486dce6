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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

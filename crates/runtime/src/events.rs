//! Kubernetes Events, as KubeVirt's components record them: the action is the reason, and a
//! failure to record is logged, never fatal.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;

/// A [`Recorder`] publishing as the controller `reporter` (e.g. `"virt-controller"`,
/// `"virt-handler"`, `"cdi-controller"`), with no instance name.
pub fn recorder(client: Client, reporter: &str) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: reporter.into(),
            instance: None,
        },
    )
}

/// A [`Recorder`] publishing as the controller `reporter` running as `instance` (virt-handler
/// names its node, as KubeVirt's does).
pub fn instance_recorder(client: Client, reporter: &str, instance: impl Into<String>) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: reporter.into(),
            instance: Some(instance.into()),
        },
    )
}

/// Records an event about `obj` (the action is the reason, as KubeVirt's are); a failure to
/// record is logged, never fatal.
pub async fn publish_event(
    recorder: &Recorder,
    obj: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, obj).await {
        tracing::warn!(error = %e, reason, "recording an event failed");
    }
}

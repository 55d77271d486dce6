//! A CustomResourceDefinition a user creates is served as kube-apiserver's apiextensions
//! serves it, driven by the real, unmodified kubectl: discovery and REST paths follow the
//! CRD, objects are pruned, defaulted and validated against its structural schema (CEL rules
//! included), and the status and scale subresources, printer columns and selectable fields
//! work.

mod common;
use common::*;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    selectableFields:
    - jsonPath: .spec.color
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [color]
            x-kubernetes-validations:
            - rule: "self.replicas <= 5 || self.color == 'red'"
              message: "only red widgets scale past 5"
            properties:
              color: {type: string, enum: [red, green, blue]}
              replicas: {type: integer, minimum: 0, maximum: 10, default: 1}
              label: {type: string, pattern: '^[a-z]+$'}
          status:
            type: object
            properties:
              replicas: {type: integer}
              ready: {type: boolean}
"#;

fn widget(name: &str, spec: &str) -> String {
    format!("apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: {name}\nspec: {spec}\n")
}

#[test]
fn a_user_crd_is_served_validated_pruned_and_defaulted() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    // Not served before the CRD exists.
    let out = s.kubectl(&["get", "widgets"]);
    assert!(!out.status.success());

    let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(CRD));
    assert!(out.status.success(), "{}", stderr(&out));
    s.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=10s",
        "crd/widgets.example.com",
    ]);
    let crd: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "crd", "widgets.example.com", "-o", "json"]))
            .expect("json");
    assert_eq!(crd["status"]["acceptedNames"]["kind"], "Widget");
    assert_eq!(crd["status"]["storedVersions"], serde_json::json!(["v1"]));

    // Unknown fields are pruned (with kubectl's warning), defaults applied.
    let out = s.kubectl_with(
        "kubectl",
        &["apply", "--validate=warn", "-f", "-"],
        Some(&widget("w1", "{color: green, bogus: 1}")),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown field \"spec.bogus\""),
        "{}",
        stderr(&out)
    );
    let w: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "wd", "w1", "-o", "json"])).expect("json");
    assert_eq!(
        w["spec"],
        serde_json::json!({"color": "green", "replicas": 1})
    );
    assert_eq!(w["metadata"]["generation"], 1);

    // Schema violations name the field, in kube-apiserver's words.
    for (spec, want) in [
        (
            "{color: purple}",
            "spec.color: Unsupported value: \"purple\"",
        ),
        (
            "{color: red, replicas: 20}",
            "spec.replicas: Invalid value: 20",
        ),
        ("{replicas: 2}", "spec.color: Required value"),
        (
            "{color: red, label: 'Up'}",
            "spec.label in body should match '^[a-z]+$'",
        ),
        (
            "{color: blue, replicas: 7}",
            "only red widgets scale past 5",
        ),
        (
            "{color: red, replicas: '3'}",
            "spec.replicas in body must be of type integer",
        ),
    ] {
        let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(&widget("bad", spec)));
        assert!(!out.status.success(), "{spec} was accepted");
        assert!(stderr(&out).contains(want), "{spec}: {}", stderr(&out));
    }
    // Strict field validation refuses what Warn prunes.
    let out = s.kubectl_with(
        "kubectl",
        &["create", "--validate=strict", "-f", "-"],
        Some(&widget("w2", "{color: red, bogus: 1}")),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown field"), "{}", stderr(&out));

    // Printer columns, short name and selectable fields.
    let out = s.kubectl_with(
        "kubectl",
        &["apply", "-f", "-"],
        Some(&widget("w3", "{color: red, replicas: 8}")),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let table = s.ok(&["get", "widgets"]);
    let header = table.lines().next().unwrap_or("");
    assert!(
        header.contains("COLOR") && header.contains("REPLICAS"),
        "{table}"
    );
    assert!(table.contains("w3") && table.contains("red"), "{table}");
    let red = s.ok(&[
        "get",
        "widgets",
        "--field-selector",
        "spec.color=red",
        "-o",
        "name",
    ]);
    assert_eq!(red.trim(), "widget.example.com/w3");

    // The status subresource: a status write keeps spec; a spec write keeps status.
    s.ok(&[
        "patch",
        "widget",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"ready":true,"replicas":1},"spec":{"color":"blue"}}"#,
    ]);
    s.ok(&[
        "patch",
        "widget",
        "w1",
        "--type=merge",
        "-p",
        r#"{"status":{"ready":false},"spec":{"replicas":2}}"#,
    ]);
    let w: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "wd", "w1", "-o", "json"])).expect("json");
    assert_eq!(w["spec"]["color"], "green");
    assert_eq!(w["spec"]["replicas"], 2);
    assert_eq!(w["status"]["ready"], true);
    assert_eq!(w["metadata"]["generation"], 2);

    // The scale subresource, through the object's own validation.
    s.ok(&["scale", "widget", "w1", "--replicas=4"]);
    let w: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "wd", "w1", "-o", "json"])).expect("json");
    assert_eq!(w["spec"]["replicas"], 4);
    let out = s.kubectl(&["scale", "widget", "w1", "--replicas=9"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("only red widgets scale past 5"),
        "{}",
        stderr(&out)
    );

    // explain reads the CRD's schema from OpenAPI.
    let explain = s.ok(&["explain", "widget.spec"]);
    assert!(
        explain.contains("color") && explain.contains("replicas"),
        "{explain}"
    );

    // Deleting the CRD stops serving it and deletes its objects. As in kube-apiserver, the
    // CRD object goes first (kubectl's wait ends there) and its paths right after it.
    s.ok(&["delete", "crd", "widgets.example.com"]);
    assert!(
        // Generous: under a loaded CI machine the instance cleanup takes its time.
        wait_until(std::time::Duration::from_secs(60), || !s
            .kubectl(&["get", "widgets"])
            .status
            .success()),
        "still served 60 s after the CRD was deleted"
    );
    let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(CRD));
    assert!(out.status.success(), "{}", stderr(&out));
    s.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
    ]);
    assert_eq!(s.ok(&["get", "widgets", "-A", "-o", "name"]).trim(), "");
}

#[test]
fn crds_we_cannot_serve_safely_are_refused_with_the_field() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    for (edit, want) in [
        (
            CRD.replace("plural: widgets", "plural: ../widgets"),
            "spec.names.plural",
        ),
        (
            CRD.replace("group: example.com", "group: example"),
            "spec.group: Invalid value: \"example\": should be a domain with at least one dot",
        ),
        (
            CRD.replace("  scope: Namespaced\n", "  scope: Namespaced\n  conversion: {strategy: Webhook}\n"),
            "spec.conversion.strategy: Unsupported value: \"Webhook\"",
        ),
        (
            CRD.replace("      openAPIV3Schema:\n        type: object\n", "      openAPIV3Schema:\n"),
            "spec.versions[0].schema.openAPIV3Schema.type: Required value",
        ),
        (
            CRD.replace("self.replicas <= 5", "self.replicas <=="),
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule",
        ),
    ] {
        let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(&edit));
        assert!(!out.status.success(), "accepted: {want}");
        assert!(stderr(&out).contains(want), "{want}: {}", stderr(&out));
    }
    // A CRD that takes a built-in kind's plural is stored but not accepted, and serves
    // nothing; the built-in kind keeps working.
    let clash = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: events.events.k8s.io}
spec:
  group: events.k8s.io
  scope: Namespaced
  names: {plural: events, kind: Happening}
  versions:
  - {name: v2, served: true, storage: true, schema: {openAPIV3Schema: {type: object}}}
"#;
    let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(clash));
    assert!(out.status.success(), "{}", stderr(&out));
    let crd: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "crd", "events.events.k8s.io", "-o", "json"]))
            .expect("json");
    let conds = crd["status"]["conditions"].to_string();
    assert!(conds.contains("PluralConflict"), "{conds}");
    let out = s.kubectl(&["get", "--raw", "/apis/events.k8s.io/v2"]);
    assert!(!out.status.success(), "a conflicting CRD is served");
    s.ok(&["get", "events.v1.events.k8s.io"]);
}

fn json_of(s: &Server, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&s.ok(args)).expect("json")
}

fn terminating_condition(crd: &serde_json::Value) -> serde_json::Value {
    crd["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Terminating")
        .cloned()
        .unwrap_or_default()
}

/// Deleting a CRD as apiextensions does it: the CRD is Terminating (cleanup finalizer,
/// `InstanceDeletionInProgress`) while its objects go, each honouring its own finalizers;
/// creates are refused meanwhile; the CRD, its paths and its discovery go only when the last
/// object is gone.
#[test]
fn a_deleted_crd_waits_for_its_objects_and_their_finalizers() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(CRD));
    assert!(out.status.success(), "{}", stderr(&out));
    s.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=10s",
        "crd/widgets.example.com",
    ]);
    let held = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\nspec: {color: red}\n";
    let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(held));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = s.kubectl_with(
        "kubectl",
        &["apply", "-f", "-"],
        Some(&widget("free", "{color: blue}")),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    s.ok(&["delete", "crd", "widgets.example.com", "--wait=false"]);
    let crd = json_of(&s, &["get", "crd", "widgets.example.com", "-o", "json"]);
    assert!(crd["metadata"]["deletionTimestamp"].is_string(), "{crd}");
    assert!(
        crd["metadata"]["finalizers"]
            .to_string()
            .contains("customresourcecleanup.apiextensions.k8s.io"),
        "{crd}"
    );
    // Deleting it again changes nothing.
    s.ok(&["delete", "crd", "widgets.example.com", "--wait=false"]);

    // The object without a finalizer goes; the one with a finalizer is marked and stays,
    // and keeps the CRD Terminating.
    assert!(
        wait_until(std::time::Duration::from_secs(20), || {
            s.ok(&["get", "widgets", "-o", "name"]).trim() == "widget.example.com/held"
        }),
        "{}",
        s.ok(&["get", "widgets", "-o", "name"])
    );
    let w = json_of(&s, &["get", "widget", "held", "-o", "json"]);
    assert!(w["metadata"]["deletionTimestamp"].is_string(), "{w}");
    assert!(
        wait_until(std::time::Duration::from_secs(20), || {
            let crd = json_of(&s, &["get", "crd", "widgets.example.com", "-o", "json"]);
            terminating_condition(&crd)["reason"] == "InstanceDeletionInProgress"
        }),
        "no InstanceDeletionInProgress condition"
    );
    let c = terminating_condition(&json_of(
        &s,
        &["get", "crd", "widgets.example.com", "-o", "json"],
    ));
    assert_eq!(c["status"], "True", "{c}");
    assert_eq!(
        c["message"], "CustomResource deletion is in progress",
        "{c}"
    );
    // Still served: discovery lists it, reads work.
    assert!(s
        .ok(&["get", "--raw", "/apis/example.com/v1"])
        .contains("\"widgets\""));

    // New objects are refused while it terminates, as kube-apiserver refuses them.
    let out = s.kubectl_with(
        "kubectl",
        &["create", "-f", "-"],
        Some(&widget("late", "{color: green}")),
    );
    assert!(!out.status.success(), "created during termination");
    assert!(
        stderr(&out).contains("MethodNotAllowed")
            && stderr(&out)
                .contains("create not allowed while custom resource definition is terminating"),
        "{}",
        stderr(&out)
    );
    let out = s.kubectl_with(
        "kubectl",
        &["apply", "--server-side", "-f", "-"],
        Some(&widget("late", "{color: green}")),
    );
    assert!(!out.status.success(), "applied during termination");
    // The CRD's name stays taken.
    let out = s.kubectl_with("kubectl", &["create", "-f", "-"], Some(CRD));
    assert!(stderr(&out).contains("AlreadyExists"), "{}", stderr(&out));

    // The client removes its finalizer: the object goes, then the CRD and what it served.
    s.ok(&[
        "patch",
        "widget",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    // The CRD goes, then (right after it, as in kube-apiserver) its group and paths.
    assert!(
        wait_until(std::time::Duration::from_secs(20), || {
            !s.kubectl(&["get", "crd", "widgets.example.com"])
                .status
                .success()
                && !s
                    .kubectl(&["get", "--raw", "/apis/example.com/v1"])
                    .status
                    .success()
                && !s.kubectl(&["get", "widgets"]).status.success()
        }),
        "the CRD or its paths stayed after its last object went"
    );
    let out = s.kubectl(&["get", "crd", "widgets.example.com"]);
    assert!(stderr(&out).contains("NotFound"), "{}", stderr(&out));

    // Created again, it starts empty and accepts objects.
    let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(CRD));
    assert!(out.status.success(), "{}", stderr(&out));
    s.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=10s",
        "crd/widgets.example.com",
    ]);
    assert_eq!(s.ok(&["get", "widgets", "-A", "-o", "name"]).trim(), "");
    let crd = json_of(&s, &["get", "crd", "widgets.example.com", "-o", "json"]);
    assert!(terminating_condition(&crd).is_null(), "{crd}");
    let out = s.kubectl_with(
        "kubectl",
        &["apply", "-f", "-"],
        Some(&widget("again", "{color: green}")),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Deleting the CRD of one of the server's own kinds does not delete that kind's objects
/// (apiextensions' `OverlappingBuiltInResource`): the CRD goes, the kind stays served.
#[test]
fn deleting_the_crd_of_a_built_in_kind_keeps_its_objects() {
    if !kubectl_available() {
        return;
    }
    let s = Server::start();
    let vm = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: keep}
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        devices:
          disks:
          - {name: root, disk: {bus: virtio}}
        resources: {requests: {memory: 128Mi}}
      volumes:
      - {name: root, containerDisk: {image: demo}}
"#;
    let out = s.kubectl_with("kubectl", &["apply", "-f", "-"], Some(vm));
    assert!(out.status.success(), "{}", stderr(&out));
    s.ok(&[
        "delete",
        "crd",
        "virtualmachines.kubevirt.io",
        "--timeout=20s",
    ]);
    assert_eq!(
        s.ok(&["get", "vm", "-o", "name"]).trim(),
        "virtualmachine.kubevirt.io/keep"
    );
}

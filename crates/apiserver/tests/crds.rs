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

    // Deleting the CRD stops serving it and deletes its objects.
    s.ok(&["delete", "crd", "widgets.example.com"]);
    let out = s.kubectl(&["get", "widgets"]);
    assert!(
        !out.status.success(),
        "still served after the CRD was deleted"
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

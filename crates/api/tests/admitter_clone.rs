//! KubeVirt's vmclone-admitter_test.go (pkg/virt-api/webhooks/validating-webhook/admitters),
//! as a table over a valid clone, plus hostile values.

mod admitters;
use admitters::*;
use serde_json::{json, Value};

fn clone_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut c = json!({
        "apiVersion": "clone.kubevirt.io/v1beta1", "kind": "VirtualMachineClone",
        "metadata": {"name": "testclone", "namespace": "default"},
        "spec": {
            "source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "test-source-vm"},
            "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "test-target-vm"},
            "template": {}
        }
    });
    edit(&mut c);
    c
}

fn filters(spec: &mut Value, f: &str) {
    spec["labelFilters"] = json!([f]);
    spec["annotationFilters"] = json!([f]);
}

#[test]
fn clone_table() {
    let vm = || clone_with(|_| {});
    let mut cases = vec![
        Case::new("should allow legal clone", vm()),
        Case::new(
            "Source without Name",
            clone_with(|c| c["spec"]["source"]["name"] = json!("")),
        )
        .refused("spec.Source.Name", "Source's name cannot be empty"),
        Case::new(
            "Source without Kind",
            clone_with(|c| c["spec"]["source"]["kind"] = json!("")),
        )
        .refused("spec.Source", "Source's Kind cannot be empty"),
        Case::new(
            "Source with nil APIGroup",
            clone_with(|c| {
                c["spec"]["source"]
                    .as_object_mut()
                    .map(|o| o.remove("apiGroup"));
            }),
        )
        .refused("spec.Source.APIGroup", "Source's APIGroup cannot be empty"),
        Case::new(
            "Source with empty APIGroup",
            clone_with(|c| c["spec"]["source"]["apiGroup"] = json!("")),
        )
        .refused("spec.Source.APIGroup", "Source's APIGroup cannot be empty"),
        Case::new(
            "Source with bad kind",
            clone_with(|c| c["spec"]["source"]["kind"] = json!("Foobar")),
        )
        .refused("spec.Source.Kind", "Source kind is not supported"),
        Case::new(
            "should allow source type Snapshot",
            clone_with(|c| c["spec"]["source"]["kind"] = json!("VirtualMachineSnapshot")),
        ),
        Case::new(
            "Should reject unknown target type",
            clone_with(|c| c["spec"]["target"]["kind"] = json!("abcde")),
        )
        .refused("spec.Target.Kind", "Target kind is not supported"),
        Case::new(
            "Should allow source VM that does not exist",
            clone_with(|c| c["spec"]["source"]["name"] = json!("vm-that-doesnt-exist")),
        ),
        Case::new(
            "Should reject a target with the same name as the source",
            clone_with(|c| c["spec"]["target"]["name"] = json!("test-source-vm")),
        )
        .refused(
            "spec.target.name",
            "Target name cannot be equal to source name when both are VirtualMachines",
        ),
        Case::new(
            "snapshot source: the target may have the source's name",
            clone_with(|c| {
                c["spec"]["source"]["kind"] = json!("VirtualMachineSnapshot");
                c["spec"]["target"]["name"] = json!("test-source-vm");
            }),
        ),
        Case::new(
            "valid mac address",
            clone_with(|c| c["spec"]["newMacAddresses"] = json!({"default": "00:00:00:00:00:00"})),
        ),
        Case::new(
            "invalid mac address",
            clone_with(|c| c["spec"]["newMacAddresses"] = json!({"default": "00:00:00:00:00"})),
        )
        .refused(
            "spec.newMacAddresses.default",
            "interface default has malformed MAC address (00:00:00:00:00).",
        ),
        Case::new(
            "hostile: QEMU option injection in a MAC address",
            clone_with(|c| {
                c["spec"]["newMacAddresses"] =
                    json!({"default": "02:00:00:00:00:01,script=/tmp/x"})
            }),
        )
        .refused("spec.newMacAddresses.default", "malformed MAC address"),
        Case::new(
            "too long (8-octet) MAC address",
            clone_with(|c| {
                c["spec"]["newMacAddresses"] = json!({"default": "00:00:00:00:00:00:00:00"})
            }),
        )
        .refused("spec.newMacAddresses.default", "malformed MAC address"),
        Case::new(
            "Should accept valid JSON patches",
            clone_with(|c| {
                c["spec"]["patches"] = json!([r#"{"op":"replace","path":"/spec/template/spec/domain/devices/interfaces/0/macAddress","value":"DE-AD-00-FF-FF-FF"}"#])
            }),
        ),
        Case::new(
            "Should reject invalid JSON patches",
            clone_with(|c| {
                c["spec"]["patches"] = json!([r#"{"op": "replace" "path": "/spec/template/spec/domain/devices/interfaces/0/macAddress", "value": "DE-AD-00-FF-FF-FF"}"#])
            }),
        )
        .refused("spec.patches[0]", "patch is not valid JSON"),
        Case::new("Should reject if snapshot feature gate is not enabled", vm())
            .refused("", "snapshot feature gate is not enabled"),
    ];
    let last = cases.len() - 1;
    cases[last].opts.validation.disabled_feature_gates = vec!["Snapshot".into()];

    for (name, f) in [
        ("negation character alone", "!"),
        ("negation in the middle", "mykey/!something"),
        ("negation in the end", "mykey/something!"),
        ("wildcard in the beginning", "*mykey/something"),
        ("wildcard in the middle", "mykey/*something"),
    ] {
        let msg = if f == "!" {
            "a negation character is not a valid filter"
        } else {
            "is invalid: cannot contain a"
        };
        cases.push(
            Case::new(name, clone_with(|c| filters(&mut c["spec"], f))).refused("spec.labels", msg),
        );
        cases.push(
            Case::new(name, clone_with(|c| filters(&mut c["spec"], f)))
                .refused("spec.annotations", msg),
        );
        cases.push(
            Case::new(name, clone_with(|c| filters(&mut c["spec"]["template"], f)))
                .refused("spec.template.labels", msg),
        );
        cases.push(
            Case::new(name, clone_with(|c| filters(&mut c["spec"]["template"], f)))
                .refused("spec.template.annotations", msg),
        );
    }
    for (name, f) in [
        ("regular filter", "mykey/something"),
        ("wildcard only", "*"),
        ("wildcard in the end", "mykey/something*"),
        ("negation in the beginning", "!mykey/something"),
        ("multibyte first character, negation after it", "é/key"),
    ] {
        cases.push(Case::new(name, clone_with(|c| filters(&mut c["spec"], f))));
        cases.push(Case::new(
            name,
            clone_with(|c| filters(&mut c["spec"]["template"], f)),
        ));
    }
    check(cases);
}

#[test]
fn clone_messages_are_kubevirts() {
    let c = Case::new(
        "negation in the middle",
        clone_with(|c| c["spec"]["labelFilters"] = json!(["mykey/!something"])),
    );
    let errs = c.run().expect_err("refused");
    assert_eq!(
        errs[0].message,
        "spec.labels filter mykey/!something is invalid: cannot contain a negation character (!); FilterRules: NegationChar can be only used at the beginning of the filter"
    );
}

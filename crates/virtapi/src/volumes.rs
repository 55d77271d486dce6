//! `addvolume` / `removevolume` (KubeVirt pkg/virt-api/rest/volumes.go), declaratively as
//! KubeVirt v1.9 does with its `DeclarativeHotplugVolumes` gate (Beta, on): on a
//! VirtualMachine the request changes `spec.template.spec` (the VM controller then changes
//! the running VMI, and the volume stays for the next start); on a VirtualMachineInstance it
//! changes the VMI's spec (ephemeral), and only for a VMI no VM owns.
//!
//! The patches are JSON patches guarded by a `test` of the lists as stored, so two requests
//! racing cannot lose one another: the loser gets a conflict and may retry (virtctl does).

use kubevirt_api::{AddVolumeOptions, RemoveVolumeOptions};
use serde_json::{json, Value};

/// A volume request, decoded and checked.
#[derive(Clone, Debug, PartialEq)]
pub enum VolumeRequest {
    Add(Box<AddVolumeOptions>),
    Remove(RemoveVolumeOptions),
}

impl VolumeRequest {
    pub fn name(&self) -> &str {
        match self {
            VolumeRequest::Add(o) => &o.name,
            VolumeRequest::Remove(o) => &o.name,
        }
    }

    pub fn dry_run(&self) -> bool {
        let d = match self {
            VolumeRequest::Add(o) => &o.dry_run,
            VolumeRequest::Remove(o) => &o.dry_run,
        };
        d.as_ref()
            .and_then(|d| d.first())
            .is_some_and(|d| d == "All")
    }
}

/// `AddVolumeOptions` from a request body, with KubeVirt's messages for what is missing.
/// The name also becomes a QEMU id and a file name on the node: a DNS-1123 label only.
pub fn parse_add(body: &Value) -> Result<VolumeRequest, String> {
    if body["name"].as_str().unwrap_or("").is_empty() {
        return Err("AddVolumeOptions requires name to be set".into());
    }
    if body.get("disk").is_none_or(Value::is_null) {
        return Err("AddVolumeOptions requires disk to not be nil".into());
    }
    if body.get("volumeSource").is_none_or(Value::is_null) {
        return Err("AddVolumeOptions requires VolumeSource to not be nil".into());
    }
    let mut o: AddVolumeOptions = serde_json::from_value(body.clone())
        .map_err(|e| format!("the request body is not an AddVolumeOptions: {e}"))?;
    check_name(&o.name)?;
    o.disk.name = o.name.clone();
    let src = &mut o.volume_source;
    match (&mut src.data_volume, &mut src.persistent_volume_claim) {
        (Some(dv), None) => {
            check_name(&dv.name).map_err(|e| format!("volumeSource.dataVolume.name: {e}"))?;
            dv.hotpluggable = Some(true);
        }
        (None, Some(pvc)) => {
            if pvc.claim_name.is_empty() {
                return Err(
                    "volumeSource.persistentVolumeClaim.claimName must be set".to_string()
                );
            }
            pvc.hotpluggable = Some(true);
        }
        _ => {
            return Err(
                "AddVolumeOptions.volumeSource must have exactly one of dataVolume or persistentVolumeClaim"
                    .into(),
            )
        }
    }
    Ok(VolumeRequest::Add(Box::new(o)))
}

/// `RemoveVolumeOptions` from a request body.
pub fn parse_remove(body: &Value) -> Result<VolumeRequest, String> {
    if body["name"].as_str().unwrap_or("").is_empty() {
        return Err("RemoveVolumeOptions requires name to be set".into());
    }
    let o: RemoveVolumeOptions = serde_json::from_value(body.clone())
        .map_err(|e| format!("the request body is not a RemoveVolumeOptions: {e}"))?;
    Ok(VolumeRequest::Remove(o))
}

fn check_name(name: &str) -> Result<(), String> {
    match kubevirt_api::names::dns1123_label(name) {
        None => Ok(()),
        Some(form) => Err(format!("volume name {name:?} is not valid: {form}")),
    }
}

fn source_name(v: &Value) -> Option<&str> {
    v["dataVolume"]["name"]
        .as_str()
        .or_else(|| v["persistentVolumeClaim"]["claimName"].as_str())
}

fn hotpluggable(v: &Value) -> bool {
    serde_json::from_value::<kubevirt_api::Volume>(v.clone()).is_ok_and(|v| v.is_hotpluggable())
}

/// KubeVirt's `verifyVolumeOption`, with its messages, against the volumes as stored.
pub fn verify(volumes: &Value, req: &VolumeRequest) -> Result<(), String> {
    let volumes = volumes.as_array().map(Vec::as_slice).unwrap_or_default();
    match req {
        VolumeRequest::Add(o) => {
            let src = o
                .volume_source
                .data_volume
                .as_ref()
                .map(|d| d.name.as_str())
                .or(o
                    .volume_source
                    .persistent_volume_claim
                    .as_ref()
                    .map(|p| p.claim_name.as_str()))
                .unwrap_or("");
            for v in volumes {
                if v["name"] == o.name.as_str() {
                    return Err(format!(
                        "Unable to add volume [{}] because volume with that name already exists",
                        o.name
                    ));
                }
                if source_name(v) == Some(src) {
                    return Err(format!(
                        "Unable to add volume source [{src}] because it already exists"
                    ));
                }
            }
            Ok(())
        }
        VolumeRequest::Remove(o) => {
            let found = volumes
                .iter()
                .find(|v| v["name"] == o.name.as_str() || source_name(v) == Some(&o.name));
            match found {
                Some(v) if !hotpluggable(v) => Err(format!(
                    "Unable to remove volume [{}] because it is not hotpluggable",
                    v["name"].as_str().unwrap_or_default()
                )),
                Some(_) => Ok(()),
                None => Err(format!(
                    "Unable to remove volume [{}] because it does not exist",
                    o.name
                )),
            }
        }
    }
}

/// KubeVirt's `generateVolumeRequestPatch`: `spec` is the VMI spec as stored (at `prefix`,
/// `""` for a VMI, `/spec/template` for a VM); a `test` of both lists, then their new values.
pub fn patch(prefix: &str, spec: &Value, req: &VolumeRequest) -> Result<Value, String> {
    let volumes = &spec["volumes"];
    let disks = &spec["domain"]["devices"]["disks"];
    let mut new_volumes = volumes.as_array().cloned().unwrap_or_default();
    let mut new_disks = disks.as_array().cloned().unwrap_or_default();
    match req {
        VolumeRequest::Add(o) => {
            if !new_volumes.iter().any(|v| v["name"] == o.name.as_str()) {
                let mut vol = serde_json::to_value(&o.volume_source).map_err(|e| e.to_string())?;
                vol["name"] = json!(o.name);
                new_volumes.push(vol);
                new_disks.push(serde_json::to_value(&o.disk).map_err(|e| e.to_string())?);
            }
        }
        VolumeRequest::Remove(o) => {
            new_volumes.retain(|v| v["name"] != o.name.as_str());
            new_disks.retain(|d| d["name"] != o.name.as_str());
        }
    }
    let vp = format!("{prefix}/spec/volumes");
    let dp = format!("{prefix}/spec/domain/devices/disks");
    let op = |old: &Value| if old.is_array() { "replace" } else { "add" };
    let mut ops = Vec::new();
    // A missing list is tested as `null` (KubeVirt tests the Go nil slice the same way).
    ops.push(json!({"op": "test", "path": vp, "value": volumes}));
    ops.push(json!({"op": "test", "path": dp, "value": disks}));
    ops.push(json!({"op": op(volumes), "path": vp, "value": new_volumes}));
    ops.push(json!({"op": op(disks), "path": dp, "value": new_disks}));
    Ok(Value::Array(ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(name: &str, dv: &str) -> VolumeRequest {
        parse_add(&json!({
            "name": name, "disk": {"disk": {"bus": "scsi"}, "serial": name},
            "volumeSource": {"dataVolume": {"name": dv}},
        }))
        .expect("add request")
    }

    #[test]
    fn add_options_need_name_disk_and_source_as_kubevirt_says() {
        assert_eq!(
            parse_add(&json!({})).unwrap_err(),
            "AddVolumeOptions requires name to be set"
        );
        assert_eq!(
            parse_add(&json!({"name": "x"})).unwrap_err(),
            "AddVolumeOptions requires disk to not be nil"
        );
        assert_eq!(
            parse_add(&json!({"name": "x", "disk": {}})).unwrap_err(),
            "AddVolumeOptions requires VolumeSource to not be nil"
        );
        assert_eq!(
            parse_remove(&json!({"dryRun": ["All"]})).unwrap_err(),
            "RemoveVolumeOptions requires name to be set"
        );
    }

    #[test]
    fn hostile_names_are_refused_before_anything_is_patched() {
        for bad in ["../../etc", "x,file=/etc/shadow", "UPPER", "a.b", "-x"] {
            let e = parse_add(&json!({
                "name": bad, "disk": {}, "volumeSource": {"dataVolume": {"name": "ok"}},
            }))
            .unwrap_err();
            assert!(e.contains("is not valid"), "{bad}: {e}");
        }
        let e = parse_add(&json!({
            "name": "ok", "disk": {}, "volumeSource": {"dataVolume": {"name": "../x"}},
        }))
        .unwrap_err();
        assert!(e.starts_with("volumeSource.dataVolume.name"), "{e}");
    }

    #[test]
    fn verify_uses_kubevirts_messages() {
        let vols = json!([
            {"name": "root", "containerDisk": {"image": "x"}},
            {"name": "data", "dataVolume": {"name": "data-dv"}},
            {"name": "hot", "dataVolume": {"name": "hot-dv", "hotpluggable": true}},
        ]);
        assert_eq!(
            verify(&vols, &add("root", "new")).unwrap_err(),
            "Unable to add volume [root] because volume with that name already exists"
        );
        assert_eq!(
            verify(&vols, &add("other", "data-dv")).unwrap_err(),
            "Unable to add volume source [data-dv] because it already exists"
        );
        assert!(verify(&vols, &add("new", "new")).is_ok());
        let rm = |n: &str| parse_remove(&json!({"name": n})).unwrap();
        assert_eq!(
            verify(&vols, &rm("data")).unwrap_err(),
            "Unable to remove volume [data] because it is not hotpluggable"
        );
        assert_eq!(
            verify(&vols, &rm("nope")).unwrap_err(),
            "Unable to remove volume [nope] because it does not exist"
        );
        assert!(verify(&vols, &rm("hot")).is_ok());
        assert!(verify(&vols, &rm("hot-dv")).is_ok());
    }

    #[test]
    fn the_patch_tests_the_stored_lists_then_replaces_them() {
        let spec = json!({
            "domain": {"devices": {"disks": [{"name": "root"}]}},
            "volumes": [{"name": "root", "containerDisk": {"image": "x"}}],
        });
        let p = patch("/spec/template", &spec, &add("extra", "extra-dv")).unwrap();
        assert_eq!(
            p[0],
            json!({"op": "test", "path": "/spec/template/spec/volumes", "value": spec["volumes"]})
        );
        assert_eq!(p[2]["op"], "replace");
        assert_eq!(
            p[2]["value"][1],
            json!({"name": "extra", "dataVolume": {"name": "extra-dv", "hotpluggable": true}})
        );
        assert_eq!(
            p[3]["value"][1],
            json!({"name": "extra", "disk": {"bus": "scsi"}, "serial": "extra"})
        );
        let back = patch(
            "",
            &json!({"domain": {"devices": {"disks": p[3]["value"]}}, "volumes": p[2]["value"]}),
            &parse_remove(&json!({"name": "extra"})).unwrap(),
        )
        .unwrap();
        assert_eq!(back[2]["value"], spec["volumes"]);
        assert_eq!(back[3]["value"], spec["domain"]["devices"]["disks"]);
        // No lists yet: added, not replaced.
        let p = patch("", &json!({"domain": {"devices": {}}}), &add("x", "x")).unwrap();
        assert_eq!(
            (p[2]["op"].as_str(), p[3]["op"].as_str()),
            (Some("add"), Some("add"))
        );
    }
}

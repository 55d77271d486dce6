//! Cloud-init data sources: NoCloud (`cidata`) and ConfigDrive (`config-2`) as ISO9660 images,
//! written by a small ISO9660 writer of our own (primary volume + Joliet, so the lowercase names
//! `meta-data`, `user-data`, `openstack/latest/user_data` reach the guest as they are).
//!
//! The files follow KubeVirt's pkg/cloud-init: NoCloud has `meta-data`, `user-data` and
//! `network-config`; ConfigDrive has `openstack/latest/{meta_data.json,user_data,network_data.json}`.

use crate::machine::{CloudInitError, Environment};
use base64::Engine;
use kubevirt_api::VirtualMachineInstance;
use serde::Serialize;
use std::io::Write;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum CloudInitData {
    NoCloud {
        meta_data: String,
        user_data: String,
        network_data: Option<String>,
    },
    ConfigDrive {
        meta_data_json: String,
        user_data: String,
        network_data: Option<String>,
    },
}

impl CloudInitData {
    /// Volume label and files of the image.
    pub fn files(&self) -> (&'static str, Vec<(String, Vec<u8>)>) {
        match self {
            CloudInitData::NoCloud {
                meta_data,
                user_data,
                network_data,
            } => {
                let mut f = vec![
                    ("meta-data".to_string(), meta_data.clone().into_bytes()),
                    ("user-data".to_string(), user_data.clone().into_bytes()),
                ];
                if let Some(n) = network_data {
                    f.push(("network-config".into(), n.clone().into_bytes()));
                }
                ("cidata", f)
            }
            CloudInitData::ConfigDrive {
                meta_data_json,
                user_data,
                network_data,
            } => {
                let mut f = vec![
                    (
                        "openstack/latest/meta_data.json".to_string(),
                        meta_data_json.clone().into_bytes(),
                    ),
                    (
                        "openstack/latest/user_data".to_string(),
                        user_data.clone().into_bytes(),
                    ),
                ];
                if let Some(n) = network_data {
                    f.push((
                        "openstack/latest/network_data.json".into(),
                        n.clone().into_bytes(),
                    ));
                }
                ("config-2", f)
            }
        }
    }

    /// The ISO9660 image.
    pub fn iso(&self) -> Vec<u8> {
        let (label, files) = self.files();
        iso9660(label, &files)
    }

    pub fn write_iso(&self, path: &Path) -> std::io::Result<()> {
        let image = self.iso();
        let tmp = path.with_extension("iso.tmp");
        std::fs::File::create(&tmp)?.write_all(&image)?;
        std::fs::rename(tmp, path)
    }
}

fn decode(
    plain: &Option<String>,
    b64: &Option<String>,
    field: &str,
) -> Result<Option<String>, CloudInitError> {
    if let Some(p) = plain.as_ref().filter(|s| !s.is_empty()) {
        return Ok(Some(p.clone()));
    }
    match b64.as_ref().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(b) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| CloudInitError::Base64 {
                    field: format!("{field}Base64"),
                    reason: e.to_string(),
                })?;
            String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| CloudInitError::NotUtf8 {
                    field: format!("{field}Base64"),
                })
        }
    }
}

/// The data of a cloudInitNoCloud/cloudInitConfigDrive volume. `secretRef` data must have been
/// resolved by the caller into `env.cloud_init_secrets`.
pub fn from_volume(
    vol: &kubevirt_api::Volume,
    vp: &str,
    vmi: &VirtualMachineInstance,
    namespace: &str,
    hostname: &str,
    env: &Environment,
) -> Result<CloudInitData, CloudInitError> {
    let name = vmi.metadata.name.clone().unwrap_or_default();
    // A new VMI (new uid) is a new instance to cloud-init; without a uid, KubeVirt's
    // name.namespace.
    let instance_id = vmi
        .metadata
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("{name}.{namespace}"));
    let secret = env.cloud_init_secrets.get(&vol.name);
    let (kind, plain_u, b64_u, ref_u, plain_n, b64_n, ref_n) =
        if let Some(s) = &vol.cloud_init_no_cloud {
            (
                "cloudInitNoCloud",
                &s.user_data,
                &s.user_data_base64,
                s.secret_ref.is_some(),
                &s.network_data,
                &s.network_data_base64,
                s.network_data_secret_ref.is_some(),
            )
        } else if let Some(s) = &vol.cloud_init_config_drive {
            (
                "cloudInitConfigDrive",
                &s.user_data,
                &s.user_data_base64,
                s.secret_ref.is_some(),
                &s.network_data,
                &s.network_data_base64,
                s.network_data_secret_ref.is_some(),
            )
        } else {
            return Err(CloudInitError::NotCloudInit { field: vp.into() });
        };
    let fp = format!("{vp}.{kind}");
    let user_data = if ref_u {
        secret
            .and_then(|s| s.user_data.clone())
            .ok_or_else(|| CloudInitError::UserDataSecret {
                field: format!("{fp}.secretRef"),
            })?
    } else {
        decode(plain_u, b64_u, &format!("{fp}.userData"))?.unwrap_or_default()
    };
    let network_data = if ref_n {
        Some(secret.and_then(|s| s.network_data.clone()).ok_or_else(|| {
            CloudInitError::NetworkDataSecret {
                field: format!("{fp}.networkDataSecretRef"),
            }
        })?)
    } else {
        decode(plain_n, b64_n, &format!("{fp}.networkData"))?
    };
    let keys = public_keys(secret.map(|s| s.public_keys.as_slice()).unwrap_or_default());
    Ok(if vol.cloud_init_no_cloud.is_some() {
        // KubeVirt writes the NoCloud meta-data as JSON (valid YAML to cloud-init).
        let mut meta = serde_json::json!({
            "instance-id": instance_id,
            "local-hostname": hostname,
        });
        if let Some(k) = keys {
            meta["public-keys"] = k;
        }
        CloudInitData::NoCloud {
            meta_data: meta.to_string(),
            user_data,
            network_data,
        }
    } else {
        let mut meta = serde_json::json!({
            "instance_id": instance_id,
            "uuid": vmi.metadata.uid.clone().unwrap_or_else(|| instance_id.clone()),
            "hostname": hostname,
            "name": hostname,
        });
        if let Some(k) = keys {
            meta["public_keys"] = k;
        }
        CloudInitData::ConfigDrive {
            meta_data_json: meta.to_string(),
            user_data,
            network_data,
        }
    })
}

/// The meta-data's `public-keys`/`public_keys` map as KubeVirt writes it: `{"0": key, "1":
/// key, ...}`, the keys as the Secrets hold them; `None` (no field) without keys.
fn public_keys(keys: &[String]) -> Option<serde_json::Value> {
    (!keys.is_empty()).then(|| {
        serde_json::Value::Object(
            keys.iter()
                .enumerate()
                .map(|(i, k)| (i.to_string(), serde_json::Value::String(k.clone())))
                .collect(),
        )
    })
}

// ------------------------------------------------------------------ ISO9660 + Joliet writer

const SECTOR: usize = 2048;

struct Dir {
    /// Path components from the root ("" for the root).
    path: Vec<String>,
    parent: usize,
    /// (name, index into files) and subdirectory indices.
    files: Vec<(String, usize)>,
    subdirs: Vec<(String, usize)>,
    lba: [u32; 2],
    size: [u32; 2],
}

/// Both-endian u32 / u16 as ISO9660 stores them.
fn both32(v: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..].copy_from_slice(&v.to_be_bytes());
    b
}
fn both16(v: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&v.to_le_bytes());
    b[2..].copy_from_slice(&v.to_be_bytes());
    b
}

/// The primary tree's names: ISO9660 level 2 d-characters (A-Z 0-9 _), `NAME.EXT;1`.
fn primary_name(name: &str, is_dir: bool) -> Vec<u8> {
    let up: String = name
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            c @ ('A'..='Z' | '0'..='9' | '_' | '.') => c,
            _ => '_',
        })
        .collect();
    if is_dir {
        return up
            .replace('.', "_")
            .chars()
            .take(31)
            .collect::<String>()
            .into_bytes();
    }
    let (stem, ext) = match up.rfind('.') {
        Some(i) => (up[..i].replace('.', "_"), up[i + 1..].to_string()),
        None => (up.clone(), String::new()),
    };
    let stem: String = stem.chars().take(30 - ext.len().min(8)).collect();
    let ext: String = ext.chars().take(8).collect();
    format!("{stem}.{ext};1").into_bytes()
}

/// Joliet names are kept as given (UCS-2 big endian), without a `;1` version, as genisoimage does.
fn joliet_name(name: &str) -> Vec<u8> {
    name.encode_utf16()
        .take(64)
        .flat_map(|u| u.to_be_bytes())
        .collect()
}

fn dir_record(name: &[u8], lba: u32, size: u32, is_dir: bool) -> Vec<u8> {
    let len = 33 + name.len() + (name.len() + 1) % 2;
    let mut r = vec![0u8; len];
    r[0] = len as u8;
    r[2..10].copy_from_slice(&both32(lba));
    r[10..18].copy_from_slice(&both32(size));
    // 1970-01-01 00:00:00 UTC: reproducible images.
    r[18..25].copy_from_slice(&[70, 1, 1, 0, 0, 0, 0]);
    r[25] = if is_dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = name.len() as u8;
    r[33..33 + name.len()].copy_from_slice(name);
    r
}

/// Records packed into sectors: a record never crosses a sector boundary.
fn pack(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let used = out.len() % SECTOR;
        if used + r.len() > SECTOR {
            out.resize(out.len() + SECTOR - used, 0);
        }
        out.extend_from_slice(r);
    }
    let pad = (SECTOR - out.len() % SECTOR) % SECTOR;
    out.resize(out.len() + pad, 0);
    out
}

fn sectors(bytes: usize) -> u32 {
    bytes.div_ceil(SECTOR).max(1) as u32
}

/// An ISO9660 image with a Joliet supplementary volume. `files` are `a/b/c` paths.
pub fn iso9660(label: &str, files: &[(String, Vec<u8>)]) -> Vec<u8> {
    // Build the directory tree (breadth-first order = path table order).
    let mut dirs = vec![Dir {
        path: vec![],
        parent: 0,
        files: vec![],
        subdirs: vec![],
        lba: [0; 2],
        size: [0; 2],
    }];
    for (fi, (path, _)) in files.iter().enumerate() {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut cur = 0;
        for (depth, part) in parts.iter().enumerate() {
            if depth + 1 == parts.len() {
                dirs[cur].files.push((part.to_string(), fi));
            } else if let Some(&(_, d)) = dirs[cur].subdirs.iter().find(|(n, _)| n == part) {
                cur = d;
            } else {
                let mut p = dirs[cur].path.clone();
                p.push(part.to_string());
                dirs.push(Dir {
                    path: p,
                    parent: cur,
                    files: vec![],
                    subdirs: vec![],
                    lba: [0; 2],
                    size: [0; 2],
                });
                let new = dirs.len() - 1;
                dirs[cur].subdirs.push((part.to_string(), new));
                cur = new;
            }
        }
    }
    // Path tables need directories ordered by level, then parent, then name.
    let mut order: Vec<usize> = (0..dirs.len()).collect();
    order.sort_by(|&a, &b| {
        (dirs[a].path.len(), dirs[a].path.clone()).cmp(&(dirs[b].path.len(), dirs[b].path.clone()))
    });
    let number: Vec<usize> = {
        let mut n = vec![0; dirs.len()];
        for (i, &d) in order.iter().enumerate() {
            n[d] = i + 1;
        }
        n
    };

    // Directory sizes (records depend only on names, not on addresses).
    let records_of = |dirs: &Vec<Dir>, d: usize, tree: usize, file_lba: &[u32]| -> Vec<Vec<u8>> {
        let dir = &dirs[d];
        let parent = &dirs[dir.parent];
        let mut recs = vec![
            dir_record(&[0], dir.lba[tree], dir.size[tree], true),
            dir_record(&[1], parent.lba[tree], parent.size[tree], true),
        ];
        let name = |n: &str, is_dir: bool| {
            if tree == 0 {
                primary_name(n, is_dir)
            } else {
                joliet_name(n)
            }
        };
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = dir
            .subdirs
            .iter()
            .map(|(n, sd)| {
                let nm = name(n, true);
                (
                    nm.clone(),
                    dir_record(&nm, dirs[*sd].lba[tree], dirs[*sd].size[tree], true),
                )
            })
            .chain(dir.files.iter().map(|(n, fi)| {
                let nm = name(n, false);
                (
                    nm.clone(),
                    dir_record(&nm, file_lba[*fi], files[*fi].1.len() as u32, false),
                )
            }))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        recs.extend(entries.into_iter().map(|(_, r)| r));
        recs
    };
    let no_lba = vec![0u32; files.len()];
    for tree in 0..2 {
        for d in 0..dirs.len() {
            let size = pack(&records_of(&dirs, d, tree, &no_lba)).len() as u32;
            dirs[d].size[tree] = size;
        }
    }

    let path_table = |dirs: &Vec<Dir>, tree: usize, big_endian: bool| -> Vec<u8> {
        let mut t = Vec::new();
        for &d in &order {
            let name = match dirs[d].path.last() {
                None => vec![0u8],
                Some(n) if tree == 0 => primary_name(n, true),
                Some(n) => joliet_name(n),
            };
            t.push(name.len() as u8);
            t.push(0);
            let lba = dirs[d].lba[tree];
            let parent = number[dirs[d].parent] as u16;
            if big_endian {
                t.extend_from_slice(&lba.to_be_bytes());
                t.extend_from_slice(&parent.to_be_bytes());
            } else {
                t.extend_from_slice(&lba.to_le_bytes());
                t.extend_from_slice(&parent.to_le_bytes());
            }
            t.extend_from_slice(&name);
            if name.len() % 2 == 1 {
                t.push(0);
            }
        }
        t
    };
    let pt_size = [
        path_table(&dirs, 0, false).len(),
        path_table(&dirs, 1, false).len(),
    ];
    let pt_sectors = [sectors(pt_size[0]), sectors(pt_size[1])];

    // Layout: 16 system sectors, PVD, SVD, terminator, path tables (L, M per tree),
    // directories (primary, then Joliet), then file data.
    let mut lba: u32 = 19;
    let mut pt_lba = [[0u32; 2]; 2];
    for tree in 0..2 {
        for (e, slot) in pt_lba[tree].iter_mut().enumerate() {
            let _ = e;
            *slot = lba;
            lba += pt_sectors[tree];
        }
    }
    for tree in 0..2 {
        for &d in &order {
            dirs[d].lba[tree] = lba;
            lba += sectors(dirs[d].size[tree] as usize);
        }
    }
    let mut file_lba = Vec::new();
    for (_, data) in files {
        file_lba.push(lba);
        lba += sectors(data.len());
    }
    let total = lba;

    let mut img = vec![0u8; total as usize * SECTOR];
    let put = |img: &mut Vec<u8>, at: u32, data: &[u8]| {
        let o = at as usize * SECTOR;
        img[o..o + data.len()].copy_from_slice(data);
    };
    for (tree, lbas) in pt_lba.iter().enumerate() {
        put(&mut img, lbas[0], &path_table(&dirs, tree, false));
        put(&mut img, lbas[1], &path_table(&dirs, tree, true));
        for d in 0..dirs.len() {
            let data = pack(&records_of(&dirs, d, tree, &file_lba));
            put(&mut img, dirs[d].lba[tree], &data);
        }
    }
    for (i, (_, data)) in files.iter().enumerate() {
        put(&mut img, file_lba[i], data);
    }

    // Volume descriptors.
    for tree in 0..2 {
        let mut vd = vec![0u8; SECTOR];
        vd[0] = if tree == 0 { 1 } else { 2 };
        vd[1..6].copy_from_slice(b"CD001");
        vd[6] = 1;
        let text = |s: &str, len: usize| -> Vec<u8> {
            if tree == 0 {
                let mut b: Vec<u8> = s.bytes().take(len).collect();
                b.resize(len, b' ');
                b
            } else {
                let mut b: Vec<u8> = s
                    .encode_utf16()
                    .take(len / 2)
                    .flat_map(|u| u.to_be_bytes())
                    .collect();
                while b.len() < len {
                    b.extend_from_slice(&[0, b' ']);
                }
                b.truncate(len);
                b
            }
        };
        vd[8..40].copy_from_slice(&text("LINUX", 32));
        // The label is what cloud-init looks for (`cidata`/`config-2`), kept lowercase as
        // genisoimage -V does.
        vd[40..72].copy_from_slice(&text(label, 32));
        vd[80..88].copy_from_slice(&both32(total));
        if tree == 1 {
            vd[88..91].copy_from_slice(b"%/E"); // Joliet UCS-2 level 3
        }
        vd[120..124].copy_from_slice(&both16(1));
        vd[124..128].copy_from_slice(&both16(1));
        vd[128..132].copy_from_slice(&both16(SECTOR as u16));
        vd[132..140].copy_from_slice(&both32(pt_size[tree] as u32));
        vd[140..144].copy_from_slice(&pt_lba[tree][0].to_le_bytes());
        vd[148..152].copy_from_slice(&pt_lba[tree][1].to_be_bytes());
        let root = dir_record(&[0], dirs[0].lba[tree], dirs[0].size[tree], true);
        vd[156..190].copy_from_slice(&root);
        for (o, l) in [
            (190, 128),
            (318, 128),
            (446, 128),
            (702, 37),
            (739, 37),
            (776, 37),
        ] {
            vd[o..o + l].copy_from_slice(&text("", l));
        }
        vd[574..702].copy_from_slice(&text("KUBEVIRT-RS LAUNCHER", 128));
        for o in [813, 830, 847, 864] {
            vd[o..o + 16].copy_from_slice(b"0000000000000000");
        }
        vd[881] = 1;
        put(&mut img, 16 + tree as u32, &vd);
    }
    let mut term = vec![0u8; SECTOR];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    put(&mut img, 18, &term);
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::ResolvedCloudInit;
    use std::process::Command;

    fn isoinfo() -> bool {
        let ok = Command::new("isoinfo").arg("-version").output().is_ok();
        if !ok {
            eprintln!("SKIP: isoinfo (genisoimage) is not installed");
        }
        ok
    }

    #[test]
    fn nocloud_iso_has_lowercase_joliet_names_and_the_cidata_label() {
        let dir = tempfile::tempdir().unwrap();
        let data = CloudInitData::NoCloud {
            meta_data: "instance-id: a\nlocal-hostname: h\n".into(),
            user_data: "#!/bin/sh\necho hi\n".repeat(300),
            network_data: None,
        };
        let path = dir.path().join("ci.iso");
        data.write_iso(&path).unwrap();
        let img = std::fs::read(&path).unwrap();
        assert_eq!(&img[32768 + 40..32768 + 46], b"cidata");
        if !isoinfo() {
            return;
        }
        let l = Command::new("isoinfo")
            .args(["-J", "-l", "-i"])
            .arg(&path)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&l.stdout);
        assert!(out.contains("meta-data"), "{out}");
        assert!(out.contains("user-data"), "{out}");
        let x = Command::new("isoinfo")
            .args(["-J", "-x", "/user-data", "-i"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&x.stdout),
            "#!/bin/sh\necho hi\n".repeat(300)
        );
        let d = Command::new("isoinfo")
            .args(["-d", "-i"])
            .arg(&path)
            .output()
            .unwrap();
        let d = String::from_utf8_lossy(&d.stdout);
        assert!(d.contains("Volume id: cidata"), "{d}");
        assert!(d.contains("Joliet"), "{d}");
    }

    #[test]
    fn configdrive_iso_has_the_openstack_tree() {
        let dir = tempfile::tempdir().unwrap();
        let data = CloudInitData::ConfigDrive {
            meta_data_json: r#"{"uuid":"u"}"#.into(),
            user_data: "#cloud-config\n".into(),
            network_data: Some("{}".into()),
        };
        let path = dir.path().join("cd.iso");
        data.write_iso(&path).unwrap();
        if !isoinfo() {
            return;
        }
        let x = Command::new("isoinfo")
            .args(["-J", "-x", "/openstack/latest/user_data", "-i"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&x.stdout), "#cloud-config\n");
        let x = Command::new("isoinfo")
            .args(["-x", "/OPENSTACK/LATEST/META_DATA.JSON;1", "-i"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&x.stdout), r#"{"uuid":"u"}"#);
    }

    fn vmi_with(volume: serde_json::Value) -> (VirtualMachineInstance, kubevirt_api::Volume) {
        let vmi: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm", "namespace": "ns", "uid": "u-1"},
            "spec": {"domain": {"devices": {}}, "volumes": [volume]},
        }))
        .unwrap();
        let vol = vmi.spec.volumes.as_ref().unwrap()[0].clone();
        (vmi, vol)
    }

    #[test]
    fn secret_data_and_access_credential_keys_reach_the_nocloud_files() {
        let (vmi, vol) = vmi_with(serde_json::json!({"name": "ci", "cloudInitNoCloud": {
            "secretRef": {"name": "ud"}, "networkDataSecretRef": {"name": "nd"}}}));
        let mut env = Environment::fixed(Path::new("/tmp/x"), crate::accel::Accelerator::Tcg);
        // Unresolved: the launcher says which field, it does not start with empty data.
        let err = from_volume(&vol, "spec.volumes[0]", &vmi, "ns", "vm", &env).unwrap_err();
        assert_eq!(err.field(), "spec.volumes[0].cloudInitNoCloud.secretRef");
        env.cloud_init_secrets.insert(
            "ci".into(),
            ResolvedCloudInit {
                user_data: Some("#!/bin/sh\necho from-secret\n".into()),
                network_data: Some("version: 2\n".into()),
                public_keys: vec!["ssh-ed25519 AAAA a@b\n".into(), "ssh-rsa BBBB c@d".into()],
            },
        );
        let CloudInitData::NoCloud {
            meta_data,
            user_data,
            network_data,
        } = from_volume(&vol, "spec.volumes[0]", &vmi, "ns", "vm", &env).unwrap()
        else {
            panic!("not NoCloud")
        };
        assert_eq!(user_data, "#!/bin/sh\necho from-secret\n");
        assert_eq!(network_data.as_deref(), Some("version: 2\n"));
        // KubeVirt's JSON meta-data, keys numbered from 0 as they are in the Secrets.
        assert_eq!(
            meta_data,
            r#"{"instance-id":"u-1","local-hostname":"vm","public-keys":{"0":"ssh-ed25519 AAAA a@b\n","1":"ssh-rsa BBBB c@d"}}"#
        );
    }

    #[test]
    fn configdrive_meta_data_carries_public_keys_only_when_there_are_some() {
        let (vmi, vol) = vmi_with(serde_json::json!({"name": "cd", "cloudInitConfigDrive": {
            "userData": "#cloud-config\n"}}));
        let mut env = Environment::fixed(Path::new("/tmp/x"), crate::accel::Accelerator::Tcg);
        let CloudInitData::ConfigDrive { meta_data_json, .. } =
            from_volume(&vol, "spec.volumes[0]", &vmi, "ns", "vm", &env).unwrap()
        else {
            panic!("not ConfigDrive")
        };
        assert!(!meta_data_json.contains("public_keys"), "{meta_data_json}");
        env.cloud_init_secrets.insert(
            "cd".into(),
            ResolvedCloudInit {
                public_keys: vec!["ssh-ed25519 K".into()],
                ..Default::default()
            },
        );
        let CloudInitData::ConfigDrive { meta_data_json, .. } =
            from_volume(&vol, "spec.volumes[0]", &vmi, "ns", "vm", &env).unwrap()
        else {
            panic!("not ConfigDrive")
        };
        let v: serde_json::Value = serde_json::from_str(&meta_data_json).unwrap();
        assert_eq!(v["public_keys"], serde_json::json!({"0": "ssh-ed25519 K"}));
    }

    #[test]
    fn images_are_reproducible() {
        let f = vec![("meta-data".to_string(), b"x".to_vec())];
        assert_eq!(iso9660("cidata", &f), iso9660("cidata", &f));
    }
}

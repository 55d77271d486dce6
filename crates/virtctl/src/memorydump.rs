//! `virtctl memory-dump get|download|remove VM`: KubeVirt's pkg/virtctl/memorydump, with its
//! flags, messages and claim sizing.
//!
//! - `get` (with `--create-claim`, first a claim sized as KubeVirt sizes it: the VMI's memory +
//!   100 MiB, plus CDIConfig's filesystem overhead, aligned to 1 MiB) asks virt-api's
//!   `memorydump` subresource; with `--output` it then downloads, as `download` does.
//! - `download` waits for the request to be `Completed` and downloads the claim through a
//!   VirtualMachineExport `export-VM-CLAIM` (created and deleted, as KubeVirt's virtctl does).
//! - `remove` asks `removememorydump`.

use crate::client::{connect, Conn, Error};
use crate::GlobalArgs;
use kubevirt_api::memdump::{self, phase};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT_INTERVAL: Duration = Duration::from_secs(2);
const WAIT_TOTAL: Duration = Duration::from_secs(600);

#[derive(clap::Args, Debug, Clone, Default)]
#[command(after_long_help = "\
Examples:
  #Dump memory of a virtual machine instance called 'myvm' to an existing pvc called 'memoryvolume'.
  virtctl memory-dump get myvm --claim-name=memoryvolume

  #Create a PVC called 'memoryvolume' and dump the memory of a virtual machine instance called 'myvm' to it.
  virtctl memory-dump get myvm --claim-name=memoryvolume --create-claim

  #Create and download memory dump to the given output file.
  virtctl memory-dump get myvm --claim-name=memoryvolume --create-claim --output=memoryDump.dump.gz

  #Dump memory again to the same virtual machine with an already associated pvc(existing memory dump on vm status).
  virtctl memory-dump get myvm

  #Download the last memory dump associated on the vm 'myvm' to the given output file.
  virtctl memory-dump download myvm --output=memoryDump.dump.gz

  #Remove the association of the memory dump pvc (to be able to dump to another pvc).
  virtctl memory-dump remove myvm")]
pub struct MemoryDumpArgs {
    /// get, download or remove.
    #[arg(value_name = "get|download|remove")]
    pub action: String,
    /// The VirtualMachine.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// pvc name to contain the memory dump
    #[arg(long, default_value = "")]
    pub claim_name: String,
    /// Create the pvc that will conatin the memory dump
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub create_claim: bool,
    /// Configure and set port-forward in a random port to download the memory dump
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub port_forward: bool,
    /// Specifies the format of the memory dump download (gzipped or raw).
    #[arg(long, default_value = "")]
    pub format: String,
    /// Specify port for port-forward
    #[arg(long, default_value = "0")]
    pub local_port: String,
    /// The storage class for the PVC.
    #[arg(long, default_value = "")]
    pub storage_class: String,
    /// The access mode for the PVC.
    #[arg(long, default_value = "")]
    pub access_mode: String,
    /// Specifies the output path of the memory dump to be downloaded.
    #[arg(long, default_value = "")]
    pub output: String,
}

/// KubeVirt's `generatePVC`: the claim for `--create-claim`, or its refusal of the access mode.
pub fn claim_manifest(
    ns: &str,
    claim: &str,
    bytes: u64,
    storage_class: &str,
    access_mode: &str,
) -> Result<Value, Error> {
    let mode = match access_mode {
        "" => "ReadWriteOnce",
        "ReadOnlyMany" => {
            return Err(Error::Failed(
                "cannot dump memory to a readonly pvc, use either ReadWriteOnce or ReadWriteMany if supported".into(),
            ))
        }
        m @ ("ReadWriteOnce" | "ReadWriteMany") => m,
        _ => {
            return Err(Error::Failed(
                "invalid access mode, use either ReadWriteOnce or ReadWriteMany if supported"
                    .into(),
            ))
        }
    };
    let mut pvc = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": ns,
            "labels": {"cdi.kubevirt.io/applyStorageProfile": "true"}},
        "spec": {
            "accessModes": [mode],
            "resources": {"requests": {"storage":
                kubevirt_api::quantity::Quantity::from_value(i128::from(bytes)).to_string()}},
        },
    });
    if !storage_class.is_empty() {
        pvc["spec"]["storageClassName"] = json!(storage_class);
    }
    Ok(pvc)
}

/// The export `download` creates (KubeVirt's `getVMExportName`).
pub fn export_name(vm: &str, claim: &str) -> String {
    format!("export-{vm}-{claim}")
}

async fn create_claim(c: &Conn, a: &MemoryDumpArgs) -> crate::Result<()> {
    let ns = &c.namespace;
    let vm = c
        .get(&format!(
            "/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{}",
            a.vm
        ))
        .await?;
    if !vm["status"]["memoryDumpRequest"].is_null() {
        return Err(Error::Failed(
            "please remove current memory dump association before creating a new claim for a new memory dump".into(),
        ));
    }
    let pvc_path = format!(
        "/api/v1/namespaces/{ns}/persistentvolumeclaims/{}",
        a.claim_name
    );
    match c.get(&pvc_path).await {
        Ok(_) => {
            return Err(Error::Failed(format!(
            "PVC {ns}/{} already exists, check if it should be created if not remove create flag",
            a.claim_name
        )))
        }
        Err(e) if e.api_code() == Some(404) => {}
        Err(e) => return Err(e),
    }
    let vmi = c
        .get(&format!(
            "/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{}",
            a.vm
        ))
        .await?;
    let spec: kubevirt_api::VirtualMachineInstanceSpec =
        serde_json::from_value(vmi["spec"].clone())
            .map_err(|e| Error::Failed(format!("decoding the VMI: {e}")))?;
    let expected = memdump::expected_dump_bytes(&spec);
    let overhead = match c
        .get("/apis/cdi.kubevirt.io/v1beta1/cdiconfigs/config")
        .await
    {
        Ok(v) => {
            let config: kubevirt_api::CDIConfig = serde_json::from_value(v)
                .map_err(|e| Error::Failed(format!("decoding CDIConfig config: {e}")))?;
            let class = (!a.storage_class.is_empty()).then_some(a.storage_class.as_str());
            memdump::fs_overhead(Some(&config), class)
        }
        Err(e) if e.api_code() == Some(404) => {
            println!("Using default 5.5% filesystem overhead for pvc size");
            memdump::DEFAULT_FS_OVERHEAD.to_string()
        }
        Err(e) => return Err(e),
    };
    let size = memdump::size_with_fs_overhead(expected, &overhead).map_err(Error::Failed)?;
    let pvc = claim_manifest(ns, &a.claim_name, size, &a.storage_class, &a.access_mode)?;
    c.json(
        http::Method::POST,
        &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims"),
        Some(&pvc),
    )
    .await?;
    println!("PVC {ns}/{} created", a.claim_name);
    Ok(())
}

/// KubeVirt's `WaitForMemoryDumpComplete`: the claim of the completed request. A request
/// that failed ends the wait with its message (KubeVirt's virtctl waits out its 10 minutes).
async fn wait_completed(c: &Conn, vm: &str) -> crate::Result<String> {
    let path = format!(
        "/apis/kubevirt.io/v1/namespaces/{}/virtualmachines/{vm}",
        c.namespace
    );
    let deadline = tokio::time::Instant::now() + WAIT_TOTAL;
    loop {
        let v = c.get(&path).await?;
        let req = &v["status"]["memoryDumpRequest"];
        let claim = req["claimName"].as_str().unwrap_or_default().to_string();
        match req["phase"].as_str() {
            None => {}
            Some(phase::COMPLETED) => {
                println!("Memory dump completed successfully");
                return Ok(claim);
            }
            Some(phase::FAILED) => {
                return Err(Error::Failed(format!(
                    "memory dump failed: {}",
                    req["message"].as_str().unwrap_or_default()
                )))
            }
            Some(p) => {
                println!("Waiting for memorydump {claim} to complete, current phase: {p}...")
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Failed("timed out waiting for the condition".into()));
        }
        tokio::time::sleep(WAIT_INTERVAL).await;
    }
}

async fn download(g: &GlobalArgs, c: &Conn, a: &MemoryDumpArgs) -> crate::Result<()> {
    if a.output.is_empty() {
        return Err(Error::Failed(
            "missing outputFile to download the memory dump".into(),
        ));
    }
    let claim = wait_completed(c, &a.vm).await?;
    if claim.is_empty() {
        return Err(Error::Failed(
            "claim name not on vm memory dump request".into(),
        ));
    }
    let export = crate::vmexport::VmExportArgs {
        function: "download".into(),
        name: export_name(&a.vm, &claim),
        pvc: Some(claim),
        output: Some(a.output.clone()),
        format: (a.format == "raw").then(|| "raw".to_string()),
        insecure: true,
        retry: 2,
        ..Default::default()
    };
    crate::vmexport::run(g, export).await.map(|_| ())
}

pub async fn run(g: &GlobalArgs, a: MemoryDumpArgs) -> crate::Result<i32> {
    if a.port_forward {
        return Err(Error::Usage(
            "--port-forward is not needed: kubevirt-rs serves exports on the API server's own listener".into(),
        ));
    }
    if !a.claim_name.is_empty() {
        memdump::check_claim(&a.claim_name).map_err(Error::Usage)?;
    }
    let c = connect(g, false).await?;
    match a.action.as_str() {
        "get" => {
            if a.create_claim {
                if a.claim_name.is_empty() {
                    return Err(Error::Failed("missing claim name".into()));
                }
                create_claim(&c, &a).await?;
            }
            let body = json!({"claimName": a.claim_name});
            c.put_subresource("virtualmachines", &a.vm, memdump::SUBRESOURCE, Some(&body))
                .await
                .map_err(|e| e.context("error dumping vm memory, "))?;
            println!("Successfully submitted memory dump request of VM {}", a.vm);
            if !a.output.is_empty() {
                download(g, &c, &a).await?;
            }
        }
        "download" => download(g, &c, &a).await?,
        "remove" => {
            c.put_subresource("virtualmachines", &a.vm, memdump::REMOVE_SUBRESOURCE, None)
                .await
                .map_err(|e| e.context("error removing memory dump association, "))?;
            println!(
                "Successfully submitted remove memory dump association of VM {}",
                a.vm
            );
        }
        other => return Err(Error::Failed(format!("invalid action type {other}"))),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_made_as_kubevirt_makes_them() {
        let pvc = claim_manifest("ns", "dump", 376 << 20, "", "").unwrap();
        assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "376Mi");
        assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(
            pvc["metadata"]["labels"]["cdi.kubevirt.io/applyStorageProfile"],
            "true"
        );
        assert!(pvc["spec"].get("storageClassName").is_none());
        let pvc = claim_manifest("ns", "dump", 1 << 30, "fast", "ReadWriteMany").unwrap();
        assert_eq!(pvc["spec"]["storageClassName"], "fast");
        assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteMany"]));
        assert_eq!(
            claim_manifest("ns", "d", 1, "", "ReadOnlyMany")
                .unwrap_err()
                .to_string(),
            "cannot dump memory to a readonly pvc, use either ReadWriteOnce or ReadWriteMany if supported"
        );
        assert_eq!(
            claim_manifest("ns", "d", 1, "", "RWO")
                .unwrap_err()
                .to_string(),
            "invalid access mode, use either ReadWriteOnce or ReadWriteMany if supported"
        );
        assert_eq!(export_name("vm", "c"), "export-vm-c");
    }
}

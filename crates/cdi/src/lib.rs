//! CDI: DataVolume importer and uploader (HTTP, registry, upload, clone, blank; raw/qcow2,
//! compressed) with progress. Filled by the CDI issue.

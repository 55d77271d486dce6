//! The embedded Kubernetes-compatible API server (discovery, CRUD, watch, admission over an
//! embedded store). Filled by the API-server issue; see `docs/architecture.md`.

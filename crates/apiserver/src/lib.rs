//! An embedded Kubernetes-compatible API server: the single-node mode of kubevirt-rs serves
//! KubeVirt's resources (and the core kinds our users touch) to unmodified kubectl, kube-rs and
//! the Python client, from a crash-safe redb store.
//!
//! Layers, bottom up: [`store`] (objects, revisions, events) → [`objects`] (Kubernetes object
//! semantics) → [`http`] (REST paths, content types, watch streams, auth) → [`server`] (TLS,
//! kubeconfig, bootstrap). [`gc`] runs the server's own controllers.

pub mod audit;
pub mod auth;
pub mod crd;
pub mod discovery;
pub mod error;
pub mod events;
pub mod gc;
pub mod http;
pub mod jsonpath;
pub mod limits;
pub mod managed;
pub mod metrics;
pub mod objects;
pub mod openapi_v2;
pub mod patch;
pub mod proto;
pub mod rbac;
pub mod registry;
pub mod selector;
pub mod server;
pub mod services;
pub mod store;
pub mod structural;
pub mod users;

pub use http::SubresourceHandler;
pub use limits::Limits;
pub use objects::{ApiServer, Query};
pub use server::{start, Config, Running};

//! CDI control plane.

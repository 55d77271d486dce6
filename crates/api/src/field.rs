//! Field errors: one problem with a user's object, located by its field path.
//!
//! These map one to one onto Kubernetes `StatusCause`s (`reason` is the cause type, `field`
//! the path such as `spec.domain.devices.disks[0].name`), which is how KubeVirt's webhooks
//! report denials and how kubectl prints them.

use serde::Serialize;
use std::fmt;

/// Kubernetes `metav1.CauseType` values used by KubeVirt's admitters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CauseType {
    FieldValueInvalid,
    FieldValueRequired,
    FieldValueDuplicate,
    FieldValueNotSupported,
    FieldValueTypeInvalid,
    /// A field the schema does not have (strict field validation).
    FieldValueUnknown,
    FieldValueForbidden,
    FieldValueTooLong,
    FieldValueNotFound,
    FieldValueTooMany,
}

impl CauseType {
    pub fn as_str(self) -> &'static str {
        match self {
            CauseType::FieldValueInvalid => "FieldValueInvalid",
            CauseType::FieldValueRequired => "FieldValueRequired",
            CauseType::FieldValueDuplicate => "FieldValueDuplicate",
            CauseType::FieldValueNotSupported => "FieldValueNotSupported",
            CauseType::FieldValueTypeInvalid => "FieldValueTypeInvalid",
            CauseType::FieldValueUnknown => "FieldValueUnknown",
            CauseType::FieldValueForbidden => "FieldValueForbidden",
            CauseType::FieldValueTooLong => "FieldValueTooLong",
            CauseType::FieldValueNotFound => "FieldValueNotFound",
            CauseType::FieldValueTooMany => "FieldValueTooMany",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path of the offending field, `spec.volumes[1].name`; empty for the object as a whole.
    pub field: String,
    pub reason: CauseType,
    pub message: String,
}

impl FieldError {
    pub fn new(reason: CauseType, field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason,
            message: message.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(CauseType::FieldValueInvalid, field, message)
    }

    pub fn required(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(CauseType::FieldValueRequired, field, message)
    }

    pub fn duplicate(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(CauseType::FieldValueDuplicate, field, message)
    }

    pub fn not_supported(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(CauseType::FieldValueNotSupported, field, message)
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// A field path under construction, printed the way `k8s.io/apimachinery/pkg/util/validation/field`
/// prints it: `spec.domain.devices.disks[0].name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path(String);

impl Path {
    pub fn root(name: &str) -> Self {
        Path(name.to_string())
    }

    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Path(name.to_string())
        } else {
            Path(format!("{}.{}", self.0, name))
        }
    }

    pub fn index(&self, i: usize) -> Self {
        Path(format!("{}[{}]", self.0, i))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&Path> for String {
    fn from(p: &Path) -> String {
        p.0.clone()
    }
}

impl From<Path> for String {
    fn from(p: Path) -> String {
        p.0
    }
}

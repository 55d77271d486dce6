//! Structural schemas of CustomResourceDefinition versions: what kube-apiserver's
//! apiextensions-apiserver does with `schema.openAPIV3Schema` for custom resources.
//!
//! [`StructuralSchema::compile`] checks a version's schema the way `apiextensions.k8s.io/v1`
//! does (it must be structural, its defaults must validate against their own schema, its CEL
//! rules must compile) and keeps a compiled tree: patterns as [`regex::Regex`], rules as
//! [`cel::Program`]s. [`StructuralSchema::admit`] then does to every custom resource written
//! what kube-apiserver does before storing it, in its order: prune unknown fields, apply
//! defaults, validate (OpenAPI value validations, embedded resources, list types, then the
//! `x-kubernetes-validations` CEL rules).
//!
//! Field errors follow this crate's convention: `field` is the path without a leading dot
//! (`spec.items[0].name`) and `message` is kube-apiserver's `ErrorBody`
//! (`Invalid value: 20: spec.replicas in body should be less than or equal to 10`).
//!
//! Not supported (compared with kube-apiserver 1.33):
//! * static CEL type checking at compile time: rules are parsed and their variables checked
//!   (only `self` and `oldSelf`, plus comprehension variables), but a call of an unknown
//!   function or a type mismatch is reported when the rule runs, as
//!   `... evaluating rule: ...`;
//! * cel-go's exact static cost estimate: `CostEstimator` follows its shape (sizes from
//!   `maxLength`/`maxItems`/`maxProperties` or one request's worth, comprehensions times their
//!   range, string scans, times the places the rule runs) and refuses a rule over
//!   apiextensions' per-expression limit with its message, but estimates an expression whose
//!   schema it cannot follow as size 1, so near the limit it accepts what kube might refuse;
//!   the runtime charge below catches those;
//! * CEL's `timestamp`/`duration` (the `cel` crate's `chrono` feature is off to keep compile
//!   time down), `format: date-time` strings are plain strings in CEL, and kube's extension
//!   libraries beyond `strings` and `lists` (no `quantity`, `url`, `ip`, `cidr`, `isSorted`...);
//! * `optionalOldSelf` (ratcheting), and correlation of `oldSelf` into atomic lists;
//! * the completeness check of value validations (`anyOf` naming a property that the
//!   structural part does not specify);
//! * numeric formats (`int32`, `int64`, `float`, `double`) are not range checked, exactly as
//!   kube-apiserver strips them before validating; unknown formats are accepted.
//!
//! CEL cost: the `cel` crate has no cost tracking, so each rule evaluation is charged an
//! estimate before it runs: `rule AST size × (size of self [+ oldSelf] + 1) ^ max(1,
//! comprehension nesting)`, where the size counts JSON nodes plus string bytes / 8. A rule
//! whose charge exceeds kube's per-call limit (1,000,000) is not run and reported as exceeding
//! its call cost; the charges of one `admit` are taken from kube's per-request budget
//! (10,000,000), after which no further rules run. Values nested deeper than
//! [`MAX_DEPTH`] are refused rather than walked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr};
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env, Program, Value as CelValue};
use kubevirt_api::{CauseType, FieldError};
use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

/// Deepest schema or value nesting this module walks; kube's JSON decoder stops at a similar
/// depth, and it keeps every recursion here far from the stack's end.
pub const MAX_DEPTH: usize = 200;
/// kube-apiserver's `PerCallLimit` for one CEL evaluation.
pub const CEL_PER_CALL_LIMIT: f64 = 1_000_000.0;
/// kube-apiserver's `RuntimeCELCostBudget` for one object.
pub const CEL_RUNTIME_BUDGET: f64 = 10_000_000.0;
/// Largest compiled size of one `pattern`.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

const TYPES: [&str; 6] = ["array", "boolean", "integer", "number", "object", "string"];
const REASONS: [&str; 4] = [
    "FieldValueDuplicate",
    "FieldValueForbidden",
    "FieldValueInvalid",
    "FieldValueRequired",
];

/// A CRD version's compiled `openAPIV3Schema`.
pub struct StructuralSchema {
    root: Node,
    env: Arc<Env>,
}

impl std::fmt::Debug for StructuralSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StructuralSchema").finish_non_exhaustive()
    }
}

/// What [`StructuralSchema::admit`] did and found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Paths of the unknown fields dropped, `.spec.foo`, `.spec.items[0].bar`.
    pub pruned: Vec<String>,
    /// Validation errors; the object must not be stored when there are any.
    pub errors: Vec<FieldError>,
}

#[derive(Default)]
struct Node {
    ty: String,
    nullable: bool,
    format: String,
    int_or_string: bool,
    preserve: bool,
    embedded: bool,
    properties: BTreeMap<String, Node>,
    additional: Option<Additional>,
    items: Option<Box<Node>>,
    default: Option<Value>,
    enumeration: Option<Vec<Value>>,
    pattern: Option<(String, Regex)>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: bool,
    exclusive_maximum: bool,
    multiple_of: Option<f64>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    min_properties: Option<u64>,
    max_properties: Option<u64>,
    required: Vec<String>,
    all_of: Vec<Node>,
    any_of: Vec<Node>,
    one_of: Vec<Node>,
    not: Option<Box<Node>>,
    list_type: Option<String>,
    map_keys: Vec<String>,
    rules: Vec<Rule>,
}

enum Additional {
    Bool(bool),
    Schema(Box<Node>),
}

impl Node {
    fn additional_schema(&self) -> Option<&Node> {
        match &self.additional {
            Some(Additional::Schema(s)) => Some(s),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reason {
    Invalid,
    Forbidden,
    Required,
    Duplicate,
}

struct Rule {
    source: String,
    program: Program,
    message: String,
    message_expression: Option<Program>,
    reason: Reason,
    field_path: Option<String>,
    uses_old_self: bool,
    ast_size: f64,
    nesting: i32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Root,
    Item,
    Field,
}

// ---------------------------------------------------------------------------------------------
// Small helpers: paths and kube-style messages.

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A bad value the way `field.Error` prints it: strings quoted, scalars bare, the rest as JSON.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        Value::Null => "\"null\"".to_string(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// Go's `%v` of a float64 bound.
fn num(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

fn invalid(field: impl Into<String>, value: &str, detail: &str) -> FieldError {
    FieldError::invalid(field, format!("Invalid value: {value}: {detail}"))
}

fn required(field: impl Into<String>, detail: &str) -> FieldError {
    if detail.is_empty() {
        FieldError::required(field, "Required value")
    } else {
        FieldError::required(field, format!("Required value: {detail}"))
    }
}

/// `field.Forbidden`; `CauseType` has no `FieldValueForbidden`, so the cause is "invalid".
fn forbidden(field: impl Into<String>, detail: &str) -> FieldError {
    FieldError::invalid(field, format!("Forbidden: {detail}"))
}

fn not_supported(field: impl Into<String>, value: &str, supported: &[String]) -> FieldError {
    let list: Vec<String> = supported.iter().map(|s| quote(s)).collect();
    FieldError::not_supported(
        field,
        format!(
            "Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ),
    )
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) => {
            if is_integer(n) {
                "integer"
            } else {
                "number"
            }
        }
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(n: &serde_json::Number) -> bool {
    n.is_i64()
        || n.is_u64()
        || n.as_f64()
            .is_some_and(|f| f.fract() == 0.0 && f.is_finite())
}

/// Equality of JSON values with numbers compared by value (`1` equals `1.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(i), Some(j)) => i == j,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// A canonical text of a JSON value for hashing (numbers by value, keys sorted by serde_json).
fn canonical(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9e15 => (f as i64).to_string(),
                _ => n.to_string(),
            },
        },
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", quote(k), canonical(&o[k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        other => other.to_string(),
    }
}

fn depth_of(v: &Value, limit: usize) -> usize {
    // Iterative, so a hostile value cannot overflow the stack here.
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        if max > limit {
            return max;
        }
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|c| (c, d + 1))),
            _ => {}
        }
    }
    max
}

// ---------------------------------------------------------------------------------------------
// Compiling.

struct Compiler {
    env: Arc<Env>,
    errs: Vec<FieldError>,
}

fn new_env() -> Arc<Env> {
    let mut env = Env::stdlib();
    // kube-apiserver's CEL environment includes the strings and lists libraries.
    let _ = env.add_extension(cel::extensions::strings);
    let _ = env.add_extension(cel::extensions::lists);
    Arc::new(env)
}

impl StructuralSchema {
    /// Compile a CRD version's openAPIV3Schema. Errors name the field under `base`
    /// (e.g. base = "spec.versions[0].schema.openAPIV3Schema") with kube-apiserver's messages.
    pub fn compile(schema: &Value, base: &str) -> Result<StructuralSchema, Vec<FieldError>> {
        if depth_of(schema, MAX_DEPTH) > MAX_DEPTH {
            return Err(vec![invalid(
                base,
                "\"\"",
                &format!("must not be nested more than {MAX_DEPTH} levels deep"),
            )]);
        }
        let mut c = Compiler {
            env: new_env(),
            errs: Vec::new(),
        };
        if schema.get("nullable").and_then(Value::as_bool) == Some(true) {
            c.errs.push(forbidden(
                child(base, "nullable"),
                "nullable cannot be true at the root",
            ));
        }
        let root = c.parse(schema, base, Level::Root, false, Meta::None);
        if c.errs.is_empty() {
            c.check_defaults(&root, base);
        }
        if c.errs.is_empty() {
            check_rule_costs(&root, base, 1.0, &mut c.errs, 0);
        }
        if c.errs.is_empty() {
            Ok(StructuralSchema { root, env: c.env })
        } else {
            let mut errs = c.errs;
            errs.sort_by(|a, b| a.field.cmp(&b.field).then(a.message.cmp(&b.message)));
            errs.dedup();
            Err(errs)
        }
    }
}

/// Where a schema node sits relative to a resource's own metadata.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Meta {
    None,
    /// `apiVersion`, `kind` or `metadata` of the top-level resource: no defaults.
    TopLevel(&'static str),
    /// Those fields of an embedded resource.
    Embedded,
}

fn opt_u64(c: &mut Compiler, o: &Map<String, Value>, name: &str, path: &str) -> Option<u64> {
    let v = o.get(name)?;
    match v.as_u64() {
        Some(n) => Some(n),
        None => {
            c.errs.push(invalid(
                child(path, name),
                &show(v),
                "must be a non-negative integer",
            ));
            None
        }
    }
}

fn opt_f64(c: &mut Compiler, o: &Map<String, Value>, name: &str, path: &str) -> Option<f64> {
    let v = o.get(name)?;
    match v.as_f64() {
        Some(n) => Some(n),
        None => {
            c.errs
                .push(invalid(child(path, name), &show(v), "must be a number"));
            None
        }
    }
}

fn opt_bool(c: &mut Compiler, o: &Map<String, Value>, name: &str, path: &str) -> bool {
    match o.get(name) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            c.errs
                .push(invalid(child(path, name), &show(v), "must be a boolean"));
            false
        }
    }
}

fn opt_str(c: &mut Compiler, o: &Map<String, Value>, name: &str, path: &str) -> String {
    match o.get(name) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            c.errs
                .push(invalid(child(path, name), &show(v), "must be a string"));
            String::new()
        }
    }
}

impl Compiler {
    /// Parse one schema node at `path`. `nested` is true under `allOf`/`anyOf`/`oneOf`/`not`,
    /// where only value validations are allowed.
    fn parse(&mut self, v: &Value, path: &str, lvl: Level, nested: bool, meta: Meta) -> Node {
        let mut n = Node::default();
        let Some(o) = v.as_object() else {
            self.errs
                .push(invalid(path, &show(v), "must be a JSON schema object"));
            return n;
        };

        // specStandardValidatorV3.
        n.ty = opt_str(self, o, "type", path);
        if n.ty == "null" {
            self.errs.push(forbidden(
                child(path, "type"),
                "type cannot be set to null, use nullable as an alternative",
            ));
        } else if !n.ty.is_empty() && !TYPES.contains(&n.ty.as_str()) {
            let supported: Vec<String> = TYPES.iter().map(|s| s.to_string()).collect();
            self.errs.push(not_supported(
                child(path, "type"),
                &quote(&n.ty),
                &supported,
            ));
        }
        for (k, what) in [
            ("id", "id is not supported"),
            ("additionalItems", "additionalItems is not supported"),
            ("patternProperties", "patternProperties is not supported"),
            ("definitions", "definitions is not supported"),
            ("dependencies", "dependencies is not supported"),
            ("$ref", "$ref is not supported"),
        ] {
            if o.get(k).is_some_and(|v| !v.is_null()) {
                self.errs.push(forbidden(child(path, k), what));
            }
        }
        if let Some(Value::Array(_)) = o.get("items") {
            self.errs.push(forbidden(
                child(path, "items"),
                "items must be a schema object and not an array",
            ));
        }
        if let Meta::TopLevel(field) = meta {
            if o.contains_key("default") {
                self.errs.push(forbidden(
                    child(path, "default"),
                    &format!("must not be set in top-level {field}"),
                ));
            }
        }
        if opt_bool(self, o, "uniqueItems", path) {
            self.errs.push(forbidden(
                child(path, "uniqueItems"),
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            ));
        }

        n.nullable = opt_bool(self, o, "nullable", path);
        n.format = opt_str(self, o, "format", path);
        n.int_or_string = opt_bool(self, o, "x-kubernetes-int-or-string", path);
        n.embedded = opt_bool(self, o, "x-kubernetes-embedded-resource", path);
        match o.get("x-kubernetes-preserve-unknown-fields") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(true)) => n.preserve = true,
            Some(Value::Bool(false)) => self.errs.push(invalid(
                child(path, "x-kubernetes-preserve-unknown-fields"),
                "false",
                "must be true or undefined",
            )),
            Some(other) => self.errs.push(invalid(
                child(path, "x-kubernetes-preserve-unknown-fields"),
                &show(other),
                "must be a boolean",
            )),
        }
        if meta != Meta::None && n.embedded {
            self.errs.push(forbidden(
                child(path, "x-kubernetes-embedded-resource"),
                "must not be used inside of resource meta",
            ));
        }

        // Value validations.
        n.minimum = opt_f64(self, o, "minimum", path);
        n.maximum = opt_f64(self, o, "maximum", path);
        n.exclusive_minimum = opt_bool(self, o, "exclusiveMinimum", path);
        n.exclusive_maximum = opt_bool(self, o, "exclusiveMaximum", path);
        n.multiple_of = opt_f64(self, o, "multipleOf", path);
        n.min_length = opt_u64(self, o, "minLength", path);
        n.max_length = opt_u64(self, o, "maxLength", path);
        n.min_items = opt_u64(self, o, "minItems", path);
        n.max_items = opt_u64(self, o, "maxItems", path);
        n.min_properties = opt_u64(self, o, "minProperties", path);
        n.max_properties = opt_u64(self, o, "maxProperties", path);
        match o.get("enum") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) => n.enumeration = Some(a.clone()),
            Some(other) => self.errs.push(invalid(
                child(path, "enum"),
                &show(other),
                "must be an array",
            )),
        }
        match o.get("required") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) => {
                for (i, r) in a.iter().enumerate() {
                    match r.as_str() {
                        Some(s) => n.required.push(s.to_string()),
                        None => self.errs.push(invalid(
                            index(&child(path, "required"), i),
                            &show(r),
                            "must be a string",
                        )),
                    }
                }
            }
            Some(other) => self.errs.push(invalid(
                child(path, "required"),
                &show(other),
                "must be an array",
            )),
        }
        let pattern = opt_str(self, o, "pattern", path);
        if !pattern.is_empty() {
            match RegexBuilder::new(&pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
            {
                Ok(re) => n.pattern = Some((pattern, re)),
                Err(e) => self.errs.push(invalid(
                    child(path, "pattern"),
                    &quote(&pattern),
                    &format!("must be a valid regular expression, but isn't: {e}"),
                )),
            }
        }
        if let Some(d) = o.get("default") {
            n.default = Some(d.clone());
        }

        // Children.
        let is_meta_parent = lvl == Level::Root || n.embedded;
        if let Some(props) = o.get("properties") {
            match props.as_object() {
                Some(props) => {
                    for (k, s) in props {
                        let sub_meta = if is_meta_parent
                            && !nested
                            && matches!(k.as_str(), "metadata" | "kind" | "apiVersion")
                        {
                            if lvl == Level::Root {
                                match k.as_str() {
                                    "metadata" => Meta::TopLevel("metadata"),
                                    "kind" => Meta::TopLevel("kind"),
                                    _ => Meta::TopLevel("apiVersion"),
                                }
                            } else {
                                Meta::Embedded
                            }
                        } else {
                            meta
                        };
                        let p = key(&child(path, "properties"), k);
                        let node = self.parse(s, &p, Level::Field, nested, sub_meta);
                        n.properties.insert(k.clone(), node);
                    }
                }
                None => self.errs.push(invalid(
                    child(path, "properties"),
                    &show(props),
                    "must be an object",
                )),
            }
        }
        match o.get("additionalProperties") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => n.additional = Some(Additional::Bool(*b)),
            Some(s) => {
                let p = child(path, "additionalProperties");
                let node = self.parse(s, &p, Level::Field, nested, meta);
                n.additional = Some(Additional::Schema(Box::new(node)));
            }
        }
        if !n.properties.is_empty()
            && matches!(
                n.additional,
                Some(Additional::Bool(false)) | Some(Additional::Schema(_))
            )
        {
            self.errs.push(forbidden(
                child(path, "additionalProperties"),
                "additionalProperties and properties are mutual exclusive",
            ));
        }
        if let Some(items) = o.get("items") {
            if items.is_object() {
                let p = child(path, "items");
                n.items = Some(Box::new(self.parse(items, &p, Level::Item, nested, meta)));
            }
        }
        for (name, list) in [("allOf", 0), ("anyOf", 1), ("oneOf", 2)] {
            let Some(arr) = o.get(name) else { continue };
            let Some(arr) = arr.as_array() else {
                self.errs
                    .push(invalid(child(path, name), &show(arr), "must be an array"));
                continue;
            };
            let int_or_string_pattern = name == "anyOf" && is_int_or_string_any_of(arr)
                || name == "allOf"
                    && arr
                        .first()
                        .and_then(|f| f.get("anyOf"))
                        .and_then(Value::as_array)
                        .is_some_and(|a| is_int_or_string_any_of(a));
            let mut nodes = Vec::new();
            for (i, s) in arr.iter().enumerate() {
                let p = index(&child(path, name), i);
                let skip = int_or_string_pattern && (name == "anyOf" || i == 0);
                nodes.push(self.parse_nested(s, &p, lvl, skip));
            }
            match list {
                0 => n.all_of = nodes,
                1 => n.any_of = nodes,
                _ => n.one_of = nodes,
            }
        }
        if let Some(s) = o.get("not") {
            let p = child(path, "not");
            n.not = Some(Box::new(self.parse_nested(s, &p, lvl, false)));
        }

        // x-kubernetes-list-type / map keys.
        let list_type = opt_str(self, o, "x-kubernetes-list-type", path);
        if let Some(Value::Array(keys)) = o.get("x-kubernetes-list-map-keys") {
            n.map_keys = keys
                .iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect();
        }
        if !list_type.is_empty() {
            if n.ty != "array" && !nested {
                if n.ty.is_empty() {
                    self.errs.push(required(
                        child(path, "type"),
                        "must be array if x-kubernetes-list-type is specified",
                    ));
                } else {
                    self.errs.push(invalid(
                        child(path, "type"),
                        &quote(&n.ty),
                        "must be array if x-kubernetes-list-type is specified",
                    ));
                }
            }
            if !matches!(list_type.as_str(), "atomic" | "set" | "map") {
                self.errs.push(not_supported(
                    child(path, "x-kubernetes-list-type"),
                    &quote(&list_type),
                    &["atomic".into(), "set".into(), "map".into()],
                ));
            }
        }
        if !n.map_keys.is_empty() && list_type != "map" {
            if list_type.is_empty() {
                self.errs.push(required(
                    child(path, "x-kubernetes-list-type"),
                    "must be map if x-kubernetes-list-map-keys is non-empty",
                ));
            } else {
                self.errs.push(invalid(
                    child(path, "x-kubernetes-list-type"),
                    &quote(&list_type),
                    "must be map if x-kubernetes-list-map-keys is non-empty",
                ));
            }
        }
        if list_type == "map" {
            let keys_json = serde_json::to_string(&n.map_keys).unwrap_or_default();
            if n.map_keys.is_empty() {
                self.errs.push(required(
                    child(path, "x-kubernetes-list-map-keys"),
                    "must not be empty if x-kubernetes-list-type is map",
                ));
            }
            match &n.items {
                None => self.errs.push(required(
                    child(path, "items"),
                    "must have a schema if x-kubernetes-list-type is map",
                )),
                Some(items) if items.ty != "object" => self.errs.push(invalid(
                    child(&child(path, "items"), "type"),
                    &quote(&items.ty),
                    "must be object if parent array's x-kubernetes-list-type is map",
                )),
                Some(items) => {
                    let mut seen = HashSet::new();
                    for k in &n.map_keys {
                        match items.properties.get(k) {
                            Some(s) if s.ty == "array" || s.ty == "object" => {
                                self.errs.push(invalid(
                                    child(&key(&child(&child(path, "items"), "properties"), k), "type"),
                                    &quote(&items.ty),
                                    "must be a scalar type if parent array's x-kubernetes-list-type is map",
                                ))
                            }
                            Some(_) => {}
                            None => self.errs.push(invalid(
                                child(path, "x-kubernetes-list-map-keys"),
                                &keys_json,
                                "entries must all be names of item properties",
                            )),
                        }
                        if !seen.insert(k) {
                            self.errs.push(invalid(
                                child(path, "x-kubernetes-list-map-keys"),
                                &keys_json,
                                "must not contain duplicate entries",
                            ));
                        }
                    }
                }
            }
        }
        if !list_type.is_empty() {
            n.list_type = Some(list_type);
        }

        // Structural invariants (validateStructuralInvariants).
        if !nested {
            self.structural_invariants(&n, o, path, lvl);
        }

        // x-kubernetes-validations.
        if let Some(rules) = o.get("x-kubernetes-validations") {
            self.parse_rules(&mut n, rules, &child(path, "x-kubernetes-validations"), lvl);
        }
        n
    }

    fn structural_invariants(&mut self, n: &Node, o: &Map<String, Value>, path: &str, lvl: Level) {
        if n.ty == "array" && n.items.is_none() {
            self.errs
                .push(required(child(path, "items"), "must be specified"));
        }
        if n.additional.is_some() && lvl == Level::Root {
            self.errs.push(forbidden(
                child(path, "additionalProperties"),
                "must not be used at the root",
            ));
        }
        if n.int_or_string && n.preserve {
            self.errs.push(invalid(
                child(path, "x-kubernetes-preserve-unknown-fields"),
                "true",
                "must be false if x-kubernetes-int-or-string is true",
            ));
        }
        if n.int_or_string && n.embedded {
            self.errs.push(invalid(
                child(path, "x-kubernetes-embedded-resource"),
                "true",
                "must be false if x-kubernetes-int-or-string is true",
            ));
        }
        if n.embedded && n.ty != "object" {
            if n.ty.is_empty() {
                self.errs.push(required(
                    child(path, "type"),
                    "must be object if x-kubernetes-embedded-resource is true",
                ));
            } else {
                self.errs.push(invalid(
                    child(path, "type"),
                    &quote(&n.ty),
                    "must be object if x-kubernetes-embedded-resource is true",
                ));
            }
        } else if n.ty.is_empty() && !n.int_or_string && !n.preserve {
            let detail = match lvl {
                Level::Root => "must not be empty at the root",
                Level::Item => "must not be empty for specified array items",
                Level::Field => "must not be empty for specified object fields",
            };
            self.errs.push(required(child(path, "type"), detail));
        }
        if n.embedded && n.additional.is_some() {
            self.errs.push(forbidden(
                child(path, "additionalProperties"),
                "must not be used if x-kubernetes-embedded-resource is set",
            ));
        }
        if lvl == Level::Root && !n.ty.is_empty() && n.ty != "object" {
            self.errs.push(invalid(
                child(path, "type"),
                &quote(&n.ty),
                "must be object at the root",
            ));
        }
        if lvl == Level::Root || n.embedded {
            let props = child(path, "properties");
            for (k, want) in [
                ("kind", "string"),
                ("apiVersion", "string"),
                ("metadata", "object"),
            ] {
                if let Some(p) = n.properties.get(k) {
                    if p.ty != want {
                        self.errs.push(invalid(
                            child(&key(&props, k), "type"),
                            &quote(&p.ty),
                            &format!("must be {want}"),
                        ));
                    }
                }
            }
        }
        if lvl == Level::Root {
            if let Some(Value::Object(m)) = o.get("properties").and_then(|p| p.get("metadata")) {
                if !metadata_schema_allowed(m) {
                    self.errs.push(forbidden(
                        key(&child(path, "properties"), "metadata"),
                        "must not specify anything other than name and generateName, but metadata is implicitly specified",
                    ));
                }
            }
        }
        if n.embedded && !n.preserve && n.properties.is_empty() {
            self.errs.push(required(
                child(path, "properties"),
                "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields",
            ));
        }
    }

    /// A node under a junctor: value validations only (validateNestedValueValidation).
    fn parse_nested(&mut self, v: &Value, path: &str, lvl: Level, skip_type: bool) -> Node {
        let n = self.parse(v, path, lvl, true, Meta::None);
        self.nested_restrictions(v, path, skip_type);
        n
    }

    fn nested_restrictions(&mut self, v: &Value, path: &str, skip_type: bool) {
        let Some(o) = v.as_object() else { return };
        let non_empty = |k: &str| match o.get(k) {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Bool(b)) => *b,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if non_empty("type") && !skip_type {
            self.errs.push(forbidden(
                child(path, "type"),
                "must be empty to be structural",
            ));
        }
        for (k, detail) in [
            ("additionalProperties", "must be undefined to be structural"),
            ("default", "must be undefined to be structural"),
            ("title", "must be empty to be structural"),
            ("description", "must be empty to be structural"),
            ("nullable", "must be false to be structural"),
            (
                "x-kubernetes-preserve-unknown-fields",
                "must be false to be structural",
            ),
            (
                "x-kubernetes-embedded-resource",
                "must be false to be structural",
            ),
            (
                "x-kubernetes-int-or-string",
                "must be false to be structural",
            ),
            (
                "x-kubernetes-list-map-keys",
                "must be empty to be structural",
            ),
            (
                "x-kubernetes-list-type",
                "must be undefined to be structural",
            ),
        ] {
            let present = if k == "default" || k == "additionalProperties" {
                o.get(k).is_some_and(|v| !v.is_null())
            } else {
                non_empty(k)
            };
            if present {
                self.errs.push(forbidden(child(path, k), detail));
            }
        }
        if let Some(props) = o.get("properties").and_then(Value::as_object) {
            if props.contains_key("metadata") {
                self.errs.push(forbidden(
                    key(&child(path, "properties"), "metadata"),
                    "must not be specified in a nested context",
                ));
            }
            for (k, s) in props {
                self.nested_restrictions(s, &key(&child(path, "properties"), k), false);
            }
        }
        if let Some(items) = o.get("items") {
            self.nested_restrictions(items, &child(path, "items"), false);
        }
    }

    fn parse_rules(&mut self, n: &mut Node, rules: &Value, path: &str, lvl: Level) {
        let Some(rules) = rules.as_array() else {
            self.errs
                .push(invalid(path, &show(rules), "must be an array"));
            return;
        };
        for (i, r) in rules.iter().enumerate() {
            let rp = index(path, i);
            let Some(o) = r.as_object() else {
                self.errs.push(invalid(&rp, &show(r), "must be an object"));
                continue;
            };
            let source = opt_str(self, o, "rule", &rp);
            let message = opt_str(self, o, "message", &rp);
            let message_expression = opt_str(self, o, "messageExpression", &rp);
            let reason = opt_str(self, o, "reason", &rp);
            let field_path = opt_str(self, o, "fieldPath", &rp);
            let trimmed_rule = source.trim();
            let trimmed_msg = message.trim();
            if trimmed_rule.is_empty() {
                self.errs
                    .push(required(child(&rp, "rule"), "rule is not specified"));
                continue;
            } else if !message.is_empty() && trimmed_msg.is_empty() {
                self.errs.push(invalid(
                    child(&rp, "message"),
                    &quote(&message),
                    "message must be non-empty if specified",
                ));
            } else if trimmed_msg.contains(['\n', '\r']) {
                self.errs.push(invalid(
                    child(&rp, "message"),
                    &quote(&message),
                    "message must not contain line breaks",
                ));
            } else if trimmed_rule.contains(['\n', '\r']) && trimmed_msg.is_empty() {
                self.errs.push(required(
                    child(&rp, "message"),
                    "message must be specified if rule contains line breaks",
                ));
            }
            let reason = match reason.as_str() {
                "" | "FieldValueInvalid" => Reason::Invalid,
                "FieldValueForbidden" => Reason::Forbidden,
                "FieldValueRequired" => Reason::Required,
                "FieldValueDuplicate" => Reason::Duplicate,
                other => {
                    let supported: Vec<String> = REASONS.iter().map(|s| s.to_string()).collect();
                    self.errs.push(not_supported(
                        child(&rp, "reason"),
                        &quote(other),
                        &supported,
                    ));
                    Reason::Invalid
                }
            };
            let field_path = if field_path.is_empty() {
                None
            } else {
                match normalize_field_path(&field_path, n) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        self.errs.push(invalid(
                            child(&rp, "fieldPath"),
                            &quote(&field_path),
                            &format!("fieldPath must be a valid path: {e}"),
                        ));
                        None
                    }
                }
            };
            let rule_json = serde_json::to_string(r).unwrap_or_default();
            let program = match self.compile_cel(&source, lvl) {
                Ok(p) => p,
                Err(e) => {
                    self.errs.push(invalid(
                        child(&rp, "rule"),
                        &rule_json,
                        &format!("compilation failed: {e}"),
                    ));
                    continue;
                }
            };
            let message_expression = if message_expression.trim().is_empty() {
                None
            } else {
                match self.compile_cel(&message_expression, lvl) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        self.errs.push(invalid(
                            child(&rp, "messageExpression"),
                            &rule_json,
                            &format!("messageExpression compilation failed: {e}"),
                        ));
                        None
                    }
                }
            };
            let uses_old_self = uses_variable(program.expression(), "oldSelf");
            let (size, nesting) = ast_metrics(program.expression());
            n.rules.push(Rule {
                source: trimmed_rule.to_string(),
                program,
                message: trimmed_msg.to_string(),
                message_expression,
                reason,
                field_path,
                uses_old_self,
                ast_size: size as f64,
                nesting,
            });
        }
    }

    fn compile_cel(&self, source: &str, _lvl: Level) -> Result<Program, String> {
        let program = self.env.compile(source).map_err(|e| e.to_string())?;
        let mut scope = vec!["self".to_string(), "oldSelf".to_string()];
        if let Some(name) = undeclared(program.expression(), &mut scope, 0) {
            let pos = program
                .source_info()
                .offset_for(name.0)
                .map(|(l, c)| format!("{l}:{c}"))
                .unwrap_or_else(|| "1:1".to_string());
            return Err(format!(
                "ERROR: <input>:{pos}: undeclared reference to '{}' (in container '')",
                name.1
            ));
        }
        Ok(program)
    }

    /// Defaults must validate against their own schema, pruned (validateDefaults).
    fn check_defaults(&mut self, n: &Node, path: &str) {
        if let Some(d) = &n.default {
            let dpath = child(path, "default");
            let mut d = d.clone();
            let mut pruned = Vec::new();
            prune(&mut d, n, false, "", &mut pruned, 0);
            if !pruned.is_empty() {
                self.errs.push(invalid(
                    &dpath,
                    &show(n.default.as_ref().unwrap_or(&Value::Null)),
                    "must not have unknown fields",
                ));
            }
            apply_defaults(&mut d, n, false, 0);
            let mut v = Validator::new(&dpath, &self.env);
            v.schema(&d, n, "", 0);
            v.cel(&d, n, "", None, false, 0);
            self.errs.append(&mut v.errs);
        }
        for (k, p) in &n.properties {
            self.check_defaults(p, &key(&child(path, "properties"), k));
        }
        if let Some(a) = n.additional_schema() {
            self.check_defaults(a, &child(path, "additionalProperties"));
        }
        if let Some(i) = &n.items {
            self.check_defaults(i, &child(path, "items"));
        }
    }
}

fn is_int_or_string_any_of(a: &[Value]) -> bool {
    let only_type = |v: &Value, t: &str| {
        v.as_object()
            .is_some_and(|o| o.len() == 1 && o.get("type").and_then(Value::as_str) == Some(t))
    };
    a.len() == 2 && only_type(&a[0], "integer") && only_type(&a[1], "string")
}

/// The root's metadata schema may only restrict `name` and `generateName` (with `type: object`).
fn metadata_schema_allowed(m: &Map<String, Value>) -> bool {
    m.iter().all(|(k, v)| match k.as_str() {
        "type" => true,
        "properties" => v
            .as_object()
            .is_some_and(|p| p.keys().all(|k| k == "name" || k == "generateName")),
        _ => false,
    })
}

/// kube's `ValidFieldPath`: `.a.b`, `['a']`, into `a.b` / `a[key]` for map keys.
fn normalize_field_path(p: &str, root: &Node) -> Result<String, String> {
    let mut out = String::new();
    let mut node = root;
    let mut rest = p;
    if rest.is_empty() {
        return Err("unexpected end of JSON path".into());
    }
    while !rest.is_empty() {
        let (name, after) = if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return Err("unexpected end of JSON path".into());
            }
            (r[..end].to_string(), &r[end..])
        } else if let Some(r) = rest.strip_prefix("['") {
            let mut end = None;
            let bytes = r.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if bytes[i] == b'\'' {
                    end = Some(i);
                    break;
                }
                i += 1;
            }
            let end = end.ok_or("unexpected end of JSON path")?;
            let after = r[end + 1..]
                .strip_prefix(']')
                .ok_or("expected ] after quoted string")?;
            (r[..end].replace("\\'", "'").replace("\\\\", "\\"), after)
        } else {
            return Err(format!("expected [ or . but got: {rest}"));
        };
        if let Some(next) = node.properties.get(&name) {
            out = child(&out, &name);
            node = next;
        } else if let Some(a) = node.additional_schema() {
            out = key(&out, &name);
            node = a;
        } else {
            return Err("does not refer to a valid field".into());
        }
        rest = after;
    }
    Ok(out)
}

/// The first identifier that is neither `self`/`oldSelf` nor a comprehension variable in scope.
fn undeclared(e: &cel::IdedExpr, scope: &mut Vec<String>, depth: usize) -> Option<(u64, String)> {
    if depth > MAX_DEPTH {
        return None;
    }
    let d = depth + 1;
    match &e.expr {
        Expr::Ident(name) => {
            if name.starts_with('@') || scope.iter().any(|s| s == name) {
                None
            } else {
                Some((e.id, name.clone()))
            }
        }
        Expr::Call(c) => c
            .target
            .as_deref()
            .and_then(|t| undeclared(t, scope, d))
            .or_else(|| c.args.iter().find_map(|a| undeclared(a, scope, d))),
        Expr::Select(s) => undeclared(&s.operand, scope, d),
        Expr::List(l) => l.elements.iter().find_map(|a| undeclared(a, scope, d)),
        Expr::Map(m) => m.entries.iter().find_map(|en| match &en.expr {
            EntryExpr::MapEntry(me) => {
                undeclared(&me.key, scope, d).or_else(|| undeclared(&me.value, scope, d))
            }
            EntryExpr::StructField(f) => undeclared(&f.value, scope, d),
        }),
        Expr::Struct(s) => s.entries.iter().find_map(|en| match &en.expr {
            EntryExpr::MapEntry(me) => {
                undeclared(&me.key, scope, d).or_else(|| undeclared(&me.value, scope, d))
            }
            EntryExpr::StructField(f) => undeclared(&f.value, scope, d),
        }),
        Expr::Comprehension(c) => {
            if let Some(u) = undeclared(&c.iter_range, scope, d) {
                return Some(u);
            }
            if let Some(u) = undeclared(&c.accu_init, scope, d) {
                return Some(u);
            }
            let before = scope.len();
            scope.push(c.iter_var.clone());
            if let Some(v2) = &c.iter_var2 {
                scope.push(v2.clone());
            }
            scope.push(c.accu_var.clone());
            let r = undeclared(&c.loop_cond, scope, d)
                .or_else(|| undeclared(&c.loop_step, scope, d))
                .or_else(|| undeclared(&c.result, scope, d));
            scope.truncate(before);
            r
        }
        Expr::Literal(_) | Expr::Unspecified => None,
    }
}

fn uses_variable(e: &cel::IdedExpr, name: &str) -> bool {
    e.references().has_variable(name)
}

// ---------------------------------------------------------------------------------------------
// Static CEL cost: what apiextensions estimates for each rule when the CRD is written.

/// apiextensions' `StaticEstimatedCostLimit`: the most one rule (times the number of places it
/// runs in one object) may be estimated to cost.
pub const CEL_STATIC_COST_LIMIT: f64 = 10_000_000.0;
/// apiextensions' `MaxRequestSizeBytes`: unbounded strings, lists and maps are estimated as
/// large as one request could make them.
const MAX_REQUEST_BYTES: f64 = 3.0 * 1024.0 * 1024.0;

/// Fewest JSON bytes a value of this schema takes (apiextensions' `estimateMinSizeJSON`).
fn min_json_size(n: &Node) -> f64 {
    match n.ty.as_str() {
        "string" => 2.0 + n.min_length.unwrap_or(0) as f64,
        "boolean" => 4.0,
        "integer" | "number" => 1.0,
        "array" | "object" => 2.0,
        // int-or-string and preserve-unknown-fields without a type: a number at least.
        _ => 1.0,
    }
}

/// Most elements (list items, map entries, string characters) a value of `n` can have.
fn max_elements(n: &Node) -> f64 {
    match n.ty.as_str() {
        "string" => n
            .max_length
            .map(|m| m as f64)
            .unwrap_or(MAX_REQUEST_BYTES - 2.0),
        "array" => n.max_items.map(|m| m as f64).unwrap_or_else(|| {
            let item = n.items.as_deref().map(min_json_size).unwrap_or(1.0);
            ((MAX_REQUEST_BYTES - 2.0) / (item + 1.0)).floor()
        }),
        "object" => match (n.max_properties, n.additional_schema()) {
            (Some(m), _) => m as f64,
            (None, Some(a)) => ((MAX_REQUEST_BYTES - 2.0) / (min_json_size(a) + 4.0)).floor(),
            (None, None) => n.properties.len() as f64,
        },
        _ => 1.0,
    }
}

/// The schema of an element of `n`: a list's items, a map's values.
fn element_of(n: &Node) -> Option<&Node> {
    match n.ty.as_str() {
        "array" => n.items.as_deref(),
        "object" => n.additional_schema(),
        _ => None,
    }
}

/// A conservative reading of cel-go's cost estimator over the shapes rules use: identifiers
/// and field selections cost 1, calls 1 plus their arguments, string scans a tenth of the
/// string's length (regular expressions times a quarter of the pattern's), and a
/// comprehension (`all`, `exists`, `map`, `filter`...) its range's element count times its body.
/// Sizes come from the schema (`maxLength`, `maxItems`, `maxProperties`, or what one request
/// could hold); an expression whose schema is unknown counts as size 1, so that the estimate
/// stays at or below cel-go's and no CRD kube-apiserver accepts is refused.
struct CostEstimator<'a> {
    vars: Vec<(String, Option<&'a Node>)>,
}

impl<'a> CostEstimator<'a> {
    fn node_of(&self, e: &cel::IdedExpr) -> Option<&'a Node> {
        match &e.expr {
            Expr::Ident(name) => self
                .vars
                .iter()
                .rev()
                .find(|(v, _)| v == name)
                .and_then(|(_, n)| *n),
            Expr::Select(sel) => {
                let parent = self.node_of(&sel.operand)?;
                parent
                    .properties
                    .get(&sel.field)
                    .or_else(|| parent.additional_schema())
            }
            Expr::Call(c) if c.func_name == "_[_]" => {
                self.node_of(c.args.first()?).and_then(element_of)
            }
            _ => None,
        }
    }

    fn size_of(&self, e: &cel::IdedExpr) -> f64 {
        match &e.expr {
            Expr::Literal(cel::common::ast::LiteralValue::String(s)) => s.inner().len() as f64,
            Expr::List(l) => l.elements.len() as f64,
            _ => self.node_of(e).map(max_elements).unwrap_or(1.0),
        }
    }

    fn cost(&mut self, e: &cel::IdedExpr, depth: usize) -> f64 {
        if depth > MAX_DEPTH {
            return 0.0;
        }
        let d = depth + 1;
        match &e.expr {
            Expr::Ident(_) => 1.0,
            Expr::Literal(_) | Expr::Unspecified => 0.0,
            Expr::Select(sel) => 1.0 + self.cost(&sel.operand, d),
            Expr::List(l) => 10.0 + l.elements.iter().map(|x| self.cost(x, d)).sum::<f64>(),
            Expr::Map(m) => {
                30.0 + m
                    .entries
                    .iter()
                    .map(|en| match &en.expr {
                        EntryExpr::MapEntry(me) => self.cost(&me.key, d) + self.cost(&me.value, d),
                        EntryExpr::StructField(f) => self.cost(&f.value, d),
                    })
                    .sum::<f64>()
            }
            Expr::Struct(st) => {
                40.0 + st
                    .entries
                    .iter()
                    .map(|en| match &en.expr {
                        EntryExpr::MapEntry(me) => self.cost(&me.key, d) + self.cost(&me.value, d),
                        EntryExpr::StructField(f) => self.cost(&f.value, d),
                    })
                    .sum::<f64>()
            }
            Expr::Call(c) => {
                let mut total = 1.0;
                if let Some(t) = c.target.as_deref() {
                    total += self.cost(t, d);
                }
                for a in &c.args {
                    total += self.cost(a, d);
                }
                let scanned = || {
                    c.target
                        .as_deref()
                        .or(c.args.first())
                        .map(|t| self.size_of(t))
                        .unwrap_or(1.0)
                };
                let scan = |len: f64| (len * 0.1).ceil();
                total += match c.func_name.as_str() {
                    "matches" => {
                        let pattern = c.args.last().map(|p| self.size_of(p)).unwrap_or(1.0);
                        scan(scanned()) * (1.0 + pattern * 0.25).ceil()
                    }
                    "contains" | "startsWith" | "endsWith" | "indexOf" | "lastIndexOf"
                    | "lowerAscii" | "upperAscii" | "trim" | "split" | "replace" | "substring"
                    | "charAt" | "join" => scan(scanned()),
                    _ => 0.0,
                };
                total
            }
            Expr::Comprehension(c) => {
                let range = self.node_of(&c.iter_range);
                let count = self.size_of(&c.iter_range);
                // A map's comprehension variable is its key (a string); a list's, an item.
                let elem = range.and_then(|r| if r.ty == "array" { element_of(r) } else { None });
                let outer = self.cost(&c.iter_range, d) + self.cost(&c.accu_init, d);
                self.vars.push((c.iter_var.clone(), elem));
                if let Some(v2) = &c.iter_var2 {
                    self.vars.push((v2.clone(), range.and_then(element_of)));
                }
                self.vars.push((c.accu_var.clone(), None));
                let body = self.cost(&c.loop_cond, d) + self.cost(&c.loop_step, d);
                let result = self.cost(&c.result, d);
                self.vars
                    .truncate(self.vars.len() - 2 - usize::from(c.iter_var2.is_some()));
                outer + count * body + result
            }
        }
    }
}

/// apiextensions' message for an estimate over a limit (`getCostErrorMessage`).
fn cost_error_message(what: &str, cost: f64, limit: f64) -> String {
    let factor = cost / limit;
    let factor = if factor > 100.0 {
        "more than 100x".to_string()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!("{what} exceeds budget by factor of {factor} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)")
}

/// Refuses each rule whose estimated cost, times the number of places it can run in one
/// object (`cardinality`: the product of the enclosing lists' and maps' sizes), is over
/// [`CEL_STATIC_COST_LIMIT`], as apiextensions refuses it when the CRD is written.
fn check_rule_costs(
    n: &Node,
    path: &str,
    cardinality: f64,
    errs: &mut Vec<FieldError>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    for (i, rule) in n.rules.iter().enumerate() {
        let mut est = CostEstimator {
            vars: vec![("self".into(), Some(n)), ("oldSelf".into(), Some(n))],
        };
        let cost = est.cost(rule.program.expression(), 0) * cardinality;
        if cost > CEL_STATIC_COST_LIMIT {
            errs.push(forbidden(
                child(&index(&child(path, "x-kubernetes-validations"), i), "rule"),
                &cost_error_message("estimated rule cost", cost, CEL_STATIC_COST_LIMIT),
            ));
        }
    }
    for (k, p) in &n.properties {
        check_rule_costs(
            p,
            &key(&child(path, "properties"), k),
            cardinality,
            errs,
            depth + 1,
        );
    }
    let each = (cardinality * max_elements(n)).min(f64::MAX);
    if let Some(a) = n.additional_schema() {
        check_rule_costs(
            a,
            &child(path, "additionalProperties"),
            each,
            errs,
            depth + 1,
        );
    }
    if let Some(i) = &n.items {
        check_rule_costs(i, &child(path, "items"), each, errs, depth + 1);
    }
}

/// (node count, deepest comprehension nesting) of a CEL AST.
fn ast_metrics(e: &cel::IdedExpr) -> (usize, i32) {
    fn walk(e: &cel::IdedExpr, depth: usize, size: &mut usize) -> i32 {
        *size += 1;
        if depth > MAX_DEPTH {
            return 0;
        }
        let d = depth + 1;
        let sub = |xs: &mut dyn Iterator<Item = &cel::IdedExpr>, size: &mut usize| {
            xs.map(|x| walk(x, d, size)).max().unwrap_or(0)
        };
        match &e.expr {
            Expr::Call(c) => {
                let mut it = c.target.as_deref().into_iter().chain(c.args.iter());
                sub(&mut it, size)
            }
            Expr::Select(s) => walk(&s.operand, d, size),
            Expr::List(l) => sub(&mut l.elements.iter(), size),
            Expr::Map(m) => {
                let mut it = m.entries.iter().flat_map(|en| match &en.expr {
                    EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
                    EntryExpr::StructField(f) => vec![&f.value],
                });
                sub(&mut it, size)
            }
            Expr::Struct(s) => {
                let mut it = s.entries.iter().flat_map(|en| match &en.expr {
                    EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
                    EntryExpr::StructField(f) => vec![&f.value],
                });
                sub(&mut it, size)
            }
            Expr::Comprehension(c) => {
                let outer = walk(&c.iter_range, d, size).max(walk(&c.accu_init, d, size));
                let inner = walk(&c.loop_cond, d, size)
                    .max(walk(&c.loop_step, d, size))
                    .max(walk(&c.result, d, size));
                outer.max(inner + 1)
            }
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => 0,
        }
    }
    let mut size = 0;
    let nesting = walk(e, 0, &mut size);
    (size, nesting)
}

// ---------------------------------------------------------------------------------------------
// Admission: prune, default, validate.

impl StructuralSchema {
    /// What the apiserver does to a custom resource before storing it, in kube-apiserver's
    /// order: prune unknown fields, apply defaults, validate. `old` is the stored object on
    /// update (for CEL transition rules with `oldSelf`).
    pub fn admit(&self, obj: &mut Value, old: Option<&Value>) -> Outcome {
        let mut out = Outcome::default();
        if depth_of(obj, MAX_DEPTH) > MAX_DEPTH {
            out.errors.push(invalid(
                "",
                "\"object\"",
                &format!("must not be nested more than {MAX_DEPTH} levels deep"),
            ));
            return out;
        }
        prune(obj, &self.root, true, "", &mut out.pruned, 0);
        apply_defaults(obj, &self.root, true, 0);
        let mut v = Validator::new("", &self.env);
        v.schema(obj, &self.root, "", 0);
        let old = old.filter(|o| depth_of(o, MAX_DEPTH) <= MAX_DEPTH);
        v.cel(obj, &self.root, "", old, true, 0);
        out.errors = v.errs;
        out
    }
}

/// Drop the fields the schema does not know (kube's structural pruning).
fn prune(
    v: &mut Value,
    n: &Node,
    resource_root: bool,
    path: &str,
    pruned: &mut Vec<String>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    match v {
        Value::Object(o) => {
            let keep_meta = resource_root || n.embedded;
            let mut remove = Vec::new();
            for (k, child_v) in o.iter_mut() {
                let p = format!("{path}.{k}");
                if keep_meta && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    if let Some(s) = n.properties.get(k) {
                        if k != "metadata" {
                            prune(child_v, s, false, &p, pruned, depth + 1);
                        }
                    }
                    continue;
                }
                if let Some(s) = n.properties.get(k) {
                    prune(child_v, s, false, &p, pruned, depth + 1);
                } else if let Some(s) = n.additional_schema() {
                    prune(child_v, s, false, &p, pruned, depth + 1);
                } else if n.preserve || matches!(n.additional, Some(Additional::Bool(true))) {
                    // kept as is
                } else {
                    remove.push(k.clone());
                }
            }
            for k in remove {
                o.remove(&k);
                pruned.push(format!("{path}.{k}"));
            }
        }
        Value::Array(a) => {
            if let Some(items) = &n.items {
                for (i, item) in a.iter_mut().enumerate() {
                    prune(item, items, false, &index(path, i), pruned, depth + 1);
                }
            }
        }
        _ => {}
    }
}

/// Apply schema defaults where the parent object exists (kube's structural defaulting).
fn apply_defaults(v: &mut Value, n: &Node, resource_root: bool, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match v {
        Value::Object(o) => {
            for (k, s) in &n.properties {
                if resource_root && k == "metadata" {
                    continue;
                }
                let Some(d) = &s.default else { continue };
                match o.get(k) {
                    None => {
                        o.insert(k.clone(), d.clone());
                    }
                    Some(Value::Null) if !s.nullable => {
                        o.insert(k.clone(), d.clone());
                    }
                    _ => {}
                }
            }
            for (k, child_v) in o.iter_mut() {
                if resource_root && k == "metadata" {
                    continue;
                }
                if let Some(s) = n.properties.get(k) {
                    apply_defaults(child_v, s, false, depth + 1);
                } else if let Some(s) = n.additional_schema() {
                    apply_defaults(child_v, s, false, depth + 1);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = &n.items {
                for item in a.iter_mut() {
                    apply_defaults(item, items, false, depth + 1);
                }
            }
        }
        _ => {}
    }
}

struct Validator<'a> {
    /// Prefix of every error's field (the `default` being checked at compile time).
    prefix: &'a str,
    env: &'a Arc<Env>,
    errs: Vec<FieldError>,
    budget: f64,
    cel_stopped: bool,
}

impl<'a> Validator<'a> {
    fn new(prefix: &'a str, env: &'a Arc<Env>) -> Self {
        Validator {
            prefix,
            env,
            errs: Vec::new(),
            budget: CEL_RUNTIME_BUDGET,
            cel_stopped: false,
        }
    }

    fn field(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else if name.is_empty() {
            self.prefix.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn invalid(&mut self, name: &str, value: &str, detail: String) {
        let f = self.field(name);
        self.errs.push(invalid(f, value, &detail));
    }

    fn type_invalid(&mut self, name: &str, want: &str, got: &str) {
        let f = self.field(name);
        self.errs.push(FieldError::new(
            CauseType::FieldValueTypeInvalid,
            f,
            format!(
                "Invalid value: {}: {name} in body must be of type {want}: {}",
                quote(got),
                quote(got)
            ),
        ));
    }

    /// Does `v` have the node's type? Reports and returns false when not.
    fn check_type(&mut self, v: &Value, n: &Node, name: &str) -> bool {
        let got = json_type(v);
        if n.int_or_string {
            if matches!(got, "integer" | "string") {
                return true;
            }
            self.type_invalid(name, "integer,string", got);
            return false;
        }
        let ok = match n.ty.as_str() {
            "" => true,
            "number" => matches!(got, "integer" | "number"),
            t => t == got,
        };
        if !ok {
            self.type_invalid(name, &n.ty, got);
        }
        ok
    }

    /// OpenAPI value validation of `v` against `n` (kube-openapi's validator), then embedded
    /// resources and list types.
    fn schema(&mut self, v: &Value, n: &Node, name: &str, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        if v.is_null() {
            if !n.nullable && (!n.ty.is_empty() || n.int_or_string) {
                let want = if n.int_or_string {
                    "integer,string"
                } else {
                    n.ty.as_str()
                };
                let want = want.to_string();
                self.type_invalid(name, &want, "null");
            }
            return;
        }
        if !self.check_type(v, n, name) {
            return;
        }
        self.junctors(v, n, name, depth);
        match v {
            Value::String(s) => self.string(s, n, name),
            Value::Number(num_v) => self.number(num_v, n, name),
            _ => {}
        }
        if let Some(e) = &n.enumeration {
            if !e.iter().any(|x| json_eq(x, v)) {
                let supported: Vec<String> = e
                    .iter()
                    .map(|x| match x {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                let f = self.field(name);
                self.errs.push(not_supported(f, &show(v), &supported));
            }
        }
        match v {
            Value::Array(a) => self.array(a, n, name, depth),
            Value::Object(o) => self.object(o, n, name, depth),
            _ => {}
        }
    }

    fn junctors(&mut self, v: &Value, n: &Node, name: &str, depth: usize) {
        for s in &n.all_of {
            self.schema(v, s, name, depth + 1);
        }
        let passes = |me: &Self, s: &Node| {
            let mut probe = Validator::new(me.prefix, me.env);
            probe.schema(v, s, name, depth + 1);
            probe.errs.is_empty()
        };
        if !n.any_of.is_empty() && !n.any_of.iter().any(|s| passes(self, s)) {
            // kube-openapi reports the branches' errors plus "must validate at least one schema
            // (anyOf)".
            let mut first = Validator::new(self.prefix, self.env);
            for s in &n.any_of {
                first.schema(v, s, name, depth + 1);
            }
            self.errs.append(&mut first.errs);
            self.invalid(
                name,
                &show_omit(v),
                format!("{name} in body must validate at least one schema (anyOf)"),
            );
        }
        if !n.one_of.is_empty() {
            let count = n.one_of.iter().filter(|s| passes(self, s)).count();
            if count == 0 {
                let mut first = Validator::new(self.prefix, self.env);
                for s in &n.one_of {
                    first.schema(v, s, name, depth + 1);
                }
                self.errs.append(&mut first.errs);
                self.invalid(
                    name,
                    &show_omit(v),
                    format!("{name} in body must validate one and only one schema (oneOf)"),
                );
            } else if count > 1 {
                self.invalid(name, &show_omit(v), format!("{name} in body must validate one and only one schema (oneOf). Found {count} valid alternatives"));
            }
        }
        if let Some(s) = &n.not {
            if passes(self, s) {
                self.invalid(
                    name,
                    &show_omit(v),
                    format!("{name} in body must not validate the schema (not)"),
                );
            }
        }
    }

    fn string(&mut self, s: &str, n: &Node, name: &str) {
        let chars = s.chars().count() as u64;
        let value = quote(s);
        if let Some(max) = n.max_length {
            if chars > max {
                let f = self.field(name);
                let unit = if max == 1 { "byte" } else { "bytes" };
                self.errs.push(FieldError::invalid(
                    f,
                    format!("Too long: may not be more than {max} {unit}"),
                ));
            }
        }
        if let Some(min) = n.min_length {
            if chars < min {
                self.invalid(
                    name,
                    &value,
                    format!("{name} in body should be at least {min} chars long"),
                );
            }
        }
        if let Some((src, re)) = &n.pattern {
            if !re.is_match(s) {
                self.invalid(name, &value, format!("{name} in body should match '{src}'"));
            }
        }
        if !n.format.is_empty() && !format_ok(&n.format, s) {
            let f = self.field(name);
            self.errs.push(FieldError::new(
                CauseType::FieldValueTypeInvalid,
                f,
                format!(
                    "Invalid value: {value}: {name} in body must be of type {}: {value}",
                    n.format
                ),
            ));
        }
    }

    fn number(&mut self, x: &serde_json::Number, n: &Node, name: &str) {
        let value = x.to_string();
        let Some(f) = x.as_f64() else { return };
        if let Some(m) = n.multiple_of {
            if m <= 0.0 {
                self.invalid(
                    name,
                    &num(m),
                    format!(
                        "factor MultipleOf declared for {name} must be positive: {}",
                        num(m)
                    ),
                );
            } else {
                let q = f / m;
                if q.fract() != 0.0 || !q.is_finite() {
                    self.invalid(
                        name,
                        &value,
                        format!("{name} in body should be a multiple of {}", num(m)),
                    );
                }
            }
        }
        if let Some(max) = n.maximum {
            if n.exclusive_maximum && f >= max {
                self.invalid(
                    name,
                    &value,
                    format!("{name} in body should be less than {}", num(max)),
                );
            } else if !n.exclusive_maximum && f > max {
                self.invalid(
                    name,
                    &value,
                    format!(
                        "{name} in body should be less than or equal to {}",
                        num(max)
                    ),
                );
            }
        }
        if let Some(min) = n.minimum {
            if n.exclusive_minimum && f <= min {
                self.invalid(
                    name,
                    &value,
                    format!("{name} in body should be greater than {}", num(min)),
                );
            } else if !n.exclusive_minimum && f < min {
                self.invalid(
                    name,
                    &value,
                    format!(
                        "{name} in body should be greater than or equal to {}",
                        num(min)
                    ),
                );
            }
        }
    }

    fn array(&mut self, a: &[Value], n: &Node, name: &str, depth: usize) {
        let len = a.len() as u64;
        if let Some(min) = n.min_items {
            if len < min {
                self.invalid(
                    name,
                    &len.to_string(),
                    format!("{name} in body should have at least {min} items"),
                );
            }
        }
        if let Some(max) = n.max_items {
            if len > max {
                let f = self.field(name);
                self.errs.push(FieldError::invalid(
                    f,
                    format!("Too many: {len}: must have at most {max} items"),
                ));
            }
        }
        if let Some(items) = &n.items {
            for (i, item) in a.iter().enumerate() {
                self.schema(item, items, &index(name, i), depth + 1);
            }
        }
        match n.list_type.as_deref() {
            Some("set") => {
                let mut seen = HashSet::new();
                for (i, item) in a.iter().enumerate() {
                    if !seen.insert(canonical(item)) {
                        let f = self.field(&index(name, i));
                        self.errs.push(FieldError::duplicate(
                            f,
                            format!("Duplicate value: {}", show(item)),
                        ));
                    }
                }
            }
            Some("map") => {
                let mut seen = HashSet::new();
                for (i, item) in a.iter().enumerate() {
                    let Some(o) = item.as_object() else { continue };
                    let mut key_obj = Map::new();
                    let mut complete = true;
                    for k in &n.map_keys {
                        match o.get(k) {
                            Some(kv) => {
                                key_obj.insert(k.clone(), kv.clone());
                            }
                            None => {
                                // A key with a default counts as present (kube defaults it).
                                let has_default = n
                                    .items
                                    .as_ref()
                                    .and_then(|it| it.properties.get(k))
                                    .is_some_and(|p| p.default.is_some());
                                if !has_default {
                                    complete = false;
                                    let f = self.field(&child(&index(name, i), k));
                                    self.errs.push(required(f, ""));
                                }
                            }
                        }
                    }
                    if complete {
                        let key_v = Value::Object(key_obj);
                        if !seen.insert(canonical(&key_v)) {
                            let f = self.field(&index(name, i));
                            self.errs.push(FieldError::duplicate(
                                f,
                                format!("Duplicate value: {}", show(&key_v)),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn object(&mut self, o: &Map<String, Value>, n: &Node, name: &str, depth: usize) {
        let len = o.len() as u64;
        if let Some(max) = n.max_properties {
            if len > max {
                let f = self.field(name);
                self.errs.push(FieldError::invalid(
                    f,
                    format!("Too many: {len}: must have at most {max} items"),
                ));
            }
        }
        if let Some(min) = n.min_properties {
            if len < min {
                self.invalid(
                    name,
                    &min.to_string(),
                    format!("{name} in body should have at least {min} properties"),
                );
            }
        }
        for r in &n.required {
            if !o.contains_key(r) {
                let f = self.field(&child(name, r));
                self.errs.push(required(f, ""));
            }
        }
        for (k, v) in o {
            let p = child(name, k);
            if let Some(s) = n.properties.get(k) {
                if depth == 0 && self.prefix.is_empty() && k == "metadata" {
                    // ObjectMeta is validated by the apiserver itself; the schema may only
                    // restrict name and generateName.
                    for mk in ["name", "generateName"] {
                        if let (Some(mv), Some(ms)) = (v.get(mk), s.properties.get(mk)) {
                            self.schema(mv, ms, &child(&p, mk), depth + 2);
                        }
                    }
                    continue;
                }
                self.schema(v, s, &p, depth + 1);
            } else if let Some(s) = n.additional_schema() {
                self.schema(v, s, &p, depth + 1);
            } else if matches!(n.additional, Some(Additional::Bool(false))) {
                let in_name = if name.is_empty() {
                    k.clone()
                } else {
                    format!("{name}.{k}")
                };
                self.invalid(
                    &p,
                    &quote(k),
                    format!("{in_name} in body is a forbidden property"),
                );
            }
        }
        if n.embedded {
            for k in ["apiVersion", "kind"] {
                match o.get(k) {
                    None => {
                        let f = self.field(&child(name, k));
                        self.errs.push(required(f, "must not be empty"));
                    }
                    Some(Value::String(s)) if s.is_empty() => {
                        self.invalid(&child(name, k), "\"\"", "must not be empty".into())
                    }
                    Some(Value::String(_)) => {}
                    Some(other) => {
                        let shown = show(other);
                        self.invalid(&child(name, k), &shown, "must be a string".into())
                    }
                }
            }
        }
    }

    /// Evaluate `x-kubernetes-validations` over the tree (kube's CEL validator).
    fn cel(
        &mut self,
        v: &Value,
        n: &Node,
        name: &str,
        old: Option<&Value>,
        resource_root: bool,
        depth: usize,
    ) {
        if depth > MAX_DEPTH || self.cel_stopped || v.is_null() {
            return;
        }
        let type_ok = n.int_or_string && matches!(json_type(v), "integer" | "string")
            || match n.ty.as_str() {
                "" => true,
                "number" => matches!(json_type(v), "integer" | "number"),
                t => t == json_type(v),
            };
        if !type_ok {
            return;
        }
        let old = old.filter(|o| !o.is_null());
        self.rules(v, n, name, old, resource_root || n.embedded);
        for s in &n.all_of {
            self.rules(v, s, name, old, resource_root || n.embedded);
        }
        match v {
            Value::Object(o) => {
                let old_o = old.and_then(Value::as_object);
                for (k, cv) in o {
                    if resource_root && k == "metadata" {
                        continue;
                    }
                    let s = n.properties.get(k).or_else(|| n.additional_schema());
                    if let Some(s) = s {
                        let ov = old_o.and_then(|m| m.get(k));
                        self.cel(cv, s, &child(name, k), ov, false, depth + 1);
                    }
                }
            }
            Value::Array(a) => {
                let Some(items) = &n.items else { return };
                let old_a = old.and_then(Value::as_array);
                for (i, item) in a.iter().enumerate() {
                    let ov = old_a.and_then(|oa| correlate(item, oa, n));
                    self.cel(item, items, &index(name, i), ov, false, depth + 1);
                }
            }
            _ => {}
        }
    }

    fn rules(&mut self, v: &Value, n: &Node, name: &str, old: Option<&Value>, resource_root: bool) {
        if n.rules.is_empty() || self.cel_stopped {
            return;
        }
        let type_name = if n.int_or_string {
            "integer,string".to_string()
        } else if n.ty.is_empty() {
            json_type(v).to_string()
        } else {
            n.ty.clone()
        };
        let f = self.field(name);
        let mut weight = 0.0;
        let self_v = match to_cel(v, Some(n), resource_root, 0, &mut weight) {
            Ok(x) => x,
            Err(e) => {
                self.errs.push(invalid(f, &quote(&type_name), &e));
                return;
            }
        };
        let mut old_weight = 0.0;
        let old_v = match old {
            Some(o) => to_cel(o, Some(n), resource_root, 0, &mut old_weight).ok(),
            None => None,
        };
        for rule in &n.rules {
            if rule.uses_old_self && old_v.is_none() {
                continue;
            }
            let size = weight + if rule.uses_old_self { old_weight } else { 0.0 } + 1.0;
            let cost = rule.ast_size * size.powi(rule.nesting.max(1));
            let err_name = rule.source.as_str();
            let err_str = if rule.message.is_empty() {
                err_name
            } else {
                rule.message.as_str()
            };
            if cost.is_nan() || cost > CEL_PER_CALL_LIMIT {
                self.errs.push(invalid(
                    &f,
                    &quote(&type_name),
                    &format!("'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: {err_str}"),
                ));
                self.cel_stopped = true;
                return;
            }
            if cost > self.budget {
                self.errs.push(invalid(
                    &f,
                    &quote(&type_name),
                    "validation failed due to running out of cost budget, no further validation rules will be run",
                ));
                self.cel_stopped = true;
                return;
            }
            self.budget -= cost;
            let mut ctx = Context::with_env(Arc::clone(self.env));
            ctx.add_variable_from_value("self", self_v.clone());
            if let Some(o) = &old_v {
                ctx.add_variable_from_value("oldSelf", o.clone());
            }
            let result = rule.program.execute(&ctx);
            match result {
                Ok(CelValue::Bool(true)) => continue,
                Ok(CelValue::Bool(false)) => {}
                Ok(other) => {
                    self.errs.push(invalid(
                        &f,
                        &quote(&type_name),
                        &format!("rule did not evaluate to a bool but to {other:?} evaluating rule: {err_str}"),
                    ));
                    continue;
                }
                Err(e) => {
                    let e = e.to_string();
                    let detail = if e.to_lowercase().contains("no such overload") {
                        format!("'{e}': call arguments did not match a supported operator, function or macro signature for rule: {err_str}")
                    } else {
                        format!("{e} evaluating rule: {err_str}")
                    };
                    self.errs.push(invalid(&f, &quote(&type_name), &detail));
                    continue;
                }
            }
            let mut detail = None;
            if let Some(me) = &rule.message_expression {
                if let Ok(CelValue::String(s)) = me.execute(&ctx) {
                    let t = s.trim();
                    if !t.is_empty() && t.len() <= 5120 && !t.contains('\n') {
                        detail = Some(t.to_string());
                    }
                }
            }
            let detail = detail.unwrap_or_else(|| {
                if rule.message.is_empty() {
                    format!("failed rule: {}", rule.source)
                } else {
                    rule.message.clone()
                }
            });
            let path = match &rule.field_path {
                Some(p) if !p.is_empty() => {
                    if f.is_empty() {
                        p.clone()
                    } else if p.starts_with('[') {
                        format!("{f}{p}")
                    } else {
                        format!("{f}.{p}")
                    }
                }
                _ => f.clone(),
            };
            let value = if matches!(v, Value::Object(_) | Value::Array(_)) {
                quote(&type_name)
            } else {
                show(v)
            };
            self.errs.push(match rule.reason {
                Reason::Invalid => invalid(path, &value, &detail),
                Reason::Forbidden => forbidden(path, &detail),
                Reason::Required => required(path, &detail),
                Reason::Duplicate => {
                    FieldError::duplicate(path, format!("Duplicate value: {value}"))
                }
            });
        }
    }
}

/// `Invalid value` of junctor errors: objects and arrays by their type.
fn show_omit(v: &Value) -> String {
    match v {
        Value::Object(_) | Value::Array(_) => quote(json_type(v)),
        other => show(other),
    }
}

/// The old item matching `item` in a list: by keys for `map` lists, by value for `set`s.
fn correlate<'o>(item: &Value, old: &'o [Value], n: &Node) -> Option<&'o Value> {
    match n.list_type.as_deref() {
        Some("map") if !n.map_keys.is_empty() => {
            let io = item.as_object()?;
            old.iter().find(|o| {
                o.as_object().is_some_and(|oo| {
                    n.map_keys.iter().all(|k| match (io.get(k), oo.get(k)) {
                        (Some(a), Some(b)) => json_eq(a, b),
                        _ => false,
                    })
                })
            })
        }
        Some("set") => old.iter().find(|o| json_eq(o, item)),
        _ => None,
    }
}

/// The CEL value of `v`, typed by its schema where known (`number` fields are doubles); at a
/// resource root only `metadata.name` and `metadata.generateName` are visible, as in kube.
fn to_cel(
    v: &Value,
    n: Option<&Node>,
    resource_root: bool,
    depth: usize,
    weight: &mut f64,
) -> Result<CelValue, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "must not be nested more than {MAX_DEPTH} levels deep"
        ));
    }
    *weight += 1.0;
    Ok(match v {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(x) => {
            let as_double = n.is_some_and(|n| n.ty == "number");
            match (as_double, x.as_i64()) {
                (false, Some(i)) => CelValue::Int(i),
                _ => match x.as_u64() {
                    Some(u) if !as_double => CelValue::UInt(u),
                    _ => CelValue::Float(x.as_f64().unwrap_or(f64::NAN)),
                },
            }
        }
        Value::String(s) => {
            *weight += s.len() as f64 / 8.0;
            CelValue::String(Arc::new(s.clone()))
        }
        Value::Array(a) => {
            let items = n.and_then(|n| n.items.as_deref());
            let mut out = Vec::with_capacity(a.len());
            for x in a {
                out.push(to_cel(x, items, false, depth + 1, weight)?);
            }
            CelValue::List(Arc::new(out))
        }
        Value::Object(o) => {
            let mut out = HashMap::with_capacity(o.len());
            for (k, x) in o {
                if resource_root && k == "metadata" {
                    let mut meta = HashMap::new();
                    if let Some(m) = x.as_object() {
                        for mk in ["name", "generateName"] {
                            if let Some(Value::String(s)) = m.get(mk) {
                                meta.insert(
                                    Key::String(Arc::new(mk.to_string())),
                                    CelValue::String(Arc::new(s.clone())),
                                );
                            }
                        }
                    }
                    out.insert(
                        Key::String(Arc::new(k.clone())),
                        CelValue::Map(CelMap {
                            map: Arc::new(meta),
                        }),
                    );
                    continue;
                }
                let s = n.and_then(|n| n.properties.get(k).or_else(|| n.additional_schema()));
                out.insert(
                    Key::String(Arc::new(k.clone())),
                    to_cel(x, s, false, depth + 1, weight)?,
                );
            }
            CelValue::Map(CelMap { map: Arc::new(out) })
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Formats (the string formats kube-apiserver keeps; others are accepted).

fn format_ok(format: &str, s: &str) -> bool {
    use base64::Engine;
    match format {
        "byte" => base64::engine::general_purpose::STANDARD.decode(s).is_ok(),
        "date" => is_date(s),
        "date-time" | "datetime" => is_date_time(s),
        "uuid" | "uuid3" | "uuid4" | "uuid5" => is_uuid(s, format),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.contains(':') && s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => is_cidr(s),
        "mac" => is_mac(s),
        "hostname" => is_hostname(s),
        // int32, int64, float, double, password, email, uri, ... are not checked (kube strips
        // the numeric ones before validating and accepts unknown formats).
        _ => true,
    }
}

fn digits(s: &str, n: usize) -> Option<u32> {
    if s.len() == n && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn is_date(s: &str) -> bool {
    let (Some(y), Some(m), Some(d)) = (
        s.get(0..4).and_then(|x| digits(x, 4)),
        s.get(5..7).and_then(|x| digits(x, 2)),
        s.get(8..10).and_then(|x| digits(x, 2)),
    ) else {
        return false;
    };
    if s.len() != 10 || &s[4..5] != "-" || &s[7..8] != "-" || !(1..=12).contains(&m) {
        return false;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    (1..=days).contains(&d)
}

/// RFC 3339 date-time: `2006-01-02T15:04:05(.frac)?(Z|±07:00)`.
fn is_date_time(s: &str) -> bool {
    if s.len() < 20 || !s.is_char_boundary(10) || !is_date(&s[..10]) {
        return false;
    }
    let rest = &s[10..];
    let Some(rest) = rest.strip_prefix(['T', 't', ' ']) else {
        return false;
    };
    let (Some(h), Some(mi), Some(sec)) = (
        rest.get(0..2).and_then(|x| digits(x, 2)),
        rest.get(3..5).and_then(|x| digits(x, 2)),
        rest.get(6..8).and_then(|x| digits(x, 2)),
    ) else {
        return false;
    };
    if &rest[2..3] != ":" || &rest[5..6] != ":" || h > 23 || mi > 59 || sec > 60 {
        return false;
    }
    let mut tz = &rest[8..];
    if let Some(f) = tz.strip_prefix('.') {
        let n = f.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        tz = &f[n..];
    }
    match tz {
        "Z" | "z" => true,
        _ => {
            let Some(off) = tz.strip_prefix(['+', '-']) else {
                return false;
            };
            off.len() == 5
                && &off[2..3] == ":"
                && digits(&off[0..2], 2).is_some_and(|h| h <= 23)
                && digits(&off[3..5], 2).is_some_and(|m| m <= 59)
        }
    }
}

fn is_uuid(s: &str, format: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 36 {
        return false;
    }
    for (i, c) in b.iter().enumerate() {
        let dash = matches!(i, 8 | 13 | 18 | 23);
        if dash != (*c == b'-') || (!dash && !c.is_ascii_hexdigit()) {
            return false;
        }
    }
    match format {
        "uuid3" => b[14] == b'3',
        "uuid4" => b[14] == b'4' && matches!(b[19], b'8' | b'9' | b'a' | b'b' | b'A' | b'B'),
        "uuid5" => b[14] == b'5' && matches!(b[19], b'8' | b'9' | b'a' | b'b' | b'A' | b'B'),
        _ => true,
    }
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(bits) = bits.parse::<u8>() else {
        return false;
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => bits <= 32,
        Ok(std::net::IpAddr::V6(_)) => bits <= 128,
        Err(_) => false,
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    matches!(parts.len(), 6 | 8 | 20)
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = "spec.versions[0].schema.openAPIV3Schema";

    fn compile(s: Value) -> StructuralSchema {
        match StructuralSchema::compile(&s, BASE) {
            Ok(c) => c,
            Err(e) => panic!("compile failed: {}", lines(&e)),
        }
    }

    fn compile_err(s: Value) -> String {
        match StructuralSchema::compile(&s, BASE) {
            Ok(_) => panic!("expected compile errors"),
            Err(e) => lines(&e),
        }
    }

    fn lines(e: &[FieldError]) -> String {
        e.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A CRD-like root with `spec` having the given properties.
    fn with_spec(props: Value) -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": props}}})
    }

    fn errors(s: &StructuralSchema, mut obj: Value) -> String {
        lines(&s.admit(&mut obj, None).errors)
    }

    fn cr(spec: Value) -> Value {
        json!({"apiVersion": "x.io/v1", "kind": "X", "metadata": {"name": "a"}, "spec": spec})
    }

    #[test]
    fn type_errors() {
        let s = compile(with_spec(json!({
            "replicas": {"type": "integer"}, "ratio": {"type": "number"},
            "on": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}},
            "name": {"type": "string"}, "opt": {"type": "string", "nullable": true}
        })));
        assert_eq!(
            errors(&s, cr(json!({"replicas": "string"}))),
            "spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""
        );
        assert_eq!(
            s.admit(&mut cr(json!({"replicas": "x"})), None).errors[0].reason,
            CauseType::FieldValueTypeInvalid
        );
        assert!(errors(&s, cr(json!({"replicas": 1.5})))
            .contains("must be of type integer: \"number\""));
        assert_eq!(errors(&s, cr(json!({"replicas": 2.0, "ratio": 3}))), "");
        assert!(errors(&s, cr(json!({"on": "true"})))
            .contains("spec.on in body must be of type boolean: \"string\""));
        assert!(
            errors(&s, cr(json!({"tags": {"a": 1}}))).contains("must be of type array: \"object\"")
        );
        assert!(errors(&s, cr(json!({"tags": [1]}))).contains(
            "spec.tags[0]: Invalid value: \"integer\": spec.tags[0] in body must be of type string"
        ));
        assert!(errors(&s, cr(json!({"name": null})))
            .contains("spec.name in body must be of type string: \"null\""));
        assert_eq!(errors(&s, cr(json!({"opt": null}))), "");
        assert!(errors(&s, cr(json!("spec-as-string")))
            .contains("spec: Invalid value: \"string\": spec in body must be of type object"));
    }

    #[test]
    fn enum_pattern_required_and_bounds() {
        let s = compile(json!({"type": "object", "properties": {"spec": {
        "type": "object", "required": ["name"],
        "properties": {
            "size": {"type": "string", "enum": ["small", "medium"]},
            "n": {"type": "integer", "enum": [1, 2]},
            "name": {"type": "string", "pattern": "^[a-z]+$", "minLength": 1, "maxLength": 5},
            "replicas": {"type": "integer", "minimum": 1, "maximum": 10},
            "ex": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMinimum": true, "exclusiveMaximum": true},
            "even": {"type": "integer", "multipleOf": 2},
            "tenth": {"type": "number", "multipleOf": 0.5},
            "list": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}, "minProperties": 1, "maxProperties": 2}
        }}}}));
        let e = errors(&s, cr(json!({"name": "abc", "size": "huge"})));
        assert_eq!(
            e,
            "spec.size: Unsupported value: \"huge\": supported values: \"small\", \"medium\""
        );
        assert!(errors(&s, cr(json!({"name": "abc", "n": 3})))
            .contains("spec.n: Unsupported value: 3: supported values: \"1\", \"2\""));
        assert_eq!(errors(&s, cr(json!({}))), "spec.name: Required value");
        assert_eq!(
            errors(&s, cr(json!({"name": "X"}))),
            "spec.name: Invalid value: \"X\": spec.name in body should match '^[a-z]+$'"
        );
        assert!(errors(&s, cr(json!({"name": ""}))).contains(
            "spec.name: Invalid value: \"\": spec.name in body should be at least 1 chars long"
        ));
        // maxLength counts characters, not bytes: five multi-byte characters fit.
        assert!(!errors(&s, cr(json!({"name": "ééééé"}))).contains("Too long"));
        assert!(errors(&s, cr(json!({"name": "abcdef"})))
            .contains("spec.name: Too long: may not be more than 5 bytes"));
        assert_eq!(
            errors(&s, cr(json!({"name": "a", "replicas": 20}))),
            "spec.replicas: Invalid value: 20: spec.replicas in body should be less than or equal to 10"
        );
        assert!(errors(&s, cr(json!({"name": "a", "replicas": 0})))
            .contains("should be greater than or equal to 1"));
        assert!(errors(
            &s,
            cr(json!({"name": "a", "replicas": -9223372036854775808i64}))
        )
        .contains("greater than or equal to 1"));
        assert!(errors(&s, cr(json!({"name": "a", "ex": 1})))
            .contains("spec.ex in body should be less than 1"));
        assert!(errors(&s, cr(json!({"name": "a", "ex": 0})))
            .contains("spec.ex in body should be greater than 0"));
        assert_eq!(
            errors(
                &s,
                cr(json!({"name": "a", "ex": 0.5, "even": 4, "tenth": 1.5}))
            ),
            ""
        );
        assert!(errors(&s, cr(json!({"name": "a", "even": 3})))
            .contains("spec.even: Invalid value: 3: spec.even in body should be a multiple of 2"));
        assert!(errors(&s, cr(json!({"name": "a", "tenth": 0.3})))
            .contains("should be a multiple of 0.5"));
        assert!(errors(&s, cr(json!({"name": "a", "list": []}))).contains(
            "spec.list: Invalid value: 0: spec.list in body should have at least 1 items"
        ));
        assert!(
            errors(&s, cr(json!({"name": "a", "list": ["a", "b", "c"]})))
                .contains("spec.list: Too many: 3: must have at most 2 items")
        );
        assert!(errors(&s, cr(json!({"name": "a", "labels": {}})))
            .contains("spec.labels in body should have at least 1 properties"));
        assert!(errors(
            &s,
            cr(json!({"name": "a", "labels": {"a": "1", "b": "2", "c": "3"}}))
        )
        .contains("spec.labels: Too many: 3: must have at most 2 items"));
        assert!(errors(&s, cr(json!({"name": "a", "labels": {"a": 1}})))
            .contains("spec.labels.a in body must be of type string"));
    }

    #[test]
    fn formats() {
        let s = compile(with_spec(json!({
            "b": {"type": "string", "format": "byte"}, "d": {"type": "string", "format": "date"},
            "t": {"type": "string", "format": "date-time"}, "u": {"type": "string", "format": "uuid"},
            "i": {"type": "integer", "format": "int32"}, "x": {"type": "string", "format": "made-up"}
        })));
        assert_eq!(
            errors(
                &s,
                cr(
                    json!({"b": "aGVsbG8=", "d": "2024-02-29", "t": "2024-01-02T03:04:05.123Z",
            "u": "123e4567-e89b-12d3-a456-426614174000", "i": 1099511627776i64, "x": "anything"})
                )
            ),
            ""
        );
        assert_eq!(
            errors(&s, cr(json!({"b": "%%%"}))),
            "spec.b: Invalid value: \"%%%\": spec.b in body must be of type byte: \"%%%\""
        );
        assert!(errors(&s, cr(json!({"d": "2023-02-29"}))).contains("must be of type date"));
        assert!(
            errors(&s, cr(json!({"t": "2024-01-02 nope"}))).contains("must be of type date-time")
        );
        assert!(errors(&s, cr(json!({"t": "2024-01-02T03:04:05+25:00"})))
            .contains("must be of type date-time"));
        assert!(
            errors(&s, cr(json!({"u": "123e4567e89b12d3a456426614174000"})))
                .contains("must be of type uuid")
        );
        assert!(errors(&s, cr(json!({"t": "ééééééééééééééééééééé"})))
            .contains("must be of type date-time"));
    }

    #[test]
    fn int_or_string_preserve_and_junctors() {
        let s = compile(with_spec(json!({
            "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}],
                     "pattern": "^[0-9]+%?$"},
            "free": {"x-kubernetes-preserve-unknown-fields": true},
            "one": {"type": "integer", "oneOf": [{"minimum": 5}, {"maximum": 0}]},
            "not": {"type": "string", "not": {"enum": ["forbidden"]}},
            "all": {"type": "integer", "allOf": [{"minimum": 1}, {"maximum": 3}]}
        })));
        assert_eq!(
            errors(
                &s,
                cr(json!({"port": 80, "free": {"anything": [1, {"x": null}]}}))
            ),
            ""
        );
        assert_eq!(errors(&s, cr(json!({"port": "50%"}))), "");
        assert!(errors(&s, cr(json!({"port": true})))
            .contains("must be of type integer,string: \"boolean\""));
        assert!(errors(&s, cr(json!({"port": "abc"}))).contains("should match"));
        assert!(errors(&s, cr(json!({"one": 3})))
            .contains("must validate one and only one schema (oneOf)"));
        assert_eq!(errors(&s, cr(json!({"one": 6}))), "");
        assert!(errors(&s, cr(json!({"not": "forbidden"})))
            .contains("must not validate the schema (not)"));
        assert!(errors(&s, cr(json!({"all": 4}))).contains("should be less than or equal to 3"));
    }

    #[test]
    fn list_types() {
        let s = compile(with_spec(json!({
            "set": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "map": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                    "items": {"type": "object", "properties": {"name": {"type": "string"}, "v": {"type": "integer"}}}},
            "atomic": {"type": "array", "x-kubernetes-list-type": "atomic", "items": {"type": "string"}}
        })));
        assert_eq!(
            errors(
                &s,
                cr(
                    json!({"set": ["a", "b"], "atomic": ["a", "a"], "map": [{"name": "a"}, {"name": "b"}]})
                )
            ),
            ""
        );
        assert_eq!(
            errors(&s, cr(json!({"set": ["a", "b", "a"]}))),
            "spec.set[2]: Duplicate value: \"a\""
        );
        let e = errors(
            &s,
            cr(json!({"map": [{"name": "a", "v": 1}, {"v": 2}, {"name": "a", "v": 3}]})),
        );
        assert!(e.contains("spec.map[1].name: Required value"), "{e}");
        assert!(
            e.contains("spec.map[2]: Duplicate value: {\"name\":\"a\"}"),
            "{e}"
        );
        // Map keys must be item properties; list-type needs an array.
        let e = compile_err(with_spec(
            json!({"m": {"type": "array", "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["id"], "items": {"type": "object", "properties": {"name": {"type": "string"}}}}}),
        ));
        assert!(e.contains("x-kubernetes-list-map-keys: Invalid value: [\"id\"]: entries must all be names of item properties"), "{e}");
        let e = compile_err(with_spec(
            json!({"m": {"type": "string", "x-kubernetes-list-type": "set"}}),
        ));
        assert!(e.contains("properties[m].type: Invalid value: \"string\": must be array if x-kubernetes-list-type is specified"), "{e}");
        let e = compile_err(with_spec(
            json!({"m": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "bag"}}),
        ));
        assert!(
            e.contains(
                "Unsupported value: \"bag\": supported values: \"atomic\", \"set\", \"map\""
            ),
            "{e}"
        );
    }

    #[test]
    fn pruning() {
        let s = compile(json!({"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "keep": {"type": "string"},
            "nested": {"type": "object", "properties": {"a": {"type": "integer"}}},
            "items": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "string"}}}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                     "properties": {"typed": {"type": "object", "properties": {"x": {"type": "string"}}}}},
            "labels": {"type": "object", "additionalProperties": {"type": "object", "properties": {"v": {"type": "string"}}}},
            "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                         "properties": {"spec": {"type": "object", "properties": {"image": {"type": "string"}}}}}
        }}}}));
        let mut obj = json!({"apiVersion": "x.io/v1", "kind": "X", "metadata": {"name": "a", "labels": {"l": "v"}},
            "status": {"x": 1}, "extra": true,
            "spec": {"keep": "k", "drop": 1, "nested": {"a": 1, "b": 2},
                "items": [{"n": "x", "junk": 1}],
                "free": {"anything": {"deep": 1}, "typed": {"x": "y", "pruned": 1}},
                "labels": {"one": {"v": "a", "w": "b"}},
                "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
                             "spec": {"image": "i", "cmd": "c"}, "other": 1}}});
        let out = s.admit(&mut obj, None);
        let mut pruned = out.pruned.clone();
        pruned.sort();
        assert_eq!(
            pruned,
            vec![
                ".extra",
                ".spec.drop",
                ".spec.free.typed.pruned",
                ".spec.items[0].junk",
                ".spec.labels.one.w",
                ".spec.nested.b",
                ".spec.template.other",
                ".spec.template.spec.cmd",
                ".status"
            ]
        );
        assert_eq!(out.errors, vec![]);
        assert_eq!(obj["metadata"]["labels"]["l"], "v");
        assert_eq!(obj["spec"]["free"]["anything"]["deep"], 1);
        assert_eq!(obj["spec"]["template"]["metadata"]["labels"]["a"], "b");
        assert_eq!(obj["spec"]["template"]["kind"], "Pod");
        // The root's metadata schema may restrict the name.
        let m = compile(
            json!({"type": "object", "properties": {"metadata": {"type": "object",
            "properties": {"name": {"type": "string", "maxLength": 3}}}}}),
        );
        let e = errors(
            &m,
            json!({"metadata": {"name": "toolong", "labels": {"a": "b"}}}),
        );
        assert_eq!(e, "metadata.name: Too long: may not be more than 3 bytes");
        // An embedded resource needs apiVersion and kind.
        let mut obj = cr(json!({"template": {"spec": {}}}));
        let e = lines(&s.admit(&mut obj, None).errors);
        assert!(
            e.contains("spec.template.apiVersion: Required value: must not be empty"),
            "{e}"
        );
        assert!(
            e.contains("spec.template.kind: Required value: must not be empty"),
            "{e}"
        );
    }

    #[test]
    fn defaults() {
        let s = compile(json!({"type": "object", "properties": {
        "spec": {"type": "object", "default": {}, "properties": {
            "replicas": {"type": "integer", "default": 1},
            "strategy": {"type": "object", "default": {"type": "Rolling"}, "properties": {
                "type": {"type": "string"}, "maxSurge": {"type": "integer", "default": 25}}},
            "opt": {"type": "string", "nullable": true, "default": "d"},
            "req": {"type": "string", "default": "r"},
            "items": {"type": "array", "items": {"type": "object", "properties": {"p": {"type": "integer", "default": 80}}}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                     "properties": {"mode": {"type": "string", "default": "auto"}}},
            "absent": {"type": "object", "properties": {"x": {"type": "string", "default": "no"}}},
            "gone": {"type": "object", "properties": {"k": {"type": "string", "default": "kept"}}}
        }}}}));
        let mut obj = json!({"apiVersion": "x.io/v1", "kind": "X", "metadata": {"name": "a"}});
        let out = s.admit(&mut obj, None);
        assert!(out.errors.is_empty(), "{}", lines(&out.errors));
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(
            obj["spec"]["strategy"],
            json!({"type": "Rolling", "maxSurge": 25})
        );
        assert!(
            obj["spec"].get("absent").is_none(),
            "defaults only where the parent exists"
        );

        let mut obj = cr(
            json!({"opt": null, "req": null, "items": [{}, {"p": 8}], "free": {"other": 1},
            "gone": {"unknown": 1}}),
        );
        let out = s.admit(&mut obj, None);
        assert!(out.errors.is_empty(), "{}", lines(&out.errors));
        assert_eq!(obj["spec"]["opt"], Value::Null, "a nullable null stays");
        assert_eq!(obj["spec"]["req"], "r", "a non-nullable null is defaulted");
        assert_eq!(obj["spec"]["items"], json!([{"p": 80}, {"p": 8}]));
        assert_eq!(obj["spec"]["free"], json!({"other": 1, "mode": "auto"}));
        assert_eq!(
            obj["spec"]["gone"],
            json!({"k": "kept"}),
            "pruned then defaulted"
        );
        assert_eq!(out.pruned, vec![".spec.gone.unknown".to_string()]);

        // A default must validate against its own schema, and be pruned.
        let e = compile_err(with_spec(
            json!({"n": {"type": "integer", "maximum": 3, "default": 5}}),
        ));
        assert_eq!(e, "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[n].default: Invalid value: 5:  in body should be less than or equal to 3");
        let e = compile_err(with_spec(
            json!({"o": {"type": "object", "properties": {"a": {"type": "string"}}, "default": {"b": 1}}}),
        ));
        assert!(
            e.contains(
                "properties[o].default: Invalid value: {\"b\":1}: must not have unknown fields"
            ),
            "{e}"
        );
        let e = compile_err(with_spec(json!({"o": {"type": "object", "default": {},
            "properties": {"a": {"type": "string", "default": 7}}}})));
        assert!(e.contains("must be of type string"), "{e}");
        let e = compile_err(
            json!({"type": "object", "properties": {"metadata": {"type": "object", "default": {}}}}),
        );
        assert!(
            e.contains(
                "properties[metadata].default: Forbidden: must not be set in top-level metadata"
            ),
            "{e}"
        );
    }

    #[test]
    fn non_structural_refused() {
        let e = compile_err(
            json!({"type": "object", "properties": {"spec": {"properties": {"a": {"type": "string"}}}}}),
        );
        assert_eq!(e, "spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields");
        let e = compile_err(json!({"properties": {}}));
        assert!(
            e.contains("openAPIV3Schema.type: Required value: must not be empty at the root"),
            "{e}"
        );
        let e = compile_err(with_spec(
            json!({"l": {"type": "array", "items": {"properties": {}}}}),
        ));
        assert!(e.contains("properties[l].items.type: Required value: must not be empty for specified array items"), "{e}");
        let e = compile_err(with_spec(json!({"r": {"$ref": "#/definitions/x"}})));
        assert!(
            e.contains("properties[r].$ref: Forbidden: $ref is not supported"),
            "{e}"
        );
        let e = compile_err(with_spec(
            json!({"o": {"type": "object", "properties": {"a": {"type": "string"}},
            "additionalProperties": false}}),
        ));
        assert!(e.contains("properties[o].additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"), "{e}");
        let e = compile_err(
            json!({"type": "object", "properties": {"metadata": {"type": "object",
            "properties": {"labels": {"type": "object"}}}}}),
        );
        assert!(e.contains("properties[metadata]: Forbidden: must not specify anything other than name and generateName"), "{e}");
        assert!(StructuralSchema::compile(
            &json!({"type": "object", "properties": {"metadata": {"type": "object",
            "properties": {"name": {"type": "string", "pattern": "^a"}}}}}),
            BASE
        )
        .is_ok());
        let e = compile_err(with_spec(
            json!({"a": {"type": "array", "uniqueItems": true, "items": {"type": "string"}}}),
        ));
        assert!(e.contains("uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"), "{e}");
        let e = compile_err(with_spec(
            json!({"a": {"type": "string", "anyOf": [{"type": "string"}]}}),
        ));
        assert!(
            e.contains("properties[a].anyOf[0].type: Forbidden: must be empty to be structural"),
            "{e}"
        );
        let e = compile_err(with_spec(json!({"a": {"type": "array"}})));
        assert!(
            e.contains("properties[a].items: Required value: must be specified"),
            "{e}"
        );
        let e = compile_err(with_spec(
            json!({"a": {"type": "string", "pattern": "(unclosed"}}),
        ));
        assert!(e.contains("properties[a].pattern: Invalid value: \"(unclosed\": must be a valid regular expression"), "{e}");
        let e = compile_err(with_spec(json!({"a": {"type": "null"}})));
        assert!(e.contains("type cannot be set to null"), "{e}");
        let e = compile_err(with_spec(
            json!({"a": {"type": "object", "x-kubernetes-embedded-resource": true}}),
        ));
        assert!(e.contains("properties[a].properties: Required value: must not be empty if x-kubernetes-embedded-resource is true"), "{e}");
        let e = compile_err(json!({"type": "object", "additionalProperties": {"type": "string"}}));
        assert!(
            e.contains(
                "openAPIV3Schema.additionalProperties: Forbidden: must not be used at the root"
            ),
            "{e}"
        );
        // A type-less field is fine under preserve-unknown-fields or int-or-string.
        assert!(StructuralSchema::compile(
            &with_spec(json!({"a": {"x-kubernetes-preserve-unknown-fields": true},
            "b": {"x-kubernetes-int-or-string": true}})),
            BASE
        )
        .is_ok());
    }

    fn cel_schema() -> StructuralSchema {
        compile(json!({"type": "object", "properties": {"spec": {
        "type": "object",
        "x-kubernetes-validations": [
            {"rule": "self.minReplicas <= self.replicas", "message": "replicas must be at least minReplicas"},
            {"rule": "self.replicas >= oldSelf.replicas", "message": "replicas may not decrease"},
            {"rule": "!has(self.forbidden)", "reason": "FieldValueForbidden", "message": "no", "fieldPath": ".forbidden"},
            {"rule": "self.name.startsWith('a')"}
        ],
        "properties": {
            "replicas": {"type": "integer"}, "minReplicas": {"type": "integer"},
            "forbidden": {"type": "string"},
            "name": {"type": "string", "default": "abc",
                     "x-kubernetes-validations": [{"rule": "size(self) < 10", "messageExpression": "'name too long: ' + self"}]},
            "immutable": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "is immutable"}]},
            "ports": {"type": "array", "maxItems": 100000, "items": {"type": "integer"},
                      "x-kubernetes-validations": [{"rule": "self.all(p, p > 0)"}]}
        }}}}))
    }

    #[test]
    fn cel_rules() {
        let s = cel_schema();
        assert_eq!(errors(&s, cr(json!({"replicas": 3, "minReplicas": 1}))), "");
        assert_eq!(
            errors(&s, cr(json!({"replicas": 1, "minReplicas": 2}))),
            "spec: Invalid value: \"object\": replicas must be at least minReplicas"
        );
        assert_eq!(
            errors(
                &s,
                cr(json!({"replicas": 1, "minReplicas": 1, "name": "bcd"}))
            ),
            "spec: Invalid value: \"object\": failed rule: self.name.startsWith('a')"
        );
        assert_eq!(
            errors(
                &s,
                cr(json!({"replicas": 1, "minReplicas": 1, "forbidden": "x"}))
            ),
            "spec.forbidden: Forbidden: no"
        );
        assert_eq!(
            errors(
                &s,
                cr(json!({"replicas": 1, "minReplicas": 1, "name": "aaaaaaaaaaaa"}))
            ),
            "spec.name: Invalid value: \"aaaaaaaaaaaa\": name too long: aaaaaaaaaaaa"
        );
        assert_eq!(
            errors(
                &s,
                cr(json!({"replicas": 1, "minReplicas": 1, "ports": [1, 0]}))
            ),
            "spec.ports: Invalid value: \"array\": failed rule: self.all(p, p > 0)"
        );
        // A rule over a missing field is a runtime error, reported as kube does.
        let e = errors(&s, cr(json!({"replicas": 1})));
        assert!(
            e.starts_with("spec: Invalid value: \"object\": ")
                && e.contains("evaluating rule: replicas must be at least minReplicas"),
            "{e}"
        );
    }

    #[test]
    fn cel_transition_rules() {
        let s = cel_schema();
        let old = cr(json!({"replicas": 5, "minReplicas": 1, "immutable": "x"}));
        // Without an old object, transition rules do not run.
        assert_eq!(
            errors(
                &s,
                cr(json!({"replicas": 1, "minReplicas": 1, "immutable": "y"}))
            ),
            ""
        );
        let mut obj = cr(json!({"replicas": 6, "minReplicas": 1, "immutable": "x"}));
        assert_eq!(lines(&s.admit(&mut obj, Some(&old)).errors), "");
        let mut obj = cr(json!({"replicas": 4, "minReplicas": 1, "immutable": "y"}));
        let e = lines(&s.admit(&mut obj, Some(&old)).errors);
        assert!(
            e.contains("spec: Invalid value: \"object\": replicas may not decrease"),
            "{e}"
        );
        assert!(
            e.contains("spec.immutable: Invalid value: \"y\": is immutable"),
            "{e}"
        );
        // The old value must exist at that path.
        let old = cr(json!({"replicas": 5, "minReplicas": 1}));
        let mut obj = cr(json!({"replicas": 6, "minReplicas": 1, "immutable": "new"}));
        assert_eq!(lines(&s.admit(&mut obj, Some(&old)).errors), "");
    }

    #[test]
    fn cel_compile_errors() {
        let e = compile_err(with_spec(json!({"a": {"type": "string",
            "x-kubernetes-validations": [{"rule": "self.size() >"}]}})));
        assert!(e.starts_with("spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[a].x-kubernetes-validations[0].rule: Invalid value: {\"rule\":\"self.size() >\"}: compilation failed: ERROR: <input>:"), "{e}");
        let e = compile_err(with_spec(json!({"a": {"type": "string",
            "x-kubernetes-validations": [{"rule": "self == other"}]}})));
        assert!(e.contains("undeclared reference to 'other'"), "{e}");
        assert!(e.contains("x-kubernetes-validations[0].rule"), "{e}");
        let e = compile_err(with_spec(json!({"a": {"type": "string",
            "x-kubernetes-validations": [{"rule": "true", "reason": "Bad"}]}})));
        assert!(
            e.contains("x-kubernetes-validations[0].reason: Unsupported value: \"Bad\""),
            "{e}"
        );
        let e = compile_err(with_spec(
            json!({"a": {"type": "string", "x-kubernetes-validations": [{"rule": " "}]}}),
        ));
        assert!(
            e.contains("x-kubernetes-validations[0].rule: Required value: rule is not specified"),
            "{e}"
        );
        // Comprehension variables are declared.
        assert!(StructuralSchema::compile(
            &with_spec(
                json!({"a": {"type": "array", "items": {"type": "string"}, "maxItems": 100,
            "x-kubernetes-validations": [{"rule": "self.all(x, self.exists(y, x == y))"}]}})
            ),
            BASE
        )
        .is_ok());
    }

    #[test]
    fn cel_cost_is_bounded() {
        let s = compile(with_spec(
            json!({"a": {"type": "array", "items": {"type": "integer"}, "maxItems": 1000,
            "x-kubernetes-validations": [{"rule": "self.all(x, self.all(y, x != y || true))"}]},
            "b": {"type": "array", "items": {"type": "string", "x-kubernetes-validations": [{"rule": "self.size() < 100"}]}}}),
        ));
        // Under the static estimate for 1,000 items (10,000,000), over the per-call limit
        // (1,000,000) when the list is full.
        let big: Vec<i64> = (0..1_000).collect();
        let started = std::time::Instant::now();
        let e = errors(&s, cr(json!({"a": big})));
        assert!(e.contains("call cost exceeds limit for rule"), "{e}");
        // Each item is cheap, but 200,000 of 100 characters add up past the budget.
        let many: Vec<String> = (0..200_000).map(|i| format!("{i:0>99}")).collect();
        let e = errors(&s, cr(json!({"b": many})));
        assert!(
            e.contains("validation failed due to running out of cost budget"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "stops after the budget is spent");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        // Small inputs still run.
        assert_eq!(errors(&s, cr(json!({"a": [1, 2, 3], "b": ["x"]}))), "");
    }

    #[test]
    fn rules_estimated_over_the_static_cost_limit_are_refused_at_compile() {
        let unbounded = with_spec(
            json!({"tags": {"type": "array", "items": {"type": "string"},
            "x-kubernetes-validations": [{"rule": "self.all(x, x.matches('^[a-z]+$'))"}]}}),
        );
        let errs = StructuralSchema::compile(&unbounded, "s").expect_err("refused");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            errs[0].field,
            "s.properties[spec].properties[tags].x-kubernetes-validations[0].rule"
        );
        assert_eq!(errs[0].message, "Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)");
        // Bounded, the same rule is cheap.
        let bounded = with_spec(json!({"tags": {"type": "array", "maxItems": 25,
            "items": {"type": "string", "maxLength": 10},
            "x-kubernetes-validations": [{"rule": "self.all(x, x.matches('^[a-z]+$'))"}]}}));
        assert!(StructuralSchema::compile(&bounded, "s").is_ok());
        // A rule on each item counts once per item the list can hold.
        let per_item = with_spec(json!({"tags": {"type": "array", "items": {"type": "string",
            "x-kubernetes-validations": [{"rule": "self.matches('^[a-z]+$')"}]}}}));
        let errs = StructuralSchema::compile(&per_item, "s").expect_err("refused");
        assert_eq!(
            errs[0].field,
            "s.properties[spec].properties[tags].items.x-kubernetes-validations[0].rule"
        );
        // A quadratic rule over a map without maxProperties.
        let map = with_spec(json!({"labels": {"type": "object",
            "additionalProperties": {"type": "string", "maxLength": 63},
            "x-kubernetes-validations": [{"rule": "self.all(k, self.all(j, k == j || self[k] != self[j]))"}]}}));
        assert!(StructuralSchema::compile(&map, "s").is_err());
        let msg = cost_error_message("estimated rule cost", 12_000_000.0, CEL_STATIC_COST_LIMIT);
        assert!(msg.contains("factor of 1.200000x"), "{msg}");
        let msg = cost_error_message("estimated rule cost", 25_000_000.0, CEL_STATIC_COST_LIMIT);
        assert!(msg.contains("factor of 2.5x"), "{msg}");
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let mut schema = json!({"type": "object", "properties": {"leaf": {"type": "string", "default": "d"}},
            "x-kubernetes-validations": [{"rule": "has(self.leaf)"}]});
        let mut obj = json!({"junk": 1});
        for _ in 0..60 {
            schema = json!({"type": "object", "properties": {"n": schema}});
            obj = json!({"n": obj, "junk": 1});
        }
        let s = compile(with_spec(json!({"deep": schema})));
        let mut obj = cr(json!({"deep": obj}));
        let out = s.admit(&mut obj, None);
        assert!(out.errors.is_empty(), "{}", lines(&out.errors));
        assert_eq!(out.pruned.len(), 61);
        let mut cur = &obj["spec"]["deep"];
        for _ in 0..60 {
            cur = &cur["n"];
        }
        assert_eq!(cur["leaf"], "d");
        // A hostile value nested deeper than MAX_DEPTH is refused, not walked.
        let mut v = json!(1);
        for _ in 0..(MAX_DEPTH + 10) {
            v = json!([v]);
        }
        let s = compile(with_spec(
            json!({"free": {"x-kubernetes-preserve-unknown-fields": true}}),
        ));
        let mut obj = cr(json!({"free": {"v": v}}));
        assert!(lines(&s.admit(&mut obj, None).errors).contains("must not be nested more than"));
    }

    #[test]
    fn hostile_patterns_are_linear() {
        let s = compile(with_spec(
            json!({"a": {"type": "string", "pattern": "^(a+)+$"}}),
        ));
        let input = format!("{}!", "a".repeat(100_000));
        let started = std::time::Instant::now();
        assert!(errors(&s, cr(json!({"a": input}))).contains("should match"));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // A pattern whose automaton is too big is refused at compile time.
        let e = compile_err(with_spec(
            json!({"a": {"type": "string", "pattern": "(\\w{1000}){1000}"}}),
        ));
        assert!(e.contains("must be a valid regular expression"), "{e}");
    }

    #[test]
    fn schema_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<StructuralSchema>();
    }
}

//! `kubevirt-rs validate`: default and validate manifests offline, as the API server would.

use anyhow::{Context, Result};
use kubevirt_api::admission::{self, AdmitOptions, FieldValidation};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// A file, a directory (its *.yaml, *.yml and *.json files) or `-` for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Descend into subdirectories of a directory given with -f.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Print each valid object as it would be stored (defaults applied).
    #[arg(short = 'o', long = "output", value_parser = ["yaml", "json"])]
    output: Option<String>,
    /// What to do with fields the schema does not have, like kubectl's --validate.
    #[arg(long = "validate", default_value = "strict", value_parser = ["strict", "warn", "ignore"])]
    field_validation: String,
    /// Feature gates to validate against (KubeVirt's `developerConfiguration.featureGates`);
    /// the default is what a fresh `kubevirt-rs server` enables. `--feature-gates=` validates
    /// as a KubeVirt cluster with no gates.
    #[arg(long, value_delimiter = ',')]
    feature_gates: Vec<String>,
}

/// One YAML/JSON document with where it came from.
struct Doc {
    source: String,
    value: Value,
}

fn collect_files(path: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                if recursive {
                    collect_files(&p, recursive, out)?;
                }
            } else if p
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
            {
                out.push(p);
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Split a multi-document YAML (or a JSON document) into values; `List` kinds are expanded.
pub fn parse_documents(text: &str, source: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (i, d) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(d)
            .with_context(|| format!("{source}: document {}: not valid YAML", i + 1))?;
        match v {
            Value::Null => {}
            Value::Object(ref m)
                if m.get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List"))
                    && m.contains_key("items") =>
            {
                if let Some(Value::Array(items)) = m.get("items") {
                    docs.extend(items.iter().cloned());
                }
            }
            v => docs.push(v),
        }
    }
    Ok(docs)
}

pub fn run(args: ValidateArgs) -> Result<i32> {
    let mut docs = Vec::new();
    for f in &args.files {
        if f == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            docs.extend(
                parse_documents(&text, "<stdin>")?
                    .into_iter()
                    .map(|value| Doc {
                        source: "<stdin>".into(),
                        value,
                    }),
            );
            continue;
        }
        let mut files = Vec::new();
        collect_files(Path::new(f), args.recursive, &mut files)?;
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let source = file.display().to_string();
            docs.extend(
                parse_documents(&text, &source)?
                    .into_iter()
                    .map(|value| Doc {
                        source: source.clone(),
                        value,
                    }),
            );
        }
    }
    let mut opts = AdmitOptions {
        field_validation: match args.field_validation.as_str() {
            "warn" => FieldValidation::Warn,
            "ignore" => FieldValidation::Ignore,
            _ => FieldValidation::Strict,
        },
        ..Default::default()
    };
    opts.validation.feature_gates = args
        .feature_gates
        .iter()
        .filter(|g| !g.is_empty())
        .cloned()
        .collect();
    let mut invalid = 0;
    let mut printed = 0;
    let mut out = std::io::stdout().lock();
    for doc in docs {
        let kind = doc
            .value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("<no kind>");
        let name = doc
            .value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .or_else(|| {
                doc.value
                    .pointer("/metadata/generateName")
                    .and_then(Value::as_str)
            })
            .unwrap_or("<no name>");
        let id = format!("{kind}/{name}");
        match admission::admit(&doc.value, &opts) {
            Ok(admitted) => {
                for w in &admitted.warnings {
                    eprintln!("Warning: {id}: {w}");
                }
                match args.output.as_deref() {
                    Some("yaml") => {
                        if printed > 0 {
                            writeln!(out, "---")?;
                        }
                        write!(out, "{}", serde_yaml::to_string(&admitted.value)?)?;
                    }
                    Some(_) => writeln!(out, "{}", serde_json::to_string_pretty(&admitted.value)?)?,
                    None => writeln!(out, "OK {id}")?,
                }
                printed += 1;
            }
            Err(errs) => {
                invalid += 1;
                for e in errs {
                    if e.field.is_empty() {
                        writeln!(out, "{id}: {}", e.message)?;
                    } else {
                        writeln!(out, "{id}: {}: {}", e.field, e.message)?;
                    }
                }
                tracing::debug!(source = %doc.source, object = %id, "invalid object");
            }
        }
    }
    Ok(if invalid > 0 { 1 } else { 0 })
}

//! The process's log subscriber: tracing-subscriber's text lines, or one JSON object a line
//! (`--log-format json`) with KubeVirt's fields: `timestamp`, `level`, `component`, `msg`,
//! then the fields of the event's spans (outermost first; `namespace`, `name`, `uid` where
//! the handler or launcher acts on a VMI) and of the event (`reason`, `error`, ...).
//! `KUBEVIRT_RS_LOG` filters both (default `warn`).

use kubevirt_launcher::logging::LogFormat;
use serde_json::{Map, Value};
use std::io::Write;
use tracing::field::{Field, Visit};
use tracing::{span, Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// The `component` of a process's lines.
#[derive(Clone, Copy, Debug)]
pub enum Component {
    /// Every line names this component (`kubevirt-rs node`: virt-handler; a launcher).
    Fixed(&'static str),
    /// `kubevirt-rs server` runs several KubeVirt components: the crate that logged decides.
    ByTarget,
}

impl Component {
    fn of(self, target: &str) -> &'static str {
        match self {
            Component::Fixed(c) => c,
            Component::ByTarget => {
                let krate = target.split("::").next().unwrap_or(target);
                match krate {
                    "kubevirt_handler" => "virt-handler",
                    "kubevirt_launcher" => "virt-launcher",
                    "kubevirt_controller" => "virt-controller",
                    "kubevirt_virtapi" => "virt-api",
                    "kubevirt_apiserver" => "kube-apiserver",
                    "kubevirt_cdi_controller" => "cdi-controller",
                    "kubevirt_cdi" => "cdi-importer",
                    _ => "kubevirt-rs",
                }
            }
        }
    }
}

/// Installs the subscriber for `format` and records it for the launchers this process spawns.
pub fn init(format: LogFormat, component: Component) {
    kubevirt_launcher::logging::set_process_format(format);
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUBEVIRT_RS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(JsonLines { component })
            .init(),
    }
}

/// Fields recorded from a span or an event.
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Fields {
    fn put(&mut self, field: &Field, v: Value) {
        let key = match field.name() {
            "message" => "msg",
            n => n,
        };
        self.0.insert(key.to_string(), v);
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

/// The JSON layer: one line per event on stderr.
struct JsonLines {
    component: Component,
}

impl<S> Layer<S> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(f);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(f) = span.extensions_mut().get_mut::<Fields>() {
                values.record(f);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(k8s_openapi::jiff::Timestamp::now().to_string()),
        );
        line.insert(
            "level".into(),
            Value::String(meta.level().as_str().to_ascii_lowercase()),
        );
        line.insert(
            "component".into(),
            Value::String(self.component.of(meta.target()).to_string()),
        );
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<Fields>() {
                    line.extend(f.0.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let mut f = Fields::default();
        event.record(&mut f);
        line.extend(f.0);
        line.insert("pos".into(), Value::String(meta.target().to_string()));
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::Component;

    #[test]
    fn the_server_names_the_component_by_the_crate_that_logged() {
        let c = Component::ByTarget;
        assert_eq!(c.of("kubevirt_handler::rest"), "virt-handler");
        assert_eq!(c.of("kubevirt_controller"), "virt-controller");
        assert_eq!(c.of("kubevirt_virtapi::console"), "virt-api");
        assert_eq!(c.of("kube_client::client"), "kubevirt-rs");
        assert_eq!(
            Component::Fixed("virt-launcher").of("kubevirt_handler"),
            "virt-launcher"
        );
    }
}

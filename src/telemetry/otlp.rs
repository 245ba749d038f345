//! OpenTelemetry traces over OTLP, when `tracing.enabled`: a span per publish request (a W3C
//! `traceparent` on the request is continued), with the hub's publish and the store's sync
//! as its children, exported in batches by a thread of the SDK's own.
//!
//! The spans go to target [`TARGET`], which only the OpenTelemetry layer reads (the log
//! filters turn it off), and are made only when tracing is on: with it off, a publish makes no
//! span at all.

use crate::config::{OtlpProtocol, TracingConfig};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of the spans exported.
pub const TARGET: &str = "herald::trace";

static ON: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are being made.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The tracer provider for `config`, when tracing is on; the caller makes it the layer of the
/// global subscriber. An endpoint that is not a URL is an error naming the key.
pub fn provider(config: &TracingConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    if !config.enabled {
        return Ok(None);
    }
    let endpoint = traces_url(&config.endpoint)?;
    let protocol = match config.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
        OtlpProtocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
    };
    let headers = config.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(endpoint)
        .with_timeout(config.timeout)
        .with_headers(headers)
        .build()
        .map_err(|e| anyhow::anyhow!("configuration key `tracing.endpoint`: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(config.service_name.clone()).build();
    // A trace a caller started keeps the caller's decision; one started here is kept at the
    // configured ratio.
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_sampler(sampler).with_resource(resource).build();
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let _ = PROVIDER.set(provider.clone());
    ON.store(true, Ordering::Relaxed);
    Ok(Some(provider))
}

/// The `tracing` layer that turns [`TARGET`] spans into OpenTelemetry spans.
pub fn layer<S>(provider: &SdkTracerProvider) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("herald"))
}

/// Sends what is still batched and stops the exporter (at the end of `herald serve`).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        tracing::warn!(error = %e, "traces still batched at shutdown were not all exported");
    }
}

/// `endpoint` with the traces path when it names none (`http://collector:4318` →
/// `http://collector:4318/v1/traces`), as the OTLP specification has clients do.
fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let url = url::Url::parse(endpoint).map_err(|e| {
        anyhow::anyhow!("configuration key `tracing.endpoint`: `{endpoint}` is not a URL such as http://127.0.0.1:4318 ({e})")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        anyhow::bail!("configuration key `tracing.endpoint`: `{endpoint}`: OTLP over HTTP needs an http:// or https:// URL");
    }
    Ok(if url.path() == "/" || url.path().is_empty() {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    } else {
        endpoint.to_owned()
    })
}

/// The span of a publish request, continuing the trace its `traceparent` names.
pub fn publish_span(headers: &http::HeaderMap, route: &str, request_id: &http::HeaderValue) -> tracing::Span {
    let span = tracing::info_span!(
        target: TARGET,
        "publish",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        herald.request_id = request_id.to_str().unwrap_or_default(),
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(parent);
    span
}

/// Records the answer's status on a publish span.
pub fn record_status(span: &tracing::Span, status: http::StatusCode) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// The hub's part of a publish (numbering, windows, the store, waking the subscribers), a
/// child of the request's span. Made only when [`enabled`].
pub fn hub_publish_span(events: usize) -> tracing::Span {
    tracing::info_span!(target: TARGET, "hub.publish", herald.events = events)
}

/// The wait for the store to make the events durable, after which subscribers are woken.
/// Made only when [`enabled`].
pub fn store_sync_span() -> tracing::Span {
    tracing::info_span!(target: TARGET, "store.sync")
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_when_the_endpoint_names_none() {
        assert_eq!(traces_url("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://127.0.0.1:4318/").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("https://otel.example/custom/path").unwrap(), "https://otel.example/custom/path");
        assert!(traces_url("127.0.0.1:4318").unwrap_err().to_string().contains("tracing.endpoint"));
        assert!(traces_url("udp://jaeger:6831").is_err());
    }
}

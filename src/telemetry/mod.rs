//! What Herald tells its operators: logs (this module), access-log lines ([`access`]), the
//! counters behind `/metrics` ([`counters`]), and OpenTelemetry traces ([`otlp`]).

pub mod access;
pub mod counters;
mod log_file;
pub mod otlp;
pub mod request_id;

use crate::config::{Config, LogColor, LogFormat};
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The log file, when logs go to one: reopened on SIGHUP (see [`reopen_log_file`]).
static LOG_FILE: OnceLock<log_file::LogFile> = OnceLock::new();

/// Installs the global subscriber: `RUST_LOG` when set, else `log_level` from configuration;
/// `log_format`, `log_color`, `log_file` and `access_log` from configuration either way.
pub fn init(config: &Config) -> anyhow::Result<()> {
    let mut filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v)?,
        _ => {
            let mut filter = EnvFilter::try_new(&config.log_level).map_err(|e| anyhow::anyhow!("configuration key `log_level`: {e}"))?;
            // The storage engine narrates its recovery at info; only its warnings matter to an operator.
            if !config.log_level.contains("lsm_tree") && !config.log_level.contains("fjall") {
                for quiet in ["lsm_tree=warn", "fjall=warn"] {
                    filter = filter.add_directive(quiet.parse().expect("a valid directive"));
                }
            }
            filter
        }
    };
    if !config.access_log {
        filter = filter.add_directive(format!("{}=off", access::TARGET).parse().expect("a valid directive"));
    }
    // Trace spans are for the OpenTelemetry layer only.
    filter = filter.add_directive(format!("{}=off", otlp::TARGET).parse().expect("a valid directive"));
    let to_file = !config.log_file.as_os_str().is_empty();
    let ansi = match config.log_color {
        // Colour codes only for a person at a terminal (and not one who asked for none): files
        // and pipes get plain text.
        LogColor::Auto => !to_file && std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        LogColor::Always => true,
        LogColor::Never => false,
    };
    let file = if to_file {
        let file = log_file::LogFile::open(&config.log_file)
            .map_err(|e| anyhow::anyhow!("configuration key `log_file`: cannot open {} for appending: {e}", config.log_file.display()))?;
        Some(LOG_FILE.get_or_init(|| file))
    } else {
        None
    };
    let installed = match otlp::provider(&config.tracing)? {
        // Without traces the filter is the subscriber's own: no per-layer bookkeeping on every
        // event.
        None => tracing_subscriber::registry().with(filter).with(log_layer(config.log_format, ansi, file)).try_init(),
        Some(provider) => {
            let spans = tracing_subscriber::filter::Targets::new().with_target(otlp::TARGET, tracing::Level::TRACE);
            tracing_subscriber::registry()
                .with(log_layer(config.log_format, ansi, file).with_filter(filter))
                .with(otlp::layer(&provider).with_filter(spans))
                .try_init()
        }
    };
    installed.map_err(|e| anyhow::anyhow!("{e}"))
}

/// The layer that writes log lines: text or JSON, to the log file or stderr.
fn log_layer<S>(format: LogFormat, ansi: bool, file: Option<&'static log_file::LogFile>) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let layer = tracing_subscriber::fmt::layer().with_ansi(ansi);
    match (format, file) {
        (LogFormat::Text, Some(file)) => layer.with_writer(file).boxed(),
        (LogFormat::Text, None) => layer.with_writer(std::io::stderr).boxed(),
        (LogFormat::Json, Some(file)) => {
            layer.json().flatten_event(true).with_current_span(false).with_span_list(false).with_writer(file).boxed()
        }
        (LogFormat::Json, None) => {
            layer.json().flatten_event(true).with_current_span(false).with_span_list(false).with_writer(std::io::stderr).boxed()
        }
    }
}

/// Opens the log file again under its name (after logrotate moved it away); a no-op when logs
/// go to stderr. The old file is kept when the new one cannot be opened.
pub fn reopen_log_file() {
    if let Some(file) = LOG_FILE.get() {
        match file.reopen() {
            Ok(()) => tracing::info!(file = %file.path().display(), "log file reopened"),
            Err(e) => {
                tracing::error!(file = %file.path().display(), error = %e, "could not reopen the log file: still writing to the old one")
            }
        }
    }
}

//! What Herald tells its operators: logs (this module), access-log lines ([`access`]), and the
//! counters behind `/metrics` ([`counters`]).

pub mod access;
pub mod counters;
mod log_file;
pub mod request_id;

use crate::config::{Config, LogColor, LogFormat};
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

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
    let to_file = !config.log_file.as_os_str().is_empty();
    let ansi = match config.log_color {
        // Colour codes only for a person at a terminal (and not one who asked for none): files
        // and pipes get plain text.
        LogColor::Auto => !to_file && std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        LogColor::Always => true,
        LogColor::Never => false,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    let installed = if to_file {
        let file = log_file::LogFile::open(&config.log_file)
            .map_err(|e| anyhow::anyhow!("configuration key `log_file`: cannot open {} for appending: {e}", config.log_file.display()))?;
        let file = LOG_FILE.get_or_init(|| file);
        let builder = builder.with_writer(file);
        match config.log_format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init(),
        }
    } else {
        let builder = builder.with_writer(std::io::stderr);
        match config.log_format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init(),
        }
    };
    installed.map_err(|e| anyhow::anyhow!("{e}"))
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

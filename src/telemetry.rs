//! Logging through `tracing`.

use crate::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: `RUST_LOG` when set, else `log_level` from configuration.
pub fn init(config: &Config) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
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
    // Colour codes only for a person at a terminal: log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("{e}"))
}

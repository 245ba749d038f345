//! Per-channel settings: the first `[[channels]]` entry whose pattern matches a channel's name
//! decides them, the global defaults fill the rest.

use crate::config::{ChannelConfig, Config, pattern};
use crate::history::Retention;
use crate::http::cors::CorsPolicy;
use std::sync::Arc;

#[derive(Debug)]
pub struct ChannelSettings {
    pub retention: Retention,
    pub cors: Arc<CorsPolicy>,
}

pub struct SettingsResolver {
    rules: Vec<(String, Arc<ChannelSettings>)>,
    default: Arc<ChannelSettings>,
    allow_undefined: bool,
}

impl SettingsResolver {
    pub fn new(config: &Config) -> Self {
        let default_cors = Arc::new(CorsPolicy::new(&config.cors));
        let base = Retention { max_events: config.history.size, max_age: nonzero(config.history.ttl) };
        // Channels made on first use (by a pattern, or by no rule at all) age out by default.
        let undeclared = Retention { max_age: base.max_age.or(nonzero(config.history.undeclared_ttl)), ..base };
        let rules = config
            .channels
            .iter()
            .map(|c: &ChannelConfig| {
                let inherited = if pattern::is_pattern(&c.pattern) { undeclared } else { base };
                let retention = Retention {
                    max_events: c.history_size.unwrap_or(base.max_events),
                    max_age: c.history_ttl.map_or(inherited.max_age, nonzero),
                };
                let cors = c.cors.as_ref().map_or_else(|| default_cors.clone(), |cors| Arc::new(CorsPolicy::new(cors)));
                (c.pattern.clone(), Arc::new(ChannelSettings { retention, cors }))
            })
            .collect();
        SettingsResolver {
            rules,
            default: Arc::new(ChannelSettings { retention: undeclared, cors: default_cors }),
            allow_undefined: config.allow_undefined_channels,
        }
    }

    /// Settings for `name`, or `None` when the channel may not exist.
    pub fn resolve(&self, name: &str) -> Option<Arc<ChannelSettings>> {
        for (pat, settings) in &self.rules {
            if pattern::matches(pat, name) {
                return Some(settings.clone());
            }
        }
        self.allow_undefined.then(|| self.default.clone())
    }

    /// Channels declared by exact name: they exist from start-up.
    pub fn declared(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|(p, _)| p.as_str()).filter(|p| !pattern::is_pattern(p))
    }

    /// The settings used outside any one channel (`/publish` preflights, unknown paths).
    pub fn global_cors(&self) -> &Arc<CorsPolicy> {
        &self.default.cors
    }
}

fn nonzero(d: std::time::Duration) -> Option<std::time::Duration> {
    (!d.is_zero()).then_some(d)
}

//! Per-channel settings the hub keeps: the first `[[channels]]` entry whose pattern matches a
//! channel's name decides them, the global defaults fill the rest.

use super::rules::RuleTable;
use crate::config::{ChannelConfig, Config, pattern};
use crate::history::Retention;
use std::sync::Arc;

#[derive(Debug)]
pub struct ChannelSettings {
    pub retention: Retention,
}

pub struct SettingsResolver {
    table: RuleTable<Arc<ChannelSettings>>,
    allow_undefined: bool,
}

impl SettingsResolver {
    pub fn new(config: &Config) -> Self {
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
                (c.pattern.clone(), Arc::new(ChannelSettings { retention }))
            })
            .collect();
        SettingsResolver {
            table: RuleTable::new(rules, Arc::new(ChannelSettings { retention: undeclared })),
            allow_undefined: config.allow_undefined_channels,
        }
    }

    /// Settings for `name`, or `None` when the channel may not exist. A user's log always may
    /// (see `users.rs`), with the settings of its channel or of channels made on first use.
    pub fn resolve(&self, name: &str) -> Option<Arc<ChannelSettings>> {
        if let Some((_, channel)) = super::users::parse(name) {
            return Some(self.for_user_log(channel));
        }
        match self.table.matching(name) {
            Some(settings) => Some(settings.clone()),
            None => self.allow_undefined.then(|| self.table.default().clone()),
        }
    }

    /// Settings of a user log: its channel's, for a user's log of a channel; those of channels
    /// made on first use, for a user's own log.
    fn for_user_log(&self, channel: Option<&str>) -> Arc<ChannelSettings> {
        channel.map_or_else(|| self.table.default().clone(), |c| self.table.resolve(c).clone())
    }

    /// Channels declared by exact name: they exist from start-up.
    pub fn declared(&self) -> impl Iterator<Item = &str> {
        self.table.patterns().filter(|p| !pattern::is_pattern(p))
    }
}

fn nonzero(d: std::time::Duration) -> Option<std::time::Duration> {
    (!d.is_zero()).then_some(d)
}

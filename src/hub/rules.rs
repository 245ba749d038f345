//! "The first `[[channels]]` entry whose pattern matches a channel's name decides": one table
//! for that rule, which each layer fills with its own setting (the hub its retention, the HTTP
//! layer its CORS policies, access control its policies), so that none of them reaches into
//! another's types.

use crate::config::pattern;

pub struct RuleTable<T> {
    rules: Vec<(String, T)>,
    default: T,
}

impl<T> RuleTable<T> {
    /// `rules` in the order of the configuration, each a channel pattern and its setting;
    /// `default` for a name none of them matches.
    pub fn new(rules: Vec<(String, T)>, default: T) -> Self {
        RuleTable { rules, default }
    }

    /// The setting of the first rule matching `name`, if any does.
    pub fn matching(&self, name: &str) -> Option<&T> {
        self.rules.iter().find(|(pat, _)| pattern::matches(pat, name)).map(|(_, setting)| setting)
    }

    /// The setting for `name`: its first matching rule's, or the default.
    pub fn resolve(&self, name: &str) -> &T {
        self.matching(name).unwrap_or(&self.default)
    }

    /// The setting used where no channel is named.
    pub fn default(&self) -> &T {
        &self.default
    }

    /// The rules' patterns, in order.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|(pat, _)| pat.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_wins_and_the_default_takes_the_rest() {
        let table = RuleTable::new(vec![("builds/*".into(), 1), ("builds/main".into(), 2), ("*".into(), 3)], 0);
        assert_eq!(*table.resolve("builds/main"), 1, "first match, not the most specific");
        assert_eq!(*table.resolve("other"), 3);
        assert_eq!(table.matching("a/b"), None, "`*` is one segment");
        assert_eq!(*table.resolve("a/b"), 0);
        assert_eq!(table.patterns().collect::<Vec<_>>(), ["builds/*", "builds/main", "*"]);
    }
}

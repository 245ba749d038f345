//! Printing the effective configuration without its secrets.

use super::Config;

/// Key fragments whose values are never printed.
const SECRET_KEYS: &[&str] = &["password", "secret", "token", "private_key"];

/// The configuration as TOML, with secret values and URL passwords replaced.
pub fn redacted_toml(config: &Config) -> String {
    let mut value = toml::Value::try_from(config).expect("configuration serialises to TOML");
    redact(&mut value, false);
    toml::to_string_pretty(&value).expect("TOML value prints")
}

fn redact(value: &mut toml::Value, secret: bool) {
    match value {
        toml::Value::String(s) => {
            if secret {
                *s = "<redacted>".into();
            } else if let Some(clean) = strip_url_password(s).or_else(|| strip_keyword_password(s)) {
                *s = clean;
            }
        }
        toml::Value::Table(t) => {
            // An `equals` header rule's value is the credential itself.
            let equals_rule = t.get("type").and_then(toml::Value::as_str) == Some("equals");
            for (k, v) in t.iter_mut() {
                let k = k.to_ascii_lowercase();
                redact(v, secret || SECRET_KEYS.iter().any(|s| k.contains(s)) || (equals_rule && k == "value"));
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(|v| redact(v, secret)),
        _ => {}
    }
}

/// `redis://user:pw@host` becomes `redis://user:<redacted>@host`, and `nats://TOKEN@host`
/// (a token alone, which NATS and Redis both accept) `nats://<redacted>@host`.
fn strip_url_password(s: &str) -> Option<String> {
    let scheme_end = s.find("://")? + 3;
    let rest = &s[scheme_end..];
    let at = rest.find('@')?;
    let userinfo = &rest[..at];
    if userinfo.contains('/') {
        return None;
    }
    Some(match userinfo.find(':') {
        Some(colon) => format!("{}{}:<redacted>{}", &s[..scheme_end], &userinfo[..colon], &rest[at..]),
        None => format!("{}<redacted>{}", &s[..scheme_end], &rest[at..]),
    })
}

/// `host=db user=herald password=s3cr3t` (a libpq keyword DSN) becomes `… password=<redacted>`.
fn strip_keyword_password(s: &str) -> Option<String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    if !words.iter().any(|w| w.starts_with("password=")) {
        return None;
    }
    Some(words.iter().map(|w| if w.starts_with("password=") { "password=<redacted>" } else { w }).collect::<Vec<_>>().join(" "))
}

/// A URL as it may be shown in logs and errors.
pub fn url(s: &str) -> String {
    strip_url_password(s).or_else(|| strip_keyword_password(s)).unwrap_or_else(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn urls_lose_passwords() {
        assert_eq!(strip_url_password("redis://u:pw@h:1/0").as_deref(), Some("redis://u:<redacted>@h:1/0"));
        assert_eq!(strip_url_password("redis://h:1/0"), None);
        assert_eq!(strip_url_password("nats://s3cr3t@h:4222").as_deref(), Some("nats://<redacted>@h:4222"));
        assert_eq!(
            strip_keyword_password("host=db user=herald password=s3cr3t dbname=app").as_deref(),
            Some("host=db user=herald password=<redacted> dbname=app")
        );
        assert_eq!(strip_keyword_password("host=db user=herald"), None);
        let mut v: toml::Value = toml::from_str("[auth]\njwt_secret = \"s3\"\nurl = \"amqp://g:pw@h\"").unwrap();
        redact(&mut v, false);
        let s = v.to_string();
        assert!(!s.contains("s3") && !s.contains("pw"), "{s}");
    }

    #[test]
    fn header_rule_credentials_are_not_printed() {
        let mut config = Config::default();
        let rules: super::super::access::PolicyConfig = toml::from_str(
            "[headers]\n\"Authorization\" = { type = \"equals\", value = \"Bearer s3cr3t\" }\n\"X-Sig\" = { type = \"signature\", token = \"t0k3n\" }\n\"X-Env\" = { type = \"secret\", value = \"MY_VAR\" }\n",
        )
        .unwrap();
        config.access.subscribe = rules;
        let printed = redacted_toml(&config);
        assert!(!printed.contains("s3cr3t") && !printed.contains("t0k3n"), "{printed}");
        assert!(printed.contains("MY_VAR"), "an environment variable's name is not a secret: {printed}");
    }
}

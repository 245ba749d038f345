//! Printing the effective configuration without its secrets.

use super::Config;

/// Key fragments whose values are never printed.
const SECRET_KEYS: &[&str] = &["password", "secret", "token", "private_key", "authorization", "api-key", "api_key", "cookie"];

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

/// Query parameters whose values are credentials (`?password=…`, `&sslpassword=…`, `?token=…`).
fn secret_param(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| key.contains(s)) || key == "key" || key.ends_with("_key") || key == "sig"
}

/// `redis://user:pw@host` becomes `redis://user:<redacted>@host`, `nats://TOKEN@host` (a token
/// alone, which NATS and Redis both accept) `nats://<redacted>@host`, and credentials in the
/// query (`postgres://h/db?password=…`, `…/jwks?access_token=…`) lose their values too.
fn strip_url_password(s: &str) -> Option<String> {
    let scheme_end = s.find("://")? + 3;
    let rest = &s[scheme_end..];
    // The authority ends at the path, query or fragment; a password may hold `@`, so the
    // userinfo ends at the last `@` before that.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!("{}:<redacted>{}", &authority[..colon], &authority[at..]),
            None => format!("<redacted>{}", &authority[at..]),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = query.split_once('#').map_or((query, None), |(q, f)| (q, Some(f)));
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if secret_param(k) => format!("{k}=<redacted>"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}{}", query.join("&"), fragment.map(|f| format!("#{f}")).unwrap_or_default())
        }
        None => tail.to_owned(),
    };
    let clean = format!("{}{authority}{tail}", &s[..scheme_end]);
    (clean != s).then_some(clean)
}

/// `host=db user=herald password=s3cr3t` (a libpq keyword DSN) becomes `… password=<redacted>`;
/// a quoted value (`password='a b'`) goes whole.
fn strip_keyword_password(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut found = false;
    while let Some(i) = rest.find("password=") {
        // Only a keyword of its own (`password=`, `sslpassword=`), not text inside a value.
        let at_word = i == 0 || rest[..i].ends_with(char::is_whitespace) || rest[..i].ends_with("ssl");
        out.push_str(&rest[..i + "password=".len()]);
        rest = &rest[i + "password=".len()..];
        if !at_word {
            continue;
        }
        found = true;
        out.push_str("<redacted>");
        let end = if let Some(quoted) = rest.strip_prefix('\'') {
            // Up to the closing quote that is not escaped.
            let mut chars = quoted.char_indices();
            let mut close = quoted.len();
            while let Some((j, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' => {
                        close = j + 1;
                        break;
                    }
                    _ => {}
                }
            }
            (1 + close).min(rest.len())
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        rest = &rest[end..];
    }
    out.push_str(rest);
    found.then_some(out)
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
        assert_eq!(
            strip_keyword_password("host=db password='a b\\' c' sslpassword=x user=u").as_deref(),
            Some("host=db password=<redacted> sslpassword=<redacted> user=u")
        );
        assert_eq!(strip_url_password("postgres://u:p@ss@h/db").as_deref(), Some("postgres://u:<redacted>@h/db"), "a password with @");
        assert_eq!(
            strip_url_password("postgres://h/db?sslmode=require&password=pw").as_deref(),
            Some("postgres://h/db?sslmode=require&password=<redacted>")
        );
        assert_eq!(
            strip_url_password("https://id.example.com/jwks?access_token=t0k&x=1#f").as_deref(),
            Some("https://id.example.com/jwks?access_token=<redacted>&x=1#f")
        );
        assert_eq!(strip_url_password("https://id.example.com/jwks?x=1"), None);
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

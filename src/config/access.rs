//! `[access]` and `[channels.access]`: who may subscribe and publish.
//!
//! A policy is a set of rules that must all pass. The global `access.subscribe` and
//! `access.publish` policies apply to every channel whose first matching `[[channels]]` entry
//! has none of its own; an entry's policy replaces the global one for its channels.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    pub subscribe: PolicyConfig,
    pub publish: PolicyConfig,
    /// Who may read `GET /stats` (channel names and counts). Open when it has no rules.
    pub stats: PolicyConfig,
    /// Origins (`https://app.example.com`) whose pages may publish. A publish that carries an
    /// `Origin` header from any other is refused: without this, any web page a user visits could
    /// publish to a hub on their machine with a form post, which needs no CORS preflight.
    pub publish_origins: Vec<String>,
    /// Who may publish where no publish rule applies: `loopback` (the default: this machine
    /// only) or `anyone` (every address; start-up warns).
    pub anonymous_publish: AnonymousPublish,
    /// Proxies (addresses or CIDRs) whose `X-Forwarded-For` / `Forwarded` headers name the
    /// client. From any other peer those headers are ignored.
    pub trusted_proxies: Vec<String>,
    /// Event streams one client address may hold open at once (429 beyond); 0: no limit.
    pub max_streams_per_client: usize,
    pub publish_rate: PublishRateConfig,
}

/// Publish requests per second per publisher (its API key, else its address); 429 with
/// `Retry-After` beyond. `per_second = 0`: no limit.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PublishRateConfig {
    pub per_second: u32,
    /// Requests allowed at once after a quiet spell; 0: the same as `per_second`.
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AnonymousPublish {
    #[default]
    Loopback,
    Anyone,
}

/// A `[[channels]]` entry's own policies.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelAccessConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<PolicyConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<PolicyConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Header name -> rule, in cdviz-collector's shape; every rule must pass.
    pub headers: BTreeMap<String, HeaderRule>,
    /// Client addresses allowed (addresses or CIDRs, IPv4 and IPv6), as ssehub's
    /// `restrictPublish`. Empty: any address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    /// Accepted API keys, as `sha256:<hex>` hashes (`herald hash-key` makes them); the request
    /// sends one as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Empty: none needed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<String>,
}

/// An address or a CIDR: `10.0.0.0/8`, `192.0.2.7`, `2001:db8::/32`, `::1`.
pub fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("`{s}` is not an address or a CIDR such as 10.0.0.0/8 or 2001:db8::/32"))
}

/// One header's rule. A missing (or empty) header answers 401, a wrong value 403.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum HeaderRule {
    /// Present and not empty.
    Exists,
    /// Exactly `value` (ASCII case ignored when `case_sensitive = false`).
    Equals {
        value: String,
        #[serde(default = "yes")]
        case_sensitive: bool,
    },
    /// Matches the regular expression `pattern` (unanchored: add `^…$` to match it whole).
    Matches { pattern: String },
    /// Exactly the value of the environment variable named by `value`, read at start-up.
    Secret { value: String },
    /// An HMAC-SHA256 signature, keyed with `token`, of the request body (or of the listed
    /// headers' values, each followed by `separator`, then the body), written after
    /// `signature_prefix` (GitHub sends `sha256=`), in hex or base64.
    Signature {
        token: String,
        #[serde(default)]
        token_encoding: TokenEncoding,
        #[serde(default)]
        signature_prefix: String,
        #[serde(default)]
        signature_on: SignatureOn,
        #[serde(default)]
        signature_encoding: SignatureEncoding,
    },
}

fn yes() -> bool {
    true
}

/// How the signature key is written in `token`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenEncoding {
    /// The key is the token's bytes.
    #[default]
    None,
    Base64,
    Hex,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

/// What is signed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SignatureOn {
    #[default]
    Body,
    HeadersThenBody {
        separator: String,
        headers: Vec<String>,
    },
}

impl AccessConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for net in &self.trusted_proxies {
            parse_net(net).map_err(|message| ConfigError::Invalid { key: "access.trusted_proxies".into(), message })?;
        }
        self.subscribe.validate("access.subscribe")?;
        self.publish.validate("access.publish")?;
        self.stats.validate("access.stats")?;
        for origin in &self.publish_origins {
            if !super::is_origin(origin) {
                return Err(ConfigError::Invalid {
                    key: "access.publish_origins".into(),
                    message: format!("`{origin}` is not an origin such as `https://app.example.com` (scheme and host, no path)"),
                });
            }
        }
        Ok(())
    }
}

impl ChannelAccessConfig {
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if let Some(p) = &self.subscribe {
            p.validate(&format!("{key}.subscribe"))?;
        }
        if let Some(p) = &self.publish {
            p.validate(&format!("{key}.publish"))?;
        }
        Ok(())
    }
}

impl PolicyConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for net in &self.allow_from {
            parse_net(net).map_err(|message| ConfigError::Invalid { key: format!("{key}.allow_from"), message })?;
        }
        for hash in &self.api_keys {
            // Never echo the value: it may be a key pasted in by mistake.
            crate::access::keys::parse_hash(hash).map_err(|message| ConfigError::Invalid { key: format!("{key}.api_keys"), message })?;
        }
        for (name, rule) in &self.headers {
            let key = format!("{key}.headers.{name}");
            let bad = |message: String| Err(ConfigError::Invalid { key: key.clone(), message });
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return bad(format!("`{name}` is not a header name"));
            }
            match rule {
                HeaderRule::Matches { pattern } => {
                    if let Err(e) = regex::Regex::new(pattern) {
                        return bad(format!("`{pattern}` is not a regular expression: {e}"));
                    }
                }
                HeaderRule::Secret { value } if value.is_empty() => return bad("`value` must name an environment variable".into()),
                HeaderRule::Signature { token, token_encoding, signature_on, .. } => {
                    if token.is_empty() {
                        return bad("`token` must not be empty".into());
                    }
                    let decoded = match token_encoding {
                        TokenEncoding::None => Ok(()),
                        TokenEncoding::Hex => hex::decode(token).map(drop).map_err(|e| e.to_string()),
                        TokenEncoding::Base64 => {
                            use base64::Engine;
                            base64::engine::general_purpose::STANDARD.decode(token).map(drop).map_err(|e| e.to_string())
                        }
                    };
                    if let Err(e) = decoded {
                        return bad(format!("`token` is not valid {token_encoding:?} ({e})").to_lowercase());
                    }
                    if let SignatureOn::HeadersThenBody { headers, .. } = signature_on {
                        if let Some(h) = headers.iter().find(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err()) {
                            return bad(format!("signature_on: `{h}` is not a header name"));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

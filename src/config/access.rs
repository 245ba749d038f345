//! `[access]` and `[channels.access]`: who may subscribe and publish.
//!
//! A policy is a set of rules that must all pass. The global `access.subscribe` and
//! `access.publish` policies apply to every channel whose first matching `[[channels]]` entry
//! has none of its own; an entry's policy replaces the global one for its channels.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

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
    /// The header the trusted proxies write: `x-forwarded-for` (the default) or `forwarded`.
    /// Only that one is read: a proxy passes the other through as the client sent it.
    pub forwarded_header: ForwardedHeader,
    /// Event streams one client address may hold open at once (429 beyond); 0: no limit.
    pub max_streams_per_client: usize,
    /// Event streams one user (as a token or the token route names it) may hold open at once
    /// (429 beyond); 0: no limit.
    pub max_streams_per_user: usize,
    pub publish_rate: PublishRateConfig,
    /// How JSON Web Tokens are verified, for every policy with `jwt = true`.
    pub jwt: JwtConfig,
    /// Tokens kept in PostgreSQL, for every policy with `postgres = true`.
    pub postgres: PostgresConfig,
}

/// `[access.postgres]`: a user's token is valid when `query` returns a row for it (the Go
/// RabbitMQ server's model). The user and the token come from the path of the `route`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:5432/database?sslmode=require` (or key=value pairs).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dsn: String,
    /// Run with the user as `$1` and the token as `$2`; a row means yes.
    pub query: String,
    /// Database connections kept open at most.
    pub pool_size: usize,
    /// How long connecting and running the query may take before the answer is 503.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a yes is remembered; `0s`: the database is asked every time. A no never is.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Refused tokens one client address may try per minute before it is answered 429 without
    /// a query; 0: no limit.
    pub failures_per_minute: u32,
    /// CA certificates (PEM) the server's certificate must chain to; default: the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) and its key, for servers that ask for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// Encrypt but do not check the server's certificate (libpq's `sslmode=require`). Without
    /// it, Herald checks the certificate whenever TLS is used.
    pub tls_insecure: bool,
    /// The subscription route whose path names the channel, the user and the token; empty: none.
    pub route: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            dsn: String::new(),
            query: "SELECT 1 FROM users WHERE uuid = $1 AND sse_token = $2".into(),
            pool_size: 8,
            timeout: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(30),
            failures_per_minute: 60,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            tls_insecure: false,
            route: "/subscribe/{channel}/{user}/{token}".into(),
        }
    }
}

/// Paths Herald's own routes take: a token route may not start with them.
const RESERVED_PATHS: &[&str] = &["/sse", "/publish", "/stats", "/healthz"];

impl PostgresConfig {
    fn validate(&self, used: bool) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| Err(ConfigError::Invalid { key: format!("access.postgres.{key}"), message });
        if !used {
            return Ok(());
        }
        if self.dsn.is_empty() {
            return bad("dsn", "a policy has `postgres = true`: set the database, such as postgres://herald@127.0.0.1/app".into());
        }
        if let Err(e) = self.dsn.parse::<tokio_postgres::Config>() {
            return bad("dsn", format!("`{}` is not a PostgreSQL connection string: {e}", super::redact::url(&self.dsn)));
        }
        if !self.query.contains("$1") || !self.query.contains("$2") {
            return bad("query", "must use $1 (the user) and $2 (the token)".into());
        }
        if self.pool_size == 0 {
            return bad("pool_size", "must be at least 1".into());
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be more than 0s".into());
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return bad("client_key_file", "set client_cert_file and client_key_file together".into());
        }
        if !self.route.is_empty() {
            route_segments(&self.route).map_err(|message| ConfigError::Invalid { key: "access.postgres.route".into(), message })?;
        }
        Ok(())
    }
}

/// One segment of a token route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSegment {
    Literal(String),
    Channel,
    User,
    Token,
}

/// Parses a route such as `/subscribe/{channel}/{user}/{token}`: literal segments and each of
/// the three placeholders once, as whole segments.
pub fn route_segments(route: &str) -> Result<Vec<RouteSegment>, String> {
    let Some(rest) = route.strip_prefix('/') else {
        return Err(format!("`{route}` must start with `/`"));
    };
    let mut out = Vec::new();
    for seg in rest.split('/') {
        out.push(match seg {
            "{channel}" => RouteSegment::Channel,
            "{user}" => RouteSegment::User,
            "{token}" => RouteSegment::Token,
            "" => return Err(format!("`{route}` has an empty segment")),
            s if s.contains(['{', '}', '*']) => {
                return Err(format!("`{s}`: placeholders are {{channel}}, {{user}} and {{token}}, each a whole segment"));
            }
            s => RouteSegment::Literal(s.to_owned()),
        });
    }
    for p in [RouteSegment::Channel, RouteSegment::User, RouteSegment::Token] {
        if out.iter().filter(|s| **s == p).count() != 1 {
            return Err(format!("`{route}` must hold {{channel}}, {{user}} and {{token}} once each"));
        }
    }
    if let Some(RouteSegment::Literal(first)) = out.first() {
        let first = format!("/{first}");
        if RESERVED_PATHS.contains(&first.as_str()) {
            return Err(format!("`{route}`: {first} is one of Herald's own routes"));
        }
    } else {
        return Err(format!("`{route}` must start with a literal segment, such as /subscribe"));
    }
    Ok(out)
}

/// `[access.jwt]`: the keys, algorithms and claims of the tokens that policies with `jwt = true`
/// accept. The token is read from `Authorization: Bearer`, else from `header`, `cookie` or the
/// `query` parameter, in that order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// The HMAC secret of HS256/384/512 tokens.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub secret: String,
    /// The environment variable holding the HMAC secret (read at start-up) instead of `secret`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub secret_env: String,
    /// The secret is written in base64 (as some identity providers hand it out).
    pub secret_base64: bool,
    /// A PEM public key (RSA, EC P-256/P-384 or Ed25519) for RS*, PS*, ES* or EdDSA tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// A JSON Web Key Set file; re-read when a token names a key id it does not have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// A JSON Web Key Set URL (an identity provider's `jwks_uri`), fetched at start-up and
    /// every `jwks_refresh`; a token naming an unknown key id fetches it again, at most once a
    /// minute.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub jwks_url: String,
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// The algorithms accepted; any other (`none` included) is refused.
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Accepted `iss` values; empty: not checked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub issuer: Vec<String>,
    /// Accepted `aud` values; empty: not checked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    pub claims: JwtClaims,
    /// A header that carries the bare token (oCIS's proxy sends `X-Access-Token`); empty: none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub header: String,
    /// A cookie that carries the token (`EventSource` with `withCredentials`); empty: none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cookie: String,
    /// A query parameter that carries the token (`EventSource` cannot send headers); empty: none.
    pub query: String,
    /// A stream opened with a token ends when the token expires, so that the client reconnects
    /// with a fresh one instead of streaming on forever.
    pub end_stream_at_expiry: bool,
}

/// Where a token says what it may do and who it is: a top-level claim's name, or a JSON pointer
/// (`/mercure/subscribe`, `/user/id/opaque_id`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtClaims {
    /// Channel patterns the token may subscribe to (a string or a list); empty name: the token
    /// may subscribe wherever the policy requires it.
    pub subscribe: String,
    /// Channel patterns the token may publish to; empty name: no restriction by claim.
    pub publish: String,
    /// The user the token speaks for.
    pub user: String,
}

impl Default for JwtClaims {
    fn default() -> Self {
        JwtClaims { subscribe: "subscribe".into(), publish: "publish".into(), user: "sub".into() }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            secret: String::new(),
            secret_env: String::new(),
            secret_base64: false,
            public_key_file: None,
            jwks_file: None,
            jwks_url: String::new(),
            jwks_refresh: Duration::from_secs(300),
            algorithms: vec!["HS256".into()],
            leeway: Duration::from_secs(5),
            issuer: Vec::new(),
            audience: Vec::new(),
            require_exp: true,
            claims: JwtClaims::default(),
            header: String::new(),
            cookie: String::new(),
            query: "access_token".into(),
            end_stream_at_expiry: true,
        }
    }
}

impl JwtConfig {
    /// Whether any key is configured.
    pub fn has_keys(&self) -> bool {
        !self.secret.is_empty()
            || !self.secret_env.is_empty()
            || self.public_key_file.is_some()
            || self.jwks_file.is_some()
            || !self.jwks_url.is_empty()
    }

    fn validate(&self, used: bool) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| Err(ConfigError::Invalid { key: format!("access.jwt.{key}"), message });
        if !used {
            return Ok(());
        }
        if !self.has_keys() {
            return bad(
                "secret",
                "a policy has `jwt = true`: configure a key (secret, secret_env, public_key_file, jwks_file or jwks_url)".into(),
            );
        }
        if self.algorithms.is_empty() {
            return bad("algorithms", "name at least one algorithm, such as \"HS256\" or \"RS256\"".into());
        }
        let hmac = !self.secret.is_empty() || !self.secret_env.is_empty();
        if !self.secret.is_empty() && !self.secret_env.is_empty() {
            return bad("secret_env", "set `secret` or `secret_env`, not both".into());
        }
        let public = self.public_key_file.is_some() || self.jwks_file.is_some() || !self.jwks_url.is_empty();
        for alg in &self.algorithms {
            let Some(family) = algorithm_family(alg) else {
                return bad(
                    "algorithms",
                    format!(
                        "`{alg}` is not an accepted algorithm (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
                    ),
                );
            };
            if family == "HS" && !hmac {
                return bad("algorithms", format!("`{alg}` needs `secret` or `secret_env`"));
            }
            if family != "HS" && !public {
                return bad("algorithms", format!("`{alg}` needs `public_key_file`, `jwks_file` or `jwks_url`"));
            }
        }
        let web = |u: &str| u.starts_with("https://") || u.starts_with("http://");
        if !self.jwks_url.is_empty() && !web(&self.jwks_url) {
            return bad("jwks_url", format!("`{}` is not an http:// or https:// URL", super::redact::url(&self.jwks_url)));
        }
        if self.leeway > Duration::from_secs(3600) {
            return bad("leeway", "must be at most 1h".into());
        }
        if self.jwks_refresh < Duration::from_secs(1) {
            return bad("jwks_refresh", "must be at least 1s".into());
        }
        for (key, name) in
            [("claims.subscribe", &self.claims.subscribe), ("claims.publish", &self.claims.publish), ("claims.user", &self.claims.user)]
        {
            if name.contains('/') && !name.starts_with('/') {
                return bad(key, format!("`{name}`: a JSON pointer starts with `/` (`/user/id`); a claim name has no `/`"));
            }
        }
        if !self.header.is_empty() && http::HeaderName::from_bytes(self.header.as_bytes()).is_err() {
            return bad("header", format!("`{}` is not a header name", self.header));
        }
        Ok(())
    }
}

/// `HS`, `RS` (RS* and PS*), `ES` or `Ed`, for a JWS algorithm name Herald accepts.
pub fn algorithm_family(alg: &str) -> Option<&'static str> {
    Some(match alg {
        "HS256" | "HS384" | "HS512" => "HS",
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => "RS",
        "ES256" | "ES384" => "ES",
        "EdDSA" => "Ed",
        _ => return None,
    })
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
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    #[default]
    XForwardedFor,
    Forwarded,
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
    /// A valid JSON Web Token is required (verified as `[access.jwt]` says), and for a channel
    /// its claims must name the channel.
    pub jwt: bool,
    /// A user and token that `[access.postgres]` accepts are required (sent in the path of its
    /// `route`).
    pub postgres: bool,
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
    /// Validates `[access]`, beside the `[[channels]]` entries' own policies.
    pub(super) fn validate<'a>(&self, channels: impl Iterator<Item = &'a ChannelAccessConfig> + Clone) -> Result<(), ConfigError> {
        let globals = [&self.subscribe, &self.publish, &self.stats];
        let policies = globals.into_iter().chain(channels.flat_map(|c| c.subscribe.iter().chain(c.publish.iter())));
        // Keys also serve users' own streams (`GET /sse`), with or without a `jwt = true` policy.
        self.jwt.validate(self.jwt.has_keys() || policies.clone().any(|p| p.jwt))?;
        self.postgres.validate(!self.postgres.dsn.is_empty() || policies.clone().any(|p| p.postgres))?;
        if policies.clone().any(|p| p.postgres && p.jwt) {
            return Err(ConfigError::Invalid {
                key: "access".into(),
                message: "a policy has both `jwt = true` and `postgres = true`: a request carries one token, so choose one".into(),
            });
        }
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

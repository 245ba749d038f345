//! JSON Web Tokens: finding a request's token, verifying it, and what it grants.
//!
//! Only the configured algorithms are accepted (never `none`), each verified only by a key of
//! its own family; `exp` and `nbf` are enforced with the configured leeway, `iss` and `aud`
//! when configured. A verified token is remembered for a minute by its SHA-256, so a client
//! that reconnects with the same token does not pay for an RSA verification each time.
//! Tokens are never logged nor echoed in an answer.

mod keyring;
mod token;

use super::Denied;
use crate::config::ConfigError;
use crate::config::access::JwtConfig;
use crate::config::pattern;
use crate::hub::unix_now;
use http::{HeaderMap, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use keyring::{KeyRing, NoKey};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a verified token is taken without verifying it again (never past its `exp`).
const REMEMBER_FOR: Duration = Duration::from_secs(60);
/// Verified tokens remembered at most.
const REMEMBERED: usize = 10_000;

/// What a verified token says.
#[derive(Debug)]
pub struct Grant {
    /// Who the token speaks for (the `claims.user` claim).
    pub user: Option<Box<str>>,
    /// When it stops being accepted: its `exp` plus the leeway, in seconds since the Unix epoch.
    pub expires: Option<u64>,
    subscribe: Scope,
    publish: Scope,
}

/// The channels a token grants.
#[derive(Debug)]
enum Scope {
    /// No claim is configured for it: the policy's `jwt = true` is the whole rule.
    Any,
    Patterns(Vec<String>),
}

impl Scope {
    fn allows(&self, channel: &str) -> bool {
        match self {
            Scope::Any => true,
            Scope::Patterns(p) => p.iter().any(|p| pattern::matches(p, channel)),
        }
    }
}

impl Grant {
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.subscribe.allows(channel)
    }

    pub fn may_publish(&self, channel: &str) -> bool {
        self.publish.allows(channel)
    }
}

struct Remembered {
    grant: Arc<Grant>,
    at: Instant,
}

pub struct Verifier {
    keys: KeyRing,
    /// One per key family of the configured algorithms: the library wants every algorithm of a
    /// validation to be of the verifying key's family.
    validations: Vec<Validation>,
    leeway: u64,
    claims: crate::config::access::JwtClaims,
    sources: token::Sources,
    remembered: quick_cache::sync::Cache<[u8; 32], Arc<Remembered>>,
    /// End streams at their token's `exp`.
    pub end_stream_at_expiry: bool,
}

impl Verifier {
    /// From validated configuration; reads the keys (a missing `secret_env` variable or an
    /// unreadable key file stops start-up naming its key).
    pub fn new(config: &JwtConfig) -> Result<Self, ConfigError> {
        let algorithms: Vec<Algorithm> = config.algorithms.iter().map(|a| a.parse().expect("validated algorithm")).collect();
        let keys = KeyRing::new(config, &algorithms)?;
        let mut validation = Validation::new(algorithms[0]);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.required_spec_claims = if config.require_exp { ["exp".to_owned()].into() } else { Default::default() };
        validation.validate_exp = true;
        if config.issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&config.issuer);
            validation.required_spec_claims.insert("iss".into());
        }
        if config.audience.is_empty() {
            // Tokens minted for other services carry audiences we were not told about.
            validation.validate_aud = false;
        } else {
            validation.set_audience(&config.audience);
            validation.required_spec_claims.insert("aud".into());
        }
        let mut validations: Vec<Validation> = Vec::new();
        for alg in algorithms {
            match validations.iter_mut().find(|v| v.algorithms[0].family() == alg.family()) {
                Some(v) => v.algorithms.push(alg),
                None => validations.push(Validation { algorithms: vec![alg], ..validation.clone() }),
            }
        }
        Ok(Verifier {
            keys,
            leeway: config.leeway.as_secs(),
            validations,
            claims: config.claims.clone(),
            sources: token::Sources::new(config),
            remembered: quick_cache::sync::Cache::new(REMEMBERED),
            end_stream_at_expiry: config.end_stream_at_expiry,
        })
    }

    /// The token a request carries, if any.
    pub fn token<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<std::borrow::Cow<'a, str>> {
        self.sources.find(headers, query)
    }

    /// The 401 for a request without a token.
    pub fn missing(&self) -> Denied {
        Denied::missing(format!("a token is required ({})", self.sources.describe()), true)
    }

    /// Verifies `token`; 403 (503 when the key set cannot be fetched) with the reason.
    pub async fn verify(&self, token: &str) -> Result<Arc<Grant>, Denied> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        if let Some(known) = self.remembered.get(&digest) {
            if known.at.elapsed() < REMEMBER_FOR {
                if known.grant.expires.is_some_and(|end| end <= now) {
                    return Err(Denied::forbidden("the token has expired".into()));
                }
                return Ok(known.grant.clone());
            }
        }
        let grant = Arc::new(self.verify_now(token).await?);
        self.remembered.insert(digest, Arc::new(Remembered { grant: grant.clone(), at: Instant::now() }));
        Ok(grant)
    }

    async fn verify_now(&self, token: &str) -> Result<Grant, Denied> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| refusal(e.kind()))?;
        let Some(validation) = self.validations.iter().find(|v| v.algorithms.contains(&header.alg)) else {
            return Err(refusal(&ErrorKind::InvalidAlgorithm));
        };
        let keys = self.keys.candidates(header.alg, header.kid.as_deref()).await.map_err(|e| match e {
            NoKey::Unknown => Denied::forbidden("no configured key verifies this token (its algorithm or key id is not known)".into()),
            NoKey::Unavailable => Denied {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "the key set (access.jwt.jwks_url) cannot be fetched: tokens cannot be verified now".into(),
                bearer: false,
                retry_after: Some(5),
            },
        })?;
        let mut last = ErrorKind::InvalidSignature;
        for key in keys {
            match jsonwebtoken::decode::<Value>(token, &key, validation) {
                Ok(data) => {
                    let grant = self.grant(&data.claims);
                    // RFC 7519: accepted only before `exp` (the library also takes the second of it).
                    if grant.expires.is_some_and(|end| end <= unix_now()) {
                        return Err(refusal(&ErrorKind::ExpiredSignature));
                    }
                    return Ok(grant);
                }
                // Another key of the set may be the one.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                Err(e) => {
                    last = e.into_kind();
                    break;
                }
            }
        }
        Err(refusal(&last))
    }

    fn grant(&self, claims: &Value) -> Grant {
        let scope = |name: &str| {
            if name.is_empty() {
                return Scope::Any;
            }
            Scope::Patterns(match claim(claims, name) {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(list)) => list.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
                _ => Vec::new(),
            })
        };
        let user = match claim(claims, &self.claims.user) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.as_str().into()),
            Some(Value::Number(n)) => Some(n.to_string().into()),
            _ => None,
        };
        Grant {
            user,
            expires: claims.get("exp").and_then(Value::as_u64).map(|exp| exp.saturating_add(self.leeway)),
            subscribe: scope(&self.claims.subscribe),
            publish: scope(&self.claims.publish),
        }
    }
}

/// A top-level claim by name, or any claim by JSON pointer (`/user/id/opaque_id`).
fn claim<'v>(claims: &'v Value, name: &str) -> Option<&'v Value> {
    if name.starts_with('/') { claims.pointer(name) } else { claims.get(name) }
}

/// The refusal for a token that does not verify, saying why without echoing it.
fn refusal(kind: &ErrorKind) -> Denied {
    let why = match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidSignature => "the token's signature does not verify",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "the token's algorithm is not accepted (access.jwt.algorithms)",
        ErrorKind::InvalidIssuer => "the token's issuer is not accepted (access.jwt.issuer)",
        ErrorKind::InvalidAudience => "the token's audience is not accepted (access.jwt.audience)",
        ErrorKind::MissingRequiredClaim(c) if c == "exp" => "the token has no exp claim",
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => "the token has no iss claim",
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => "the token has no aud claim",
        ErrorKind::InvalidClaimFormat(_) => "a time claim of the token (exp or nbf) is not a number",
        _ => "the token is malformed",
    };
    Denied::forbidden(why.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn verifier(tweak: impl FnOnce(&mut JwtConfig)) -> Verifier {
        let mut config = JwtConfig { secret: "s3cr3t".into(), ..JwtConfig::default() };
        tweak(&mut config);
        Verifier::new(&config).unwrap()
    }

    fn token(claims: &Value) -> String {
        jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(b"s3cr3t")).unwrap()
    }

    #[tokio::test]
    async fn the_user_comes_from_a_claim_or_a_json_pointer() {
        let exp = unix_now() + 60;
        let v = verifier(|_| {});
        let grant = v.verify(&token(&serde_json::json!({"sub": "alice", "exp": exp}))).await.unwrap();
        assert_eq!(grant.user.as_deref(), Some("alice"));
        assert_eq!(grant.expires, Some(exp + 5));
        // A reva token, as oCIS mints them.
        let v = verifier(|c| c.claims.user = "/user/id/opaque_id".into());
        let reva =
            serde_json::json!({"exp": exp, "user": {"id": {"idp": "https://idp", "opaque_id": "4c510ada-c86b"}}, "scope": {"user": {}}});
        assert_eq!(v.verify(&token(&reva)).await.unwrap().user.as_deref(), Some("4c510ada-c86b"));
        let numeric = serde_json::json!({"exp": exp, "user": {"id": {"opaque_id": 42}}});
        assert_eq!(v.verify(&token(&numeric)).await.unwrap().user.as_deref(), Some("42"));
        assert_eq!(v.verify(&token(&serde_json::json!({"exp": exp}))).await.unwrap().user, None);
    }

    #[tokio::test]
    async fn channel_claims_are_patterns_and_absent_ones_grant_nothing() {
        let exp = unix_now() + 60;
        let v = verifier(|_| {});
        let g = v
            .verify(&token(&serde_json::json!({"exp": exp, "subscribe": ["news/*", "users/42/**"], "publish": "news/today"})))
            .await
            .unwrap();
        assert!(g.may_subscribe("news/x") && g.may_subscribe("users/42/a/b"));
        assert!(!g.may_subscribe("news/x/y") && !g.may_subscribe("users/43"));
        assert!(g.may_publish("news/today") && !g.may_publish("news/x"));
        let none = v.verify(&token(&serde_json::json!({"exp": exp}))).await.unwrap();
        assert!(!none.may_subscribe("news/x") && !none.may_publish("news/x"));
        // No claim configured: the token alone is the rule.
        let open = verifier(|c| c.claims.subscribe = String::new());
        assert!(open.verify(&token(&serde_json::json!({"exp": exp}))).await.unwrap().may_subscribe("anything"));
    }

    #[tokio::test]
    async fn a_remembered_token_still_expires() {
        let v = verifier(|c| c.leeway = Duration::ZERO);
        let t = token(&serde_json::json!({"exp": unix_now() + 1}));
        assert!(v.verify(&t).await.is_ok());
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        let denied = v.verify(&t).await.unwrap_err();
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        assert!(denied.message.contains("expired"), "{}", denied.message);
    }
}

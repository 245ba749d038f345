//! The keys tokens are verified with: an HMAC secret, a PEM public key, and a JSON Web Key Set
//! from a file or a URL.
//!
//! A key only ever verifies tokens of its own family (HMAC, RSA, EC, Ed25519), and a JWKS key
//! that names its algorithm only tokens of that algorithm: a token cannot pick how its
//! signature is checked (the "HS256 signed with the RSA public key" confusion). Key sets hold
//! public keys only; a symmetric (`oct`) key in one is ignored.

use crate::config::ConfigError;
use crate::config::access::JwtConfig;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::{Mutex, RwLock};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A token naming a key id we do not have fetches the set again, but not more often than this:
/// made-up key ids must not turn the hub into a load generator against the identity provider.
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(60);
/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;

pub struct KeyRing {
    hmac: Option<Arc<DecodingKey>>,
    public: Option<Arc<DecodingKey>>,
    jwks: Option<Arc<Jwks>>,
}

/// Why no key verifies a token.
pub enum NoKey {
    /// No key of the token's family (or with its key id).
    Unknown,
    /// The key set has never been fetched.
    Unavailable,
}

impl KeyRing {
    pub fn new(config: &JwtConfig, algorithms: &[Algorithm]) -> Result<Self, ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid { key: format!("access.jwt.{key}"), message };
        let hmac = if !config.secret_env.is_empty() {
            let secret = std::env::var(&config.secret_env)
                .map_err(|_| bad("secret_env", format!("environment variable `{}` is not set", config.secret_env)))?;
            Some(hmac_key(&secret, config.secret_base64).map_err(|m| bad("secret_env", m))?)
        } else if !config.secret.is_empty() {
            Some(hmac_key(&config.secret, config.secret_base64).map_err(|m| bad("secret", m))?)
        } else {
            None
        };
        let public = match &config.public_key_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| bad("public_key_file", format!("cannot read {}: {e}", path.display())))?;
                Some(Arc::new(public_key(&pem, algorithms).map_err(|m| bad("public_key_file", format!("{}: {m}", path.display())))?))
            }
            None => None,
        };
        let jwks = if let Some(path) = &config.jwks_file {
            let jwks = Jwks::new(Source::File(path.clone()), config.jwks_refresh);
            let set = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| parse_set(&bytes))
                .map_err(|m| bad("jwks_file", format!("{}: {m}", path.display())))?;
            *jwks.keys.write() = Some(Arc::new(set));
            *jwks.fetched.lock() = Some(Instant::now());
            Some(Arc::new(jwks))
        } else if !config.jwks_url.is_empty() {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| bad("jwks_url", format!("cannot make an HTTP client: {e}")))?;
            let jwks = Arc::new(Jwks::new(Source::Url { url: config.jwks_url.clone(), client }, config.jwks_refresh));
            // Fetched now when a runtime runs (the server's start-up), else by the first token.
            if tokio::runtime::Handle::try_current().is_ok() {
                let jwks = jwks.clone();
                tokio::spawn(async move { jwks.refresh().await });
            }
            Some(jwks)
        } else {
            None
        };
        Ok(KeyRing { hmac, public, jwks })
    }

    /// The keys that may verify a token of `alg` naming `kid`, best first.
    pub async fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Result<Vec<Arc<DecodingKey>>, NoKey> {
        let family = alg.family();
        if family == jsonwebtoken::AlgorithmFamily::Hmac {
            return self.hmac.clone().map(|k| vec![k]).ok_or(NoKey::Unknown);
        }
        let mut keys = Vec::new();
        let mut unavailable = false;
        if let Some(jwks) = &self.jwks {
            match jwks.matching(alg, kid).await {
                Ok(found) => keys = found,
                Err(NoKey::Unavailable) => unavailable = true,
                Err(NoKey::Unknown) => {}
            }
        }
        if let Some(public) = self.public.as_ref().filter(|k| k.family() == family) {
            keys.push(public.clone());
        }
        match (keys.is_empty(), unavailable) {
            (false, _) => Ok(keys),
            (true, true) => Err(NoKey::Unavailable),
            (true, false) => Err(NoKey::Unknown),
        }
    }
}

fn hmac_key(secret: &str, base64: bool) -> Result<Arc<DecodingKey>, String> {
    if base64 {
        DecodingKey::from_base64_secret(secret).map(Arc::new).map_err(|e| format!("not base64: {e}"))
    } else {
        Ok(Arc::new(DecodingKey::from_secret(secret.as_bytes())))
    }
}

/// Reads a PEM public key as the family the configured algorithms ask for.
fn public_key(pem: &[u8], algorithms: &[Algorithm]) -> Result<DecodingKey, String> {
    use jsonwebtoken::AlgorithmFamily::{Ec, Ed, Rsa};
    let mut tried = Vec::new();
    for family in [Rsa, Ec, Ed] {
        if !algorithms.iter().any(|a| a.family() == family) {
            continue;
        }
        let parsed = match family {
            Rsa => DecodingKey::from_rsa_pem(pem),
            Ec => DecodingKey::from_ec_pem(pem),
            _ => DecodingKey::from_ed_pem(pem),
        };
        match parsed {
            Ok(key) => return Ok(key),
            Err(e) => tried.push(format!("{family:?}: {e}")),
        }
    }
    if tried.is_empty() {
        return Err("no public-key algorithm (RS*, PS*, ES*, EdDSA) is in access.jwt.algorithms".into());
    }
    Err(format!("not a PEM public key of the configured algorithms ({})", tried.join("; ")))
}

/// One key of a set.
struct SetKey {
    kid: Option<String>,
    /// The algorithm the key is for, when the set says.
    alg: Option<Algorithm>,
    key: Arc<DecodingKey>,
}

/// Parses a JWKS document, keeping the public keys we can use.
fn parse_set(bytes: &[u8]) -> Result<Vec<SetKey>, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_)) {
            continue;
        }
        // A key marked for encryption does not verify signatures.
        if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature) {
            continue;
        }
        let alg = match &jwk.common.key_algorithm {
            Some(a) => match a.to_string().parse::<Algorithm>() {
                Ok(alg) => Some(alg),
                // An algorithm we do not verify with (RSA1_5 and other encryption ones).
                Err(_) => continue,
            },
            None => None,
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push(SetKey { kid: jwk.common.key_id.clone(), alg, key: Arc::new(key) }),
            Err(e) => tracing::warn!(kid = jwk.common.key_id.as_deref().unwrap_or(""), "JWKS key skipped: {e}"),
        }
    }
    Ok(keys)
}

enum Source {
    File(PathBuf),
    Url { url: String, client: reqwest::Client },
}

struct Jwks {
    source: Source,
    refresh: Duration,
    /// `None` until the set was read once.
    keys: RwLock<Option<Arc<Vec<SetKey>>>>,
    /// When the set was last read or fetched (successfully or not).
    fetched: Mutex<Option<Instant>>,
    /// When a token with an unknown key id last made us fetch the set.
    refetched_for_kid: Mutex<Option<Instant>>,
    /// One fetch at a time; the others wait for it and use its result.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    fn new(source: Source, refresh: Duration) -> Self {
        Jwks {
            source,
            refresh,
            keys: RwLock::new(None),
            fetched: Mutex::new(None),
            refetched_for_kid: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    async fn matching(self: &Arc<Self>, alg: Algorithm, kid: Option<&str>) -> Result<Vec<Arc<DecodingKey>>, NoKey> {
        let last = *self.fetched.lock();
        match last {
            None => self.refresh().await,
            // Stale: the next tokens get the new set; this one goes on with what we have.
            Some(at) if at.elapsed() >= self.refresh => {
                *self.fetched.lock() = Some(Instant::now());
                let jwks = self.clone();
                tokio::spawn(async move { jwks.refresh().await });
            }
            Some(_) => {}
        }
        let select = |set: &[SetKey]| -> Vec<Arc<DecodingKey>> {
            set.iter()
                .filter(|k| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg))
                .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
                .map(|k| k.key.clone())
                .collect()
        };
        let Some(set) = self.keys.read().clone() else {
            return Err(NoKey::Unavailable);
        };
        let found = select(&set);
        if !found.is_empty() || kid.is_none() {
            return if found.is_empty() { Err(NoKey::Unknown) } else { Ok(found) };
        }
        // A key id we do not know: the provider may have rotated its keys.
        {
            let mut last = self.refetched_for_kid.lock();
            if last.is_some_and(|at| at.elapsed() < REFETCH_AT_MOST_EVERY) {
                return Err(NoKey::Unknown);
            }
            *last = Some(Instant::now());
        }
        self.refresh().await;
        let set = self.keys.read().clone().ok_or(NoKey::Unavailable)?;
        let found = select(&set);
        if found.is_empty() { Err(NoKey::Unknown) } else { Ok(found) }
    }

    /// Reads or fetches the set; on failure the previous set stays.
    async fn refresh(&self) {
        let started = Instant::now();
        let _one = self.fetching.lock().await;
        // Another task fetched while this one waited, successfully or not: its answer stands,
        // so a provider that is down is not asked once per waiting request.
        if self.fetched.lock().is_some_and(|at| at > started) {
            return;
        }
        let result = match &self.source {
            Source::File(path) => tokio::fs::read(path).await.map_err(|e| format!("{}: {e}", path.display())).and_then(|b| parse_set(&b)),
            Source::Url { url, client } => fetch(client, url).await.and_then(|b| parse_set(&b)),
        };
        *self.fetched.lock() = Some(Instant::now());
        match result {
            Ok(set) => {
                tracing::debug!(keys = set.len(), "JSON Web Key Set loaded");
                *self.keys.write() = Some(Arc::new(set));
            }
            Err(e) => tracing::warn!("the JSON Web Key Set (access.jwt) could not be loaded, keeping the previous one: {e}"),
        }
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let shown = crate::config::redacted_url(url);
    // reqwest's errors name the URL in full; ours names it without its credentials.
    let mut resp = client.get(url).send().await.map_err(|e| format!("{shown}: {}", e.without_url()))?;
    if !resp.status().is_success() {
        return Err(format!("{shown} answered {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{shown}: {}", e.without_url()))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("{shown}: the key set is larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

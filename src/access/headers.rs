//! Header rules (cdviz-collector's kinds), compiled once at start-up. Every comparison with a
//! secret is in constant time, so a client cannot learn a secret byte by byte from timings.

use super::{Denied, Facts};
use crate::config::access::{HeaderRule, SignatureEncoding, SignatureOn, TokenEncoding};
use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderName;
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub struct HeaderCheck {
    name: HeaderName,
    rule: Rule,
}

enum Rule {
    Exists,
    Equals {
        value: Vec<u8>,
        case_sensitive: bool,
    },
    Matches(regex::Regex),
    /// An `equals` whose value came from the environment.
    Secret(Vec<u8>),
    Signature {
        key: Vec<u8>,
        prefix: String,
        on: SignatureOn,
        encoding: SignatureEncoding,
    },
}

/// Why a rule could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("environment variable `{0}` (a `secret` rule's value) is not set")]
    MissingEnv(String),
    #[error("{0}")]
    Invalid(String),
}

impl HeaderCheck {
    pub fn compile(name: &str, rule: &HeaderRule) -> Result<Self, CompileError> {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| CompileError::Invalid(e.to_string()))?;
        let rule = match rule {
            HeaderRule::Exists => Rule::Exists,
            HeaderRule::Equals { value, case_sensitive } => {
                Rule::Equals { value: value.as_bytes().to_vec(), case_sensitive: *case_sensitive }
            }
            HeaderRule::Matches { pattern } => Rule::Matches(regex::Regex::new(pattern).map_err(|e| CompileError::Invalid(e.to_string()))?),
            HeaderRule::Secret { value: var } => {
                let value = std::env::var(var).map_err(|_| CompileError::MissingEnv(var.clone()))?;
                Rule::Secret(value.into_bytes())
            }
            HeaderRule::Signature { token, token_encoding, signature_prefix, signature_on, signature_encoding } => {
                let key = match token_encoding {
                    TokenEncoding::None => token.as_bytes().to_vec(),
                    TokenEncoding::Hex => hex::decode(token).map_err(|e| CompileError::Invalid(format!("token: {e}")))?,
                    TokenEncoding::Base64 => {
                        base64::engine::general_purpose::STANDARD.decode(token).map_err(|e| CompileError::Invalid(format!("token: {e}")))?
                    }
                };
                Rule::Signature { key, prefix: signature_prefix.clone(), on: signature_on.clone(), encoding: *signature_encoding }
            }
        };
        Ok(HeaderCheck { name, rule })
    }

    /// Whether the request passes; the reason never repeats the expected value.
    pub fn check(&self, facts: &Facts<'_>) -> Result<(), Denied> {
        let name = self.name.as_str();
        let Some(got) = facts.headers.get(&self.name).map(|v| v.as_bytes()).filter(|v| !v.is_empty()) else {
            return Err(Denied::missing(format!("header `{name}` is required"), self.name == http::header::AUTHORIZATION));
        };
        let ok = match &self.rule {
            Rule::Exists => true,
            Rule::Equals { value, case_sensitive: true } | Rule::Secret(value) => bool::from(got.ct_eq(value)),
            Rule::Equals { value, case_sensitive: false } => bool::from(got.to_ascii_lowercase().ct_eq(&value.to_ascii_lowercase())),
            Rule::Matches(re) => std::str::from_utf8(got).is_ok_and(|s| re.is_match(s)),
            Rule::Signature { key, prefix, on, encoding } => verify_signature(got, key, prefix, on, *encoding, facts),
        };
        if ok { Ok(()) } else { Err(Denied::forbidden(format!("header `{name}` does not have an accepted value"))) }
    }
}

fn verify_signature(got: &[u8], key: &[u8], prefix: &str, on: &SignatureOn, encoding: SignatureEncoding, facts: &Facts<'_>) -> bool {
    let Some(sent) = got.strip_prefix(prefix.as_bytes()) else { return false };
    let sent = match encoding {
        SignatureEncoding::Hex => hex::decode(sent).ok(),
        SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(sent).ok(),
    };
    let Some(sent) = sent else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    if let SignatureOn::HeadersThenBody { separator, headers } = on {
        for h in headers {
            if let Some(v) = facts.headers.get(h.as_str()) {
                mac.update(v.as_bytes());
            }
            mac.update(separator.as_bytes());
        }
    }
    mac.update(facts.body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&sent).is_ok()
}

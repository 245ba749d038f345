//! Access control: one gate that every request passes, on every connection path (the HTTP/1
//! socket path and hyper, HTTP/1 or HTTP/2), before anything is streamed or published.
//!
//! Policies come from `[access]` and from `[[channels]]` entries (see `config::access`): for
//! each channel a request names, the policy of its first matching entry, or the global one.
//! A request needs every policy of every channel it names to pass. Publishing is also held to
//! the publish origins and, where no publish rule applies, to loopback peers by default.
//!
//! The gate cannot be skipped by accident: each request carries a [`Checkpoint`] that a
//! decision marks, and the HTTP layer refuses to send the answer of a request whose handler
//! neither asked the gate nor declared its route public.

mod client;
mod headers;
pub mod jwt;
pub mod keys;
mod postgres;
mod rate;
mod streams;

use crate::config::access::{AnonymousPublish, PolicyConfig, parse_net};
use crate::config::{Config, ConfigError};
use crate::hub::rules::RuleTable;
use client::Proxies;
use headers::HeaderCheck;
use http::{HeaderMap, StatusCode};
use ipnet::IpNet;
use keys::ApiKeys;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the gate looks at.
pub struct Facts<'a> {
    /// The TCP peer.
    pub peer: IpAddr,
    pub headers: &'a HeaderMap,
    /// The request body (empty for a subscription): what a `signature` rule signs.
    pub body: &'a [u8],
    /// The query string, where a token may travel.
    pub query: Option<&'a str>,
    /// The user and token the path of the token route named (`access.postgres.route`).
    pub path_credential: Option<(&'a str, &'a str)>,
}

/// A refusal: 401 when a credential is missing, 403 when one is present but not accepted.
#[derive(Debug, Clone)]
pub struct Denied {
    pub status: StatusCode,
    pub message: String,
    /// Answer `WWW-Authenticate: Bearer` (the missing credential was an `Authorization` header).
    pub bearer: bool,
    /// Seconds to answer in `Retry-After` (a rate limit).
    pub retry_after: Option<u64>,
}

impl Denied {
    pub(crate) fn missing(message: String, bearer: bool) -> Self {
        Denied { status: StatusCode::UNAUTHORIZED, message, bearer, retry_after: None }
    }

    pub(crate) fn forbidden(message: String) -> Self {
        Denied { status: StatusCode::FORBIDDEN, message, bearer: false, retry_after: None }
    }

    fn rate_limited(wait: std::time::Duration) -> Self {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Denied {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("publishing too fast (access.publish_rate): retry in {seconds} s"),
            bearer: false,
            retry_after: Some(seconds),
        }
    }

    fn too_many(message: String) -> Self {
        Denied { status: StatusCode::TOO_MANY_REQUESTS, message, bearer: false, retry_after: None }
    }
}

/// What an admitted stream holds until it ends: its slot under `max_streams_per_client`
/// (boxed, and absent when there is no limit, so an idle stream carries one pointer for it) and
/// what its token granted.
/// Boxed, and absent for an anonymous stream under no stream limit, so that an idle stream
/// carries one pointer for it.
pub struct Admission(Option<Box<Held>>);

/// What an admitted stream holds: its slots under the stream limits, and who it is.
struct Held {
    _client: Option<streams::StreamSlot<IpAddr>>,
    _user: Option<streams::StreamSlot<Arc<str>>>,
    user: Option<Arc<str>>,
    ends_at: Option<u64>,
    /// The stream may read its user's own log, not only its user's logs of its channels.
    own_log: bool,
}

impl Admission {
    /// Who the stream's credential speaks for (a token's user claim, the token route's user).
    pub fn user(&self) -> Option<&str> {
        self.0.as_ref().and_then(|h| h.user.as_deref())
    }

    /// Whether the stream reads its user's own log (the events addressed to the user alone).
    pub fn reads_own_log(&self) -> bool {
        self.0.as_ref().is_some_and(|h| h.own_log)
    }

    /// When the stream must end (once its token is no longer accepted: `exp` plus the leeway, in
    /// seconds since the Unix epoch), if it must.
    pub fn ends_at(&self) -> Option<u64> {
        self.0.as_ref().and_then(|h| h.ends_at)
    }
}

/// One request's record that access was decided. Created by the HTTP layer for each request;
/// marked by every decision of the [`Gate`] and by [`Checkpoint::public`].
#[derive(Clone, Default)]
pub struct Checkpoint(Arc<AtomicBool>);

impl Checkpoint {
    /// Declares the route open to anyone (health checks, "no such route").
    pub fn public(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether access was decided for this request.
    pub fn decided(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A compiled policy: all of its checks must pass.
struct Policy {
    checks: Vec<HeaderCheck>,
    /// Empty: any address.
    allow_from: Vec<IpNet>,
    keys: ApiKeys,
    /// A valid token is required, whose claims grant the channel.
    jwt: bool,
    /// A user and token that the token database accepts are required.
    postgres: bool,
}

impl Policy {
    fn compile(config: &PolicyConfig, key: &str) -> Result<Arc<Self>, ConfigError> {
        let checks = config
            .headers
            .iter()
            .map(|(name, rule)| {
                HeaderCheck::compile(name, rule)
                    .map_err(|e| ConfigError::Invalid { key: format!("{key}.headers.{name}"), message: e.to_string() })
            })
            .collect::<Result<_, _>>()?;
        // Validated with the configuration: these parse.
        let allow_from = config.allow_from.iter().filter_map(|n| parse_net(n).ok()).collect();
        let keys = ApiKeys::new(config.api_keys.iter().filter_map(|h| keys::parse_hash(h).ok()).collect());
        Ok(Arc::new(Policy { checks, allow_from, keys, jwt: config.jwt, postgres: config.postgres }))
    }

    /// A policy without rules lets anyone in (for publishing, within `anonymous_publish`).
    fn is_open(&self) -> bool {
        self.checks.is_empty() && self.allow_from.is_empty() && self.keys.is_empty() && !self.jwt && !self.postgres
    }

    fn check(&self, facts: &Facts<'_>, client: IpAddr) -> Result<(), Denied> {
        if !self.allow_from.is_empty() && !self.allow_from.iter().any(|net| net.contains(&client)) {
            return Err(Denied::forbidden(format!("requests from {client} are not allowed here (allow_from)")));
        }
        // A missing credential is reported before a wrong one: the client has to send it first.
        let mut first_wrong = None;
        if !self.keys.is_empty() {
            match api_key(facts.headers) {
                None => return Err(Denied::missing("an API key is required (Authorization: Bearer, or X-API-Key)".into(), true)),
                Some(key) if !self.keys.accepts(key) => first_wrong = Some(Denied::forbidden("the API key is not accepted".into())),
                Some(_) => {}
            }
        }
        for check in &self.checks {
            match check.check(facts) {
                Ok(()) => {}
                Err(d) if d.status == StatusCode::UNAUTHORIZED => return Err(d),
                Err(d) => {
                    first_wrong.get_or_insert(d);
                }
            }
        }
        first_wrong.map_or(Ok(()), Err)
    }
}

/// The key a request sends: `Authorization: Bearer <key>`, else `X-API-Key: <key>`.
fn api_key(headers: &HeaderMap) -> Option<&[u8]> {
    let bearer = headers.get(http::header::AUTHORIZATION).and_then(|v| {
        let v = v.as_bytes();
        (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii())
    });
    bearer.or_else(|| headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii())).filter(|k| !k.is_empty())
}

pub struct Gate {
    proxies: Proxies,
    subscribe: RuleTable<Arc<Policy>>,
    publish: RuleTable<Arc<Policy>>,
    stats: Arc<Policy>,
    publish_origins: Vec<String>,
    anonymous_publish: AnonymousPublish,
    streams: Option<Arc<streams::StreamLimit<IpAddr>>>,
    user_streams: Option<Arc<streams::StreamLimit<Arc<str>>>>,
    publish_rate: Option<rate::PublishRate>,
    jwt: Option<jwt::Verifier>,
    postgres: Option<postgres::TokenStore>,
    /// Where the token route is, for the 401 that asks for it.
    token_route: String,
}

/// What a policy with `jwt = true` checks a channel's name against.
#[derive(Clone, Copy)]
enum Action {
    Subscribe,
    Publish,
    /// Reading statistics: a valid token is enough.
    Read,
}

/// One request's credentials, each checked at most once however many policies want it.
struct TokenCheck<'a> {
    verifier: Option<&'a jwt::Verifier>,
    store: Option<&'a postgres::TokenStore>,
    token_route: &'a str,
    facts: &'a Facts<'a>,
    /// The client's address (after trusted proxies), which refused database checks count against.
    client: IpAddr,
    result: Option<Result<Arc<jwt::Grant>, Denied>>,
    stored: Option<Result<(), Denied>>,
}

impl TokenCheck<'_> {
    /// The user and token of the path, if the token database accepts them.
    async fn stored(&mut self) -> Result<(), Denied> {
        if let Some(done) = &self.stored {
            return done.clone();
        }
        let result = match (self.store, self.facts.path_credential) {
            (None, _) => Err(Denied::forbidden("no token database is configured (access.postgres)".into())),
            (Some(_), None) => Err(Denied::missing(format!("send the user and the token in the path: {}", self.token_route), false)),
            (Some(store), Some((user, token))) => store.check(self.client, user, token).await,
        };
        self.stored = Some(result.clone());
        result
    }

    /// Whether the request carries a token at all (checked or not).
    fn has_token(&self) -> bool {
        self.verifier.is_some_and(|v| v.token(self.facts.headers, self.facts.query).is_some())
    }

    /// The user the credentials that passed speak for.
    fn user(&self) -> Option<Arc<str>> {
        if let Some(Ok(())) = &self.stored {
            return self.facts.path_credential.map(|(user, _)| user.into());
        }
        self.verified().and_then(|g| g.user.as_deref().map(Arc::from))
    }

    async fn grant(&mut self) -> Result<Arc<jwt::Grant>, Denied> {
        if let Some(done) = &self.result {
            return done.clone();
        }
        let result = match self.verifier {
            // Configuration validation makes a policy with `jwt = true` imply a verifier.
            None => Err(Denied::forbidden("no token verification is configured (access.jwt)".into())),
            Some(v) => match v.token(self.facts.headers, self.facts.query) {
                None => Err(v.missing()),
                Some(token) => v.verify(&token).await,
            },
        };
        self.result = Some(result.clone());
        result
    }

    fn verified(&self) -> Option<Arc<jwt::Grant>> {
        self.result.as_ref().and_then(|r| r.as_ref().ok()).cloned()
    }
}

impl Gate {
    /// Compiles every policy; a `secret` rule whose environment variable is missing, or any
    /// other rule that cannot be used, stops start-up naming its key.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let global_sub = Policy::compile(&config.access.subscribe, "access.subscribe")?;
        let global_pub = Policy::compile(&config.access.publish, "access.publish")?;
        let mut subscribe = Vec::new();
        let mut publish = Vec::new();
        for (i, c) in config.channels.iter().enumerate() {
            let own = c.access.as_ref();
            let sub = match own.and_then(|a| a.subscribe.as_ref()) {
                Some(p) => Policy::compile(p, &format!("channels[{i}].access.subscribe"))?,
                None => global_sub.clone(),
            };
            let publ = match own.and_then(|a| a.publish.as_ref()) {
                Some(p) => Policy::compile(p, &format!("channels[{i}].access.publish"))?,
                None => global_pub.clone(),
            };
            subscribe.push((c.pattern.clone(), sub));
            publish.push((c.pattern.clone(), publ));
        }
        Ok(Gate {
            proxies: Proxies::new(
                config.access.trusted_proxies.iter().filter_map(|n| parse_net(n).ok()).collect(),
                config.access.forwarded_header == crate::config::access::ForwardedHeader::Forwarded,
            ),
            subscribe: RuleTable::new(subscribe, global_sub),
            publish: RuleTable::new(publish, global_pub),
            stats: Policy::compile(&config.access.stats, "access.stats")?,
            publish_origins: config.access.publish_origins.clone(),
            anonymous_publish: config.access.anonymous_publish,
            publish_rate: std::num::NonZeroU32::new(config.access.publish_rate.per_second).map(|per_second| {
                let burst = std::num::NonZeroU32::new(config.access.publish_rate.burst).unwrap_or(per_second);
                rate::PublishRate::new(per_second, burst)
            }),
            streams: (config.access.max_streams_per_client > 0)
                .then(|| streams::StreamLimit::new(config.access.max_streams_per_client, ("one address", "access.max_streams_per_client"))),
            user_streams: (config.access.max_streams_per_user > 0)
                .then(|| streams::StreamLimit::new(config.access.max_streams_per_user, ("one user", "access.max_streams_per_user"))),
            jwt: config.access.jwt.has_keys().then(|| jwt::Verifier::new(&config.access.jwt)).transpose()?,
            postgres: (!config.access.postgres.dsn.is_empty()).then(|| postgres::TokenStore::new(&config.access.postgres)).transpose()?,
            token_route: config.access.postgres.route.clone(),
        })
    }

    fn token_check<'a>(&'a self, facts: &'a Facts<'a>, client: IpAddr) -> TokenCheck<'a> {
        TokenCheck {
            verifier: self.jwt.as_ref(),
            store: self.postgres.as_ref(),
            token_route: &self.token_route,
            facts,
            client,
            result: None,
            stored: None,
        }
    }

    /// May this request subscribe to all of `channels`? The admission is held by the stream.
    pub async fn subscribe<S: AsRef<str>>(&self, checkpoint: &Checkpoint, channels: &[S], facts: &Facts<'_>) -> Result<Admission, Denied> {
        self.decide_subscribe(checkpoint, channels, facts).await.inspect_err(|d| refused("subscribe", facts, d))
    }

    async fn decide_subscribe<S: AsRef<str>>(
        &self,
        checkpoint: &Checkpoint,
        channels: &[S],
        facts: &Facts<'_>,
    ) -> Result<Admission, Denied> {
        checkpoint.0.store(true, Ordering::Release);
        let client = self.proxies.client(facts.peer, facts.headers);
        let mut token = self.token_check(facts, client);
        let policies = distinct_policies(&self.subscribe, channels);
        for (policy, names) in &policies {
            admit(policy, names, facts, client, &mut token, Action::Subscribe).await?;
        }
        // The token route's user and token are checked whatever the channel's policy says: a
        // wrong token is never let through on it.
        if facts.path_credential.is_some() {
            token.stored().await?;
        }
        let mut own_log = channels.is_empty();
        if channels.is_empty() {
            // A user's own stream: the global policy, and a credential that names the user.
            admit(self.subscribe.default(), &[], facts, client, &mut token, Action::Subscribe).await?;
            if token.user().is_none() {
                if self.jwt.is_none() {
                    return Err(Denied {
                        status: StatusCode::BAD_REQUEST,
                        message:
                            "name at least one channel: /sse/{channel} or /sse?channel=a&channel=b (a user's own stream needs [access.jwt])"
                                .into(),
                        bearer: false,
                        retry_after: None,
                    });
                }
                if token.grant().await?.user.is_none() {
                    return Err(Denied::forbidden(
                        "the token names no user (access.jwt.claims.user), so it has no stream of its own".into(),
                    ));
                }
            }
        }
        let user = token.user();
        // A user's own log (the events addressed to the user alone) is the global policy's to
        // give: a stream of a channel reads it only if that policy admits the request too.
        if user.is_some() && !own_log {
            own_log = policies.iter().any(|(p, _)| Arc::ptr_eq(p, self.subscribe.default()))
                || admit(self.subscribe.default(), &[], facts, client, &mut token, Action::Subscribe).await.is_ok();
        }
        let by_client = self.streams.as_ref().map(|limit| limit.acquire(client)).transpose()?;
        let by_user = match (&self.user_streams, &user) {
            (Some(limit), Some(user)) => Some(limit.acquire(user.clone())?),
            _ => None,
        };
        let end_at_expiry = self.jwt.as_ref().is_some_and(|v| v.end_stream_at_expiry);
        let ends_at = token.verified().and_then(|g| g.expires).filter(|_| end_at_expiry);
        let anything = by_client.is_some() || by_user.is_some() || user.is_some() || ends_at.is_some();
        Ok(Admission(anything.then(|| Box::new(Held { _client: by_client, _user: by_user, user, ends_at, own_log }))))
    }

    /// May this request read the hub's statistics?
    pub async fn stats(&self, checkpoint: &Checkpoint, facts: &Facts<'_>) -> Result<(), Denied> {
        checkpoint.0.store(true, Ordering::Release);
        let client = self.proxies.client(facts.peer, facts.headers);
        admit(&self.stats, &[], facts, client, &mut self.token_check(facts, client), Action::Read)
            .await
            .inspect_err(|d| refused("stats", facts, d))
    }

    /// May this request publish to all of `channels`, and (`to_users`) address events to users?
    /// Addressing users is held to the global publish policy.
    pub async fn publish<S: AsRef<str>>(
        &self,
        checkpoint: &Checkpoint,
        channels: &[S],
        to_users: bool,
        facts: &Facts<'_>,
    ) -> Result<(), Denied> {
        self.decide_publish(checkpoint, channels, to_users, facts).await.inspect_err(|d| refused("publish", facts, d))
    }

    async fn decide_publish<S: AsRef<str>>(
        &self,
        checkpoint: &Checkpoint,
        channels: &[S],
        to_users: bool,
        facts: &Facts<'_>,
    ) -> Result<(), Denied> {
        checkpoint.0.store(true, Ordering::Release);
        if let Some(origin) = facts.headers.get(http::header::ORIGIN) {
            let listed = origin.to_str().is_ok_and(|o| self.publish_origins.iter().any(|a| a.eq_ignore_ascii_case(o)));
            if !listed {
                return Err(Denied::forbidden("publishing from a web page of this origin is not allowed (access.publish_origins)".into()));
            }
        }
        // Behind a trusted proxy on this machine, the proxy's client decides, not the proxy.
        let client = self.proxies.client(facts.peer, facts.headers);
        let mut token = self.token_check(facts, client);
        let mut policies = distinct_policies(&self.publish, channels);
        if to_users {
            // Addressing users is the global policy's to allow; a token's publish claim must
            // grant `#users` for it (`**` does).
            match policies.iter_mut().find(|(p, _)| Arc::ptr_eq(p, self.publish.default())) {
                Some((_, names)) => names.push(USERS),
                None => policies.push((self.publish.default(), vec![USERS])),
            }
        }
        // The rate is kept per API key only where a policy checked the key; otherwise per
        // address, so that made-up keys buy no fresh allowance.
        let key_checked = policies.iter().any(|(p, _)| !p.keys.is_empty());
        for (policy, names) in policies {
            if policy.is_open() && self.anonymous_publish == AnonymousPublish::Loopback && !client.is_loopback() {
                return Err(Denied::forbidden(
                    "publishing is open to this machine only: configure publish rules (access.publish), or set access.anonymous_publish = \"anyone\"".into(),
                ));
            }
            admit(policy, &names, facts, client, &mut token, Action::Publish).await?;
        }
        // Counted once admitted: a refused request publishes nothing.
        match &self.publish_rate {
            Some(rate) => rate.check(client, api_key(facts.headers).filter(|_| key_checked)),
            None => Ok(()),
        }
    }
}

/// What a token's publish claim must grant for its request to address events to users.
pub const USERS: &str = "#users";

/// Says why a request was refused, for the operator; never with a credential (refusal messages
/// name what is missing or wrong, not what was sent).
fn refused(action: &str, facts: &Facts<'_>, denied: &Denied) {
    tracing::debug!(peer = %facts.peer, action, status = denied.status.as_u16(), reason = %denied.message, "request refused by access control");
}

/// Checks one policy for the channels it governs. A missing credential is reported before a
/// wrong one, the token's included.
async fn admit(
    policy: &Policy,
    names: &[&str],
    facts: &Facts<'_>,
    client: IpAddr,
    token: &mut TokenCheck<'_>,
    action: Action,
) -> Result<(), Denied> {
    let rules = policy.check(facts, client);
    if matches!(&rules, Err(d) if d.status == StatusCode::UNAUTHORIZED) {
        return rules;
    }
    // A missing credential first; then the policy's own refusals, before any credential costs
    // a database query or a signature check.
    if policy.postgres && facts.path_credential.is_none() {
        token.stored().await?;
    }
    if policy.jwt && !token.has_token() {
        token.grant().await?;
    }
    rules?;
    if policy.postgres {
        token.stored().await?;
    }
    if !policy.jwt {
        return Ok(());
    }
    let grant = token.grant().await?;
    for name in names {
        let granted = match action {
            Action::Subscribe => grant.may_subscribe(name),
            Action::Publish => grant.may_publish(name),
            Action::Read => true,
        };
        if !granted {
            let verb = if matches!(action, Action::Publish) { "publishing to" } else { "subscribing to" };
            return Err(Denied::forbidden(format!("the token does not grant {verb} `{name}`")));
        }
    }
    Ok(())
}

/// Each distinct policy of `channels`, with the channels it governs, in the order first named.
fn distinct_policies<'t, 'c, S: AsRef<str>>(table: &'t RuleTable<Arc<Policy>>, channels: &'c [S]) -> Vec<(&'t Arc<Policy>, Vec<&'c str>)> {
    let mut out: Vec<(&Arc<Policy>, Vec<&str>)> = Vec::new();
    for name in channels {
        let name = name.as_ref();
        let policy = table.resolve(name);
        match out.iter_mut().find(|(p, _)| Arc::ptr_eq(p, policy)) {
            Some((_, names)) => names.push(name),
            None => out.push((policy, vec![name])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::access::HeaderRule;

    fn facts(peer: &str, headers: &HeaderMap) -> Facts<'static> {
        // Leaked: the few bytes of a test's header map.
        let headers: &'static HeaderMap = Box::leak(Box::new(headers.clone()));
        Facts { peer: peer.parse().unwrap(), headers, body: b"", query: None, path_credential: None }
    }

    #[tokio::test]
    async fn anonymous_publishing_is_for_loopback_unless_opened() {
        let none = HeaderMap::new();
        let gate = Gate::new(&Config::default()).unwrap();
        let cp = Checkpoint::default();
        for peer in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(gate.publish(&cp, &["a"], false, &facts(peer, &none)).await.is_ok(), "{peer}");
        }
        for peer in ["192.0.2.7", "10.0.0.1", "2001:db8::1", "::ffff:192.0.2.7"] {
            let denied = gate.publish(&cp, &["a"], false, &facts(peer, &none)).await.unwrap_err();
            assert_eq!(denied.status, StatusCode::FORBIDDEN, "{peer}");
            assert!(denied.message.contains("anonymous_publish"), "{}", denied.message);
        }
        assert!(cp.decided());
        // Subscribing is open to every address by default.
        assert!(gate.subscribe(&cp, &["a"], &facts("192.0.2.7", &none)).await.is_ok());

        let mut open = Config::default();
        open.access.anonymous_publish = AnonymousPublish::Anyone;
        assert!(Gate::new(&open).unwrap().publish(&cp, &["a"], false, &facts("192.0.2.7", &none)).await.is_ok());

        // With a publish rule, the network may publish: with the credential.
        let mut keyed = Config::default();
        keyed.access.publish.headers.insert("x-key".into(), HeaderRule::Equals { value: "k".into(), case_sensitive: true });
        let gate = Gate::new(&keyed).unwrap();
        let mut with_key = HeaderMap::new();
        with_key.insert("x-key", "k".parse().unwrap());
        assert!(gate.publish(&cp, &["a"], false, &facts("192.0.2.7", &with_key)).await.is_ok());
        assert_eq!(gate.publish(&cp, &["a"], false, &facts("192.0.2.7", &none)).await.unwrap_err().status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn a_checkpoint_is_unmarked_until_a_decision() {
        let cp = Checkpoint::default();
        assert!(!cp.decided());
        cp.public();
        assert!(cp.decided());
    }
}

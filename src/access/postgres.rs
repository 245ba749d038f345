//! Tokens kept in PostgreSQL (the Go RabbitMQ server's model): a user's token is valid when the
//! configured query returns a row for it. Connections come from a pool; a yes is remembered for
//! `cache_ttl`, a no never (a token just issued must work at once). A client address whose
//! tokens keep being refused is held to `failures_per_minute` queries that say no, so that one
//! host guessing tokens cannot take the pool from everyone. The database being down lets
//! nobody in: 503, never a guess.

use super::Denied;
use crate::config::ConfigError;
use crate::config::access::PostgresConfig;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use http::StatusCode;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Answers remembered at most.
const REMEMBERED: usize = 10_000;

pub struct TokenStore {
    pool: Pool,
    query: String,
    timeout: Duration,
    cache_ttl: Duration,
    /// SHA-256 of (user, token) -> when the database said yes.
    remembered: quick_cache::sync::Cache<[u8; 32], Instant>,
    /// Refused checks per client address.
    failures: Option<governor::DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses over their refusals, and since when.
    blocked: quick_cache::sync::Cache<IpAddr, Instant>,
}

/// How long an address over its refusals is answered 429 without a query.
const BLOCKED_FOR: Duration = Duration::from_secs(60);

impl TokenStore {
    /// From validated configuration; connects lazily (start-up does not wait for the database).
    pub fn new(config: &PostgresConfig) -> Result<Self, ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid { key: format!("access.postgres.{key}"), message };
        let mut pg: tokio_postgres::Config = config.dsn.parse().map_err(|e| bad("dsn", format!("{e}")))?;
        pg.connect_timeout(config.timeout);
        let manager = Manager::from_config(pg, tls(config)?, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .build()
            .map_err(|e| bad("dsn", format!("cannot make a connection pool: {e}")))?;
        Ok(TokenStore {
            pool,
            query: config.query.clone(),
            timeout: config.timeout,
            cache_ttl: config.cache_ttl,
            remembered: quick_cache::sync::Cache::new(REMEMBERED),
            failures: std::num::NonZeroU32::new(config.failures_per_minute)
                .map(|n| governor::DefaultKeyedRateLimiter::keyed(governor::Quota::per_minute(n))),
            blocked: quick_cache::sync::Cache::new(REMEMBERED),
        })
    }

    /// Is `token` valid for `user`, asked by `client`? 403 when not, 503 when the database
    /// cannot say, 429 when the client's refusals are over `failures_per_minute`.
    pub async fn check(&self, client: IpAddr, user: &str, token: &str) -> Result<(), Denied> {
        let key = digest(user, token);
        if let Some(at) = self.remembered.get(&key) {
            if at.elapsed() < self.cache_ttl {
                return Ok(());
            }
        }
        // A client out of refusals is not let near the database for a minute.
        if self.blocked.get(&client).is_some_and(|since| since.elapsed() < BLOCKED_FOR) {
            return Err(too_many_refusals());
        }
        match tokio::time::timeout(self.timeout, self.ask(user, token)).await {
            Ok(Ok(true)) => {
                if !self.cache_ttl.is_zero() {
                    self.remembered.insert(key, Instant::now());
                }
                Ok(())
            }
            Ok(Ok(false)) => {
                if let Some(limit) = &self.failures {
                    if limit.len() > 100_000 {
                        limit.retain_recent();
                    }
                    if limit.check_key(&client).is_err() {
                        self.blocked.insert(client, Instant::now());
                    }
                }
                Err(Denied::forbidden("the token is not valid for this user".into()))
            }
            Ok(Err(e)) => Err(unavailable(&e)),
            Err(_) => Err(unavailable(&format!("no answer within {:?} (access.postgres.timeout)", self.timeout))),
        }
    }

    async fn ask(&self, user: &str, token: &str) -> Result<bool, String> {
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let statement = client.prepare_cached(&self.query).await.map_err(|e| e.to_string())?;
        match client.query_opt(&statement, &[&user, &token]).await {
            Ok(row) => Ok(row.is_some()),
            // A data exception (SQLSTATE class 22: a token that is not a valid uuid, say) is
            // the client's value, not the database failing: a no. Its message quotes the value,
            // so it is not logged.
            Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => Ok(false),
            Err(e) => Err(match e.code() {
                Some(code) => format!("query failed with SQLSTATE {} ({e})", code.code()),
                None => e.to_string(),
            }),
        }
    }
}

fn too_many_refusals() -> Denied {
    Denied {
        status: StatusCode::TOO_MANY_REQUESTS,
        message: "too many refused tokens from this address (access.postgres.failures_per_minute): retry in a minute".into(),
        bearer: false,
        retry_after: Some(60),
    }
}

fn digest(user: &str, token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
    h.update((user.len() as u64).to_be_bytes());
    h.update(user.as_bytes());
    h.update(token.as_bytes());
    h.finalize().into()
}

fn unavailable(why: &dyn std::fmt::Display) -> Denied {
    // The database's own words may name hosts and tables: they go to the log, not the client.
    tracing::warn!(error = %why, "the token database (access.postgres) did not answer");
    Denied {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "the token database is unavailable: nobody can be let in now".into(),
        bearer: false,
        retry_after: Some(5),
    }
}

/// TLS for the connections, used as the DSN's `sslmode` says (`prefer` by default, `require`,
/// `disable`): the server's certificate is checked against `ca_file`, else the system's roots.
fn tls(config: &PostgresConfig) -> Result<tokio_postgres_rustls::MakeRustlsConnect, ConfigError> {
    let files = crate::tls::ClientTls {
        ca_file: config.ca_file.clone(),
        cert_file: config.client_cert_file.clone(),
        key_file: config.client_key_file.clone(),
        insecure: config.tls_insecure,
    };
    let names = crate::tls::KeyNames { ca_file: "ca_file", cert_file: "client_cert_file", key_file: "client_key_file" };
    let tls = files.client_config("access.postgres", &names)?;
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
}

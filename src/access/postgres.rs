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
use std::sync::Arc;
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
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |key: &str, message: String| ConfigError::Invalid { key: format!("access.postgres.{key}"), message };
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad("ca_file", format!("{}: {e}", path.display())))? {
                let cert = cert.map_err(|e| bad("ca_file", format!("{}: {e}", path.display())))?;
                roots.add(cert).map_err(|e| bad("ca_file", format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("dsn", format!("TLS: {e}")))?;
    let builder = if config.tls_insecure {
        versions.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    } else {
        versions.with_root_certificates(roots)
    };
    let tls = match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad("client_cert_file", format!("{}: {e}", cert.display())))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("client_key_file", format!("{}: {e}", key.display())))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| bad("client_key_file", e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
}

/// `tls_insecure`: any certificate is taken (the handshake's signatures are still checked, so
/// the session is encrypted to whoever holds the certificate's key).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

//! TLS on the public listener: rustls with aws-lc-rs (the one provider Herald uses, passed
//! explicitly), ALPN offering `h2` and `http/1.1`, and a certificate that can be replaced while
//! the server runs. The certificate and key are read again on SIGHUP and when either file
//! changes (checked every `tls.watch_interval`); connections already open keep the session they
//! have, so open streams are not dropped, and every handshake after the reload gets the new
//! pair. A pair that fails to load is logged and the one in use is kept. With TLS on and no
//! files, a temporary self-signed certificate is made at start-up, as oCIS does.

use crate::config::{ConfigError, TlsConfig};
use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_rustls::TlsAcceptor;

/// The listener's TLS: the acceptor every connection's handshake goes through, and the
/// certificate it presents.
pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    certificate: Arc<Certificate>,
}

/// The certificate in use, replaced whole on reload.
#[derive(Debug)]
struct Certificate {
    current: RwLock<Arc<CertifiedKey>>,
    /// The files it came from; none for a generated one.
    files: Option<Files>,
    provider: Arc<CryptoProvider>,
}

#[derive(Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    /// What the files looked like when last loaded, to notice a change.
    seen: Mutex<Option<(Stamp, Stamp)>>,
}

/// A file's length and modification time: a replaced or rewritten file changes one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp { len: meta.len(), modified: meta.modified().ok() })
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

impl ServerTls {
    /// The listener's TLS when `tls.enabled`; `listen` names the generated certificate.
    pub fn from_config(config: &TlsConfig, listen: SocketAddr) -> Result<Option<ServerTls>, ConfigError> {
        if !config.enabled {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (key, files) = if config.cert_file.as_os_str().is_empty() {
            (self_signed(listen, &provider)?, None)
        } else {
            let files = Files { cert: config.cert_file.clone(), key: config.key_file.clone(), seen: Mutex::new(None) };
            *files.seen.lock() = files.stamps();
            (load_pair(&files.cert, &files.key, &provider)?, Some(files))
        };
        let certificate = Arc::new(Certificate { current: RwLock::new(Arc::new(key)), files, provider: provider.clone() });
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Invalid { key: "tls".into(), message: e.to_string() })?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(ServerTls { acceptor: TlsAcceptor::from(Arc::new(server)), certificate }))
    }

    /// Reads the files again if they changed since they were last loaded (or always, when
    /// `force`: SIGHUP). Returns whether a new pair is in use.
    pub fn reload(&self, force: bool) -> bool {
        let cert = &self.certificate;
        let Some(files) = &cert.files else { return false };
        let stamps = files.stamps();
        if !force && stamps == *files.seen.lock() {
            return false;
        }
        // Recorded before loading: a pair that fails is reported once per change, not at
        // every look.
        *files.seen.lock() = stamps;
        match load_pair(&files.cert, &files.key, &cert.provider) {
            Ok(key) => {
                *cert.current.write() = Arc::new(key);
                tracing::info!(cert_file = %files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use");
                false
            }
        }
    }

    /// Reloads on SIGHUP and whenever the files change, looking every `every` (`0s`: only on
    /// SIGHUP). Runs until dropped.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        if self.certificate.files.is_none() {
            return;
        }
        #[cfg(unix)]
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = (!every.is_zero()).then(|| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
        loop {
            // `true` for a SIGHUP (reload whatever the files look like), `false` for a look.
            let hangup = async {
                #[cfg(unix)]
                if let Some(h) = &mut hangups {
                    return h.recv().await;
                }
                std::future::pending().await
            };
            let look = async {
                match &mut tick {
                    Some(tick) => tick.tick().await,
                    None => std::future::pending().await,
                }
            };
            let force = tokio::select! {
                got = hangup => match got {
                    Some(()) => true,
                    // No more signals will come: stop listening for them rather than spin.
                    None => {
                        #[cfg(unix)]
                        {
                            hangups = None;
                        }
                        continue;
                    }
                },
                _ = look => false,
            };
            self.reload(force);
        }
    }
}

impl Files {
    fn stamps(&self) -> Option<(Stamp, Stamp)> {
        Some((Stamp::of(&self.cert)?, Stamp::of(&self.key)?))
    }
}

/// The chain in `cert` (end-entity first) and the private key in `key`, checked to belong
/// together.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, ConfigError> {
    let bad = |k: &str, path: &Path, message: &dyn std::fmt::Display| ConfigError::Invalid {
        key: format!("tls.{k}"),
        message: format!("{}: {message}", path.display()),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("cert_file", cert, &e))?;
    if chain.is_empty() {
        return Err(bad("cert_file", cert, &"holds no PEM certificate"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key_file", key, &e))?;
    CertifiedKey::from_der(chain, key_der, provider).map_err(|e| bad("key_file", key, &format!("does not go with tls.cert_file: {e}")))
}

/// A temporary certificate for `localhost`, the loopback addresses and the listen address,
/// valid from now on: enough for a test or a first look, never trusted by a client that
/// checks certificates.
fn self_signed(listen: SocketAddr, provider: &CryptoProvider) -> Result<CertifiedKey, ConfigError> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let ip = listen.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    let fail = |e: &dyn std::fmt::Display| ConfigError::Invalid {
        key: "tls".into(),
        message: format!("could not make a temporary certificate: {e}"),
    };
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| fail(&e))?;
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).map_err(|e| fail(&e))?;
    let key = CertifiedKey::from_der(vec![made.cert.der().clone()], key, provider).map_err(|e| fail(&e))?;
    tracing::warn!(
        "tls.enabled with no tls.cert_file: serving a temporary self-signed certificate, which clients will not trust; set tls.cert_file and tls.key_file"
    );
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    fn served_der(tls: &ServerTls) -> Vec<u8> {
        tls.certificate.current.read().cert[0].to_vec()
    }

    #[test]
    fn a_changed_pair_is_loaded_and_a_broken_one_leaves_the_old_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "one.test");
        let config = TlsConfig { enabled: true, cert_file: cert.clone(), key_file: key.clone(), ..TlsConfig::default() };
        let tls = ServerTls::from_config(&config, "127.0.0.1:0".parse().unwrap()).unwrap().unwrap();
        let first = served_der(&tls);
        assert!(!tls.reload(false), "nothing changed");
        std::thread::sleep(Duration::from_millis(20));
        write_pair(dir.path(), "two.test");
        assert!(tls.reload(false), "the files changed");
        let second = served_der(&tls);
        assert_ne!(first, second);
        // A key that is not the certificate's: refused, the pair in use stays.
        let other = rcgen::generate_simple_self_signed(vec!["three.test".to_owned()]).unwrap();
        std::fs::write(&key, other.signing_key.serialize_pem()).unwrap();
        assert!(!tls.reload(true));
        assert_eq!(served_der(&tls), second);
    }

    #[test]
    fn files_that_cannot_be_used_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "one.test");
        let listen = "127.0.0.1:0".parse().unwrap();
        let missing = TlsConfig { enabled: true, cert_file: dir.path().join("nope.pem"), key_file: key.clone(), ..TlsConfig::default() };
        let err = ServerTls::from_config(&missing, listen).err().unwrap().to_string();
        assert!(err.contains("tls.cert_file") && err.contains("nope.pem"), "{err}");
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let empty = TlsConfig { enabled: true, cert_file: dir.path().join("empty.pem"), key_file: key, ..TlsConfig::default() };
        let err = ServerTls::from_config(&empty, listen).err().unwrap().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let no_key = TlsConfig { enabled: true, cert_file: cert.clone(), key_file: cert, ..TlsConfig::default() };
        let err = ServerTls::from_config(&no_key, listen).err().unwrap().to_string();
        assert!(err.contains("tls.key_file"), "{err}");
    }

    #[test]
    fn with_no_files_a_temporary_certificate_is_made() {
        let config = TlsConfig { enabled: true, ..TlsConfig::default() };
        let tls = ServerTls::from_config(&config, "127.0.0.1:0".parse().unwrap()).unwrap().unwrap();
        assert!(!served_der(&tls).is_empty());
        assert!(!tls.reload(true), "nothing to reload");
        assert!(ServerTls::from_config(&TlsConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap().is_none());
    }
}

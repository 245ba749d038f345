//! TLS for Herald's own connections to other services (the token database, brokers, upstream
//! hubs): one rustls client configuration from a CA file, a client certificate and key, and an
//! `insecure` switch, so that every dependency is configured and checked the same way.

use crate::config::ConfigError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// How Herald connects over TLS to a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTls {
    /// PEM file of the certificates the server's must chain to; none: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain Herald presents (with `key_file`), for servers that ask for one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Take any server certificate (the session is still encrypted, but to whoever answers).
    /// For tests only.
    pub insecure: bool,
}

/// Makes aws-lc-rs the process's rustls provider, for libraries that build their TLS
/// configuration from the default (the redis crate): two providers are in the tree, and rustls
/// will not choose between them itself.
pub fn install_default_provider() {
    // Already installed (by an earlier call) is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// What the configuration calls the files (their keys differ between sections).
pub struct KeyNames {
    pub ca_file: &'static str,
    pub cert_file: &'static str,
    pub key_file: &'static str,
}

impl KeyNames {
    pub const PLAIN: KeyNames = KeyNames { ca_file: "ca_file", cert_file: "cert_file", key_file: "key_file" };
}

impl ClientTls {
    /// Whether anything here asks for more than the system's defaults.
    pub fn is_default(&self) -> bool {
        *self == ClientTls::default()
    }

    /// The rustls configuration; an unreadable file is an error naming `section.key`.
    pub fn client_config(&self, section: &str, names: &KeyNames) -> Result<rustls::ClientConfig, ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid { key: format!("{section}.{key}"), message };
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(bad(names.cert_file, format!("{} and {} go together", names.cert_file, names.key_file)));
        }
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let fail = |e: &dyn std::fmt::Display| bad(names.ca_file, format!("{}: {e}", path.display()));
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| fail(&e))? {
                    roots.add(cert.map_err(|e| fail(&e))?).map_err(|e| fail(&e))?;
                }
                if roots.is_empty() {
                    return Err(fail(&"holds no PEM certificate"));
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
            .map_err(|e| bad("tls", e.to_string()))?;
        let builder = if self.insecure {
            versions.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else {
            versions.with_root_certificates(roots)
        };
        Ok(match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad(names.cert_file, format!("{}: {e}", cert.display())))?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(names.key_file, format!("{}: {e}", key.display())))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| bad(names.key_file, e.to_string()))?
            }
            _ => builder.with_no_client_auth(),
        })
    }
}

/// `insecure`: any certificate is taken (the handshake's signatures are still checked, so the
/// session is encrypted to whoever holds the certificate's key).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

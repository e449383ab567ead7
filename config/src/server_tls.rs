//! rustls towards PostgreSQL servers, per `server_tls_mode`: the proxy's server
//! logins and the orchestrator's admin connections open TLS the same way.

use crate::{ProxyConfig, ServerTlsMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsConnector;

/// TLS material that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing or unreadable or holds nothing usable.
    #[error("cannot load {what} from {path}: {reason}")]
    Load {
        /// Which file (certificate, key, CA bundle).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the material (e.g. key does not match certificate).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The one crypto provider every TLS config in pgcutover uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every PEM certificate in `path`; none is an error naming the file and `what` it is for.
pub fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Load {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// How pgcutover opens TLS to PostgreSQL servers.
#[derive(Clone)]
pub struct ServerTls {
    /// The configured policy.
    pub mode: ServerTlsMode,
    connector: Option<TlsConnector>,
}

impl ServerTls {
    /// Builds the connector for `server_tls_mode`.
    pub fn new(cfg: &ProxyConfig) -> Result<ServerTls, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let config = match cfg.server_tls_mode {
            ServerTlsMode::Disable => None,
            ServerTlsMode::Prefer | ServerTlsMode::Require => Some(
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoCertificateVerification(provider())))
                    .with_no_client_auth(),
            ),
            ServerTlsMode::VerifyFull => {
                let path = cfg.server_tls_ca_file.as_deref().ok_or_else(|| TlsError::Load {
                    what: "server_tls_ca_file",
                    path: PathBuf::new(),
                    reason: "server_tls_mode = \"verify-full\" needs a CA bundle".into(),
                })?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in load_certs("server_tls_ca_file", path)? {
                    roots.add(cert)?;
                }
                Some(builder.with_root_certificates(roots).with_no_client_auth())
            }
        };
        Ok(ServerTls {
            mode: cfg.server_tls_mode,
            connector: config.map(|c| TlsConnector::from(Arc::new(c))),
        })
    }

    /// The connector, when the mode uses TLS at all.
    pub fn connector(&self) -> Option<&TlsConnector> {
        self.connector.as_ref()
    }

    /// The name presented for SNI and checked under verify-full.
    pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
        ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))
    }
}

/// libpq's `sslmode=prefer/require`: encrypt, but accept any certificate. Signatures
/// are still checked so the handshake itself is sound.
#[derive(Debug)]
struct NoCertificateVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

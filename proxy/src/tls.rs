//! rustls for clients' SSLRequest: the acceptor built from `tls_cert_file` and
//! `tls_key_file`. The connector towards servers lives in `pgcutover_config`, where
//! the orchestrator builds it too.

use pgcutover_config::{load_certs, provider, ProxyConfig, TlsError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Builds the acceptor for clients from the configured certificate and key, if any.
pub fn client_acceptor(cfg: &ProxyConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) else {
        return Ok(None);
    };
    let certs = load_certs("tls_cert_file", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Load {
        what: "tls_key_file",
        path: key.clone(),
        reason: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

//! rustls for clients' SSLRequest (the acceptor built from `tls_cert_file` and
//! `tls_key_file`) and for the admin API (`admin_tls_cert_file`, `admin_tls_key_file`). The connector towards servers lives in `pgcutover_config`, where
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
    acceptor(("tls_cert_file", cert), ("tls_key_file", key))
}

/// Builds the admin API's acceptor from `admin_tls_cert_file` and `admin_tls_key_file`, if set.
pub fn admin_acceptor(cfg: &ProxyConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    let (Some(cert), Some(key)) = (&cfg.admin_tls_cert_file, &cfg.admin_tls_key_file) else {
        return Ok(None);
    };
    acceptor(("admin_tls_cert_file", cert), ("admin_tls_key_file", key))
}

fn acceptor(
    (cert_what, cert): (&'static str, &std::path::Path),
    (key_what, key): (&'static str, &std::path::Path),
) -> Result<Option<TlsAcceptor>, TlsError> {
    let certs = load_certs(cert_what, cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Load {
        what: key_what,
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

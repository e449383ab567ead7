//! The proxies a switchover drives, behind `pgcutover_api::ProxyControl`:
//! [`RemoteProxy`] calls a proxy's admin API over HTTP/1.1 (hyper, TLS with rustls) with the
//! `pgcutover_api` types; the proxy crate implements the trait for the proxy in this
//! process, so both are driven the same way.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use pgcutover_api::{
    BoxFuture, ErrorReply, HoldReply, HoldRequest, PhaseUpdate, PrepareReply, PrepareRequest, ProxyControl, ProxyError,
    ResumeReply, RouteReply, RouteRequest, Side, StatusReply, RUN_HEADER,
};
use pgcutover_config::{load_certs, provider, AdminToken, ServerTls};
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest admin reply read (a status of a few thousand sessions' pids fits).
const MAX_REPLY: usize = 16 << 20;

/// How long the calls that wait for nothing may take.
const QUICK_CALL: Duration = Duration::from_secs(5);

/// Another proxy instance, through its admin API.
pub struct RemoteProxy {
    /// `host:port` of its admin API, as named (the Host header).
    authority: String,
    /// Where to connect when the name was resolved already (a `dns+` peer's
    /// address); else `authority` is resolved at each call.
    connect_to: Option<SocketAddr>,
    /// How it is named in messages.
    url: String,
    token: Option<AdminToken>,
    /// For `https://`: the connector (trusting `admin_tls_ca_file`) and the name the
    /// certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl RemoteProxy {
    /// A proxy at `url`, presenting `token` on mutating calls: `https://host:port`,
    /// its certificate signed by a CA in `ca_file`, or `http://host:port` on a
    /// loopback address (a token sent in clear across a network could be taken).
    pub fn new(url: &str, token: Option<AdminToken>, ca_file: Option<&Path>) -> Result<RemoteProxy, String> {
        RemoteProxy::build(url, None, token, ca_file)
    }

    /// The proxy at `addr`, one of the addresses `url`'s name resolved to: the
    /// certificate must still carry the name, and the token may go in clear only
    /// to a loopback address.
    pub fn at(
        url: &str,
        addr: SocketAddr,
        token: Option<AdminToken>,
        ca_file: Option<&Path>,
    ) -> Result<RemoteProxy, String> {
        RemoteProxy::build(url, Some(addr), token, ca_file)
    }

    fn build(
        url: &str,
        connect_to: Option<SocketAddr>,
        token: Option<AdminToken>,
        ca_file: Option<&Path>,
    ) -> Result<RemoteProxy, String> {
        let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => {
                return Err(format!(
                    "peer {url:?}: expected https://host:port (or http:// on loopback), the URL of a proxy's admin API"
                ))
            }
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("peer {url:?}: expected a scheme and host:port with no path"));
        }
        let host = host_of(authority);
        let tls = if https {
            let ca = ca_file.ok_or_else(|| {
                format!("peer {url:?}: https:// peers need [proxy] admin_tls_ca_file, the CA bundle that signed their admin certificates")
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs("admin_tls_ca_file", ca).map_err(|e| e.to_string())? {
                roots.add(cert).map_err(|e| format!("admin_tls_ca_file: {e}"))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = ServerTls::server_name(host).map_err(|e| format!("peer {url:?}: {e}"))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            let loopback = connect_to.map_or_else(|| is_loopback(host), |a| a.ip().is_loopback());
            if token.is_some() && !loopback {
                return Err(format!(
                    "peer {url:?}: the admin token would cross the network in plain text; serve that proxy's admin API over TLS (admin_tls_cert_file) and use https://"
                ));
            }
            None
        };
        let scheme = if https { "https" } else { "http" };
        let url = match connect_to {
            Some(addr) => format!("{scheme}://{authority} at {addr}"),
            None => format!("{scheme}://{authority}"),
        };
        Ok(RemoteProxy {
            authority: authority.to_owned(),
            connect_to,
            url,
            token,
            tls,
        })
    }

    /// How it is named in messages: its URL, and the address it was resolved to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One admin call; `ok` lists the statuses whose body may be a `T`. Any other
    /// answer, or an [`ErrorReply`] under a listed status, is a refusal.
    async fn call<T: DeserializeOwned>(
        &self,
        call: &'static str,
        run: Option<&str>,
        body: Option<&(impl Serialize + Sync)>,
        ok: &[StatusCode],
        timeout: Duration,
    ) -> Result<T, ProxyError> {
        let proxy = self.name();
        let (status, bytes) = tokio::time::timeout(timeout, self.exchange(call, run, body))
            .await
            .map_err(|_| ProxyError::Timeout {
                proxy: proxy.clone(),
                call,
                timeout,
            })?
            .map_err(|reason| ProxyError::Unreachable {
                proxy: proxy.clone(),
                call,
                reason,
            })?;
        if ok.contains(&status) {
            if let Ok(reply) = serde_json::from_slice(&bytes) {
                return Ok(reply);
            }
        }
        let message = match serde_json::from_slice::<ErrorReply>(&bytes) {
            Ok(e) => e.error,
            Err(e) if ok.contains(&status) => {
                return Err(ProxyError::BadReply {
                    proxy,
                    call,
                    reason: e.to_string(),
                })
            }
            Err(_) => String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        };
        Err(ProxyError::Refused {
            proxy,
            call,
            status: status.as_u16(),
            message,
        })
    }

    /// Sends `call` ("POST /hold") on a fresh connection: (status, body).
    async fn exchange(
        &self,
        call: &str,
        run: Option<&str>,
        body: Option<&impl Serialize>,
    ) -> Result<(StatusCode, Bytes), String> {
        let (method, path) = call.split_once(' ').expect("calls are written \"METHOD /path\"");
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let body = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).map_err(|e| e.to_string())?),
            None => Bytes::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(t) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {}", t.expose()));
        }
        if let Some(run) = run {
            request = request.header(RUN_HEADER, run);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let tcp = match self.connect_to {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect(&self.authority).await,
        }
        .map_err(|e| e.to_string())?;
        match &self.tls {
            None => send(tcp, request).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                send(stream, request).await
            }
        }
    }
}

/// One request on a fresh connection: (status, body).
async fn send(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let result = match sender.send_request(request).await {
        Ok(r) => {
            let status = r.status();
            Limited::new(r.into_body(), MAX_REPLY)
                .collect()
                .await
                .map(|b| (status, b.to_bytes()))
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    driver.abort();
    result
}

/// The host of `host:port` (`[v6]:port` included).
fn host_of(authority: &str) -> &str {
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl ProxyControl for RemoteProxy {
    fn name(&self) -> String {
        format!("proxy {}", self.url)
    }

    fn status(&self) -> BoxFuture<'_, Result<StatusReply, ProxyError>> {
        Box::pin(self.call("GET /status", None, None::<&()>, &[StatusCode::OK], QUICK_CALL))
    }

    fn prepare<'a>(
        &'a self,
        run: &'a str,
        target: Side,
        budget: Duration,
    ) -> BoxFuture<'a, Result<PrepareReply, ProxyError>> {
        let body = PrepareRequest { target };
        // 409 with a PrepareReply: not every session got a standby (best effort);
        // 409 with an ErrorReply: the proxy refused.
        let ok = [StatusCode::OK, StatusCode::CONFLICT];
        Box::pin(async move {
            self.call("POST /prepare", Some(run), Some(&body), &ok, budget + QUICK_CALL)
                .await
        })
    }

    fn hold<'a>(&'a self, run: &'a str) -> BoxFuture<'a, Result<HoldReply, ProxyError>> {
        let body = HoldRequest { drain: false };
        Box::pin(async move {
            self.call("POST /hold", Some(run), Some(&body), &[StatusCode::OK], QUICK_CALL)
                .await
        })
    }

    fn drain<'a>(&'a self, run: &'a str, budget: Duration) -> BoxFuture<'a, Result<HoldReply, ProxyError>> {
        // 409: held but not drained; the reply says how far it got.
        let ok = [StatusCode::OK, StatusCode::CONFLICT];
        Box::pin(async move {
            self.call("POST /drain", Some(run), None::<&()>, &ok, budget + QUICK_CALL)
                .await
        })
    }

    fn route<'a>(
        &'a self,
        run: &'a str,
        target: Side,
        budget: Duration,
    ) -> BoxFuture<'a, Result<RouteReply, ProxyError>> {
        let body = RouteRequest { target, force: false };
        Box::pin(async move {
            self.call(
                "POST /route",
                Some(run),
                Some(&body),
                &[StatusCode::OK],
                budget + QUICK_CALL,
            )
            .await
        })
    }

    fn resume<'a>(&'a self, run: &'a str) -> BoxFuture<'a, Result<ResumeReply, ProxyError>> {
        Box::pin(self.call("POST /resume", Some(run), None::<&()>, &[StatusCode::OK], QUICK_CALL))
    }

    fn report_phase(&self, update: PhaseUpdate) -> BoxFuture<'_, Result<(), ProxyError>> {
        Box::pin(async move {
            self.call::<serde::de::IgnoredAny>("POST /phase", None, Some(&update), &[StatusCode::OK], QUICK_CALL)
                .await
                .map(|_| ())
        })
    }
}

/// Sends the switchover's phase reports to every proxy in the background, in
/// order per proxy, so that reporting never adds a round trip to the hold.
pub(crate) struct PhaseReporter {
    queues: Vec<tokio::sync::mpsc::UnboundedSender<PhaseUpdate>>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl PhaseReporter {
    /// One queue and one sending task per proxy.
    pub(crate) fn new(proxies: &[Arc<dyn ProxyControl>]) -> PhaseReporter {
        let (queues, senders) = proxies
            .iter()
            .map(|p| {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PhaseUpdate>();
                let p = p.clone();
                let task = tokio::spawn(async move {
                    while let Some(update) = rx.recv().await {
                        if let Err(e) = p.report_phase(update).await {
                            // Only /status and the metrics miss it; the switchover goes on.
                            tracing::debug!("phase report: {e}");
                        }
                    }
                });
                (tx, task)
            })
            .unzip();
        PhaseReporter { queues, senders }
    }

    /// Queues `update` for every proxy.
    pub(crate) fn report(&self, update: PhaseUpdate) {
        for q in &self.queues {
            let _ = q.send(update.clone());
        }
    }

    /// Waits (up to a few seconds) until every queued report was delivered.
    pub(crate) async fn flush(self) {
        drop(self.queues);
        let all = futures_util::future::join_all(self.senders);
        let _ = tokio::time::timeout(QUICK_CALL, all).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Option<AdminToken> {
        AdminToken::new("a-token-long-enough-for-the-check-0123")
    }

    #[test]
    fn peer_urls_are_a_scheme_and_host_port() {
        assert!(RemoteProxy::new("http://10.0.0.2:9187", None, None).is_ok());
        assert!(RemoteProxy::new("http://10.0.0.2:9187/", None, None).is_ok());
        assert!(RemoteProxy::new("http://10.0.0.2:9187/admin", None, None).is_err());
        assert!(RemoteProxy::new("10.0.0.2:9187", None, None).is_err());
    }

    #[test]
    fn the_token_crosses_a_network_only_over_tls() {
        let token = token();
        for loopback in ["http://127.0.0.1:9187", "http://localhost:9187", "http://[::1]:9187"] {
            assert!(RemoteProxy::new(loopback, token.clone(), None).is_ok(), "{loopback}");
        }
        let e = RemoteProxy::new("http://10.0.0.2:9187", token.clone(), None)
            .err()
            .unwrap();
        assert!(e.contains("plain text") && e.contains("https://"), "{e}");
        let e = RemoteProxy::new("https://10.0.0.2:9187", token, None).err().unwrap();
        assert!(e.contains("admin_tls_ca_file"), "{e}");
    }
}

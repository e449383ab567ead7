//! The admin HTTP API, serving the types of `pgcutover_api`: `GET /status`,
//! `GET /metrics`, and the mutating `POST /prepare`, `/hold`, `/route`, `/resume`,
//! `/phase` and `/switchover`, which need `Authorization: Bearer <token>` with the
//! token from `admin_token_file`. Every answer but `/metrics` is JSON.

use crate::control::{Call, Caller, Control};
use crate::guesses::Guesses;
use crate::{Shared, StartError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use pgcutover_api::{
    ErrorReply, HoldReply, HoldRequest, PhaseUpdate, PrepareReply, PrepareRequest, ReadyReply, RouteReply,
    RouteRequest, SwitchoverRequest, RUN_HEADER,
};
use pgcutover_config::{AdminToken, Config, HumanDuration};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// Largest request body accepted (the bodies are tiny JSON objects).
const MAX_BODY: usize = 4096;

/// Admin connections served at once; more are closed at accept. The admin API
/// shares the process's file descriptors with the PostgreSQL listener, so idle or
/// slow admin connections must not be able to starve the data path.
const MAX_CONNECTIONS: usize = 64;

/// Time a caller has to send its request headers, and then its body.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound admin listener, the token mutating calls must present, and the TLS
/// it serves with, if configured.
pub(crate) struct AdminServer {
    listener: TcpListener,
    token: Option<AdminToken>,
    tls: Option<TlsAcceptor>,
}

/// Every endpoint, parsed from the method and path before anything else happens:
/// a path is served only by the arm written for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Status,
    Ready,
    Metrics,
    Prepare,
    Hold,
    Drain,
    Route,
    Resume,
    Phase,
    Switchover,
}

/// Why a request names no endpoint.
enum Unroutable {
    NotFound,
    WrongMethod(&'static str),
}

const ENDPOINTS: &str = "GET /status, GET /ready, GET /metrics, POST /switchover, POST /prepare, POST /hold, POST /drain, POST /route, POST /resume, POST /phase";

impl Endpoint {
    fn parse(method: &Method, path: &str) -> Result<Endpoint, Unroutable> {
        let (endpoint, wants) = match path {
            "/status" => (Endpoint::Status, Method::GET),
            "/ready" => (Endpoint::Ready, Method::GET),
            "/metrics" => (Endpoint::Metrics, Method::GET),
            "/prepare" => (Endpoint::Prepare, Method::POST),
            "/hold" => (Endpoint::Hold, Method::POST),
            "/drain" => (Endpoint::Drain, Method::POST),
            "/route" => (Endpoint::Route, Method::POST),
            "/resume" => (Endpoint::Resume, Method::POST),
            "/phase" => (Endpoint::Phase, Method::POST),
            "/switchover" => (Endpoint::Switchover, Method::POST),
            _ => return Err(Unroutable::NotFound),
        };
        if *method == wants {
            Ok(endpoint)
        } else {
            Err(Unroutable::WrongMethod(if wants == Method::GET {
                "GET"
            } else {
                "POST"
            }))
        }
    }

    fn mutates(self) -> bool {
        !matches!(self, Endpoint::Status | Endpoint::Ready | Endpoint::Metrics)
    }

    /// The call a switchover's lease guards (see [`crate::control::lease`]).
    fn lease_call(self) -> Option<Call> {
        match self {
            Endpoint::Prepare => Some(Call::Prepare),
            Endpoint::Hold => Some(Call::Hold),
            Endpoint::Drain => Some(Call::Drain),
            Endpoint::Route => Some(Call::Route),
            Endpoint::Resume => Some(Call::Resume),
            Endpoint::Status | Endpoint::Ready | Endpoint::Metrics | Endpoint::Phase | Endpoint::Switchover => None,
        }
    }
}

impl AdminServer {
    /// Binds `admin_listen` and reads the token, so problems surface at start.
    pub(crate) async fn bind(config: &Config) -> Result<AdminServer, StartError> {
        let token = AdminToken::load_optional(config.proxy.admin_token_file.as_deref())?;
        let tls = crate::tls::admin_acceptor(&config.proxy)?;
        let addr = config.proxy.admin_listen;
        // Callers send the token with every mutating call: over plain HTTP anyone on
        // the network path could take it and then hold, route or switch every proxy.
        if token.is_some() && tls.is_none() && !addr.ip().is_loopback() {
            return Err(StartError::AdminPlaintext { addr });
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::AdminBind { addr, source })?;
        Ok(AdminServer { listener, token, tls })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves requests until the task is aborted.
    pub(crate) async fn serve(self, shared: Arc<Shared>) {
        info!(admin = %self.local_addr(), mutating = self.token.is_some(), https = self.tls.is_some(), "admin API ready");
        let token = Arc::new(Gate {
            token: self.token,
            guesses: Guesses::new(TOKEN_GUESSES, TOKEN_GUESS_WINDOW),
        });
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok((tcp, peer)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!(%peer, "admin connection refused: {MAX_CONNECTIONS} already open");
                continue;
            };
            let shared = shared.clone();
            let token = token.clone();
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |req| handle(shared.clone(), token.clone(), req, peer));
                let served = match tls {
                    None => serve_connection(tcp, service).await,
                    // The handshake gets the same bound as the headers.
                    Some(tls) => match tokio::time::timeout(REQUEST_READ_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_connection(stream, service).await,
                        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                        Err(_) => Err(format!("no TLS handshake within {REQUEST_READ_TIMEOUT:?}")),
                    },
                };
                if let Err(e) = served {
                    debug!(%peer, "admin connection: {e}");
                }
            });
        }
    }
}

/// One request per connection, headers within the timeout: a caller that stalls
/// is dropped instead of holding a descriptor.
async fn serve_connection<S>(io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static, service: S) -> Result<(), String>
where
    S: hyper::service::Service<Request<Incoming>, Response = Reply, Error = Infallible>,
    S::Future: Send + 'static,
{
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_READ_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(|e| e.to_string())
}

type Reply = Response<Full<Bytes>>;

async fn handle(
    shared: Arc<Shared>,
    gate: Arc<Gate>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Reply, Infallible> {
    let endpoint = match Endpoint::parse(req.method(), req.uri().path()) {
        Ok(e) => e,
        Err(Unroutable::NotFound) => {
            let message = format!(
                "no such endpoint: {} {}; the endpoints are {ENDPOINTS}",
                req.method(),
                req.uri().path()
            );
            return Ok(error(StatusCode::NOT_FOUND, message));
        }
        Err(Unroutable::WrongMethod(wants)) => {
            let message = format!("{} takes {wants}", req.uri().path());
            return Ok(error(StatusCode::METHOD_NOT_ALLOWED, message));
        }
    };
    let presented = req.headers().contains_key(hyper::header::AUTHORIZATION);
    if presented && gate.guesses.over(peer.ip()) {
        let message = format!(
            "too many wrong admin tokens from {}: refused for up to {TOKEN_GUESS_WINDOW:?}",
            peer.ip()
        );
        return Ok(error(StatusCode::TOO_MANY_REQUESTS, message));
    }
    let authorized = authorize(&gate.token, &req);
    if presented && authorized == Err(Refusal::WrongToken) && gate.guesses.failed(peer.ip()) {
        warn!(%peer, "admin API: {TOKEN_GUESSES} wrong tokens within {TOKEN_GUESS_WINDOW:?}: this address is refused for the rest of that time");
    }
    let run = req
        .headers()
        .get(RUN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if endpoint.mutates() {
        if let Err(refusal) = authorized {
            if refusal == Refusal::WrongToken {
                warn!(%peer, "admin API: {} {} refused: missing or wrong token", req.method(), req.uri().path());
            }
            return Ok(refusal.reply());
        }
    }
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(REQUEST_READ_TIMEOUT, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let message = format!("cannot read the request body: {e}");
            return Ok(error(StatusCode::BAD_REQUEST, message));
        }
        Err(_) => {
            let message = format!("the request body did not arrive within {REQUEST_READ_TIMEOUT:?}");
            return Ok(error(StatusCode::REQUEST_TIMEOUT, message));
        }
    };
    Ok(serve(&shared, endpoint, authorized.is_ok(), run.as_deref(), &body).await)
}

/// Answers a routed, authorized request whose body has been read. `run` is the
/// switchover run making it (the run header), if any.
async fn serve(shared: &Shared, endpoint: Endpoint, authorized: bool, run: Option<&str>, body: &[u8]) -> Reply {
    let control = &shared.control;
    if let Some(call) = endpoint.lease_call() {
        let caller = run.map_or(Caller::Operator, Caller::Run);
        if let Err(e) = control.admit(caller, call) {
            return error(StatusCode::CONFLICT, e.to_string());
        }
    }
    match endpoint {
        Endpoint::Status => {
            let mut status = control.status_reply();
            if !authorized {
                status.server_pids = None;
            }
            json(StatusCode::OK, &status)
        }
        Endpoint::Ready => ready(shared),
        Endpoint::Metrics => metrics(shared),
        Endpoint::Prepare => match parse_body::<PrepareRequest>(body, "{\"target\": \"green\"}") {
            Ok(r) => prepare(shared, r).await,
            Err(refusal) => *refusal,
        },
        Endpoint::Hold => {
            let text: &[u8] = if body.is_empty() { b"{}" } else { body };
            match parse_body::<HoldRequest>(text, "{\"drain\": false} (optional)") {
                Ok(HoldRequest { drain: true }) => drain(control, true).await,
                Ok(HoldRequest { drain: false }) => {
                    control.hold();
                    json(StatusCode::OK, &control.hold_reply())
                }
                Err(refusal) => *refusal,
            }
        }
        Endpoint::Drain => drain(control, false).await,
        Endpoint::Route => match parse_body::<RouteRequest>(body, "{\"target\": \"green\"}") {
            Ok(r) if run.is_none() && !r.force => error(
                StatusCode::CONFLICT,
                "a raw POST /route skips the fence, the catch-up and the sequence sync, so writes can be lost: use POST /switchover, or send {\"target\": ..., \"force\": true} if you mean it".into(),
            ),
            Ok(r) => route(shared, r).await,
            Err(refusal) => *refusal,
        },
        Endpoint::Resume => resume(control),
        Endpoint::Phase => match parse_body::<PhaseUpdate>(body, "{\"phase\": \"fence\"}") {
            Ok(update) => json(StatusCode::OK, &control.record_phase(&update)),
            Err(refusal) => *refusal,
        },
        Endpoint::Switchover => {
            let example = "{\"dry_run\": true, \"timeout\": \"30s\"} (both optional)";
            let text: &[u8] = if body.is_empty() { b"{}" } else { body };
            match parse_body::<SwitchoverRequest>(text, example) {
                Ok(r) => switchover(shared, r).await,
                Err(refusal) => *refusal,
            }
        }
    }
}

/// The body as `T`, or a 400 that shows the expected form.
fn parse_body<T: DeserializeOwned>(body: &[u8], example: &str) -> Result<T, Box<Reply>> {
    pgcutover_api::parse_request(body).map_err(|e| {
        let message = format!("expected a JSON body like {example}: {e}");
        Box::new(error(StatusCode::BAD_REQUEST, message))
    })
}

/// 200 while this proxy should be given new clients, else 503 with the reason
/// (see `health.rs`); a load balancer's or Kubernetes' readiness probe.
fn ready(shared: &Shared) -> Reply {
    let route = shared.control.route().target;
    match shared.health.check(route) {
        Ok(()) => json(
            StatusCode::OK,
            &ReadyReply {
                ready: true,
                route,
                reason: None,
            },
        ),
        Err(why) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &ReadyReply {
                ready: false,
                route,
                reason: Some(why.to_string()),
            },
        ),
    }
}

fn metrics(shared: &Shared) -> Reply {
    let text = shared.metrics.render(
        &shared.registry,
        &shared.pool.idle_counts(),
        shared.control.is_held(),
        shared.control.route().target,
    );
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

async fn prepare(shared: &Shared, request: PrepareRequest) -> Reply {
    match shared
        .control
        .prepare(request.target, shared.config.switchover.timeout.0)
        .await
    {
        Ok(r) => {
            let code = if r.ready == r.sessions {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            json(code, &PrepareReply::from(r))
        }
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

/// Drains (holding first when `hold`); 409 when a session is still in a transaction.
async fn drain(control: &Arc<Control>, hold: bool) -> Reply {
    if hold {
        control.hold();
    }
    let report = control.drain_configured().await;
    let drained = report.drained;
    let mut reply = HoldReply::from(report);
    if drained {
        return json(StatusCode::OK, &reply);
    }
    // drain_policy = abort: stay held, the caller decides (resume or retry).
    reply.error = Some(format!(
        "{} session(s) still inside a transaction after drain_timeout; still held: POST /resume to let clients go on",
        reply.in_flight
    ));
    json(StatusCode::CONFLICT, &reply)
}

async fn route(shared: &Shared, request: RouteRequest) -> Reply {
    match shared
        .control
        .flip(request.target, shared.config.switchover.timeout.0)
        .await
    {
        Ok(r) => json(StatusCode::OK, &RouteReply::from(r)),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

fn resume(control: &Control) -> Reply {
    json(StatusCode::OK, &control.resume_reply())
}

async fn switchover(shared: &Shared, request: SwitchoverRequest) -> Reply {
    let Some(runner) = shared.switchover.get() else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "this proxy cannot run a switchover: it needs [green] and [replication] in its configuration".into(),
        );
    };
    let timeout = match request.timeout.as_deref().map(HumanDuration::parse).transpose() {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("POST /switchover: timeout: {e}")),
    };
    // Its own task: a client that gives up (an HTTP timeout, a closed curl) drops
    // this handler, and with it the run, were the run not detached from it.
    let report = match tokio::spawn(runner.run(request.dry_run, timeout)).await {
        Ok(report) => report,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("POST /switchover: the run failed: {e}"),
            )
        }
    };
    let code = if report.ok() {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    json(code, &report)
}

/// Why a request may not mutate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No `admin_token_file`: mutating calls are off.
    Disabled,
    /// No token, or not the configured one.
    WrongToken,
}

impl Refusal {
    fn reply(self) -> Reply {
        match self {
            Refusal::Disabled => error(
                StatusCode::FORBIDDEN,
                "mutating admin calls are disabled: set [proxy] admin_token_file to a file holding a token, then send Authorization: Bearer <token>".into(),
            ),
            Refusal::WrongToken => error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong Authorization: Bearer token (see [proxy] admin_token_file)".into(),
            ),
        }
    }
}

/// Wrong tokens an address may present per [`TOKEN_GUESS_WINDOW`]; beyond them
/// every request of its that carries a token is refused (429) until the window
/// ends, the right token included: guessing gets nowhere.
const TOKEN_GUESSES: u32 = 10;
/// See [`TOKEN_GUESSES`].
const TOKEN_GUESS_WINDOW: Duration = Duration::from_secs(60);

/// The admin token and who has been guessing it.
struct Gate {
    token: Option<AdminToken>,
    guesses: Guesses,
}

/// Whether the request carries the admin token.
fn authorize(token: &Option<AdminToken>, req: &Request<Incoming>) -> Result<(), Refusal> {
    let Some(expected) = token else {
        return Err(Refusal::Disabled);
    };
    let presented = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if expected.matches(presented) {
        Ok(())
    } else {
        Err(Refusal::WrongToken)
    }
}

fn json(code: StatusCode, body: &impl Serialize) -> Reply {
    let text = serde_json::to_vec(body).expect("admin replies serialise: plain data, string keys");
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(code: StatusCode, message: String) -> Reply {
    json(code, &ErrorReply { error: message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_has_its_own_endpoint_and_method() {
        use Endpoint::*;
        for (method, path, endpoint) in [
            (Method::GET, "/status", Status),
            (Method::GET, "/metrics", Metrics),
            (Method::POST, "/prepare", Prepare),
            (Method::POST, "/hold", Hold),
            (Method::POST, "/drain", Drain),
            (Method::POST, "/route", Route),
            (Method::POST, "/resume", Resume),
            (Method::POST, "/phase", Phase),
            (Method::POST, "/switchover", Switchover),
        ] {
            assert!(
                matches!(Endpoint::parse(&method, path), Ok(e) if e == endpoint),
                "{path}"
            );
            let other = if method == Method::GET {
                Method::POST
            } else {
                Method::GET
            };
            assert!(matches!(Endpoint::parse(&other, path), Err(Unroutable::WrongMethod(_))));
        }
        // Unknown paths route nowhere (no fall-through to a mutating arm).
        for path in ["/routes", "/", "/route/", "/hold?x"] {
            assert!(matches!(
                Endpoint::parse(&Method::POST, path),
                Err(Unroutable::NotFound)
            ));
        }
        assert!(!Status.mutates() && !Metrics.mutates() && Route.mutates() && Phase.mutates());
    }
}

//! The admin HTTP API: `GET /status`, and the mutating `POST /hold`, `POST /resume`,
//! `POST /route {"target": "green"}`, which need `Authorization: Bearer <token>` with
//! the token from `admin_token_file`. Every answer is JSON.

use crate::config::Config;
use crate::route::Target;
use crate::SwitchoverRequest;
use crate::{Shared, StartError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{debug, info};

/// Largest request body accepted (the only body is a tiny JSON object).
const MAX_BODY: usize = 4096;

/// The bound admin listener and the token mutating calls must present.
pub(crate) struct AdminServer {
    listener: TcpListener,
    token: Option<String>,
}

impl AdminServer {
    /// Binds `admin_listen` and reads the token, so problems surface at start.
    pub(crate) async fn bind(config: &Config) -> Result<AdminServer, StartError> {
        let token = match &config.proxy.admin_token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| StartError::AdminToken {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                let token = text.trim().to_owned();
                if token.len() < 16 {
                    return Err(StartError::AdminToken {
                        path: path.clone(),
                        reason: "the token must be at least 16 characters (e.g. openssl rand -hex 32)".into(),
                    });
                }
                Some(token)
            }
            None => None,
        };
        let addr = config.proxy.admin_listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::AdminBind { addr, source })?;
        Ok(AdminServer { listener, token })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves requests until the task is aborted.
    pub(crate) async fn serve(self, shared: Arc<Shared>) {
        info!(admin = %self.local_addr(), mutating = self.token.is_some(), "admin API ready");
        let token: Arc<Option<String>> = Arc::new(self.token);
        loop {
            let Ok((tcp, peer)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let shared = shared.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(shared.clone(), token.clone(), req));
                if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await {
                    debug!(%peer, "admin connection: {e}");
                }
            });
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    token: Arc<Option<String>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if method == Method::GET && path == "/status" {
        return Ok(reply(StatusCode::OK, status(&shared)));
    }
    if method == Method::GET && path == "/metrics" {
        let text = shared.metrics.render(&shared.registry, shared.control.is_held());
        let mut r = Response::new(Full::new(Bytes::from(text)));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        return Ok(r);
    }
    let mutating = ["/prepare", "/hold", "/resume", "/route", "/switchover"].contains(&path.as_str());
    if !mutating {
        return Ok(error(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint: {method} {path}; see GET /status, GET /metrics, POST /switchover, POST /prepare, POST /hold, POST /resume, POST /route"),
        ));
    }
    if method != Method::POST {
        return Ok(error(StatusCode::METHOD_NOT_ALLOWED, &format!("{path} takes POST")));
    }
    if let Some(refusal) = authorize(&token, &req) {
        return Ok(refusal);
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body: {e}"),
            ))
        }
    };
    let control = &shared.control;
    Ok(match path.as_str() {
        "/switchover" => {
            let Some(hook) = shared.switchover.get() else {
                return Ok(error(
                    StatusCode::NOT_IMPLEMENTED,
                    "this proxy cannot run a switchover: it needs [green] and [replication] in its configuration",
                ));
            };
            let request: SwitchoverRequest = match serde_json::from_slice(if body.is_empty() { b"{}" } else { &body }) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(error(
                        StatusCode::BAD_REQUEST,
                        &format!(
                        "POST /switchover takes an optional JSON body {{\"dry_run\": true, \"timeout\": \"30s\"}}: {e}"
                    ),
                    ))
                }
            };
            let (code, body) = hook(request).await;
            reply(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            )
        }
        "/hold" => {
            let report = control.hold_and_drain().await;
            let body = json!({
                "held": true,
                "drained": report.drained,
                "in_flight": report.in_flight,
                "sessions": report.sessions,
                "drain_ms": report.waited.as_secs_f64() * 1000.0,
            });
            if report.drained {
                reply(StatusCode::OK, body)
            } else {
                // drain_policy = abort: stay held, the caller decides (resume or retry).
                let mut body = body;
                body["error"] = json!(format!(
                    "{} session(s) still inside a transaction after drain_timeout; still held: POST /resume to let clients go on",
                    report.in_flight
                ));
                reply(StatusCode::CONFLICT, body)
            }
        }
        "/prepare" => {
            let Some(target) = target_of(&body) else {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "POST /prepare needs a JSON body {\"target\": \"green\"} or {\"target\": \"blue\"}",
                ));
            };
            match control.prepare(target, shared.config.switchover.timeout.0).await {
                Ok(r) => reply(
                    if r.ready == r.sessions {
                        StatusCode::OK
                    } else {
                        StatusCode::CONFLICT
                    },
                    json!({
                        "target": r.target.name(),
                        "ready": r.ready,
                        "sessions": r.sessions,
                        "prepare_ms": r.waited.as_secs_f64() * 1000.0,
                    }),
                ),
                Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
            }
        }
        "/resume" => {
            let held_ms = control.resume().map(|d| d.as_secs_f64() * 1000.0);
            reply(
                StatusCode::OK,
                json!({ "held": false, "route": control.route().target.name(), "held_ms": held_ms }),
            )
        }
        _ => {
            let Some(target) = target_of(&body) else {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "POST /route needs a JSON body {\"target\": \"blue\"} or {\"target\": \"green\"}",
                ));
            };
            match control.flip(target, shared.config.switchover.timeout.0).await {
                Ok(r) => reply(
                    StatusCode::OK,
                    json!({
                        "route": r.target.name(),
                        "epoch": r.epoch,
                        "moved": r.moved,
                        "not_moved": r.not_moved,
                        "flip_ms": r.waited.as_secs_f64() * 1000.0,
                    }),
                ),
                Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
            }
        }
    })
}

/// The `target` of a JSON body like `{"target": "green"}`.
fn target_of(body: &[u8]) -> Option<Target> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("target").and_then(Value::as_str).and_then(Target::parse))
}

/// None when the request may mutate; else the refusal to send.
fn authorize(token: &Option<String>, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let Some(expected) = token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "mutating admin calls are disabled: set [proxy] admin_token_file to a file holding a token, then send Authorization: Bearer <token>",
        ));
    };
    let presented = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant-time comparison: the token is a password.
    let same = presented.len() == expected.len()
        && presented
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        None
    } else {
        Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong Authorization: Bearer token (see [proxy] admin_token_file)",
        ))
    }
}

fn status(shared: &Shared) -> Value {
    let s = shared.control.status();
    json!({
        "route": s.route.target.name(),
        "epoch": s.route.epoch,
        "phase": shared.control.phase().unwrap_or(if s.held { "held" } else { "serving" }),
        "held_ms": s.held_ms,
        "held_clients": s.held_clients,
        "in_flight": s.in_flight,
        "clients": s.clients,
        "server_connections": { "blue": s.blue_servers, "green": s.green_servers },
        "server_pids": {
            "blue": shared.control.server_pids(Target::Blue),
            "green": shared.control.server_pids(Target::Green),
        },
    })
}

fn reply(code: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(code: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(code, json!({ "error": message }))
}

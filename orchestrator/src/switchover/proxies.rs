//! Driving proxy instances: the one in this process through its [`Control`], the
//! others through their admin API (a few JSON calls over plain HTTP/1.1).

use super::ProxyEndpoint;
use pgcutover_proxy::route::Target;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a proxy reports before a switchover.
#[derive(Debug, Clone)]
pub(crate) struct ProxyState {
    pub route: Target,
    pub in_flight: usize,
    /// Backend pids of its sessions on the side being fenced.
    pub server_pids: Vec<i32>,
}

/// The outcome of a hold: the drain result.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub drained: bool,
    pub in_flight: usize,
    pub sessions: usize,
}

/// The outcome of a route change.
#[derive(Debug, Clone)]
pub(crate) struct Routed {
    pub moved: usize,
    pub not_moved: usize,
}

impl ProxyEndpoint {
    /// For messages: "this proxy" or its URL.
    pub(crate) fn name(&self) -> String {
        match self {
            ProxyEndpoint::Local(_) => "this proxy".into(),
            ProxyEndpoint::Remote { url, .. } => format!("proxy {url}"),
        }
    }

    pub(crate) async fn state(&self, side: Target) -> Result<ProxyState, String> {
        match self {
            ProxyEndpoint::Local(c) => {
                let s = c.status();
                Ok(ProxyState {
                    route: s.route.target,
                    in_flight: s.in_flight,
                    server_pids: c.server_pids(side),
                })
            }
            ProxyEndpoint::Remote { .. } => {
                let v = self.call("GET", "/status", None, Duration::from_secs(5)).await?.1;
                let route = v["route"]
                    .as_str()
                    .and_then(Target::parse)
                    .ok_or("no route in /status")?;
                let pids = v["server_pids"][side.name()]
                    .as_array()
                    .map(|a| a.iter().filter_map(|p| p.as_i64()).map(|p| p as i32).collect())
                    .unwrap_or_default();
                Ok(ProxyState {
                    route,
                    in_flight: v["in_flight"].as_u64().unwrap_or(0) as usize,
                    server_pids: pids,
                })
            }
        }
    }

    /// Opens standby connections to `target` (before the hold; best effort).
    pub(crate) async fn prepare(&self, target: Target, timeout: Duration) -> Result<(), String> {
        match self {
            ProxyEndpoint::Local(c) => c.prepare(target, timeout).await.map(|_| ()).map_err(|e| e.to_string()),
            ProxyEndpoint::Remote { .. } => {
                let body = json!({ "target": target.name() });
                self.call("POST", "/prepare", Some(body), timeout + Duration::from_secs(5))
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Holds new transactions and waits for the drain (the proxy's own
    /// drain_timeout and policy).
    pub(crate) async fn hold(&self, budget: Duration) -> Result<Held, String> {
        match self {
            ProxyEndpoint::Local(c) => {
                let r = c.hold_and_drain().await;
                Ok(Held {
                    drained: r.drained,
                    in_flight: r.in_flight,
                    sessions: r.sessions,
                })
            }
            ProxyEndpoint::Remote { .. } => {
                let (code, v) = self.call("POST", "/hold", None, budget).await?;
                if code != 200 && code != 409 {
                    return Err(format!("POST /hold answered {code}: {v}"));
                }
                Ok(Held {
                    drained: v["drained"].as_bool().unwrap_or(false),
                    in_flight: v["in_flight"].as_u64().unwrap_or(0) as usize,
                    sessions: v["sessions"].as_u64().unwrap_or(0) as usize,
                })
            }
        }
    }

    /// Routes every session to `target` (held: each moves at its boundary).
    pub(crate) async fn route(&self, target: Target, timeout: Duration) -> Result<Routed, String> {
        match self {
            ProxyEndpoint::Local(c) => {
                let r = c.flip(target, timeout).await.map_err(|e| e.to_string())?;
                Ok(Routed {
                    moved: r.moved,
                    not_moved: r.not_moved,
                })
            }
            ProxyEndpoint::Remote { .. } => {
                let body = json!({ "target": target.name() });
                let (code, v) = self
                    .call("POST", "/route", Some(body), timeout + Duration::from_secs(5))
                    .await?;
                if code != 200 {
                    return Err(format!("POST /route answered {code}: {v}"));
                }
                Ok(Routed {
                    moved: v["moved"].as_u64().unwrap_or(0) as usize,
                    not_moved: v["not_moved"].as_u64().unwrap_or(0) as usize,
                })
            }
        }
    }

    /// Lets held transactions go on, wherever the route points.
    pub(crate) async fn resume(&self) -> Result<(), String> {
        match self {
            ProxyEndpoint::Local(c) => {
                c.resume();
                Ok(())
            }
            ProxyEndpoint::Remote { .. } => self
                .call("POST", "/resume", None, Duration::from_secs(5))
                .await
                .map(|_| ()),
        }
    }

    /// Shows the switchover's phase in this process's `/status`.
    pub(crate) fn set_phase(&self, phase: Option<&'static str>) {
        if let ProxyEndpoint::Local(c) = self {
            c.set_phase(phase);
        }
    }

    /// One admin API call: (status code, JSON body).
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(u16, Value), String> {
        let ProxyEndpoint::Remote { url, token } = self else {
            return Err("not a remote proxy".into());
        };
        tokio::time::timeout(timeout, http(url, token.as_deref(), method, path, body))
            .await
            .map_err(|_| format!("{method} {url}{path}: no answer within {timeout:?}"))?
            .map_err(|e| format!("{method} {url}{path}: {e}"))
    }
}

/// A minimal HTTP/1.1 client for the admin API (`http://host:port` only).
async fn http(
    url: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let authority = url
        .strip_prefix("http://")
        .ok_or("peers must be http:// URLs of a proxy's admin API")?
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(authority).await.map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP response: {:.80}", text))?;
    let payload = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let value = serde_json::from_str(payload).unwrap_or_else(|_| json!({ "text": payload }));
    if code == 401 || code == 403 {
        return Err(format!(
            "refused ({code}): {}",
            value["error"].as_str().unwrap_or("check the admin token")
        ));
    }
    Ok((code, value))
}

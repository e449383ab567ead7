//! Opening and logging into one server connection.

use crate::auth::ServerCredential;
use crate::stream::Stream;
use crate::wire::{Conn, WireError};
use bytes::{Bytes, BytesMut};
use pgcutover_api::Side;
use pgcutover_config::ServerTls;
use pgcutover_config::{PgUrl, ServerTlsMode};
use pgcutover_protocol::backend::{self, Authentication};
use pgcutover_protocol::build;
use pgcutover_protocol::frame::{parse_header, HEADER_LEN};
use pgcutover_protocol::md5::md5_response;
use pgcutover_protocol::scram::{ScramClient, ScramCredential, SCRAM_SHA_256};
use pgcutover_protocol::startup::{encode_ssl_request, encode_startup};
use pgcutover_protocol::CancelKey;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A database server clients can be routed to.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Which side it is, for messages and metrics.
    pub side: Side,
    /// Where it is.
    pub url: PgUrl,
}

/// Settings shared by every server login.
#[derive(Clone)]
pub struct LoginOptions {
    /// TLS policy and connector.
    pub tls: ServerTls,
    /// Bound on connect + TLS + login.
    pub timeout: Duration,
    /// Largest message accepted from the server.
    pub max_message_len: usize,
    /// Whether a server that asks for the password in clear gets it
    /// (`[proxy] server_cleartext_password`).
    pub cleartext_password: bool,
    /// Idle time before TCP keepalive probes (`[proxy] server_tcp_keepalive`).
    pub keepalive: Duration,
}

/// A server that vanishes without closing (a blackholed network, a host that
/// lost power) would hold its sessions forever: keepalive probes after
/// `idle`, every third of it, three times; and data unacknowledged for twice
/// `idle` gives up too.
fn keep_alive(tcp: &TcpStream, idle: Duration) -> std::io::Result<()> {
    let probes = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval((idle / 3).max(Duration::from_secs(1)))
        .with_retries(3);
    let socket = socket2::SockRef::from(tcp);
    socket.set_tcp_keepalive(&probes)?;
    socket.set_tcp_user_timeout(Some(idle * 2))
}

/// A logged-in server connection, ready for queries.
pub struct ServerConn {
    /// The framed connection; its read buffer may already hold bytes after ReadyForQuery.
    pub conn: Conn,
    /// The server's own cancel key (its real pid).
    pub key: CancelKey,
    /// The address it was reached at, where cancels go.
    pub addr: SocketAddr,
    /// ParameterStatus and NoticeResponse frames from the login, in order, for the
    /// client. Also where the parameters are kept (see [`params`](Self::params)):
    /// one allocation per connection instead of two strings per parameter.
    pub login_messages: BytesMut,
    /// When the login completed: a server whose postmaster has run longer than this
    /// connection did not restart under it.
    pub connected_at: std::time::Instant,
}

impl ServerConn {
    /// Every ParameterStatus it reported, in order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut rest = &self.login_messages[..];
        std::iter::from_fn(move || loop {
            let h = parse_header(rest, usize::MAX).ok().flatten()?;
            let (frame, tail) = rest.split_at(h.frame_len().min(rest.len()));
            rest = tail;
            if h.tag == backend::PARAMETER_STATUS {
                if let Ok(param) = backend::parse_parameter_status(&frame[HEADER_LEN..]) {
                    return Some(param);
                }
            }
        })
    }

    /// The server_version it reported at login.
    pub fn server_version(&self) -> &str {
        self.params()
            .find(|(name, _)| *name == "server_version")
            .map_or("", |(_, value)| value)
    }

    /// A parameter the server reported after login (a pooled connection's reset):
    /// the next client's login reports the value it has now, as a fresh login would.
    pub fn note_parameter(&mut self, name: &str, value: &str) {
        if self.params().any(|p| p == (name, value)) {
            return;
        }
        let mut old = std::mem::take(&mut self.login_messages);
        let mut replaced = false;
        while let Ok(Some(f)) = pgcutover_protocol::frame::decode_frame(&mut old, usize::MAX) {
            let same = f.tag == backend::PARAMETER_STATUS
                && backend::parse_parameter_status(&f.body).is_ok_and(|(n, _)| n == name);
            if same {
                build::parameter_status(&mut self.login_messages, name, value);
                replaced = true;
            } else {
                build::frame(&mut self.login_messages, f.tag, |b| b.extend_from_slice(&f.body));
            }
        }
        if !replaced {
            build::parameter_status(&mut self.login_messages, name, value);
        }
    }
}

/// Why a server connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// TCP connect failed.
    #[error("could not connect to {target} server at {addr}: {source}")]
    Connect {
        /// blue / green.
        target: &'static str,
        /// host:port.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Connect + login took longer than `server_connect_timeout`.
    #[error("timed out connecting to {target} server at {addr} after {secs:.1}s")]
    Timeout {
        /// blue / green.
        target: &'static str,
        /// host:port.
        addr: String,
        /// The budget.
        secs: f64,
    },
    /// TLS was required but refused or failed.
    #[error("TLS to {target} server at {addr} failed: {reason}")]
    Tls {
        /// blue / green.
        target: &'static str,
        /// host:port.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The server sent an ErrorResponse (bad database, bad password, too many
    /// connections...): forwarded to the client as is.
    #[error("server refused the login")]
    Rejected(Bytes),
    /// The proxy holds no secret the server's method can use.
    #[error("{message}")]
    Credential {
        /// What is missing.
        message: String,
        /// What to do.
        hint: String,
    },
    /// The server broke the protocol or the connection dropped.
    #[error("protocol error talking to {target} server: {reason}")]
    Protocol {
        /// blue / green.
        target: &'static str,
        /// What happened.
        reason: String,
    },
}

/// Connects to `backend` and logs in as the client's user with `params` (the client's
/// startup parameters) and `credential`.
pub async fn connect(
    backend: &Backend,
    opts: &LoginOptions,
    params: &[(String, String)],
    credential: &ServerCredential,
) -> Result<ServerConn, LoginError> {
    let addr = backend.url.host_port();
    match tokio::time::timeout(opts.timeout, connect_inner(backend, opts, params, credential)).await {
        Ok(r) => r,
        Err(_) => Err(LoginError::Timeout {
            target: backend.side.name(),
            addr,
            secs: opts.timeout.as_secs_f64(),
        }),
    }
}

async fn connect_inner(
    backend: &Backend,
    opts: &LoginOptions,
    params: &[(String, String)],
    credential: &ServerCredential,
) -> Result<ServerConn, LoginError> {
    let target = backend.side.name();
    let addr_text = backend.url.host_port();
    let connect_err = |source| LoginError::Connect {
        target,
        addr: addr_text.clone(),
        source,
    };
    let tcp = TcpStream::connect((backend.url.host.as_str(), backend.url.port))
        .await
        .map_err(connect_err)?;
    tcp.set_nodelay(true).map_err(connect_err)?;
    keep_alive(&tcp, opts.keepalive).map_err(connect_err)?;
    let addr = tcp.peer_addr().map_err(connect_err)?;
    let stream = negotiate_tls(tcp, backend, &opts.tls).await?;
    let mut conn = Conn::new(stream, opts.max_message_len);

    let protocol = |e: WireError| LoginError::Protocol {
        target,
        reason: e.to_string(),
    };
    encode_startup(
        params
            .iter()
            .filter(|(k, _)| !k.starts_with("_pq_."))
            .map(|(k, v)| (k.as_str(), v.as_str())),
        &mut conn.wbuf,
    );
    conn.flush().await.map_err(|e| protocol(e.into()))?;
    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    authenticate(&mut conn, target, user, credential, opts.cleartext_password).await?;

    let (login_messages, key) = read_login_reply(&mut conn, target).await?;
    Ok(ServerConn {
        conn,
        key,
        addr,
        // Kept for the connection's life: no spare capacity from growing it.
        login_messages: BytesMut::from(&login_messages[..]),
        connected_at: std::time::Instant::now(),
    })
}

/// Reads what the server sends after authentication: its parameters and notices
/// (kept for the client), its cancel key, up to ReadyForQuery.
async fn read_login_reply(conn: &mut Conn, target: &'static str) -> Result<(BytesMut, CancelKey), LoginError> {
    let protocol = |e: WireError| LoginError::Protocol {
        target,
        reason: e.to_string(),
    };
    let mut login_messages = BytesMut::new();
    let mut key = None;
    let read = super::round_trip(conn, 1, |_, f| {
        match f.tag {
            backend::PARAMETER_STATUS | backend::NOTICE_RESPONSE => {
                build::frame(&mut login_messages, f.tag, |b| b.extend_from_slice(&f.body))
            }
            backend::BACKEND_KEY_DATA => {
                key = Some(
                    backend::parse_backend_key_data(&f.body).map_err(|e| LoginError::Protocol {
                        target,
                        reason: e.to_string(),
                    })?,
                );
            }
            backend::ERROR_RESPONSE => return Err(LoginError::Rejected(f.body)),
            // NegotiateProtocolVersion cannot matter: we ask for 3.0 without _pq_ options.
            backend::READY_FOR_QUERY | backend::NEGOTIATE_PROTOCOL_VERSION => {}
            other => {
                return Err(LoginError::Protocol {
                    target,
                    reason: format!("unexpected message type {:?} during login", char::from(other)),
                })
            }
        }
        Ok(())
    });
    read.await.map_err(protocol)??;
    let key = key.ok_or_else(|| LoginError::Protocol {
        target,
        reason: "server sent no BackendKeyData".into(),
    })?;
    Ok((login_messages, key))
}

async fn negotiate_tls(mut tcp: TcpStream, backend: &Backend, tls: &ServerTls) -> Result<Stream, LoginError> {
    let target = backend.side.name();
    let addr = backend.url.host_port();
    let Some(connector) = tls.connector() else {
        return Ok(Stream::Plain(tcp));
    };
    let tls_err = |reason: String| LoginError::Tls {
        target,
        addr: addr.clone(),
        reason,
    };
    let mut req = BytesMut::new();
    encode_ssl_request(&mut req);
    tcp.write_all(&req).await.map_err(|e| tls_err(e.to_string()))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(|e| tls_err(e.to_string()))?;
    match answer[0] {
        b'S' => {
            let name = ServerTls::server_name(&backend.url.host).map_err(tls_err)?;
            let stream = connector.connect(name, tcp).await.map_err(|e| tls_err(e.to_string()))?;
            Ok(Stream::ServerTls(Box::new(stream)))
        }
        b'N' if tls.mode == ServerTlsMode::Prefer => Ok(Stream::Plain(tcp)),
        b'N' => Err(tls_err(
            "the server does not accept TLS; enable ssl on the server or set server_tls_mode = \"prefer\"".into(),
        )),
        other => Err(tls_err(format!("unexpected answer {other:#04x} to SSLRequest"))),
    }
}

async fn authenticate(
    conn: &mut Conn,
    target: &'static str,
    user: &str,
    credential: &ServerCredential,
    cleartext_allowed: bool,
) -> Result<(), LoginError> {
    let protocol = |reason: String| LoginError::Protocol { target, reason };
    let missing = |method: &str| {
        LoginError::Credential {
        message: format!("the {target} server asks for {method} authentication for user \"{user}\", and pgcutover holds no secret that answers it"),
        hint: match credential {
            ServerCredential::ScramKeys(_) => "SCRAM pass-through answers SCRAM only: configure the server to use scram-sha-256 for this user, or put the plain password in auth_file".into(),
            ServerCredential::Md5(_) => "an md5 secret answers md5 only: put the plain password in auth_file, or use md5 on the server".into(),
            _ => "put the user's plain password or SCRAM verifier in auth_file".into(),
        },
    }
    };
    let mut scram: Option<ScramClient> = None;
    // Set once the server's SCRAM signature checked out: only then has it proven it
    // knows the password, and only then may it say AuthenticationOk.
    let mut server_proven = false;
    loop {
        let f = conn.read_frame().await.map_err(|e| protocol(e.to_string()))?;
        if f.tag == backend::ERROR_RESPONSE {
            return Err(LoginError::Rejected(f.body));
        }
        if f.tag != backend::AUTHENTICATION {
            return Err(protocol(format!(
                "expected an authentication request, got message type {:?}",
                char::from(f.tag)
            )));
        }
        match backend::parse_authentication(&f.body).map_err(|e| protocol(e.to_string()))? {
            Authentication::Ok if scram.is_some() && !server_proven => {
                return Err(protocol(
                    "the server said AuthenticationOk in the middle of SCRAM, before proving it knows the password: refused (something between pgcutover and the server may be impersonating it)".into(),
                ))
            }
            Authentication::Ok => return Ok(()),
            Authentication::CleartextPassword if !cleartext_allowed => {
                return Err(LoginError::Credential {
                    message: format!("the {target} server asks for user \"{user}\"'s password in clear text, and pgcutover does not send it"),
                    hint: "use scram-sha-256 in the server's pg_hba.conf; if it must be `password` (over TLS), set [proxy] server_cleartext_password = true".into(),
                })
            }
            Authentication::CleartextPassword => match credential {
                ServerCredential::Password(p) => build::password_message(&mut conn.wbuf, p.as_bytes()),
                _ => return Err(missing("password")),
            },
            Authentication::Md5Password { salt } => {
                let stored = match credential {
                    ServerCredential::Password(p) => pgcutover_protocol::md5::md5_secret(user, p),
                    ServerCredential::Md5(h) => h.clone(),
                    _ => return Err(missing("md5")),
                };
                let response =
                    md5_response(&stored, salt).ok_or_else(|| protocol("stored md5 secret is malformed".into()))?;
                build::password_message(&mut conn.wbuf, response.as_bytes());
            }
            Authentication::Sasl(mechanisms) => {
                if !mechanisms.contains(SCRAM_SHA_256) {
                    return Err(protocol("server offers no SASL mechanism pgcutover supports".into()));
                }
                let cred = match credential {
                    ServerCredential::Password(p) => ScramCredential::Password(p.clone()),
                    ServerCredential::ScramKeys(k) => ScramCredential::Keys(k.clone()),
                    _ => return Err(missing("SCRAM-SHA-256")),
                };
                let mut nonce = [0u8; 18];
                getrandom::fill(&mut nonce).expect("the OS random source is available");
                let client = ScramClient::new(cred, &nonce);
                build::sasl_initial_response(&mut conn.wbuf, SCRAM_SHA_256, &client.client_first());
                scram = Some(client);
            }
            Authentication::SaslContinue(data) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| protocol("SASLContinue before SASL".into()))?;
                let reply = client.handle_server_first(data).map_err(|e| protocol(e.to_string()))?;
                build::sasl_response(&mut conn.wbuf, &reply);
            }
            Authentication::SaslFinal(data) => {
                let client = scram.as_mut().ok_or_else(|| protocol("SASLFinal before SASL".into()))?;
                client
                    .handle_server_final(data)
                    .map_err(|e| protocol(format!("the server's SCRAM signature is wrong: {e}")))?;
                server_proven = true;
            }
            Authentication::Unsupported(code) => {
                return Err(LoginError::Credential {
                    message: format!(
                        "the {target} server asks for authentication method {code}, which pgcutover does not support"
                    ),
                    hint: "use scram-sha-256, md5 or trust for connections from pgcutover in the server's pg_hba.conf"
                        .into(),
                })
            }
        }
        conn.flush().await.map_err(|e| protocol(e.to_string()))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgcutover_config::{ProxyConfig, ServerTlsMode};
    use tokio::net::TcpListener;

    /// A fake server on loopback: reads the startup packet, then plays `script`
    /// (each step: bytes to send, then whether to read one message back). Returns
    /// every byte the proxy sent after its startup packet.
    async fn fake_server(script: Vec<(Vec<u8>, bool)>) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut len = [0u8; 4];
            tcp.read_exact(&mut len).await.unwrap();
            let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            tcp.read_exact(&mut startup).await.unwrap();
            let mut received = Vec::new();
            for (send, read) in script {
                tcp.write_all(&send).await.unwrap();
                if read {
                    let mut header = [0u8; 5];
                    if tcp.read_exact(&mut header).await.is_err() {
                        break;
                    }
                    let mut body =
                        vec![0u8; u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4];
                    tcp.read_exact(&mut body).await.unwrap();
                    received.extend_from_slice(&header);
                    received.extend_from_slice(&body);
                }
            }
            // Whatever else the proxy sends before it hangs up.
            let _ = tokio::time::timeout(Duration::from_millis(200), tcp.read_to_end(&mut received)).await;
            received
        });
        (port, task)
    }

    fn auth_request(code: i32, data: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&(8 + data.len() as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(data);
        m
    }

    async fn log_in(
        port: u16,
        credential: ServerCredential,
        cleartext_password: bool,
    ) -> Result<ServerConn, LoginError> {
        let cfg = ProxyConfig {
            server_tls_mode: ServerTlsMode::Disable,
            ..ProxyConfig::default()
        };
        let backend = Backend {
            side: Side::Blue,
            url: PgUrl::parse(&format!("postgres://127.0.0.1:{port}/app")).unwrap(),
        };
        let opts = LoginOptions {
            tls: ServerTls::new(&cfg).unwrap(),
            timeout: Duration::from_secs(5),
            max_message_len: 1 << 20,
            cleartext_password,
            keepalive: Duration::from_secs(30),
        };
        let params = [
            ("user".to_owned(), "app".to_owned()),
            ("database".to_owned(), "app".to_owned()),
        ];
        connect(&backend, &opts, &params, &credential).await
    }

    #[tokio::test]
    async fn a_server_asking_for_the_password_in_clear_does_not_get_it_unless_configured() {
        let (port, server) = fake_server(vec![(auth_request(3, &[]), true)]).await;
        let e = log_in(port, ServerCredential::Password("top-secret".into()), false)
            .await
            .err()
            .expect("refused");
        assert!(matches!(e, LoginError::Credential { .. }), "{e}");
        assert!(e.to_string().contains("clear text"), "{e}");
        let sent = server.await.unwrap();
        assert!(
            !sent.windows(10).any(|w| w == b"top-secret"),
            "the password went out: {sent:?}"
        );

        let (port, server) = fake_server(vec![(auth_request(3, &[]), true)]).await;
        let _ = log_in(port, ServerCredential::Password("top-secret".into()), true).await;
        let sent = server.await.unwrap();
        assert!(
            sent.windows(10).any(|w| w == b"top-secret"),
            "configured: sent {sent:?}"
        );
    }

    #[tokio::test]
    async fn server_connections_give_up_on_a_silent_server_within_twice_the_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        keep_alive(&tcp, Duration::from_secs(30)).unwrap();
        let socket = socket2::SockRef::from(&tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn authentication_ok_in_the_middle_of_scram_is_refused() {
        let (port, _server) = fake_server(vec![
            (auth_request(10, b"SCRAM-SHA-256\0\0"), true),
            (auth_request(0, &[]), false),
        ])
        .await;
        let e = log_in(port, ServerCredential::Password("top-secret".into()), false)
            .await
            .err()
            .expect("an unproven server is refused");
        assert!(e.to_string().contains("AuthenticationOk in the middle of SCRAM"), "{e}");
    }
}

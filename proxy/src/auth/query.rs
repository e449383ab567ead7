//! `auth_user` + `auth_query`: secrets looked up on the active server, cached.
//!
//! A lookup happens before the client has proven anything, so it is bounded every
//! way an anonymous client could push it: one server connection at a time, kept
//! open and reused (not a login per unknown user name); a fixed database and a
//! fixed `search_path` (a database owner's `ALTER DATABASE ... SET search_path`
//! cannot put another `pg_shadow` in front); a cache of bounded size whose entries
//! expire; and cache misses rate-limited per client address.

use super::secret::{Secret, ServerCredential};
use crate::server::{self, round_trip, Backend, LoginError, LoginOptions, ServerConn};
use pgcutover_api::Side;
use pgcutover_protocol::{backend, build};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Most secrets cached; past it expired entries go first, then the oldest.
const MAX_CACHED: usize = 10_000;

/// Cache misses one client address may cause: a burst of this many...
const MISS_BURST: f64 = 20.0;
/// ...refilled at this many per second.
const MISSES_PER_SECOND: f64 = 5.0;
/// Addresses tracked by the rate limit at most (idle ones are forgotten first).
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// The startup option that pins the lookup's name resolution to the catalog.
const FIXED_SEARCH_PATH: &str = "-c search_path=pg_catalog";

/// Looks secrets up with `auth_query`, logging in as `auth_user`.
pub struct AuthQuery {
    user: String,
    credential: ServerCredential,
    query: String,
    dbname: String,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Option<Secret>, Instant)>>,
    misses: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    /// The one lookup connection, and the side it is on; lookups take turns on it.
    conn: tokio::sync::Mutex<Option<(Side, ServerConn)>>,
}

/// Why a secret could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// auth_user could not log in.
    #[error("auth_user \"{user}\" could not log in to run auth_query: {source}")]
    Login {
        /// The auth_user.
        user: String,
        /// Why.
        source: LoginError,
    },
    /// The query failed or returned something unusable.
    #[error("auth_query failed: {0}")]
    Query(String),
    /// The client's address caused too many lookups of users not in the cache.
    #[error("{0} looked up too many unknown users; refused for now")]
    RateLimited(IpAddr),
}

impl AuthQuery {
    /// Sets up lookups as `user` with `credential` (from auth_file), in `dbname`.
    pub fn new(user: String, credential: ServerCredential, query: String, dbname: String, ttl: Duration) -> Self {
        AuthQuery {
            user,
            credential,
            query,
            dbname,
            ttl,
            cache: Mutex::new(HashMap::new()),
            misses: Mutex::new(HashMap::new()),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, (Option<Secret>, Instant)>> {
        // A cache entry is written whole: a poisoned lock still holds usable entries.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The secret of `user` (None: no such role, or it has no password), from the
    /// cache while fresh, else from `backend`, for a client at `peer`.
    pub async fn lookup(
        &self,
        backend: &Backend,
        opts: &LoginOptions,
        user: &str,
        peer: IpAddr,
    ) -> Result<Option<Secret>, LookupError> {
        if let Some((secret, at)) = self.cache().get(user) {
            if at.elapsed() < self.ttl {
                return Ok(secret.clone());
            }
        }
        if !self.allow_miss(peer) {
            return Err(LookupError::RateLimited(peer));
        }
        let secret = self.fetch(backend, opts, user).await?;
        self.remember(user, secret.clone());
        Ok(secret)
    }

    /// Forgets a cached secret, so that a failed login retries with a fresh one (the
    /// password may have just changed).
    pub fn invalidate(&self, user: &str) {
        self.cache().remove(user);
    }

    fn remember(&self, user: &str, secret: Option<Secret>) {
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED && !cache.contains_key(user) {
            let ttl = self.ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= MAX_CACHED {
                if let Some(oldest) = cache.iter().min_by_key(|(_, (_, at))| *at).map(|(u, _)| u.clone()) {
                    cache.remove(&oldest);
                }
            }
        }
        cache.insert(user.to_owned(), (secret, Instant::now()));
    }

    /// A token bucket per client address for lookups the cache could not answer.
    fn allow_miss(&self, peer: IpAddr) -> bool {
        let mut misses = self.misses.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if misses.len() >= MAX_TRACKED_ADDRESSES && !misses.contains_key(&peer) {
            // A full bucket is the same as no entry: forget the addresses that are.
            misses.retain(|_, (tokens, at)| refill(*tokens, *at, now) < MISS_BURST);
            if misses.len() >= MAX_TRACKED_ADDRESSES {
                return false;
            }
        }
        let (tokens, at) = misses.entry(peer).or_insert((MISS_BURST, now));
        let available = refill(*tokens, *at, now);
        *at = now;
        if available < 1.0 {
            *tokens = available;
            return false;
        }
        *tokens = available - 1.0;
        true
    }

    /// Runs the query on the lookup connection (logging in if there is none, or it
    /// is on the other side since a flip); a pooled connection that broke while it
    /// waited (an idle timeout, a restart) is replaced once.
    async fn fetch(&self, backend: &Backend, opts: &LoginOptions, user: &str) -> Result<Option<Secret>, LookupError> {
        let mut slot = self.conn.lock().await;
        let pooled = match slot.take() {
            Some((side, conn)) if side == backend.side => Some(conn),
            Some((_, mut old)) => {
                build::terminate(&mut old.conn.wbuf);
                let _ = old.conn.flush().await;
                None
            }
            None => None,
        };
        if let Some(mut conn) = pooled {
            match run(&mut conn, &self.query, user).await {
                Ok(answer) => {
                    *slot = Some((backend.side, conn));
                    return answer;
                }
                Err(e) => tracing::debug!("auth_query connection lost ({e}); logging in again"),
            }
        }
        let mut conn = self.login(backend, opts).await?;
        let answer = run(&mut conn, &self.query, user)
            .await
            .map_err(|e| LookupError::Query(e.to_string()))?;
        *slot = Some((backend.side, conn));
        answer
    }

    async fn login(&self, backend: &Backend, opts: &LoginOptions) -> Result<ServerConn, LookupError> {
        let params = [
            ("user".to_owned(), self.user.clone()),
            ("database".to_owned(), self.dbname.clone()),
            ("application_name".to_owned(), "pgcutover auth_query".to_owned()),
            ("options".to_owned(), FIXED_SEARCH_PATH.to_owned()),
        ];
        server::connect(backend, opts, &params, &self.credential)
            .await
            .map_err(|source| LookupError::Login {
                user: self.user.clone(),
                source,
            })
    }
}

/// Tokens in a bucket last left with `tokens` at `at`.
fn refill(tokens: f64, at: Instant, now: Instant) -> f64 {
    (tokens + now.duration_since(at).as_secs_f64() * MISSES_PER_SECOND).min(MISS_BURST)
}

/// One lookup on an idle connection. The outer error is the connection's (it is
/// unusable); the inner one the query's (the connection is still good).
async fn run(
    conn: &mut ServerConn,
    query: &str,
    user: &str,
) -> Result<Result<Option<Secret>, LookupError>, crate::wire::WireError> {
    let conn = &mut conn.conn;
    build::extended_query(&mut conn.wbuf, query, &[Some(user)]);
    let query_err = |e: &dyn std::fmt::Display| LookupError::Query(e.to_string());
    let mut secret: Option<Option<String>> = None;
    let mut error = None;
    let read = round_trip(conn, 1, |_, f| {
        match f.tag {
            backend::DATA_ROW if secret.is_none() => {
                let row = backend::parse_data_row(&f.body).map_err(|e| query_err(&e))?;
                let value = row.get(1).ok_or_else(|| {
                    LookupError::Query("auth_query must return two columns: user name, secret".into())
                })?;
                secret = Some(value.map(|v| String::from_utf8_lossy(v).into_owned()));
            }
            backend::ERROR_RESPONSE => {
                let fields = backend::ErrorFields::new(&f.body);
                error = Some(format!(
                    "{} (SQLSTATE {})",
                    fields.message().unwrap_or("unknown error"),
                    fields.code().unwrap_or("?????")
                ));
            }
            _ => {}
        }
        Ok(())
    });
    if let Err(e) = read.await? {
        return Ok(Err(e));
    }
    if let Some(e) = error {
        return Ok(Err(LookupError::Query(e)));
    }
    Ok(match secret.flatten() {
        None => Ok(None),
        Some(s) => Secret::parse(&s).map(Some).map_err(LookupError::Query),
    })
}

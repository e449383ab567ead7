//! `auth_user` + `auth_query`: secrets looked up in the active database, cached.

use super::secret::{Secret, ServerCredential};
use crate::server::{self, round_trip, Backend, LoginError, LoginOptions};
use pgcutover_protocol::{backend, build};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Looks secrets up with `auth_query`, logging in as `auth_user`.
pub struct AuthQuery {
    user: String,
    credential: ServerCredential,
    query: String,
    dbname: Option<String>,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Option<Secret>, Instant)>>,
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
}

impl AuthQuery {
    /// Sets up lookups as `user` with `credential` (from auth_file).
    pub fn new(
        user: String,
        credential: ServerCredential,
        query: String,
        dbname: Option<String>,
        ttl: Duration,
    ) -> Self {
        AuthQuery {
            user,
            credential,
            query,
            dbname,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, (Option<Secret>, Instant)>> {
        // A cache entry is written whole: a poisoned lock still holds usable entries.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The secret of `user` (None: no such role, or it has no password), from the
    /// cache while fresh, else from `backend`.
    pub async fn lookup(
        &self,
        backend: &Backend,
        opts: &LoginOptions,
        user: &str,
        client_db: &str,
    ) -> Result<Option<Secret>, LookupError> {
        if let Some((secret, at)) = self.cache().get(user) {
            if at.elapsed() < self.ttl {
                return Ok(secret.clone());
            }
        }
        let secret = self.fetch(backend, opts, user, client_db).await?;
        self.cache().insert(user.to_owned(), (secret.clone(), Instant::now()));
        Ok(secret)
    }

    /// Forgets a cached secret, so that a failed login retries with a fresh one (the
    /// password may have just changed).
    pub fn invalidate(&self, user: &str) {
        self.cache().remove(user);
    }

    async fn fetch(
        &self,
        backend: &Backend,
        opts: &LoginOptions,
        user: &str,
        client_db: &str,
    ) -> Result<Option<Secret>, LookupError> {
        let db = self.dbname.as_deref().unwrap_or(client_db);
        let params = [
            ("user".to_owned(), self.user.clone()),
            ("database".to_owned(), db.to_owned()),
            ("application_name".to_owned(), "pgcutover auth_query".to_owned()),
        ];
        let mut server = server::connect(backend, opts, &params, &self.credential)
            .await
            .map_err(|source| LookupError::Login {
                user: self.user.clone(),
                source,
            })?;
        let conn = &mut server.conn;
        build::extended_query(&mut conn.wbuf, &self.query, &[Some(user)]);
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
        read.await.map_err(|e| query_err(&e))??;
        build::terminate(&mut conn.wbuf);
        let _ = conn.flush().await;
        if let Some(e) = error {
            return Err(LookupError::Query(e));
        }
        match secret.flatten() {
            None => Ok(None),
            Some(s) => Secret::parse(&s).map(Some).map_err(LookupError::Query),
        }
    }
}

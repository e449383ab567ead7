//! `[blue]` / `[green]`: a database server, given as a `postgres://` URL.

use serde::{de, Deserialize, Deserializer};

/// `[blue]` / `[green]`: a database server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// `postgres://user[:password]@host[:port]/database`: the host and port clients
    /// are routed to (each with its own user and database); the user and password
    /// are the orchestrator's admin login.
    #[serde(deserialize_with = "de_url")]
    pub url: PgUrl,
}

/// A parsed `postgres://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// Host name or address.
    pub host: String,
    /// Port (default 5432).
    pub port: u16,
    /// User, if given.
    pub user: Option<String>,
    /// Password, if given.
    pub password: Option<String>,
    /// Database, if given.
    pub database: Option<String>,
}

impl PgUrl {
    /// Parses `postgres://` or `postgresql://` URLs; query parameters are ignored.
    pub fn parse(s: &str) -> Result<PgUrl, String> {
        let rest = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
            .ok_or("must start with postgres:// or postgresql://")?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, database) = match rest.split_once('/') {
            Some((a, d)) => (a, (!d.is_empty()).then(|| percent_decode(d)).transpose()?),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (Some(percent_decode(u)?), Some(percent_decode(p)?)),
                None => (Some(percent_decode(u)?), None),
            },
            None => (None, None),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unclosed [ in IPv6 host")?;
            (h.to_owned(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (hostport.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| format!("port {p:?} is not a number from 1 to 65535"))?,
            None => 5432,
        };
        Ok(PgUrl {
            host,
            port,
            user,
            password,
            database,
        })
    }

    /// `host:port`, bracketed for IPv6, for messages and connecting.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape %{hex}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "%-escapes are not UTF-8".into())
}

/// The password never shows, whatever logs or prints a config.
impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .finish()
    }
}

fn de_url<'de, D: Deserializer<'de>>(d: D) -> Result<PgUrl, D::Error> {
    let s = String::deserialize(d)?;
    PgUrl::parse(&s).map_err(|e| {
        de::Error::custom(format!(
            "invalid url {:?}: {e}; expected postgres://user[:password]@host[:port]/database",
            redact_url(&s)
        ))
    })
}

/// `s` with the password of its `user:password@` part replaced by `***`.
pub fn redact_url(s: &str) -> String {
    let Some(start) = s.find("://").map(|i| i + 3) else {
        return s.to_owned();
    };
    let authority_end = s[start..].find(['/', '?', '#']).map_or(s.len(), |i| start + i);
    let Some(at) = s[start..authority_end].rfind('@').map(|i| start + i) else {
        return s.to_owned();
    };
    match s[start..at].find(':').map(|i| start + i) {
        Some(colon) => format!("{}***{}", &s[..colon + 1], &s[at..]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let url = PgUrl::parse("postgres://admin:hunter2@db.internal:5432/app").unwrap();
        let shown = format!("{url:?}");
        assert!(!shown.contains("hunter2") && shown.contains("***"), "{shown}");
        for (given, shown) in [
            (
                "postgres://admin:hunter2@db:5432/app",
                "postgres://admin:***@db:5432/app",
            ),
            ("postgresql://a:p@ss:w@rd@db/app", "postgresql://a:***@db/app"),
            ("postgres://admin@db/app", "postgres://admin@db/app"),
            ("postgres://db/app?password=x", "postgres://db/app?password=x"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(given), shown, "{given}");
        }
    }
}

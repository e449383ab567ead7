//! The run's own connections: each knows its side and database, so every failed
//! statement names both without the caller saying so.

use super::error::SwitchoverError;
use crate::error::pg_message;
use crate::targets::Side;
use tokio_postgres::Client;

/// Which server and database a connection talks to.
pub(super) struct Place {
    /// Which server.
    pub side: Side,
    /// Which database.
    pub database: String,
}

impl Place {
    /// Turns a failed statement, done for `doing`, into an error naming this place.
    pub fn failed<'a>(
        &'a self,
        doing: impl Into<String> + 'a,
    ) -> impl FnOnce(tokio_postgres::Error) -> SwitchoverError + 'a {
        move |e| SwitchoverError::Database {
            side: self.side,
            database: self.database.clone(),
            doing: doing.into(),
            message: pg_message(&e),
        }
    }
}

/// One admin connection of the run.
pub(super) struct Conn {
    /// Where it goes (a field of its own, so it can be borrowed beside a transaction).
    pub at: Place,
    /// The connection.
    pub client: Client,
}

impl Conn {
    /// A connection to `database` on `side`.
    pub fn new(side: Side, database: &str, client: Client) -> Conn {
        Conn {
            at: Place {
                side,
                database: database.to_owned(),
            },
            client,
        }
    }

    /// See [`Place::failed`].
    pub fn failed<'a>(
        &'a self,
        doing: impl Into<String> + 'a,
    ) -> impl FnOnce(tokio_postgres::Error) -> SwitchoverError + 'a {
        self.at.failed(doing)
    }
}

/// Per database: the connections to the source and the destination.
pub(super) struct Pair {
    /// The database.
    pub name: String,
    /// Where clients run before the flip.
    pub source: Conn,
    /// Where they run after it.
    pub dest: Conn,
}

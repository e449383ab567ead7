//! The one exchange the proxy's own queries make (login, auth_query, standby
//! statements, state snapshot, replay): send what is queued, then read until the
//! server has answered every message with its ReadyForQuery.

use crate::wire::{Conn, WireError};
use pgcutover_protocol::Frame;
use pgcutover_protocol::{backend, build};
use std::time::Duration;

/// Sends `conn`'s write buffer, then hands each frame read to `on_frame` with the
/// number of ReadyForQuery frames before it (which message it answers), until
/// `readies` ReadyForQuery frames have arrived; those are handed over too. The outer
/// error is the connection's; the inner one is `on_frame`'s, which stops the reading.
pub(crate) async fn round_trip<E>(
    conn: &mut Conn,
    readies: usize,
    mut on_frame: impl FnMut(usize, Frame) -> Result<(), E>,
) -> Result<Result<(), E>, WireError> {
    conn.flush().await?;
    let mut answered = 0;
    while answered < readies {
        let f = conn.read_frame().await?;
        let ready = f.tag == backend::READY_FOR_QUERY;
        if let Err(e) = on_frame(answered, f) {
            return Ok(Err(e));
        }
        answered += usize::from(ready);
    }
    Ok(Ok(()))
}

/// How long the server's postmaster has been running, on an idle connection
/// (`None` if the server would not say).
pub(crate) async fn postmaster_uptime(conn: &mut Conn) -> Result<Option<Duration>, WireError> {
    build::query(
        &mut conn.wbuf,
        "select extract(epoch from pg_catalog.now() - pg_catalog.pg_postmaster_start_time())::float8",
    );
    let mut uptime = None;
    let read = round_trip(conn, 1, |_, f| {
        if f.tag == backend::DATA_ROW {
            uptime = backend::parse_data_row(&f.body)
                .ok()
                .and_then(|row| row.first().copied().flatten())
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<f64>().ok())
                .filter(|secs| secs.is_finite() && *secs >= 0.0)
                .map(Duration::from_secs_f64);
        }
        Ok::<(), ()>(())
    });
    let _ = read.await?;
    Ok(uptime)
}

//! systemd's readiness protocol (`Type=notify`): a datagram to `$NOTIFY_SOCKET`.
//!
//! Written out instead of taken from a crate: it is one `sendto` of a few bytes
//! to a path or an abstract socket, and a failure only means systemd is not told.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Tells the service manager `state` (e.g. `READY=1`, `STOPPING=1`, `STATUS=...`);
/// does nothing when not started by one (`$NOTIFY_SOCKET` unset).
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&socket.to_string_lossy(), state) {
        tracing::warn!("could not tell systemd {state:?} through NOTIFY_SOCKET={socket:?}: {e}");
    }
}

fn send(socket: &str, state: &str) -> io::Result<()> {
    let out = UnixDatagram::unbound()?;
    match socket.strip_prefix('@') {
        // An abstract socket (systemd's default is a path, but both are allowed).
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            out.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            out.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_the_state_to_a_path_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("pgcutover-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();

        use std::os::linux::net::SocketAddrExt;
        let name = format!("pgcutover-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        assert!(send("/nonexistent/pgcutover/notify", "READY=1").is_err());
    }
}

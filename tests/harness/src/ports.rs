//! Free loopback ports.

use crate::*;

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0). Within one
/// process the same port is not handed out twice in a row.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let mut last = 0;
    for _ in 0..50 {
        let port = TcpListener::bind((HOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        last = port;
        if given.insert(port) {
            return port;
        }
    }
    last
}

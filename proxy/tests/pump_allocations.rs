//! The steady-state data path allocates nothing per message. Measured with a
//! counting global allocator; this file is its own test binary, so the allocator
//! sees only this test (the driver below is written not to allocate either).

use bytes::BytesMut;
use pgcutover_api::Side;
use pgcutover_protocol::backend::TransactionStatus;
use pgcutover_protocol::{build, CancelKey};
use pgcutover_proxy::metrics::Metrics;
use pgcutover_proxy::pump::{Pump, PumpEnd, RunMode};
use pgcutover_proxy::registry::{SessionIdentity, SessionRegistry};
use pgcutover_proxy::stream::Stream;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

struct Counting;

// SAFETY: delegates every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

async fn socket_pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let outer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (inner, _) = listener.accept().await.unwrap();
    outer.set_nodelay(true).unwrap();
    inner.set_nodelay(true).unwrap();
    (outer, inner)
}

#[test]
fn pump_allocates_nothing_per_message_in_the_steady_state() {
    const WARM_UP: usize = 2_000;
    const MEASURED: usize = 20_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut client, proxy_client_side) = socket_pair(&listener).await;
        let (mut server, proxy_server_side) = socket_pair(&listener).await;
        let registry = Arc::new(SessionRegistry::default());
        let registration = registry.register(
            (listener.local_addr().unwrap(), CancelKey::short(1, 2)),
            Side::Blue,
            0,
            SessionIdentity {
                user: "u".into(),
                database: "d".into(),
                peer: listener.local_addr().unwrap(),
            },
            4,
        );
        let mut pump = Pump::new(
            BytesMut::new(),
            BytesMut::new(),
            1 << 20,
            registration.handle.clone(),
            Arc::new(Metrics::new()),
        );
        let mut client_side = Stream::Plain(proxy_client_side);
        let mut server_side = Stream::Plain(proxy_server_side);

        // A query; a small reply; every 16th reply also carries a 200 kB row that
        // crosses many reads, so partial frames and buffer reuse are exercised.
        let mut query = BytesMut::new();
        build::query(&mut query, "select 1");
        let mut small_reply = BytesMut::new();
        build::frame(&mut small_reply, b'D', |b| b.extend_from_slice(b"\0\x01\0\0\0\x011"));
        build::frame(&mut small_reply, b'C', |b| b.extend_from_slice(b"SELECT 1\0"));
        build::ready_for_query(&mut small_reply, TransactionStatus::Idle);
        let mut big_reply = BytesMut::new();
        build::frame(&mut big_reply, b'D', |b| b.extend_from_slice(&vec![b'x'; 200_000]));
        big_reply.extend_from_slice(&small_reply);
        let mut query_in = vec![0u8; query.len()];
        let mut reply_in = vec![0u8; big_reply.len()];

        let pump_task = pump.run(&mut client_side, &mut server_side, RunMode::default());
        let driver = async {
            let mut measured_from = 0;
            for i in 0..WARM_UP + MEASURED {
                if i == WARM_UP {
                    measured_from = ALLOCATIONS.load(Ordering::Relaxed);
                }
                let reply = if i % 16 == 0 { &big_reply } else { &small_reply };
                client.write_all(&query).await.unwrap();
                server.read_exact(&mut query_in).await.unwrap();
                assert_eq!(&query_in[..], &query[..]);
                server.write_all(reply).await.unwrap();
                client.read_exact(&mut reply_in[..reply.len()]).await.unwrap();
                assert_eq!(&reply_in[..reply.len()], &reply[..]);
            }
            let allocations = ALLOCATIONS.load(Ordering::Relaxed) - measured_from;
            drop(client);
            allocations
        };
        let (allocations, end) = tokio::join!(driver, pump_task);
        assert_eq!(end.unwrap(), PumpEnd::ClientClosed);
        assert_eq!(
            allocations, 0,
            "{allocations} allocations for {MEASURED} round trips through the pump"
        );
    });
}

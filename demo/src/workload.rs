//! The workload: N clients through the proxy, each looping over a short write
//! transaction (an order with a database-generated id, the account's balance, every
//! fourth time an event) and now and then a read, with prepared statements. Every
//! acknowledged id, the server that ran it and every transaction's latency are kept.
//! Bounded in time and count.

use crate::report::ClientsSeen;
use crate::servers::ACCOUNTS;
use crate::DemoError;
use pgcutover_orchestrator::pg_message;
use pgcutover_orchestrator::Progress;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, Statement};

/// Most transactions one client runs.
const MAX_TRANSACTIONS_PER_CLIENT: u64 = 200_000;
/// No client runs longer than this, whatever happens to the rest of the demo.
const MAX_CLIENT_TIME: Duration = Duration::from_secs(300);
/// A transaction without a reply for this long counts as an error.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between a client's transactions: a busy application, not a benchmark.
const THINK_TIME: Duration = Duration::from_millis(5);
/// Error messages kept for the report.
const ERRORS_KEPT: usize = 10;

/// A committed write: its id and whether PostgreSQL 17 (green) ran it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ack {
    pub id: i64,
    pub on_green: bool,
}

/// What one client saw.
#[derive(Debug, Default)]
pub(crate) struct ClientLog {
    pub orders: Vec<Ack>,
    pub events: Vec<Ack>,
    /// Sum of the amounts of acknowledged orders (each added to an account balance).
    pub amount_cents: i64,
    /// Latency of every transaction and read, in microseconds.
    pub latencies_us: Vec<u32>,
    pub errors: u64,
    pub error_messages: Vec<String>,
    /// `server_version` the client saw at the end, on its own connection.
    pub final_version: Option<String>,
}

#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    on_green: AtomicU64,
    errors: AtomicU64,
}

/// The running clients.
pub(crate) struct Workload {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    clients: Vec<tokio::task::JoinHandle<ClientLog>>,
    started: Instant,
}

impl Workload {
    /// Connects `n` clients through the proxy and starts them.
    pub async fn start(conninfo: &str, n: usize) -> Result<Workload, DemoError> {
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
                .await
                .map_err(|e| {
                    DemoError::Workload(format!(
                        "client {i} cannot log in through the proxy: {}",
                        pg_message(&e)
                    ))
                })?;
            tokio::spawn(conn);
            let stmts = Statements::prepare(&client)
                .await
                .map_err(|e| DemoError::Workload(format!("client {i}: preparing statements: {}", pg_message(&e))))?;
            conns.push((client, stmts));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let clients = conns
            .into_iter()
            .enumerate()
            .map(|(i, (client, stmts))| {
                tokio::spawn(client_loop(i as u64, client, stmts, stop.clone(), counters.clone()))
            })
            .collect();
        Ok(Workload {
            stop,
            counters,
            clients,
            started: Instant::now(),
        })
    }

    /// `12,345 transactions (1,234/s), 0 errors, 6,000 on green`.
    pub fn summary(&self) -> String {
        let committed = self.counters.committed.load(Ordering::Relaxed);
        let rate = committed as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        format!(
            "{} transactions committed ({:.0}/s), {} on green, {} errors",
            thousands(committed),
            rate,
            thousands(self.counters.on_green.load(Ordering::Relaxed)),
            self.counters.errors.load(Ordering::Relaxed)
        )
    }

    /// Lets the load run for `d`, with a progress line every 2 s.
    pub async fn run_for(&self, d: Duration, p: &Progress, label: &str) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            tokio::time::sleep((end - Instant::now()).min(Duration::from_secs(2))).await;
            p.line(format!("load {label}: {}", self.summary()));
        }
    }

    /// Stops the clients at their next transaction boundary and collects what they saw.
    pub async fn stop(self) -> ClientsSeen {
        self.stop.store(true, Ordering::Relaxed);
        let mut logs = Vec::new();
        for c in self.clients {
            match c.await {
                Ok(log) => logs.push(log),
                Err(e) => logs.push(ClientLog {
                    errors: 1,
                    error_messages: vec![format!("client task failed: {e}")],
                    ..ClientLog::default()
                }),
            }
        }
        ClientsSeen::from_logs(logs, self.started.elapsed())
    }
}

struct Statements {
    order: Statement,
    balance: Statement,
    event: Statement,
    read: Statement,
}

impl Statements {
    async fn prepare(c: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            order: c
                .prepare(
                    "INSERT INTO orders (account_id, amount_cents) VALUES ($1, $2) \
                     RETURNING id, current_setting('server_version_num')::int",
                )
                .await?,
            balance: c
                .prepare("UPDATE accounts SET balance_cents = balance_cents + $2, updated_at = now() WHERE id = $1")
                .await?,
            event: c
                .prepare("INSERT INTO events (account_id, kind) VALUES ($1, 'order') RETURNING id")
                .await?,
            read: c
                .prepare("SELECT balance_cents, (SELECT count(*) FROM orders WHERE account_id = $1) FROM accounts WHERE id = $1")
                .await?,
        })
    }
}

/// Committed ids of one write transaction.
struct Committed {
    order: i64,
    event: Option<i64>,
    on_green: bool,
}

async fn write_transaction(
    c: &mut Client,
    s: &Statements,
    account: i64,
    amount: i64,
    with_event: bool,
) -> Result<Committed, tokio_postgres::Error> {
    let tx = c.transaction().await?;
    let row = tx.query_one(&s.order, &[&account, &amount]).await?;
    let version: i32 = row.get(1);
    tx.execute(&s.balance, &[&account, &amount]).await?;
    let event = if with_event {
        Some(i64::from(tx.query_one(&s.event, &[&account]).await?.get::<_, i32>(0)))
    } else {
        None
    };
    tx.commit().await?;
    Ok(Committed {
        order: row.get(0),
        event,
        on_green: version >= 170_000,
    })
}

async fn client_loop(
    index: u64,
    mut client: Client,
    s: Statements,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> ClientLog {
    let mut log = ClientLog::default();
    let mut rng = XorShift::new(index);
    let hard_deadline = Instant::now() + MAX_CLIENT_TIME;
    let error = |log: &mut ClientLog, what: String| {
        log.errors += 1;
        counters.errors.fetch_add(1, Ordering::Relaxed);
        if log.error_messages.len() < ERRORS_KEPT {
            log.error_messages.push(format!("client {index}: {what}"));
        }
    };
    for n in 0..MAX_TRANSACTIONS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) || Instant::now() >= hard_deadline {
            break;
        }
        let account = 1 + (rng.next() % ACCOUNTS as u64) as i64;
        let amount = 100 + (rng.next() % 4900) as i64;
        let t = Instant::now();
        let result = tokio::time::timeout(
            TRANSACTION_TIMEOUT,
            write_transaction(&mut client, &s, account, amount, n % 4 == 0),
        )
        .await;
        let took = t.elapsed();
        match result {
            Ok(Ok(c)) => {
                log.latencies_us.push(micros(took));
                log.orders.push(Ack {
                    id: c.order,
                    on_green: c.on_green,
                });
                if let Some(id) = c.event {
                    log.events.push(Ack {
                        id,
                        on_green: c.on_green,
                    });
                }
                log.amount_cents += amount;
                counters.committed.fetch_add(1, Ordering::Relaxed);
                if c.on_green {
                    counters.on_green.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => error(&mut log, pg_message(&e)),
            Err(_) => error(&mut log, format!("no reply within {TRANSACTION_TIMEOUT:?}")),
        }
        if n % 5 == 2 {
            let t = Instant::now();
            match tokio::time::timeout(TRANSACTION_TIMEOUT, client.query_one(&s.read, &[&account])).await {
                Ok(Ok(_)) => log.latencies_us.push(micros(t.elapsed())),
                Ok(Err(e)) => error(&mut log, format!("read: {}", pg_message(&e))),
                Err(_) => error(&mut log, format!("read: no reply within {TRANSACTION_TIMEOUT:?}")),
            }
        }
        tokio::time::sleep(THINK_TIME).await;
    }
    match tokio::time::timeout(TRANSACTION_TIMEOUT, client.query_one("SHOW server_version", &[])).await {
        Ok(Ok(row)) => log.final_version = Some(row.get(0)),
        Ok(Err(e)) => error(&mut log, format!("SHOW server_version: {}", pg_message(&e))),
        Err(_) => error(&mut log, "SHOW server_version: no reply".into()),
    }
    log
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

/// `12345678` → `12,345,678`.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A tiny PRNG: which account, how much (no need for a crate).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }

    #[test]
    fn prng_spreads_accounts() {
        let mut r = XorShift::new(3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5000 {
            seen.insert(r.next() % 1000);
        }
        assert!(seen.len() > 900, "{}", seen.len());
    }
}

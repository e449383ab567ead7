//! `pgcutover verify`: compares blue's and green's data table by table. Tables with a
//! primary key are cut into key ranges of about `chunk_rows` rows (boundaries read
//! from blue's primary key); each range is counted and hashed on both sides at once
//! and compared. Tables without a primary key are compared whole. The hash is the sum
//! of per-row md5s (order-independent, so the servers' sort order does not matter and
//! nothing is aggregated in memory). `jobs` workers, each with one connection per
//! side, bound the load and the memory. A range that differs is re-checked `retries`
//! times (rows still in flight); what still differs is reported as table + key range.

use crate::error::{OrchestratorError, SqlContext};
use crate::progress::{human_bytes, human_duration, Progress};
use crate::targets::{Side, Targets};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// How `verify` runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Concurrent chunk comparisons (each holds one connection to each side).
    pub jobs: usize,
    /// Rows per key range.
    pub chunk_rows: i64,
    /// Re-checks of a range that differs, for rows still in flight.
    pub retries: u32,
    /// Wait before each re-check.
    pub retry_delay: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            jobs: 4,
            chunk_rows: 20_000,
            retries: 3,
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// The outcome of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Every table compared.
    pub tables: Vec<TableReport>,
    /// Ranges that still differed after the retries.
    pub differences: Vec<Difference>,
    /// Rows compared (blue's count).
    pub rows: i64,
    /// Size of the compared tables on blue (pg_table_size).
    pub bytes: i64,
    /// Wall time.
    pub seconds: f64,
    /// No difference anywhere.
    pub identical: bool,
}

/// One table's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// Database.
    pub database: String,
    /// Schema-qualified table name.
    pub table: String,
    /// `key ranges` or `whole table` (no primary key).
    pub method: String,
    /// Number of ranges compared.
    pub chunks: usize,
    /// Rows on blue.
    pub rows_blue: i64,
    /// Rows on green.
    pub rows_green: i64,
    /// Every range matched.
    pub identical: bool,
}

/// A key range whose rows differ.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// Database.
    pub database: String,
    /// Table.
    pub table: String,
    /// The key range, e.g. `id > 100 AND id <= 200`, or `whole table`.
    pub range: String,
    /// Rows in the range on blue.
    pub blue_rows: i64,
    /// Rows in the range on green.
    pub green_rows: i64,
    /// Why, when the range could not be compared (e.g. the table is missing on green).
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
struct Table {
    db: String,
    /// Quoted, schema-qualified.
    name: String,
    /// Quoted primary-key columns with their types; empty = no primary key.
    key: Vec<(String, String)>,
}

enum Task {
    Split(Arc<Table>),
    Chunk(Arc<Table>, Option<Vec<String>>, Option<Vec<String>>),
}

#[derive(Default)]
struct Acc {
    chunks: usize,
    pending: usize,
    blue: i64,
    green: i64,
    differs: bool,
    split_done: bool,
}

struct Shared {
    queue: Mutex<VecDeque<Task>>,
    in_flight: AtomicUsize,
    acc: Mutex<Vec<(String, String, Acc)>>,
    differences: Mutex<Vec<Difference>>,
    opts: VerifyOptions,
}

/// Session settings that make row text identical on both sides.
const SESSION: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres';
    SET bytea_output = 'hex'; SET extra_float_digits = 1; SET search_path = pg_catalog;
    SET statement_timeout = 0; SET default_transaction_read_only = on";

/// Compares every table of every configured database.
pub async fn verify(
    targets: &Targets,
    opts: &VerifyOptions,
    progress: &Progress,
) -> Result<VerifyReport, OrchestratorError> {
    let start = Instant::now();
    let mut tables = Vec::new();
    let mut differences = Vec::new();
    let mut bytes = 0;
    for db in &targets.databases {
        let (t, d, b) = verify_database(targets, db, opts, progress).await?;
        tables.extend(t);
        differences.extend(d);
        bytes += b;
    }
    let rows = tables.iter().map(|t| t.rows_blue).sum();
    let identical = differences.is_empty();
    let seconds = start.elapsed().as_secs_f64();
    Ok(VerifyReport {
        tables,
        differences,
        rows,
        bytes,
        seconds,
        identical,
    })
}

async fn session(targets: &Targets, side: Side, db: &str) -> Result<Client, OrchestratorError> {
    let c = targets.connect(side, db).await?;
    c.batch_execute(SESSION)
        .await
        .ctx(side, db, "setting up the verify session")?;
    Ok(c)
}

async fn verify_database(
    targets: &Targets,
    db: &str,
    opts: &VerifyOptions,
    progress: &Progress,
) -> Result<(Vec<TableReport>, Vec<Difference>, i64), OrchestratorError> {
    let blue = session(targets, Side::Blue, db).await?;
    let tables = list_tables(&blue, db).await?;
    let bytes = tables.iter().map(|(_, size, _)| size).sum();
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        in_flight: AtomicUsize::new(0),
        acc: Mutex::new(Vec::new()),
        differences: Mutex::new(Vec::new()),
        opts: opts.clone(),
    });
    let count = tables.len();
    for (name, _, key) in tables {
        let method = if key.is_empty() { "whole table" } else { "key ranges" };
        shared
            .acc
            .lock()
            .unwrap()
            .push((name.clone(), method.into(), Acc::default()));
        let table = Arc::new(Table {
            db: db.to_owned(),
            name,
            key,
        });
        shared.queue.lock().unwrap().push_back(Task::Split(table));
    }
    progress.line(format!(
        "{db}: comparing {count} tables ({}) with {} workers",
        human_bytes(bytes),
        opts.jobs
    ));
    run_workers(targets, db, opts.jobs.max(1), &shared, progress).await?;
    let acc = std::mem::take(&mut *shared.acc.lock().unwrap());
    let reports = acc
        .into_iter()
        .map(|(table, method, a)| TableReport {
            database: db.to_owned(),
            table,
            method,
            chunks: a.chunks,
            rows_blue: a.blue,
            rows_green: a.green,
            identical: !a.differs,
        })
        .collect();
    let diffs = std::mem::take(&mut *shared.differences.lock().unwrap());
    Ok((reports, diffs, bytes))
}

/// Blue's ordinary tables, largest first: (quoted name, bytes, primary key as
/// (column, type) in key order; empty without one).
async fn list_tables(blue: &Client, db: &str) -> Result<Vec<(String, i64, Vec<(String, String)>)>, OrchestratorError> {
    let rows = blue
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), pg_table_size(c.oid),
                    coalesce((SELECT array_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
                                               ORDER BY array_position(i.indkey::int2[], a.attnum))
                                FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
                               WHERE i.indrelid = c.oid AND i.indisprimary), '{}')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence = 'p'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcutover') AND n.nspname !~ '^pg_(toast|temp)'
              ORDER BY pg_table_size(c.oid) DESC",
            &[],
        )
        .await
        .ctx(Side::Blue, db, "listing tables")?;
    Ok(rows
        .iter()
        .map(|r| {
            let key: Vec<String> = r.get(2);
            let key = key
                .iter()
                .map(|k| {
                    let (col, ty) = k.split_once(' ').unwrap_or((k, "text"));
                    (col.to_owned(), ty.to_owned())
                })
                .collect();
            (r.get(0), r.get(1), key)
        })
        .collect())
}

/// `jobs` workers, each with its own session on both sides, until the queue is done.
async fn run_workers(
    targets: &Targets,
    db: &str,
    jobs: usize,
    shared: &Arc<Shared>,
    progress: &Progress,
) -> Result<(), OrchestratorError> {
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..jobs {
        let b = session(targets, Side::Blue, db).await?;
        let g = session(targets, Side::Green, db).await?;
        let shared = shared.clone();
        let progress = progress.clone();
        workers.spawn(async move { worker(b, g, shared, progress).await });
    }
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(OrchestratorError::Tool {
                    tool: "verify".into(),
                    message: format!("a worker failed: {e}"),
                })
            }
        }
    }
    Ok(())
}

async fn worker(blue: Client, green: Client, shared: Arc<Shared>, progress: Progress) -> Result<(), OrchestratorError> {
    loop {
        // Taken and counted in flight under one lock: otherwise another worker could
        // see an empty queue with nothing in flight in between, and stop early.
        let task = {
            let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let task = queue.pop_front();
            if task.is_some() {
                shared.in_flight.fetch_add(1, Ordering::SeqCst);
            }
            task
        };
        let Some(task) = task else {
            if shared.in_flight.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let result = match task {
            Task::Split(t) => split(&blue, &shared, t).await,
            Task::Chunk(t, lo, hi) => compare(&blue, &green, &shared, &progress, t, lo, hi).await,
        };
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        result?;
    }
}

/// Reads the key boundaries of a table from blue and queues its ranges.
async fn split(blue: &Client, shared: &Shared, t: Arc<Table>) -> Result<(), OrchestratorError> {
    let mut bounds: Vec<Vec<String>> = Vec::new();
    if !t.key.is_empty() {
        let cols = t.key.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", ");
        let texts = t
            .key
            .iter()
            .map(|(c, _)| format!("{c}::text"))
            .collect::<Vec<_>>()
            .join(", ");
        let q = format!(
            "SELECT {texts} FROM (SELECT {cols}, row_number() OVER (ORDER BY {cols}) AS pgcutover_rn FROM {} ) s
              WHERE pgcutover_rn % $1 = 0 ORDER BY pgcutover_rn",
            t.name
        );
        let rows = blue.query(&q, &[&shared.opts.chunk_rows.max(1)]).await.ctx(
            Side::Blue,
            &t.db,
            &format!("reading key boundaries of {}", t.name),
        )?;
        bounds = rows
            .iter()
            .map(|r| (0..t.key.len()).map(|i| r.get::<_, String>(i)).collect())
            .collect();
    }
    let mut tasks = Vec::new();
    let mut lo: Option<Vec<String>> = None;
    for b in bounds {
        tasks.push(Task::Chunk(t.clone(), lo.clone(), Some(b.clone())));
        lo = Some(b);
    }
    tasks.push(Task::Chunk(t.clone(), lo, None));
    {
        let mut acc = shared.acc.lock().unwrap();
        let a = &mut acc
            .iter_mut()
            .find(|(n, _, _)| *n == t.name)
            .expect("table registered")
            .2;
        a.pending += tasks.len();
        a.split_done = true;
    }
    shared.queue.lock().unwrap().extend(tasks);
    Ok(())
}

/// `(k1, k2) > ($1::text::t1, $2::text::t2)` style conditions; parameters follow `first`.
fn range_sql(t: &Table, lo: bool, hi: bool) -> (String, usize) {
    let n = t.key.len();
    let cols = format!(
        "({})",
        t.key.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", ")
    );
    let params = |first: usize| {
        format!(
            "({})",
            t.key
                .iter()
                .enumerate()
                .map(|(i, (_, ty))| format!("${}::text::{ty}", first + i))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut conds = Vec::new();
    let mut next = 1;
    if lo {
        conds.push(format!("{cols} > {}", params(next)));
        next += n;
    }
    if hi {
        conds.push(format!("{cols} <= {}", params(next)));
        next += n;
    }
    let w = if conds.is_empty() {
        "true".to_owned()
    } else {
        conds.join(" AND ")
    };
    (w, next - 1)
}

fn describe_range(t: &Table, lo: &Option<Vec<String>>, hi: &Option<Vec<String>>) -> String {
    if t.key.is_empty() {
        return "whole table (no primary key)".into();
    }
    let cols = t.key.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", ");
    let v = |b: &Vec<String>| b.join(", ");
    match (lo, hi) {
        (None, None) => "all rows".into(),
        (Some(l), None) => format!("({cols}) > ({})", v(l)),
        (None, Some(h)) => format!("({cols}) <= ({})", v(h)),
        (Some(l), Some(h)) => format!("({cols}) > ({}) AND ({cols}) <= ({})", v(l), v(h)),
    }
}

async fn measure(
    c: &Client,
    side: Side,
    t: &Table,
    sql: &str,
    params: &[String],
) -> Result<(i64, String), OrchestratorError> {
    let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.iter().map(|s| s as _).collect();
    let r = c
        .query_one(sql, &p)
        .await
        .ctx(side, &t.db, &format!("hashing a range of {}", t.name))?;
    Ok((r.get(0), r.get(1)))
}

async fn compare(
    blue: &Client,
    green: &Client,
    shared: &Shared,
    progress: &Progress,
    t: Arc<Table>,
    lo: Option<Vec<String>>,
    hi: Option<Vec<String>>,
) -> Result<(), OrchestratorError> {
    let (cond, _) = range_sql(&t, lo.is_some(), hi.is_some());
    let sql = format!(
        "SELECT count(*), coalesce(sum(('x' || substr(md5(r::text), 1, 16))::bit(64)::bigint::numeric), 0)::text
           FROM {} r WHERE {cond}",
        t.name
    );
    let params: Vec<String> = lo.iter().chain(hi.iter()).flatten().cloned().collect();
    let mut attempt = 0;
    let (b, g, error) = loop {
        let (b, g) = tokio::join!(
            measure(blue, Side::Blue, &t, &sql, &params),
            measure(green, Side::Green, &t, &sql, &params)
        );
        let b = b?;
        let g = match g {
            Ok(g) => g,
            Err(e) => break (b, (0, String::new()), Some(e.to_string())),
        };
        if b == g || attempt >= shared.opts.retries {
            break (b, g, None);
        }
        attempt += 1;
        tokio::time::sleep(shared.opts.retry_delay).await;
    };
    let same = error.is_none() && b == g;
    if !same {
        shared.differences.lock().unwrap().push(Difference {
            database: t.db.clone(),
            table: t.name.clone(),
            range: describe_range(&t, &lo, &hi),
            blue_rows: b.0,
            green_rows: g.0,
            error,
        });
    }
    let finished = {
        let mut acc = shared.acc.lock().unwrap();
        let (_, _, a) = acc.iter_mut().find(|(n, _, _)| *n == t.name).expect("table registered");
        a.chunks += 1;
        a.pending -= 1;
        a.blue += b.0;
        a.green += g.0;
        a.differs |= !same;
        (a.split_done && a.pending == 0).then_some((a.chunks, a.blue, a.green, a.differs))
    };
    if let Some((chunks, rb, rg, differs)) = finished {
        progress.line(format!(
            "{}: {} {} ({} rows on blue, {} on green, {} range{})",
            t.db,
            t.name,
            if differs { "DIFFERS" } else { "identical" },
            rb,
            rg,
            chunks,
            if chunks == 1 { "" } else { "s" }
        ));
    }
    Ok(())
}

impl VerifyReport {
    /// A one-line summary with the throughput.
    pub fn summary(&self) -> String {
        let per_gb = if self.bytes > 0 {
            format!(
                ", {} per GB",
                human_duration(Duration::from_secs_f64(
                    self.seconds * (1u64 << 30) as f64 / self.bytes as f64
                ))
            )
        } else {
            String::new()
        };
        format!(
            "{}: {} tables, {} rows, {} in {}{per_gb}",
            if self.identical {
                "identical".to_owned()
            } else {
                format!("{} range(s) differ", self.differences.len())
            },
            self.tables.len(),
            self.rows,
            human_bytes(self.bytes),
            human_duration(Duration::from_secs_f64(self.seconds))
        )
    }
}

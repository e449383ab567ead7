//! The proof that nothing but pgcutover committed on the source after the cut.
//! The fence refuses writes through triggers, but a superuser can step past them
//! (`session_replication_role = replica`, dropping a trigger): hope is not enough.
//! Once the fence has settled, and before the sentinel, each source database gets a
//! temporary logical slot (`pgoutput` over the publication the destination
//! subscribes to, so it sees exactly what replication would carry); right before the
//! commit point it is peeked. Every transaction it decoded must touch pgcutover's own
//! tables only (the sentinel); anything else rolls the switchover back, named.
//! A temporary slot lives as long as the run's connection, so a run that dies leaves
//! none behind.

use super::conn::Conn;
use super::error::SwitchoverError;
use super::fence::no_drift;
use super::machine::Run;
use crate::{PUBLICATION, REVERSE_PUBLICATION, SCHEMA};
use pgcutover_api::Direction;
use std::collections::{BTreeMap, BTreeSet};

/// Prefix of the temporary slots (one per database; one run at a time).
const SLOT_PREFIX: &str = "pgcutover_proof_";

impl Run<'_> {
    /// Creates the proof slots: after the fence settled (no transaction id held, so
    /// the slot is consistent at once) and before the sentinel.
    pub(super) async fn open_proof(&mut self) -> Result<(), SwitchoverError> {
        for d in &self.dbs {
            create_slot(&d.source, &slot_name(&d.name)).await?;
        }
        Ok(())
    }

    /// Peeks every proof slot: the transactions committed on the source since the
    /// fence. Fails naming the tables when one touched anything but pgcutover's own.
    pub(super) async fn check_proof(&mut self) -> Result<(), SwitchoverError> {
        let publication = match self.opts.direction {
            Direction::Forward => PUBLICATION,
            Direction::Rollback => REVERSE_PUBLICATION,
        };
        let mut lines = Vec::new();
        for d in &self.dbs {
            // DDL is not decoded: without the read-only default (no ALTER SYSTEM) it
            // could run after the fence; the DDL log shows it.
            let slot = slot_name(&d.name);
            // Pipelined on the one connection: this is inside the hold.
            let (drift, peeked) = tokio::join!(
                async {
                    match self.opts.direction {
                        Direction::Forward => no_drift(&d.source).await,
                        Direction::Rollback => Ok(()),
                    }
                },
                peek(&d.source, &slot, publication)
            );
            drift?;
            let peeked = peeked?;
            let foreign: Vec<&Transaction> = peeked.iter().filter(|t| !t.pgcutover_only()).collect();
            if !foreign.is_empty() {
                let tables: BTreeSet<&str> = foreign
                    .iter()
                    .flat_map(|t| t.tables.iter().map(String::as_str))
                    .collect();
                return Err(SwitchoverError::WrittenPastCut {
                    side: self.source(),
                    database: d.name.clone(),
                    transactions: foreign.len(),
                    tables: tables.into_iter().collect::<Vec<_>>().join(", "),
                });
            }
            lines.push(format!(
                "{}: nothing committed on {} after the fence but pgcutover's own ({} transaction(s), decoded)",
                d.name,
                self.source(),
                peeked.len()
            ));
        }
        self.report.cut_proof = lines;
        Ok(())
    }
}

/// The slot for `database`: a valid slot name (see [`crate::subscription_name`]).
fn slot_name(database: &str) -> String {
    let mut name = crate::subscription_name(database).replacen(crate::SUBSCRIPTION_PREFIX, SLOT_PREFIX, 1);
    name.truncate(63);
    name
}

async fn create_slot(c: &Conn, slot: &str) -> Result<(), SwitchoverError> {
    // Bounded: a transaction id still held (none should be, after the settle)
    // would make the slot wait for it.
    c.client
        .batch_execute("SET statement_timeout = '5s'")
        .await
        .map_err(c.failed("bounding the proof slot's creation"))?;
    let created = c
        .client
        .query_one(
            "select 1 from pg_catalog.pg_create_logical_replication_slot(slot_name => $1, plugin => 'pgoutput', temporary => true)",
            &[&slot],
        )
        .await
        .map_err(c.failed(format!("creating the temporary slot {slot} that proves the fence")));
    c.client
        .batch_execute("RESET statement_timeout")
        .await
        .map_err(c.failed("resetting statement_timeout"))?;
    created.map(|_| ())
}

/// One decoded transaction: the tables it changed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Transaction {
    tables: BTreeSet<String>,
}

impl Transaction {
    fn pgcutover_only(&self) -> bool {
        self.tables.iter().all(|t| t.starts_with(&format!("{SCHEMA}.")))
    }
}

/// The committed transactions in `slot` (without consuming them).
async fn peek(c: &Conn, slot: &str, publication: &str) -> Result<Vec<Transaction>, SwitchoverError> {
    let rows = c
        .client
        .query(
            "select xid::text, data from pg_catalog.pg_logical_slot_peek_binary_changes($1, NULL, NULL,
                    'proto_version', '1', 'publication_names', $2)",
            &[&slot, &publication],
        )
        .await
        .map_err(c.failed(format!("reading the proof slot {slot}")))?;
    let messages = rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)));
    Ok(transactions(messages))
}

/// Groups pgoutput messages by transaction id: relation messages name relation
/// ids, changes name the relations they touch, commits close a transaction.
fn transactions(messages: impl IntoIterator<Item = (String, Vec<u8>)>) -> Vec<Transaction> {
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut open: BTreeMap<String, Transaction> = BTreeMap::new();
    let mut done = Vec::new();
    for (xid, data) in messages {
        let Some((&tag, body)) = data.split_first() else {
            continue;
        };
        match tag {
            b'R' => {
                if let Some((relid, name)) = relation(body) {
                    names.insert(relid, name);
                }
            }
            b'I' | b'U' | b'D' => {
                if let Some(relid) = u32_at(body, 0) {
                    let name = names
                        .get(&relid)
                        .cloned()
                        .unwrap_or_else(|| format!("relation {relid}"));
                    open.entry(xid).or_default().tables.insert(name);
                }
            }
            b'T' => {
                // Int32 count, Int8 options, then the relation ids.
                let n = u32_at(body, 0).unwrap_or(0) as usize;
                for i in 0..n {
                    if let Some(relid) = u32_at(body, 5 + 4 * i) {
                        let name = names
                            .get(&relid)
                            .cloned()
                            .unwrap_or_else(|| format!("relation {relid}"));
                        open.entry(xid.clone()).or_default().tables.insert(name);
                    }
                }
            }
            b'C' => done.push(open.remove(&xid).unwrap_or_default()),
            _ => {}
        }
    }
    done
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A Relation message's id and `schema.table`.
fn relation(body: &[u8]) -> Option<(u32, String)> {
    let relid = u32_at(body, 0)?;
    let rest = body.get(4..)?;
    let mut parts = rest.splitn(3, |&b| b == 0);
    let schema = std::str::from_utf8(parts.next()?).ok()?;
    let table = std::str::from_utf8(parts.next()?).ok()?;
    Some((relid, format!("{schema}.{table}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_message(relid: u32, schema: &str, table: &str) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&relid.to_be_bytes());
        for s in [schema, table] {
            m.extend_from_slice(s.as_bytes());
            m.push(0);
        }
        m.extend_from_slice(&[b'd', 0, 0]);
        m
    }

    fn change(tag: u8, relid: u32) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&relid.to_be_bytes());
        m.extend_from_slice(b"N\0\0");
        m
    }

    #[test]
    fn the_sentinel_alone_is_pgcutover_only_and_a_bypassing_write_is_named() {
        let x = |n: &str| n.to_owned();
        let messages = vec![
            (x("700"), vec![b'B']),
            (x("700"), relation_message(16400, "pgcutover", "sentinel")),
            (x("700"), change(b'U', 16400)),
            (x("700"), vec![b'C']),
            (x("701"), vec![b'B']),
            (x("701"), relation_message(16384, "public", "items")),
            (x("701"), change(b'I', 16384)),
            (x("701"), change(b'U', 16400)),
            (x("701"), vec![b'C']),
        ];
        let t = transactions(messages);
        assert_eq!(t.len(), 2);
        assert!(t[0].pgcutover_only());
        assert!(!t[1].pgcutover_only());
        assert_eq!(
            t[1].tables.iter().cloned().collect::<Vec<_>>(),
            ["pgcutover.sentinel", "public.items"]
        );
    }

    #[test]
    fn a_truncate_names_each_table() {
        let mut truncate = vec![b'T'];
        truncate.extend_from_slice(&2u32.to_be_bytes());
        truncate.push(0);
        truncate.extend_from_slice(&16384u32.to_be_bytes());
        truncate.extend_from_slice(&16390u32.to_be_bytes());
        let messages = vec![
            ("9".to_owned(), relation_message(16384, "public", "items")),
            ("9".to_owned(), truncate),
            ("9".to_owned(), vec![b'C']),
        ];
        let t = transactions(messages);
        assert_eq!(
            t[0].tables.iter().cloned().collect::<Vec<_>>(),
            ["public.items", "relation 16390"]
        );
    }

    #[test]
    fn proof_slot_names_are_valid_slot_names() {
        assert_eq!(slot_name("app"), "pgcutover_proof_app");
        assert_eq!(slot_name(&"x".repeat(100)).len(), 63);
    }
}

//! End-to-end tests: real PostgreSQL servers (started by `pg-harness`), the real
//! proxy, real clients (tokio-postgres, psql, pgbench). One test binary so the slow
//! suite builds and links once.

mod admin_api;
mod auth;
mod aws;
mod bad_input;
mod cli;
mod cutover;
mod data_path;
mod demo;
mod deploy;
mod faults;
mod guarantees;
mod orchestrator;
mod peers;
mod pooling;
mod protocol_versions;
mod reconnect;
mod support;
mod switchover;
mod tls;

//! pgcutover's orchestrator: preflight checks, blue → green logical replication,
//! lag and drift monitors, data verification and the switchover state machine.
//!
//! The crate is part of the workspace layout from the start so that its boundary is
//! fixed (no I/O-free protocol code here, no client sessions here); its commands
//! (`check`, `replicate`, `status`, `verify`, `switchover`, `rollback`) arrive with
//! their own issues and are not exposed by the binary until they work.

//! The PostgreSQL wire protocol as pgcutover needs it, with no I/O.
//!
//! The proxy forwards almost every message without decoding it; this crate gives it
//! the few things it must understand: where frames start and end ([`frame`]), the
//! untagged startup-phase packets ([`startup`]), lazy views of the handful of
//! messages whose fields it reads ([`backend`], [`frontend`]), builders for the
//! messages it writes itself ([`build`]), and the password exchanges it speaks on
//! both sides ([`scram`], [`md5`]), quoting for the SQL it builds ([`quote`]), and a lexer that follows session state through
//! SQL text ([`sql`]).

pub mod backend;
pub mod build;
pub mod frame;
pub mod frontend;
pub mod md5;
pub mod quote;
pub mod scram;
pub mod sql;
pub mod startup;
mod view;

pub use frame::{Frame, FrameError, FrameHeader};
pub use startup::{CancelKey, CancelSecret, StartupMessage, StartupPacket};
pub use view::ViewError;

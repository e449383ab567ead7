//! Tags of messages clients send, and lazy views of the ones the proxy reads.

use crate::view::Cursor;
use crate::ViewError;

/// Simple-protocol Query.
pub const QUERY: u8 = b'Q';
/// Extended-protocol Parse.
pub const PARSE: u8 = b'P';
/// Extended-protocol Bind.
pub const BIND: u8 = b'B';
/// Extended-protocol Describe.
pub const DESCRIBE: u8 = b'D';
/// Extended-protocol Execute.
pub const EXECUTE: u8 = b'E';
/// Extended-protocol Close.
pub const CLOSE: u8 = b'C';
/// Extended-protocol Sync: ends a pipeline, answered by ReadyForQuery.
pub const SYNC: u8 = b'S';
/// Extended-protocol Flush.
pub const FLUSH: u8 = b'H';
/// Legacy FunctionCall, answered by ReadyForQuery.
pub const FUNCTION_CALL: u8 = b'F';
/// Terminate.
pub const TERMINATE: u8 = b'X';
/// PasswordMessage, SASLInitialResponse and SASLResponse share this tag.
pub const PASSWORD: u8 = b'p';
/// CopyData.
pub const COPY_DATA: u8 = b'd';
/// CopyDone.
pub const COPY_DONE: u8 = b'c';
/// CopyFail.
pub const COPY_FAIL: u8 = b'f';

/// Whether the server answers this message with a ReadyForQuery of its own.
pub fn ends_with_ready_for_query(tag: u8) -> bool {
    matches!(tag, QUERY | SYNC | FUNCTION_CALL)
}

/// Reads a Query body: the SQL text.
pub fn parse_query(body: &[u8]) -> Result<&str, ViewError> {
    Cursor::new(body, "Query").cstr()
}

/// The fields of a Parse message the session-state log needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseView<'a> {
    /// Statement name; empty for the unnamed statement.
    pub name: &'a str,
    /// The SQL text.
    pub query: &'a str,
    /// Number of parameter type OIDs the client specified.
    pub param_types: i16,
}

/// Reads a Parse body.
pub fn parse_parse(body: &[u8]) -> Result<ParseView<'_>, ViewError> {
    let mut c = Cursor::new(body, "Parse");
    let name = c.cstr()?;
    let query = c.cstr()?;
    let param_types = c.i16()?;
    if param_types < 0 || c.remaining().len() != param_types as usize * 4 {
        return Err(c.error("parameter type count does not match the body"));
    }
    Ok(ParseView {
        name,
        query,
        param_types,
    })
}

/// What a Close or Describe names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A prepared statement ('S').
    Statement(&'a str),
    /// A portal ('P').
    Portal(&'a str),
}

/// Reads a Close or Describe body.
pub fn parse_target(body: &[u8]) -> Result<Target<'_>, ViewError> {
    let mut c = Cursor::new(body, "Close/Describe");
    let kind = c.u8()?;
    let name = c.cstr()?;
    match kind {
        b'S' => Ok(Target::Statement(name)),
        b'P' => Ok(Target::Portal(name)),
        _ => Err(c.error("target kind is neither 'S' nor 'P'")),
    }
}

/// Reads a PasswordMessage body (cleartext or `md5...`), without its NUL.
pub fn parse_password(body: &[u8]) -> Result<&[u8], ViewError> {
    Cursor::new(body, "PasswordMessage").cstr_bytes()
}

/// Reads a SASLInitialResponse body: (mechanism, initial client response).
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ViewError> {
    let mut c = Cursor::new(body, "SASLInitialResponse");
    let mechanism = c.cstr()?;
    let len = c.i32()?;
    if len < 0 {
        return Ok((mechanism, &[]));
    }
    let data = c.bytes(len as usize)?;
    if !c.is_empty() {
        return Err(c.error("bytes after the initial response"));
    }
    Ok((mechanism, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_parse_and_close() {
        let p = parse_parse(b"s1\0select $1\0\0\x01\0\0\0\x17").unwrap();
        assert_eq!(
            p,
            ParseView {
                name: "s1",
                query: "select $1",
                param_types: 1
            }
        );
        assert!(parse_parse(b"s1\0select $1\0\0\x02\0\0\0\x17").is_err());
        assert_eq!(parse_target(b"Ss1\0").unwrap(), Target::Statement("s1"));
        assert_eq!(parse_target(b"P\0").unwrap(), Target::Portal(""));
        assert!(parse_target(b"Xs1\0").is_err());
    }

    #[test]
    fn reads_query_and_password_messages() {
        assert_eq!(parse_query(b"select 1\0").unwrap(), "select 1");
        assert!(parse_query(b"select 1").is_err());
        assert_eq!(parse_password(b"md5abc\0").unwrap(), b"md5abc");
        let (m, d) = parse_sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x03n,,").unwrap();
        assert_eq!((m, d), ("SCRAM-SHA-256", &b"n,,"[..]));
        assert!(parse_sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x09n,,").is_err());
    }
}

//! Builders for the messages the proxy writes itself. Each appends one whole frame
//! to `out`, so a caller can batch several into one write.

use crate::backend::TransactionStatus;
use crate::startup::CancelKey;
use bytes::{BufMut, BytesMut};

/// Appends a tagged frame whose body `body` writes; the length is patched in after.
pub fn frame(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let len_at = out.len();
    out.put_u32(0);
    body(out);
    let len = (out.len() - len_at) as u32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// Severity of an error the proxy reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An ErrorResponse the proxy sends on its own behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError<'a> {
    /// ERROR or FATAL.
    pub severity: Severity,
    /// The SQLSTATE, five characters (e.g. "08006").
    pub code: &'a str,
    /// The primary message: what happened.
    pub message: &'a str,
    /// Optional detail: why.
    pub detail: Option<&'a str>,
    /// Optional hint: what to do.
    pub hint: Option<&'a str>,
}

/// Appends an ErrorResponse.
pub fn error_response(out: &mut BytesMut, e: &ProxyError<'_>) {
    frame(out, crate::backend::ERROR_RESPONSE, |b| {
        b.put_u8(b'S');
        put_cstr(b, e.severity.as_str().as_bytes());
        b.put_u8(b'V');
        put_cstr(b, e.severity.as_str().as_bytes());
        b.put_u8(b'C');
        put_cstr(b, e.code.as_bytes());
        b.put_u8(b'M');
        put_cstr(b, e.message.as_bytes());
        if let Some(d) = e.detail {
            b.put_u8(b'D');
            put_cstr(b, d.as_bytes());
        }
        if let Some(h) = e.hint {
            b.put_u8(b'H');
            put_cstr(b, h.as_bytes());
        }
        b.put_u8(0);
    });
}

/// Appends AuthenticationOk.
pub fn authentication_ok(out: &mut BytesMut) {
    frame(out, b'R', |b| b.put_i32(0));
}

/// Appends AuthenticationMD5Password with `salt`.
pub fn authentication_md5(out: &mut BytesMut, salt: [u8; 4]) {
    frame(out, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

/// Appends AuthenticationSASL offering `mechanisms`.
pub fn authentication_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    frame(out, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    });
}

/// Appends AuthenticationSASLContinue carrying `data`.
pub fn authentication_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    frame(out, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

/// Appends AuthenticationSASLFinal carrying `data`.
pub fn authentication_sasl_final(out: &mut BytesMut, data: &[u8]) {
    frame(out, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

/// Appends ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    frame(out, crate::backend::PARAMETER_STATUS, |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    });
}

/// Appends BackendKeyData.
pub fn backend_key_data(out: &mut BytesMut, key: CancelKey) {
    frame(out, crate::backend::BACKEND_KEY_DATA, |b| {
        b.put_i32(key.pid);
        b.put_slice(key.secret.held());
    });
}

/// Appends ReadyForQuery.
pub fn ready_for_query(out: &mut BytesMut, status: TransactionStatus) {
    frame(out, crate::backend::READY_FOR_QUERY, |b| b.put_u8(status.as_byte()));
}

/// Appends NegotiateProtocolVersion: the version 3.`minor` the session will speak
/// and the `_pq_.` options not recognised. The version goes out whole (major in the
/// high half), as every PostgreSQL sends it and libpq 18 reads it.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: u16, unrecognized: &[&str]) {
    frame(out, crate::backend::NEGOTIATE_PROTOCOL_VERSION, |b| {
        b.put_i32(3 << 16 | i32::from(minor));
        b.put_i32(unrecognized.len() as i32);
        for o in unrecognized {
            put_cstr(b, o.as_bytes());
        }
    });
}

/// Appends a RowDescription of text columns (type `text`, OID 25).
pub fn row_description(out: &mut BytesMut, columns: &[&str]) {
    frame(out, crate::backend::ROW_DESCRIPTION, |b| {
        b.put_i16(columns.len() as i16);
        for c in columns {
            put_cstr(b, c.as_bytes());
            b.put_i32(0); // table OID
            b.put_i16(0); // column number
            b.put_i32(25); // text
            b.put_i16(-1); // variable length
            b.put_i32(-1); // no type modifier
            b.put_i16(0); // text format
        }
    });
}

/// Appends a DataRow of text values (`None` for NULL).
pub fn data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    frame(out, crate::backend::DATA_ROW, |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// Appends CommandComplete with `tag` (e.g. "SHOW").
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    frame(out, crate::backend::COMMAND_COMPLETE, |b| put_cstr(b, tag.as_bytes()));
}

/// Appends a PasswordMessage (cleartext or md5 response).
pub fn password_message(out: &mut BytesMut, password: &[u8]) {
    frame(out, crate::frontend::PASSWORD, |b| put_cstr(b, password));
}

/// Appends SASLInitialResponse.
pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    frame(out, crate::frontend::PASSWORD, |b| {
        put_cstr(b, mechanism.as_bytes());
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

/// Appends SASLResponse.
pub fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    frame(out, crate::frontend::PASSWORD, |b| b.put_slice(data));
}

/// Appends Terminate.
pub fn terminate(out: &mut BytesMut) {
    frame(out, crate::frontend::TERMINATE, |_| {});
}

/// Appends a simple-protocol Query.
pub fn query(out: &mut BytesMut, sql: &str) {
    frame(out, crate::frontend::QUERY, |b| put_cstr(b, sql.as_bytes()));
}

/// Appends Parse (unnamed statement, untyped parameters) + Bind (text parameters,
/// text results) + Execute + Sync: one parameterised query in one round trip.
pub fn extended_query(out: &mut BytesMut, sql: &str, params: &[Option<&str>]) {
    frame(out, crate::frontend::PARSE, |b| {
        put_cstr(b, b"");
        put_cstr(b, sql.as_bytes());
        b.put_i16(0);
    });
    frame(out, crate::frontend::BIND, |b| {
        put_cstr(b, b"");
        put_cstr(b, b"");
        b.put_i16(0);
        b.put_i16(params.len() as i16);
        for p in params {
            match p {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
        b.put_i16(0);
    });
    frame(out, crate::frontend::EXECUTE, |b| {
        put_cstr(b, b"");
        b.put_i32(0);
    });
    frame(out, crate::frontend::SYNC, |_| {});
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{parse_ready_for_query, ErrorFields};
    use crate::frame::decode_frame;

    #[test]
    fn error_response_has_sqlstate_and_hint() {
        let mut out = BytesMut::new();
        error_response(
            &mut out,
            &ProxyError {
                severity: Severity::Fatal,
                code: "53300",
                message: "too many clients",
                detail: None,
                hint: Some("raise max_client_conn"),
            },
        );
        let f = decode_frame(&mut out, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'E');
        let fields = ErrorFields::new(&f.body);
        assert_eq!(fields.code(), Some("53300"));
        assert_eq!(fields.severity(), Some("FATAL"));
        assert_eq!(fields.get(b'H'), Some("raise max_client_conn"));
        assert!(out.is_empty());
    }

    #[test]
    fn rows_round_trip_through_the_views() {
        let mut out = BytesMut::new();
        row_description(&mut out, &["route", "clients"]);
        data_row(&mut out, &[Some("blue"), None]);
        command_complete(&mut out, "SHOW");
        let f = decode_frame(&mut out, 1024).unwrap().unwrap();
        assert_eq!((f.tag, &f.body[..2]), (b'T', &b"\0\x02"[..]));
        let f = decode_frame(&mut out, 1024).unwrap().unwrap();
        assert_eq!(
            crate::backend::parse_data_row(&f.body).unwrap(),
            vec![Some(&b"blue"[..]), None]
        );
        let f = decode_frame(&mut out, 1024).unwrap().unwrap();
        assert_eq!((f.tag, &f.body[..]), (b'C', &b"SHOW\0"[..]));
    }

    #[test]
    fn exact_bytes_of_small_messages() {
        let mut out = BytesMut::new();
        ready_for_query(&mut out, TransactionStatus::Idle);
        authentication_ok(&mut out);
        backend_key_data(&mut out, CancelKey::short(1, 2));
        assert_eq!(
            &out[..],
            b"Z\0\0\0\x05IR\0\0\0\x08\0\0\0\0K\0\0\0\x0c\0\0\0\x01\0\0\0\x02"
        );
        let mut out = BytesMut::new();
        ready_for_query(&mut out, TransactionStatus::Failed);
        let f = decode_frame(&mut out, 16).unwrap().unwrap();
        assert_eq!(parse_ready_for_query(&f.body).unwrap(), TransactionStatus::Failed);
    }
}

//! Tags of messages servers send, and lazy views of the ones the proxy reads.

use crate::startup::CancelKey;
use crate::view::Cursor;
use crate::ViewError;

/// Authentication request or result.
pub const AUTHENTICATION: u8 = b'R';
/// BackendKeyData.
pub const BACKEND_KEY_DATA: u8 = b'K';
/// ParameterStatus.
pub const PARAMETER_STATUS: u8 = b'S';
/// ReadyForQuery.
pub const READY_FOR_QUERY: u8 = b'Z';
/// ErrorResponse.
pub const ERROR_RESPONSE: u8 = b'E';
/// NoticeResponse.
pub const NOTICE_RESPONSE: u8 = b'N';
/// NotificationResponse (LISTEN/NOTIFY).
pub const NOTIFICATION_RESPONSE: u8 = b'A';
/// NegotiateProtocolVersion.
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
/// DataRow.
pub const DATA_ROW: u8 = b'D';
/// RowDescription.
pub const ROW_DESCRIPTION: u8 = b'T';
/// CommandComplete.
pub const COMMAND_COMPLETE: u8 = b'C';
/// ParseComplete.
pub const PARSE_COMPLETE: u8 = b'1';
/// BindComplete.
pub const BIND_COMPLETE: u8 = b'2';

/// An Authentication message's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// Authentication succeeded.
    Ok,
    /// Send the password in clear.
    CleartextPassword,
    /// Send `md5(md5(password || user) || salt)`.
    Md5Password {
        /// The 4-byte salt.
        salt: [u8; 4],
    },
    /// Start SASL with one of these mechanisms (NUL-separated list, as sent).
    Sasl(SaslMechanisms<'a>),
    /// The server's SASL challenge.
    SaslContinue(&'a [u8]),
    /// The server's final SASL message.
    SaslFinal(&'a [u8]),
    /// A method pgcutover does not speak (Kerberos, GSSAPI, SSPI), by its code.
    Unsupported(i32),
}

/// The mechanism list of an AuthenticationSASL message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslMechanisms<'a>(&'a [u8]);

impl<'a> SaslMechanisms<'a> {
    /// The mechanisms by name.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> {
        self.0.split(|&b| b == 0).filter(|m| !m.is_empty())
    }

    /// Whether `name` is offered.
    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|m| m == name.as_bytes())
    }
}

/// Reads an Authentication message body.
pub fn parse_authentication(body: &[u8]) -> Result<Authentication<'_>, ViewError> {
    let mut c = Cursor::new(body, "Authentication");
    let code = c.i32()?;
    Ok(match code {
        0 => Authentication::Ok,
        3 => Authentication::CleartextPassword,
        5 => {
            let s = c.bytes(4)?;
            Authentication::Md5Password {
                salt: [s[0], s[1], s[2], s[3]],
            }
        }
        10 => Authentication::Sasl(SaslMechanisms(c.remaining())),
        11 => Authentication::SaslContinue(c.remaining()),
        12 => Authentication::SaslFinal(c.remaining()),
        other => Authentication::Unsupported(other),
    })
}

/// Reads a ParameterStatus body: (name, value).
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), ViewError> {
    let mut c = Cursor::new(body, "ParameterStatus");
    Ok((c.cstr()?, c.cstr()?))
}

/// Reads a BackendKeyData body.
pub fn parse_backend_key_data(body: &[u8]) -> Result<CancelKey, ViewError> {
    let mut c = Cursor::new(body, "BackendKeyData");
    let pid = c.i32()?;
    // pgcutover asks servers for 3.0 (4-byte secrets); a longer one, which only a
    // 3.2 server could send, is taken as long as it can be quoted back whole.
    let secret = crate::startup::CancelSecret::from_wire(c.remaining())
        .filter(|s| s.is_whole())
        .ok_or_else(|| c.error("secret is not 4 to 32 bytes"))?;
    Ok(CancelKey { pid, secret })
}

/// The session's transaction state, as ReadyForQuery reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// 'I': not in a transaction block.
    Idle,
    /// 'T': in a transaction block.
    InTransaction,
    /// 'E': in a failed transaction block (queries rejected until ROLLBACK).
    Failed,
}

impl TransactionStatus {
    /// The status byte on the wire.
    pub fn as_byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// Reads a ReadyForQuery body.
pub fn parse_ready_for_query(body: &[u8]) -> Result<TransactionStatus, ViewError> {
    match body {
        b"I" => Ok(TransactionStatus::Idle),
        b"T" => Ok(TransactionStatus::InTransaction),
        b"E" => Ok(TransactionStatus::Failed),
        _ => Err(ViewError {
            message: "ReadyForQuery",
            problem: "status is not one of I, T, E",
        }),
    }
}

/// The fields of an ErrorResponse or NoticeResponse, read on demand.
#[derive(Debug, Clone, Copy)]
pub struct ErrorFields<'a>(&'a [u8]);

impl<'a> ErrorFields<'a> {
    /// Wraps an ErrorResponse/NoticeResponse body.
    pub fn new(body: &'a [u8]) -> Self {
        ErrorFields(body)
    }

    /// Every (field type, value) pair; stops at the first malformed field.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &'a str)> {
        let mut c = Cursor::new(self.0, "ErrorResponse");
        std::iter::from_fn(move || {
            let code = c.u8().ok().filter(|&b| b != 0)?;
            let value = c.cstr().ok()?;
            Some((code, value))
        })
    }

    /// One field by its type byte.
    pub fn get(&self, field: u8) -> Option<&'a str> {
        self.iter().find(|(c, _)| *c == field).map(|(_, v)| v)
    }

    /// The SQLSTATE ('C').
    pub fn code(&self) -> Option<&'a str> {
        self.get(b'C')
    }

    /// The primary message ('M').
    pub fn message(&self) -> Option<&'a str> {
        self.get(b'M')
    }

    /// The non-localized severity ('V'), else the localized one ('S').
    pub fn severity(&self) -> Option<&'a str> {
        self.get(b'V').or_else(|| self.get(b'S'))
    }
}

/// The columns of a DataRow: `None` for SQL NULL.
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, ViewError> {
    let mut c = Cursor::new(body, "DataRow");
    let n = c.i16()?;
    if n < 0 {
        return Err(c.error("negative column count"));
    }
    let mut cols = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = c.i32()?;
        cols.push(if len < 0 { None } else { Some(c.bytes(len as usize)?) });
    }
    Ok(cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_authentication_requests() {
        assert_eq!(parse_authentication(b"\0\0\0\0").unwrap(), Authentication::Ok);
        assert_eq!(
            parse_authentication(b"\0\0\0\x05abcd").unwrap(),
            Authentication::Md5Password { salt: *b"abcd" }
        );
        match parse_authentication(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0").unwrap() {
            Authentication::Sasl(m) => {
                assert!(m.contains("SCRAM-SHA-256"));
                assert_eq!(m.iter().count(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_authentication(b"\0\0\0\x0br=abc").unwrap(),
            Authentication::SaslContinue(b"r=abc")
        );
        assert!(parse_authentication(b"\0\0\0\x05ab").is_err());
        assert!(parse_authentication(b"\0\0").is_err());
    }

    #[test]
    fn reads_status_messages() {
        assert_eq!(
            parse_parameter_status(b"server_version\x0015.4\0").unwrap(),
            ("server_version", "15.4")
        );
        assert!(parse_parameter_status(b"server_version\x0015.4").is_err());
        assert_eq!(
            parse_backend_key_data(b"\0\0\x30\x39\xff\xff\xff\xfe").unwrap(),
            CancelKey::short(12345, -2)
        );
        assert!(parse_backend_key_data(b"\0\0\x30\x39").is_err());
        assert_eq!(parse_ready_for_query(b"T").unwrap(), TransactionStatus::InTransaction);
        assert!(parse_ready_for_query(b"X").is_err());
        assert!(parse_ready_for_query(b"").is_err());
    }

    #[test]
    fn reads_error_fields() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0";
        let f = ErrorFields::new(body);
        assert_eq!(f.code(), Some("28P01"));
        assert_eq!(f.severity(), Some("FATAL"));
        assert_eq!(f.message(), Some("password authentication failed"));
        // Truncated: the iterator stops instead of failing or panicking.
        assert_eq!(ErrorFields::new(b"SFATAL\0C28").iter().count(), 1);
    }

    #[test]
    fn reads_data_rows() {
        let row = parse_data_row(b"\0\x02\0\0\0\x03abc\xff\xff\xff\xff").unwrap();
        assert_eq!(row, vec![Some(&b"abc"[..]), None]);
        assert!(parse_data_row(b"\0\x01\0\0\0\x09abc").is_err());
    }
}

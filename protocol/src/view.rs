//! A cursor over a message body, shared by the lazy views.

/// A message body that does not have the shape its tag promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {message} message: {problem}")]
pub struct ViewError {
    /// Which message was being read.
    pub message: &'static str,
    /// What was wrong with it.
    pub problem: &'static str,
}

/// Reads fields front to back; every read is bounds-checked.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], message: &'static str) -> Self {
        Cursor { buf, message }
    }

    pub(crate) fn error(&self, problem: &'static str) -> ViewError {
        ViewError {
            message: self.message,
            problem,
        }
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ViewError> {
        if self.buf.len() < n {
            return Err(self.error("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ViewError> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn i16(&mut self) -> Result<i16, ViewError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ViewError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated string, without its terminator.
    pub(crate) fn cstr_bytes(&mut self) -> Result<&'a [u8], ViewError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.error("string without NUL terminator"))?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub(crate) fn cstr(&mut self) -> Result<&'a str, ViewError> {
        let b = self.cstr_bytes()?;
        std::str::from_utf8(b).map_err(|_| self.error("string is not UTF-8"))
    }
}

//! PostgreSQL WAL positions (`pg_lsn`): `X/Y` in hex.

use std::fmt;
use std::str::FromStr;

/// A WAL position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Lsn, String> {
        let bad = || format!("{s:?} is not an LSN; expected the form 0/16B3748 (hex/hex)");
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let l: Lsn = "0/1000FB78".parse().unwrap();
        assert_eq!(l.0, 0x1000FB78);
        assert_eq!(l.to_string(), "0/1000FB78");
        assert_eq!("1A/0".parse::<Lsn>().unwrap().to_string(), "1A/0");
        assert!("nope".parse::<Lsn>().is_err());
        assert!("0/XYZ".parse::<Lsn>().is_err());
        assert!("1/2".parse::<Lsn>().unwrap() > "0/FFFFFFFF".parse().unwrap());
    }
}

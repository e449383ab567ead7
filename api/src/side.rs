//! Blue and green: the one name for a side, used in config, the admin API, metrics,
//! logs and the orchestrator.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A database clients can be routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The database clients use before the switchover.
    Blue,
    /// The database they move to.
    Green,
}

impl Side {
    /// The name used in config, logs, the admin API and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Side::Blue => "blue",
            Side::Green => "green",
        }
    }

    /// Parses "blue" or "green".
    pub fn parse(s: &str) -> Option<Side> {
        match s {
            "blue" => Some(Side::Blue),
            "green" => Some(Side::Green),
            _ => None,
        }
    }

    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Blue => Side::Green,
            Side::Green => Side::Blue,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One value per side, serialised as `{"blue": .., "green": ..}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerSide<T> {
    /// Blue's value.
    pub blue: T,
    /// Green's value.
    pub green: T,
}

impl<T> PerSide<T> {
    /// Builds both values from one function of the side.
    pub fn from_fn(mut f: impl FnMut(Side) -> T) -> PerSide<T> {
        PerSide {
            blue: f(Side::Blue),
            green: f(Side::Green),
        }
    }

    /// The value for `side`.
    pub fn get(&self, side: Side) -> &T {
        match side {
            Side::Blue => &self.blue,
            Side::Green => &self.green,
        }
    }

    /// The value for `side`, to change.
    pub fn get_mut(&mut self, side: Side) -> &mut T {
        match side {
            Side::Blue => &mut self.blue,
            Side::Green => &mut self.green,
        }
    }
}

//! Which database new work goes to. A route change is one `watch` send: sessions
//! compare the epoch of their server with the route's at every transaction boundary.

/// A database clients can be routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Target {
    /// The database clients use before the switchover.
    Blue = 0,
    /// The database they move to.
    Green = 1,
}

impl Target {
    /// The name used in config, logs, the admin API and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Target::Blue => "blue",
            Target::Green => "green",
        }
    }

    /// Parses "blue" or "green".
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "blue" => Some(Target::Blue),
            "green" => Some(Target::Green),
            _ => None,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Target {
        if v == Target::Green as u8 {
            Target::Green
        } else {
            Target::Blue
        }
    }
}

/// The active target and how many times it has changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Where sessions should be.
    pub target: Target,
    /// Increases with every flip; a session whose server has an older epoch moves.
    pub epoch: u64,
}

//! Which database new work goes to. A route change is one `watch` send: sessions
//! compare the epoch of their server with the route's at every transaction boundary.

use pgcutover_api::Side;

/// The active side and how many times it has changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Where sessions should be.
    pub target: Side,
    /// Increases with every flip; a session whose server has an older epoch moves.
    pub epoch: u64,
}

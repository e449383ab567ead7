//! The undo log: each change the run makes before the commit point is recorded
//! *before* it is attempted (a change whose answer was lost is undone too; every undo
//! is idempotent), and a rollback undoes them in reverse order.

use crate::targets::Side;
use std::fmt;

/// One change to undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Undo {
    /// This run created the reverse publication on green in `database`.
    DropReversePublication {
        /// The database.
        database: String,
    },
    /// The proxies were told to hold: resume them.
    Resume,
    /// `side` was fenced (server-wide, through a connection to `database`).
    Unfence {
        /// The fenced side.
        side: Side,
        /// The database the fence was set through.
        database: String,
    },
    /// The destination, fenced before the run, was unfenced for the flip.
    Refence {
        /// The destination.
        side: Side,
        /// The database the fence was lifted through.
        database: String,
    },
    /// Green's reverse slot for `database` was created.
    DropReverseSlot {
        /// The database.
        database: String,
    },
    /// The journal was told clients belong on the destination: tell it the source.
    RestoreRoute,
}

impl fmt::Display for Undo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undo::DropReversePublication { database } => write!(f, "{database}: dropping the reverse publication"),
            Undo::Resume => f.write_str("resuming the proxies"),
            Undo::Unfence { side, .. } => write!(f, "lifting the fence on {side}"),
            Undo::Refence { side, .. } => write!(f, "fencing {side} again"),
            Undo::DropReverseSlot { database } => write!(f, "{database}: dropping the reverse slot"),
            Undo::RestoreRoute => f.write_str("recording the source's route in the journal"),
        }
    }
}

impl Undo {
    /// The journal's spelling (`kind|side|database`, the database last: a name may
    /// hold any character), read back by [`Undo::decode`].
    pub(super) fn encode(&self) -> String {
        match self {
            Undo::DropReversePublication { database } => format!("drop_reverse_publication||{database}"),
            Undo::Resume => "resume||".to_owned(),
            Undo::Unfence { side, database } => format!("unfence|{side}|{database}"),
            Undo::Refence { side, database } => format!("refence|{side}|{database}"),
            Undo::DropReverseSlot { database } => format!("drop_reverse_slot||{database}"),
            Undo::RestoreRoute => "restore_route||".to_owned(),
        }
    }

    /// An entry written by [`Undo::encode`]; `None` for anything else.
    pub(super) fn decode(text: &str) -> Option<Undo> {
        let mut parts = text.splitn(3, '|');
        let (kind, side, database) = (parts.next()?, parts.next()?, parts.next()?.to_owned());
        let side = match side {
            "blue" => Some(Side::Blue),
            "green" => Some(Side::Green),
            _ => None,
        };
        Some(match (kind, side) {
            ("drop_reverse_publication", None) => Undo::DropReversePublication { database },
            ("resume", None) => Undo::Resume,
            ("unfence", Some(side)) => Undo::Unfence { side, database },
            ("refence", Some(side)) => Undo::Refence { side, database },
            ("drop_reverse_slot", None) => Undo::DropReverseSlot { database },
            ("restore_route", None) => Undo::RestoreRoute,
            _ => return None,
        })
    }
}

/// The changes made so far, until the commit point; after it nothing is undone.
#[derive(Debug, Default)]
pub(super) struct UndoLog {
    entries: Vec<Undo>,
    committed: bool,
}

impl UndoLog {
    /// Records a change about to be made (none past the commit point: nothing
    /// would undo it).
    pub(super) fn push(&mut self, undo: Undo) {
        if !self.committed {
            self.entries.push(undo);
        }
    }

    /// The commit point: from here on the run completes, whatever fails.
    pub(super) fn commit(&mut self) {
        self.committed = true;
        self.entries.clear();
    }

    /// Whether the commit point has passed.
    pub(super) fn committed(&self) -> bool {
        self.committed
    }

    /// The changes recorded so far, oldest first.
    pub(super) fn entries(&self) -> &[Undo] {
        &self.entries
    }

    /// Takes the changes, newest first: the order to undo them in.
    pub(super) fn unwind(&mut self) -> impl Iterator<Item = Undo> {
        std::mem::take(&mut self.entries).into_iter().rev()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward_run_with_reverse_replication() -> UndoLog {
        let mut log = UndoLog::default();
        log.push(Undo::DropReversePublication { database: "app".into() });
        log.push(Undo::Resume);
        log.push(Undo::Unfence {
            side: Side::Blue,
            database: "app".into(),
        });
        log.push(Undo::DropReverseSlot { database: "app".into() });
        log.push(Undo::DropReverseSlot {
            database: "shop".into(),
        });
        log
    }

    #[test]
    fn unwinding_undoes_newest_first() {
        let mut log = forward_run_with_reverse_replication();
        let order: Vec<String> = log.unwind().map(|u| u.to_string()).collect();
        assert_eq!(
            order,
            [
                "shop: dropping the reverse slot",
                "app: dropping the reverse slot",
                "lifting the fence on blue",
                "resuming the proxies",
                "app: dropping the reverse publication",
            ]
        );
    }

    #[test]
    fn clients_resume_only_once_the_fence_is_lifted() {
        let mut log = forward_run_with_reverse_replication();
        let order: Vec<Undo> = log.unwind().collect();
        let unfence = order.iter().position(|u| matches!(u, Undo::Unfence { .. }));
        let resume = order.iter().position(|u| *u == Undo::Resume);
        assert!(unfence.unwrap() < resume.unwrap(), "{order:?}");
    }

    #[test]
    fn a_rollback_run_fences_blue_again_and_resumes_on_a_writable_green() {
        let mut log = UndoLog::default();
        log.push(Undo::Resume);
        log.push(Undo::Unfence {
            side: Side::Green,
            database: "app".into(),
        });
        log.push(Undo::Refence {
            side: Side::Blue,
            database: "app".into(),
        });
        let order: Vec<String> = log.unwind().map(|u| u.to_string()).collect();
        assert_eq!(
            order,
            [
                "fencing blue again",
                "lifting the fence on green",
                "resuming the proxies"
            ]
        );
    }

    #[test]
    fn a_log_unwinds_once() {
        let mut log = forward_run_with_reverse_replication();
        assert_eq!(log.unwind().count(), 5);
        assert_eq!(log.unwind().count(), 0);
    }

    #[test]
    fn a_refused_run_undoes_only_what_preflight_made() {
        let mut log = UndoLog::default();
        log.push(Undo::DropReversePublication { database: "app".into() });
        assert_eq!(
            log.unwind().collect::<Vec<_>>(),
            [Undo::DropReversePublication { database: "app".into() }]
        );
        let mut nothing = UndoLog::default();
        assert_eq!(nothing.unwind().count(), 0);
    }

    #[test]
    fn every_entry_reads_back_as_written() {
        let mut log = forward_run_with_reverse_replication();
        log.push(Undo::Refence {
            side: Side::Green,
            database: "odd|name".into(),
        });
        log.push(Undo::RestoreRoute);
        for undo in log.entries() {
            assert_eq!(Undo::decode(&undo.encode()).as_ref(), Some(undo), "{}", undo.encode());
        }
        for junk in [
            "",
            "resume",
            "unfence||app",
            "drop_everything||app",
            "unfence|purple|app",
        ] {
            assert_eq!(Undo::decode(junk), None, "{junk}");
        }
    }

    #[test]
    fn past_the_commit_point_nothing_is_undone() {
        let mut log = forward_run_with_reverse_replication();
        assert!(!log.committed());
        log.commit();
        assert!(log.committed());
        log.push(Undo::Resume);
        assert_eq!(log.unwind().count(), 0);
    }
}

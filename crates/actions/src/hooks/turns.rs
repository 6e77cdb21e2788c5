//! Spawned runs (after-step) take their turn: one event at a time, in the
//! order they came, even when an earlier one's thread never started.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};

use super::lock;

/// A queue of tickets, served in order.
#[derive(Default)]
pub(super) struct Turns {
    tickets: Mutex<Tickets>,
    turn: Condvar,
}

#[derive(Default)]
struct Tickets {
    next: u64,
    serving: u64,
    /// Tickets whose thread never started.
    skipped: BTreeSet<u64>,
}

impl Tickets {
    fn advance(&mut self) {
        self.serving += 1;
        while self.skipped.remove(&self.serving) {
            self.serving += 1;
        }
    }
}

impl Turns {
    /// The next place in line.
    pub(super) fn ticket(&self) -> u64 {
        let mut t = lock(&self.tickets);
        t.next += 1;
        t.next - 1
    }

    /// Wait until it is `ticket`'s turn.
    pub(super) fn wait_for(&self, ticket: u64) {
        let mut t = lock(&self.tickets);
        while t.serving != ticket {
            t = self.turn.wait(t).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The turn being served is over.
    pub(super) fn done(&self) {
        lock(&self.tickets).advance();
        self.turn.notify_all();
    }

    /// `ticket`'s thread never started: its turn passes.
    pub(super) fn skip(&self, ticket: u64) {
        let mut t = lock(&self.tickets);
        if t.serving == ticket {
            t.advance();
        } else {
            t.skipped.insert(ticket);
        }
        drop(t);
        self.turn.notify_all();
    }
}

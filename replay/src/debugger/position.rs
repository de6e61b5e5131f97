//! Where a debugged replay stands, exactly.
//!
//! Between two records of the trace the guest is deterministic, so a point of the run is
//! named by the last record replay consumed (an exit matched, or an event applied) and a
//! path from that record's boundary: a number of instruction boundaries single-stepped, or
//! the n-th hit of a set of breakpoints and watchpoints, or a sequence of both. Reaching a
//! point again means restoring a checkpoint at or before its record, replaying to the
//! record, and walking the path; a path of hits is walked without single-stepping (the
//! hardware stops the guest), so a `continue` that stops far into a long stretch is cheap
//! to return to. A path of steps only ([`Position::steps`]) is the normal form reverse
//! execution computes with.

use std::fmt;
use std::sync::Arc;

use super::stops::StopSet;

/// One leg of a path from a record's boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leg {
    /// This many instruction boundaries, single-stepped.
    Steps(u64),
    /// To the n-th boundary (after the leg's start) where `stops` fires.
    Hits {
        /// The breakpoints and watchpoints counted.
        stops: Arc<StopSet>,
        /// Which hit.
        n: u64,
    },
}

/// A point of the replayed run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    /// The last record consumed; `None` before the first record of a guest rebuilt from
    /// the trace.
    pub record: Option<u64>,
    /// How to get from the record's boundary to the point.
    pub path: Vec<Leg>,
}

impl Position {
    /// The boundary right after `record` was consumed.
    pub fn at_record(record: Option<u64>) -> Self {
        Position { record, path: Vec::new() }
    }

    /// `steps` instruction boundaries after `record`.
    pub fn stepped(record: Option<u64>, steps: u64) -> Self {
        let path = if steps == 0 { Vec::new() } else { vec![Leg::Steps(steps)] };
        Position { record, path }
    }

    /// The number of steps from the record's boundary, when the path is steps only.
    pub fn steps(&self) -> Option<u64> {
        self.path.iter().try_fold(0u64, |acc, l| match l {
            Leg::Steps(n) => Some(acc + n),
            Leg::Hits { .. } => None,
        })
    }

    /// One more boundary single-stepped.
    pub fn step(&mut self) {
        match self.path.last_mut() {
            Some(Leg::Steps(n)) => *n += 1,
            _ => self.path.push(Leg::Steps(1)),
        }
    }

    /// One more hit of `stops`: the last leg counts one more when it counts the same
    /// stops, else a new leg starts (its first hit).
    pub fn hit(&mut self, stops: &Arc<StopSet>) {
        match self.path.last_mut() {
            Some(Leg::Hits { stops: s, n }) if Arc::ptr_eq(s, stops) || **s == **stops => *n += 1,
            _ => self.path.push(Leg::Hits { stops: Arc::clone(stops), n: 1 }),
        }
    }

    /// A record's boundary was crossed: the path starts again from it.
    pub fn consumed(&mut self, record: u64) {
        self.record = Some(record);
        self.path.clear();
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.record {
            Some(r) => write!(f, "record {r}")?,
            None => f.write_str("the start")?,
        }
        match self.steps() {
            Some(0) => Ok(()),
            Some(n) => write!(f, " + {n} instruction{}", if n == 1 { "" } else { "s" }),
            None => {
                for leg in &self.path {
                    match leg {
                        Leg::Steps(n) => write!(f, " + {n} step{}", if *n == 1 { "" } else { "s" })?,
                        Leg::Hits { n, .. } => write!(f, " + hit {n}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_merge_and_hits_make_new_legs() {
        let mut p = Position::at_record(Some(7));
        p.step();
        p.step();
        assert_eq!(p.steps(), Some(2));
        let s = Arc::new(StopSet::default());
        p.hit(&s);
        p.hit(&s);
        assert_eq!(p.path.len(), 2);
        assert_eq!(p.steps(), None);
        p.step();
        assert_eq!(p.to_string(), "record 7 + 2 steps + hit 2 + 1 step");
        p.consumed(9);
        assert_eq!(p, Position::at_record(Some(9)));
        assert_eq!(Position::stepped(None, 3).to_string(), "the start + 3 instructions");
    }
}

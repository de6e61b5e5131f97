//! A profile as plain data (what `vmrr profile --json` prints): per table, per key, the
//! count, shares and time distributions. Key names and field names are a stable interface.

use std::collections::BTreeMap;

use serde::Serialize;

use super::histogram::Histogram;
use super::profiler::{Profile, Row, Table};

/// A distribution of durations, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Dist {
    /// Durations measured.
    pub samples: u64,
    /// Their sum.
    pub total: u64,
    /// Smallest.
    pub min: u64,
    /// Median (nearest rank).
    pub p50: u64,
    /// 99th percentile (nearest rank).
    pub p99: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: u64,
}

impl Dist {
    /// The distribution `h` holds, or `None` when it is empty.
    pub fn of(h: &Histogram) -> Option<Dist> {
        Some(Dist {
            samples: h.count(),
            total: h.total_ns(),
            min: h.min_ns()?,
            p50: h.quantile_ns(0.5)?,
            p99: h.quantile_ns(0.99)?,
            max: h.max_ns()?,
            mean: h.mean_ns()?,
        })
    }
}

/// One key of a table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowReport {
    /// 1 for the costliest (most handler time; most exits without timing).
    pub rank: usize,
    /// Exits.
    pub count: u64,
    /// Share of the table's exits, 0..1.
    pub share: f64,
    /// Share of the table's measured handler time, 0..1 (`None` without timing).
    pub time_share: Option<f64>,
    /// Handler time: exit to the next `KVM_RUN` (`None` without timing).
    pub handler_ns: Option<Dist>,
    /// Time in `KVM_RUN` before these exits (`None` without timing).
    pub guest_ns: Option<Dist>,
}

impl RowReport {
    fn of(rank: usize, row: &Row, table: &Table) -> Self {
        let exits = table.exits().max(1) as f64;
        let total = table.handler_total_ns();
        RowReport {
            rank,
            count: row.count,
            share: row.count as f64 / exits,
            time_share: (total > 0).then(|| row.handler.total_ns() as f64 / total as f64),
            handler_ns: Dist::of(&row.handler),
            guest_ns: Dist::of(&row.guest),
        }
    }
}

/// A table's `top` costliest keys (all with `None`), by name.
pub fn table_report(table: &Table, top: Option<usize>) -> BTreeMap<String, RowReport> {
    table
        .rows()
        .into_iter()
        .take(top.unwrap_or(usize::MAX))
        .enumerate()
        .map(|(i, row)| (row.key.to_string(), RowReport::of(i + 1, row, table)))
        .collect()
}

/// The whole profile as JSON: `summary`, `timing` (whether any exit carried timing),
/// `by_<grouping>` for each table (`by_kind` always), `checkpoints` (handler times that
/// include a checkpoint) and `folded` (groupings that reached the key limit).
pub fn profile_json(p: &Profile, top: Option<usize>) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("summary".into(), json_of(&p.summary));
    m.insert("timing".into(), serde_json::Value::Bool(p.summary.timed_exits > 0));
    for t in &p.tables {
        m.insert(format!("by_{}", t.by.name()), json_of(&table_report(t, top)));
    }
    m.insert(
        "checkpoints".into(),
        serde_json::json!({"count": p.checkpoints.count(), "handler_ns": Dist::of(&p.checkpoints)}),
    );
    let folded: Vec<&str> = p.tables.iter().filter(|t| t.folded()).map(|t| t.by.name()).collect();
    m.insert("folded".into(), json_of(&folded));
    serde_json::Value::Object(m)
}

fn json_of(v: &impl Serialize) -> serde_json::Value {
    // Plain structs, maps with string keys and numbers: serialisation cannot fail.
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

//! The aggregation: one pass over a trace's records, into tables of exits per kind, port,
//! MMIO address, MSR and vCPU with their handler and guest times.
//!
//! Each vCPU is followed on its own: its exits on its own time axis
//! ([`vmrr_format::axis`]), and an exit's handler time (which travels in the vCPU's next
//! exit record) goes to that vCPU's previous exit, whatever other vCPUs exited in
//! between. Records of device threads ([`super::thread`]) are events: they count as
//! records and nothing else.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use vmrr_format::kind;
use vmrr_format::{Body, Record, end_reason};

use super::blocks::BlockSampler;
use super::histogram::Histogram;
use super::key::{By, Key};
use super::rate::RateSeries;
use vmrr_format::axis::{Axes, MAX_AXES, Placed};

/// Distinct keys a table keeps; exits of further keys are counted together as
/// [`Key::Other`].
pub const DEFAULT_MAX_KEYS: usize = 4096;

/// What to aggregate.
#[derive(Debug, Clone)]
pub struct ProfileOptions {
    /// Tables besides the one by kind (always kept).
    pub by: Vec<By>,
    /// Distinct keys per table before the rest is folded into [`Key::Other`].
    pub max_keys: usize,
    /// Keep block medians of handler times (for [`super::compare`]).
    pub blocks: bool,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions { by: Vec::new(), max_keys: DEFAULT_MAX_KEYS, blocks: false }
    }
}

/// One group of exits.
#[derive(Debug, Clone)]
pub struct Row {
    /// The group.
    pub key: Key,
    /// Exits in it.
    pub count: u64,
    /// Handler time of each of its exits whose handler was measured (exit to the next
    /// `KVM_RUN`), except those followed by a checkpoint (see [`Profile::checkpoints`]).
    pub handler: Histogram,
    /// Time in `KVM_RUN` before each of its exits (guest execution until this exit).
    pub guest: Histogram,
    /// Block medians of the handler times, when asked for.
    pub blocks: Option<BlockSampler>,
}

impl Row {
    fn new(key: Key, blocks: bool) -> Self {
        Row {
            key,
            count: 0,
            handler: Histogram::default(),
            guest: Histogram::default(),
            blocks: blocks.then(BlockSampler::default),
        }
    }
}

/// Exits grouped one way.
#[derive(Debug, Clone)]
pub struct Table {
    /// The grouping.
    pub by: By,
    rows: Vec<Row>,
    index: HashMap<Key, usize>,
    max_keys: usize,
    blocks: bool,
}

impl Table {
    fn new(by: By, max_keys: usize, blocks: bool) -> Self {
        Table { by, rows: Vec::new(), index: HashMap::new(), max_keys: max_keys.max(1), blocks }
    }

    #[inline]
    fn row_of(&mut self, key: Key) -> usize {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let key = if self.index.len() >= self.max_keys { Key::Other } else { key };
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        self.rows.push(Row::new(key, self.blocks));
        self.index.insert(key, self.rows.len() - 1);
        self.rows.len() - 1
    }

    /// Rows, costliest first: by total handler time, then by count, then by key.
    pub fn rows(&self) -> Vec<&Row> {
        let mut v: Vec<&Row> = self.rows.iter().collect();
        v.sort_by(|a, b| {
            b.handler
                .total_ns()
                .cmp(&a.handler.total_ns())
                .then(b.count.cmp(&a.count))
                .then(a.key.cmp(&b.key))
        });
        v
    }

    /// The row of `key`.
    pub fn get(&self, key: &Key) -> Option<&Row> {
        self.index.get(key).and_then(|&i| self.rows.get(i))
    }

    /// Exits in the table.
    pub fn exits(&self) -> u64 {
        self.rows.iter().map(|r| r.count).sum()
    }

    /// Sum of every measured handler time.
    pub fn handler_total_ns(&self) -> u64 {
        self.rows.iter().fold(0u64, |t, r| t.saturating_add(r.handler.total_ns()))
    }

    /// True when keys were folded into [`Key::Other`].
    pub fn folded(&self) -> bool {
        self.index.contains_key(&Key::Other)
    }
}

/// An exit's row in each table (at most one table per grouping).
type Rows = [Option<usize>; By::ALL.len()];

/// The previous exit of a vCPU, waiting for its handler time (in the next exit's record).
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Its row in each table (`None` where the table does not group it).
    rows: Rows,
    /// A checkpoint was taken before the vCPU re-entered.
    checkpointed: bool,
}

/// An aggregation in progress: feed it records with [`Profiler::observe`].
#[derive(Debug, Clone)]
pub struct Profiler {
    tables: Vec<Table>,
    pending: BTreeMap<u32, Pending>,
    vcpus: BTreeSet<u32>,
    axes: Axes,
    rate: RateSeries,
    checkpoints: Histogram,
    last_seq: Option<u64>,
    summary: Summary,
}

/// Trace-wide figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Records read.
    pub records: u64,
    /// Exit records.
    pub exits: u64,
    /// Exit records with a timing payload.
    pub timed_exits: u64,
    /// vCPUs with exits (counted up to 4096).
    pub vcpus: u64,
    /// Handler times measured.
    pub handler_samples: u64,
    /// The latest exit on any vCPU's time axis: the timed length of the run.
    pub span_ns: u64,
    /// Sum of the measured handler times.
    pub handler_ns: u64,
    /// Sum of the guest times.
    pub guest_ns: u64,
    /// Records missing (sequence gaps: damage, or a flight recording's dropped stretch).
    pub missing_records: u64,
    /// How the run ended (`end_of_run` reason name), when the trace says.
    pub end: Option<String>,
    /// True when the run ended in a failure (emulation failure, internal error, triple
    /// fault, failed entry).
    pub failed: bool,
}

/// A finished aggregation.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The table by kind, then one per [`ProfileOptions::by`] grouping.
    pub tables: Vec<Table>,
    /// Handler times of exits after which vmrr took a checkpoint before re-entering (the
    /// snapshot is part of that handler time; kept apart so a device's figures are its own).
    pub checkpoints: Histogram,
    /// Exit rate over time per kind (timed traces).
    pub rate: RateSeries,
    /// Trace-wide figures.
    pub summary: Summary,
}

impl Profile {
    /// The table grouped `by`, when it was asked for.
    pub fn table(&self, by: By) -> Option<&Table> {
        self.tables.iter().find(|t| t.by == by)
    }
}

impl Profiler {
    /// A profiler keeping the tables `opts` asks for.
    pub fn new(opts: &ProfileOptions) -> Self {
        let mut bys = vec![By::Kind];
        for b in &opts.by {
            if !bys.contains(b) {
                bys.push(*b);
            }
        }
        Profiler {
            tables: bys.into_iter().map(|b| Table::new(b, opts.max_keys, opts.blocks)).collect(),
            pending: BTreeMap::new(),
            vcpus: BTreeSet::new(),
            axes: Axes::default(),
            rate: RateSeries::default(),
            checkpoints: Histogram::default(),
            last_seq: None,
            summary: Summary::default(),
        }
    }

    /// Takes the next record of the trace (in file order).
    pub fn observe(&mut self, rec: &Record<'_>) {
        self.summary.records += 1;
        if let Some(last) = self.last_seq {
            if rec.seq > last.saturating_add(1) {
                // Records are missing: the next exit's handler time belongs to an exit
                // this profile never saw.
                self.summary.missing_records += rec.seq - last - 1;
                self.pending.clear();
            }
        }
        self.last_seq = Some(rec.seq);
        match &rec.body {
            Body::Checkpoint(_) => {
                if let Some(p) = self.pending.get_mut(&rec.vcpu) {
                    p.checkpointed = true;
                }
            }
            Body::EndOfRun(e) => {
                self.summary.end = Some(end_reason::name(e.reason).to_string());
                self.summary.failed = end_reason::is_failure(e.reason);
            }
            b if kind::is_exit(b.kind()) => self.exit(rec),
            _ => {}
        }
    }

    #[inline]
    fn exit(&mut self, rec: &Record<'_>) {
        self.summary.exits += 1;
        let mut rows: Rows = [None; By::ALL.len()];
        for (t, slot) in self.tables.iter_mut().zip(rows.iter_mut()) {
            if let Some(key) = t.by.key(rec) {
                let i = t.row_of(key);
                t.rows[i].count += 1;
                *slot = Some(i);
            }
        }
        if self.vcpus.len() < MAX_AXES && self.vcpus.insert(rec.vcpu) {
            self.summary.vcpus = self.vcpus.len() as u64;
        }
        let placed = self.axes.place_record(rec);
        let previous = if self.pending.len() < MAX_AXES || self.pending.contains_key(&rec.vcpu) {
            self.pending.insert(rec.vcpu, Pending { rows, checkpointed: false })
        } else {
            None
        };
        let (Some(t), Some(p)) = (rec.timing, placed) else { return };
        self.summary.timed_exits += 1;
        self.summary.span_ns = self.summary.span_ns.max(p.at_ns);
        self.rate.add(rec.body.kind(), p.at_ns);
        self.guest(&rows, t.guest, p);
        if let (Some(prev), Some(h)) = (previous, p.prev_handler_ns) {
            self.handler(&prev, t.prev_handler, h);
        }
    }

    fn guest(&mut self, rows: &Rows, code: u16, p: Placed) {
        self.summary.guest_ns = self.summary.guest_ns.saturating_add(p.guest_ns);
        for (t, r) in self.tables.iter_mut().zip(rows) {
            if let Some(i) = r {
                t.rows[*i].guest.record_code(code);
            }
        }
    }

    fn handler(&mut self, prev: &Pending, code: u16, ns: u64) {
        self.summary.handler_samples += 1;
        self.summary.handler_ns = self.summary.handler_ns.saturating_add(ns);
        if prev.checkpointed {
            self.checkpoints.record_code(code);
            return;
        }
        for (t, r) in self.tables.iter_mut().zip(prev.rows) {
            if let Some(i) = r {
                let row = &mut t.rows[i];
                row.handler.record_code(code);
                if let Some(b) = row.blocks.as_mut() {
                    b.push(code);
                }
            }
        }
    }

    /// The aggregation.
    pub fn finish(self) -> Profile {
        Profile { tables: self.tables, checkpoints: self.checkpoints, rate: self.rate, summary: self.summary }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmrr_format::timing::Timing;
    use vmrr_format::{Checkpoint, Direction, Io, Record};

    fn io(port: u16) -> Body<'static> {
        Body::Io(Io { direction: Direction::Out, size: 1, port, count: 1, data: b"x" })
    }

    #[test]
    fn handler_time_goes_to_the_previous_exit() {
        let mut p = Profiler::new(&ProfileOptions { by: vec![By::Port], ..Default::default() });
        let mut seq = 0;
        let mut push = |p: &mut Profiler, body, t: Option<Timing>| {
            let mut r = Record::new(seq, 0, body);
            r.timing = t;
            p.observe(&r);
            seq += 1;
        };
        push(&mut p, io(0x10), Some(Timing::from_ns(None, 1000)));
        for _ in 0..10 {
            // 0x10's handler takes 500 ns, 0x20's 20 ns.
            push(&mut p, io(0x20), Some(Timing::from_ns(Some(500), 1000)));
            push(&mut p, io(0x10), Some(Timing::from_ns(Some(20), 1000)));
        }
        push(&mut p, Body::Checkpoint(Checkpoint { snapshot_id: 1, exit_seq: 0, exits: 0 }), None);
        push(&mut p, io(0x20), Some(Timing::from_ns(Some(90_000), 1000)));
        let prof = p.finish();
        let ports = prof.table(By::Port).unwrap();
        let rows = ports.rows();
        assert_eq!(rows[0].key.to_string(), "0x10:out");
        assert_eq!(rows[0].count, 11);
        assert_eq!(rows[0].handler.count(), 10);
        assert_eq!(rows[0].handler.quantile_ns(0.5), Some(500));
        assert_eq!(rows[1].handler.quantile_ns(0.99), Some(20));
        assert_eq!(prof.checkpoints.count(), 1);
        assert_eq!(prof.summary.exits, 22);
        assert_eq!(prof.summary.timed_exits, 22);
        // 90 us is stored as its time code: 90,112 ns.
        let stored = vmrr_format::timing::time_from_code(vmrr_format::timing::time_code(90_000)).unwrap();
        assert_eq!(prof.summary.span_ns, 22 * 1000 + 10 * 520 + stored);
        assert_eq!(prof.table(By::Kind).unwrap().rows()[0].guest.count(), 22);
    }

    #[test]
    fn each_vcpu_keeps_its_own_handler_times_and_axis() {
        let mut p = Profiler::new(&ProfileOptions { by: vec![By::Port, By::Vcpu], ..Default::default() });
        // vCPU 0 exits at port 0x10 (handlers of 500 ns), vCPU 1 at 0x20 (20 ns),
        // interleaved: each handler time belongs to its own vCPU's previous exit.
        let mut seq = 0;
        for i in 0..10u64 {
            for (vcpu, port, h) in [(0, 0x10, 500), (1, 0x20, 20)] {
                let t = Timing::from_ns((i > 0).then_some(h), 1000);
                p.observe(&Record::new(seq, vcpu, io(port)).with_timing(t));
                seq += 1;
            }
        }
        // A device thread's event is no exit and no vCPU.
        let dev = super::super::thread::DEVICE_THREAD_BASE;
        p.observe(&Record::new(seq, dev, Body::Interrupt(vmrr_format::Interrupt { vector: 1, source: 0 })));
        let prof = p.finish();
        let ports = prof.table(By::Port).unwrap();
        let hi = ports.get(&Key::Port { port: 0x10, out: true }).unwrap();
        assert_eq!((hi.handler.count(), hi.handler.quantile_ns(0.0)), (9, Some(500)));
        let lo = ports.get(&Key::Port { port: 0x20, out: true }).unwrap();
        assert_eq!((lo.handler.count(), lo.handler.max_ns()), (9, Some(20)));
        let vcpus = prof.table(By::Vcpu).unwrap();
        let rows = vcpus.rows();
        assert_eq!(
            rows.iter().map(|r| (r.key, r.count)).collect::<Vec<_>>(),
            [(Key::Vcpu(0), 10), (Key::Vcpu(1), 10)]
        );
        assert_eq!(rows[0].handler.total_ns(), 9 * 500);
        assert_eq!((prof.summary.vcpus, prof.summary.exits, prof.summary.records), (2, 20, 21));
        // Each vCPU's axis: 10 guest times and 9 handlers; the span is the longer one.
        assert_eq!(prof.summary.span_ns, 10 * 1000 + 9 * 500);
    }

    #[test]
    fn keys_past_the_limit_are_folded() {
        let mut p = Profiler::new(&ProfileOptions { by: vec![By::Port], max_keys: 2, blocks: false });
        for (seq, port) in [1u16, 2, 3, 4, 1].into_iter().enumerate() {
            p.observe(&Record::new(seq as u64, 0, io(port)));
        }
        let prof = p.finish();
        let t = prof.table(By::Port).unwrap();
        assert!(t.folded());
        assert_eq!(t.get(&Key::Other).unwrap().count, 2);
        assert_eq!(t.exits(), 5);
        assert_eq!(prof.summary.timed_exits, 0);
    }
}

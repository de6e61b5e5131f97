//! A trace as a timeline: Chrome trace-event JSON, which Perfetto (ui.perfetto.dev, its
//! trace processor) and `chrome://tracing` open.
//!
//! - One process (`pid` 1) for the trace, one thread track per vCPU (`tid` = vCPU + 1,
//!   named `vCPU 0`, `vCPU 1`, ...) and one per device thread of the VMM (a record's `vcpu`
//!   field from [`super::thread::DEVICE_THREAD_BASE`] on, format 1.2: `tid` = that field + 1, named
//!   `device 0`, `device 1`, ...), each named by a `thread_name` metadata event.
//! - Every exit is a complete slice (`ph: "X"`) starting when `KVM_RUN` returned with it,
//!   lasting its handler time (exit to the next `KVM_RUN`); the gaps between slices are
//!   guest time. Named by kind, with the port, MMIO address or MSR (`io 0x3f8:out`).
//! - Instant events (`ph: "i"`): injected interrupts and checkpoints (at the re-entry
//!   that follows their exit), records missing (a sequence gap), the run's failure (the
//!   trace's `end_of_run` when it is a failure), and any [`Marker`] the caller adds (a
//!   replay's divergence).
//! - A counter (`ph: "C"`) per vCPU: exits per second per kind.
//! - Device threads have events only, no exits and no time axis of their own: each event
//!   (a guest write, an IRQ line change, ...) is an instant on its thread's track, at the
//!   latest exit instant of any vCPU so far (at its record on the sequence axis).
//!
//! **Bounded output.** Up to [`TimelineOptions::aggregate_above`] exits and interrupts
//! together (200,000) every exit is a slice and every interrupt an instant. Above it, exits
//! are aggregated per time window (1 ms, or wider so that the vCPUs have at most
//! [`TimelineOptions::max_windows`] windows together): each window holds
//! one slice per kind, laid back to back from the window's start, each as long as that
//! kind's summed handler time in the window (scaled down to fit when the sum exceeds the
//! window), with the exit count, true handler total and interrupts in `args`; interrupts
//! become counts instead of instants. Checkpoint and gap instants stop at 10,000 each, and
//! so do device-thread instants when aggregating (a last instant gives the count). The file says so in `otherData`. The writer streams:
//! memory is a few records per vCPU, whatever the trace's length.
//!
//! A trace without timing gets a sequence axis (1 us per record) and zero-length slices,
//! and says so in `otherData.time_axis`.
//!
//! Two passes over the trace: the first finds its length (to choose the mode and window),
//! the second writes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use serde_json::{Value, json};

use vmrr_format::ReadError;
use vmrr_format::TraceReader;
use vmrr_format::axis::{Axes, MAX_AXES};
use vmrr_format::kind;
use vmrr_format::{Body, Record, end_reason};

use super::thread::Thread;

/// Timeline settings.
#[derive(Debug, Clone)]
pub struct TimelineOptions {
    /// Above this many exits, aggregate per window instead of one slice per exit.
    pub aggregate_above: u64,
    /// Most windows per vCPU when aggregating (the window widens to stay under it).
    pub max_windows: u64,
    /// Counter points per vCPU when not aggregating (at least 1 ms apart).
    pub counter_points: u64,
    /// Name of the trace's process track.
    pub name: String,
}

impl Default for TimelineOptions {
    fn default() -> Self {
        TimelineOptions {
            aggregate_above: 200_000,
            max_windows: 50_000,
            counter_points: 2_000,
            name: "vmrr".into(),
        }
    }
}

/// An instant the caller places on the timeline at a record (a replay's divergence or
/// reproduced failure).
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// The record it belongs to, or `None` for the end of the trace.
    pub seq: Option<u64>,
    /// Event name.
    pub name: String,
    /// Event arguments.
    pub args: Value,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TimelineSummary {
    /// Exits read.
    pub exits: u64,
    /// Events written.
    pub events: u64,
    /// True when exits were aggregated per window.
    pub aggregated: bool,
    /// The aggregation (or counter) window, in ns.
    pub window_ns: u64,
    /// `"monotonic"` (the trace has timing) or `"sequence"` (it has not: 1 us per record).
    pub time_axis: &'static str,
    /// Damage skipped (a damaged index included).
    pub damage: super::Damage,
}

/// Writing a timeline failed.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// The trace could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The output could not be written.
    #[error("cannot write the timeline")]
    Write(#[source] std::io::Error),
}

/// What the first pass finds.
struct Scan {
    exits: u64,
    interrupts: u64,
    device_events: u64,
    vcpus: u64,
    timed: bool,
    span_ns: u64,
}

fn scan(reader: &mut TraceReader) -> Result<Scan, ReadError> {
    let mut s = Scan { exits: 0, interrupts: 0, device_events: 0, vcpus: 0, timed: false, span_ns: 0 };
    let mut axes = Axes::default();
    let mut vcpus = std::collections::BTreeSet::new();
    let mut last_seq = 0;
    while let Some(item) = reader.next_record() {
        let rec = match item {
            Ok(r) => r,
            Err(ReadError::Invalid { .. }) => continue,
            Err(e) => return Err(e),
        };
        last_seq = rec.seq;
        if Thread::of(rec.vcpu).is_device() {
            s.device_events += 1;
            continue;
        }
        if vcpus.len() < MAX_AXES {
            vcpus.insert(rec.vcpu);
        }
        if matches!(rec.body, Body::Interrupt(_)) {
            s.interrupts += 1;
        }
        if kind::is_exit(rec.body.kind()) {
            s.exits += 1;
            if let Some(t) = rec.timing {
                s.timed = true;
                if let Some(p) = axes.place(rec.vcpu, &t) {
                    s.span_ns = s.span_ns.max(p.at_ns);
                }
            }
        }
    }
    if !s.timed {
        s.span_ns = last_seq.saturating_mul(1000);
    }
    s.vcpus = vcpus.len() as u64;
    Ok(s)
}

/// The smallest 1-2-5 multiple of a millisecond that cuts `span` into at most `n` windows.
fn window_for(span_ns: u64, n: u64) -> u64 {
    let need = span_ns / n.max(1) + 1;
    let mut w = 1_000_000u64;
    for m in [1, 2, 5].iter().cycle() {
        if w.saturating_mul(*m) >= need {
            return w.saturating_mul(*m);
        }
        if *m == 5 {
            w = w.saturating_mul(10);
        }
    }
    w
}

/// Writes the timeline of the trace `reader` reads to `out` (two passes: the reader is
/// rewound).
///
/// # Errors
/// An I/O error reading the trace or writing `out`. Damaged regions are skipped and
/// counted.
pub fn write_timeline(
    reader: &mut TraceReader,
    markers: &[Marker],
    opts: &TimelineOptions,
    out: &mut dyn Write,
) -> Result<TimelineSummary, TimelineError> {
    reader.rewind();
    let sc = scan(reader)?;
    reader.rewind();
    // Interrupts and device-thread events become instants one by one unless aggregated:
    // they count towards the limit too. Windows are sized over every vCPU's axis together.
    let aggregated =
        sc.exits.saturating_add(sc.interrupts).saturating_add(sc.device_events) > opts.aggregate_above;
    let span_all = sc.span_ns.saturating_mul(sc.vcpus.max(1));
    let window_ns = window_for(span_all, if aggregated { opts.max_windows } else { opts.counter_points });
    let time_axis = if sc.timed { "monotonic" } else { "sequence" };
    let mut w = Writer { out, events: 0, first: true };
    let other = json!({
        "source": "vmrr timeline",
        "trace": opts.name,
        "exits": sc.exits,
        "time_axis": if sc.timed {
            "CLOCK_MONOTONIC of the recording host; 0 is each vCPU's first entry into the guest"
        } else {
            "record sequence numbers (1 us per record): the trace has no timing (record with --timing)"
        },
        "mode": if aggregated {
            format!("aggregated: {} exits and {} interrupts exceed {}; one slice per kind per {} us window, \
                     handler time summed (args), interrupts counted", sc.exits, sc.interrupts, opts.aggregate_above, window_ns / 1000)
        } else {
            "one slice per exit".to_string()
        },
        "window_us": window_ns / 1000,
    });
    let head = format!(
        "{{\"displayTimeUnit\":\"ns\",\"otherData\":{},\"traceEvents\":[\n",
        serde_json::to_string(&other).unwrap_or_else(|_| "{}".into())
    );
    w.out.write_all(head.as_bytes()).map_err(TimelineError::Write)?;
    w.event(&json!({"name": "process_name", "ph": "M", "pid": 1, "tid": 0,
                    "args": {"name": format!("{} ({})", opts.name, if aggregated { "aggregated" } else { "per exit" })}}))?;
    let mut st = State {
        timed: sc.timed,
        aggregated,
        window_ns,
        axes: Axes::default(),
        vcpus: BTreeMap::new(),
        named: BTreeSet::new(),
        last_seq: None,
        markers: {
            let mut m: Vec<&Marker> = markers.iter().collect();
            m.sort_by_key(|m| m.seq.unwrap_or(u64::MAX));
            m
        },
        next_marker: 0,
        damage: super::Damage::start(reader),
        exits: 0,
        gaps: 0,
        checkpoints: 0,
        device_events: 0,
    };
    while let Some(item) = reader.next_record() {
        match item {
            Ok(rec) => st.record(&rec, &mut w)?,
            Err(e @ ReadError::Invalid { .. }) => st.damage.add(&e),
            Err(e) => return Err(e.into()),
        }
    }
    st.finish(&mut w)?;
    w.out.write_all(b"\n]}\n").map_err(TimelineError::Write)?;
    w.out.flush().map_err(TimelineError::Write)?;
    Ok(TimelineSummary {
        exits: st.exits,
        events: w.events,
        aggregated,
        window_ns,
        time_axis,
        damage: st.damage,
    })
}

struct Writer<'a> {
    out: &'a mut dyn Write,
    events: u64,
    first: bool,
}

impl Writer<'_> {
    fn event(&mut self, v: &Value) -> Result<(), TimelineError> {
        if !self.first {
            self.out.write_all(b",\n").map_err(TimelineError::Write)?;
        }
        self.first = false;
        serde_json::to_writer(&mut *self.out, v).map_err(|e| TimelineError::Write(e.into()))?;
        self.events += 1;
        Ok(())
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Instants kept per exit (interrupts, checkpoints after it); more are counted.
const MAX_INSTANTS_PER_EXIT: usize = 64;
/// Sequence-gap instants written; more are counted in the last one.
const MAX_GAP_EVENTS: u64 = 10_000;
/// Checkpoint instants written; more are counted in the last one.
const MAX_CHECKPOINT_EVENTS: u64 = 10_000;
/// Device-thread instants written when aggregating; more are counted in the last one.
const MAX_DEVICE_EVENTS: u64 = 10_000;

/// An exit whose handler time is not known yet.
struct Pending {
    seq: u64,
    kind: u16,
    name: String,
    at_ns: u64,
    guest_ns: Option<u64>,
    interrupts: u64,
    instants: Vec<(String, Value)>,
}

/// One aggregation or counter window of a vCPU.
#[derive(Default)]
struct Window {
    idx: u64,
    /// `(kind, exits, summed handler ns)`.
    kinds: Vec<(u16, u64, u64)>,
    interrupts: u64,
    open: bool,
}

impl Window {
    fn add(&mut self, kind: u16, handler: u64) {
        if let Some(k) = self.kinds.iter_mut().find(|k| k.0 == kind) {
            k.1 += 1;
            k.2 = k.2.saturating_add(handler);
        } else if self.kinds.len() < 64 {
            self.kinds.push((kind, 1, handler));
        }
    }
}

#[derive(Default)]
struct Vcpu {
    pending: Option<Pending>,
    window: Window,
}

struct State<'m> {
    timed: bool,
    aggregated: bool,
    window_ns: u64,
    axes: Axes,
    vcpus: BTreeMap<u32, Vcpu>,
    /// Tracks whose `thread_name` was written (by raw `vcpu` field).
    named: BTreeSet<u32>,
    last_seq: Option<u64>,
    markers: Vec<&'m Marker>,
    next_marker: usize,
    damage: super::Damage,
    exits: u64,
    gaps: u64,
    checkpoints: u64,
    device_events: u64,
}

fn exit_name(body: &Body<'_>) -> String {
    let k = kind::name(body.kind());
    let detail =
        [super::By::Port, super::By::Mmio, super::By::Msr].into_iter().find_map(|b| b.body_key(body));
    match detail {
        Some(key) => format!("{k} {key}"),
        None => k.to_string(),
    }
}

/// The track of a record's thread: its raw `vcpu` field + 1 (vCPU `n` is `n + 1`, device
/// thread `n` is `0x8000_0001 + n`, after every vCPU).
fn tid(vcpu: u32) -> u64 {
    u64::from(vcpu) + 1
}

impl State<'_> {
    /// Names the track of `id` (once; at most [`MAX_AXES`] vCPU and [`MAX_AXES`]
    /// device tracks are named, later ones stay unnamed).
    fn track(&mut self, id: u32, w: &mut Writer<'_>) -> Result<(), TimelineError> {
        if self.named.contains(&id) || self.named.len() >= 2 * MAX_AXES {
            return Ok(());
        }
        self.named.insert(id);
        w.event(&json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid(id),
                        "args": {"name": Thread::of(id).track_name()}}))
    }

    fn vcpu<'s>(&'s mut self, id: u32, w: &mut Writer<'_>) -> Result<Option<&'s mut Vcpu>, TimelineError> {
        if !self.vcpus.contains_key(&id) && self.vcpus.len() >= MAX_AXES {
            return Ok(None);
        }
        self.track(id, w)?;
        Ok(Some(self.vcpus.entry(id).or_default()))
    }

    /// Where an event after the latest exit of its vCPU is placed: at that exit. A device
    /// thread has no axis: its events go at the latest exit of any vCPU.
    fn now(&self, rec: &Record<'_>) -> u64 {
        match (self.timed, Thread::of(rec.vcpu)) {
            (false, _) => rec.seq.saturating_mul(1000),
            (true, Thread::Device(_)) => self.axes.end(),
            (true, Thread::Vcpu(_)) => self.axes.last(rec.vcpu).unwrap_or(0),
        }
    }

    fn record(&mut self, rec: &Record<'_>, w: &mut Writer<'_>) -> Result<(), TimelineError> {
        if let Some(last) = self.last_seq {
            if rec.seq > last.saturating_add(1) {
                self.gap(last + 1, rec.seq - 1, rec, w)?;
            }
        }
        self.last_seq = Some(rec.seq);
        let id = rec.vcpu;
        match &rec.body {
            Body::EndOfRun(_) => {}
            _ if Thread::of(id).is_device() => return self.device_event(rec, w),
            _ => {}
        }
        match &rec.body {
            b if kind::is_exit(b.kind()) => self.exit(rec, w)?,
            Body::Interrupt(i) => {
                let aggregated = self.aggregated;
                if let Some(p) = self.vcpu(id, w)?.and_then(|v| v.pending.as_mut()) {
                    p.interrupts += 1;
                    if !aggregated && p.instants.len() < MAX_INSTANTS_PER_EXIT {
                        p.instants.push((
                            format!("interrupt {:#x}", i.vector),
                            json!({"seq": rec.seq, "vector": i.vector, "nmi": i.source == vmrr_format::INTERRUPT_NMI}),
                        ));
                    }
                }
            }
            Body::Checkpoint(c) => {
                self.checkpoints += 1;
                if self.checkpoints > MAX_CHECKPOINT_EVENTS {
                    return self.markers_up_to(rec, w);
                }
                let args = json!({"seq": rec.seq, "snapshot_id": c.snapshot_id, "exits": c.exits});
                let at = self.now(rec);
                match self.vcpu(id, w)?.and_then(|v| v.pending.as_mut()) {
                    Some(p) if p.instants.len() < MAX_INSTANTS_PER_EXIT => {
                        p.instants.push((format!("checkpoint {}", c.snapshot_id), args));
                    }
                    _ => instant(w, id, at, &format!("checkpoint {}", c.snapshot_id), args)?,
                }
            }
            Body::EndOfRun(e) if end_reason::is_failure(e.reason) => {
                let at = self.now(rec);
                self.flush_vcpu(id, w)?;
                self.track(id, w)?;
                let name = format!("failure: {}", end_reason::name(e.reason));
                instant(
                    w,
                    id,
                    at,
                    &name,
                    json!({"seq": rec.seq, "reason": end_reason::name(e.reason), "exits": e.exits}),
                )?;
            }
            _ => {}
        }
        self.markers_up_to(rec, w)
    }

    /// An event of a device thread: an instant on its track.
    fn device_event(&mut self, rec: &Record<'_>, w: &mut Writer<'_>) -> Result<(), TimelineError> {
        self.device_events += 1;
        if self.aggregated && self.device_events > MAX_DEVICE_EVENTS {
            return self.markers_up_to(rec, w);
        }
        let k = rec.body.kind();
        let (name, args) = match &rec.body {
            Body::GuestWrite(g) => {
                ("guest write".to_string(), json!({"seq": rec.seq, "gpa": g.gpa, "len": g.data.len()}))
            }
            Body::Interrupt(i) => (
                format!("interrupt {:#x}", i.vector),
                json!({"seq": rec.seq, "vector": i.vector, "nmi": i.source == vmrr_format::INTERRUPT_NMI}),
            ),
            Body::Unknown { .. } => {
                (format!("{} {k:#06x}", kind::name(k)), json!({"seq": rec.seq, "kind": k}))
            }
            _ => (kind::name(k).to_string(), json!({"seq": rec.seq})),
        };
        let at = self.now(rec);
        self.track(rec.vcpu, w)?;
        instant(w, rec.vcpu, at, &name, args)?;
        self.markers_up_to(rec, w)
    }

    fn markers_up_to(&mut self, rec: &Record<'_>, w: &mut Writer<'_>) -> Result<(), TimelineError> {
        while let Some(m) = self.markers.get(self.next_marker).copied() {
            if m.seq.is_none_or(|s| s > rec.seq) {
                break;
            }
            let at = self.now(rec);
            self.track(rec.vcpu, w)?;
            instant(w, rec.vcpu, at, &m.name, m.args.clone())?;
            self.next_marker += 1;
        }
        Ok(())
    }

    fn gap(
        &mut self,
        first: u64,
        last: u64,
        rec: &Record<'_>,
        w: &mut Writer<'_>,
    ) -> Result<(), TimelineError> {
        let ids: Vec<u32> = self.vcpus.keys().copied().collect();
        for id in ids {
            self.flush_vcpu(id, w)?;
        }
        self.gaps += 1;
        if self.gaps <= MAX_GAP_EVENTS {
            let at = self.now(rec);
            self.track(rec.vcpu, w)?;
            instant(
                w,
                rec.vcpu,
                at,
                "records missing",
                json!({"first": first, "last": last,
                "note": "their time is unknown; the timeline continues as if the gap took none"}),
            )?;
        }
        Ok(())
    }

    fn exit(&mut self, rec: &Record<'_>, w: &mut Writer<'_>) -> Result<(), TimelineError> {
        self.exits += 1;
        let (at_ns, guest_ns, handler) = match (self.timed, rec.timing) {
            (true, Some(t)) => match self.axes.place(rec.vcpu, &t) {
                Some(p) => (p.at_ns, Some(p.guest_ns), p.prev_handler_ns),
                None => return Ok(()),
            },
            (true, None) => (self.axes.last(rec.vcpu).unwrap_or(0), None, None),
            (false, _) => (rec.seq.saturating_mul(1000), None, None),
        };
        let name = if self.aggregated { String::new() } else { exit_name(&rec.body) };
        let next = Pending {
            seq: rec.seq,
            kind: rec.body.kind(),
            name,
            at_ns,
            guest_ns,
            interrupts: 0,
            instants: Vec::new(),
        };
        let id = rec.vcpu;
        let Some(v) = self.vcpu(id, w)? else { return Ok(()) };
        let prev = v.pending.replace(next);
        if let Some(p) = prev {
            self.resolve(id, p, handler, w)?;
        }
        Ok(())
    }

    /// `p`'s handler time is now known (or known to be unknown): write it.
    fn resolve(
        &mut self,
        id: u32,
        p: Pending,
        handler: Option<u64>,
        w: &mut Writer<'_>,
    ) -> Result<(), TimelineError> {
        let (aggregated, window_ns) = (self.aggregated, self.window_ns);
        let entry = p.at_ns.saturating_add(handler.unwrap_or(0));
        if !aggregated {
            let mut args = json!({"seq": p.seq});
            if let Some(g) = p.guest_ns {
                args["guest_ns"] = json!(g);
            }
            match handler {
                Some(h) => args["handler_ns"] = json!(h),
                None => args["handler_ns"] = Value::Null,
            }
            w.event(&json!({"name": p.name, "cat": "exit", "ph": "X", "pid": 1, "tid": tid(id),
                            "ts": us(p.at_ns), "dur": us(handler.unwrap_or(0)), "args": args}))?;
            for (name, args) in p.instants {
                instant(w, id, entry, &name, args)?;
            }
        } else {
            for (name, args) in p.instants {
                instant(w, id, entry, &name, args)?;
            }
        }
        // Windows: aggregation slices and counters.
        let Some(v) = self.vcpus.get_mut(&id) else { return Ok(()) };
        let idx = (p.at_ns / window_ns).max(v.window.idx);
        if !v.window.open {
            v.window = Window { idx, open: true, ..Window::default() };
        } else if idx != v.window.idx {
            let done = std::mem::replace(&mut v.window, Window { idx, open: true, ..Window::default() });
            flush_window(w, id, &done, aggregated, window_ns)?;
            if idx > done.idx + 1 {
                // The rate drops to zero over the empty windows.
                counter(w, id, (done.idx + 1).saturating_mul(window_ns), &[], window_ns)?;
            }
        }
        v.window.add(p.kind, handler.unwrap_or(0));
        v.window.interrupts += p.interrupts;
        Ok(())
    }

    fn flush_vcpu(&mut self, id: u32, w: &mut Writer<'_>) -> Result<(), TimelineError> {
        let Some(p) = self.vcpus.get_mut(&id).and_then(|v| v.pending.take()) else { return Ok(()) };
        self.resolve(id, p, None, w)
    }

    fn finish(&mut self, w: &mut Writer<'_>) -> Result<(), TimelineError> {
        let ids: Vec<u32> = self.vcpus.keys().copied().collect();
        for id in ids {
            self.flush_vcpu(id, w)?;
            if let Some(v) = self.vcpus.get_mut(&id) {
                let done = std::mem::take(&mut v.window);
                if done.open {
                    flush_window(w, id, &done, self.aggregated, self.window_ns)?;
                }
            }
        }
        let end = if self.timed { self.axes.end() } else { self.last_seq.unwrap_or(0).saturating_mul(1000) };
        if self.next_marker < self.markers.len()
            || self.checkpoints > MAX_CHECKPOINT_EVENTS
            || self.gaps > MAX_GAP_EVENTS
            || (self.aggregated && self.device_events > MAX_DEVICE_EVENTS)
        {
            self.track(0, w)?;
        }
        for m in self.markers.iter().skip(self.next_marker) {
            let mut args = m.args.clone();
            if let Some(seq) = m.seq {
                args["note"] = json!(format!("record {seq} is past the end of the trace"));
            }
            instant(w, 0, end, &m.name, args)?;
        }
        if self.checkpoints > MAX_CHECKPOINT_EVENTS {
            instant(
                w,
                0,
                end,
                "more checkpoints",
                json!({"checkpoints": self.checkpoints, "drawn": MAX_CHECKPOINT_EVENTS}),
            )?;
        }
        if self.gaps > MAX_GAP_EVENTS {
            instant(w, 0, end, "more records missing", json!({"gaps": self.gaps, "drawn": MAX_GAP_EVENTS}))?;
        }
        if self.aggregated && self.device_events > MAX_DEVICE_EVENTS {
            instant(
                w,
                0,
                end,
                "more device events",
                json!({"events": self.device_events, "drawn": MAX_DEVICE_EVENTS}),
            )?;
        }
        Ok(())
    }
}

fn instant(w: &mut Writer<'_>, vcpu: u32, at_ns: u64, name: &str, args: Value) -> Result<(), TimelineError> {
    w.event(&json!({"name": name, "cat": "event", "ph": "i", "s": "t", "pid": 1, "tid": tid(vcpu),
                    "ts": us(at_ns), "args": args}))
}

fn counter(
    w: &mut Writer<'_>,
    vcpu: u32,
    at_ns: u64,
    kinds: &[(u16, u64, u64)],
    window_ns: u64,
) -> Result<(), TimelineError> {
    let per_s = 1e9 / window_ns as f64;
    let mut args = serde_json::Map::new();
    for (k, n, _) in kinds {
        args.insert(kind::name(*k).into(), json!((*n as f64 * per_s).round()));
    }
    if args.is_empty() {
        args.insert("exits".into(), json!(0));
    }
    w.event(
        &json!({"name": format!("exits/s {}", Thread::of(vcpu).track_name()), "ph": "C", "pid": 1, "ts": us(at_ns), "args": args}),
    )
}

fn flush_window(
    w: &mut Writer<'_>,
    vcpu: u32,
    win: &Window,
    aggregated: bool,
    window_ns: u64,
) -> Result<(), TimelineError> {
    let start = win.idx.saturating_mul(window_ns);
    counter(w, vcpu, start, &win.kinds, window_ns)?;
    if !aggregated {
        return Ok(());
    }
    let busy: u64 = win.kinds.iter().fold(0u64, |t, k| t.saturating_add(k.2));
    let scale = if busy > window_ns { window_ns as f64 / busy as f64 } else { 1.0 };
    let mut at = start as f64;
    for (k, n, handler) in &win.kinds {
        let dur = *handler as f64 * scale;
        w.event(&json!({"name": kind::name(*k), "cat": "exits", "ph": "X", "pid": 1, "tid": tid(vcpu),
                        "ts": at / 1000.0, "dur": dur / 1000.0,
                        "args": {"exits": n, "handler_ns_total": handler, "window_us": window_ns / 1000,
                                 "interrupts": win.interrupts, "aggregated": true}}))?;
        at += dur;
    }
    Ok(())
}

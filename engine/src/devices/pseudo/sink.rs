//! Sinks: accept writes, count them, answer reads with zero (or the last value written).

use crate::devices::device::{Device, DeviceCtx};

/// A sink device.
#[derive(Debug)]
pub struct Sink {
    name: &'static str,
    /// Writes seen.
    pub writes: u64,
    /// Last byte written (the POST port answers reads with it).
    pub last: u8,
    echo: bool,
    /// Test-only: time to spend on every access (a deliberately slow handler).
    #[cfg(feature = "testing")]
    delay: Option<std::time::Duration>,
}

/// Test-only (`testing` feature): `VMRR_TEST_SLOW_SINK=<sink name>:<microseconds>` makes that
/// sink spend that long on every access, spinning (a slow handler whose cost a profile must
/// show). `vmrr profile --vs` is tested with it.
#[cfg(feature = "testing")]
fn test_delay(name: &str) -> Option<std::time::Duration> {
    let spec = std::env::var("VMRR_TEST_SLOW_SINK").ok()?;
    let (sink, us) = spec.split_once(':')?;
    (sink == name).then(|| us.parse().ok().map(std::time::Duration::from_micros))?
}

/// Names a sink may have (a snapshot names its sinks by these).
pub const SINK_NAMES: &[&str] = &["post", "storm", "mmio-sink", "port92"];

/// Sink state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkState {
    /// Name (one of [`SINK_NAMES`]).
    pub name: String,
    /// Writes seen.
    pub writes: u64,
    /// Last byte written.
    pub last: u8,
    /// Reads return the last byte.
    pub echo: bool,
}

impl crate::persist::Persist for Sink {
    type State = SinkState;
    type ConstructorArgs = ();
    type Error = crate::persist::DeviceRestoreError;
    fn save(&self, _now: u64) -> SinkState {
        SinkState { name: self.name.to_string(), writes: self.writes, last: self.last, echo: self.echo }
    }
    fn restore(_: (), s: &SinkState, _now: u64) -> Result<Self, Self::Error> {
        let name = SINK_NAMES.iter().copied().find(|n| *n == s.name).ok_or(
            crate::persist::DeviceRestoreError::Invalid {
                device: "sink",
                field: "name",
                value: s.name.len() as u64,
            },
        )?;
        let mut sink = Sink::with_echo(name, s.echo);
        (sink.writes, sink.last) = (s.writes, s.last);
        Ok(sink)
    }
}

impl Sink {
    /// A sink whose reads return zero.
    pub fn new(name: &'static str) -> Self {
        Self::with_echo(name, false)
    }
    /// A sink whose reads return the last byte written (the POST port).
    pub fn echoing(name: &'static str) -> Self {
        Self::with_echo(name, true)
    }
    fn with_echo(name: &'static str, echo: bool) -> Self {
        Sink {
            name,
            writes: 0,
            last: 0,
            echo,
            #[cfg(feature = "testing")]
            delay: test_delay(name),
        }
    }
    #[inline]
    fn slow_down(&self) {
        #[cfg(feature = "testing")]
        if let Some(d) = self.delay {
            let start = std::time::Instant::now();
            while start.elapsed() < d {
                std::hint::spin_loop();
            }
        }
    }
}

impl Device for Sink {
    fn name(&self) -> &'static str {
        self.name
    }
    fn read(&mut self, _offset: u64, data: &mut [u8], _ctx: &mut DeviceCtx<'_>) {
        self.slow_down();
        data.fill(if self.echo { self.last } else { 0 });
    }
    fn write(&mut self, _offset: u64, data: &[u8], _ctx: &mut DeviceCtx<'_>) {
        self.slow_down();
        self.writes += 1;
        if let Some(&b) = data.first() {
            self.last = b;
        }
    }
    fn deadline(&self) -> Option<u64> {
        None
    }
    fn tick(&mut self, _now: u64, _ctx: &mut DeviceCtx<'_>) {}
}

//! The device bus: maps port and MMIO ranges to devices and dispatches accesses.

use serde::{Deserialize, Serialize};

use crate::devices::clock::Clock;
use crate::devices::device::{DeviceCtx, StopRequest};
use crate::devices::interrupts::Interrupts;
use crate::devices::state::{self, BusArgs, BusDevice, DeviceState};
use crate::persist::{DeviceRestoreError, Persist};

#[derive(Debug, Clone, Copy)]
struct Range {
    base: u64,
    len: u64,
    dev: usize,
    /// Offsets passed to the device are relative to this (the device's first range), so a
    /// device mapped at several ranges sees one address space.
    origin: u64,
}

/// Index of a device on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceId(usize);

/// Counters the bus keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Reads nothing claimed (answered with all ones).
    pub unclaimed_reads: u64,
    /// Writes nothing claimed (dropped).
    pub unclaimed_writes: u64,
}

/// Ports and MMIO ranges mapped to devices.
#[derive(Default)]
pub struct Bus {
    pio: Vec<Range>,
    mmio: Vec<Range>,
    devices: Vec<Box<dyn BusDevice>>,
    /// Interrupt lines.
    pub(crate) irq: Interrupts,
    /// A stop requested by a device.
    pub(crate) stop: Option<StopRequest>,
    /// Host clocks.
    pub(crate) clock: Clock,
    next_deadline: Option<u64>,
    stats: BusStats,
}

fn find(ranges: &[Range], addr: u64) -> Option<Range> {
    ranges.iter().find(|r| addr >= r.base && addr - r.base < r.len).copied()
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes the bus's interrupt lines to KVM's in-kernel irqchip (a restored bus of such
    /// a machine).
    pub fn route_to_kernel(&mut self) {
        self.irq.set_routing(crate::devices::interrupts::Routing::Kernel);
    }

    /// An empty bus whose interrupt lines are `irq` (routed to KVM's in-kernel irqchip,
    /// say).
    pub fn with_interrupts(irq: Interrupts) -> Self {
        Bus { irq, ..Self::default() }
    }

    fn add(&mut self, dev: Box<dyn BusDevice>) -> usize {
        self.devices.push(dev);
        self.devices.len() - 1
    }

    /// Maps ports `base..base+len` to `dev`.
    pub fn add_pio(&mut self, base: u16, len: u16, dev: Box<dyn BusDevice>) -> DeviceId {
        let d = self.add(dev);
        self.pio.push(Range { base: u64::from(base), len: u64::from(len), dev: d, origin: u64::from(base) });
        DeviceId(d)
    }

    /// Also maps ports `base..base+len` to an existing device; it sees them at offsets
    /// from its first range's base (`0x61` on a device at `0x40` is offset `0x21`).
    pub fn alias_pio(&mut self, base: u16, len: u16, id: DeviceId) {
        let origin = self.pio.iter().find(|r| r.dev == id.0).map_or(u64::from(base), |r| r.origin);
        self.pio.push(Range { base: u64::from(base), len: u64::from(len), dev: id.0, origin });
    }

    /// Maps guest-physical `base..base+len` to `dev`.
    pub fn add_mmio(&mut self, base: u64, len: u64, dev: Box<dyn BusDevice>) -> DeviceId {
        let d = self.add(dev);
        self.mmio.push(Range { base, len, dev: d, origin: base });
        DeviceId(d)
    }

    fn dispatch(&mut self, r: Range, addr: u64, read: Option<&mut [u8]>, write: Option<&[u8]>) {
        let Some(dev) = self.devices.get_mut(r.dev) else { return };
        let mut ctx = DeviceCtx { irq: &mut self.irq, stop: &mut self.stop, clock: &self.clock };
        match (read, write) {
            (Some(data), _) => dev.read(addr - r.origin, data, &mut ctx),
            (None, Some(data)) => dev.write(addr - r.origin, data, &mut ctx),
            (None, None) => {}
        }
        if let Some(d) = dev.deadline() {
            self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
        }
    }

    /// A port read; returns whether a device claimed it (else `data` is all ones).
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) -> bool {
        match find(&self.pio, u64::from(port)) {
            Some(r) => {
                self.dispatch(r, u64::from(port), Some(data), None);
                true
            }
            None => {
                data.fill(0xff);
                self.stats.unclaimed_reads += 1;
                false
            }
        }
    }

    /// A port write; returns whether a device claimed it (else it is dropped).
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> bool {
        match find(&self.pio, u64::from(port)) {
            Some(r) => {
                self.dispatch(r, u64::from(port), None, Some(data));
                true
            }
            None => {
                self.stats.unclaimed_writes += 1;
                false
            }
        }
    }

    /// An MMIO read; returns whether claimed (else `data` is all ones).
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match find(&self.mmio, addr) {
            Some(r) => {
                self.dispatch(r, addr, Some(data), None);
                true
            }
            None => {
                data.fill(0xff);
                self.stats.unclaimed_reads += 1;
                false
            }
        }
    }

    /// An MMIO write; returns whether claimed.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        match find(&self.mmio, addr) {
            Some(r) => {
                self.dispatch(r, addr, None, Some(data));
                true
            }
            None => {
                self.stats.unclaimed_writes += 1;
                false
            }
        }
    }

    /// The earliest device deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.next_deadline
    }

    /// Runs `tick` on every device whose deadline has passed, and recomputes the next one.
    pub fn poll(&mut self, now: u64) {
        if self.next_deadline.is_none_or(|d| d > now) {
            return;
        }
        let mut next: Option<u64> = None;
        for dev in &mut self.devices {
            if dev.deadline().is_some_and(|d| d <= now) {
                let mut ctx = DeviceCtx { irq: &mut self.irq, stop: &mut self.stop, clock: &self.clock };
                dev.tick(now, &mut ctx);
            }
            if let Some(d) = dev.deadline() {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        self.next_deadline = next;
    }

    /// Recomputes the next deadline from every device (after a restore).
    pub fn refresh_deadline(&mut self) {
        self.next_deadline = self.devices.iter().filter_map(|d| d.deadline()).min();
    }

    /// The name of the device at `port`, if one claims it.
    pub fn device_at_port(&self, port: u16) -> Option<&'static str> {
        find(&self.pio, u64::from(port)).and_then(|r| self.devices.get(r.dev)).map(|d| d.name())
    }

    /// The name of the device at guest-physical `addr`, if one claims it.
    pub fn device_at_mmio(&self, addr: u64) -> Option<&'static str> {
        find(&self.mmio, addr).and_then(|r| self.devices.get(r.dev)).map(|d| d.name())
    }

    /// Accesses nothing claimed.
    pub fn stats(&self) -> BusStats {
        self.stats
    }

    /// Names of the devices, in the order they were added.
    pub fn device_names(&self) -> Vec<&'static str> {
        self.devices.iter().map(|d| d.name()).collect()
    }
}

/// Where one device sits and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// The device's state.
    pub state: DeviceState,
    /// Port ranges `(base, len, origin)` (at most [`MAX_RANGES`], refused while decoding
    /// beyond).
    #[serde(deserialize_with = "vmrr_format::bounded::vec::<_, _, MAX_RANGES>")]
    pub pio: Vec<(u64, u64, u64)>,
    /// MMIO ranges `(base, len, origin)` (as for `pio`).
    #[serde(deserialize_with = "vmrr_format::bounded::vec::<_, _, MAX_RANGES>")]
    pub mmio: Vec<(u64, u64, u64)>,
}

/// Most port or MMIO ranges one device's saved state may place it at.
pub const MAX_RANGES: usize = 4096;

/// The whole bus: devices, their placement, and pending interrupts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusState {
    /// Devices in bus order (at most [`MAX_DEVICES`], refused while decoding beyond).
    #[serde(deserialize_with = "vmrr_format::bounded::vec::<_, _, MAX_DEVICES>")]
    pub devices: Vec<DeviceEntry>,
    /// Pending direct vectors.
    pub pending_vectors: [u64; 4],
    /// The 8259 pair.
    pub pic: crate::devices::legacy::pic::Pic,
}

/// Largest number of devices a bus state may describe.
pub const MAX_DEVICES: usize = 64;

impl Persist for Bus {
    type State = BusState;
    type ConstructorArgs = BusArgs;
    type Error = DeviceRestoreError;

    fn save(&self, now: u64) -> BusState {
        let ranges = |v: &[Range], d: usize| -> Vec<(u64, u64, u64)> {
            v.iter().filter(|r| r.dev == d).map(|r| (r.base, r.len, r.origin)).collect()
        };
        BusState {
            devices: self
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| DeviceEntry {
                    state: d.state(now),
                    pio: ranges(&self.pio, i),
                    mmio: ranges(&self.mmio, i),
                })
                .collect(),
            pending_vectors: self.irq.bitmap(),
            pic: *self.irq.pic(),
        }
    }

    fn restore(args: BusArgs, state: &BusState, now: u64) -> Result<Self, DeviceRestoreError> {
        if state.devices.len() > MAX_DEVICES {
            return Err(DeviceRestoreError::Invalid {
                device: "bus",
                field: "device count",
                value: state.devices.len() as u64,
            });
        }
        let mut bus = Bus::new();
        for (i, e) in state.devices.iter().enumerate() {
            let dev = state::restore(&e.state, &args, now)?;
            bus.devices.push(dev);
            for &(base, len, origin) in &e.pio {
                if base > 0xffff || len == 0 || len > 0x1_0000 - base {
                    return Err(DeviceRestoreError::Invalid {
                        device: "bus",
                        field: "port range",
                        value: base,
                    });
                }
                bus.pio.push(Range { base, len, dev: i, origin });
            }
            for &(base, len, origin) in &e.mmio {
                if len == 0 || base.checked_add(len).is_none() {
                    return Err(DeviceRestoreError::Invalid {
                        device: "bus",
                        field: "mmio range",
                        value: base,
                    });
                }
                bus.mmio.push(Range { base, len, dev: i, origin });
            }
        }
        bus.irq.set_bitmap(state.pending_vectors);
        bus.irq.set_pic(state.pic);
        bus.clock = Clock::default();
        bus.refresh_deadline();
        Ok(bus)
    }
}

//! gdb's thread ids for vCPUs (thread `k + 1` is vCPU `k`), a stop reported in a thread,
//! and what gdb's last `vCont` asked of the threads: what the target and the threads'
//! extension share.

use gdbstub::common::{Signal, Tid};
use gdbstub::stub::{MultiThreadStopReason, SingleThreadStopReason};

/// What gdb's last `vCont` asked of the threads.
#[derive(Debug, Default)]
pub(crate) struct ResumeActions {
    /// Threads asked to continue by id.
    pub(super) continued: Vec<Tid>,
    /// The thread asked to step.
    pub(super) stepped: Option<Tid>,
    /// No "continue the rest" came with them (scheduler locking).
    pub(super) locked: bool,
}

/// gdb's thread id for vCPU `vcpu`.
pub(super) fn tid_of(vcpu: u32) -> Tid {
    let n = usize::try_from(vcpu).unwrap_or(usize::MAX - 1).saturating_add(1);
    Tid::new(n).unwrap_or(Tid::MIN)
}

/// The vCPU gdb's thread `tid` is.
pub(super) fn vcpu_of(tid: Tid) -> u32 {
    u32::try_from(tid.get() - 1).unwrap_or(u32::MAX)
}

/// `stop` (of the vCPU that runs) as a stop in its thread `tid`.
pub(super) fn in_thread(stop: SingleThreadStopReason<u64>, tid: Tid) -> MultiThreadStopReason<u64> {
    use MultiThreadStopReason as M;
    match stop {
        SingleThreadStopReason::DoneStep => M::SignalWithThread { tid, signal: Signal::SIGTRAP },
        SingleThreadStopReason::Signal(signal) => M::SignalWithThread { tid, signal },
        SingleThreadStopReason::SwBreak(()) => M::SwBreak(tid),
        SingleThreadStopReason::HwBreak(()) => M::HwBreak(tid),
        SingleThreadStopReason::Watch { kind, addr, .. } => M::Watch { tid, kind, addr },
        SingleThreadStopReason::ReplayLog { pos, .. } => M::ReplayLog { tid: Some(tid), pos },
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gdbstub::target::ext::base::reverse_exec::ReplayLogPosition;

    #[test]
    fn threads_are_vcpus_plus_one_and_stops_name_the_running_one() {
        assert_eq!(tid_of(0).get(), 1);
        assert_eq!(vcpu_of(tid_of(3)), 3);
        let t = tid_of(1);
        assert!(matches!(
            in_thread(SingleThreadStopReason::Signal(Signal::SIGILL), t),
            MultiThreadStopReason::SignalWithThread { tid, signal: Signal::SIGILL } if tid == t
        ));
        assert!(matches!(
            in_thread(SingleThreadStopReason::DoneStep, t),
            MultiThreadStopReason::SignalWithThread { tid, signal: Signal::SIGTRAP } if tid == t
        ));
        assert!(
            matches!(in_thread(SingleThreadStopReason::HwBreak(()), t), MultiThreadStopReason::HwBreak(x) if x == t)
        );
        assert!(matches!(
            in_thread(SingleThreadStopReason::ReplayLog { tid: None, pos: ReplayLogPosition::Begin }, t),
            MultiThreadStopReason::ReplayLog { tid: Some(x), pos: ReplayLogPosition::Begin } if x == t
        ));
    }
}

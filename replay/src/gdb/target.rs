//! The debugged replay as gdbstub's target: registers and memory of the replayed vCPU,
//! breakpoints and watchpoints, and the moves gdb asks for (forward and reverse), carried
//! out by the [`Session`].

use gdbstub::common::Signal;
use gdbstub::common::Tid;
use gdbstub::stub::{MultiThreadStopReason, SingleThreadStopReason};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::reverse_exec::{
    ReplayLogPosition, ReverseCont, ReverseContOps, ReverseStep, ReverseStepOps,
};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps, SwBreakpoint,
    SwBreakpointOps,
};
use gdbstub::target::ext::monitor_cmd::MonitorCmdOps;
use gdbstub::target::ext::target_description_xml_override::{
    TargetDescriptionXmlOverride, TargetDescriptionXmlOverrideOps,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X87FpuInternalRegs;
use kvm_bindings::kvm_regs;

use super::arch::{Layout, SysRegs, VmrrRegs, VmrrX86, target_xml};
use super::breakpoints::{CodeBreakpoints, Inserted};
use super::conn::InterruptWatch;
use crate::debugger::{DebugError, FailureKind, Session, Stopped, WatchKind, WatchPoint};

/// `EFAULT`: gdb says "Cannot access memory".
const EFAULT: u8 = 14;
/// `EIO`: a register write KVM refused.
const EIO: u8 = 5;

/// What gdb asked the target to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Move {
    Step,
    Continue,
    ReverseStep,
    ReverseContinue,
    /// A move no vCPU can make (running a vCPU other than the one the session runs):
    /// nothing moves, the thread gdb asked about (`tid`) stops, and `why` is said.
    Refused {
        tid: Tid,
        why: String,
    },
}

/// A fatal error of the gdb connection's target.
#[derive(Debug, thiserror::Error)]
#[error("the debugged replay failed")]
pub struct TargetFailed(#[source] pub DebugError);

/// The replay as gdb sees it.
pub struct GdbTarget {
    pub(super) session: Session,
    pub(super) layout: Layout,
    real_mode: bool,
    pub(super) pending: Option<Move>,
    /// Several vCPUs: what gdb's last `vCont` asked of each thread (`threads.rs`).
    pub(super) resume: super::tids::ResumeActions,
    /// Code breakpoints, by the kind gdb inserted.
    breakpoints: CodeBreakpoints,
    /// Memory addresses are guest-physical (`monitor phys on`).
    pub(super) phys: bool,
    /// Messages of the target's own for the next stop.
    notes_extra: Vec<String>,
}

impl GdbTarget {
    /// A target over `session`.
    pub fn new(session: Session) -> Self {
        GdbTarget {
            session,
            layout: Layout::Amd64,
            real_mode: false,
            pending: None,
            resume: super::tids::ResumeActions::default(),
            breakpoints: CodeBreakpoints::default(),
            phys: false,
            notes_extra: Vec::new(),
        }
    }

    /// A debugger connected: describe the vCPU's mode now, and start without stops (gdb
    /// sets its own).
    pub fn connected(&mut self) {
        const CR0_PE: u64 = 1;
        const EFER_LMA: u64 = 0x400;
        let sregs = self.session.machine().sregs().ok();
        let long = sregs.is_some_and(|s| s.efer & EFER_LMA != 0 && s.cs.l != 0);
        self.layout = if long { Layout::Amd64 } else { Layout::I386 };
        self.real_mode = sregs.is_some_and(|s| s.cr0 & CR0_PE == 0);
        self.session.clear_stops();
        self.breakpoints.clear();
        self.pending = None;
    }

    /// The layout this connection described.
    pub(super) fn layout(&self) -> (Layout, bool) {
        (self.layout, self.real_mode)
    }

    /// Whether gdb is shown several threads (one per vCPU) rather than one.
    pub(super) fn threaded(&self) -> bool {
        self.session.vcpu_count() > 1
    }

    /// Carries out the move gdb asked for; returns the stop to report (in the thread of
    /// the vCPU that runs, when there are several).
    pub fn run_pending(&mut self, watch: &mut InterruptWatch) -> MultiThreadStopReason<u64> {
        let mut interrupted = || watch.interrupted();
        let moved = match self.pending.take().unwrap_or(Move::Step) {
            Move::Step => self.session.step(&mut interrupted),
            Move::Continue => self.session.cont(&mut interrupted),
            Move::ReverseStep => self.session.reverse_step(&mut interrupted),
            Move::ReverseContinue => self.session.reverse_cont(&mut interrupted),
            Move::Refused { tid, why } => {
                // Signal 0: gdb says "Thread N stopped.", and passes nothing back.
                self.session_note(why);
                return MultiThreadStopReason::SignalWithThread { tid, signal: Signal::SIGZERO };
            }
        };
        let stop = self.moved(moved);
        if self.threaded() { super::tids::in_thread(stop, self.running_tid()) } else { stop.into() }
    }

    /// The stop gdb's interrupt (Ctrl-C) is reported as.
    pub fn interrupt_stop(&self) -> MultiThreadStopReason<u64> {
        let sigint = SingleThreadStopReason::Signal(Signal::SIGINT);
        if self.threaded() { super::tids::in_thread(sigint, self.running_tid()) } else { sigint.into() }
    }

    /// The stop a move ended in (its failure said on the console, as SIGABRT).
    fn moved(&mut self, moved: Result<Stopped, DebugError>) -> SingleThreadStopReason<u64> {
        match moved {
            Ok(stop) => self.reason(&stop),
            Err(e) => {
                let mut text = format!("vmrr: the move failed: {e}");
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    text.push_str(&format!(": {s}"));
                    src = s.source();
                }
                self.session_note(text);
                SingleThreadStopReason::Signal(Signal::SIGABRT)
            }
        }
    }

    pub(super) fn session_note(&mut self, text: String) {
        eprintln!("{text}");
        self.notes_extra.push(text);
    }

    fn reason(&mut self, stop: &Stopped) -> SingleThreadStopReason<u64> {
        use SingleThreadStopReason as R;
        match stop {
            Stopped::Step => R::DoneStep,
            Stopped::Breakpoint(a) if self.breakpoints.is_software(*a) => R::SwBreak(()),
            Stopped::Breakpoint(_) => R::HwBreak(()),
            Stopped::Watch { watch, addr } => R::Watch {
                tid: (),
                kind: match watch.kind {
                    WatchKind::Write => gdbstub::target::ext::breakpoints::WatchKind::Write,
                    WatchKind::Read => gdbstub::target::ext::breakpoints::WatchKind::Read,
                    WatchKind::Access => gdbstub::target::ext::breakpoints::WatchKind::ReadWrite,
                },
                addr: *addr,
            },
            Stopped::Failure(FailureKind::EmulationFailure) => R::Signal(Signal::SIGILL),
            Stopped::Failure(_) => R::Signal(Signal::SIGSEGV),
            Stopped::End => R::ReplayLog { tid: None, pos: ReplayLogPosition::End },
            Stopped::Begin => R::ReplayLog { tid: None, pos: ReplayLogPosition::Begin },
            Stopped::Diverged => R::Signal(Signal::SIGTRAP),
            Stopped::Interrupted => R::Signal(Signal::SIGINT),
            Stopped::LiveEnded(how) => {
                self.session_note(format!("vmrr: the live guest's run ended: {how}"));
                R::Signal(Signal::SIGTERM)
            }
        }
    }

    /// Messages for gdb's console at the next stop.
    pub fn take_notes(&mut self) -> Vec<String> {
        let mut n = self.session.take_notes();
        n.append(&mut self.notes_extra);
        n
    }

    fn read_regs(&self) -> Result<VmrrRegs, DebugError> {
        read_regs(&self.session, self.layout, true)
    }
}

/// The registers of the vCPU `session`'s views are on, in `layout`. `linear_pc`: the
/// program counter as a linear address (see `arch.rs`); otherwise RIP as the vCPU holds it
/// (a vCPU other than the one the connection was described from, whose mode may differ:
/// `threads.rs`).
pub(super) fn read_regs(session: &Session, layout: Layout, linear_pc: bool) -> Result<VmrrRegs, DebugError> {
    let m = session.machine();
    let r = m.regs()?;
    let s = m.sregs()?;
    let f = m.fpu()?;
    let mut out = VmrrRegs { layout, ..VmrrRegs::default() };
    out.core.regs = [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13,
        r.r14, r.r15,
    ];
    out.core.rip = if linear_pc { m.linear_pc()? } else { r.rip };
    out.core.eflags = u32::try_from(r.rflags & 0xffff_ffff).unwrap_or(0);
    let seg = &mut out.core.segments;
    seg.cs = u32::from(s.cs.selector);
    seg.ss = u32::from(s.ss.selector);
    seg.ds = u32::from(s.ds.selector);
    seg.es = u32::from(s.es.selector);
    seg.fs = u32::from(s.fs.selector);
    seg.gs = u32::from(s.gs.selector);
    for (st, fpr) in out.core.st.iter_mut().zip(f.fpr.iter()) {
        st.copy_from_slice(&fpr[..10]);
    }
    // KVM keeps the abridged tag (a bit per register, set when valid); gdb shows the
    // full one (two bits per register, 11 when empty).
    let ftag = (0..8).fold(0u32, |t, i| if f.ftwx & (1 << i) == 0 { t | (0b11 << (2 * i)) } else { t });
    out.core.fpu = X87FpuInternalRegs {
        fctrl: u32::from(f.fcw),
        fstat: u32::from(f.fsw),
        ftag,
        fiseg: 0,
        fioff: u32::try_from(f.last_ip & 0xffff_ffff).unwrap_or(0),
        foseg: 0,
        fooff: u32::try_from(f.last_dp & 0xffff_ffff).unwrap_or(0),
        fop: u32::from(f.last_opcode),
    };
    for (x, k) in out.core.xmm.iter_mut().zip(f.xmm.iter()) {
        *x = u128::from_le_bytes(*k);
    }
    out.core.mxcsr = f.mxcsr;
    out.sys = SysRegs {
        fs_base: s.fs.base,
        gs_base: s.gs.base,
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: s.efer,
    };
    Ok(out)
}

impl Target for GdbTarget {
    type Arch = VmrrX86;
    type Error = TargetFailed;

    #[inline(always)]
    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        // One vCPU is one thread, as it always was; several are one thread each.
        if self.threaded() { BaseOps::MultiThread(self) } else { BaseOps::SingleThread(self) }
    }

    #[inline(always)]
    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_target_description_xml_override(
        &mut self,
    ) -> Option<TargetDescriptionXmlOverrideOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadBase for GdbTarget {
    fn read_registers(&mut self, regs: &mut VmrrRegs) -> TargetResult<(), Self> {
        *regs = self.read_regs().map_err(|e| TargetError::Fatal(TargetFailed(e)))?;
        Ok(())
    }

    fn write_registers(&mut self, regs: &VmrrRegs) -> TargetResult<(), Self> {
        write_regs(&mut self.session, self.layout, regs, true)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        self.read_memory(start, data)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        self.write_memory(start, data)
    }

    #[inline(always)]
    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

/// Writes `regs` to the vCPU `session`'s views are on (nothing when they are the registers
/// it has). `linear_pc` as for [`read_regs`].
pub(super) fn write_regs(
    session: &mut Session,
    layout: Layout,
    regs: &VmrrRegs,
    linear_pc: bool,
) -> TargetResult<(), GdbTarget> {
    let now = read_regs(session, layout, linear_pc).map_err(|e| TargetError::Fatal(TargetFailed(e)))?;
    let core_same = now.core.regs == regs.core.regs
        && now.core.rip == regs.core.rip
        && now.core.eflags == regs.core.eflags;
    let sys_same = regs.layout != Layout::Amd64 || now.sys == regs.sys;
    if core_same && sys_same {
        // gdb writes every register back after changing none of them: stay on the
        // recorded path.
        return Ok(());
    }
    let m = session.machine();
    let mut k: kvm_regs = m.regs().map_err(|_| TargetError::Errno(EIO))?;
    let mut s = m.sregs().map_err(|_| TargetError::Errno(EIO))?;
    let g = &regs.core.regs;
    [k.rax, k.rbx, k.rcx, k.rdx, k.rsi, k.rdi, k.rbp, k.rsp] =
        [g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]];
    [k.r8, k.r9, k.r10, k.r11, k.r12, k.r13, k.r14, k.r15] =
        [g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]];
    // gdb's PC is linear: back to an offset in CS outside 64-bit mode.
    k.rip = if !linear_pc || vmrr_engine::disasm::bitness(&s) == 64 {
        regs.core.rip
    } else {
        regs.core.rip.wrapping_sub(s.cs.base) & 0xffff_ffff
    };
    k.rflags = (k.rflags & !0xffff_ffff) | u64::from(regs.core.eflags);
    let sregs = (!sys_same).then(|| {
        let x = &regs.sys;
        (s.fs.base, s.gs.base, s.cr0, s.cr2, s.cr3, s.cr4, s.efer) =
            (x.fs_base, x.gs_base, x.cr0, x.cr2, x.cr3, x.cr4, x.efer);
        s
    });
    session.write_regs(&k, sregs.as_ref()).map_err(|_| TargetError::Errno(EIO))
}

impl GdbTarget {
    /// Reads memory as the vCPU the session's views are on sees it (or guest-physical,
    /// `monitor phys on`).
    pub(super) fn read_memory(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        read_memory(&self.session, self.phys, start, data)
    }

    /// Writes memory as the vCPU the session's views are on sees it.
    pub(super) fn write_memory(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        write_memory(&mut self.session, self.phys, start, data)
    }
}

/// Reads memory through the page tables of the vCPU `session`'s views are on (or
/// guest-physical, `phys`).
pub(super) fn read_memory(
    session: &Session,
    phys: bool,
    start: u64,
    data: &mut [u8],
) -> TargetResult<usize, GdbTarget> {
    let m = session.machine();
    let r = if phys { m.read_phys(start, data) } else { m.read_linear(start, data) };
    r.map_err(|_| TargetError::Errno(EFAULT))?;
    Ok(data.len())
}

/// Writes memory through the page tables of the vCPU `session`'s views are on (or
/// guest-physical, `phys`).
pub(super) fn write_memory(
    session: &mut Session,
    phys: bool,
    start: u64,
    data: &[u8],
) -> TargetResult<(), GdbTarget> {
    let r = if phys { session.write_phys(start, data) } else { session.write_memory(start, data) };
    r.map_err(|_| TargetError::Errno(EFAULT))
}

impl SingleThreadResume for GdbTarget {
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        // A signal gdb passes back (after a SIGILL stop, say) is not delivered: the
        // guest's next events come from the trace.
        self.pending = Some(Move::Continue);
        Ok(())
    }

    #[inline(always)]
    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_reverse_step(&mut self) -> Option<ReverseStepOps<'_, (), Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_reverse_cont(&mut self) -> Option<ReverseContOps<'_, (), Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for GdbTarget {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.pending = Some(Move::Step);
        Ok(())
    }
}

impl ReverseStep<()> for GdbTarget {
    fn reverse_step(&mut self, _tid: ()) -> Result<(), Self::Error> {
        self.pending = Some(Move::ReverseStep);
        Ok(())
    }
}

impl ReverseCont<()> for GdbTarget {
    fn reverse_cont(&mut self) -> Result<(), Self::Error> {
        self.pending = Some(Move::ReverseContinue);
        Ok(())
    }
}

impl Breakpoints for GdbTarget {
    #[inline(always)]
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

// Both kinds are kept the same way (`breakpoints.rs`).
impl SwBreakpoint for GdbTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.breakpoints.insert(&mut self.session, addr, Inserted::Software))
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.breakpoints.remove(&mut self.session, addr, Inserted::Software))
    }
}

impl HwBreakpoint for GdbTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.breakpoints.insert(&mut self.session, addr, Inserted::Hardware))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.breakpoints.remove(&mut self.session, addr, Inserted::Hardware))
    }
}

fn watch_point(addr: u64, len: u64, kind: gdbstub::target::ext::breakpoints::WatchKind) -> WatchPoint {
    use gdbstub::target::ext::breakpoints::WatchKind as W;
    let kind = match kind {
        W::Write => WatchKind::Write,
        W::Read => WatchKind::Read,
        W::ReadWrite => WatchKind::Access,
    };
    WatchPoint { addr, len: len.max(1), kind }
}

impl HwWatchpoint for GdbTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: gdbstub::target::ext::breakpoints::WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(self.session.add_watchpoint(watch_point(addr, len, kind)))
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: gdbstub::target::ext::breakpoints::WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(self.session.remove_watchpoint(&watch_point(addr, len, kind)))
    }
}

impl TargetDescriptionXmlOverride for GdbTarget {
    fn target_description_xml(
        &self,
        annex: &[u8],
        offset: u64,
        length: usize,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        if annex != b"target.xml" {
            return Err(TargetError::Errno(2));
        }
        let xml = target_xml(self.layout, self.real_mode);
        let xml = xml.as_bytes();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(xml.len());
        let n = length.min(buf.len()).min(xml.len() - start);
        buf[..n].copy_from_slice(&xml[start..start + n]);
        Ok(n)
    }
}

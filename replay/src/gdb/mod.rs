//! `vmrr replay --gdb`: the GDB remote protocol over a debugged replay ([`Session`]),
//! with gdbstub doing the protocol. One debugger at a time; after `disconnect` another may
//! connect (the replay keeps its place); `detach` or `kill` ends the session.

mod arch;
mod breakpoints;
mod conn;
mod monitor;
mod target;
mod threads;
mod tids;

use std::net::{SocketAddr, TcpListener};

use gdbstub::conn::ConnectionExt;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStub};

use crate::debugger::Session;
use conn::{BufferedTcp, InterruptWatch};
pub use target::{GdbTarget, TargetFailed};

/// Serving gdb failed.
#[derive(Debug, thiserror::Error)]
pub enum GdbError {
    /// The address could not be listened on.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Accepting or setting up a connection failed.
    #[error("the gdb connection failed")]
    Connection(#[source] std::io::Error),
    /// The protocol or the target failed.
    #[error("the gdb session failed: {0}")]
    Protocol(String),
}

/// How a gdb session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// gdb detached (the end of `gdb -batch`, `detach`, `quit`).
    Detached,
    /// gdb killed the target.
    Killed,
}

/// Listens on `addr` and serves debuggers until one detaches or kills the target.
/// `ready` is told the address listened on (a port of 0 picks a free one) before the
/// first connection is accepted.
///
/// # Errors
/// The address cannot be listened on, or a connection fails beyond a debugger going away.
pub fn serve(session: Session, addr: &str, ready: impl FnOnce(SocketAddr)) -> Result<Ended, GdbError> {
    let listener =
        TcpListener::bind(addr).map_err(|source| GdbError::Listen { addr: addr.to_string(), source })?;
    ready(listener.local_addr().map_err(GdbError::Connection)?);
    let mut target = GdbTarget::new(session);
    loop {
        let (stream, _) = listener.accept().map_err(GdbError::Connection)?;
        target.connected();
        let watch = InterruptWatch::new(&stream).map_err(GdbError::Connection)?;
        match serve_one(&mut target, BufferedTcp::new(stream), watch) {
            Ok(Some(DisconnectReason::Kill)) => return Ok(Ended::Killed),
            Ok(Some(_)) => return Ok(Ended::Detached),
            // The debugger went away without detaching: wait for the next one.
            Ok(None) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One connection; `None` when it closed without a detach.
fn serve_one(
    target: &mut GdbTarget,
    conn: BufferedTcp,
    mut watch: InterruptWatch,
) -> Result<Option<DisconnectReason>, GdbError> {
    let protocol = |e: gdbstub::stub::GdbStubError<TargetFailed, std::io::Error>| {
        if e.is_connection_error() { None } else { Some(GdbError::Protocol(e.to_string())) }
    };
    let mut sm = match GdbStub::new(conn).run_state_machine(target) {
        Ok(sm) => sm,
        Err(e) => return protocol(e).map_or(Ok(None), Err),
    };
    loop {
        let next = match sm {
            GdbStubStateMachine::Idle(mut g) => {
                let Ok(byte) = g.borrow_conn().read() else { return Ok(None) };
                g.incoming_data(target, byte)
            }
            GdbStubStateMachine::Running(mut g) => {
                let stop = target.run_pending(&mut watch);
                for note in target.take_notes() {
                    if g.borrow_conn().console(&format!("{note}\n")).is_err() {
                        return Ok(None);
                    }
                }
                g.report_stop(target, stop)
            }
            GdbStubStateMachine::CtrlCInterrupt(g) => {
                let stop = target.interrupt_stop();
                g.interrupt_handled(target, Some(stop))
            }
            GdbStubStateMachine::Disconnected(g) => return Ok(Some(g.get_reason())),
        };
        sm = match next {
            Ok(sm) => sm,
            Err(e) => return protocol(e).map_or(Ok(None), Err),
        };
    }
}

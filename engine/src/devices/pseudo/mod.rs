//! vmrr's own devices: the debug console and exit, and the deliberately nondeterministic
//! inputs (entropy, host clock, interval timer) whose answers the trace holds.

pub mod clock_port;
pub mod debug_exit;
pub mod debugcon;
pub mod entropy;
pub mod sink;
pub mod timer;

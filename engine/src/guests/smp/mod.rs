//! Several vCPUs in the built-in guests: the fixed addresses of the start-up
//! ([`layout`]), the 16-bit trampoline the application processors (APs) start in
//! ([`trampoline`]), the bootstrap processor's INIT-SIPI-SIPI sequence ([`startup`]), and
//! what the guests share once all vCPUs run: spinlocks ([`lock`]) and decimal printing
//! ([`super::decimal`]).
//!
//! How an AP starts: vCPU 0 (the BSP) begins in long mode as every built-in guest does;
//! the others wait for INIT/SIPI in KVM's default state. The BSP copies the trampoline to
//! [`layout::TRAMPOLINE`], fills the mailbox after it (the AP entry address, the next AP
//! index, the check-in count), enables its local APIC and sends INIT, then SIPI twice,
//! to all but itself. Each AP starts in real mode at the trampoline, switches straight to
//! long mode with the BSP's GDT and page tables, takes a stack slot (1, 2, ... in the
//! order the APs arrive) with `lock xadd`, sets RSP to that stack, checks in and jumps to
//! the entry with its APIC ID (vmrr's vCPU index) in EBX. The BSP waits until all of them
//! have checked in.

pub mod layout;
pub mod lock;
pub mod startup;
pub mod trampoline;

//! # vmrr-replay
//!
//! Deterministic replay of vmrr traces. (Being built.)

#![forbid(unsafe_code)]

//! # vmrr-engine
//!
//! Runs guests on KVM and records every exit through `vmrr-format`. (Being built.)

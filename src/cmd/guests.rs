//! `vmrr guests`: the built-in guests.

use vmrr_engine::guests::BUILTINS;

use super::print_json;
use crate::exit_code::CliResult;

/// Lists the built-in guests.
pub fn run(json: bool) -> CliResult {
    if json {
        let v: Vec<serde_json::Value> = BUILTINS
            .iter()
            .map(|b| {
                serde_json::json!({"name": b.name, "mode": b.mode.name(), "about": b.about,
                                   "default_iterations": b.default_iterations,
                                   "min_vcpus": b.min_vcpus, "max_vcpus": b.max_vcpus})
            })
            .collect();
        return print_json(&v);
    }
    for b in BUILTINS {
        let it = b.default_iterations.map(|n| format!(" (--iterations, default {n})")).unwrap_or_default();
        let cpus = if b.max_vcpus == u32::MAX {
            String::new()
        } else {
            format!(" ({}..={} vCPUs)", b.min_vcpus, b.max_vcpus)
        };
        println!("{:<18} {:<14} {}{it}{cpus}", b.name, b.mode.name(), b.about);
    }
    Ok(())
}

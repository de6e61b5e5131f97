//! One run over a corpus (or over this runner's share of it).

use std::path::{Path, PathBuf};
use std::time::Instant;

use vmrr_format::bundle::Budgets;

use super::entries::{Entry, corpus_id, discover};
use super::outcome::{self, EntryResult, Summary};
use super::shard::Shard;
use super::worker;
use crate::cmd::replay::ReplayArgs;
use crate::exit_code::{CliError, CliResult};

/// Runs `vmrr replay` over a corpus.
pub fn run(args: &ReplayArgs, budgets: &Budgets) -> CliResult {
    let t0 = Instant::now();
    let c = &args.ci;
    let fail_on = c.fail_on()?;
    let jobs = super::jobs(c.jobs)?;
    let shard = Shard::from_args_or_env(c.shard.as_deref())?;
    let mut paths = vec![args.src.clone()];
    paths.extend(c.more.iter().cloned());
    if let Some(j) = &c.junit {
        let inputs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        vmrr_format::output::check(j, &inputs, args.force, vmrr_format::output::OutputKind::File)
            .map_err(|e| CliError::Usage(e.to_string()))?;
    }
    let all = discover(&paths, budgets)?;
    let corpus = corpus_id(&all);
    let mine: Vec<Entry> = match shard {
        Some(s) => s.select(&all),
        None => all.clone(),
    };
    let progress = !args.json;
    let extra = worker::forwarded(args, budgets);
    let mut results: Vec<EntryResult> = worker::run_all(&mine, &extra, jobs, progress);
    for r in &mut results {
        r.exit_code = outcome::entry_code(r.verdict, r.error.as_ref(), &fail_on);
    }
    let summary =
        Summary::new(&corpus, all.len(), shard, &results, &fail_on, jobs, t0.elapsed().as_secs_f64());
    outcome::print(&results, &summary, args.json)?;
    if let Some(j) = &c.junit {
        super::junit::write(j, &results, &summary, args.force)?;
    }
    match summary.exit_code {
        0 => Ok(()),
        code => Err(CliError::Reported { code }),
    }
}

//! `vmrr ci kubernetes|github`: print a ready manifest that replays a corpus in shards
//! and merges the reports (see docs/CI.md).

use super::manifests::{CorpusSource, Github, Kubernetes, KvmAccess};
use crate::exit_code::{CliError, CliResult};

/// `vmrr ci` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum CiCmd {
    /// An Indexed Job replaying the corpus in shards (pod I replays shard I of N into
    /// /reports), or with --merge-job the Job that merges their reports afterwards.
    Kubernetes {
        /// The container image holding `vmrr` (on its PATH).
        #[arg(long)]
        image: String,
        /// The corpus: pvc:CLAIM[/PATH], s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, or an
        /// https:// URL of a tar archive.
        #[arg(long)]
        corpus: String,
        /// The PersistentVolumeClaim the reports go to.
        #[arg(long, default_value = "vmrr-reports")]
        reports_pvc: String,
        /// Shards: the Job's completions (pods), each replaying its share.
        #[arg(long, default_value_t = 4)]
        shards: usize,
        /// Pods at once (default: all shards).
        #[arg(long)]
        parallelism: Option<usize>,
        /// Replays at once in a pod; each pod requests as many CPUs.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Memory per pod, MiB.
        #[arg(long, default_value_t = 8192)]
        memory_mib: u64,
        /// How pods reach /dev/kvm.
        #[arg(long, value_enum, default_value = "device-plugin")]
        kvm: KvmAccess,
        /// The Job's name.
        #[arg(long, default_value = "vmrr-corpus")]
        name: String,
        /// The namespace (default: kubectl's current one).
        #[arg(long)]
        namespace: Option<String>,
        /// Verdicts that fail the merged run, comma-separated [default: diverged].
        #[arg(long, value_delimiter = ',')]
        fail_on: Vec<String>,
        /// Print the merge Job instead (apply it once the replay Job completed).
        #[arg(long)]
        merge_job: bool,
    },
    /// A GitHub Actions workflow: a matrix of runners, one shard each, then a job merging
    /// their reports into one verdict and a JUnit file.
    Github {
        /// The corpus: path:DIR (in the repository), s3://BUCKET/PREFIX, gs://BUCKET/PREFIX
        /// or an https:// URL of a tar archive.
        #[arg(long, default_value = "path:repros")]
        corpus: String,
        /// Shards (runners).
        #[arg(long, default_value_t = 4)]
        shards: usize,
        /// Replays at once on a runner.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// The runner label.
        #[arg(long, default_value = "ubuntu-latest")]
        runs_on: String,
        /// The command that installs vmrr on a runner.
        #[arg(long, default_value = "cargo install --locked vmrr")]
        install: String,
        /// The workflow's name.
        #[arg(long, default_value = "vmrr repro corpus")]
        name: String,
        /// Verdicts that fail the merged run, comma-separated [default: diverged].
        #[arg(long, value_delimiter = ',')]
        fail_on: Vec<String>,
        /// Minutes a shard may take.
        #[arg(long, default_value_t = 60)]
        timeout_minutes: u64,
    },
}

/// Runs `vmrr ci`.
pub fn run(c: &CiCmd) -> CliResult {
    let check_fail_on =
        |v: &[String]| super::CorpusArgs { fail_on: v.to_vec(), ..Default::default() }.fail_on().map(|_| ());
    let text = match c {
        CiCmd::Kubernetes {
            image,
            corpus,
            reports_pvc,
            shards,
            parallelism,
            jobs,
            memory_mib,
            kvm,
            name,
            namespace,
            fail_on,
            merge_job,
        } => {
            check_fail_on(fail_on)?;
            if *shards == 0 || *jobs == 0 {
                return Err(CliError::Usage("--shards and --jobs must be at least 1".into()));
            }
            let corpus = CorpusSource::parse(corpus)?;
            if matches!(corpus, CorpusSource::Path(_)) {
                return Err(CliError::Usage(
                    "--corpus path:DIR is for `vmrr ci github`; use pvc:CLAIM".into(),
                ));
            }
            let k = Kubernetes {
                name: name.clone(),
                namespace: namespace.clone(),
                image: image.clone(),
                corpus,
                reports_claim: reports_pvc.clone(),
                shards: *shards,
                parallelism: parallelism.unwrap_or(*shards),
                jobs: *jobs,
                memory_mib: *memory_mib,
                kvm: *kvm,
                fail_on: fail_on.clone(),
            };
            if *merge_job { k.merge_job() } else { k.job() }
        }
        CiCmd::Github { corpus, shards, jobs, runs_on, install, name, fail_on, timeout_minutes } => {
            check_fail_on(fail_on)?;
            if *shards == 0 || *jobs == 0 {
                return Err(CliError::Usage("--shards and --jobs must be at least 1".into()));
            }
            let corpus = CorpusSource::parse(corpus)?;
            if matches!(corpus, CorpusSource::Pvc { .. }) {
                return Err(CliError::Usage("--corpus pvc:CLAIM is for `vmrr ci kubernetes`".into()));
            }
            Github {
                name: name.clone(),
                corpus,
                shards: *shards,
                jobs: *jobs,
                runs_on: runs_on.clone(),
                install: install.clone(),
                fail_on: fail_on.clone(),
                timeout_minutes: *timeout_minutes,
            }
            .workflow()
        }
    };
    let mut out = std::io::stdout().lock();
    for l in text.lines() {
        if !crate::cmd::out_line(&mut out, l)? {
            break;
        }
    }
    Ok(())
}

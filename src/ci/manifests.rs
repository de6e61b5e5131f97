//! `vmrr ci kubernetes` and `vmrr ci github`: ready manifests that replay a corpus in
//! shards and merge the shards' reports. Every scalar a user gives is written as a
//! double-quoted YAML string (JSON's escaping, which YAML's double-quoted style reads
//! alike), so no value can change the document's structure.

use std::fmt::Write as _;

use crate::exit_code::CliError;

/// Where the corpus comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorpusSource {
    /// A PersistentVolumeClaim (Kubernetes), with an optional path inside it.
    Pvc {
        /// The claim.
        claim: String,
        /// The path inside it.
        sub_path: Option<String>,
    },
    /// A directory of the repository (GitHub).
    Path(String),
    /// Object storage: `s3://bucket/prefix`.
    S3(String),
    /// Object storage: `gs://bucket/prefix`.
    Gs(String),
    /// A tar archive at an HTTP(S) URL (`.tar`, `.tar.gz`, `.tar.zst`).
    Url(String),
}

impl CorpusSource {
    /// Parses `pvc:CLAIM[/PATH]`, `path:DIR`, `s3://...`, `gs://...` or `https://...`.
    ///
    /// # Errors
    /// Anything else (exit 2).
    pub fn parse(s: &str) -> Result<Self, CliError> {
        if let Some(rest) = s.strip_prefix("pvc:") {
            let (claim, sub) = match rest.split_once('/') {
                Some((c, p)) if !p.is_empty() => (c, Some(p.to_string())),
                Some((c, _)) => (c, None),
                None => (rest, None),
            };
            if claim.is_empty() {
                return Err(CliError::Usage(format!("--corpus {s}: pvc:CLAIM needs a claim name")));
            }
            return Ok(CorpusSource::Pvc { claim: claim.into(), sub_path: sub });
        }
        if let Some(p) = s.strip_prefix("path:") {
            return Ok(CorpusSource::Path(p.into()));
        }
        if s.starts_with("s3://") {
            return Ok(CorpusSource::S3(s.into()));
        }
        if s.starts_with("gs://") {
            return Ok(CorpusSource::Gs(s.into()));
        }
        if s.starts_with("https://") || s.starts_with("http://") {
            return Ok(CorpusSource::Url(s.into()));
        }
        Err(CliError::Usage(format!(
            "--corpus {s}: expected pvc:CLAIM[/PATH], path:DIR, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or an https:// URL of a tar archive"
        )))
    }

    /// A shell command that fetches the corpus into `dir` (object storage and URLs).
    fn fetch(&self, dir: &str) -> Option<String> {
        let q = |s: &str| shell_quote(s);
        match self {
            CorpusSource::S3(u) => Some(format!("aws s3 sync {} {}", q(u), q(dir))),
            CorpusSource::Gs(u) => Some(format!("gcloud storage rsync --recursive {} {}", q(u), q(dir))),
            CorpusSource::Url(u) => {
                let unpack = if u.ends_with(".zst") {
                    "tar --zstd -x"
                } else if u.ends_with(".gz") || u.ends_with(".tgz") {
                    "tar -xz"
                } else {
                    "tar -x"
                };
                Some(format!("mkdir -p {d} && curl -fsSL {} | {unpack} -C {d}", q(u), d = q(dir)))
            }
            CorpusSource::Pvc { .. } | CorpusSource::Path(_) => None,
        }
    }
}

/// `s` quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-:=@%+,".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `s` as a double-quoted YAML scalar.
fn y(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `text` as a YAML literal block scalar at `indent` spaces.
fn block(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut s = String::from("|\n");
    for l in text.lines() {
        if l.is_empty() {
            s.push('\n');
        } else {
            let _ = writeln!(s, "{pad}{l}");
        }
    }
    s
}

/// How a pod gets `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvmAccess {
    /// The KVM device plugin's resource (`devices.kubevirt.io/kvm`, as KubeVirt's plugin
    /// names it): no privileges.
    DevicePlugin,
    /// A privileged container with the node's `/dev/kvm` mounted.
    Privileged,
}

/// `vmrr ci kubernetes` settings.
#[derive(Debug, Clone)]
pub struct Kubernetes {
    /// The Job's name.
    pub name: String,
    /// Its namespace, if not the current one.
    pub namespace: Option<String>,
    /// The container image holding `vmrr`.
    pub image: String,
    /// Where the corpus is.
    pub corpus: CorpusSource,
    /// The claim reports are written to.
    pub reports_claim: String,
    /// Shards (the Job's completions).
    pub shards: usize,
    /// Pods at once.
    pub parallelism: usize,
    /// Replays at once in each pod (`--jobs`), and the CPUs each pod requests.
    pub jobs: usize,
    /// Memory each pod requests, MiB.
    pub memory_mib: u64,
    /// How pods reach KVM.
    pub kvm: KvmAccess,
    /// `--fail-on` for the merge.
    pub fail_on: Vec<String>,
}

const CORPUS_DIR: &str = "/corpus";
const REPORTS_DIR: &str = "/reports";

impl Kubernetes {
    /// The Indexed Job: pod `I` replays shard `I/N` and writes `/reports/shard-I.jsonl` and
    /// `shard-I.junit.xml`. A pod succeeds when its shard ran (whatever the verdicts: the
    /// merge decides); it fails, and is retried, when a replay could not run.
    pub fn job(&self) -> String {
        let n = self.shards;
        let script = format!(
            "set -u\nI=\"$JOB_COMPLETION_INDEX\"\nvmrr replay {CORPUS_DIR} --jobs {jobs} --json --force --junit {REPORTS_DIR}/shard-$I.junit.xml > {REPORTS_DIR}/.shard-$I.jsonl.tmp\ncode=$?\nif [ \"$code\" -le 1 ]; then mv {REPORTS_DIR}/.shard-$I.jsonl.tmp {REPORTS_DIR}/shard-$I.jsonl; exit 0; fi\nexit \"$code\"\n",
            jobs = self.jobs
        );
        let mut s = self.header("replay");
        let _ = write!(
            s,
            "spec:\n  completionMode: Indexed\n  completions: {n}\n  parallelism: {p}\n  backoffLimit: {b}\n  template:\n    metadata:\n      labels:\n        app.kubernetes.io/name: \"vmrr\"\n        app.kubernetes.io/component: \"replay\"\n    spec:\n      restartPolicy: Never\n",
            p = self.parallelism.clamp(1, n),
            b = n.saturating_mul(2).max(2)
        );
        if let Some(fetch) = self.corpus.fetch(CORPUS_DIR) {
            let image = match &self.corpus {
                CorpusSource::S3(_) => "amazon/aws-cli:latest",
                CorpusSource::Gs(_) => "google/cloud-sdk:slim",
                _ => "curlimages/curl:latest",
            };
            let _ = write!(
                s,
                "      initContainers:\n        - name: \"fetch-corpus\"\n          image: {}\n          command: [\"sh\", \"-c\"]\n          args:\n            - {}          volumeMounts:\n            - name: \"corpus\"\n              mountPath: {}\n",
                y(image),
                block(&fetch, 14),
                y(CORPUS_DIR)
            );
        }
        let _ = write!(
            s,
            "      containers:\n        - name: \"replay\"\n          image: {}\n          command: [\"sh\", \"-c\"]\n          args:\n            - {}          env:\n            - name: \"JOB_COMPLETIONS\"\n              value: {}\n{}          volumeMounts:\n            - name: \"corpus\"\n              mountPath: {}\n              readOnly: true\n{}            - name: \"reports\"\n              mountPath: {}\n{}",
            y(&self.image),
            block(&script, 14),
            y(&n.to_string()),
            self.resources(),
            y(CORPUS_DIR),
            match &self.corpus {
                CorpusSource::Pvc { sub_path: Some(p), .. } => format!("              subPath: {}\n", y(p)),
                _ => String::new(),
            },
            y(REPORTS_DIR),
            self.kvm_mount(),
        );
        s.push_str("      volumes:\n");
        match &self.corpus {
            CorpusSource::Pvc { claim, .. } => {
                let _ = write!(
                    s,
                    "        - name: \"corpus\"\n          persistentVolumeClaim:\n            claimName: {}\n            readOnly: true\n",
                    y(claim)
                );
            }
            _ => s.push_str("        - name: \"corpus\"\n          emptyDir: {}\n"),
        }
        let _ = write!(
            s,
            "        - name: \"reports\"\n          persistentVolumeClaim:\n            claimName: {}\n{}",
            y(&self.reports_claim),
            self.kvm_volume()
        );
        s
    }

    /// The Job that merges the shards' reports once the replay Job completed
    /// (`kubectl wait --for=condition=complete job/NAME`): `/reports/merged.jsonl`,
    /// `/reports/junit.xml`, and the table in its log; it fails when the merged run does.
    pub fn merge_job(&self) -> String {
        let fail_on = if self.fail_on.is_empty() {
            String::new()
        } else {
            format!(" --fail-on {}", shell_quote(&self.fail_on.join(",")))
        };
        let script = format!(
            "vmrr merge {REPORTS_DIR}/shard-*.jsonl --json --force --junit {REPORTS_DIR}/junit.xml{fail_on} > {REPORTS_DIR}/merged.jsonl\n"
        );
        let mut s = self.header("merge");
        let _ = write!(
            s,
            "spec:\n  backoffLimit: 0\n  template:\n    metadata:\n      labels:\n        app.kubernetes.io/name: \"vmrr\"\n        app.kubernetes.io/component: \"merge\"\n    spec:\n      restartPolicy: Never\n      containers:\n        - name: \"merge\"\n          image: {}\n          command: [\"sh\", \"-c\"]\n          args:\n            - {}          volumeMounts:\n            - name: \"reports\"\n              mountPath: {}\n      volumes:\n        - name: \"reports\"\n          persistentVolumeClaim:\n            claimName: {}\n",
            y(&self.image),
            block(&script, 14),
            y(REPORTS_DIR),
            y(&self.reports_claim)
        );
        s
    }

    fn header(&self, component: &str) -> String {
        let name = if component == "merge" { format!("{}-merge", self.name) } else { self.name.clone() };
        let mut s = format!("apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {}\n", y(&name));
        if let Some(ns) = &self.namespace {
            let _ = writeln!(s, "  namespace: {}", y(ns));
        }
        let _ = write!(
            s,
            "  labels:\n    app.kubernetes.io/name: \"vmrr\"\n    app.kubernetes.io/component: {}\n",
            y(component)
        );
        s
    }

    fn resources(&self) -> String {
        let kvm = match self.kvm {
            KvmAccess::DevicePlugin => "              devices.kubevirt.io/kvm: \"1\"\n",
            KvmAccess::Privileged => "",
        };
        let mut s = format!(
            "          resources:\n            requests:\n              cpu: {}\n              memory: {}\n{kvm}            limits:\n              memory: {}\n{kvm}",
            y(&self.jobs.to_string()),
            y(&format!("{}Mi", self.memory_mib)),
            y(&format!("{}Mi", self.memory_mib)),
        );
        if self.kvm == KvmAccess::Privileged {
            s.push_str("          securityContext:\n            privileged: true\n");
        }
        s
    }

    fn kvm_mount(&self) -> String {
        match self.kvm {
            KvmAccess::DevicePlugin => String::new(),
            KvmAccess::Privileged => {
                "            - name: \"kvm\"\n              mountPath: \"/dev/kvm\"\n".into()
            }
        }
    }

    fn kvm_volume(&self) -> String {
        match self.kvm {
            KvmAccess::DevicePlugin => String::new(),
            KvmAccess::Privileged => {
                "        - name: \"kvm\"\n          hostPath:\n            path: \"/dev/kvm\"\n            type: \"CharDevice\"\n".into()
            }
        }
    }
}

/// `vmrr ci github` settings.
#[derive(Debug, Clone)]
pub struct Github {
    /// The workflow's name.
    pub name: String,
    /// Where the corpus is (a repository path, object storage or a URL).
    pub corpus: CorpusSource,
    /// Shards (matrix entries).
    pub shards: usize,
    /// Replays at once on each runner.
    pub jobs: usize,
    /// The runner label.
    pub runs_on: String,
    /// The command that installs `vmrr` on a runner.
    pub install: String,
    /// `--fail-on` for the merge.
    pub fail_on: Vec<String>,
    /// Minutes a shard may take.
    pub timeout_minutes: u64,
}

impl Github {
    /// The workflow: a matrix job replaying one shard per runner, each uploading its
    /// report, then a job merging them into one verdict and a JUnit file.
    pub fn workflow(&self) -> String {
        let n = self.shards;
        let dir = match &self.corpus {
            CorpusSource::Path(p) => p.clone(),
            _ => "corpus".into(),
        };
        let matrix: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let kvm = "echo 'KERNEL==\"kvm\", GROUP=\"kvm\", MODE=\"0666\", OPTIONS+=\"static_node=kvm\"' | sudo tee /etc/udev/rules.d/99-kvm4all.rules\nsudo udevadm control --reload-rules\nsudo udevadm trigger --name-match=kvm\n";
        let replay = format!(
            "set +e\nvmrr replay {} --shard ${{{{ matrix.shard }}}}/{n} --jobs {} --json > report-${{{{ matrix.shard }}}}.jsonl\ncode=$?\n# Verdicts are judged by the merge job; a replay that could not run fails here.\n[ \"$code\" -le 1 ] || exit \"$code\"\n",
            shell_quote(&dir),
            self.jobs
        );
        let fail_on = if self.fail_on.is_empty() {
            String::new()
        } else {
            format!(" --fail-on {}", shell_quote(&self.fail_on.join(",")))
        };
        let mut s = format!(
            "name: {}\non:\n  push:\n  pull_request:\n  workflow_dispatch:\npermissions:\n  contents: read\njobs:\n  replay:\n    name: {}\n    runs-on: {}\n    timeout-minutes: {}\n    strategy:\n      fail-fast: false\n      matrix:\n        shard: [{}]\n    steps:\n      - uses: actions/checkout@v4\n      - name: \"Let the runner use KVM\"\n        run: {}      - name: \"Install vmrr\"\n        run: {}",
            y(&self.name),
            y(&format!("replay shard ${{{{ matrix.shard }}}}/{n}")),
            y(&self.runs_on),
            self.timeout_minutes,
            matrix.join(", "),
            block(kvm, 10),
            block(&self.install, 10),
        );
        if let Some(fetch) = self.corpus.fetch(&dir) {
            let _ = write!(s, "      - name: \"Fetch the corpus\"\n        run: {}", block(&fetch, 10));
        }
        let _ = write!(
            s,
            "      - name: \"Replay this shard\"\n        run: {}      - name: \"Upload the shard's report\"\n        if: always()\n        uses: actions/upload-artifact@v4\n        with:\n          name: \"vmrr-report-${{{{ matrix.shard }}}}\"\n          path: \"report-${{{{ matrix.shard }}}}.jsonl\"\n          if-no-files-found: error\n",
            block(&replay, 10)
        );
        let merge = format!("vmrr merge reports/*.jsonl --junit junit.xml{fail_on}\n");
        let _ = write!(
            s,
            "  merge:\n    name: \"merge the shards' reports\"\n    needs: replay\n    if: always()\n    runs-on: {}\n    steps:\n      - uses: actions/download-artifact@v4\n        with:\n          pattern: \"vmrr-report-*\"\n          path: \"reports\"\n          merge-multiple: true\n      - name: \"Install vmrr\"\n        run: {}      - name: \"Merge: one verdict for the corpus\"\n        run: {}      - name: \"Upload the JUnit report\"\n        if: always()\n        uses: actions/upload-artifact@v4\n        with:\n          name: \"vmrr-junit\"\n          path: \"junit.xml\"\n",
            y(&self.runs_on),
            block(&self.install, 10),
            block(&merge, 10)
        );
        s
    }
}

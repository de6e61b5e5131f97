//! `vmrr ci kubernetes` and `vmrr ci github` print manifests that validate against the
//! published schemas (Kubernetes' OpenAPI schemas, strictly; SchemaStore's GitHub Actions
//! workflow schema), with no cluster and no runner; and the validators do reject a
//! manifest with a field that does not exist.

mod common;

use common::schema as corpus_schema;
use common::*;

fn manifest(args: &[&str]) -> String {
    let o = vmrr(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

#[test]
fn manifests_validate_against_the_published_schemas() {
    let Some(py) = corpus_schema::schema_python() else { return };
    let d = tmp();
    let image = "ghcr.io/acme/vmrr:1.0";
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("k8s", vec!["ci", "kubernetes", "--image", image, "--corpus", "pvc:repros/customers"]),
        (
            "k8s",
            vec![
                "ci",
                "kubernetes",
                "--image",
                image,
                "--corpus",
                "s3://bucket/repros",
                "--shards",
                "16",
                "--parallelism",
                "8",
                "--kvm",
                "privileged",
                "--namespace",
                "ci",
                "--fail-on",
                "diverged,no_longer_fails",
            ],
        ),
        ("k8s", vec!["ci", "kubernetes", "--image", image, "--corpus", "gs://bucket/repros"]),
        ("k8s", vec!["ci", "kubernetes", "--image", image, "--corpus", "https://h.example/c.tar.zst"]),
        ("k8s", vec!["ci", "kubernetes", "--image", image, "--corpus", "pvc:repros", "--merge-job"]),
        ("github", vec!["ci", "github"]),
        ("github", vec!["ci", "github", "--corpus", "s3://bucket/repros", "--shards", "8", "--jobs", "4"]),
        ("github", vec!["ci", "github", "--corpus", "https://h.example/c.tar.gz", "--fail-on", "diverged"]),
    ];
    for (i, (kind, args)) in cases.iter().enumerate() {
        let text = manifest(args);
        let f = at(&d, &format!("m{i}.yaml"));
        std::fs::write(&f, &text).unwrap();
        corpus_schema::validate(&py, kind, &f);
        if *kind == "k8s" && !args.contains(&"--merge-job") {
            assert!(text.contains("completionMode: Indexed"), "{text}");
            assert!(text.contains("JOB_COMPLETIONS"), "the pods know the completion count: {text}");
        }
        if *kind == "github" {
            assert!(text.contains("--shard ${{ matrix.shard }}/"), "{text}");
            assert!(text.contains("vmrr merge reports/*.jsonl --junit junit.xml"), "{text}");
        }
    }
    // The validators are strict: a field Kubernetes or Actions does not know fails.
    let k = manifest(&["ci", "kubernetes", "--image", image, "--corpus", "pvc:repros"]);
    let bad = at(&d, "bad-k8s.yaml");
    std::fs::write(
        &bad,
        k.replace("completionMode: Indexed", "completionMode: Indexed\n  completionCount: 4"),
    )
    .unwrap();
    assert!(!corpus_schema::passes(&py, "k8s", &bad), "an unknown Job field is refused");
    let g = manifest(&["ci", "github"]);
    let bad = at(&d, "bad-gh.yaml");
    std::fs::write(&bad, g.replace("runs-on:", "run-on:")).unwrap();
    assert!(!corpus_schema::passes(&py, "github", &bad), "a misspelled key is refused");
}

#[test]
fn manifest_options_are_checked() {
    for args in [
        vec!["ci", "kubernetes", "--image", "i", "--corpus", "path:repros"],
        vec!["ci", "kubernetes", "--image", "i", "--corpus", "ftp://x"],
        vec!["ci", "kubernetes", "--image", "i", "--corpus", "pvc:r", "--shards", "0"],
        vec!["ci", "github", "--corpus", "pvc:r"],
        vec!["ci", "github", "--fail-on", "sometimes"],
    ] {
        let o = vmrr(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

"""Validates what vmrr writes for CI against published schemas, with no cluster:

    validate.py junit FILE    the Apache Ant JUnit XSD (as sphinx-test-reports 1.4.0 ships it)
    validate.py k8s FILE      Kubernetes' own OpenAPI schemas, strict (kubernetes-validate)
    validate.py github FILE   SchemaStore's GitHub Actions workflow schema (check-jsonschema)

Exits non-zero, saying why, when FILE does not validate.
"""

from importlib.metadata import files
import subprocess
import sys


def junit_xsd():
    """The Ant JUnit XSD as sphinx-test-reports 1.4.0 ships it (found through the
    package's file list: importing the package would need Sphinx)."""
    return next(f for f in files("sphinx-test-reports") if f.name == "JUnit.xsd").locate()


def junit(path):
    import xmlschema

    schema = xmlschema.XMLSchema(str(junit_xsd()))
    errors = list(schema.iter_errors(path))
    for e in errors[:5]:
        print(e)
    return not errors


def k8s(path):
    import kubernetes_validate
    import yaml

    version = kubernetes_validate.latest_version()
    ok = True
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc is None:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                print(f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}: {e.message} at {list(e.path)}")
                ok = False
    print(f"validated against Kubernetes {version}")
    return ok


def github(path):
    r = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", path],
        capture_output=True,
        text=True,
    )
    print(r.stdout, r.stderr)
    return r.returncode == 0


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "check":
        junit_xsd()
        import check_jsonschema, kubernetes_validate  # noqa: F401
        sys.exit(0)
    path = sys.argv[2]
    sys.exit(0 if {"junit": junit, "k8s": k8s, "github": github}[kind](path) else 1)

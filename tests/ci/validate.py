"""Validates what vmrr writes for CI against published schemas, with no cluster:

    validate.py junit FILE    the Apache Ant JUnit XSD (as sphinx-test-reports 1.4.0 ships it)
    validate.py k8s FILE      Kubernetes' own OpenAPI schemas, strict (kubernetes-validate)
    validate.py github FILE   SchemaStore's GitHub Actions workflow schema (check-jsonschema)

Exits non-zero, saying why, when FILE does not validate.
"""

import importlib.resources
import subprocess
import sys


def junit(path):
    import xmlschema

    xsd = importlib.resources.files("sphinxcontrib.test_reports") / "schemas" / "JUnit.xsd"
    schema = xmlschema.XMLSchema(str(xsd))
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
    kind, path = sys.argv[1], sys.argv[2]
    sys.exit(0 if {"junit": junit, "k8s": k8s, "github": github}[kind](path) else 1)

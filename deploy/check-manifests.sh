#!/usr/bin/env bash
# Checks the deployment files: each Kubernetes overlay as kustomize renders
# it, and the example manifests, against the Kubernetes API schemas
# (kubernetes-validate from PyPI, strict: unknown fields are errors); and
# the systemd units' sandboxing (systemd-analyze security, offline).
# Needs kubectl, python3 and systemd-analyze (deploy/install-test-tools.sh);
# installs kubernetes-validate into a virtual environment under target/
# the first time. ./test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kubectl >/dev/null 2>&1; then
    echo "error: kubectl is needed to render the overlays (kubectl kustomize)" >&2
    exit 1
fi
venv=target/tools/kubernetes-validate
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    echo "==> installing kubernetes-validate into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for overlay in deploy/kubernetes/overlays/*/; do
    name=$(basename "$overlay")
    kubectl kustomize "$overlay" > "$out/$name.yaml"
    echo "==> $overlay"
    "$venv/bin/kubernetes-validate" --strict --no-warn "$out/$name.yaml"
    # Every object but the namespace lands in the product's namespace.
    "$venv/bin/python" - "$out/$name.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
bad = [f"{d['kind']}/{d['metadata']['name']}" for d in docs
       if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "failover"]
if bad:
    sys.exit(f"error: not in namespace failover: {', '.join(bad)}")
PY
done
echo "==> examples"
"$venv/bin/kubernetes-validate" --strict --no-warn deploy/kubernetes/base/service-external.example.yaml

# Exposure as systemd-analyze scores it (0 safe .. 10 unsafe): the
# coordinator needs nothing but its files and TCP; the agent's hooks run
# as root and manage services, so less can be closed.
# --threshold counts tenths.
for unit in failover-coordinator:20 failover-agent:60; do
    name=${unit%%:*}
    threshold=${unit##*:}
    echo "==> systemd-analyze security $name.service (at most $((threshold / 10)).$((threshold % 10)))"
    systemd-analyze security --offline=true --threshold="$threshold" \
        "deploy/systemd/$name.service" | tail -1
done

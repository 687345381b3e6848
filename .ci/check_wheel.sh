#!/usr/bin/env bash
# Build certa's sdist and wheel with `python -m build`, install the wheel (not editable) into a fresh
# venv, and run it from outside the source tree: `certa --version`, `certa methods`, the package data
# (py.typed, bundled datasets, their licenses) and a tiny end-to-end run (generate → grade → score →
# evaluate) on the tiny random-weight model of tests/tiny.py. Catches files missing from the package.
#
#   bash .ci/check_wheel.sh            # work folder: a temp dir, removed at the end
#   KEEP=1 WORK=/tmp/wheel-check bash .ci/check_wheel.sh
#
# Needs PyPI (or the machine's wheel mirror) for the build backend and certa's dependencies.
# TORCH_SPEC as in the Makefile: the CPU build of torch, installed first. With `uv` on PATH the fresh venv is
# made and filled by uv (same packages, from its cache: measured 7.4 min with pip vs about 1 min with uv here).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
WORK=${WORK:-$(mktemp -d -t certa-wheel-XXXXXX)}
mkdir -p "$WORK"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} CERTA_NUM_THREADS=${CERTA_NUM_THREADS:-1}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1
start=$SECONDS
step() { printf '\n[%4ds] %s\n' $((SECONDS - start)) "$*"; }
ok() { printf '  ok: %s\n' "$*"; }

step "build sdist + wheel (python -m build: the wheel is built from the sdist)"
"$PYTHON" -m venv "$WORK/build-venv"
"$WORK/build-venv/bin/pip" install -q build
"$WORK/build-venv/bin/python" -m build --outdir "$WORK/dist" "$REPO" > "$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/certa-*.whl)
ls -l "$WORK"/dist | sed 's/^/  /'

step "fresh venv: $TORCH_SPEC first, then the wheel (not editable)"
if command -v uv >/dev/null && [ -z "${NO_UV:-}" ]; then
  links=(); [ -d /opt/wheels ] && links=(--find-links /opt/wheels)
  uv venv -q --python "$PYTHON" "$WORK/venv"
  # uv does not read pip's config: the CPU build is named by its local version (+cpu), found in /opt/wheels.
  uv pip install -q --python "$WORK/venv/bin/python" "${links[@]}" "${UV_TORCH_SPEC:-${TORCH_SPEC}+cpu}"
  uv pip install -q --python "$WORK/venv/bin/python" "${links[@]}" "$WHEEL"
else
  "$PYTHON" -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install -q "$TORCH_SPEC"
  "$WORK/venv/bin/pip" install -q "$WHEEL"
fi
BIN=$WORK/venv/bin
cd "$WORK"   # away from the source tree: only the installed package can be imported

step "installed from the wheel, not from the source tree"
"$BIN/python" - "$REPO" <<'EOF'
import pathlib, sys
import certa
where = pathlib.Path(certa.__file__).resolve()
assert "site-packages" in where.parts and not where.is_relative_to(sys.argv[1]), where
print(f"  ok: certa imported from {where.parent}")
EOF

step "certa --version"
expected=$("$BIN/python" -c "import importlib.metadata as m; print(m.version('certa'))")
got=$("$BIN/certa" --version)
[ "$got" = "certa $expected" ] || { echo "  FAIL: '$got' != 'certa $expected'"; exit 1; }
ok "$got"

step "certa methods"
"$BIN/certa" methods > methods.txt
names=$("$BIN/python" -c "from certa.methods import method_names; print(' '.join(method_names()))")
for name in $names; do
  grep -q "│ $name " methods.txt || { echo "  FAIL: '$name' missing from certa methods"; cat methods.txt; exit 1; }
done
ok "lists all $(wc -w <<< "$names") registered methods: $names"

step "package data: py.typed, bundled datasets, their notice and licenses"
"$BIN/python" - <<'EOF'
from importlib import resources
import certa
from certa.data import dataset_names, load_dataset
root = resources.files("certa")
assert (root / "py.typed").is_file(), "py.typed missing"
bundled = root / "data" / "bundled"
assert (bundled / "NOTICE.md").is_file(), "NOTICE.md missing"
licenses = sorted(p.name for p in (bundled / "LICENSES").iterdir())
assert licenses, "no license texts"
sizes = {name: len(load_dataset(name, split="all")) for name in dataset_names()}
assert all(sizes.values()), sizes
print(f"  ok: py.typed; NOTICE.md; licenses {licenses}")
print(f"  ok: every dataset loads: {sizes}")
EOF

step "built-in artifacts: every one in the source tree is in the wheel, loadable by name"
"$BIN/python" - "$REPO" <<'EOF'
import pathlib, sys
from certa.models import builtin_model_names
from certa.models.bundled import REQUIRED, ROOT
source = sorted(p.parent.name for p in pathlib.Path(sys.argv[1], "src/certa/artifacts").glob("*/certa.json"))
for name in source:
    missing = [f for f in REQUIRED if not (ROOT / name / f).is_file()]
    assert not missing, f"{name}: {missing} not in the wheel"
    assert name in builtin_model_names(), name
print(f"  ok: {source or 'none built yet (make artifacts)'}")
EOF

step "tiny end-to-end run on the tiny random-weight model (generate → grade → score → evaluate)"
PYTHONPATH="$REPO/tests" "$BIN/python" -c "from tiny import build_tiny_model; build_tiny_model('tiny-model')" 2>/dev/null
"$BIN/certa" generate -m tiny-model -d arithmetic --limit 8 --max-new-tokens 6 --batch-size 4 -o gens.jsonl
"$BIN/certa" grade -i gens.jsonl -o records.jsonl -d arithmetic
"$BIN/certa" score -i records.jsonl -o scores.jsonl -m tiny-model --method sequence_likelihood,token_entropy,p_true
"$BIN/certa" evaluate -i scores.jsonl -o eval --n-bootstrap 50 > evaluate.txt
"$BIN/python" - <<'EOF'
import json
metrics = json.load(open("eval/metrics.json"))
assert metrics["n"] == 8, metrics["n"]
assert set(metrics["methods"]) == {"sequence_likelihood", "token_entropy", "p_true"}, metrics["methods"].keys()
html = open("eval/report.html", encoding="utf-8").read()
assert html.count("data:image/png;base64,") >= 2, "report has no embedded figures"
print(f"  ok: metrics.json (n={metrics['n']}, methods {sorted(metrics['methods'])}), "
      f"report.html ({len(html) // 1024} KiB, {html.count('data:image/png;base64,')} figures)")
EOF

step "done: the wheel installs and runs (total ${SECONDS}s)"

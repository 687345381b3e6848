"""Run lm-evaluation-harness offline on a local model over custom tasks on local JSONL files.

Used by ``tests/test_lm_eval.py`` (the slow round trip: lm_eval writes the samples
file inside the test) and to rebuild the committed fixture in
``tests/fixtures/lm_eval/``::

    python tests/lm_eval_run.py tests/fixtures/lm_eval

which builds the tiny random-weight model of ``tests/tiny.py``, runs the three
tasks below with ``--log_samples`` and copies the samples files (under the
names lm_eval gave them) into the folder. Offline: ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``
are set and ``HF_HOME`` points into the work folder, so nothing is fetched and
no user cache is touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

QA = [
    {"id": "q1", "question": "What is 3 + 4?", "answer": "7"},
    {"id": "q2", "question": "What is the capital of France?", "answer": "Paris"},
    {"id": "q3", "question": "Who wrote Hamlet?", "answer": "William Shakespeare"},
    {"id": "q4", "question": "Which mark ends a question?", "answer": "?"},
    {"id": "q5", "question": "What is 2 + 2?", "answer": "4"},
]
QA_ALIASES = [
    {"id": "a1", "question": "What is the capital of France?", "answers": ["Paris", "paris, France"]},
    {"id": "a2", "question": "What is 3 + 4?", "answers": ["7", "seven"]},
    {"id": "a3", "question": "Which mark ends a question?", "answers": ["?", "a question mark"]},
]
MC = [
    {"id": "m1", "question": "What is 3 + 4?", "choices": ["7", "8", "12"], "label": 0},
    {"id": "m2", "question": "What is the capital of France?", "choices": ["Berlin", "Paris", "Rome", "Madrid"],
     "label": 1},
    {"id": "m3", "question": "Who wrote Hamlet?", "choices": ["William Shakespeare", "Dickens"], "label": 0},
    {"id": "m4", "question": "Is the proposed answer correct?", "choices": ["True", "False"], "label": 1},
    {"id": "m5", "question": "What is 2 + 2?", "choices": ["4", "22", "five"], "label": 0},
    {"id": "m6", "question": "Which is a colour?", "choices": ["blue", "seven", "Paris"], "label": 0},
]

GEN_TASK = """\
task: certa_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/qa.jsonl
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
"""

# Several gold aliases (a list target) and two filters, like gsm8k's strict/flexible pair.
ALIAS_TASK = """\
task: certa_gen_aliases
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/qa_aliases.jsonl
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: answers
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
filter_list:
  - name: "raw"
    filter:
      - function: "take_first"
  - name: "first-word"
    filter:
      - function: "regex"
        regex_pattern: "(\\\\w+)"
      - function: "take_first"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
"""

MC_TASK = """\
task: certa_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""

TASKS = ("certa_gen", "certa_gen_aliases", "certa_mc")


def write_tasks(folder: Path) -> Path:
    """Write the data files and task YAMLs under ``folder``; return the ``--include_path`` folder."""
    data = folder / "data"
    tasks = folder / "tasks"
    data.mkdir(parents=True, exist_ok=True)
    tasks.mkdir(parents=True, exist_ok=True)
    for name, rows in (("qa", QA), ("qa_aliases", QA_ALIASES), ("mc", MC)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for name, text in (("certa_gen", GEN_TASK), ("certa_gen_aliases", ALIAS_TASK), ("certa_mc", MC_TASK)):
        (tasks / f"{name}.yaml").write_text(text.format(data=data.as_posix()), encoding="utf-8")
    return tasks


def lm_eval_command(model_dir: Path, include_path: Path, output_path: Path, tasks: str = ",".join(TASKS)) -> list[str]:
    return [
        sys.executable, "-m", "lm_eval", "run",
        "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
        "--device", "cpu", "--batch_size", "4",
        "--include_path", str(include_path), "--tasks", tasks,
        "--log_samples", "--output_path", str(output_path),
    ]


def offline_env(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME=str(folder / "hf-home"), TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    return env


def run_lm_eval(folder: Path, model_dir: Path, timeout: float = 600) -> dict[str, Path]:
    """Run lm_eval on the three tasks; return {task: samples file} (files named by lm_eval itself)."""
    include = write_tasks(folder)
    out = folder / "out"
    proc = subprocess.run(lm_eval_command(model_dir, include, out), env=offline_env(folder), cwd=folder,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"lm_eval failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    found: dict[str, Path] = {}
    for path in sorted(out.rglob("samples_*.jsonl")):
        match = re.match(r"samples_(.+)_\d{4}-\d{2}-\d{2}T[\d.-]+\.jsonl$", path.name)
        if match:
            found[match.group(1)] = path
    missing = set(TASKS) - set(found)
    if missing:
        raise RuntimeError(f"lm_eval wrote no samples for {sorted(missing)} under {out}")
    return found


def main(target: str) -> None:  # pragma: no cover - a maintenance script
    sys.path.insert(0, str(Path(__file__).parent))
    import importlib.metadata

    from tiny import build_tiny_model

    dest = Path(target)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "tiny")
        for old in dest.glob("samples_*.jsonl"):
            old.unlink()
        for path in run_lm_eval(work, model).values():
            shutil.copyfile(path, dest / path.name)
    print(f"lm_eval {importlib.metadata.version('lm_eval')} wrote {', '.join(TASKS)} samples to {dest}")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/lm_eval")

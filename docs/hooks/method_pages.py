"""mkdocs hook: the facts on each method page (docs/methods/NAME.md) come from the method class itself.

A page writes its prose by hand — what the method is, when to use it — and holds two markers that
are replaced at build time, so cost, evidence and settings cannot drift from the code:

- ``<!-- certa-method-cost NAME -->``: what the method costs and which evidence it needs, how to call it;
- ``<!-- certa-method-knobs NAME -->``: its settings — a trained method's config fields (the options of
  ``certa train NAME``), otherwise the keyword arguments of its class (``get_method(NAME, key=value)``);
- ``<!-- certa-method-results NAME -->``: its held-out ECE, Brier and AUROC with 95% intervals, pooled and
  per dataset, from the study behind RESULTS.md (``docs/results/metrics.json``, written by ``make results-cpu``).

Every page has the same five sections (``SECTIONS``); ``tests/test_docs.py`` checks that each
registered method has a page in that shape and in the site's navigation.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

SECTIONS = ("What it is", "What it costs", "When to use it", "Knobs", "Measured numbers")
_MARKER = re.compile(r"<!-- certa-method-(cost|knobs|results) ([a-z_]+) -->")
STUDY_METRICS = Path(__file__).resolve().parents[1] / "results" / "metrics.json"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    render = {"cost": cost, "knobs": knobs, "results": results}
    return _MARKER.sub(lambda m: render[m.group(1)](m.group(2)), markdown)


def cost(name: str) -> str:
    """Cost, evidence and how to call the method, from its class."""
    from certa.methods.base import method_class

    cls = method_class(name)
    needs = ", ".join(f"`{label}`" for label in cls.needs.labels()) or "nothing beyond the answer"
    model = ", model=lm" if "model" in cls.needs.labels() else ""
    lines = [f"**Cost:** {cls.cost}.", "", f"**Needs:** {needs}.", ""]
    if getattr(cls, "paper", None):
        lines += [f"**Paper:** {cls.paper}.", ""]
    lines += ["```python", f'scores = certa.get_method("{name}"{model}).score(records)', "```", "",
              f"Command line: `certa score -i records.jsonl --method {name}`"
              + (" -m MODEL" if model else "") + ".", ""]
    return "\n".join(lines)


def knobs(name: str) -> str:
    """A table of the method's settings with their defaults and help."""
    from certa.methods.base import method_class

    cls = method_class(name)
    config_class = getattr(cls, "config_class", None)
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    if config_class is not None:
        for field, info in config_class.model_fields.items():
            default = info.get_default(call_default_factory=True)
            shown = ",".join(default) if isinstance(default, list) else default
            rows.append(f"| `{field}` (`--{field.replace('_', '-')}`) | `{shown}` | {_cell(info.description or '')} |")
        return "\n".join([f"Settings of `certa train {name}` (and of `training: {{{name}: ...}}` in a study "
                          "config):", "", *rows, ""])
    params = [p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name not in {"self", "model"} and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if not params:
        return "None: the method has no settings.\n"
    rows = ["| argument | default | type |", "|---|---|---|"]
    for p in params:
        default = "required" if p.default is p.empty else f"`{p.default!r}`"
        annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        rows.append(f"| `{p.name}` | {default} | {_cell(annotation)} |")
    return "\n".join([f'Keyword arguments of `certa.get_method("{name}", ...)`:', "", *rows, ""])


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def results(name: str, path: Path = STUDY_METRICS) -> str:
    """The method's held-out metrics in the study behind RESULTS.md, pooled then per dataset."""
    if not path.is_file():
        return "No study results in this checkout (`make results-cpu` writes them).\n"
    study = json.loads(path.read_text(encoding="utf-8"))
    rows = [("pooled", study)] + sorted((study.get("extra") or {}).get("by_dataset", {}).items())
    lines = ["| test answers | n | accuracy | ECE ↓ | Brier ↓ | AUROC ↑ |", "|---|---|---|---|---|---|"]
    for label, block in rows:
        metrics = (block.get("methods") or {}).get(name)
        if metrics:
            lines.append(f"| {label} | {block.get('n')} | {_estimate(block.get('accuracy'))} | "
                         + " | ".join(_estimate(metrics.get(k)) for k in ("ece", "brier", "auroc")) + " |")
    if len(lines) == 2:
        return f"`{name}` was not among the methods of the last study ([RESULTS.md](../RESULTS.md)).\n"
    return "\n".join(["On the default model (SmolLM2-135M-Instruct), 95% bootstrap intervals; the whole study "
                      "and its setting: [RESULTS.md](../RESULTS.md).", "", *lines, ""])


def _estimate(entry: Any) -> str:
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "—"
    low, high = entry.get("ci") or (None, None)
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{entry['value']:.3f}{interval}"

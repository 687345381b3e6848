"""Data-parallel stages: the questions split across the processes ``accelerate launch`` starts.

``accelerate launch --num_processes N -m certa.cli generate ...`` (or ``torchrun``)
starts N copies of a command. Each copy answers (or scores) every N-th
question, ``items[index::N]``, on its own device, and writes its own shard
file next to the output, ``OUT.shards/rank-I-of-N.jsonl``: generation appends
each finished batch to it (the same ``.partial`` + rename as a one-process run,
so a killed run resumes per shard), scoring writes it atomically when the
shard is done. When every process has finished, the main process merges the
shards into ``OUT`` in the dataset's order and removes them. The merged file
holds the records a one-process run writes, in the same order: greedy answers
are the same, while log-probs differ by float rounding only, because batches
are made of other questions (different padding).

Nothing here is a distributed layer of certa's own: the process index and
count come from accelerate's ``PartialState`` (which reads what the launcher
set), and the only collective operation is its barrier. A run started without
a launcher is one process and writes ``OUT`` directly, as before.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CertaError, InputError
from .generation import DEFAULTS, RAW_PROMPT_KEY, generate, model_hooks
from .prompts import question_prompt
from .records import Example, Generation, Record, from_dict, read_jsonl, write_jsonl
from .scores import read_scores, write_scores

if TYPE_CHECKING:
    import torch

    from .models import LoadedModel

SHARDS_SUFFIX = ".shards"


@dataclass(frozen=True)
class Processes:
    """This process's place in a data-parallel run: ``index`` of ``count``, and the device it should use."""

    index: int = 0
    count: int = 1
    device: torch.device | None = None
    _state: Any = None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @property
    def distributed(self) -> bool:
        return self.count > 1

    def barrier(self) -> None:
        """Wait until every process gets here (a no-op for one process)."""
        if self._state is not None and self.count > 1:
            self._state.wait_for_everyone()

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This process's share: every ``count``-th item from ``index`` (lengths mix evenly)."""
        return list(items[self.index::self.count])


def processes() -> Processes:
    """The processes of this run, as the launcher (``accelerate launch``, ``torchrun``) set them up.

    Without a launcher (``WORLD_SIZE`` unset or 1) this is one process and
    nothing is initialised; otherwise accelerate's ``PartialState`` joins the
    process group (NCCL on GPUs, gloo on CPUs) and gives this process's device
    (``cuda:LOCAL_RANK`` on a GPU box).
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return Processes()
    import torch
    from accelerate import PartialState

    # Without cpu=True accelerate only forms a CPU process group when launched through mpirun.
    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(state.process_index, state.num_processes, state.device, state)


def model_device(procs: Processes, device: str | None = None) -> str | None:
    """The device to load the model onto: the one given, else this process's own in a parallel run."""
    if device is not None or not procs.distributed or procs.device is None:
        return device
    return str(procs.device)


# --------------------------------------------------------------------------- shard files


def shard_dir(out: str | os.PathLike[str]) -> Path:
    """Where the processes of a parallel run write their shards of ``out``."""
    out = Path(out)
    return out.with_name(out.name + SHARDS_SUFFIX)


def shard_path(out: str | os.PathLike[str], index: int, count: int) -> Path:
    return shard_dir(out) / f"rank-{index}-of-{count}.jsonl"


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def read_finished(path: Path, cls: type = Generation) -> list[Any]:
    """The complete records of a JSONL file some run may have been killed while writing.

    A last line without its newline is a torn write and is dropped, as
    :class:`~certa.records.JsonlAppender` drops it when it resumes; any other bad
    line is an error naming the file and line.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    if not data.endswith(b"\n"):
        lines = lines[:-1]  # torn last line (or an empty file)
    records = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"{path}:{lineno}: not a JSON line ({exc})") from None
        records.append(from_dict(cls, obj, where=f"{path}:{lineno}"))
    return records


def _sources(out: Path) -> list[Path]:
    """Every file that may hold finished generations for ``out``, in the order they take precedence."""
    files = [out, _partial(out)]
    root = shard_dir(out)
    if root.is_dir():
        for shard in sorted(root.glob("rank-*.jsonl")):
            files += [shard, _partial(shard)]
        files += sorted(p for p in root.glob("rank-*.jsonl.partial") if p.with_suffix("") not in files)
    return files


def collect_generations(out: Path) -> dict[str, Generation]:
    """Finished generations for ``out`` from every file a run (one process or several) left: by id, first wins."""
    found: dict[str, Generation] = {}
    for path in _sources(out):
        for gen in read_finished(path):
            found.setdefault(gen.id, gen)
    return found


# --------------------------------------------------------------------------- generation


def generate_parallel(lm: LoadedModel, examples: Sequence[Example], out: str | os.PathLike[str], *,
                      procs: Processes | None = None, progress: bool = True,
                      generate_fn: Callable[..., list[Generation]] | None = None,
                      **options: Any) -> list[Generation]:
    """:func:`certa.generation.generate` over ``examples`` into ``out``, split across the run's processes.

    With one process (and no shards left by an earlier parallel run) this is
    ``generate(..., out=out)`` followed by putting ``out`` in the dataset's order.
    With N processes, each answers its share of the questions not yet in
    ``out`` or any shard into ``OUT.shards/rank-I-of-N.jsonl`` (resumable), and
    the main process merges everything into ``out``. Returns the generations of
    ``examples`` in their order, on every process.

    ``generate_fn`` replaces ``generate`` (same signature; e.g. a remote model's).
    """
    procs = procs or processes()
    out = Path(out)
    examples = list(examples)
    run = generate_fn or generate
    _check_unique(examples)
    if not procs.distributed and not shard_dir(out).exists():
        gens = run(lm, examples, out=out, progress=progress, **options)
        _write_in_order(out, examples, collect_generations(out))
        return gens
    done = collect_generations(out)
    _check_resumable(out, [done[ex.id] for ex in examples if ex.id in done], lm, options)
    todo = [ex for ex in examples if ex.id not in done]
    procs.barrier()  # everyone has read the shards before anyone appends to them
    mine = batch_shard(lm, todo, int(options.get("batch_size") or DEFAULTS.batch_size), procs)
    run(lm, mine, out=shard_path(out, procs.index, procs.count), progress=progress and procs.is_main, **options)
    procs.barrier()
    if procs.is_main:
        _merge(out, examples)
    procs.barrier()
    by_id = {g.id: g for g in read_jsonl(out, Generation)}
    return [by_id[ex.id] for ex in examples]


def batch_shard(lm: Any, examples: Sequence[Example], batch_size: int, procs: Processes) -> list[Example]:
    """This process's share of ``examples``: whole batches of the one-process run, every N-th from ``index``.

    One process answers prompts sorted by length, longest first, in chunks of
    ``batch_size``. Handing out those very chunks (round robin, so long and
    short batches spread evenly) and keeping their order means every process
    forms the same batches the one-process run forms, so the records are the
    same to the bit, sampled answers included (they are seeded per batch). A
    model without a tokenizer (a server) gets every N-th question.
    """
    tokenizer = getattr(lm, "tokenizer", None)
    if tokenizer is None or not examples:
        return procs.shard(examples)
    prompts = [_prompt_text(lm, ex) for ex in examples]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(examples)), key=lambda i: -lengths[i])  # stable, as generation sorts
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    return [examples[i] for batch in procs.shard(batches) for i in batch]


def _prompt_text(lm: Any, example: Example) -> str:
    raw = example.meta.get(RAW_PROMPT_KEY) if example.meta else None
    return raw if isinstance(raw, str) else lm.chat_prompt(question_prompt(example))


def _check_unique(examples: Sequence[Example]) -> None:
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise InputError(f"example id {ex.id!r} appears more than once; ids must be unique")
        seen.add(ex.id)


def _check_resumable(out: Path, resumed: list[Generation], lm: Any, options: dict[str, Any]) -> None:
    """Refuse to resume from generations that lack what this run asks for (they would be kept as they are)."""
    missing = []
    if options.get("hidden_states") and any(g.hidden_state is None for g in resumed):
        missing.append("hidden states")
    if options.get("token_stats") and any("token_stats" not in g.meta for g in resumed):
        missing.append("token statistics")
    samples = int(options.get("samples") or 0)
    if any(len(g.samples) < samples for g in resumed):
        missing.append(f"{samples} samples")
    hooks = options.get("hooks")
    if hooks is None and hasattr(lm, "method"):
        hooks = model_hooks(lm)
    missing += [f"hook {h.name!r}" for h in hooks or () if any(h.name not in g.confidence for g in resumed)]
    if missing:
        raise InputError(f"{out}: earlier generations lack {', '.join(missing)}; "
                         f"delete the file (and its .partial and {shard_dir(out).name}) or write to a new path")


def _merge(out: Path, examples: Sequence[Example]) -> None:
    """Write every finished generation into ``out`` in the dataset's order; remove the shards."""
    found = collect_generations(out)
    missing = [ex.id for ex in examples if ex.id not in found]
    if missing:
        raise CertaError(f"{out}: {len(missing)} questions have no answer in any shard (e.g. {missing[0]!r}); "
                         "a process failed: re-run the same command to resume")
    _write_in_order(out, examples, found)
    _partial(out).unlink(missing_ok=True)
    shutil.rmtree(shard_dir(out), ignore_errors=True)


def _write_in_order(out: Path, examples: Sequence[Example], found: dict[str, Any]) -> None:
    """``out`` rewritten atomically: the examples' records in their order, then any others it held, as they were."""
    if not out.exists() and not found:
        return
    ordered = [found[ex.id] for ex in examples if ex.id in found]
    wanted = {ex.id for ex in examples}
    ordered += [g for gid, g in found.items() if gid not in wanted]
    write_jsonl(out, ordered)


# --------------------------------------------------------------------------- scoring


def score_parallel(score: Callable[[Sequence[Record]], dict[str, Sequence[float]]], records: Sequence[Record],
                   out: str | os.PathLike[str], methods: Sequence[str], *, procs: Processes | None = None) -> Path:
    """Score ``records`` into ``out``: each process its share (``score(shard) -> {method: scores}``), merged in order.

    Each process writes its shard's scores atomically to ``OUT.shards/rank-I-of-N.jsonl``
    once they are all computed; a re-run with the same processes keeps a shard
    that holds exactly its records and methods (resume per shard). One process
    writes ``out`` directly.
    """
    procs = procs or processes()
    out = Path(out)
    if not procs.distributed:
        scores = score(records)
        return write_scores(out, records, scores)
    mine = procs.shard(records)
    path = shard_path(out, procs.index, procs.count)
    if not _scored(path, mine, methods):
        if mine:
            write_scores(path, mine, score(mine))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_jsonl(path, [])
    procs.barrier()
    if procs.is_main:
        columns: dict[str, list[float]] = {}
        by_id: dict[str, dict[str, float]] = {}
        for index in range(procs.count):
            shard = shard_path(out, index, procs.count)
            if shard.stat().st_size == 0:
                continue
            table = read_scores(shard)
            for i, answer_id in enumerate(table.ids):
                by_id[answer_id] = {m: float(v[i]) for m, v in table.scores.items()}
        for record in records:
            for method, value in by_id[record.id].items():
                columns.setdefault(method, []).append(value)
        write_scores(out, records, columns)
        shutil.rmtree(shard_dir(out), ignore_errors=True)
    procs.barrier()
    return out


def _scored(path: Path, records: Sequence[Record], methods: Sequence[str]) -> bool:
    """Whether a shard file from an earlier run already holds exactly these records' scores."""
    if not path.is_file():
        return False
    if not records:
        return path.stat().st_size == 0
    try:
        table = read_scores(path)
    except InputError:
        return False
    return table.ids == [r.id for r in records] and set(table.scores) == set(methods)

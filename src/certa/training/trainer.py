"""One training loop for every trainable confidence method.

An :class:`~certa.training.objective.Objective` says what to add to the model,
how records become batches and what the loss is; this module owns the rest:
the PEFT adapter (LoRA plus trainable rows for added tokens), AdamW with a
separate learning rate for those rows, ``accelerate`` (so ``accelerate launch``
with multi-GPU, FSDP or DeepSpeed configs works unchanged), seeded shuffling,
atomic checkpoints, exact resume, a per-step log and the saved artifact.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import InputError, MissingDependencyError
from ..models.adapters import quiet_peft_wrapping
from ..models.artifact import save_artifact
from ..recalibration import IDENTITY, choose_map, fit_map
from ..records import atomic_write_lines
from ..textfiles import parse_json_object
from .config import ALL_LINEAR, TrainConfig
from .objective import Objective
from .restarts import RESTARTS_DIR
from .validation import EarlyStopping, split_validation, validation_confidences

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from ..models import LoadedModel
    from ..records import Record

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
TRAIN_LOG = "train_log.jsonl"
KEEP_CHECKPOINTS = 2
#: Settings that may change between a checkpoint and its resume without changing the training.
_RESUMABLE_CHANGES = frozenset({"save_every"})
_ADAPTER_SUBDIR = "adapter"


def train(objective: Objective, lm: LoadedModel, records: Sequence[Record], config: TrainConfig,
          out_dir: str | os.PathLike[str], *, resume: bool = False, progress: bool = True,
          extra: dict[str, Any] | None = None) -> Path:
    """Train ``objective`` on graded ``records`` and save a loadable artifact in ``out_dir``.

    ``lm`` is modified in place (tokens added, adapter attached); load the
    returned artifact with :func:`certa.models.load_model` to use the result.
    With ``resume=True`` training continues from the newest checkpoint in
    ``out_dir/checkpoints`` and ends in the same state as an uninterrupted run.
    ``extra`` is merged into the artifact's ``certa.json`` (e.g. metrics).
    """
    out = Path(out_dir)
    if not records:
        raise InputError("train: no training records given")
    from accelerate.utils import set_seed

    set_seed(config.seed)
    objective.prepare(lm, config)
    train_records, held_out = split_validation(records, config)
    items = objective.build_items(lm, train_records, config)
    if not items:
        raise InputError("train: the objective built no training items from the records")
    validation = objective.validation_items(lm, held_out, config) if held_out else []
    attach_adapter(lm, config, objective.trainable_token_ids(lm))

    accelerator = _make_accelerator(lm, config)
    optimizer = build_optimizer(lm.model, config)
    loader = _make_loader(objective, lm, items, config)
    # Under DDP each process gets 1/N of the batches (accelerate evens them out): steps are counted on that
    # share. All four are prepared in one call: DeepSpeed reads the batch size off the loader.
    total_steps = _total_steps(math.ceil(len(loader) / accelerator.num_processes), config)
    scheduler = _make_scheduler(optimizer, total_steps * accelerator.num_processes)
    lm.model, optimizer, loader, scheduler = accelerator.prepare(lm.model, optimizer, loader, scheduler)
    _register_adapter_hooks(accelerator)

    stopping = EarlyStopping(config.patience) if validation else None
    start_step = _resume(accelerator, out, config) if resume else 0
    if stopping is not None and start_step:
        stopping = EarlyStopping.load(checkpoint_dirs(out)[-1], config.patience)
    loop = _Loop(objective, lm, config, accelerator, optimizer, loader, scheduler, out, validation, stopping)
    steps = loop.run(start_step, total_steps, progress)

    accelerator.wait_for_everyone()
    lm.model = accelerator.unwrap_model(lm.model)
    summary = {"data": data_summary(records, len(items)), "steps": steps, **(extra or {})}
    if stopping is not None:
        stopping.restore_best(lm.model)
        accuracy = float(np.mean([float(r.correct) for r in records]))
        summary["validation"] = _validation_summary(objective, lm, validation, held_out, config, stopping, accuracy)
        summary["recalibration"] = summary["validation"].pop("recalibration")
    if accelerator.is_main_process:
        save_artifact(lm, objective.method, objective.artifact_info(), config.model_dump(), out, summary)
    accelerator.wait_for_everyone()
    return out


def _validation_summary(objective: Objective, lm: LoadedModel, items: Sequence[dict[str, Any]],
                        records: Sequence[Record], config: TrainConfig, stopping: EarlyStopping,
                        accuracy: float) -> dict[str, Any]:
    """What the held-out answers decided (the stopping step, their Brier scores) and the fitted recalibration;
    ``accuracy`` (of every training answer) is the constant a read-out without signal falls back to."""
    lm.model.eval()
    raw = validation_confidences(objective, lm, items, config)
    correct = np.array([float(r.correct) for r in records])
    candidates: dict[str, float] = {}
    if config.recalibrate == "auto":
        recalibration, candidates = choose_map(raw, correct, seed=config.seed, base_rate=accuracy)
        if recalibration.kind == "constant":
            log.warning("%s: on the %d held-out answers the trained read-out did no better than a constant, so "
                        "the artifact answers every question with the training accuracy, %.3f (no signal to learn "
                        "from these answers)", objective.method, len(records), recalibration.params["p"])
    elif config.recalibrate == "none":
        recalibration = IDENTITY
    else:
        recalibration = fit_map(raw, correct, config.recalibrate, strength=1.0, nonnegative=True)
    recalibrated = recalibration(raw)
    return {"answers": len(records), "accuracy": float(correct.mean()), "best_step": stopping.best_step,
            "history": stopping.history or [], "brier": float(np.mean((raw - correct) ** 2)),
            "brier_recalibrated": float(np.mean((recalibrated - correct) ** 2)),
            "recalibration_brier_out_of_fold": candidates, "recalibration": recalibration.to_dict()}


# ---------------------------------------------------------------- adapter and optimiser


def embedding_module_names(model: nn.Module) -> list[str]:
    """Leaf names of the input embedding and, when untied, the output embedding (e.g. ``embed_tokens``)."""
    inp, outp = model.get_input_embeddings(), model.get_output_embeddings()
    names = [_leaf_name(model, inp)]
    if outp is not None and outp.weight is not inp.weight:
        names.append(_leaf_name(model, outp))
    return names


def _leaf_name(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name.rsplit(".", 1)[-1]
    raise ValueError("embedding module not found in the model")  # pragma: no cover - HF models always have one


def attach_adapter(lm: LoadedModel, config: TrainConfig, token_ids: Sequence[int]) -> None:
    """Wrap ``lm.model`` in a PEFT model: LoRA on ``config.target_modules`` plus trainable token rows.

    Only the rows in ``token_ids`` train (with tied embeddings one row serves
    both the embedding and the LM head); every original row stays
    bit-identical. An empty ``target_modules`` trains the token rows alone.
    """
    from peft import LoraConfig, TrainableTokensConfig, get_peft_model

    token_ids = sorted(set(int(t) for t in token_ids))
    rows = {name: token_ids for name in embedding_module_names(lm.model)} if token_ids else None
    if config.target_modules:
        peft_config = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=ALL_LINEAR if config.target_modules == [ALL_LINEAR] else list(config.target_modules),
            trainable_token_indices=rows, task_type="CAUSAL_LM",
        )
    elif rows:
        peft_config = TrainableTokensConfig(target_modules=list(rows), token_indices=token_ids)
    else:
        raise InputError("train: nothing to train (no target_modules and no trainable tokens)")
    with quiet_peft_wrapping():
        lm.model = get_peft_model(lm.model, peft_config)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with two groups: LoRA weights at ``lr``, added token rows at ``token_lr``."""
    token_rows, others = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (token_rows if "trainable_tokens_delta" in name else others).append(param)
    groups = [{"params": others, "lr": config.lr}, {"params": token_rows, "lr": config.token_learning_rate()}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=config.weight_decay)


# ---------------------------------------------------------------- accelerate plumbing


def _make_accelerator(lm: LoadedModel, config: TrainConfig) -> Accelerator:
    try:
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration
    except ImportError as exc:  # pragma: no cover - accelerate is a core dependency
        raise MissingDependencyError("training needs accelerate: pip install 'accelerate>=1.15'") from exc
    on_cpu = lm.device.type == "cpu"
    if lm.device.type == "cuda" and lm.device.index is not None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # One process: accelerate places the model on the *current* CUDA device, cuda:0 unless told;
        # a model loaded on cuda:1 would be moved there. Under `accelerate launch` it sets each rank's own.
        torch.cuda.set_device(lm.device)
    bf16 = not on_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return Accelerator(
        cpu=on_cpu,
        mixed_precision="bf16" if bf16 else "no",
        gradient_accumulation_steps=config.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def _make_loader(objective: Objective, lm: LoadedModel, items: list[dict[str, Any]],
                 config: TrainConfig) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(config.seed)
    return torch.utils.data.DataLoader(
        items, batch_size=config.batch_size, shuffle=True, generator=generator,
        collate_fn=lambda batch: objective.collate(lm, batch),
    )


def _total_steps(batches_per_epoch: int, config: TrainConfig) -> int:
    steps = math.ceil(config.epochs * math.ceil(batches_per_epoch / config.grad_accum))
    return min(steps, config.max_steps) if config.max_steps else steps


def _make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    # Linear decay to zero; accelerate steps it once per process, hence the caller's scaling.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / max(1, total_steps)))


def _register_adapter_hooks(accelerator: Accelerator) -> None:
    """Checkpoint only the adapter (a few MB), not the whole base model, in ``save_state``."""

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        # Every process runs the hook; under DDP the replicas are identical, so the main one writes.
        if accelerator.is_main_process:
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(Path(output_dir) / _ADAPTER_SUBDIR,
                                                                save_embedding_layers=False)
        weights.clear()  # stops accelerate from also writing the full model

    def load_hook(models: list, input_dir: str) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        while models:
            model = accelerator.unwrap_model(models.pop())
            state = load_file(str(Path(input_dir) / _ADAPTER_SUBDIR / "adapter_model.safetensors"))
            set_peft_model_state_dict(model, state)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# ---------------------------------------------------------------- the loop


class _Loop:
    """The optimisation loop: steps, logging, checkpoints and (with held-out items) early stopping."""

    def __init__(self, objective: Objective, lm: LoadedModel, config: TrainConfig, accelerator: Accelerator,
                 optimizer: torch.optim.Optimizer, loader: Any, scheduler: Any, out: Path,
                 validation: Sequence[dict[str, Any]], stopping: EarlyStopping | None):
        self.objective, self.lm, self.config, self.accelerator = objective, lm, config, accelerator
        self.optimizer, self.loader, self.scheduler, self.out = optimizer, loader, scheduler, out
        self.validation, self.stopping = validation, stopping
        self.steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
        self.eval_every = config.eval_every or max(1, self.steps_per_epoch // 2)

    def run(self, start_step: int, total_steps: int, progress: bool) -> int:
        """Train from ``start_step``; return the step training ended at."""
        from tqdm.auto import tqdm

        config, accelerator, lm = self.config, self.accelerator, self.lm
        step = start_step
        bar = tqdm(total=total_steps, initial=start_step, desc=f"train {self.objective.method}",
                   disable=not (progress and accelerator.is_main_process))
        lm.model.train()
        if self.stopping is not None and start_step == 0 and not self.stopping.history:
            # The starting state is a candidate too (GrACE's starts at the base rate): where the answers
            # carry no signal training only fits noise, and the start is what should be kept.
            self._validate(0)
        last = time.perf_counter()
        # A run killed between the stopping step's checkpoint and its artifact resumes already stopped.
        stop = self.stopping is not None and self.stopping.stopped
        while step < total_steps and not stop:
            # accelerate closes a partial accumulation at the end of each epoch, so a step
            # number maps to (epoch, batches already consumed in it) without ambiguity.
            epoch, steps_in_epoch = divmod(step, self.steps_per_epoch)
            self.loader.set_epoch(epoch)
            skip = steps_in_epoch * config.grad_accum
            batches = accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
            for batch in batches:
                with accelerator.accumulate(lm.model), accelerator.autocast():
                    loss, scalars = self.objective.loss(lm, batch, config)
                    accelerator.backward(loss)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                step += 1
                # The logged loss is the mean over processes: under DDP, the loss of the global batch.
                loss = accelerator.reduce(loss.detach(), reduction="mean")
                now = time.perf_counter()
                scalars = {**scalars, "seconds": now - last}
                if self.stopping is not None and (step % self.eval_every == 0 or step == total_steps):
                    scalars["val_brier"], stop = self._validate(step)
                _log_step(self.out, accelerator, step, loss, self.scheduler, scalars)
                last = time.perf_counter()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if stop or step % config.save_every == 0 or step == total_steps:
                    save_checkpoint(accelerator, self.out, step, config, self.stopping)
                if stop or step >= total_steps:
                    break
        bar.close()
        lm.model.eval()
        return step

    def _validate(self, step: int) -> tuple[float, bool]:
        """The held-out Brier score now; whether early stopping says to stop."""
        model = self.lm.model
        model.eval()
        records_correct = np.array([it["correct"] for it in self.validation], dtype=float)
        conf = validation_confidences(self.objective, self.lm, self.validation, self.config)
        model.train()
        score = float(np.mean((conf - records_correct) ** 2))
        return score, self.stopping.update(step, score, self.accelerator.unwrap_model(model))


def _log_step(out: Path, accelerator: Accelerator, step: int, loss: torch.Tensor, scheduler: Any,
              scalars: dict[str, float]) -> None:
    if not accelerator.is_main_process:
        return
    row = {"step": step, "loss": float(loss.item()), "lr": scheduler.get_last_lr()[0], **scalars}
    out.mkdir(parents=True, exist_ok=True)
    with (out / TRAIN_LOG).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------- checkpoints


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints in ``out/checkpoints``, oldest first."""
    root = out / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, config: TrainConfig,
                    stopping: EarlyStopping | None = None) -> Path:
    """Write ``out/checkpoints/step-N`` atomically (temp dir, then rename) and keep the last two."""
    root = out / CHECKPOINT_DIR
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        state = {"step": step, "config": json.loads(config.model_dump_json())}
        (tmp / "step.json").write_text(json.dumps(state), encoding="utf-8")
        if stopping is not None:
            stopping.save(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(out)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _resume(accelerator: Accelerator, out: Path, config: TrainConfig) -> int:
    """Load the newest checkpoint; return its step (0 when there is none).

    A checkpoint written under another training config is refused with an
    error naming the first setting that differs: resuming it would silently
    continue a different training.
    """
    found = checkpoint_dirs(out)
    if not found:
        log.info("no checkpoint in %s; starting from scratch", out / CHECKPOINT_DIR)
        return 0
    latest = found[-1]
    info = json.loads((latest / "step.json").read_text(encoding="utf-8"))
    saved = info.get("config")
    changed = config.differences(saved, ignore=_RESUMABLE_CHANGES) if saved is not None else []
    if changed:
        key = changed[0]
        raise InputError(f"{latest}: checkpoint was trained with {key}={saved.get(key)!r}, not "
                         f"{getattr(config, key, None)!r}; delete {out / CHECKPOINT_DIR} or train into a new directory")
    accelerator.load_state(str(latest))
    step = int(info["step"])
    if accelerator.is_main_process:
        _truncate_log(out / TRAIN_LOG, step)
    log.info("resumed from %s", latest)
    return step


def _log_rows(path: Path) -> list[dict[str, Any]]:
    """The training log's rows. Each is written with its newline, so a last line without one was cut short
    by a kill: it is dropped (its step is redone on resume). Any other bad line names the file and line."""
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        log.warning("%s: dropped a last line cut short (the run was killed while writing it)", path)
    lines = complete.decode("utf-8", errors="replace").splitlines()
    return [parse_json_object(line, f"{path}:{n}") for n, line in enumerate(lines, 1) if line.strip()]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    kept = [row for row in _log_rows(path) if row.get("step", 0) <= step]
    atomic_write_lines(path, (json.dumps(row) for row in kept))


def training_seconds(out_dir: str | os.PathLike[str]) -> float:
    """Wall time the training in ``out_dir`` took, summed over its logged steps (resumes included) and over
    its restarts' runs when it has some."""
    runs = sorted((Path(out_dir) / RESTARTS_DIR).glob("seed-*"))
    if runs:
        return float(sum(training_seconds(run) for run in runs))
    path = Path(out_dir) / TRAIN_LOG
    if not path.exists():
        return float("nan")
    return float(sum(row.get("seconds", float("nan")) for row in _log_rows(path)))


def data_summary(records: Sequence[Record], n_items: int) -> dict[str, Any]:
    """What the artifact was trained on: counts, accuracy and sources."""
    correct = [float(r.correct) for r in records]
    sources = sorted({str(r.meta.get("source", "")) for r in records} - {""})
    return {"records": len(records), "items": n_items, "accuracy": sum(correct) / len(correct),
            "models": sorted({r.model for r in records if r.model}), "sources": sources}

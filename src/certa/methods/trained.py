"""The base of methods that are trained into an artifact (LoRA + a read-out) before they can score.

A trained method declares everything a caller needs, so no list of trained
methods is kept anywhere else: its config class (``config_class``, TRL style),
its training objective (``make_objective``), what training reads from the
records (``fit_needs``) and how its confidence is read while decoding
(``generation_hooks``). ``Method.train(lm, records, config, out_dir)`` is the
one way to train any of them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import ValidationError

from ..errors import InputError, validation_error
from ..models.artifact import ARTIFACT_FILE
from ..recalibration import CalibrationMap
from ..training.config import TrainConfig
from ..training.restarts import keep_best, restart_configs, restart_dir, train_runs
from ..training.trainer import train
from .base import ModelReadoutMethod, Needs

if TYPE_CHECKING:
    from ..models import LoadedModel
    from ..records import Record
    from ..training.objective import Objective


class TrainedMethod(ModelReadoutMethod):
    """A confidence method whose model is trained on graded answers of the base model (an artifact).

    ``raw=True`` reports the read-out before the recalibration fitted at the end of
    training (:mod:`certa.recalibration`); by default it is applied.
    """

    needs: ClassVar[Needs] = Needs.MODEL | Needs.TRAINING
    config_class: ClassVar[type[TrainConfig]] = TrainConfig

    def __init__(self, model: LoadedModel | None = None, *, raw: bool = False, **options: Any):
        super().__init__(model, raw=raw, **options)
        self.raw = raw

    def stored_confidences(self, records: Sequence[Record]) -> np.ndarray:
        """Confidences generation already read with this very artifact (its hook stored them
        recalibrated), NaN for the rest; all NaN for the raw read-out."""
        artifact_id = self.model.artifact_id if self.model is not None else None
        return np.array([np.nan if self.raw else _read_by(r, self.name, artifact_id) for r in records], dtype=float)

    def recalibrated(self, confidences: np.ndarray) -> np.ndarray:
        """The artifact's final recalibration applied to raw read-outs (unless ``raw``)."""
        stored = (self.model.artifact or {}).get("recalibration") if self.model is not None else None
        if self.raw or not stored:
            return np.asarray(confidences, dtype=float)
        return CalibrationMap.from_dict(stored)(confidences)

    @classmethod
    def make_objective(cls, config: TrainConfig) -> Objective:
        """The training objective for ``config`` (an instance of ``config_class``)."""
        raise NotImplementedError

    @classmethod
    def check_training_records(cls, records: Sequence[Record]) -> None:
        """Fail early, naming the record, when the records lack what training reads."""

    @classmethod
    def resolve_config(cls, config: TrainConfig | Mapping[str, Any] | None, where: str = "config") -> TrainConfig:
        """``config`` as this method's config class: a mapping is validated (errors name the field)."""
        if config is None:
            return cls.config_class()
        if isinstance(config, cls.config_class):
            return config
        values = config.model_dump(exclude_unset=True) if isinstance(config, TrainConfig) else dict(config)
        try:
            return cls.config_class.model_validate(values)
        except ValidationError as exc:
            raise validation_error(exc, where) from None

    @classmethod
    def train(cls, lm: LoadedModel, records: Sequence[Record],
              config: TrainConfig | Mapping[str, Any] | None = None,
              out_dir: str | os.PathLike[str] | None = None, *, resume: bool = False, in_place: bool = False,
              progress: bool = True) -> Path:
        """Train on graded records of the base model's own answers; save and return the artifact directory.

        ``lm`` must be a base model without adapters. By default a copy of its
        weights is trained and ``lm`` is left as it was; ``in_place=True`` trains
        ``lm`` itself (saves the memory of a copy on large models; ``lm`` then
        carries the new adapter). ``resume=True`` continues from the newest
        checkpoint in ``out_dir``. Load the result with ``certa.load_model(out_dir)``.

        With ``config.restarts > 1`` or ``config.stall_retries`` (and held-out
        answers), each run trains its own copy (the last possible one ``lm`` itself
        when ``in_place``) into ``out_dir/restarts/seed-N``, and the run with the
        lowest held-out Brier score becomes the artifact
        (:mod:`certa.training.restarts`); resuming skips the runs already finished.
        """
        resolved = cls.resolve_config(config)
        if lm.has_adapters:
            raise InputError(f"{cls.name}: model {lm.name!r} already carries adapters; train a freshly loaded base")
        if not records:
            raise InputError(f"{cls.name}: no training records given")
        cls.check_training_records(records)
        out = Path(out_dir) if out_dir is not None else Path(f"{cls.name}-artifact")
        configs = restart_configs(resolved, records)
        if len(configs) > 1:
            def train_run(k: int, run_config: TrainConfig) -> Path:
                run = restart_dir(out, run_config)
                if not (resume and _finished_as(run, run_config)):
                    cls.train(lm, records, run_config, run, resume=resume,
                              in_place=in_place and k == len(configs) - 1, progress=progress)
                return run
            return keep_best(train_runs(resolved, configs, train_run), out)
        target = lm if in_place else dataclasses.replace(
            lm, model=copy.deepcopy(lm.model), tokenizer=copy.deepcopy(lm.tokenizer), adapters={})
        return train(cls.make_objective(resolved), target, records, resolved, out, resume=resume, progress=progress)


def _finished_as(run: Path, config: TrainConfig) -> bool:
    """Whether ``run`` holds a finished training of exactly ``config``."""
    file = run / ARTIFACT_FILE
    if not file.is_file():
        return False
    stored = json.loads(file.read_text(encoding="utf-8")).get("train_config")
    return isinstance(stored, dict) and not config.differences(stored)


def _read_by(record: Record, name: str, artifact_id: str | None) -> float:
    """A confidence the generation stored for ``name``, if the same artifact read it; else NaN."""
    source = (record.meta.get("confidence_source") or {}).get(name)
    if name in record.confidence and artifact_id is not None and source == artifact_id:
        return float(record.confidence[name])
    return float("nan")

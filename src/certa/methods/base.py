"""The confidence-method interface and its registry.

A method is a small object: ``name``, what it ``needs`` (so callers know its
cost before running it), an optional ``fit(records)`` and
``score(records) -> np.ndarray`` of confidences in [0, 1]. Adding a method is
one file with ``@register("name")``.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from ..errors import CertaError, InputError, UnknownNameError
from ..records import Record

if TYPE_CHECKING:
    from ..models import LoadedModel


class Needs(enum.Flag):
    """What a method reads. Lets the pipeline generate exactly what is needed, once."""

    NOTHING = 0
    LOGPROBS = enum.auto()        # per-token log-probs / entropies from the generation
    HIDDEN_STATES = enum.auto()   # last-layer hidden state at the end of the response
    SAMPLES = enum.auto()         # K extra sampled responses
    MODEL = enum.auto()           # extra forward passes through a model at scoring time
    FIT = enum.auto()             # must be fitted on graded training records first


class ConfidenceMethod:
    """Base class for confidence methods.

    Subclasses set ``name`` (done by ``@register``), ``needs``, ``cost`` (one
    line: the extra passes or samples it costs) and implement ``score``; fitted
    methods also implement ``fit``. Methods that need a model receive it as
    ``model=`` at construction.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[Needs] = Needs.NOTHING
    cost: ClassVar[str] = "free"

    def __init__(self, model: LoadedModel | None = None, **options: Any):
        if Needs.MODEL in self.needs and model is None:
            raise CertaError(f"method {self.name!r} needs a model: pass model=certa.load_model(...)")
        self.model = model
        self.options = options
        self.fitted = False

    @property
    def requires_fit(self) -> bool:
        return Needs.FIT in self.needs

    def fit(self, records: Sequence[Record]) -> ConfidenceMethod:
        """Learn from graded records (a no-op for training-free methods)."""
        self.fitted = True
        return self

    def score(self, records: Sequence[Record]) -> np.ndarray:
        """Return one confidence in [0, 1] per record."""
        raise NotImplementedError

    def __call__(self, records: Sequence[Record]) -> np.ndarray:
        if self.requires_fit and not self.fitted:
            raise CertaError(f"method {self.name!r} must be fitted on graded training records before scoring")
        if not records:
            raise InputError(f"method {self.name!r}: no records to score")
        return check_scores(self.score(records), len(records), self.name)

    @classmethod
    def describe(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else cls.name


class ModelReadoutMethod(ConfidenceMethod):
    """A method that reads its confidence from extra batched forward passes through ``model``."""

    needs: ClassVar[Needs] = Needs.MODEL

    def __init__(self, model: LoadedModel | None = None, *, batch_size: int = 16, progress: bool = False,
                 **options: Any):
        super().__init__(model, batch_size=batch_size, progress=progress, **options)
        if batch_size < 1:
            raise InputError(f"method {self.name!r}: batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.progress = progress


def check_scores(scores: Any, n: int, name: str) -> np.ndarray:
    """Validate a method's output: shape (n,), finite, in [0, 1]."""
    arr = np.asarray(scores, dtype=float).reshape(-1)
    if arr.shape != (n,):
        raise CertaError(f"method {name!r} returned {arr.shape[0]} scores for {n} records")
    if not np.all(np.isfinite(arr)):
        raise CertaError(f"method {name!r} returned a NaN or infinite confidence")
    return np.clip(arr, 0.0, 1.0)


M = TypeVar("M", bound=type[ConfidenceMethod])
_REGISTRY: dict[str, type[ConfidenceMethod]] = {}

# Modules imported on first registry lookup, so ``@register`` in them runs.
_BUILTIN_MODULES = (
    "base_rate", "likelihood", "entropy", "verbalized", "ptrue", "consistency", "probe", "apricot",
    "calibration", "grace", "conftuner", "choice_probability",
)


def register(name: str) -> Callable[[M], M]:
    """Class decorator: make a method available as ``get_method(name)``."""

    def wrap(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"confidence method {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{module}":
                raise


def method_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[ConfidenceMethod]:
    _load_builtins()
    if name not in _REGISTRY:
        raise UnknownNameError("method", name, _REGISTRY)
    return _REGISTRY[name]


def get_method(name: str, model: LoadedModel | None = None, **options: Any) -> ConfidenceMethod:
    """Instantiate a registered confidence method by name.

    ``"base+calibrator"`` (e.g. ``"sequence_likelihood+platt"``) wraps a method
    in a post-hoc calibrator fitted on graded records.
    """
    if "+" in name:
        base, calibrator = name.rsplit("+", 1)
        method_class(base)  # fail early, naming the unknown part
        return _construct(method_class(calibrator), name, model=model, base=base, **options)
    return _construct(method_class(name), name, model=model, **options)


def _construct(cls: type[ConfidenceMethod], name: str, **kwargs: Any) -> ConfidenceMethod:
    import inspect

    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise InputError(f"method {name!r}: {exc}") from None
    return cls(**kwargs)

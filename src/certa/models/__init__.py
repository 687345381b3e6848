"""Models: loading (built-in, GGUF, local, Hub, trained artifacts), views with named adapters, batch plumbing."""

from .adapters import adapter_state, is_peft_model, unwrap
from .artifact import (
    ARTIFACT_FILE,
    artifact_id,
    attach_artifacts,
    is_artifact,
    load_artifact,
    read_artifact_info,
)
from .loaded import LoadedModel, answer_stop_strings, end_token_ids, render_chat
from .loading import load_model
from .sources import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    builtin_model_names,
    cache_dir,
    load_base_model,
    resolve_device,
)

__all__ = [
    "ARTIFACT_FILE", "BUILTIN_MODELS", "DEFAULT_MODEL", "LoadedModel", "adapter_state", "answer_stop_strings",
    "artifact_id", "attach_artifacts", "builtin_model_names", "cache_dir", "end_token_ids", "is_artifact",
    "is_peft_model", "load_artifact", "load_base_model", "load_model", "read_artifact_info", "render_chat",
    "resolve_device", "unwrap",
]

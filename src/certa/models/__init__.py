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
from .bundled import BUNDLED_ARTIFACTS, available_bundled_artifacts, bundled_artifact_path
from .card import add_evaluation_to_card, model_card, read_card_metadata
from .loaded import LoadedModel, answer_stop_strings, end_token_ids, render_chat
from .loading import load_model
from .sources import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    builtin_model_names,
    cache_dir,
    load_base_model,
    load_policy,
    resolve_device,
)

__all__ = [
    "ARTIFACT_FILE", "BUILTIN_MODELS", "BUNDLED_ARTIFACTS", "DEFAULT_MODEL", "LoadedModel",
    "add_evaluation_to_card", "adapter_state", "answer_stop_strings", "artifact_id", "attach_artifacts",
    "available_bundled_artifacts", "builtin_model_names", "bundled_artifact_path", "cache_dir",
    "end_token_ids", "is_artifact", "is_peft_model", "load_artifact", "load_base_model", "load_model",
    "load_policy", "model_card", "read_artifact_info", "read_card_metadata", "render_chat",
    "resolve_device", "unwrap",
]

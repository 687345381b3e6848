"""A GrACE artifact as a standard Hugging Face model directory that vLLM, SGLang and transformers load as is.

vLLM serves LoRA adapters but cannot add vocabulary through them; it does
return the log-prob of a chosen token id. So ``certa export ARTIFACT OUT
--format merged`` puts the ``<CNF>`` row into the base weights (embedding and,
when untied, LM head) and writes, by the artifact's read-out mode:

==============================  ==================================================  ===========================
artifact                        ``OUT`` holds                                       the confidence, exactly
==============================  ==================================================  ===========================
``mode: full``                  base + ``<CNF>`` row + LoRA merged (answers         P(<CNF>) after prompt +
                                and read-out both run the adapter)                  answer, one forward
``readout: free``               base + ``<CNF>`` row (there is no LoRA)             P(<CNF>) after prompt +
                                                                                    answer minus its last token
``mode: suffix`` (default)      base + ``<CNF>`` row, unchanged answers, and        prompt + answer[:-1] through
                                ``readout-lora/``: a plain LoRA adapter on ``OUT``  ``OUT``, then the last answer
                                                                                    token with the LoRA on
==============================  ==================================================  ===========================

In suffix mode the adapter is trained to run for the read-out step only, over
the base model's cache of the answer: merging it would change the answers, so
the base stays unmerged and the LoRA stays a LoRA. transformers + peft compute
that read-out exactly (the cache from the base, the last step with the adapter
enabled). An engine that cannot switch an adapter on within a sequence —
vLLM's multi-LoRA serving runs a request's adapter over the whole prompt —
reads P(<CNF>) with the LoRA over prompt and answer alike: an approximation,
which ``benchmarks/vllm_check.sh`` measures against the exact read-out.

Every ``OUT`` also holds ``certa.json`` (``export`` section): the token and its
id, the ids to suppress in answers, where the read-out happens, which adapter
runs, and the artifact's fitted recalibration (apply it to the raw P(<CNF>)).
Answers must be generated with ``<CNF>`` suppressed (certa does so; in vLLM:
``logit_bias={id: -100}``), as certa's own generation does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ...errors import InputError
from ...models.adapters import quiet_peft_wrapping, unwrap
from ...models.artifact import ARTIFACT_FILE, artifact_id, is_export, load_artifact, read_artifact_info
from ...versions import certa_version
from .readout import CNF_TOKEN, cnf_token_id

__all__ = ["EXPORT_FORMAT", "READOUT_LORA", "export_grace", "export_spec", "is_export"]

EXPORT_FORMAT = 1
READOUT_LORA = "readout-lora"
FORMATS = ("merged",)


def export_grace(artifact: str | os.PathLike[str], out: str | os.PathLike[str], *, fmt: str = "merged",
                 overwrite: bool = False) -> Path:
    """Write ``artifact`` (a trained GrACE artifact) to ``out`` as a standard HF model directory; return ``out``.

    See the module docstring for what each read-out mode exports.
    """
    if fmt not in FORMATS:
        raise InputError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    source = Path(artifact)
    info = read_artifact_info(source)
    if info["method"] != "grace":
        raise InputError(f"{source}: a {info['method']!r} artifact; --format merged exports GrACE artifacts "
                         "(ConfTuner reads a verbal confidence: serve its base with the LoRA, e.g. vLLM --lora-modules)")
    out = Path(out)
    here, there = source.resolve(), out.resolve()
    if there == here or here in there.parents or there in here.parents:
        raise InputError(f"{out}: the export would replace or sit inside the artifact {source}; choose another "
                         "directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} exists and is not empty; choose a new directory or pass --overwrite")
    # An existing OUT is replaced only once the new export is whole (below): a failure keeps it.
    method_info = info.get("method_info", {})
    mode, readout = method_info.get("mode", "suffix"), method_info.get("readout", "step")
    lm = load_artifact(source, device="cpu", dtype=torch.float32)
    peft_model = unwrap(lm.model)
    cnf = cnf_token_id(lm.tokenizer)
    tmp = out.with_name(f".{out.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lora = None
    if mode == "full" or readout == "free":
        merged = peft_model.merge_and_unload()
    else:
        lora = _lora_part(peft_model, lm.adapter)
        _merge_token_rows(peft_model)
        merged = peft_model.unload()
    merged.save_pretrained(tmp)
    lm.tokenizer.save_pretrained(tmp)
    if lora is not None:
        _save_lora(merged, *lora, tmp / READOUT_LORA)
    spec = export_spec(info, cnf, mode, readout, artifact_id(source), lora_dir=READOUT_LORA if lora else None)
    (tmp / ARTIFACT_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def export_spec(info: dict[str, Any], cnf: int, mode: str, readout: str, source_id: str,
                lora_dir: str | None) -> dict[str, Any]:
    """``certa.json`` of an exported model: how to read the confidence, in words and in fields."""
    if readout == "free":
        feed, how = "prompt+answer[:-1]", ("run prompt + answer without its last token; c = softmax(logits at "
                                           "the last position)[token_id] (the state that predicted the answer's end)")
        adapter = None
    elif lora_dir is None:
        feed, how = "prompt+answer", ("run prompt + answer (its end-of-turn token included when it ended); "
                                      "c = softmax(logits at the last position)[token_id]")
        adapter = None
    else:
        feed = "prompt+answer"
        how = (f"run prompt + answer[:-1] through this model (adapter off) and keep its KV cache; feed the "
               f"answer's last token with the LoRA in {lora_dir}/ enabled; c = softmax(logits there)[token_id]. "
               "An engine that runs the LoRA over the whole sequence (vLLM multi-LoRA) reads an approximation")
        adapter = {"path": lora_dir, "runs_on": "last answer token only"}
    return {
        "export": {"format": EXPORT_FORMAT, "kind": "merged", "certa_version": certa_version(),
                   "from_artifact": source_id},
        "method": "grace",
        "base_model": info.get("base_model"),
        "token": CNF_TOKEN,
        "token_id": cnf,
        "suppress_token_ids": [cnf],
        "mode": mode,
        "readout": readout,
        "answers_use_adapter": mode == "full",
        "read": {"input": feed, "position": "last", "adapter": adapter, "how": how},
        "recalibration": info.get("recalibration"),
        "answers": "the answer's token ids as generated, ending with the end-of-turn token when it ended; "
                   "prompts are the chat template with certa's system prompt (certa.prompts.SYSTEM_PROMPT)",
    }


def _lora_part(peft_model: Any, adapter: str | None) -> tuple[Any, dict[str, torch.Tensor]]:
    """The LoRA config and weights of ``adapter`` without its trainable token rows."""
    from peft import LoraConfig, get_peft_model_state_dict

    name = adapter or peft_model.active_adapter
    config = peft_model.peft_config[name]
    state = get_peft_model_state_dict(peft_model, adapter_name=name)
    weights = {k: v.detach().clone() for k, v in state.items() if "lora_" in k}
    plain = LoraConfig(r=config.r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                       target_modules=sorted(config.target_modules), task_type="CAUSAL_LM")
    return plain, weights


def _merge_token_rows(peft_model: Any) -> None:
    """Write the trained token rows into the base embedding (and head) weights; LoRA layers stay unmerged."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    layers = [m for m in peft_model.modules() if isinstance(m, TrainableTokensLayer)]
    if not layers:
        raise InputError("the artifact has no trainable token rows to merge; is it a GrACE artifact?")
    for layer in layers:
        layer.merge()


def _save_lora(base: torch.nn.Module, config: Any, weights: dict[str, torch.Tensor], path: Path) -> None:
    from peft import get_peft_model, set_peft_model_state_dict

    with quiet_peft_wrapping():
        peft_model = get_peft_model(base, config)
    set_peft_model_state_dict(peft_model, weights)
    peft_model.save_pretrained(path)
    adapter_config = path / "adapter_config.json"
    data = json.loads(adapter_config.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = ".."  # the exported model beside it
    adapter_config.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    peft_model.unload()


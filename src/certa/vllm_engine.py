"""``--engine vllm``: answers (and GrACE confidences) from vLLM, as the same ``Generation`` records.

The model is a Hugging Face directory or Hub id that vLLM loads; for GrACE it
is a directory written by ``certa export ARTIFACT OUT --format merged``, whose
``certa.json`` says how the confidence is read. Prompts are rendered with the
model's chat template and certa's system prompt, exactly as local generation
renders them, and ``<CNF>`` is kept out of answers with a logit bias.

The confidence is a second, one-token request per answer over prompt + answer
(or + answer[:-1] for the free read-out) that may only emit ``<CNF>``
(``allowed_token_ids``); vLLM reports that token's log-prob computed from the
raw logits (its default ``logprobs_mode``), i.e. log P(<CNF>) over the whole
vocabulary. A suffix-mode export's LoRA runs through vLLM's multi-LoRA support
over the whole read-out request, an approximation of certa's read-out (see
:mod:`certa.methods.grace.export`).

Not exercised in certa's CI (no GPU); ``benchmarks/vllm_check.sh`` compares it
with the HF engine on a GPU box.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .errors import InputError, MissingDependencyError
from .models.artifact import ARTIFACT_FILE, is_artifact, is_export
from .models.loaded import end_token_ids, render_chat
from .models.remote import top_k_entropy
from .prompts import question_prompt
from .records import Example, Generation, JsonlAppender, read_jsonl

VLLM_EXTRA = "pip install 'certa[vllm]' (vLLM needs a CUDA GPU)"
TOP_LOGPROBS = 20


def require_vllm() -> Any:
    """The ``vllm`` module, or a one-line error naming the extra that installs it."""
    try:
        import vllm
    except ImportError:
        raise MissingDependencyError(f"--engine vllm needs vLLM: {VLLM_EXTRA}") from None
    return vllm


def generate_vllm(model: str | os.PathLike[str], examples: Iterable[Example], *, max_new_tokens: int = 48,
                  samples: int = 0, temperature: float = 1.0, seed: int = 0,
                  out: str | os.PathLike[str] | None = None, gpu_memory_utilization: float = 0.85,
                  **engine_args: Any) -> list[Generation]:
    """Answer every example with vLLM; GrACE confidences when ``model`` is a ``certa export`` directory.

    Greedy answers with token log-probs and top-20 entropies (a lower bound, as for
    a server), ``samples`` sampled answers at ``temperature`` seeded by ``seed``;
    with ``out=`` the file is written as results come and a re-run skips its ids.
    """
    vllm = require_vllm()
    path = Path(str(model))
    if is_artifact(path):
        raise InputError(f"{path} is a certa artifact; vLLM loads standard model directories: "
                         f"run `certa export {path} OUT --format merged` and generate with -m OUT")
    spec = json.loads((path / ARTIFACT_FILE).read_text(encoding="utf-8")) if is_export(path) else None
    examples = list(examples)
    lora = (spec or {}).get("read", {}).get("adapter") if spec else None
    llm = vllm.LLM(model=str(path), seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                   enable_lora=lora is not None, **({"max_lora_rank": 64} if lora else {}), **engine_args)
    tokenizer = llm.get_tokenizer()
    stops = end_token_ids(SimpleNamespace(tokenizer=tokenizer, model=SimpleNamespace(
        generation_config=SimpleNamespace(eos_token_id=_config_eos(path)))))  # type: ignore[arg-type]
    with JsonlAppender(out) if out is not None else _Nothing() as appender:
        done = {g.id: g for g in read_jsonl(appender.partial, Generation)} if out is not None else {}
        todo = [ex for ex in examples if ex.id not in done]
        for gen in _answer(vllm, llm, tokenizer, todo, spec, lora, path, stops, max_new_tokens, samples,
                           temperature, seed):
            done[gen.id] = gen
            if out is not None:
                appender.append(gen)
    return [done[ex.id] for ex in examples]


class _Nothing:
    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _config_eos(path: Path) -> Any:
    try:
        return json.loads((path / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError):
        return None


def _answer(vllm: Any, llm: Any, tokenizer: Any, examples: list[Example], spec: dict | None, lora: dict | None,
            path: Path, stops: list[int], max_new_tokens: int, samples: int, temperature: float,
            seed: int) -> list[Generation]:
    if not examples:
        return []
    prompts = [render_chat(tokenizer, [("user", question_prompt(ex))]) for ex in examples]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    suppress = {int(t): -100.0 for t in (spec or {}).get("suppress_token_ids", [])}
    greedy = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens, logprobs=TOP_LOGPROBS,
                                 stop_token_ids=stops, logit_bias=suppress or None)
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], greedy, use_tqdm=False)
    answered = time.perf_counter()
    sampled: list[list[str]] = [[] for _ in examples]
    if samples:
        params = vllm.SamplingParams(n=samples, temperature=temperature, top_p=1.0, top_k=-1, seed=seed,
                                     max_tokens=max_new_tokens, stop_token_ids=stops, logit_bias=suppress or None)
        for i, result in enumerate(llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params,
                                                use_tqdm=False)):
            sampled[i] = [o.text.strip() for o in result.outputs]
    gens = []
    for ex, prompt, result, samples_ in zip(examples, prompts, outputs, sampled, strict=True):
        choice = result.outputs[0]
        ids = list(choice.token_ids)
        if choice.finish_reason == "stop" and (not ids or ids[-1] not in stops):
            ids.append(stops[-1])  # the end-of-turn token ends certa's answers (the read-out follows it)
        logprobs = [step[token].logprob for step, token in zip(choice.logprobs or [], choice.token_ids, strict=False)]
        entropies = [top_k_entropy({str(k): v.logprob for k, v in step.items()}) or 0.0
                     for step in choice.logprobs or []]
        gens.append(Generation(
            id=ex.id, prompt=prompt, response=choice.text.strip(), model=str(path), token_ids=ids,
            token_logprobs=[max(lp, -1e4) if math.isfinite(lp) else -1e4 for lp in logprobs],
            token_entropies=entropies, finish_reason="stop" if choice.finish_reason == "stop" else "length",
            samples=samples_, meta={"engine": "vllm", "vocab_size": len(tokenizer),
                                    "entropy": "top-20 lower bound", "seconds": {}}))
    if spec is not None:
        _read_confidence(vllm, llm, spec, lora, path, prompt_ids, gens)
    seconds = (answered - start) / len(gens)
    for gen in gens:
        gen.meta["seconds"]["answer"] = seconds
    return gens


def _read_confidence(vllm: Any, llm: Any, spec: dict, lora: dict | None, path: Path, prompt_ids: list[list[int]],
                     gens: list[Generation]) -> None:
    """P(<CNF>) after each answer, as certa.json says, with the export's recalibration applied."""
    from .recalibration import CalibrationMap

    cnf = int(spec["token_id"])
    whole = spec["read"]["input"] == "prompt+answer"
    requests = [{"prompt_token_ids": p + (g.token_ids if whole else g.token_ids[:-1])}
                for p, g in zip(prompt_ids, gens, strict=True)]
    params = vllm.SamplingParams(temperature=0.0, max_tokens=1, logprobs=1, allowed_token_ids=[cnf])
    options: dict[str, Any] = {}
    if lora is not None:
        from vllm.lora.request import LoRARequest

        options["lora_request"] = LoRARequest("grace-readout", 1, str(path / lora["path"]))
    start = time.perf_counter()
    results = llm.generate(requests, params, use_tqdm=False, **options)
    seconds = (time.perf_counter() - start) / len(gens)
    raw = [math.exp(r.outputs[0].logprobs[0][cnf].logprob) for r in results]
    stored = spec.get("recalibration")
    calibrate = CalibrationMap.from_dict(stored) if stored else None
    values = calibrate(np.array(raw)) if calibrate is not None else np.array(raw)
    for gen, value, r in zip(gens, values, raw, strict=True):
        gen.confidence["grace"] = float(value)
        gen.meta["grace_raw"] = float(r)
        gen.meta["confidence_source"] = {"grace": spec["export"]["from_artifact"]}
        gen.meta["seconds"]["confidence"] = seconds

"""ConfTuner's training settings: the shared ones plus its own, each default stated once."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...training.config import ALL_LINEAR, TrainConfig


class ConfTunerConfig(TrainConfig):
    """Hyper-parameters of ConfTuner training (ConfTuner, arXiv 2508.18847); unknown keys are errors."""

    scale: int | None = Field(
        None, description="confidence levels: 100 (T_100, '0'..'100') or 9 (T_9, '0'..'9'); "
        "default: T_100 when each level is one token in the tokenizer, else T_9")
    prompt: Literal["cue", "follow_up"] = Field(
        "cue", description="how the confidence is asked for after the answer: cue (only 'Confidence:', a few "
        "tokens: the tuned read-out costs almost nothing) or follow_up (the untrained verbalized request, ~40 tokens)")
    spread_weight: float = Field(
        0.1, ge=0.0, le=1.0, description="weight of the level spread Σ p_i (s_i − E)² in the loss: the tokenized "
        "Brier score is (y − E)² plus that spread, with E = Σ p_i s_i the expected confidence certa reads. 1 is the "
        "paper's loss, 0 the Brier score of E. The spread term drives the level softmax to one-hot, where its "
        "gradient vanishes (the paper's loss stalled at the base rate in 3 runs of 3 on the CPU study's stalled "
        "split); without it the said level ('Confidence: N', the argmax) is unconstrained. Any w in (0, 1) puts "
        "the best mass on the two levels around the accuracy, the nearer one the argmax, with E off by at most "
        "w/(1 − w) of half a level gap; 0.1 trained best on that split (docs/conftuner.md)")
    stall_retries: int = Field(
        2, ge=0, description="further runs trained while the best run so far has a held-out Brier skill score below "
        "stall_skill (the best is kept): a run can stall at the base-rate level, as 2 of 3 seeds did on the CPU study "
        "with the paper's loss (spread_weight 1; docs/conftuner.md)")
    target_modules: list[str] = Field(
        default_factory=lambda: [ALL_LINEAR],
        description="module names that get LoRA; default: every linear layer but the output head. The paper put "
        "LoRA on q/v on 7-8B models; on SmolLM2-135M such an adapter read one dataset's answers all at one level, "
        "one on every linear layer did not (docs/conftuner.md)")

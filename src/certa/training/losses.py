"""Training losses as pure torch functions (no model, no state).

Each one is a few lines and is checked against hand-computed values in
``tests/test_losses.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def grace_calibration_loss(conf: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """GrACE's calibration loss between confidences and (soft) targets, both in [0, 1], one per example.

    ``"mse"`` is the paper's mean squared error. With c a softmax probability
    its gradient on the <CNF> logit is 2(c - t)·c(1 - c), which vanishes when
    c is near 0 or 1 whatever the target. ``"bce"`` is the binary
    cross-entropy with the soft target, whose gradient on that logit is
    c - t: also a proper scoring rule, without the vanishing gradient.
    """
    target = target.to(conf.dtype)
    if kind == "mse":
        return F.mse_loss(conf, target)
    if kind == "bce":
        return F.binary_cross_entropy(conf.float(), target.float())
    raise ValueError(f"unknown GrACE calibration loss {kind!r}; use 'mse' or 'bce'")


def tokenized_brier(probs: torch.Tensor, correct: torch.Tensor, scores: torch.Tensor,
                    spread_weight: float = 1.0) -> torch.Tensor:
    """ConfTuner's tokenized Brier score: mean over the batch of Σ_i p_i (y − s_i)².

    ``probs`` [B, N]: each row a distribution over the N confidence tokens (a
    softmax restricted to them); ``correct`` [B]: correctness y ∈ [0, 1];
    ``scores`` [N]: the confidence s_i each token stands for. The loss is
    linear in ``probs``, so for a fixed correctness rate its minimiser is a
    one-hot row on the score nearest that rate — a proper scoring rule over
    the scores.

    With E = Σ_i p_i s_i it splits exactly into (y − E)² + Σ_i p_i (s_i − E)²:
    the Brier score of the expected confidence plus the spread of the levels.
    ``spread_weight`` scales the second term; 1 is the paper's loss. The
    spread term is what pushes a row to one-hot, and a saturated softmax has
    no gradient left to learn from; with a weight below 1 the expected
    confidence is still fitted by a proper scoring rule (the Brier score of E).
    """
    y = correct.to(probs.dtype).unsqueeze(-1)
    scores = scores.to(probs.dtype).unsqueeze(0)
    if spread_weight == 1.0:
        return (probs * (y - scores) ** 2).sum(dim=-1).mean()
    expected = (probs * scores).sum(dim=-1, keepdim=True)
    spread = (probs * (scores - expected) ** 2).sum(dim=-1)
    return ((y - expected).squeeze(-1) ** 2 + spread_weight * spread).mean()


def response_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: ``logits[:, t]`` predicts ``labels[:, t + 1]``.

    ``labels`` hold ``-100`` on every position that must not be learned (the
    prompt, padding, added tokens), so only the response tokens count.
    """
    # Low-precision logits (bf16 training) are upcast; float64 stays float64.
    shifted_logits = logits[:, :-1].reshape(-1, logits.size(-1))
    shifted_logits = shifted_logits.to(torch.promote_types(shifted_logits.dtype, torch.float32))
    shifted_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX)

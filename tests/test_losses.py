"""Training losses against hand-computed values, properness, and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from certa.training.losses import grace_calibration_loss, response_lm_loss, tokenized_brier


def test_grace_calibration_loss_is_mse():
    # ((0.2 - 0)^2 + (0.9 - 1)^2) / 2 = (0.04 + 0.01) / 2 = 0.025
    loss = grace_calibration_loss(torch.tensor([0.2, 0.9]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(0.025)


def test_tokenized_brier_hand_value():
    scores = torch.tensor([0.0, 0.5, 1.0])
    probs = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    correct = torch.tensor([1.0, 0.0])
    # row 1 (y=1): 0.2·(1-0)² + 0.3·(1-0.5)² + 0.5·(1-1)² = 0.2 + 0.075 + 0 = 0.275
    # row 2 (y=0): 1.0·(0-0)² = 0;  mean over the batch = 0.1375
    assert tokenized_brier(probs, correct, scores).item() == pytest.approx(0.1375)


@pytest.mark.parametrize(("spread_weight", "expected"), [(1.0, 0.1375), (0.5, 0.099375), (0.0, 0.06125)])
def test_tokenized_brier_splits_into_expected_confidence_brier_and_spread(spread_weight, expected):
    scores = torch.tensor([0.0, 0.5, 1.0])
    probs = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    correct = torch.tensor([1.0, 0.0])
    # row 1: E = 0.3·0.5 + 0.5·1 = 0.65, (1 − E)² = 0.1225,
    #        spread = 0.2·0.65² + 0.3·0.15² + 0.5·0.35² = 0.0845 + 0.00675 + 0.06125 = 0.1525 (0.1225 + 0.1525 = 0.275)
    # row 2: E = 0, error 0, spread 0.  Mean: (0.1225 + w·0.1525) / 2
    assert tokenized_brier(probs, correct, scores, spread_weight).item() == pytest.approx(expected)


def _fit_levels_to_a_base_rate(spread_weight: float) -> torch.Tensor:
    """Gradient descent on one shared level distribution over answers 42% of which are right."""
    scores = torch.linspace(0.0, 1.0, 11)
    logits = torch.zeros(11, requires_grad=True)
    correct = torch.tensor([1.0] * 21 + [0.0] * 29)
    optimizer = torch.optim.SGD([logits], lr=2.0)
    for _ in range(3000):
        optimizer.zero_grad()
        probs = logits.softmax(-1).expand(len(correct), -1)
        tokenized_brier(probs, correct, scores, spread_weight).backward()
        optimizer.step()
    return logits.detach().softmax(-1)


def test_the_spread_term_is_what_drives_the_levels_to_one_hot():
    scores = torch.linspace(0.0, 1.0, 11)
    paper, no_spread = _fit_levels_to_a_base_rate(1.0), _fit_levels_to_a_base_rate(0.0)
    # The paper's loss piles the mass on the level nearest the rate (0.4) ...
    assert float(paper[4]) > 0.95
    # ... without the spread term the expected confidence still fits the rate, and the levels stay spread.
    assert float(no_spread @ scores) == pytest.approx(0.42, abs=1e-3)
    assert float(no_spread.max()) < 0.5


def test_response_lm_loss_hand_value_and_masking():
    # logits[t] predicts labels[t+1]. Position 0: p(token 1) = 3/(1+3) = 0.75; position 1: p(token 0) = 4/5.
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[-100, 1, 0]])
    expected = (-math.log(0.75) - math.log(0.8)) / 2
    assert response_lm_loss(logits, labels).item() == pytest.approx(expected)
    # Masking the first answer token leaves only -log 0.8.
    masked = torch.tensor([[-100, -100, 0]])
    assert response_lm_loss(logits, masked).item() == pytest.approx(-math.log(0.8))


def _expected_brier(probs: torch.Tensor, q: float, scores: torch.Tensor, spread_weight: float = 1.0) -> torch.Tensor:
    """E over y ~ Bernoulli(q) of the tokenized Brier score of each row of ``probs``."""
    ones, zeros = torch.ones(len(probs)), torch.zeros(len(probs))
    per_row_1 = torch.stack([tokenized_brier(p[None], ones[:1], scores, spread_weight) for p in probs])
    per_row_0 = torch.stack([tokenized_brier(p[None], zeros[:1], scores, spread_weight) for p in probs])
    return q * per_row_1 + (1 - q) * per_row_0


@pytest.mark.parametrize(("spread_weight", "mass_above"), [(0.1, 0.15 / 0.9), (0.25, 0.1), (0.5, 0.0)])
def test_a_partial_spread_weight_puts_the_best_mass_on_the_levels_around_the_rate(spread_weight, mass_above):
    # Rate q = .42 between the levels .4 and .5 (gap h = .1, d = q − .4 = .02). On those two levels with mass t
    # on .5 the expected loss is (d − t·h)² + w·t(1 − t)·h² + const, least at t = (d/h − w/2) / (1 − w), clipped
    # to [0, 1]: w = .25 gives t = (.2 − .125) / .75 = .1 (E = .41), w = .1 gives .15 / .9, w = .5 gives 0.
    scores = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    q = 0.42
    t = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)
    two_levels = torch.zeros(len(t), 11, dtype=torch.float64)
    two_levels[:, 4], two_levels[:, 5] = 1.0 - t, t
    losses = _expected_brier(two_levels, q, scores, spread_weight)
    best = two_levels[int(losses.argmin())]
    assert float(best[5]) == pytest.approx(mass_above, abs=1e-3)
    # No distribution off those two levels does better: not a one-hot, not a random one.
    torch.manual_seed(0)
    others = torch.cat([torch.eye(11, dtype=torch.float64),
                        torch.distributions.Dirichlet(torch.ones(11, dtype=torch.float64)).sample((300,)),
                        torch.distributions.Dirichlet(10 * best + 0.01).sample((300,))])
    assert (_expected_brier(others, q, scores, spread_weight) >= losses.min() - 1e-12).all()
    # So the said level (the argmax) is the one nearest the rate, and the expected confidence is off the rate by
    # w/(1 − w)·(d − h/2) where t lies inside [0, 1] (w < .4 here), by d = .02 where it is clipped to 0.
    assert int(best.argmax()) == 4
    offset = spread_weight / (1 - spread_weight) * (0.02 - 0.05) if mass_above > 0 else -0.02
    assert float(best @ scores) == pytest.approx(q + offset, abs=1e-4)


@pytest.mark.parametrize("q", [0.0, 0.13, 0.5, 0.62, 0.871, 1.0])
def test_tokenized_brier_is_proper_on_t100(q):
    scores = torch.arange(101, dtype=torch.float64) / 100
    one_hots = torch.eye(101, dtype=torch.float64)
    expected = _expected_brier(one_hots, q, scores)
    # Among one-hot distributions the best is the score nearest q ...
    best = int(expected.argmin())
    assert abs(scores[best].item() - q) <= 0.005 + 1e-12
    # ... and no mixed distribution does better (the loss is linear in p).
    mixed = torch.distributions.Dirichlet(torch.ones(101, dtype=torch.float64)).sample((200,))
    assert (_expected_brier(mixed, q, scores) >= expected.min() - 1e-12).all()


def test_tokenized_brier_prefers_nearest_coarse_level():
    scores = torch.arange(10, dtype=torch.float64) / 9  # T_9 levels
    q = 0.4  # nearest level is 4/9 = 0.444 (3/9 = 0.333 is farther)
    assert int(_expected_brier(torch.eye(10, dtype=torch.float64), q, scores).argmin()) == 4


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    conf = torch.rand(4, dtype=torch.float64, requires_grad=True)
    target = torch.rand(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda c: grace_calibration_loss(c, target), (conf,))

    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    correct = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    scores = torch.linspace(0, 1, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: tokenized_brier(z.softmax(-1), correct, scores), (logits,))

    lm_logits = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[-100, 2, 3], [-100, -100, 0]])
    assert torch.autograd.gradcheck(lambda z: response_lm_loss(z, labels), (lm_logits,))


def test_mse_gradient_direction():
    # d/dc (c - t)^2 / n = 2 (c - t) / n: pushes an over-confident prediction down.
    conf = torch.tensor([0.9, 0.1], requires_grad=True)
    grace_calibration_loss(conf, torch.tensor([0.5, 0.1])).backward()
    assert conf.grad.tolist() == pytest.approx([0.4, 0.0])


def test_grace_bce_loss_matches_hand_values():
    conf, target = torch.tensor([0.2, 0.9]), torch.tensor([0.5, 1.0])
    expected = (-(0.5 * math.log(0.2) + 0.5 * math.log(0.8)) - math.log(0.9)) / 2
    assert grace_calibration_loss(conf, target, "bce").item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="unknown GrACE calibration loss"):
        grace_calibration_loss(conf, target, "hinge")


def test_grace_bce_gradient_on_the_logit_does_not_vanish_near_zero():
    # c = softmax(z)[0] starts near 0 while the target is 0.2: MSE barely moves z, BCE moves it by c - t.
    for kind in ("bce", "mse"):
        logits = torch.tensor([-8.0, 4.0], requires_grad=True)
        conf = logits.softmax(-1)[:1]
        grace_calibration_loss(conf, torch.tensor([0.2]), kind).backward()
        c = conf.item()
        if kind == "bce":
            assert logits.grad[0].item() == pytest.approx(c - 0.2, rel=1e-4)
        else:
            assert abs(logits.grad[0].item()) == pytest.approx(2 * 0.2 * c * (1 - c), rel=1e-2)
            assert abs(logits.grad[0].item()) < 1e-5

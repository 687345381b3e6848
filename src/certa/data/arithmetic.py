"""``arithmetic``: seeded arithmetic questions of mixed difficulty.

The mix spans levels a small model finds easy (one-digit sums) to hard
(two-digit products), so that its accuracy sits in the middle of [0, 1] and a
confidence method has both right and wrong answers to tell apart. Ids name the
operands (``arithmetic-add-23-45``) and each level draws from its own seeded generator,
so an item keeps its id, and ``split_of`` its split, when the mix changes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from operator import add, mul, sub

from ..records import Example

SOURCE = "certa:arithmetic"
SEED = "certa-arithmetic-v1"

# op → (function, symbol, word)
_OPS = {"add": (add, "+", "plus"), "sub": (sub, "-", "minus"), "mul": (mul, "×", "times")}


@dataclass(frozen=True)
class Level:
    """``count`` questions ``a <op> b``, ``a`` with ``digits_a`` digits and ``b`` with ``digits_b``.

    ``tens``: both operands are multiples of ten (they form their own, easier level and are
    left out of the others). ``words``: "3 plus 4" instead of "3 + 4".
    """

    op: str
    digits_a: int
    digits_b: int
    count: int
    tens: bool = False
    words: bool = False

    @property
    def name(self) -> str:
        return f"{self.op}-{self.digits_a}x{self.digits_b}" + ("-tens" if self.tens else "") + (
            "-words" if self.words else "")

    @staticmethod
    def operand_range(digits: int) -> range:
        # One-digit operands include 0..9; longer ones start at 10^(d-1).
        return range(0 if digits == 1 else 10 ** (digits - 1), 10**digits)

    def all_pairs(self) -> list[tuple[int, int]]:
        pairs = [(a, b) for a in self.operand_range(self.digits_a) for b in self.operand_range(self.digits_b)
                 if _both_tens(a, b) == self.tens]
        # Subtraction stays non-negative; multiplying by 0 or 1 is not a question worth asking.
        if self.op == "sub":
            pairs = [(a, b) for a, b in pairs if a >= b]
        if self.op == "mul":
            pairs = [(a, b) for a, b in pairs if a > 1 and b > 1]
        return pairs

    def example(self, a: int, b: int) -> Example:
        fn, symbol, word = _OPS[self.op]
        style = "-words" if self.words else ""
        return Example(
            id=f"arithmetic-{self.op}{style}-{a}-{b}",
            question=f"What is {a} {word if self.words else symbol} {b}?",
            answers=[str(fn(a, b))],
            answer_type="numeric",
            source=SOURCE,
            meta={"level": self.name},
        )


def _both_tens(a: int, b: int) -> bool:
    return a >= 10 and b >= 10 and a % 10 == 0 and b % 10 == 0


# About 1,300 items. Measured on SmolLM2-135M-Instruct (12 items a level): one-digit levels
# 65-90% correct, two-digit ones 0-25%; the mix leans easy so that overall accuracy is
# near a third. Easy levels are taken whole, harder ones sampled.
LEVELS: tuple[Level, ...] = (
    Level("add", 1, 1, 100),
    Level("sub", 1, 1, 55),
    Level("mul", 1, 1, 64),
    Level("add", 1, 1, 100, words=True),
    Level("sub", 1, 1, 55, words=True),
    Level("mul", 1, 1, 64, words=True),
    Level("add", 2, 2, 81, tens=True),
    Level("sub", 2, 2, 45, tens=True),
    Level("add", 2, 1, 150),
    Level("sub", 2, 1, 150),
    Level("add", 2, 2, 150),
    Level("sub", 2, 2, 150),
    Level("mul", 2, 1, 100),
)


def _level_examples(level: Level, seed: str) -> list[Example]:
    # A generator per level: changing one level's count leaves the others' items alone.
    rng = random.Random(f"{seed}:{level.name}")
    pairs = level.all_pairs()
    chosen = pairs if level.count >= len(pairs) else sorted(rng.sample(pairs, level.count))
    return [level.example(a, b) for a, b in chosen]


def arithmetic_examples(levels: tuple[Level, ...] = LEVELS, seed: str = SEED) -> list[Example]:
    """All arithmetic questions, level by level; the same list on every call and platform."""
    return [ex for level in levels for ex in _level_examples(level, seed)]


#: One-digit problems the default model gets right about half the time (measured: sums 50%, differences
#: 40%, products asked in words 64%), each asked in several phrasings (``arithmetic-easy``).
EASY_PROBLEMS: tuple[Level, ...] = (Level("add", 1, 1, 100), Level("sub", 1, 1, 55), Level("mul", 1, 1, 64))
EASY_PHRASINGS: dict[str, tuple[str, ...]] = {
    "add": ("What is {a} + {b}?", "What is {a} plus {b}?", "How much is {a} plus {b}?",
            "Add {a} and {b}.", "What do you get when you add {b} to {a}?"),
    "sub": ("What is {a} - {b}?", "What is {a} minus {b}?", "How much is {a} minus {b}?",
            "Subtract {b} from {a}.", "What do you get when you take {b} away from {a}?"),
    "mul": ("What is {a} times {b}?", "How much is {a} times {b}?", "Multiply {a} by {b}.",
            "What is the product of {a} and {b}?", "What do you get when you multiply {a} by {b}?"),
}


def easy_arithmetic_examples(seed: str = SEED) -> list[Example]:
    """One-digit sums, differences and products, each in five phrasings sharing one split.

    ``meta["split_group"]`` is the problem, so a test question's arithmetic is
    never seen in another phrasing in training.
    """
    examples = []
    for level in EASY_PROBLEMS:
        fn = _OPS[level.op][0]
        for base in _level_examples(level, seed):
            _, a, b = base.id.rsplit("-", 2)
            for k, phrasing in enumerate(EASY_PHRASINGS[level.op]):
                examples.append(Example(
                    id=f"arithmetic-easy-{level.op}-{a}-{b}-p{k}", question=phrasing.format(a=a, b=b),
                    answers=[str(fn(int(a), int(b)))], answer_type="numeric", source=SOURCE,
                    meta={"level": level.name, "phrasing": k, "split_group": f"{level.op}-{a}-{b}"}))
    return examples

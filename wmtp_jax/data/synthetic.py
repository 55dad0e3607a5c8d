"""A synthetic code task a micro model learns on a CPU in minutes, so train -> generate -> execute -> pass@k can be
shown to measure learning (random micro models score 0 on MBPP / HumanEval, which proves nothing).

Each instance asks for a one-line arithmetic function whose body follows from the instruction:

    instruction: "Write a Python function mul(n) that returns n * 7."
    solution:    "def mul(n):\\n    return n * 7"
    tests:       "assert mul(3) == 21" (three inputs)

The 300 instances are every (operation, digit, parameter) for 3 operations (the function is named after it), the
digits 0..9 and 10 parameter names; they are generated deterministically (no randomness, no files). Writing the
answer needs the instruction's parameter name and digit copied into the code, which a tiny transformer learns by
attending to them: the micro model learns the name within ~200 steps of 8 instances and the digit between steps
600 and 800, when held-out pass@1 jumps from ~0.1 to ~0.9. The instruction spells the expression as code,
"x * 7": after 400 steps that reached pass@1 0.133 where the operation as a word, "x times 7", reached 0.067.
Splits hold out *instances*: 10% for ``test`` and 10% for ``validation``, chosen by a fixed rule so that every
operation, digit and name also occurs in training, but never that combination. Every training instance also
comes with one incorrect solution (operands swapped where that changes the result, else a digit off by one),
labelled ``is_correct = False``, for the critic.
"""

from __future__ import annotations

import dataclasses

OPERATIONS = {"plus": ("+", "add"), "minus": ("-", "sub"), "times": ("*", "mul")}  # word: (symbol, function name)
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
DIGITS = range(10)
ORDERS = ("v-first",)  # "k-first" ("returns 7 plus x") doubles the task and slows learning down
PARAMETERS = ("x", "y", "n", "m", "t", "v", "z", "w", "b", "c")
SPLITS = {"train": lambda slot: slot >= 2, "validation": lambda slot: slot == 1, "test": lambda slot: slot == 0}
TEST_INPUTS = (3, 10, -4)


@dataclasses.dataclass(frozen=True)
class Instance:
    """One synthetic problem: ``task_id`` ("synthetic/{split}/{op}-{order}-{k}-{parameter}"), the Alpaca
    ``instruction``, the correct ``solution``, an incorrect ``wrong_solution`` and assert-style ``tests``."""

    task_id: str
    instruction: str
    solution: str
    wrong_solution: str
    tests: tuple[str, ...]


def _function(name: str, parameter: str, left: str, symbol: str, right: str) -> str:
    return f"def {name}({parameter}):\n    return {left} {symbol} {right}"


def instances(split: str) -> list[Instance]:
    """Every instance of ``split`` (train / validation / test), in a fixed order; raises ValueError otherwise."""
    if split not in SPLITS:
        raise ValueError(f"synthetic split {split!r}: expected one of {list(SPLITS)}")
    out = []
    for k in DIGITS:
        for i, (word, (symbol, name)) in enumerate(OPERATIONS.items()):
            for j, order in enumerate(ORDERS):
                for p, v in enumerate(PARAMETERS):
                    if not SPLITS[split]((3 * k + 7 * p + 2 * i + j) % 10):  # 10% test, 10% validation
                        continue
                    left, right = (v, str(k)) if order == "v-first" else (str(k), v)
                    if symbol == "-":  # swapping the operands is a real mistake
                        wrong = _function(name, v, right, symbol, left)
                    else:
                        other = str((k + 1) % 10)
                        wrong = _function(name, v, *((v, symbol, other) if left == v else (other, symbol, v)))
                    tests = tuple(
                        f"assert {name}({x}) == {_APPLY[symbol](*((x, k) if left == v else (k, x)))}"
                        for x in TEST_INPUTS
                    )
                    out.append(
                        Instance(
                            f"synthetic/{split}/{word}-{order}-{k}-{v}",
                            f"Write a Python function {name}({v}) that returns {left} {symbol} {right}.",
                            _function(name, v, left, symbol, right),
                            wrong,
                            tests,
                        )
                    )
    return out

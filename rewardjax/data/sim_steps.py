"""A step simulator: arithmetic word problems solved step by step, with a gold first error.

A problem is a start quantity and 2-4 operations (buy / lose / multiply), told as a short story
(the prompt). A solution has one step for the start, one per operation (``x op n = y``) and a
final answer step. A solution is correct, or has its *first error* at a uniformly drawn step,
of one of these kinds:

* ``copy``: the start or the answer does not repeat the number it should (the prompt's start
  quantity, the last result);
* ``flip``: an operation step applies the wrong operation (``+`` for a loss, ...);
* ``skip``: an operation step claims the operation changes nothing;
* ``slip``: an arithmetic slip (the right operation, a result off by 1-3; the hardest kind for
  a small model, kept rare).

After the first error the solution goes on *consistently* from the wrong value, and every later
step is labelled bad (the PRM800K / Math-Shepherd convention: a step is good only when the
solution so far is still correct), so a PRM must remember that something went wrong before. Every
error changes the final answer, so a solution's gold outcome is ``1`` exactly when it has no
error (``meta["gold"]``). Deterministic from the seed; splits use different salts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rewardjax.data.steps import StepRecord

NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kofi",
         "Lena", "Mateo", "Nia", "Omar", "Priya")
ITEMS = ("apples", "books", "coins", "stamps", "marbles", "pencils", "shells", "cards")
_ADD = ("buys {n} more", "finds {n} more", "gets {n} as a gift")
_SUB = ("gives {n} away", "loses {n}", "sells {n}")
_MUL = ("ends up with {n} times as many", "multiplies the pile by {n}")
_VERB = {"add": "adding", "sub": "taking away", "mul": "multiplying by"}
_SYM = {"add": "+", "sub": "-", "mul": "*"}
ERROR_KINDS = ("copy", "flip", "skip", "slip")
_SALTS = {"train": 101, "test": 202, "pools": 303}


@dataclasses.dataclass(frozen=True)
class StepSimConfig:
    """What to simulate.

    Attributes:
      seed: data seed.
      num: solutions (``simulate_steps``) or prompts (``simulate_pools``).
      correct_rate: fraction of solutions without an error.
      kind_weights: relative frequency of ``copy``, ``flip``, ``skip``, ``slip`` errors.
      split: ``train`` / ``test`` / ``pools`` (mixed into the seed).
    """

    seed: int = 0
    num: int = 1000
    correct_rate: float = 0.4
    kind_weights: tuple[float, float, float, float] = (0.3, 0.35, 0.25, 0.1)
    split: str = "train"


def _apply(kind: str, x: int, n: int) -> int:
    return x + n if kind == "add" else x - n if kind == "sub" else x * n


def _problem(rng: np.random.Generator) -> dict:
    name, items = NAMES[rng.integers(len(NAMES))], ITEMS[rng.integers(len(ITEMS))]
    start = int(rng.integers(3, 21))
    ops, x = [], start
    for _ in range(int(rng.integers(2, 5))):
        kind = ("add", "sub", "mul")[rng.choice(3, p=(0.45, 0.35, 0.2))]
        n = int(rng.integers(2, 4)) if kind == "mul" else int(rng.integers(1, 10))
        if kind == "sub" and n >= x:
            kind = "add"
        if kind == "mul" and x * n > 99:
            kind, n = "add", int(rng.integers(1, 10))
        phrase = {"add": _ADD, "sub": _SUB, "mul": _MUL}[kind]
        ops.append((kind, n, phrase[rng.integers(len(phrase))].format(n=n)))
        x = _apply(kind, x, n)
    story = f"{name} has {start} {items}. " + ". ".join(
        f"{'Then ' if i else ''}{name} {text}" for i, (_, _, text) in enumerate(ops))
    prompt = f"{story}. How many {items} does {name} have now?"
    return {"name": name, "items": items, "start": start, "ops": ops, "prompt": prompt,
            "answer": x}


def _other(rng: np.random.Generator, value: int) -> int:
    """A nearby number different from ``value`` (never negative)."""
    delta = int(rng.integers(1, 4)) * (1 if rng.random() < 0.5 or value < 4 else -1)
    return value + delta


def solve(problem: dict, first_error: int, kind: str, rng: np.random.Generator):
    """The steps of a solution of ``problem`` with its first error at step ``first_error``
    (``-1``: none) of ``kind``; ``(steps, labels)``."""
    n_steps = len(problem["ops"]) + 2
    steps, labels = [], []
    x = problem["start"]
    bad = False
    for i in range(n_steps):
        err = i == first_error
        if i == 0:
            if err:  # only a copy error fits the start step
                x = _other(rng, x)
            steps.append(f"{problem['name']} starts with {x} {problem['items']}.")
        elif i == n_steps - 1:
            shown = _other(rng, x) if err else x
            steps.append(f"So the answer is {shown}.")
        else:
            op, n, _ = problem["ops"][i - 1]
            verb = _VERB[op]
            if err and kind == "skip":
                steps.append(f"When {verb} {n}, the count does not change, it stays {x}.")
                bad = True
                labels.append(False)
                continue
            used = op
            if err and kind == "flip":
                used = {"add": "sub", "sub": "add", "mul": "add"}[op]
            y = _apply(used, x, n)
            if err and kind == "slip":
                y = _other(rng, y)
            steps.append(f"When {verb} {n}: {x} {_SYM[used]} {n} = {y}.")
            x = y
        bad = bad or err
        labels.append(not bad)
    return steps, labels


def _draw_error(rng: np.random.Generator, cfg: StepSimConfig, n_steps: int):
    if rng.random() < cfg.correct_rate:
        return -1, ""
    first = int(rng.integers(n_steps))
    if first in (0, n_steps - 1):
        return first, "copy"
    w = np.asarray(cfg.kind_weights[1:], float)  # operation steps: flip / skip / slip
    return first, ERROR_KINDS[1 + int(rng.choice(3, p=w / w.sum()))]


def _rng(cfg: StepSimConfig) -> np.random.Generator:
    if cfg.split not in _SALTS:
        raise ValueError(f"unknown step simulator split {cfg.split!r}; choose from "
                         f"{tuple(_SALTS)}")
    return np.random.default_rng((int(cfg.seed), _SALTS[cfg.split]))


def _record(problem: dict, pid: int, rng, cfg: StepSimConfig, split: str) -> StepRecord:
    first, kind = _draw_error(rng, cfg, len(problem["ops"]) + 2)
    steps, labels = solve(problem, first, kind, rng)
    meta = {"problem": pid, "first_error": first, "error_kind": kind,
            "gold": 1.0 if first < 0 else 0.0, "source": f"sim_steps:{split}"}
    return StepRecord([{"role": "user", "content": problem["prompt"]}], steps, labels, meta)


def simulate_steps(cfg: StepSimConfig) -> list[StepRecord]:
    """``cfg.num`` step-labelled solutions, each of a fresh problem, half of the problems
    solved twice (so solution-level pairs exist: :func:`rewardjax.data.steps.solution_pairs`)."""
    rng = _rng(cfg)
    out: list[StepRecord] = []
    pid = 0
    while len(out) < cfg.num:
        problem = _problem(rng)
        for _ in range(min(2, cfg.num - len(out))):
            out.append(_record(problem, pid, rng, cfg, cfg.split))
        pid += 1
    return out


def simulate_pools(cfg: StepSimConfig, pool_size: int) -> list[list[StepRecord]]:
    """``cfg.num`` prompts with ``pool_size`` independent solutions each (best-of-n pools)."""
    rng = _rng(dataclasses.replace(cfg, split="pools"))
    pools = []
    for pid in range(cfg.num):
        problem = _problem(rng)
        pools.append([_record(problem, pid, rng, cfg, "pools") for _ in range(pool_size)])
    return pools


def standard_step_splits(seed: int = 0, n_train: int = 2000, n_test: int = 400,
                         correct_rate: float = 0.4) -> dict[str, list[StepRecord]]:
    """``{"train", "test"}``: the PRM recipe's embedded data (``sim:train`` / ``sim:test``)."""
    return {split: simulate_steps(StepSimConfig(seed=seed, num=n, correct_rate=correct_rate,
                                                split=split))
            for split, n in (("train", n_train), ("test", n_test))}

"""A generated family of arithmetic problems with worked, step-by-step reference solutions.

A component (`ArithSpec`) fixes the operation, the operand size in digits and the wrapper:
"bare" ("What is 23 + 45?") or "story" (a one-step word problem, "Tom has 23 apples and buys 45
more. ..."). A mix draws an equal share of problems from each component.

Every problem's id is `arith-<op>-<hash>`, the hash taken over the family name and the prompt text
only, so the same text gets the same id under every seed, count or mix. Duplicates are dropped
while generating, and the train/held-out split (`split_problems`, by id hash) therefore puts a
given text on the same side in every configuration: training on one arith source and evaluating on
the held-out part of another never shows the model a held-out problem.

Each component draws from its own random stream (seeded by seed + component), so asking for more
problems extends the list rather than reshuffling it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from itertools import zip_longest

from trajdistill import UserError
from trajdistill.records import Problem

FAMILY = "arith"
SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
WRAPPERS = ("bare", "story")
NAMES = ("Tom", "Anna", "Sam", "Maria", "Leo", "Priya")
PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands", "millions")

# One-step word problems; {a} and {b} are the operands in the order of the bare expression.
STORIES = {
    "add": (
        "{name} has {a} apples and buys {b} more. How many apples does {name} have now?",
        "A library has {a} books and receives {b} new books. How many books does the library have now?",
        "{name} read {a} pages on Monday and {b} pages on Tuesday. How many pages did {name} read in total?",
    ),
    "sub": (
        "{name} has {a} apples and gives {b} of them to a friend. How many apples does {name} have left?",
        "A bus has {a} passengers. At the next stop, {b} passengers get off. How many passengers are on the bus now?",
        "A shop had {a} balloons and sold {b} of them. How many balloons does the shop have left?",
    ),
    "mul": (
        "{name} has {a} boxes with {b} pencils in each box. How many pencils does {name} have in total?",
        "A classroom has {a} rows of desks with {b} desks in each row. How many desks are in the classroom?",
        "A baker fills {a} trays with {b} cookies on each tray. How many cookies does the baker make?",
    ),
    "div": (
        "{name} shares {a} candies equally among {b} friends. How many candies does each friend get?",
        "A teacher splits {a} students into {b} equal teams. How many students are in each team?",
        "A farmer packs {a} eggs into boxes of {b}. How many boxes does the farmer fill?",
    ),
}
STORY_REASON = {
    "add": "Putting the two amounts together means adding: {a} + {b}.",
    "sub": "Taking {b} away from {a} means subtracting: {a} - {b}.",
    "mul": "{a} groups of {b} each means multiplying: {a} * {b}.",
    "div": "Splitting {a} into equal parts of this kind means dividing: {a} / {b}.",
}


@dataclass(frozen=True)
class ArithSpec:
    """One component of the family.

    `digits` is the size of both operands (1 -> 1..9, 2 -> 10..99, ...); for "div" it is the size
    of the divisor and of the quotient (division is always exact). `max_result` rejects problems
    whose answer is larger (e.g. two-digit subtraction with small differences).
    """

    op: str
    digits: int = 2
    wrapper: str = "bare"
    max_result: int | None = None

    def __post_init__(self) -> None:
        if self.op not in SYMBOLS:
            raise UserError(f"arith: unknown op '{self.op}' (choose from {sorted(SYMBOLS)})")
        if self.wrapper not in WRAPPERS:
            raise UserError(f"arith: unknown wrapper '{self.wrapper}' (choose from {list(WRAPPERS)})")
        if not 1 <= self.digits <= 6:
            raise UserError(f"arith: digits must be between 1 and 6, got {self.digits}")

    @property
    def key(self) -> str:
        cap = f"-max{self.max_result}" if self.max_result is not None else ""
        return f"{self.op}-d{self.digits}-{self.wrapper}{cap}"


# The default demo mix, `builtin:arith-mix`. Measured SmolLM2-135M-Instruct greedy accuracy on
# these components (32 problems each, "\boxed{}" instruction): 2-digit add 9/32, story add 11/32,
# 1-digit mul 25/32, 2-digit sub 2/32; an equal mix is therefore expected near 37% (47/128), in
# the 20-50% band where distillation has room to help and rollouts still succeed sometimes.
ARITH_MIX = (
    ArithSpec("add", 2, "bare"),
    ArithSpec("add", 2, "story"),
    ArithSpec("mul", 1, "bare"),
    ArithSpec("sub", 2, "bare"),
)
# 80 problems per component: 1-digit bare multiplication has only 81 distinct problems.
ARITH_MIX_COUNT = 320


# ---------------------------------------------------------------------------------------------
# Operands and worked solutions


def _operands(spec: ArithSpec, rng: random.Random) -> tuple[int, int]:
    lo, hi = (1 if spec.digits == 1 else 10 ** (spec.digits - 1)), 10**spec.digits - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    if spec.op == "sub" and a < b:
        a, b = b, a  # non-negative results: negative apples make no story
    if spec.op == "div":
        a = a * b  # a = quotient * divisor, so "a / b" is exact and b is the divisor
    return a, b


def _result(op: str, a: int, b: int) -> int:
    return {"add": a + b, "sub": a - b, "mul": a * b, "div": a // b}[op]


def _digits(n: int) -> list[int]:
    """Least significant first."""
    return [int(c) for c in reversed(str(n))]


def _add_steps(a: int, b: int) -> list[str]:
    if a < 10 and b < 10:
        return [f"{a} + {b} = {a + b}."]
    da, db, carry, lines = _digits(a), _digits(b), 0, []
    for i in range(max(len(da), len(db))):
        x, y = (da[i] if i < len(da) else 0), (db[i] if i < len(db) else 0)
        total = x + y + carry
        terms = f"{x} + {y}" + (f" + {carry} (carried)" if carry else "")
        carry_text = f", write {total % 10} and carry 1" if total >= 10 else ""
        lines.append(f"Add the {PLACES[i]}: {terms} = {total}{carry_text}.")
        carry = total // 10
    if carry:
        lines.append(f"The final carry 1 goes in the {PLACES[len(lines)]} place.")
    return lines + [f"So {a} + {b} = {a + b}."]


def _sub_steps(a: int, b: int) -> list[str]:
    if a < 10:
        return [f"{a} - {b} = {a - b}."]
    da, db, borrow, lines = _digits(a), _digits(b), 0, []
    for i in range(len(da)):
        x, y = da[i] - borrow, (db[i] if i < len(db) else 0)
        owed = " (after lending 1)" if borrow else ""
        if x < y:
            lines.append(f"Subtract the {PLACES[i]}: {x}{owed} is less than {y}, so borrow 1 from the "
                         f"{PLACES[i + 1]}: {x + 10} - {y} = {x + 10 - y}.")
            borrow = 1
        else:
            lines.append(f"Subtract the {PLACES[i]}: {x}{owed} - {y} = {x - y}.")
            borrow = 0
    return lines + [f"So {a} - {b} = {a - b}."]


def _mul_steps(a: int, b: int) -> list[str]:
    if a < 10 and b < 10:
        return [f"{a} * {b} = {a * b}."]
    # Split the operand with more digits into place values and multiply each part.
    big, small = (a, b) if a >= b else (b, a)
    parts = [d * 10**i for i, d in enumerate(_digits(big)) if d][::-1]
    products = [p * small for p in parts]
    lines = [f"Split {big} into {' + '.join(map(str, parts))}."]
    lines += [f"{p} * {small} = {q}." for p, q in zip(parts, products)]
    if len(products) > 1:
        lines.append(f"Add the parts: {' + '.join(map(str, products))} = {a * b}.")
    return lines + [f"So {a} * {b} = {a * b}."]


def _div_steps(a: int, b: int) -> list[str]:
    q = a // b
    return [f"We need the number that {b} multiplies to give {a}.", f"{b} * {q} = {a}.", f"So {a} / {b} = {q}."]


STEPS = {"add": _add_steps, "sub": _sub_steps, "mul": _mul_steps, "div": _div_steps}


def worked_solution(op: str, a: int, b: int, story: bool) -> str:
    """Step-by-step solution ending in `\\boxed{answer}`."""
    lines = [STORY_REASON[op].format(a=a, b=b)] if story else []
    lines += STEPS[op](a, b)
    lines.append(f"The answer is \\boxed{{{_result(op, a, b)}}}.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Problems


def problem_id(op: str, prompt: str) -> str:
    """Stable across runs and machines: a hash of family + prompt text (the op is for readers)."""
    digest = hashlib.sha256(f"{FAMILY}\n{prompt}".encode()).hexdigest()[:12]
    return f"{FAMILY}-{op}-{digest}"


def make_problem(spec: ArithSpec, a: int, b: int, rng: random.Random) -> Problem:
    if spec.wrapper == "bare":
        prompt = f"What is {a} {SYMBOLS[spec.op]} {b}?"
    else:
        prompt = rng.choice(STORIES[spec.op]).format(name=rng.choice(NAMES), a=a, b=b)
    return Problem(id=problem_id(spec.op, prompt), prompt=prompt, answer=str(_result(spec.op, a, b)),
                   reference=worked_solution(spec.op, a, b, spec.wrapper == "story"),
                   source=f"{FAMILY}:{spec.key}", kind="math")


def generate_component(spec: ArithSpec, count: int, seed: int = 0) -> list[Problem]:
    """`count` distinct problems of one component; UserError if the component has fewer."""
    rng = random.Random(f"{FAMILY}:{seed}:{spec.key}")  # str seeds are hashed with sha512: stable
    problems: dict[str, Problem] = {}
    for _ in range(50 * count + 1000):  # rejection sampling; generous for small spaces
        if len(problems) >= count:
            break
        a, b = _operands(spec, rng)
        if spec.max_result is not None and _result(spec.op, a, b) > spec.max_result:
            continue
        problem = make_problem(spec, a, b, rng)
        problems.setdefault(problem.id, problem)
    if len(problems) < count:
        raise UserError(f"arith component {spec.key} has too few distinct problems for count={count} "
                        f"(found {len(problems)}); lower count or widen the component")
    return list(problems.values())


def generate_mix(components: tuple[ArithSpec, ...] | list[ArithSpec], count: int,
                 seed: int = 0) -> list[Problem]:
    """`count` problems split equally between components (the first ones take the remainder).

    The result interleaves the components round-robin, so any prefix (`problems[:64]`) is mixed.
    """
    if not components:
        raise UserError("arith: at least one component is needed")
    if count < 0:
        raise UserError(f"arith: count must be non-negative, got {count}")
    shares = [count // len(components) + (i < count % len(components)) for i in range(len(components))]
    parts = [generate_component(spec, share, seed) for spec, share in zip(components, shares)]
    seen: set[str] = set()
    out = []
    for problem in (p for group in zip_longest(*parts) for p in group if p is not None):
        if problem.id not in seen:  # two components may share a text (e.g. listed twice)
            seen.add(problem.id)
            out.append(problem)
    return out


def arith_mix_problems(count: int = ARITH_MIX_COUNT, seed: int = 0) -> list[Problem]:
    """`builtin:arith-mix`: the default demo mix `ARITH_MIX`."""
    return generate_mix(ARITH_MIX, count, seed)


def arith_problems(ops: list[str] | tuple[str, ...] = ("add",), digits: int = 2,
                   wrapper: list[str] | tuple[str, ...] = ("bare",), count: int = ARITH_MIX_COUNT,
                   seed: int = 0, max_result: int | None = None) -> list[Problem]:
    """`builtin:arith?...`: one component per (op, wrapper) pair, equal shares."""
    if isinstance(ops, str):
        ops = [ops]
    if isinstance(wrapper, str):
        wrapper = [wrapper]
    components = [ArithSpec(op, digits, w, max_result) for op in ops for w in wrapper]
    return generate_mix(components, count, seed)

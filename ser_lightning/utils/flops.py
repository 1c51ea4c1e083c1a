"""FLOPs as PyTorch's own counter counts them (`torch.utils.flop_counter.FlopCounterMode`), and exact polynomial fits
of such counts in a few integer lengths, so that a count taken at a handful of lengths serves every length.

What the counter counts: matrix products (mm, addmm, bmm, baddbmm), convolutions and the fused attention kernels,
each as 2 FLOPs per multiply-add, forward and backward; nothing for element-wise work (GELU, LayerNorm, softmax,
masking, optimizer steps). `counting()` runs attention on SDPA's math backend: there it is two counted bmm (Q K^T and
A V, 2 * 2 * T^2 * d per block); PyTorch's CPU flash kernel is absent from the counter's registry (it would count 0).

A fit: count(point) = sum_t c_t * term_t(point) with terms x_v^p of the point's lengths, solved exactly over the
rationals from as many points as terms (the counts are integers) and verified on further points; a count that is
not such a polynomial is detected and `Counted` then counts each distinct point instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from fractions import Fraction
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

CHECKS = 2  # extra points each fit must reproduce exactly


@contextmanager
def counting() -> Iterator[Any]:
    """FlopCounterMode with attention on SDPA's math backend (two counted bmm; see the module docstring) and
    torch.compile'd modules run eagerly (`model.compile`: the same operations, without compiling every length)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.compiler.set_stance("force_eager"), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        yield counter


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of `fn()` (forward, and backward when fn calls it) as torch.utils.flop_counter counts them."""
    with counting() as counter:
        fn()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------- exact fits
# A term is (variable index, power); (-1, 0) is the constant. A point is a tuple of ints (the lengths).
Term = Tuple[int, int]


def _row(point: Sequence[int], terms: Sequence[Term]) -> List[Fraction]:
    return [Fraction(1) if v < 0 else Fraction(int(point[v]) ** p) for v, p in terms]


def _rank(rows: List[List[Fraction]]) -> int:
    m = [list(r) for r in rows]
    rank, cols = 0, len(m[0]) if m else 0
    for c in range(cols):
        pivot = next((i for i in range(rank, len(m)) if m[i][c] != 0), None)
        if pivot is None:
            continue
        m[rank], m[pivot] = m[pivot], m[rank]
        for i in range(len(m)):
            if i != rank and m[i][c] != 0:
                f = m[i][c] / m[rank][c]
                m[i] = [a - f * b for a, b in zip(m[i], m[rank])]
        rank += 1
    return rank


def _solve(rows: List[List[Fraction]], values: List[int]) -> List[Fraction]:
    """The exact solution of a square non-singular system (Gauss-Jordan over the rationals)."""
    n = len(rows)
    m = [list(r) + [Fraction(v)] for r, v in zip(rows, values)]
    for c in range(n):
        pivot = next(i for i in range(c, n) if m[i][c] != 0)
        m[c], m[pivot] = m[pivot], m[c]
        for i in range(n):
            if i != c and m[i][c] != 0:
                f = m[i][c] / m[c][c]
                m[i] = [a - f * b for a, b in zip(m[i], m[c])]
    return [m[i][n] / m[i][i] for i in range(n)]


def fit_counts(count: Callable[[Tuple[int, ...]], int], terms: Sequence[Term], candidates: Sequence[Tuple[int, ...]],
               checks: int = CHECKS) -> Optional[List[Fraction]]:  # fmt: skip
    """The exact coefficients of count(point) = sum_t c_t * term_t(point), from as many candidate points as there are
    terms (chosen for full rank), verified on `checks` further points; None when a check fails (not such a
    polynomial) or the candidates do not determine the terms."""
    chosen: List[Tuple[int, ...]] = []
    rows: List[List[Fraction]] = []
    rest: List[Tuple[int, ...]] = []
    for point in dict.fromkeys(tuple(p) for p in candidates):
        row = _row(point, terms)
        if len(chosen) < len(terms) and _rank(rows + [row]) > len(rows):
            chosen.append(point)
            rows.append(row)
        else:
            rest.append(point)
    if len(chosen) < len(terms) or len(rest) < checks:
        return None
    coefficients = _solve(rows, [count(p) for p in chosen])
    for point in rest[:checks]:
        if evaluate(coefficients, terms, point) != count(point):
            return None
    return coefficients


def evaluate(coefficients: Sequence[Fraction], terms: Sequence[Term], point: Sequence[int]) -> Fraction:
    return sum((c * x for c, x in zip(coefficients, _row(point, terms))), Fraction(0))


class Counted:
    """A count as a function of the lengths: an exact polynomial fit, else one count per distinct point (memoised
    in `store`, the disk cache's section for it)."""

    def __init__(self, store: Dict[str, Any], count: Callable[[Tuple[int, ...]], int], terms: Sequence[Term],
                 candidates: Sequence[Tuple[int, ...]]) -> None:  # fmt: skip
        self.store, self._count, self.terms = store, count, [tuple(t) for t in terms]
        self.changed = False
        if "coefficients" not in store and "by_point" not in store:
            fit = fit_counts(self.count, self.terms, candidates)
            if fit is None:
                store["by_point"] = {}
            else:
                store["terms"] = [list(t) for t in self.terms]
                store["coefficients"] = [f"{c.numerator}/{c.denominator}" for c in fit]
            self.changed = True
        self.coefficients = [Fraction(c) for c in store.get("coefficients", [])]

    def count(self, point: Tuple[int, ...]) -> int:
        return int(self._count(tuple(int(x) for x in point)))

    def __call__(self, point: Sequence[int]) -> float:
        if self.coefficients:
            return float(evaluate(self.coefficients, self.terms, point))
        key = ",".join(str(int(x)) for x in point)
        if key not in self.store["by_point"]:
            self.store["by_point"][key] = self.count(tuple(point))
            self.changed = True
        return float(self.store["by_point"][key])


def ceil_div(n: int, s: int) -> int:
    return -(-int(n) // int(s))

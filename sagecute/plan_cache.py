"""Per-argument-signature caching of host-side checks and decisions.

Note [Plan caches]
------------------
Validating a call, choosing its kernel and deriving its compile key read only
shapes, strides, dtypes, devices and options, yet redoing them on every call cost
more host time than a short sequence's kernels take (``perf/host_overhead.py``).
The API, the sm90 launch and the preprocessing each keep a table from such a
signature to what their checks concluded; what depends on more than the
signature (pointer alignment) is still checked per call.
"""

from __future__ import annotations

from typing import Callable, TypeVar

MAX_PLANS = 4096  # a bound, not an LRU: a plan is cheap to rebuild

P = TypeVar("P")


def cached_plan(table: dict, key, build: Callable[[], P]) -> P:
    """``table[key]``, made by ``build()`` on a miss (``build`` raises for bad input,
    and nothing is stored then); a full table is emptied first."""
    plan = table.get(key)
    if plan is None:
        plan = build()
        if len(table) >= MAX_PLANS:
            table.clear()
        table[key] = plan
    return plan

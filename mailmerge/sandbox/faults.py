"""Seeded fault injection: which request fails, and how.

Each kind of request ("request": a top-level Graph call; "item": one `$batch` item; "batch": a whole
`$batch`; "token": the token endpoint) draws from its own random stream seeded by `Faults.seed`, three
numbers per request whatever happens, so the same seed and the same order of requests always give the
same faults, and a fault of one kind does not shift the dice of another.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .profile import Chance, Every, Faults

_SITE_KINDS: dict[str, tuple[tuple[str, str], ...]] = {
    # site: ((kind, Faults field), ...) in the order probabilities are stacked
    "request": (
        ("server_error", "server_error"),
        ("throttle", "throttle"),
        ("reset", "reset"),
        ("hang", "hang"),
        ("accepted_but_error", "accepted_but_error"),
        ("slow", "slow"),
    ),
    "item": (
        ("server_error", "server_error"),
        ("throttle", "throttle"),
        ("accepted_but_error", "accepted_but_error"),
        ("slow", "slow"),
    ),
    "batch": (
        ("server_error", "batch_server_error"),
        ("reset", "batch_reset"),
        ("hang", "batch_hang"),
        ("accepted_but_error", "batch_accepted_but_error"),
    ),
    "token": (("token_error", "token_error"),),
}


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault decision: its kind and two uniform numbers that pick its variant."""

    kind: str
    variant: float
    extra: float

    def pick(self, options: tuple[str, ...] | tuple[int, ...]) -> str | int:
        return options[min(int(self.variant * len(options)), len(options) - 1)]


class FaultPlan:
    """Decides, request by request, whether to inject a fault. Used from the server loop only."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._kinds: dict[str, tuple[tuple[str, Chance], ...]] = {}
        for site, kinds in _SITE_KINDS.items():
            active = tuple(
                (kind, getattr(faults, name)) for kind, name in kinds if _active(getattr(faults, name))
            )
            self._kinds[site] = active
        self._rng = {site: random.Random(f"{faults.seed}/{site}") for site in _SITE_KINDS}
        self._counts: dict[tuple[str, str], int] = {}

    def active(self, site: str) -> bool:
        return bool(self._kinds[site])

    def decide(self, site: str) -> Fault | None:
        kinds = self._kinds[site]
        if not kinds:
            return None
        rng = self._rng[site]
        r, variant, extra = rng.random(), rng.random(), rng.random()
        chosen = None
        for kind, chance in kinds:
            if isinstance(chance, Every):
                count = self._counts[site, kind] = self._counts.get((site, kind), 0) + 1
                if chosen is None and count % chance.n == 0:
                    chosen = kind
        if chosen is None:
            threshold = 0.0
            for kind, chance in kinds:
                if not isinstance(chance, Every):
                    threshold += chance
                    if r < threshold:
                        chosen = kind
                        break
        return Fault(chosen, variant, extra) if chosen else None


def _active(chance: Chance) -> bool:
    return isinstance(chance, Every) or chance > 0

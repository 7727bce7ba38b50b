"""What every route shares: the clock, the live profile, the fault plan, the directory and the mail.

One object, so that `Sandbox.set_faults` / `set_limits` swap a single attribute (an atomic assignment)
and every route sees the change on its next request.
"""

from __future__ import annotations

import dataclasses
import random

from .clock import Clock
from .directory import Directory
from .faults import FaultPlan
from .mailstore import MailStore
from .outbox import Outbox
from .profile import Faults, Limits, Profile
from .throttle import Throttle
from .wire import retry_after


class SandboxState:
    def __init__(self, profile: Profile, clock: Clock, outbox: Outbox | None) -> None:
        self.profile = profile
        self.clock = clock
        self.outbox = outbox
        self.directory = Directory()
        self.plan = FaultPlan(profile.faults)
        self.throttle = Throttle(profile.limits)
        self.store = MailStore(
            lambda: self.profile.sent_items_delay_seconds, lambda: self.profile.ndr_delay_seconds
        )
        self.bad_recipients: set[str] = set()
        # Separate streams so that latency draws do not shift the order of batch responses.
        self.latency_rng = random.Random(f"{profile.seed}/latency")
        self.batch_rng = random.Random(f"{profile.seed}/batch")
        self.graph_base = ""
        self.host = ""

    def set_faults(self, faults: Faults) -> None:
        self.plan = FaultPlan(faults)
        self.profile = dataclasses.replace(self.profile, faults=faults)

    def set_limits(self, limits: Limits) -> None:
        self.throttle.limits = limits
        self.profile = dataclasses.replace(self.profile, limits=limits)

    def latency(self) -> float:
        model = self.profile.latency_model
        return 0.0 if model.is_zero else model.sample(self.latency_rng)

    def retry_after(self, seconds: float) -> str:
        return retry_after(seconds, self.profile.retry_after_style, self.clock.time())

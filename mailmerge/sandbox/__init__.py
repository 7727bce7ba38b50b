"""A local emulator of Microsoft Graph's mail API and Entra ID ("the sandbox").

It is written to Graph's documented wire contract (shared/GRAPH-CONTRACT.md) and imports nothing from
the rest of mailmerge, so a misunderstanding in the client cannot hide behind the same one here.
"""

from .clock import ScaledClock, SystemClock
from .mailstore import DeliveredMessage
from .profile import AppSpec, Every, Faults, Latency, Limits, MailboxSpec, Profile
from .server import Sandbox

__all__ = [
    "AppSpec",
    "DeliveredMessage",
    "Every",
    "Faults",
    "Latency",
    "Limits",
    "MailboxSpec",
    "Profile",
    "Sandbox",
    "ScaledClock",
    "SystemClock",
]

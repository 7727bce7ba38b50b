"""Sending through Microsoft Graph: transport, wire format, throttling, retry policy and the engine."""

"""Helpers for tests and benchmarks (a studio in a subprocess, a loopback Ray cluster); not shipped
with the studio."""

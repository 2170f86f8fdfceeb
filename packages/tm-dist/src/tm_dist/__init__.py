"""Distributed rollouts for TrackMaster.

Nothing is implemented yet. This package is where the following will live: rollout workers
that drive tm-gym environments on game machines, a trainer-side server that collects their
experience and broadcasts policy weights, and the wire format between them (msgpack,
zstandard-compressed, carried over TLS by tlspyo; never pickle).
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"

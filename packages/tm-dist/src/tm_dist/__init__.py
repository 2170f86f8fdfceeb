"""Distributed rollouts for TrackMaster.

Rollout workers drive tm-gym environments on game machines and send their episodes, through a
tlspyo relay over TLS, to a trainer that learns with tm-algos and broadcasts weights back.

* :mod:`tm_dist.roles` — ``run_server``, ``run_worker``, ``run_trainer``; :mod:`tm_dist.cli` — the
  ``tm-dist`` command.
* :mod:`tm_dist.wire` — the versioned msgpack message schema (also tlspyo's own framing).
* :mod:`tm_dist.codec` — episodes as the newest frame of each step, zstd-compressed, rebuilt exactly.
* :mod:`tm_dist.transport` — ``RelayServer`` and ``Link`` over tlspyo (TLS, TCP_NODELAY, clear
  authentication errors, frame limits).
* :mod:`tm_dist.learner`, :mod:`tm_dist.rollout` — the trainer's and the worker's cores.
* :mod:`tm_dist.settings`, :mod:`tm_dist.security`, :mod:`tm_dist.certs` — settings, secrets,
  certificates.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"

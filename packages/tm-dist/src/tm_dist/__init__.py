"""Distributed rollouts for TrackMaster.

Rollout workers drive tm-gym environments on game machines and send their episodes, through a
tlspyo relay over TLS, to a trainer that learns with tm-algos and broadcasts weights back.

The public API is importable from ``tm_dist`` itself; each name is loaded on first use (PEP 562),
so ``import tm_dist`` loads neither PyTorch nor Twisted::

    import os
    import tm_dist

    settings = tm_dist.load_settings("tm-dist.toml", env=os.environ, prompt=tm_dist.tty_prompt())
    report = tm_dist.run_worker(settings, max_episodes=10)

Modules:

* :mod:`tm_dist.roles` — ``run_server``, ``run_worker``, ``run_trainer``; :mod:`tm_dist.cli` —
  the ``tm-dist`` command (:mod:`tm_dist.cli_roles`: each command's console output).
* :mod:`tm_dist.wire` — the versioned msgpack message schema (also tlspyo's own framing).
* :mod:`tm_dist.codec` — episodes as the newest frame of each step, zstd-compressed, rebuilt
  exactly.
* :mod:`tm_dist.transport` — ``RelayServer`` and ``Link`` over tlspyo (TLS, TCP_NODELAY, clear
  authentication errors, frame limits).
* :mod:`tm_dist.learner`, :mod:`tm_dist.rollout` — the trainer's and the worker's cores;
  :mod:`tm_dist.validation` — what the trainer accepts from a worker; :mod:`tm_dist.testing`
  — poisoned chunks for tests and benchmarks.
* :mod:`tm_dist.settings`, :mod:`tm_dist.security`, :mod:`tm_dist.certs` — settings, secrets,
  certificates.
* :mod:`tm_dist.errors` — :class:`TMDistError`, the base of every error tm_dist raises.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # name → the module that defines it
    "TMDistError": "tm_dist.errors",
    "InvalidTypeError": "tm_dist.errors",
    "InvalidValueError": "tm_dist.errors",
    "MissingFileError": "tm_dist.errors",
    "StateError": "tm_dist.errors",
    "DEFAULT_PORT": "tm_dist.settings",
    "ConnectionSettings": "tm_dist.settings",
    "DistSettings": "tm_dist.settings",
    "SettingsError": "tm_dist.settings",
    "TrainerSettings": "tm_dist.settings",
    "WorkerSettings": "tm_dist.settings",
    "example_config": "tm_dist.settings",
    "load_settings": "tm_dist.settings",
    "InsecureConnectionError": "tm_dist.security",
    "PasswordError": "tm_dist.security",
    "Secret": "tm_dist.security",
    "tty_prompt": "tm_dist.security",
    "CertFiles": "tm_dist.certs",
    "CertificateError": "tm_dist.certs",
    "CertificateExistsError": "tm_dist.certs",
    "cert_fingerprint": "tm_dist.certs",
    "check_cert": "tm_dist.certs",
    "make_cert": "tm_dist.certs",
    "RelayServer": "tm_dist.transport.relay",
    "RelayStats": "tm_dist.transport.relay",
    "Link": "tm_dist.transport.link",
    "LinkStats": "tm_dist.transport.link",
    "free_local_port": "tm_dist.transport.options",
    "AuthenticationError": "tm_dist.transport.errors",
    "DisconnectedError": "tm_dist.transport.errors",
    "MessageTooLargeError": "tm_dist.transport.errors",
    "ReceiveTimeoutError": "tm_dist.transport.errors",
    "RelayUnreachableError": "tm_dist.transport.errors",
    "TLSHandshakeError": "tm_dist.transport.errors",
    "TransportError": "tm_dist.transport.errors",
    "TrainerReport": "tm_dist.roles",
    "WorkerReport": "tm_dist.roles",
    "run_server": "tm_dist.roles",
    "run_trainer": "tm_dist.roles",
    "run_worker": "tm_dist.roles",
    "MessageError": "tm_dist.wire",
    "CodecError": "tm_dist.codec",
    "InvalidChunkError": "tm_dist.validation",
}

__all__ = [
    "DEFAULT_PORT",
    "AuthenticationError",
    "CertFiles",
    "CertificateError",
    "CertificateExistsError",
    "CodecError",
    "ConnectionSettings",
    "DisconnectedError",
    "DistSettings",
    "InsecureConnectionError",
    "InvalidChunkError",
    "InvalidTypeError",
    "InvalidValueError",
    "Link",
    "LinkStats",
    "MessageError",
    "MessageTooLargeError",
    "MissingFileError",
    "PasswordError",
    "ReceiveTimeoutError",
    "RelayServer",
    "RelayStats",
    "RelayUnreachableError",
    "Secret",
    "SettingsError",
    "StateError",
    "TLSHandshakeError",
    "TMDistError",
    "TrainerReport",
    "TrainerSettings",
    "TransportError",
    "WorkerReport",
    "WorkerSettings",
    "__version__",
    "cert_fingerprint",
    "check_cert",
    "example_config",
    "free_local_port",
    "load_settings",
    "make_cert",
    "run_server",
    "run_trainer",
    "run_worker",
    "tty_prompt",
]

if TYPE_CHECKING:
    from tm_dist.certs import (
        CertFiles,
        CertificateError,
        CertificateExistsError,
        cert_fingerprint,
        check_cert,
        make_cert,
    )
    from tm_dist.codec import CodecError
    from tm_dist.errors import (
        InvalidTypeError,
        InvalidValueError,
        MissingFileError,
        StateError,
        TMDistError,
    )
    from tm_dist.roles import TrainerReport, WorkerReport, run_server, run_trainer, run_worker
    from tm_dist.security import InsecureConnectionError, PasswordError, Secret, tty_prompt
    from tm_dist.settings import (
        DEFAULT_PORT,
        ConnectionSettings,
        DistSettings,
        SettingsError,
        TrainerSettings,
        WorkerSettings,
        example_config,
        load_settings,
    )
    from tm_dist.transport.errors import (
        AuthenticationError,
        DisconnectedError,
        MessageTooLargeError,
        ReceiveTimeoutError,
        RelayUnreachableError,
        TLSHandshakeError,
        TransportError,
    )
    from tm_dist.transport.link import Link, LinkStats
    from tm_dist.transport.options import free_local_port
    from tm_dist.transport.relay import RelayServer, RelayStats
    from tm_dist.validation import InvalidChunkError
    from tm_dist.wire import MessageError


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tm_dist' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

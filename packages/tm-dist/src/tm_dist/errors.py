"""The root of the errors tm_dist raises on purpose, and its general-purpose errors.

Every error tm_dist raises on purpose derives from :class:`TMDistError`, itself a
:class:`~tm_gym.error.TrackMasterError` (the root shared by tm-gym, tm-algos and tm-dist, which
the command-line tools catch). Errors about one subject live beside the code that raises them and
keep the built-in class callers catch today as a second base:

* :class:`~tm_dist.settings.SettingsError` — a setting (also a
  :class:`~tm_gym.core.config.ConfigError`);
* :class:`~tm_dist.security.PasswordError`, :class:`~tm_dist.security.InsecureConnectionError`
  — the password and the plain-TCP policy;
* :class:`~tm_dist.certs.CertificateError` — a TLS certificate or key file;
* :class:`~tm_dist.wire.MessageError` — a network message that does not decode;
* :class:`~tm_dist.codec.CodecError` — an episode payload that does not rebuild;
* :class:`~tm_dist.transport.errors.TransportError` and its subclasses
  (``AuthenticationError``, ``RelayUnreachableError``, ``TLSHandshakeError``,
  ``MessageTooLargeError``), and ``ReceiveTimeoutError`` — the relay and the links;
* :class:`InvalidValueError`, :class:`InvalidTypeError`, :class:`MissingFileError` and
  :class:`StateError` below — an argument of any other function or class, or a call out of order.

Messages state the value received, what was expected and how to fix it. This module imports
nothing but :mod:`tm_gym.error`, so catching these costs no import of PyTorch or Twisted.
"""

from __future__ import annotations

from tm_gym.error import TrackMasterError

__all__ = [
    "InvalidTypeError",
    "InvalidValueError",
    "MissingFileError",
    "StateError",
    "TMDistError",
    "TrackMasterError",
]


class TMDistError(TrackMasterError):
    """Base class of every error raised on purpose by tm_dist."""


class InvalidValueError(TMDistError, ValueError):
    """An argument has a value the function or class cannot use (out of range, unknown name);
    the message names the argument and what is expected."""


class InvalidTypeError(TMDistError, TypeError):
    """An argument is of a type the function or class cannot use; the message names it and the
    type expected."""


class MissingFileError(TMDistError, FileNotFoundError):
    """A file tm_dist needs (a TLS certificate, a key) is not where it was told to look; the
    message says which file, where, and what creates it."""


class StateError(TMDistError, RuntimeError):
    """An object was used out of order (a rollout before the first weights, a step of the
    trainer's placeholder environment)."""

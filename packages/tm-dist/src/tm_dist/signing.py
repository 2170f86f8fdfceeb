"""The trainer's signatures: only the holder of the trainer's key can steer the workers.

Workers act on two kinds of message from the network: :class:`~tm_dist.wire.Weights` (the
policy they drive with, and the environment they build) and :class:`~tm_dist.wire.Disconnect`
(stop). Whoever holds a worker's relay password can put bytes on the wire, so each of those
messages carries an Ed25519 signature made with the trainer's private key, and a worker acts on
a message only when the signature verifies against the trainer's public key.

=========================== =======================================================================
File (in ``keys_dir``)      Who holds it
=========================== =======================================================================
``trainer_signing.pem``     The trainer machine only: the private key, PKCS8 PEM, mode 0600.
``trainer_signing.pub``     Every worker: the public key (PEM). Copy it beside ``certificate.pem``.
=========================== =======================================================================

``tm-dist make-cert`` (:func:`tm_dist.certs.make_cert`) writes both. What is signed is a domain
string, the message type and the message's fields (for weights: the version and the SHA-256 of
the safetensors bytes and of the JSON configuration) and the time it was signed
(``issued_ns``), so a signature cannot be moved to another message, another type, or another
version, and a worker can refuse an old signed message replayed after a newer one (it keeps the
newest ``issued_ns`` it accepted; see :class:`tm_dist.roles` for the rule).

Example:
    >>> key = generate_signing_key()
    >>> signed = sign_message(Disconnect(worker="w1", reason="bad chunks"), key)
    >>> verify_message(signed, key.public_key())  # raises SignatureError when it does not verify
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Final, TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tm_dist.errors import MissingFileError, TMDistError
from tm_dist.wire import SIGNATURE_SIZE, Disconnect, Weights

__all__ = [
    "SIGNATURE_SIZE",
    "SIGNING_KEY_FILE",
    "VERIFY_KEY_FILE",
    "SignatureError",
    "SigningKeyError",
    "SigningKeyMissingError",
    "generate_signing_key",
    "load_signing_key",
    "load_verify_key",
    "private_key_pem",
    "public_key_pem",
    "sign_message",
    "signed_bytes",
    "verify_message",
]

_log = logging.getLogger(__name__)

SIGNING_KEY_FILE: Final = "trainer_signing.pem"
"""The trainer's private signing key in ``keys_dir`` (PKCS8 PEM, mode 0600; trainer only)."""
VERIFY_KEY_FILE: Final = "trainer_signing.pub"
"""The trainer's public key in ``keys_dir`` (PEM; every worker needs it)."""

_DOMAIN: Final = b"tm-dist trainer signature v1\x00"
_MAX_KEY_FILE = 16 * 1024  # an Ed25519 PEM is about 120 bytes
_HINT: Final = (
    f"Run `tm-dist make-cert` on the trainer's side (it writes {SIGNING_KEY_FILE} and "
    f"{VERIFY_KEY_FILE} into KEYS_DIR), keep {SIGNING_KEY_FILE} on the trainer machine and copy "
    f"{VERIFY_KEY_FILE} to KEYS_DIR on every worker"
)

Signable = TypeVar("Signable", bound=Weights | Disconnect)


class SigningKeyError(TMDistError, ValueError):
    """A signing or verification key file is unreadable, corrupt or not an Ed25519 key; the
    message names the file and how to make a new one."""


class SigningKeyMissingError(SigningKeyError, MissingFileError):
    """The key file is not in ``keys_dir``; the message says which and how to create it."""


class SignatureError(TMDistError, ValueError):
    """A message is unsigned, or its signature was not made by the trainer's key."""


# -- keys ------------------------------------------------------------------------------------


def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key for a trainer."""
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """``key`` as unencrypted PKCS8 PEM (what :data:`SIGNING_KEY_FILE` holds)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    """``key`` as SubjectPublicKeyInfo PEM (what :data:`VERIFY_KEY_FILE` holds)."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_path(path: Path | str, name: str) -> Path:
    p = Path(path).expanduser()
    return p / name if p.is_dir() else p


def _read_key_file(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise SigningKeyMissingError(f"the {what} {path} is missing. {_HINT}.")
    try:
        size = path.stat().st_size
        if size > _MAX_KEY_FILE:
            raise SigningKeyError(
                f"{path} holds {size} bytes: not an Ed25519 key PEM (about 120 bytes). {_HINT}."
            )
        return path.read_bytes()
    except OSError as e:
        raise SigningKeyError(f"cannot read the {what} {path}: {e}") from e


def load_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """The trainer's private key from ``path`` (a file, or ``keys_dir`` holding
    :data:`SIGNING_KEY_FILE`).

    Raises:
        SigningKeyMissingError: the file does not exist (the message says how to create it).
        SigningKeyError: it is not an unencrypted PEM Ed25519 private key (naming the file).
    """
    file = _key_path(path, SIGNING_KEY_FILE)
    data = _read_key_file(file, "trainer's signing key")
    mode = stat.S_IMODE(file.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        _log.warning(
            "%s has mode %o: other users can read the trainer's signing key, and whoever reads "
            "it can steer every worker; run chmod 600 %s",
            file,
            mode,
            file,
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise SigningKeyError(
            f"{file} is not an unencrypted PEM private key ({e}). {_HINT} "
            "(with --overwrite to replace a broken one)."
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"{file} holds a {type(key).__name__}, expected an Ed25519 private key. {_HINT}."
        )
    return key


def load_verify_key(path: Path | str) -> Ed25519PublicKey:
    """The trainer's public key from ``path`` (a file, or ``keys_dir`` holding
    :data:`VERIFY_KEY_FILE`).

    Raises:
        SigningKeyMissingError: the file does not exist (the message says where it comes from).
        SigningKeyError: it is not a PEM Ed25519 public key (naming the file).
    """
    file = _key_path(path, VERIFY_KEY_FILE)
    data = _read_key_file(file, "trainer's public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise SigningKeyError(
            f"{file} is not a PEM public key ({e}). Copy {VERIFY_KEY_FILE} again from the "
            "trainer's keys folder, unchanged."
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(
            f"{file} holds a {type(key).__name__}, expected the trainer's Ed25519 public key. "
            f"{_HINT}."
        )
    return key


# -- signatures ------------------------------------------------------------------------------


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def signed_bytes(msg: Weights | Disconnect) -> bytes:
    """What the trainer signs for ``msg``: domain, type and fields (hashed where long)."""
    if isinstance(msg, Weights):
        return b"".join(
            (
                _DOMAIN,
                b"weights\x00",
                msg.version.to_bytes(8, "big"),
                msg.issued_ns.to_bytes(8, "big"),
                _digest(msg.safetensors),
                _digest(msg.config_json.encode("utf-8")),
            )
        )
    if isinstance(msg, Disconnect):
        return b"".join(
            (
                _DOMAIN,
                b"disconnect\x00",
                msg.issued_ns.to_bytes(8, "big"),
                _digest(msg.worker.encode("utf-8")),
                _digest(msg.reason.encode("utf-8")),
            )
        )
    raise SignatureError(
        f"cannot sign a {type(msg).__name__}: only Weights and Disconnect are signed"
    )


_stamp_lock = threading.Lock()
_last_stamp = 0


def _stamp() -> int:
    """The wall clock in ns, strictly increasing within this process."""
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(time.time_ns(), _last_stamp + 1)
        return _last_stamp


def sign_message(msg: Signable, key: Ed25519PrivateKey) -> Signable:
    """``msg`` stamped with the time (``issued_ns``, strictly increasing in this process) and
    signed by the trainer's private ``key``."""
    stamped = dataclasses.replace(msg, issued_ns=_stamp())
    return dataclasses.replace(stamped, signature=key.sign(signed_bytes(stamped)))


def verify_message(msg: Weights | Disconnect, key: Ed25519PublicKey) -> None:
    """Return if the trainer's ``key`` signed ``msg``.

    Raises:
        SignatureError: ``msg`` carries no signature, or one not made by ``key`` for exactly
            these fields.
    """
    name = type(msg).__name__
    if not msg.signature:
        raise SignatureError(
            f"unsigned {name}: this worker only acts on messages signed by the trainer's key "
            f"({VERIFY_KEY_FILE}); is the trainer an older tm-dist, or someone else?"
        )
    try:
        key.verify(msg.signature, signed_bytes(msg))
    except InvalidSignature:
        raise SignatureError(
            f"{name} with a signature that the trainer's key ({VERIFY_KEY_FILE}) did not make: "
            "sent by someone else, or the trainer uses another key (copy its "
            f"{VERIFY_KEY_FILE} here again)"
        ) from None

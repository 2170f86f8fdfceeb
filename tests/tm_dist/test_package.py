"""The tm_dist package: its version, its public API (pinned), and a cheap ``import tm_dist``."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

import tm_dist
from tm_dist.errors import TMDistError
from tm_gym.error import TrackMasterError

PUBLIC_API = [
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


def test_version_matches_installed_metadata() -> None:
    assert tm_dist.__version__ == importlib.metadata.version("tm-dist")


def test_public_api_is_pinned() -> None:
    assert tm_dist.__all__ == PUBLIC_API


@pytest.mark.parametrize("name", PUBLIC_API)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(tm_dist, name) is not None
    assert name in dir(tm_dist)


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = tm_dist.nope


def test_every_error_derives_from_the_package_base() -> None:
    errors = [getattr(tm_dist, n) for n in PUBLIC_API if n.endswith("Error")]
    assert errors and all(issubclass(e, TMDistError) for e in errors)
    assert issubclass(TMDistError, TrackMasterError)


def test_errors_keep_their_builtin_bases() -> None:
    """``except ValueError`` (or ConnectionError, TimeoutError, ...) still catches them."""
    assert issubclass(tm_dist.SettingsError, ValueError)
    assert issubclass(tm_dist.PasswordError, ValueError)
    assert issubclass(tm_dist.InsecureConnectionError, ValueError)
    assert issubclass(tm_dist.CertificateError, ValueError)
    assert issubclass(tm_dist.CertificateExistsError, FileExistsError)
    assert issubclass(tm_dist.MessageError, ValueError)
    assert issubclass(tm_dist.CodecError, ValueError)
    assert issubclass(tm_dist.TransportError, RuntimeError)
    assert issubclass(tm_dist.RelayUnreachableError, ConnectionError)
    assert issubclass(tm_dist.TLSHandshakeError, ConnectionError)
    assert issubclass(tm_dist.MessageTooLargeError, ValueError)
    assert issubclass(tm_dist.ReceiveTimeoutError, TimeoutError)
    assert issubclass(tm_dist.MissingFileError, FileNotFoundError)
    assert issubclass(tm_dist.InvalidChunkError, ValueError)
    assert issubclass(tm_dist.DisconnectedError, tm_dist.TransportError)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import tm_dist",
        "import tm_dist.errors, tm_dist.transport.errors",
        "from tm_dist import load_settings, TransportError, SettingsError, TMDistError",
        "from tm_dist.transport import AuthenticationError, ReceiveTimeoutError",
    ],
)
def test_the_package_face_imports_no_torch_nor_twisted(code: str) -> None:
    loaded = _modules_after(code)
    heavy = {"torch", "stable_baselines3", "twisted", "tlspyo", "OpenSSL"} & loaded
    assert not heavy, f"{code!r} imported {sorted(heavy)}"

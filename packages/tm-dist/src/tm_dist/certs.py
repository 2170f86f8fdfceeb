"""Self-signed TLS certificates for tm-dist, in the layout tlspyo reads, and the trainer's keys.

tlspyo 0.3.0 looks for two files in its ``keys_dir``; tm-dist adds three for the trainer's role
(see :mod:`tm_dist.signing` and the relay's per-role passwords):

======================= ========================================================================
File                    Who needs it
======================= ========================================================================
``certificate.pem``     Everybody. The relay presents it; every endpoint trusts exactly this
                        certificate and checks that it names the host given as ``hostname``
                        (tlspyo's default, and ours, is ``"default"``).
``key.pem``             The relay machine only (``tm-dist server``). Never copy it elsewhere.
``trainer_signing.pem`` The trainer machine only: the Ed25519 key that signs its weights.
``trainer_signing.pub`` Every worker: it verifies the trainer's weights with it.
``trainer_password``    The relay and the trainer: the password of the trainer's role (workers
                        have their own, ``TM_DIST_PASSWORD``, and cannot act as the trainer).
======================= ========================================================================

tlspyo's own helper no longer works with current pyOpenSSL, so :func:`make_cert` builds the pair
with the ``cryptography`` package: an ECDSA P-256 key and a certificate signed by that key,
valid for ``days`` days, whose subject alternative name is ``hostname``.

Typical use, on the server machine::

    files = make_cert(Path("~/.config/tm-dist/keys").expanduser())
    print(files.fingerprint)  # compare with cert_fingerprint(...) on every worker

then copy ``certificate.pem`` to the same folder on the worker and trainer machines, plus
``trainer_signing.pub`` to the workers and ``trainer_signing.pem`` and ``trainer_password`` to
the trainer (when it runs elsewhere), and run :func:`check_cert` there before connecting. A
folder made before the trainer's files existed keeps working for the relay;
:func:`make_trainer_keys` adds them without touching the certificate.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tm_dist.errors import InvalidValueError, TMDistError
from tm_dist.signing import (
    SIGNING_KEY_FILE,
    VERIFY_KEY_FILE,
    generate_signing_key,
    private_key_pem,
    public_key_pem,
)

__all__ = [
    "CERT_FILE_NAME",
    "DEFAULT_HOSTNAME",
    "KEY_FILE_NAME",
    "SIGNING_KEY_FILE",
    "TRAINER_PASSWORD_FILE_NAME",
    "VERIFY_KEY_FILE",
    "CertFiles",
    "CertificateError",
    "CertificateExistsError",
    "cert_fingerprint",
    "check_cert",
    "make_cert",
    "make_trainer_keys",
]

logger = logging.getLogger(__name__)

CERT_FILE_NAME = "certificate.pem"
"""The certificate file name tlspyo's relay and endpoints read from ``keys_dir``."""

KEY_FILE_NAME = "key.pem"
"""The private key file name tlspyo's relay reads from ``keys_dir``."""

TRAINER_PASSWORD_FILE_NAME = "trainer_password"
"""The trainer role's relay password in ``keys_dir`` (one line, mode 0600; relay and trainer)."""

DEFAULT_HOSTNAME = "default"
"""The name tlspyo endpoints check in the relay's certificate unless told otherwise."""

_MAX_DAYS = 3650
_EXPIRY_WARNING = dt.timedelta(days=30)


class CertificateError(TMDistError, ValueError):
    """A certificate or key is missing, unreadable, expired or does not fit its partner."""


class CertificateExistsError(CertificateError, FileExistsError):
    """:func:`make_cert` would overwrite existing files and ``overwrite`` was not set."""


@dataclass(frozen=True)
class CertFiles:
    """Where a certificate (and possibly its key) lives, and what it says."""

    keys_dir: Path
    """The folder given to tlspyo as ``keys_dir``."""
    certificate: Path
    """``keys_dir / "certificate.pem"``."""
    private_key: Path | None
    """``keys_dir / "key.pem"``, or None when it is absent and was not required."""
    fingerprint: str
    """SHA-256 of the certificate, colon-separated upper-case hex (as browsers show it)."""
    hostnames: tuple[str, ...]
    """The names in the certificate's subject alternative name extension."""
    not_valid_after: dt.datetime
    """Expiry time (UTC)."""
    signing_key: Path | None = None
    """``keys_dir / "trainer_signing.pem"`` (the trainer's private key), or None when absent."""
    verify_key: Path | None = None
    """``keys_dir / "trainer_signing.pub"`` (what workers verify with), or None when absent."""
    trainer_password: Path | None = None
    """``keys_dir / "trainer_password"`` (the trainer role's relay password), or None when
    absent."""


def make_cert(
    keys_dir: Path | str,
    *,
    hostname: str = DEFAULT_HOSTNAME,
    days: int = 825,
    overwrite: bool = False,
) -> CertFiles:
    """Write a fresh private key and self-signed certificate, and the trainer's keys, into
    ``keys_dir``.

    Besides ``certificate.pem`` and ``key.pem`` it writes the trainer's files (see
    :func:`make_trainer_keys`): ``trainer_signing.pem`` (Ed25519 private key, PKCS8 PEM, mode
    0600), ``trainer_signing.pub`` (its public key, PEM) and ``trainer_password`` (a random
    url-safe password ending in a newline, mode 0600).

    Args:
        keys_dir: folder for the files; created with mode 0700 (and its parents) when missing.
        hostname: the name endpoints verify. Keep ``"default"`` unless the endpoints pass a
            different ``hostname`` to tlspyo; an IP address is written as an IP entry.
        days: validity period, 1 to 3650.
        overwrite: replace existing files. Without it an existing file is an error, since every
            machine holding the old certificate would stop trusting the server.

    Returns:
        The paths and the fingerprint to compare on the other machines.

    Raises:
        CertificateExistsError: one of the five files exists and ``overwrite`` is False
            (nothing is written then).
        ValueError: ``hostname`` or ``days`` is out of range.
    """
    if not _is_whole(days) or not 1 <= days <= _MAX_DAYS:
        raise InvalidValueError(
            f"days={days!r}: expected a whole number of days from 1 to {_MAX_DAYS}."
        )
    alt_name = _alt_name(hostname)
    keys_dir = Path(keys_dir).expanduser()
    cert_path = keys_dir / CERT_FILE_NAME
    key_path = keys_dir / KEY_FILE_NAME
    existing = [str(p) for p in (cert_path, key_path, *_trainer_paths(keys_dir)) if p.exists()]
    if existing and not overwrite:
        raise CertificateExistsError(
            f"refusing to overwrite {', '.join(existing)}: machines that trust the current "
            "certificate (or trainer key) would be locked out. Pass overwrite=True to replace "
            f"them (then copy the new {CERT_FILE_NAME} to every worker and trainer, and "
            f"{VERIFY_KEY_FILE} to every worker), or choose another folder."
        )

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hostname),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TrackMaster tm-dist"),
        ]
    )
    # Backdated a little so that a worker whose clock runs behind still accepts it.
    now = dt.datetime.now(dt.timezone.utc)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=10))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )

    _make_private_dir(keys_dir)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(key_path, key_pem, mode=0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    logger.info("wrote %s and %s (valid for %d days)", cert_path, key_path, days)
    _write_trainer_keys(keys_dir)
    return _describe(keys_dir, cert, key_path)


def make_trainer_keys(keys_dir: Path | str, *, overwrite: bool = False) -> tuple[Path, ...]:
    """Write the trainer's files into ``keys_dir``, leaving the certificate alone.

    ``trainer_signing.pem`` (a fresh Ed25519 private key, PKCS8 PEM, mode 0600; it stays on the
    trainer machine), ``trainer_signing.pub`` (its public key, PEM; copy it to every worker) and
    ``trainer_password`` (``secrets.token_urlsafe(32)`` and a newline, mode 0600; the relay and
    the trainer read it). :func:`make_cert` calls it; call it alone to add the trainer's files
    to a folder made by an older tm-dist.

    Returns:
        The three paths, in that order.

    Raises:
        CertificateExistsError: one of them exists and ``overwrite`` is False (nothing is
            written then).
    """
    keys_dir = Path(keys_dir).expanduser()
    paths = _trainer_paths(keys_dir)
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise CertificateExistsError(
            f"refusing to overwrite {', '.join(existing)}: workers holding the current "
            f"{VERIFY_KEY_FILE} would refuse the trainer's weights. Pass overwrite=True to "
            f"replace them (then copy the new {VERIFY_KEY_FILE} to every worker), or choose "
            "another folder."
        )
    _make_private_dir(keys_dir)
    _write_trainer_keys(keys_dir)
    return paths


def _trainer_paths(keys_dir: Path) -> tuple[Path, Path, Path]:
    return (
        keys_dir / SIGNING_KEY_FILE,
        keys_dir / VERIFY_KEY_FILE,
        keys_dir / TRAINER_PASSWORD_FILE_NAME,
    )


def _make_private_dir(keys_dir: Path) -> None:
    created = not keys_dir.exists()
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created:
        os.chmod(keys_dir, 0o700)  # mkdir's mode is filtered by the umask


def _write_trainer_keys(keys_dir: Path) -> None:
    signing_path, verify_path, password_path = _trainer_paths(keys_dir)
    key = generate_signing_key()
    _write_atomic(signing_path, private_key_pem(key), mode=0o600)
    _write_atomic(verify_path, public_key_pem(key.public_key()), mode=0o644)
    password = secrets.token_urlsafe(32) + "\n"
    _write_atomic(password_path, password.encode("ascii"), mode=0o600)
    logger.info("wrote %s, %s and %s", signing_path, verify_path, password_path)


def cert_fingerprint(path: Path | str) -> str:
    """SHA-256 fingerprint of a PEM certificate, e.g. ``"3A:F1:...:9C"`` (95 characters).

    ``path`` is the certificate file or the ``keys_dir`` holding ``certificate.pem``. Compare
    the result between the server and each worker to be sure they hold the same certificate.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CERT_FILE_NAME
    return _fingerprint(_load_cert(path))


def check_cert(
    keys_dir: Path | str,
    *,
    hostname: str = DEFAULT_HOSTNAME,
    require_key: bool = False,
    now: dt.datetime | None = None,
) -> CertFiles:
    """Check that ``keys_dir`` holds a usable certificate (and key, for the server).

    Args:
        keys_dir: the folder that will be given to tlspyo.
        hostname: the name endpoints will verify; it must be in the certificate.
        require_key: also require ``key.pem`` (the relay needs it, endpoints do not). When the
            key is present it is always checked against the certificate.
        now: the time to check validity at (default: now, UTC).

    Raises:
        CertificateError: naming the file and what to do, when something is missing, unreadable,
            expired, not yet valid, issued for another name, or when key and certificate differ.
    """
    keys_dir = Path(keys_dir).expanduser()
    if not keys_dir.is_dir():
        raise CertificateError(
            f"certificate folder {keys_dir} does not exist. Create a certificate on the server "
            f"with `tm-dist make-cert`, then copy its {CERT_FILE_NAME} to this folder on every "
            "worker and trainer machine."
        )
    cert_path = keys_dir / CERT_FILE_NAME
    if not cert_path.is_file():
        raise CertificateError(
            f"{cert_path} is missing. Run `tm-dist make-cert` on the server and copy its "
            f"{CERT_FILE_NAME} here (only that file; {KEY_FILE_NAME} stays on the server)."
        )
    cert = _load_cert(cert_path)

    now = now if now is not None else dt.datetime.now(dt.timezone.utc)
    if now > cert.not_valid_after_utc:
        raise CertificateError(
            f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC. Make a new "
            "one with `tm-dist make-cert --overwrite` and copy it to every machine."
        )
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"{cert_path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: "
            "this machine's clock is behind, or the certificate was made on a machine whose "
            "clock is ahead. Fix the clock (enable NTP)."
        )
    if now + _EXPIRY_WARNING > cert.not_valid_after_utc:
        logger.warning(
            "%s expires on %s; make a new one soon", cert_path, cert.not_valid_after_utc.date()
        )

    names = _alt_names(cert)
    if hostname not in names:
        raise CertificateError(
            f"{cert_path} is issued for {list(names)}, but endpoints will check the name "
            f"{hostname!r}. Make the certificate with hostname={hostname!r}, or connect with "
            "one of the names it holds."
        )

    key_path = keys_dir / KEY_FILE_NAME
    if key_path.is_file():
        _check_key(key_path, cert)
    elif require_key:
        raise CertificateError(
            f"{key_path} is missing: the server needs the private key that goes with "
            f"{cert_path}. Run `tm-dist make-cert` on this machine (then copy the new "
            f"{CERT_FILE_NAME} to every worker and trainer)."
        )
    return _describe(keys_dir, cert, key_path)


# -- helpers ----------------------------------------------------------------------------------


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _alt_name(hostname: object) -> x509.GeneralName:
    if not isinstance(hostname, str) or not hostname or any(c.isspace() for c in hostname):
        raise InvalidValueError(
            f"hostname={hostname!r}: expected a host name or IP address without spaces, "
            f"e.g. {DEFAULT_HOSTNAME!r} (what tlspyo endpoints check by default)."
        )
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)


def _alt_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    dns = ext.value.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in ext.value.get_values_for_type(x509.IPAddress)]
    return (*dns, *ips)


def _fingerprint(cert: x509.Certificate) -> str:
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def _load_cert(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(
            f"{path} does not exist. Run `tm-dist make-cert` on the server and copy its "
            f"{CERT_FILE_NAME} here."
        ) from None
    except OSError as e:
        raise CertificateError(f"cannot read {path}: {e}") from e
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as e:
        raise CertificateError(
            f"{path} is not a PEM certificate ({e}). Copy {CERT_FILE_NAME} again from the "
            "server, unchanged."
        ) from e


def _check_key(key_path: Path, cert: x509.Certificate) -> None:
    if os.name == "posix":
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            logger.warning(
                "%s has mode %o: other users can read the private key; run chmod 600 %s",
                key_path,
                mode,
                key_path,
            )
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CertificateError(
            f"{key_path} is not an unencrypted PEM private key ({e}). Make a new pair with "
            "`tm-dist make-cert --overwrite`."
        ) from e
    if key.public_key() != cert.public_key():
        raise CertificateError(
            f"{key_path} does not match {key_path.with_name(CERT_FILE_NAME)}: they come from "
            "different runs of make-cert. Make a new pair with `tm-dist make-cert --overwrite` "
            "and copy the new certificate to every machine."
        )


def _describe(keys_dir: Path, cert: x509.Certificate, key_path: Path) -> CertFiles:
    signing, verify, password = (p if p.is_file() else None for p in _trainer_paths(keys_dir))
    return CertFiles(
        keys_dir=keys_dir,
        certificate=keys_dir / CERT_FILE_NAME,
        private_key=key_path if key_path.is_file() else None,
        fingerprint=_fingerprint(cert),
        hostnames=_alt_names(cert),
        not_valid_after=cert.not_valid_after_utc,
        signing_key=signing,
        verify_key=verify,
        trainer_password=password,
    )


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to a private temporary file beside ``path``, then rename it over ``path``.

    The temporary file is created with mode 0600, so the key is never readable by others, not
    even for a moment, whatever the umask.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

"""Certificates made by tm_dist.certs: their content, their checks, and a real TLS round trip."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tm_dist.certs import (
    CERT_FILE_NAME,
    KEY_FILE_NAME,
    TRAINER_PASSWORD_FILE_NAME,
    CertFiles,
    CertificateError,
    CertificateExistsError,
    cert_fingerprint,
    check_cert,
    make_cert,
    make_trainer_keys,
)
from tm_dist.signing import (
    SIGNING_KEY_FILE,
    VERIFY_KEY_FILE,
    load_signing_key,
    load_verify_key,
    sign_message,
    verify_message,
)
from tm_dist.wire import Disconnect

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_cert(tmp_path_factory.mktemp("certs") / "keys")


def test_files_have_the_names_tlspyo_reads(made: CertFiles) -> None:
    assert made.certificate == made.keys_dir / CERT_FILE_NAME == made.keys_dir / "certificate.pem"
    assert made.private_key == made.keys_dir / KEY_FILE_NAME == made.keys_dir / "key.pem"
    assert sorted(p.name for p in made.keys_dir.iterdir()) == [
        "certificate.pem",
        "key.pem",
        "trainer_password",
        "trainer_signing.pem",
        "trainer_signing.pub",
    ]


def test_trainer_files_are_a_matching_ed25519_pair_and_a_random_password(
    made: CertFiles, tmp_path: Path
) -> None:
    assert (
        made.signing_key
        == made.keys_dir / SIGNING_KEY_FILE
        == made.keys_dir / "trainer_signing.pem"
    )
    assert (
        made.verify_key == made.keys_dir / VERIFY_KEY_FILE == made.keys_dir / "trainer_signing.pub"
    )
    assert made.trainer_password == made.keys_dir / TRAINER_PASSWORD_FILE_NAME
    msg = sign_message(Disconnect(worker="w", reason="r"), load_signing_key(made.keys_dir))
    verify_message(msg, load_verify_key(made.keys_dir))
    assert made.signing_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert made.verify_key.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")

    text = made.trainer_password.read_text("ascii")
    assert text.endswith("\n") and text.count("\n") == 1
    password = text.strip()
    assert len(password) >= 40 and all(c.isalnum() or c in "-_" for c in password)
    other = make_cert(tmp_path / "other")
    assert other.trainer_password is not None
    assert other.trainer_password.read_text("ascii") != text


def test_the_password_file_has_the_name_the_relay_reads() -> None:
    from tm_dist.transport.options import TRAINER_PASSWORD_FILE

    assert TRAINER_PASSWORD_FILE == TRAINER_PASSWORD_FILE_NAME


def test_certificate_names_default_and_is_valid_now(made: CertFiles) -> None:
    cert = x509.load_pem_x509_certificate(made.certificate.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["default"]
    now = dt.datetime.now(dt.timezone.utc)
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
    assert cert.not_valid_after_utc - now > dt.timedelta(days=824)
    assert made.hostnames == ("default",)


def test_key_matches_certificate(made: CertFiles) -> None:
    assert made.private_key is not None
    key = serialization.load_pem_private_key(made.private_key.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(made.certificate.read_bytes())
    assert key.public_key() == cert.public_key()


def test_fingerprint_is_stable_sha256(made: CertFiles) -> None:
    cert = x509.load_pem_x509_certificate(made.certificate.read_bytes())
    expected = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert made.fingerprint == expected
    assert cert_fingerprint(made.certificate) == expected
    assert cert_fingerprint(made.keys_dir) == expected
    assert len(expected) == 95


@posix_only
def test_private_key_and_folder_are_private(made: CertFiles) -> None:
    assert made.private_key is not None
    assert stat.S_IMODE(made.private_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(made.keys_dir.stat().st_mode) == 0o700
    assert made.signing_key is not None and made.trainer_password is not None
    assert stat.S_IMODE(made.signing_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(made.trainer_password.stat().st_mode) == 0o600


def test_every_file_is_refused_before_any_is_written(tmp_path: Path) -> None:
    tmp_path.joinpath(VERIFY_KEY_FILE).write_text("a worker's copy")
    with pytest.raises(CertificateExistsError, match=r"trainer_signing.pub.*overwrite=True"):
        make_cert(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [VERIFY_KEY_FILE]
    assert tmp_path.joinpath(VERIFY_KEY_FILE).read_text() == "a worker's copy"


def test_a_folder_without_trainer_files_still_serves_and_can_get_them(tmp_path: Path) -> None:
    made = make_cert(tmp_path)
    for name in (SIGNING_KEY_FILE, VERIFY_KEY_FILE, TRAINER_PASSWORD_FILE_NAME):
        (tmp_path / name).unlink()
    old = check_cert(tmp_path, require_key=True)  # what an older tm-dist made: the relay runs
    assert (old.signing_key, old.verify_key, old.trainer_password) == (None, None, None)
    cert = made.certificate.read_bytes()

    paths = make_trainer_keys(tmp_path)
    assert [p.name for p in paths] == [SIGNING_KEY_FILE, VERIFY_KEY_FILE, "trainer_password"]
    assert made.certificate.read_bytes() == cert  # the certificate is left alone
    assert check_cert(tmp_path).signing_key == tmp_path / SIGNING_KEY_FILE
    with pytest.raises(CertificateExistsError, match=r"trainer_signing\.pem"):
        make_trainer_keys(tmp_path)
    before = (tmp_path / VERIFY_KEY_FILE).read_bytes()
    make_trainer_keys(tmp_path, overwrite=True)
    assert (tmp_path / VERIFY_KEY_FILE).read_bytes() != before


def test_refuses_to_overwrite_and_names_the_files(made: CertFiles) -> None:
    before = made.certificate.read_bytes()
    with pytest.raises(CertificateExistsError, match=r"certificate.pem.*key.pem.*overwrite=True"):
        make_cert(made.keys_dir)
    assert made.certificate.read_bytes() == before


def test_overwrite_replaces_the_pair(tmp_path: Path) -> None:
    first = make_cert(tmp_path)
    first_pub = (tmp_path / VERIFY_KEY_FILE).read_bytes()
    second = make_cert(tmp_path, overwrite=True)
    assert first.fingerprint != second.fingerprint
    assert check_cert(tmp_path, require_key=True).fingerprint == second.fingerprint
    assert (tmp_path / VERIFY_KEY_FILE).read_bytes() != first_pub


def test_ip_hostname_and_bad_arguments(tmp_path: Path) -> None:
    files = make_cert(tmp_path / "ip", hostname="192.168.1.20", days=1)
    assert files.hostnames == ("192.168.1.20",)
    with pytest.raises(ValueError, match="days=0"):
        make_cert(tmp_path / "a", days=0)
    with pytest.raises(ValueError, match="hostname='two words'"):
        make_cert(tmp_path / "b", hostname="two words")
    assert not (tmp_path / "a").exists()


def test_check_cert_accepts_a_fresh_pair(made: CertFiles) -> None:
    assert check_cert(made.keys_dir, require_key=True) == made


def test_check_cert_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match=r"does not exist.*make-cert"):
        check_cert(tmp_path / "nowhere")
    with pytest.raises(CertificateError, match=r"certificate.pem is missing"):
        check_cert(tmp_path)
    make_cert(tmp_path)
    (tmp_path / KEY_FILE_NAME).unlink()
    assert check_cert(tmp_path).private_key is None  # a worker holds only the certificate
    with pytest.raises(CertificateError, match=r"key.pem is missing"):
        check_cert(tmp_path, require_key=True)


def test_check_cert_expired_and_not_yet_valid(made: CertFiles) -> None:
    late = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=900)
    with pytest.raises(CertificateError, match="expired on"):
        check_cert(made.keys_dir, now=late)
    early = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    with pytest.raises(CertificateError, match=r"not valid before.*clock"):
        check_cert(made.keys_dir, now=early)


def test_check_cert_key_from_another_pair(tmp_path: Path, made: CertFiles) -> None:
    make_cert(tmp_path)
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / KEY_FILE_NAME).write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(CertificateError, match="does not match"):
        check_cert(tmp_path)


def test_check_cert_wrong_hostname_and_garbage(tmp_path: Path) -> None:
    make_cert(tmp_path)
    with pytest.raises(CertificateError, match=r"issued for \['default'\].*'trainer\.lan'"):
        check_cert(tmp_path, hostname="trainer.lan")
    (tmp_path / CERT_FILE_NAME).write_text("not a certificate")
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        check_cert(tmp_path)
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        cert_fingerprint(tmp_path / CERT_FILE_NAME)


# -- TLS handshakes ---------------------------------------------------------------------------


def _handshake(server_dir: Path, trusted: Path, hostname: str) -> None:
    """TLS handshake over a socket pair: server with ``server_dir``'s pair, client trusting
    ``trusted`` and checking ``hostname``, as tlspyo's endpoints do. Raises the client's error."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_dir / CERT_FILE_NAME, server_dir / KEY_FILE_NAME)
    client_ctx = ssl.create_default_context(cafile=str(trusted))
    left, right = socket.socketpair()

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(left, server_side=True) as s:
                s.sendall(b"hello")
        except (ssl.SSLError, OSError):
            pass  # the client's side of the failure is what the tests look at

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with client_ctx.wrap_socket(right, server_hostname=hostname) as c:
            assert c.recv(5) == b"hello"
    finally:
        right.close()
        thread.join(timeout=10)
        left.close()


def test_openssl_verifies_the_certificate_for_default(made: CertFiles, tmp_path: Path) -> None:
    _handshake(made.keys_dir, made.certificate, "default")
    with pytest.raises(ssl.SSLCertVerificationError, match=r"(?i)hostname"):
        _handshake(made.keys_dir, made.certificate, "trainer.lan")
    other = make_cert(tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(made.keys_dir, other.certificate, "default")


# -- a real TLS round trip through tlspyo -----------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pack(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _wait_for(endpoint: Any, timeout_s: float = 15.0) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        received = endpoint.receive_all(blocking=False)
        if received:
            return list(received)
        time.sleep(0.02)
    return []


@pytest.fixture(scope="module")
def tls_network(made: CertFiles) -> Iterator[tuple[Any, Any]]:
    """A tlspyo relay and two endpoints, all on loopback with TLS and the generated pair."""
    from tlspyo import Endpoint, Relay

    common: dict[str, Any] = {
        "password": "correct horse battery staple",
        "security": "TLS",
        "keys_dir": str(made.keys_dir),
        "serializer": _pack,
        "deserializer": _unpack,
    }
    reconnect = {"recon_initial_delay": 0.2, "recon_max_delay": 1.0}
    port = _free_port()
    started: list[Any] = []
    try:
        started.append(Relay(port=port, local_com_port=_free_port(), **common))
        sender = Endpoint(
            "127.0.0.1",
            port,
            groups=("trainers",),
            local_com_port=_free_port(),
            **common,
            **reconnect,
        )
        started.append(sender)
        receiver = Endpoint(
            "127.0.0.1",
            port,
            groups=("workers",),
            local_com_port=_free_port(),
            **common,
            **reconnect,
        )
        started.append(receiver)
        yield sender, receiver
    finally:
        for node in reversed(started):  # endpoints first, the relay last
            node.stop()


@pytest.mark.slow
def test_tls_round_trip_through_tlspyo(tls_network: tuple[Any, Any]) -> None:
    trainer, worker = tls_network
    weights = {"version": 3, "blob": bytes(range(256)) * 64}
    trainer.broadcast(weights, "workers")
    assert _wait_for(worker) == [weights]

    chunk = {"worker": "pc-1", "steps": [1, 2, 3]}
    worker.produce(chunk, "trainers")
    trainer.notify("trainers")
    assert _wait_for(trainer) == [chunk]

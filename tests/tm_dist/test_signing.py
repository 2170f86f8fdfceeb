"""The trainer's signatures (tm_dist.signing): keys, what is signed, and every way to fail."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tm_dist.errors import TMDistError
from tm_dist.signing import (
    SIGNATURE_SIZE,
    SIGNING_KEY_FILE,
    VERIFY_KEY_FILE,
    SignatureError,
    SigningKeyError,
    SigningKeyMissingError,
    generate_signing_key,
    load_signing_key,
    load_verify_key,
    private_key_pem,
    public_key_pem,
    sign_message,
    signed_bytes,
    verify_message,
)
from tm_dist.wire import Disconnect, MessageError, Weights, decode_message, encode_message
from tm_gym.error import TrackMasterError


def _safetensors(extra: bytes = b"") -> bytes:
    header = b'{"__metadata__":{"format":"pt"}}' + extra
    return len(header).to_bytes(8, "little") + header


WEIGHTS = Weights(version=7, safetensors=_safetensors(), config_json='{"policy": {}}')
DISCONNECT = Disconnect(worker="w-1", reason="12 of its chunks were invalid")


def test_signed_messages_verify_and_survive_the_wire() -> None:
    key = generate_signing_key()
    for msg in (WEIGHTS, DISCONNECT):
        signed = sign_message(msg, key)
        assert len(signed.signature) == SIGNATURE_SIZE
        again = decode_message(encode_message(signed))
        assert again == signed
        assert isinstance(again, (Weights, Disconnect))
        verify_message(again, key.public_key())


@pytest.mark.parametrize(
    "change",
    [
        {"version": 8},
        {"safetensors": _safetensors(b" ")},
        {"config_json": '{"policy": {"x": 1}}'},
    ],
)
def test_any_changed_weights_field_breaks_the_signature(change: dict[str, object]) -> None:
    key = generate_signing_key()
    signed = sign_message(WEIGHTS, key)
    forged = dataclasses.replace(signed, **change)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="did not make"):
        verify_message(forged, key.public_key())


def test_a_signature_does_not_move_to_another_message_or_type() -> None:
    key = generate_signing_key()
    signed = sign_message(DISCONNECT, key)
    other_worker = dataclasses.replace(signed, worker="w-2")
    with pytest.raises(SignatureError):
        verify_message(other_worker, key.public_key())
    assert signed_bytes(DISCONNECT) != signed_bytes(dataclasses.replace(DISCONNECT, worker="w-2"))
    assert signed_bytes(WEIGHTS)[:40] != signed_bytes(DISCONNECT)[:40]  # the type is signed


def test_unsigned_and_other_keys_are_refused() -> None:
    trainer, attacker = generate_signing_key(), generate_signing_key()
    with pytest.raises(SignatureError, match="unsigned Weights"):
        verify_message(WEIGHTS, trainer.public_key())
    with pytest.raises(SignatureError, match="did not make"):
        verify_message(sign_message(WEIGHTS, attacker), trainer.public_key())
    with pytest.raises(SignatureError, match="unsigned Disconnect"):
        verify_message(DISCONNECT, trainer.public_key())


def test_signature_length_is_checked_by_the_wire() -> None:
    with pytest.raises(MessageError, match=r"Weights.signature: 5 bytes"):
        dataclasses.replace(WEIGHTS, signature=b"12345")
    with pytest.raises(MessageError, match=r"Disconnect\.signature: expected bytes"):
        Disconnect(worker="w", reason="r", signature="x" * 64)  # type: ignore[arg-type]


def test_keys_round_trip_through_their_files(tmp_path: Path) -> None:
    key = generate_signing_key()
    (tmp_path / SIGNING_KEY_FILE).write_bytes(private_key_pem(key))
    os.chmod(tmp_path / SIGNING_KEY_FILE, 0o600)
    (tmp_path / VERIFY_KEY_FILE).write_bytes(public_key_pem(key.public_key()))
    loaded = load_signing_key(tmp_path)  # the folder or the file
    public = load_verify_key(tmp_path / VERIFY_KEY_FILE)
    verify_message(sign_message(WEIGHTS, loaded), public)
    verify_message(sign_message(WEIGHTS, key), load_verify_key(tmp_path))


def test_missing_key_files_say_how_to_make_and_copy_them(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyMissingError, match=r"missing.*tm-dist make-cert.*copy") as info:
        load_verify_key(tmp_path)
    assert VERIFY_KEY_FILE in str(info.value)
    assert isinstance(info.value, (TrackMasterError, FileNotFoundError))
    with pytest.raises(SigningKeyMissingError, match=SIGNING_KEY_FILE):
        load_signing_key(tmp_path)


def test_corrupt_or_wrong_type_key_files_are_named(tmp_path: Path) -> None:
    (tmp_path / VERIFY_KEY_FILE).write_text("not a key")
    (tmp_path / SIGNING_KEY_FILE).write_text("not a key either")
    with pytest.raises(SigningKeyError, match=rf"{VERIFY_KEY_FILE} is not a PEM public key"):
        load_verify_key(tmp_path)
    with pytest.raises(SigningKeyError, match=rf"{SIGNING_KEY_FILE} is not an unencrypted PEM"):
        load_signing_key(tmp_path)

    ecdsa = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / SIGNING_KEY_FILE).write_bytes(
        ecdsa.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / VERIFY_KEY_FILE).write_bytes(
        ecdsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(SigningKeyError, match=r"trainer_signing.pem holds a .*expected an Ed25519"):
        load_signing_key(tmp_path)
    with pytest.raises(SigningKeyError, match=r"trainer_signing.pub holds a .*Ed25519"):
        load_verify_key(tmp_path)
    assert issubclass(SigningKeyError, TMDistError)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_signing_key_readable_by_others_is_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / SIGNING_KEY_FILE
    path.write_bytes(private_key_pem(generate_signing_key()))
    os.chmod(path, 0o644)
    load_signing_key(path)
    assert "chmod 600" in caplog.text
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # never changed behind the user's back

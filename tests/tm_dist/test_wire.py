"""tm_dist.wire: message round trips, strict decoding, and the tlspyo (de)serializer.

Everything a peer sends is untrusted: random bytes, random msgpack values and a crafted
standard-library object-serialization payload must all end in MessageError, never in another
exception and never in code running.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import functools
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tm_dist.wire import (
    DEFAULT_MAX_BYTES,
    MAX_NESTING_DEPTH,
    PROTOCOL_VERSION,
    SIGNATURE_SIZE,
    Disconnect,
    EpisodeChunk,
    Hello,
    Message,
    MessageError,
    Status,
    Weights,
    Welcome,
    decode_message,
    encode_message,
    tlspyo_deserializer,
    tlspyo_serializer,
)


def _safetensors(n: int = 4) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}})
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(4 * n)


EXAMPLES: list[Message] = [
    Hello(role="worker", name="pc-1/0", protocol=PROTOCOL_VERSION, info={"obs_type": "images"}),
    Welcome(server_name="relay", protocol=PROTOCOL_VERSION),
    EpisodeChunk(
        worker="pc-1/0",
        episode=3,
        chunk=1,
        final=True,
        test=False,
        weights_version=12,
        n_steps=57,
        payload=b"\x28\xb5\x2f\xfd" + bytes(50),
        stats={"return": 41.5, "lap_time": None, "finished": False, "wall_contacts": 2},
    ),
    Weights(version=12, safetensors=_safetensors(), config_json='{"algo": "sac"}'),
    Status(role="trainer", name="gpu", stats={"steps_per_s": 812.5, "buffer": [1, 2, {"a": None}]}),
    Disconnect(worker="pc-1/0", reason="12 of its chunks were invalid"),
    Weights(
        version=13,
        safetensors=_safetensors(),
        config_json='{"algo": "sac"}',
        signature=bytes(range(SIGNATURE_SIZE)),
    ),
    Disconnect(worker="pc-1/0", reason="", signature=b"\xff" * SIGNATURE_SIZE),
]


# -- messages ------------------------------------------------------------------------------
@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(msg: Message) -> None:
    data = encode_message(msg)
    back = decode_message(data)
    assert type(back) is type(msg) and back == msg
    assert msgpack.unpackb(data)["schema"] == "tm-dist"


_names = st.text(min_size=1, max_size=30)
_i64 = st.integers(0, 2**63 - 1)
_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
_scalars = _scalars | st.floats(allow_nan=False)
_json_like = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_signatures = st.just(b"") | st.binary(min_size=SIGNATURE_SIZE, max_size=SIGNATURE_SIZE)
_messages = st.one_of(
    st.builds(
        Hello,
        role=_names,
        name=_names,
        protocol=st.integers(0, 2**31 - 1),
        info=st.dictionaries(st.text(max_size=8), _json_like, max_size=4),
    ),
    st.builds(Welcome, server_name=_names, protocol=st.integers(0, 2**31 - 1)),
    st.builds(
        EpisodeChunk,
        worker=_names,
        episode=_i64,
        chunk=_i64,
        final=st.booleans(),
        test=st.booleans(),
        weights_version=_i64,
        n_steps=st.integers(0, 10**7),
        payload=st.binary(max_size=200),
        stats=st.dictionaries(st.text(max_size=10), _scalars, max_size=6),
    ),
    st.builds(
        Weights,
        version=_i64,
        safetensors=st.integers(0, 8).map(_safetensors),
        config_json=st.dictionaries(st.text(max_size=8), _scalars, max_size=4).map(json.dumps),
        signature=_signatures,
    ),
    st.builds(Disconnect, worker=_names, reason=st.text(max_size=40), signature=_signatures),
    st.builds(
        Status,
        role=_names,
        name=_names,
        stats=st.dictionaries(st.text(max_size=8), _json_like, max_size=4),
    ),
)


@settings(max_examples=150)
@given(msg=_messages)
def test_random_messages_round_trip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


def _raw(type_: str, body: dict[str, Any], **header: Any) -> bytes:
    obj = {"schema": "tm-dist", "version": PROTOCOL_VERSION, "type": type_, "body": body}
    obj.update(header)
    return msgpack.packb(obj, use_bin_type=True)


WELCOME = {"server_name": "relay", "protocol": 1}
BAD_MESSAGES = {
    "unknown type": (_raw("launch_missiles", WELCOME), "unknown message type"),
    "wrong version": (_raw("welcome", WELCOME, version=2), "protocol version 2"),
    "version as bool": (_raw("welcome", WELCOME, version=True), "protocol version True"),
    "wrong schema": (_raw("welcome", WELCOME, schema="other"), "not a tm-dist message"),
    "extra header key": (_raw("welcome", WELCOME, extra=1), "header has keys"),
    "missing field": (_raw("welcome", {"server_name": "relay"}), r"missing fields \['protocol'\]"),
    "unknown field": (_raw("welcome", {**WELCOME, "x": 1}), "1 unknown fields"),
    "str as int": (_raw("welcome", {**WELCOME, "protocol": "1"}), "protocol: expected an int"),
    "bool as int": (_raw("welcome", {**WELCOME, "protocol": True}), "expected an int, got bool"),
    "negative": (_raw("welcome", {**WELCOME, "protocol": -1}), "out of range"),
    "empty name": (_raw("welcome", {**WELCOME, "server_name": ""}), "empty string"),
    "body not a map": (_raw("welcome", [1, 2]), "body is a list"),  # type: ignore[arg-type]
    "top not a map": (msgpack.packb([1, 2]), "expected a msgpack map"),
    "trailing garbage": (_raw("welcome", WELCOME) + b"\x00", "trailing bytes"),
    "truncated": (_raw("welcome", WELCOME)[:-3], "not a msgpack message"),
    "ext type": (msgpack.packb(msgpack.ExtType(5, b"x")), "extension type 5"),
    "int map key": (msgpack.packb({1: 2}), "not a msgpack message"),
    "bad stats value": (
        _raw("episode_chunk", {**dataclasses.asdict(EXAMPLES[2]), "stats": {"x": [1]}}),
        r"stats\['x'\]: expected float, int, str, bool or None, got list",
    ),
    "bad weights": (
        _raw("weights", {"version": 1, "safetensors": b"\x00" * 16, "config_json": "{}"}),
        "not a safetensors file",
    ),
    "bad config json": (
        _raw("weights", {"version": 1, "safetensors": _safetensors(), "config_json": "{"}),
        "not valid JSON",
    ),
    "short signature": (
        _raw("disconnect", {"worker": "w", "reason": "r", "signature": b"\x01" * 63}),
        r"Disconnect.signature: 63 bytes; expected none \(unsigned\) or 64",
    ),
    "signature as str": (
        _raw("disconnect", {"worker": "w", "reason": "r", "signature": "x" * 64}),
        r"Disconnect.signature: expected bytes, got str",
    ),
    "config not object": (
        _raw("weights", {"version": 1, "safetensors": _safetensors(), "config_json": "[1]"}),
        "expected a JSON object",
    ),
    "too deep info": (
        _raw(
            "status",
            {
                "role": "r",
                "name": "n",
                "stats": functools.reduce(
                    lambda acc, _: {"k": acc}, range(MAX_NESTING_DEPTH + 2), {}
                ),
            },
        ),
        "nested deeper",
    ),
}


def test_a_message_without_its_signature_field_decodes_as_unsigned() -> None:
    """An older trainer's messages have no signature field: they decode, unsigned (and a worker
    holding the trainer's public key then refuses them with that reason)."""
    body = {"version": 3, "safetensors": _safetensors(), "config_json": "{}"}
    msg = decode_message(_raw("weights", body))
    assert isinstance(msg, Weights) and msg.signature == b""
    with pytest.raises(MessageError, match=r"missing fields \['version'\]"):
        decode_message(_raw("weights", {k: v for k, v in body.items() if k != "version"}))


@pytest.mark.parametrize("case", list(BAD_MESSAGES))
def test_bad_messages_raise_message_error_naming_the_problem(case: str) -> None:
    data, message = BAD_MESSAGES[case]
    with pytest.raises(MessageError, match=message):
        decode_message(data)


def test_size_limit_is_checked_before_parsing() -> None:
    msg = EXAMPLES[2]
    data = encode_message(msg)
    assert decode_message(data, max_bytes=len(data)) == msg
    with pytest.raises(MessageError, match=f"{len(data)} bytes exceeds the limit of 100 bytes"):
        decode_message(data, max_bytes=100)
    assert DEFAULT_MAX_BYTES >= 16 * 1024 * 1024  # room for policy weights


def test_invalid_messages_cannot_be_built_and_non_messages_not_encoded() -> None:
    with pytest.raises(MessageError, match=r"Hello\.protocol: expected an int, got str"):
        Hello(role="worker", name="a", protocol="1", info={})  # type: ignore[arg-type]
    with pytest.raises(MessageError, match=r"EpisodeChunk\.payload: expected bytes, got str"):
        EpisodeChunk("w", 0, 0, True, False, 0, 1, "payload", {})  # type: ignore[arg-type]
    with pytest.raises(MessageError, match=r"stats key: expected a str, got int"):
        EpisodeChunk("w", 0, 0, True, False, 0, 1, b"", {1: 2.0})  # type: ignore[dict-item]
    with pytest.raises(MessageError, match=r"Hello\.info"):
        Hello(role="worker", name="a", protocol=1, info={"s": {1, 2}})
    with pytest.raises(MessageError, match="cannot encode a dict"):
        encode_message({"type": "hello"})  # type: ignore[arg-type]


def test_errors_never_echo_received_strings() -> None:
    secret = "hunter2-correct-horse-battery"
    cases = [
        _raw("welcome", WELCOME, schema=secret),
        _raw(secret, WELCOME),
        _raw("welcome", {**WELCOME, secret: 1}),
        _raw("welcome", {**WELCOME, "protocol": secret}),
        _raw("welcome", WELCOME, version=secret),
    ]
    for data in cases:
        with pytest.raises(MessageError) as info:
            decode_message(data)
        assert "hunter2" not in str(info.value)


# -- tlspyo framing ------------------------------------------------------------------------
def _same_types(a: Any, b: Any) -> bool:
    """Equal values of exactly the same types all the way down (1 is not True, () not [])."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_types(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_types(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return b != b
    return bool(a == b)


def _tlspyo_frames() -> list[Any]:
    """The objects tlspyo 0.3.0 passes through its serializer (api.py, client.py, server.py)."""
    app = encode_message(EXAMPLES[1])  # an application object: bytes from encode_message
    inner = tlspyo_serializer(app)
    return [
        ("TEST", None),  # Relay._send_local: (cmd, None)
        ("STOP", None),
        ("OBJ", {"trainers": 1}, inner),  # Endpoint._send_local: (cmd, dest, serializer(obj))
        ("OBJ", {"workers": -1}, inner),  # broadcast
        ("NTF", {"trainers": 1}, tlspyo_serializer(None)),  # notify: obj None
        ("NTF", {"trainers": -1}, tlspyo_serializer(None)),
        ("STOP", None, tlspyo_serializer(None)),
        (1, "HELLO", None, ("workers", "server")),  # ClientProtocol.send_obj: groups tuple
        (2, "OBJ", {"trainers": 1}, inner),  # (stamp, cmd, dest, obj)
        (3, "NTF", {"trainers": 1}, inner),
        (7, "ACK", None, None),  # ClientProtocol.send_ack
        (1, "HELLO", None),  # ServerProtocol.send_obj(cmd='HELLO'): (stamp, cmd, obj)
        (2**40, "OBJ", inner),  # relayed object to an endpoint
        (9, "ACK", None),  # ServerProtocol.send_ack
        ["workers"],  # groups given as a list stay a list
    ]


@pytest.mark.parametrize("frame", _tlspyo_frames(), ids=lambda f: repr(f)[:30])
def test_tlspyo_frames_round_trip_with_their_types(frame: Any) -> None:
    back = tlspyo_deserializer(tlspyo_serializer(frame))
    assert _same_types(back, frame)


def test_tlspyo_nested_object_reaches_the_application_intact() -> None:
    """The way an Endpoint sends and receives: serializer((cmd, dest, serializer(obj)))."""
    for msg in EXAMPLES:
        frame = tlspyo_serializer(("OBJ", {"trainers": 1}, tlspyo_serializer(encode_message(msg))))
        cmd, _dest, obj_bytes = tlspyo_deserializer(frame)
        relayed = tlspyo_deserializer(tlspyo_serializer((5, cmd, obj_bytes)))
        assert decode_message(tlspyo_deserializer(relayed[2])) == msg


_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200)
@given(value=_plain)
def test_tlspyo_round_trip_keeps_values_and_types(value: Any) -> None:
    assert _same_types(tlspyo_deserializer(tlspyo_serializer(value)), value)


class _Custom:
    pass


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({1, 2}, "cannot serialize a set"),
        (_Custom(), "cannot serialize a _Custom"),
        ({1: "a"}, "dict key of type int"),
        (bytearray(b"x"), "cannot serialize a bytearray"),
        (2**64, "out of range"),
        (functools.reduce(lambda acc, _: [acc], range(MAX_NESTING_DEPTH + 1), []), "nested deeper"),
        (
            functools.reduce(lambda acc, _: (acc,), range(MAX_NESTING_DEPTH + 1), ()),
            "nested deeper",
        ),
    ],
    ids=["set", "object", "int key", "bytearray", "big int", "deep list", "deep tuple"],
)
def test_tlspyo_serializer_refuses_anything_else(value: Any, message: str) -> None:
    with pytest.raises(MessageError, match=message):
        tlspyo_serializer(value)


def test_tlspyo_deserializer_limits() -> None:
    deepest = functools.reduce(lambda acc, _: [acc], range(MAX_NESTING_DEPTH - 1), [])
    assert tlspyo_deserializer(tlspyo_serializer(deepest)) == deepest
    too_deep = msgpack.packb(functools.reduce(lambda acc, _: [acc], range(MAX_NESTING_DEPTH), []))
    with pytest.raises(MessageError, match="nested deeper"):
        tlspyo_deserializer(too_deep)
    with pytest.raises(MessageError, match="exceeds the limit of 10 bytes"):
        tlspyo_deserializer(tlspyo_serializer(b"x" * 20), max_bytes=10)
    with pytest.raises(MessageError, match="unknown msgpack extension type 9"):
        tlspyo_deserializer(msgpack.packb(msgpack.ExtType(9, b"")))
    with pytest.raises(MessageError, match="misplaced tuple marker"):
        tlspyo_deserializer(msgpack.packb({"a": msgpack.ExtType(1, b"")}))
    with pytest.raises(MessageError, match="trailing bytes"):
        tlspyo_deserializer(tlspyo_serializer(("STOP", None)) + b"\xc0")
    with pytest.raises(MessageError, match="expected bytes"):
        tlspyo_deserializer("STOP")  # type: ignore[arg-type]


# -- untrusted input -----------------------------------------------------------------------
@settings(max_examples=300)
@given(data=st.binary(max_size=400))
def test_random_bytes_only_ever_raise_message_error(data: bytes) -> None:
    with pytest.raises(MessageError):
        decode_message(data)
    with contextlib.suppress(MessageError):
        tlspyo_deserializer(data)  # a few random bytes are a valid msgpack scalar


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.integers(-(2**63), 2**64 - 1), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def _message_like(draw: st.DrawFn) -> Any:
    """Often a well-formed header around a random body: reaches the field checks."""
    body = draw(_msgpack_values)
    if draw(st.booleans()):
        fields = draw(
            st.dictionaries(
                st.sampled_from(
                    [
                        "worker",
                        "episode",
                        "chunk",
                        "final",
                        "role",
                        "name",
                        "protocol",
                        "info",
                        "server_name",
                        "stats",
                        "version",
                    ]
                ),
                _msgpack_values,
                max_size=6,
            )
        )
        body = {
            "schema": "tm-dist",
            "version": PROTOCOL_VERSION,
            "type": draw(
                st.sampled_from(["hello", "welcome", "episode_chunk", "weights", "status", "x"])
            ),
            "body": fields,
        }
    return body


@pytest.mark.slow
@settings(max_examples=300)
@given(value=_message_like())
def test_random_msgpack_structures_only_ever_raise_message_error(value: Any) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    with contextlib.suppress(MessageError):
        decode_message(data)
    with contextlib.suppress(MessageError):
        tlspyo_deserializer(data)


class _Payload:
    """Unserializing this object (standard-library format) creates the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (builtins.open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_object_serialization_payloads_are_refused_and_never_run(
    tmp_path: Path, protocol: int
) -> None:
    # the payload is live: loading it the standard way does create its file
    probe = tmp_path / "probe"
    with pickle.loads(pickle.dumps(_Payload(probe), protocol=protocol)):
        pass
    assert probe.exists()

    target = tmp_path / "pwned"
    data = pickle.dumps(_Payload(target), protocol=protocol)
    framed = pickle.dumps((1, "OBJ", {"trainers": 1}, data), protocol=protocol)
    for payload in (data, framed):
        with pytest.raises(MessageError):
            decode_message(payload)
        with pytest.raises(MessageError):
            tlspyo_deserializer(payload)
    assert not target.exists()

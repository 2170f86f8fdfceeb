"""The tm-dist wire format: versioned msgpack messages and safe (de)serializers for tlspyo.

Every application message is a frozen dataclass. :func:`encode_message` turns one into a
msgpack map ``{"schema": "tm-dist", "version": 1, "type": ..., "body": {...}}`` and
:func:`decode_message` turns bytes back into the dataclass, checking everything on the way:
the size, the header, the set of fields (no unknown one; only fields with a default, such as
``signature``, may be left out), the type and range of every field, and that nothing follows
the message. Whatever is wrong raises :class:`MessageError`, whose text names
the problem without echoing string contents (a peer's bytes are never repeated back).

tlspyo frames its own traffic (acknowledgements, group names, commands) as Python tuples,
dicts, strings, bytes, ints and None and passes them through the serializer it is given.
:func:`tlspyo_serializer` and :func:`tlspyo_deserializer` handle exactly those plain types
(tuples stay tuples), so tlspyo never falls back on its default Python object serialization,
which would let anyone who knows the password run code on the peer.

Example:
    >>> msg = Welcome(server_name="relay", protocol=PROTOCOL_VERSION)
    >>> decode_message(encode_message(msg)) == msg
    True
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields
from typing import Any, Final, TypeAlias

import msgpack

from tm_dist.errors import TMDistError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_NESTING_DEPTH",
    "PROTOCOL_VERSION",
    "SCHEMA",
    "SIGNATURE_SIZE",
    "Disconnect",
    "EpisodeChunk",
    "Hello",
    "Message",
    "MessageError",
    "Status",
    "Weights",
    "Welcome",
    "decode_message",
    "encode_message",
    "tlspyo_deserializer",
    "tlspyo_serializer",
]

PROTOCOL_VERSION: Final = 1
"""Version of the message schema; a peer speaking another version is refused."""
SCHEMA: Final = "tm-dist"
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
"""Largest message accepted by default (policy weights are the big ones)."""
MAX_NESTING_DEPTH: Final = 16
"""Deepest nesting of lists, tuples and dicts accepted in free-form values."""
SIGNATURE_SIZE: Final = 64
"""Bytes of an Ed25519 signature (:mod:`tm_dist.signing`); unsigned messages carry none."""

_MAX_NAME = 256  # role, worker and server names
_MAX_KEY = 128  # keys of stats and info dicts
_MAX_TEXT = 4096  # free-form string values
_MAX_ITEMS = 1024  # entries of a free-form dict or list
_MAX_CONFIG = 1024 * 1024  # the policy's JSON configuration
_I64_MAX = 2**63 - 1
_TUPLE_EXT = 1  # msgpack extension code marking an array that was a tuple

StatValue: TypeAlias = float | int | str | bool | None


class MessageError(TMDistError, ValueError):
    """A message or tlspyo frame that cannot be encoded or decoded (says what was wrong)."""


# -- field checks --------------------------------------------------------------------------
def _type_name(value: object) -> str:
    return type(value).__name__


def _described(value: object) -> str:
    """A received value described without its content (it may be anything, even a secret)."""
    if isinstance(value, (str, bytes)):
        return f"a {_type_name(value)} of length {len(value)}"
    return f"a {_type_name(value)}"


def _check_str(value: object, where: str, max_len: int, *, non_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise MessageError(f"{where}: expected a str, got {_type_name(value)}")
    if len(value) > max_len:
        raise MessageError(f"{where}: string of {len(value)} characters, at most {max_len} allowed")
    if non_empty and not value:
        raise MessageError(f"{where}: empty string; expected a non-empty name")


def _check_int(value: object, where: str, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(f"{where}: expected an int, got {_type_name(value)}")
    if not lo <= value <= hi:
        raise MessageError(f"{where}: {value} is out of range; expected an int in [{lo}, {hi}]")


def _check_bool(value: object, where: str) -> None:
    if not isinstance(value, bool):
        raise MessageError(f"{where}: expected a bool, got {_type_name(value)}")


def _check_bytes(value: object, where: str, max_len: int) -> None:
    if not isinstance(value, bytes):
        raise MessageError(f"{where}: expected bytes, got {_type_name(value)}")
    if len(value) > max_len:
        raise MessageError(f"{where}: {len(value)} bytes, at most {max_len} allowed")


def _check_signature(value: object, where: str) -> None:
    if not isinstance(value, bytes):
        raise MessageError(f"{where}: expected bytes, got {_type_name(value)}")
    if len(value) not in (0, SIGNATURE_SIZE):
        raise MessageError(
            f"{where}: {len(value)} bytes; expected none (unsigned) or {SIGNATURE_SIZE} "
            "(an Ed25519 signature)"
        )


def _check_stats(value: object, where: str) -> None:
    """A flat dict of str → float | int | str | bool | None (finite or not, floats are fine)."""
    if not isinstance(value, dict):
        raise MessageError(f"{where}: expected a dict, got {_type_name(value)}")
    if len(value) > _MAX_ITEMS:
        raise MessageError(f"{where}: {len(value)} entries, at most {_MAX_ITEMS} allowed")
    for k, v in value.items():
        _check_str(k, f"{where} key", _MAX_KEY)
        if v is None or isinstance(v, (bool, float)):
            continue
        if isinstance(v, int):
            _check_int(v, f"{where}[{k!r}]", -_I64_MAX - 1, _I64_MAX)
        elif isinstance(v, str):
            _check_str(v, f"{where}[{k!r}]", _MAX_TEXT)
        else:
            raise MessageError(
                f"{where}[{k!r}]: expected float, int, str, bool or None, got {_type_name(v)}"
            )


def _check_json_like(value: object, where: str, depth: int = 0) -> None:
    """Nested dicts (str keys) and lists of float, int, str, bool and None."""
    if depth > MAX_NESTING_DEPTH:
        raise MessageError(f"{where}: nested deeper than {MAX_NESTING_DEPTH} levels")
    if value is None or isinstance(value, (bool, float)):
        return
    if isinstance(value, int):
        _check_int(value, where, -_I64_MAX - 1, _I64_MAX)
    elif isinstance(value, str):
        _check_str(value, where, _MAX_TEXT)
    elif isinstance(value, (list, dict)):
        if len(value) > _MAX_ITEMS:
            raise MessageError(f"{where}: {len(value)} entries, at most {_MAX_ITEMS} allowed")
        if isinstance(value, list):
            for i, item in enumerate(value):
                _check_json_like(item, f"{where}[{i}]", depth + 1)
        else:
            for k, item in value.items():
                _check_str(k, f"{where} key", _MAX_KEY)
                _check_json_like(item, f"{where}[{k!r}]", depth + 1)
    else:
        raise MessageError(
            f"{where}: expected dict, list, float, int, str, bool or None, got {_type_name(value)}"
        )


def _check_info_dict(value: object, where: str) -> None:
    if not isinstance(value, dict):
        raise MessageError(f"{where}: expected a dict, got {_type_name(value)}")
    _check_json_like(value, where)


# -- messages ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hello:
    """First message of a worker or trainer to the server: who it is and what it speaks."""

    role: str
    """``"worker"``, ``"trainer"`` or another role name."""
    name: str
    protocol: int
    info: dict[str, Any]
    """Free-form JSON-like details (versions, env settings, host)."""

    def __post_init__(self) -> None:
        _check_str(self.role, "Hello.role", _MAX_NAME, non_empty=True)
        _check_str(self.name, "Hello.name", _MAX_NAME, non_empty=True)
        _check_int(self.protocol, "Hello.protocol", 0, 2**31 - 1)
        _check_info_dict(self.info, "Hello.info")


@dataclass(frozen=True)
class Welcome:
    """The server's answer to a :class:`Hello`."""

    server_name: str
    protocol: int

    def __post_init__(self) -> None:
        _check_str(self.server_name, "Welcome.server_name", _MAX_NAME, non_empty=True)
        _check_int(self.protocol, "Welcome.protocol", 0, 2**31 - 1)


@dataclass(frozen=True)
class EpisodeChunk:
    """A piece of an episode from a worker: ``payload`` is a :mod:`tm_dist.codec` chunk."""

    worker: str
    episode: int
    """The worker's episode counter."""
    chunk: int
    """Index of this chunk within the episode (0, 1, ...)."""
    final: bool
    """True on the last chunk of the episode."""
    test: bool
    """True for an evaluation episode (deterministic policy, not for training)."""
    weights_version: int
    """Version of the :class:`Weights` that drove the episode."""
    n_steps: int
    payload: bytes
    stats: dict[str, StatValue]
    """Episode statistics, usually on the final chunk: return, lap_time, progress, ..."""

    def __post_init__(self) -> None:
        _check_str(self.worker, "EpisodeChunk.worker", _MAX_NAME, non_empty=True)
        _check_int(self.episode, "EpisodeChunk.episode", 0, _I64_MAX)
        _check_int(self.chunk, "EpisodeChunk.chunk", 0, _I64_MAX)
        _check_bool(self.final, "EpisodeChunk.final")
        _check_bool(self.test, "EpisodeChunk.test")
        _check_int(self.weights_version, "EpisodeChunk.weights_version", 0, _I64_MAX)
        _check_int(self.n_steps, "EpisodeChunk.n_steps", 0, 10**7)
        _check_bytes(self.payload, "EpisodeChunk.payload", DEFAULT_MAX_BYTES)
        _check_stats(self.stats, "EpisodeChunk.stats")


@dataclass(frozen=True)
class Weights:
    """A policy broadcast by the trainer: safetensors bytes and the policy's JSON config."""

    version: int
    safetensors: bytes
    config_json: str
    signature: bytes = b""
    """The trainer's Ed25519 signature (:func:`tm_dist.signing.sign_message`), or empty."""
    issued_ns: int = 0
    """When the trainer signed it (its wall clock, ns; signed too): workers refuse a signed
    message older than the newest they accepted, so an old one cannot be replayed."""

    def __post_init__(self) -> None:
        _check_signature(self.signature, "Weights.signature")
        _check_int(self.issued_ns, "Weights.issued_ns", 0, _I64_MAX)
        _check_int(self.version, "Weights.version", 0, _I64_MAX)
        _check_bytes(self.safetensors, "Weights.safetensors", DEFAULT_MAX_BYTES)
        _check_safetensors_header(self.safetensors)
        _check_str(self.config_json, "Weights.config_json", _MAX_CONFIG)
        try:
            config = json.loads(self.config_json)
        except json.JSONDecodeError as e:
            raise MessageError(f"Weights.config_json: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise MessageError("Weights.config_json: JSON nested too deeply") from None
        if not isinstance(config, dict):
            raise MessageError(
                f"Weights.config_json: expected a JSON object, got a JSON {_type_name(config)}"
            )


def _check_safetensors_header(data: bytes) -> None:
    """Cheap sanity check: an 8-byte little-endian header length, then a JSON object."""
    if len(data) < 8:
        raise MessageError(
            f"Weights.safetensors: {len(data)} bytes is too short for a safetensors file "
            "(it starts with an 8-byte header length)"
        )
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8 or n < 2 or data[8:9] != b"{":
        raise MessageError(
            "Weights.safetensors: not a safetensors file (bad header); "
            "send the bytes of safetensors.torch.save(...)"
        )


@dataclass(frozen=True)
class Status:
    """Periodic status of any role (throughput, buffer sizes, ...)."""

    role: str
    name: str
    stats: dict[str, Any]
    """Free-form JSON-like values."""

    def __post_init__(self) -> None:
        _check_str(self.role, "Status.role", _MAX_NAME, non_empty=True)
        _check_str(self.name, "Status.name", _MAX_NAME, non_empty=True)
        _check_info_dict(self.stats, "Status.stats")


@dataclass(frozen=True)
class Disconnect:
    """The trainer's word to one worker: stop, it keeps sending chunks the trainer refuses."""

    worker: str
    """The name of the worker that must stop."""
    reason: str
    signature: bytes = b""
    """The trainer's Ed25519 signature (:func:`tm_dist.signing.sign_message`), or empty."""
    issued_ns: int = 0
    """When the trainer signed it (see :attr:`Weights.issued_ns`)."""

    def __post_init__(self) -> None:
        _check_signature(self.signature, "Disconnect.signature")
        _check_int(self.issued_ns, "Disconnect.issued_ns", 0, _I64_MAX)
        _check_str(self.worker, "Disconnect.worker", _MAX_NAME, non_empty=True)
        _check_str(self.reason, "Disconnect.reason", _MAX_TEXT)


Message: TypeAlias = Hello | Welcome | EpisodeChunk | Weights | Status | Disconnect

_TYPES: Final[dict[str, type[Message]]] = {
    "hello": Hello,
    "welcome": Welcome,
    "episode_chunk": EpisodeChunk,
    "weights": Weights,
    "status": Status,
    "disconnect": Disconnect,
}
_NAMES: Final[dict[type[Message], str]] = {cls: name for name, cls in _TYPES.items()}
_HEADER_KEYS: Final = frozenset({"schema", "version", "type", "body"})


def encode_message(msg: Message) -> bytes:
    """The bytes of ``msg`` (fields were checked when it was built)."""
    name = _NAMES.get(type(msg))
    if name is None:
        raise MessageError(
            f"cannot encode a {_type_name(msg)}; expected one of "
            f"{sorted(c.__name__ for c in _TYPES.values())}"
        )
    body = {f.name: getattr(msg, f.name) for f in fields(msg)}
    try:
        data: bytes = msgpack.packb(
            {"schema": SCHEMA, "version": PROTOCOL_VERSION, "type": name, "body": body},
            use_bin_type=True,
            strict_types=True,
        )
    except (TypeError, ValueError, OverflowError) as e:  # fields mutated after construction
        raise MessageError(f"cannot encode {name}: {e}") from None
    return data


def _reject_ext(code: int, data: bytes) -> Any:
    raise MessageError(f"unexpected msgpack extension type {code}; messages carry none")


def decode_message(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Message:
    """The message in ``data``; raises :class:`MessageError` if anything is off."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"expected bytes to decode, got {_type_name(data)}")
    if len(data) > max_bytes:
        raise MessageError(
            f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes "
            "(raise max_bytes if such messages are expected)"
        )
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, ext_hook=_reject_ext, use_list=True
        )
    except MessageError:
        raise
    except msgpack.ExtraData:
        raise MessageError("trailing bytes after the message") from None
    except Exception as e:  # msgpack raises several ValueError/TypeError kinds
        raise MessageError(f"not a msgpack message ({_type_name(e)})") from None
    return _message_from(obj)


def _message_from(obj: object) -> Message:
    if not isinstance(obj, dict):
        raise MessageError(f"expected a msgpack map at the top level, got {_type_name(obj)}")
    if set(obj) != _HEADER_KEYS:
        raise MessageError(
            f"message header has keys {sorted(map(str, obj))}; expected {sorted(_HEADER_KEYS)}"
        )
    schema, version, name, body = obj["schema"], obj["version"], obj["type"], obj["body"]
    if schema != SCHEMA:
        raise MessageError(
            f"the schema field ({_described(schema)}) is not {SCHEMA!r}: not a tm-dist message"
        )
    if isinstance(version, bool) or not isinstance(version, int) or version != PROTOCOL_VERSION:
        shown = version if isinstance(version, int) else _described(version)
        raise MessageError(
            f"protocol version {shown} is not supported (this side speaks "
            f"{PROTOCOL_VERSION}); run the same tm-dist version on every machine"
        )
    if not isinstance(name, str) or name not in _TYPES:
        raise MessageError(
            f"unknown message type ({_described(name)}); expected one of {sorted(_TYPES)}"
        )
    cls = _TYPES[name]
    if not isinstance(body, dict):
        raise MessageError(f"{cls.__name__}: body is a {_type_name(body)}, expected a map")
    expected = {f.name for f in fields(cls)}
    optional = {f.name for f in fields(cls) if f.default is not MISSING}
    missing = sorted(expected - optional - set(body))
    extra = len(set(body) - expected)
    if missing or extra:
        raise MessageError(
            f"{cls.__name__}: missing fields {missing}, {extra} unknown fields; expected "
            f"exactly {sorted(expected)} ({sorted(optional)} may be left out)"
        )
    return cls(**body)


# -- tlspyo (de)serializer -----------------------------------------------------------------
class _TupleMark:
    """Stands for the extension value that opens an array which was a tuple."""


_TUPLE_MARK: Final = _TupleMark()
_TUPLE_EXT_VALUE: Final = msgpack.ExtType(_TUPLE_EXT, b"")


def _check_plain(value: object, depth: int) -> None:
    """Only the plain types tlspyo needs; containers nested at most MAX_NESTING_DEPTH deep."""
    t = type(value)
    if value is None or t in (bool, str, bytes, float):
        return
    if t in (list, tuple, dict) and depth >= MAX_NESTING_DEPTH:
        raise MessageError(f"value nested deeper than {MAX_NESTING_DEPTH} levels")
    if t is int:
        _check_int(value, "int value", -_I64_MAX - 1, 2**64 - 1)
    elif t in (list, tuple):
        for item in value:  # type: ignore[attr-defined]
            _check_plain(item, depth + 1)
    elif t is dict:
        for k, item in value.items():  # type: ignore[attr-defined]
            if type(k) is not str:
                raise MessageError(f"dict key of type {_type_name(k)}; only str keys are sent")
            _check_plain(item, depth + 1)
    else:
        raise MessageError(
            f"cannot serialize a {_type_name(value)}: only None, bool, int, float, str, "
            "bytes, list, tuple and dict go over tlspyo (encode app messages with "
            "tm_dist.wire.encode_message first)"
        )


def _pack_default(value: object) -> Any:
    if type(value) is tuple:
        return [_TUPLE_EXT_VALUE, *value]
    raise MessageError(f"cannot serialize a {_type_name(value)}")  # _check_plain ran first


def tlspyo_serializer(obj: Any) -> bytes:
    """Bytes for a tlspyo frame or object: plain Python values only, tuples preserved."""
    _check_plain(obj, 0)
    try:
        data: bytes = msgpack.packb(
            obj, use_bin_type=True, strict_types=True, default=_pack_default
        )
    except MessageError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise MessageError(f"cannot serialize: {e}") from None
    return data


def _tuple_ext_hook(code: int, data: bytes) -> Any:
    if code != _TUPLE_EXT or data:
        raise MessageError(f"unknown msgpack extension type {code} ({len(data)} bytes)")
    return _TUPLE_MARK


def _list_hook(items: list[Any]) -> Any:
    if items and items[0] is _TUPLE_MARK:
        return tuple(items[1:])
    return items


def _check_decoded(value: object, max_depth: int) -> None:
    """Depth limit and no stray tuple marks, without recursion deeper than max_depth."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if v is _TUPLE_MARK:
            raise MessageError("misplaced tuple marker in a tlspyo frame")
        if isinstance(v, (list, tuple, dict)):
            if depth >= max_depth:
                raise MessageError(f"value nested deeper than {max_depth} levels")
            items = v.values() if isinstance(v, dict) else v
            stack.extend((item, depth + 1) for item in items)


def tlspyo_deserializer(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES + 4096, max_depth: int = MAX_NESTING_DEPTH
) -> Any:
    """The value :func:`tlspyo_serializer` made; raises :class:`MessageError` on bad input.

    tlspyo calls it with the bytes only; bind other limits with :func:`functools.partial`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"expected bytes to deserialize, got {_type_name(data)}")
    if len(data) > max_bytes:
        raise MessageError(
            f"tlspyo frame of {len(data)} bytes exceeds the limit of {max_bytes} bytes"
        )
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            ext_hook=_tuple_ext_hook,
            list_hook=_list_hook,
            use_list=True,
        )
    except MessageError:
        raise
    except msgpack.ExtraData:
        raise MessageError("trailing bytes after the tlspyo frame") from None
    except Exception as e:  # msgpack raises several ValueError/TypeError kinds
        raise MessageError(f"not a msgpack tlspyo frame ({_type_name(e)})") from None
    _check_decoded(obj, max_depth)
    return obj

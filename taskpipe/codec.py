"""How a task's arguments and result become bytes in a store, and back.

A codec has ``encode(value) -> bytes`` and ``decode(data, type=Any)``. Decoding into
the handler's annotated type (dataclasses, lists, tuples, dicts, primitives,
datetimes) is done by msgspec, so a handler typed ``def h(order: Order)`` gets an
``Order``, not a dict.

- ``JsonCodec`` (default): readable in the database, safe for stores others write.
- ``MsgPackCodec``: smaller and faster; binary.
- ``PickleCodec``: any Python object — **unsafe** when anyone else can write to the
  store (unpickling runs code). Opt-in only.
"""

from __future__ import annotations

import datetime as _dt
import math
import pickle
import re
import types
import typing
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import msgspec
import msgspec.inspect

from .errors import CodecError

__all__ = [
    "Codec",
    "JsonCodec",
    "MsgPackCodec",
    "PickleCodec",
    "encode_many",
    "resolve_codec",
    "undecodable_type",
]


@runtime_checkable
class Codec(Protocol):
    """Turns values into bytes for a store and back."""

    name: str

    def encode(self, value: Any) -> bytes:
        """Return the bytes for ``value``; raise ``CodecError`` if it cannot be encoded."""
        ...

    def decode(self, data: bytes, type: Any = Any) -> Any:
        """Return the value in ``data`` as ``type``; raise ``CodecError`` if it does not fit."""
        ...


def _enc_hook(value: Any) -> Any:
    # Subclasses of the date types (freezegun's FakeDatetime, pendulum's DateTime)
    # are encoded as their ISO text, which decodes back into the plain type.
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, int):  # int subclasses such as TaskId and Attempt
        return int(value)
    raise NotImplementedError(f"cannot encode objects of type {type(value).__name__}")


class _MsgspecCodec:
    """Shared logic for the msgspec-backed codecs (they differ only in format)."""

    name = ""
    _module: Any = None

    def __init__(self) -> None:
        self._encoder = self._module.Encoder(enc_hook=_enc_hook)
        self._decoders: dict[Any, Any] = {}

    def encode(self, value: Any) -> bytes:
        """Return the bytes for ``value``; raise ``CodecError`` if it cannot be encoded."""
        try:
            data = self._encoder.encode(value)
            self._check(value, data)
        except CodecError:
            raise
        except Exception as exc:  # msgspec, enc_hook, RecursionError, MemoryError…
            raise _encode_error(self.name, value, exc) from exc
        return data

    def _check(self, value: Any, data: bytes) -> None:
        """Refuse an encoding that lost information (a hook for subclasses)."""

    def _encode_many(self, values: list[Any]) -> list[bytes]:
        encode = self._encoder.encode
        try:
            data = [encode(value) for value in values]
        except Exception:  # encode each again: the first bad value raises as encode() does
            return [self.encode(value) for value in values]
        self._check_many(values, data)
        return data

    def _check_many(self, values: list[Any], data: list[bytes]) -> None:
        """``_check`` each encoding (a subclass may filter first); none to make when
        ``_check`` is this class's own, which checks nothing."""
        if type(self)._check is not _MsgspecCodec._check:
            for value, encoded in zip(values, data, strict=True):
                self._check(value, encoded)

    def decode(self, data: bytes, type: Any = Any) -> Any:
        """Return the value in ``data`` as ``type``; raise ``CodecError`` if it does not fit."""
        try:
            decoder = self._decoders.get(type)
            if decoder is None:
                decoder = self._module.Decoder(_plain_type(type))
                self._decoders[type] = decoder
        except Exception as exc:
            raise CodecError(f"{self.name}: cannot decode into {type!r}: {exc}") from exc
        try:
            return decoder.decode(data)
        except Exception as exc:  # DecodeError, ValidationError, RecursionError, __post_init__…
            raise _decode_error(self.name, data, exc) from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class JsonCodec(_MsgspecCodec):
    """JSON (the default): readable, portable, safe. Refuses NaN and ±infinity, which
    JSON cannot hold (msgspec would write them as ``null``)."""

    name = "json"
    _module = msgspec.json

    def __init__(self) -> None:
        super().__init__()
        self._msgpack = msgspec.msgpack.Encoder(enc_hook=_enc_hook)

    def _check(self, value: Any, data: bytes) -> None:
        # msgspec writes NaN and ±inf as null. Two cheap filters without false
        # negatives keep the common case fast: most payloads hold no null at all, and
        # of those that do (None), the MessagePack encoding shows whether any float is
        # non-finite. Only then is the value walked, exactly, to name the culprit.
        if b"null" in data and self._maybe_non_finite(value):
            path = _non_finite_float(msgspec.to_builtins(value, enc_hook=_enc_hook))
            if path is not None:
                raise CodecError(
                    f"json: cannot encode {type(value).__name__} value: JSON has no NaN or "
                    f"infinity (found {path[1]!r} at {path[0]}); send None or a string "
                    "instead, or use MsgPackCodec, which keeps them"
                )

    def _check_many(self, values: list[Any], data: list[bytes]) -> None:
        if b"null" in b"\0".join(data):  # one scan; the NUL keeps values apart
            for value, encoded in zip(values, data, strict=True):
                self._check(value, encoded)

    def _maybe_non_finite(self, value: Any) -> bool:
        try:
            return _MAYBE_NON_FINITE.search(self._msgpack.encode(value)) is not None
        except Exception:  # MessagePack cannot hold it (an int beyond 64 bits): walk
            return True


class MsgPackCodec(_MsgspecCodec):
    """MessagePack: compact binary, same types as JSON."""

    name = "msgpack"
    _module = msgspec.msgpack


def encode_many(codec: Codec, values: Iterable[Any]) -> list[bytes]:
    """Encode each of ``values`` with ``codec``, in order, raising ``CodecError`` for the
    first that cannot be as ``codec.encode`` would; the msgspec codecs do it in one pass."""
    values = values if isinstance(values, list) else list(values)
    if isinstance(codec, _MsgspecCodec) and type(codec).encode is _MsgspecCodec.encode:
        return codec._encode_many(values)  # (a subclass with its own encode() is asked)
    encode = codec.encode
    return [encode(value) for value in values]


class PickleCodec:
    """Python pickle: any picklable object. UNSAFE if others can write to the store."""

    name = "pickle"

    def encode(self, value: Any) -> bytes:
        """Pickle ``value``; raise ``CodecError`` if it cannot be pickled."""
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # pickle raises many types
            raise _encode_error(self.name, value, exc) from exc

    def decode(self, data: bytes, type: Any = Any) -> Any:
        """Unpickle ``data`` (``type`` is not checked); raise ``CodecError`` on failure."""
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise _decode_error(self.name, data, exc) from exc

    def __repr__(self) -> str:
        return "PickleCodec()"


def resolve_codec(codec: Any) -> Codec:
    """Accept a codec class or instance (or None for JSON) and return an instance."""
    if codec is None:
        return JsonCodec()
    if isinstance(codec, type):
        codec = codec()
    if not (callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None))):
        raise TypeError(f"{codec!r} is not a codec: it needs encode(value) and decode(data, type)")
    return codec


def undecodable_type(codec: Codec, tp: Any) -> Any | None:
    """The first type within ``tp`` that ``codec`` can never decode into (a class that
    msgspec does not know, so every payload would be refused), or None when all is
    well. Only the msgspec codecs decode into types: any other codec accepts any."""
    if not isinstance(codec, _MsgspecCodec):
        return None
    try:
        info = msgspec.inspect.type_info(_plain_type(tp))
    except Exception:  # a type msgspec cannot even read
        return tp
    seen: set[int] = set()
    stack = [info]
    while stack:  # the type tree; a recursive type refers back to a node already seen
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, msgspec.inspect.CustomType) and node.cls is not object:
            return node.cls  # (``object`` decodes as ``Any`` does)
        for name in node.__struct_fields__:
            value = getattr(node, name)
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, msgspec.inspect.Field):
                    item = item.type
                if isinstance(item, msgspec.inspect.Type):
                    stack.append(item)
    return None


def _plain_type(tp: Any) -> Any:
    """Replace freezegun's stand-in classes (FakeDatetime, FakeDate) in a type with the
    real ones: annotations resolved under a frozen clock name the fakes."""
    if isinstance(tp, type):
        if tp.__module__.startswith("freezegun"):
            return next(base for base in tp.__mro__ if not base.__module__.startswith("freezegun"))
        return tp
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if not args or origin is None:
        return tp
    plain = tuple(_plain_type(arg) for arg in args)
    if plain == args:
        return tp
    if origin is typing.Annotated:
        return typing.Annotated[(plain[0], *args[1:])]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[plain]  # noqa: UP007 - built from a tuple at run time
    try:
        return tp.copy_with(plain)  # typing generics
    except AttributeError:
        return origin[plain]  # builtin generics: dict[str, X]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return f"it is nested too deeply for Python's recursion limit ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _encode_error(codec: str, value: Any, exc: BaseException) -> CodecError:
    fix = "; flatten it" if isinstance(exc, RecursionError) else ""
    return CodecError(f"{codec}: cannot encode {type(value).__name__} value: {_reason(exc)}{fix}")


def _decode_error(codec: str, data: Any, exc: BaseException) -> CodecError:
    return CodecError(f"{codec}: cannot decode payload {_preview(data)}: {_reason(exc)}")


# msgspec writes every float to MessagePack as a float64: 0xcb, then 8 big-endian
# bytes. NaN and ±inf are exactly those whose exponent bits are all ones, so their
# first two bytes are 7f|ff and f0-ff. The pattern may also match inside an int or
# binary payload (then the exact walk decides), but never misses a non-finite float.
_MAYBE_NON_FINITE = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]")


def _non_finite_float(value: Any) -> tuple[str, float] | None:
    """The path and value of the first NaN or infinity in ``value`` (the output of
    ``msgspec.to_builtins``: dicts, lists, tuples and scalars), or None. Iterative, so
    any depth msgspec could encode is walked. Dict keys are not checked: JSON keys are
    strings, and msgspec writes a float key as ``"nan"``/``"inf"``, which decode back."""
    stack: list[tuple[Any, Any]] = [(value, None)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                keys = []
                while where is not None:
                    where, key = where
                    keys.append(f"[{key!r}]")
                path = "".join(reversed(keys)) or "the top level"
                return (path if len(path) <= 80 else path[:80] + "…"), item
        elif isinstance(item, dict):
            stack.extend((v, (where, k)) for k, v in reversed(item.items()))
        elif isinstance(item, (list, tuple)):
            stack.extend((item[i], (where, i)) for i in range(len(item) - 1, -1, -1))
    return None


def _preview(data: Any, limit: int = 40) -> str:
    text = repr(bytes(data) if isinstance(data, (bytearray, memoryview)) else data)
    return text if len(text) <= limit else text[:limit] + "…"

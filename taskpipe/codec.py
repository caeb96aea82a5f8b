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
import pickle
import types
import typing
from typing import Any, Protocol, runtime_checkable

import msgspec

from .errors import CodecError

__all__ = ["Codec", "JsonCodec", "MsgPackCodec", "PickleCodec", "resolve_codec"]


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
            return self._encoder.encode(value)
        except (TypeError, NotImplementedError, OverflowError, ValueError) as exc:
            raise CodecError(f"{self.name}: {exc}") from exc

    def decode(self, data: bytes, type: Any = Any) -> Any:
        """Return the value in ``data`` as ``type``; raise ``CodecError`` if it does not fit."""
        decoder = self._decoders.get(type)
        if decoder is None:
            try:
                decoder = self._module.Decoder(_plain_type(type))
            except TypeError as exc:
                raise CodecError(f"{self.name}: cannot decode into {type!r}: {exc}") from exc
            self._decoders[type] = decoder
        try:
            return decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
            raise CodecError(f"{self.name}: cannot decode payload {_preview(data)}: {exc}") from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class JsonCodec(_MsgspecCodec):
    """JSON (the default): readable, portable, safe."""

    name = "json"
    _module = msgspec.json


class MsgPackCodec(_MsgspecCodec):
    """MessagePack: compact binary, same types as JSON."""

    name = "msgpack"
    _module = msgspec.msgpack


class PickleCodec:
    """Python pickle: any picklable object. UNSAFE if others can write to the store."""

    name = "pickle"

    def encode(self, value: Any) -> bytes:
        """Pickle ``value``; raise ``CodecError`` if it cannot be pickled."""
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # pickle raises many types
            raise CodecError(f"pickle: {exc}") from exc

    def decode(self, data: bytes, type: Any = Any) -> Any:
        """Unpickle ``data`` (``type`` is not checked); raise ``CodecError`` on failure."""
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise CodecError(f"pickle: cannot decode payload {_preview(data)}: {exc}") from exc

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


def _preview(data: Any, limit: int = 40) -> str:
    text = repr(bytes(data) if isinstance(data, (bytearray, memoryview)) else data)
    return text if len(text) <= limit else text[:limit] + "…"

"""Codecs refuse what they cannot store faithfully, and every failure is a CodecError:
JSON refuses NaN and ±infinity anywhere in a value (msgspec would write ``null``), and
any exception while encoding or decoding (too deep a value, a failing hook) becomes a
``CodecError`` whose cause is the original exception."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import msgspec
import pytest

from taskpipe import CodecError, JsonCodec, MsgPackCodec, PickleCodec, Task
from taskpipe.codec import encode_many
from taskpipe.sqlite import SqliteStorage

NAN, INF = float("nan"), float("inf")


def row_count(db) -> int:
    return db.execute_sql("SELECT count(*) FROM taskpipe_jobs").fetchone()[0]


def deep(levels: int, inner=None) -> list:
    value: list = [inner]
    for _ in range(levels):
        value = [value]
    return value


@dataclass
class Point:
    x: float
    label: str | None = None


class Reading(msgspec.Struct):
    value: float
    unit: str | None = None


# JSON refuses NaN and infinity ------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "where"),
    [
        (NAN, "the top level"),
        (INF, "the top level"),
        (-INF, "the top level"),
        ([1.0, None, NAN], "[2]"),
        ({"a": {"b": [None, -INF]}}, "['a']['b'][1]"),
        ((None, INF), "[1]"),
        ({INF}, "[0]"),
        (Point(NAN), "['x']"),
        ([Point(1.0), Point(INF, label="hot")], "[1]['x']"),
        (Reading(NAN), "['value']"),
        ({"rows": [{"id": 1, "v": None}, {"id": 2, "v": NAN}]}, "['rows'][1]['v']"),
        (deep(500, NAN), "[0][0][0][0]"),
    ],
)
def test_json_refuses_non_finite_floats_anywhere(value, where):
    with pytest.raises(CodecError, match="JSON has no NaN or infinity") as info:
        JsonCodec().encode(value)
    message = str(info.value)
    assert f"at {where}" in message
    assert "MsgPackCodec" in message  # says how to fix it


@pytest.mark.parametrize(
    "value",
    [
        None,
        [None, 1.5, "null", "NaN", "inf"],
        {"a": None, "big": 1.7976931348623157e308, "small": -5e-324},
        Point(0.5),  # label None
        Reading(2.0),
        {"n": 0xCB7FF000, "none": None},  # its MessagePack bytes look like a NaN
        {"n": 2**70, "none": None},  # beyond what MessagePack holds
        deep(500),
    ],
)
def test_json_still_encodes_nulls_and_finite_floats(value):
    codec = JsonCodec()
    assert codec.decode(codec.encode(value), type(value)) == value


def test_json_writes_decimals_as_strings_so_a_decimal_nan_is_kept():
    codec = JsonCodec()
    data = codec.encode({"price": Decimal("NaN"), "note": None})
    assert codec.decode(data, dict[str, Decimal | None])["price"].is_nan()


def test_json_float_keys_are_strings_and_round_trip():
    """Dict keys are not checked: msgspec writes a float key as text ("nan", "inf"),
    which decodes back into the float when the handler asks for dict[float, ...]."""
    codec = JsonCodec()
    data = codec.encode({NAN: None, INF: 2})
    (key_nan, key_inf) = codec.decode(data, dict[float, int | None])
    assert math.isnan(key_nan) and key_inf == INF


def test_msgpack_keeps_non_finite_floats():
    codec = MsgPackCodec()
    got = codec.decode(codec.encode({"v": [NAN, INF, -INF, None]}), dict[str, list[float | None]])
    assert math.isnan(got["v"][0]) and got["v"][1:] == [INF, -INF, None]
    assert codec.decode(codec.encode(Point(INF)), Point) == Point(INF)


def test_pushing_a_nan_writes_nothing(storage, db):
    with pytest.raises(CodecError, match="NaN"):
        storage.push({"reading": NAN})
    with pytest.raises(CodecError, match="NaN"):
        storage.push_task(Task(Point(INF), priority=2))
    with pytest.raises(CodecError, match="NaN"):
        storage.push_bulk([{"v": 1.0}, {"v": None}, {"v": -INF}])
    assert row_count(db) == 0
    store = SqliteStorage(db, queue="mp", codec=MsgPackCodec)
    store.push({"reading": NAN})  # MessagePack can hold it
    assert row_count(db) == 1


@pytest.mark.parametrize("codec", [JsonCodec(), MsgPackCodec(), PickleCodec()], ids=repr)
def test_encode_many_gives_what_encode_gives_and_refuses_what_it_refuses(codec):
    values = [1, None, "null", {"a": [1.5, None]}, Point(2.0), (None, "x")]
    assert encode_many(codec, iter(values)) == [codec.encode(v) for v in values]
    bad = [
        None,
        {"v": 1.0},
        object() if isinstance(codec, JsonCodec | MsgPackCodec) else _Unpicklable(),
    ]
    with pytest.raises(CodecError) as many:
        encode_many(codec, bad)
    with pytest.raises(CodecError) as one:
        codec.encode(bad[-1])
    assert str(many.value) == str(one.value)


def test_encode_many_refuses_a_nan_among_many_values_and_names_where():
    values = [{"v": float(i)} for i in range(1000)] + [{"v": None}, {"w": [None, NAN]}]
    with pytest.raises(
        CodecError, match=r"JSON has no NaN or infinity \(found nan at \['w'\]\[1\]\)"
    ):
        encode_many(JsonCodec(), values)
    assert len(encode_many(JsonCodec(), values[:-1])) == 1001


def test_encode_many_asks_a_subclass_that_overrides_encode():
    class Wrapped(JsonCodec):
        def encode(self, value):
            return b"w:" + super().encode(value)

    assert encode_many(Wrapped(), [1, "a"]) == [b"w:1", b'w:"a"']


def test_encode_many_makes_a_subclass_check():
    class NoEmptyStrings(MsgPackCodec):
        def _check(self, value, data):
            if value == "":
                raise CodecError("no empty strings")

    with pytest.raises(CodecError, match="no empty strings"):
        encode_many(NoEmptyStrings(), ["a", ""])


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("not today")


# Every failure is a CodecError ----------------------------------------------------------
CODECS = [JsonCodec(), MsgPackCodec(), PickleCodec()]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_too_deep_a_value_is_a_codec_error(codec):
    value = deep(100_000)
    with pytest.raises(CodecError, match="nested too deeply.*flatten it") as info:
        codec.encode(value)
    assert str(info.value).startswith(f"{codec.name}: cannot encode list value")
    assert isinstance(info.value.__cause__, RecursionError)


def test_pushing_too_deep_a_value_writes_nothing(storage, db):
    with pytest.raises(CodecError, match="nested too deeply"):
        storage.push(deep(100_000))
    with pytest.raises(CodecError, match="nested too deeply"):
        storage.push_bulk([1, deep(100_000)])
    assert row_count(db) == 0


@pytest.mark.parametrize(
    ("codec", "payload"),
    [
        (JsonCodec(), b"[" * 100_000 + b"]" * 100_000),
        (MsgPackCodec(), b"\x91" * 100_000 + b"\xc0"),  # fixarray of one, 100,000 times
    ],
    ids=["json", "msgpack"],
)
def test_too_deep_a_payload_is_a_codec_error(codec, payload):
    with pytest.raises(CodecError, match="cannot decode payload.*nested too deeply") as info:
        codec.decode(payload)
    assert isinstance(info.value.__cause__, RecursionError)


class BrokenDatetime(datetime):
    def isoformat(self, *args, **kwargs):
        raise RuntimeError("no ISO text today")


@pytest.mark.parametrize("codec", CODECS[:2], ids=lambda c: c.name)
def test_any_exception_while_encoding_is_a_codec_error(codec):
    with pytest.raises(
        CodecError, match="cannot encode dict value: RuntimeError: no ISO text"
    ) as info:
        codec.encode({"when": BrokenDatetime(2030, 1, 1)})
    assert isinstance(info.value.__cause__, RuntimeError)


@dataclass
class Picky:
    n: int

    def __post_init__(self) -> None:
        if self.n == 13:
            raise LookupError("13 is unlucky")


@pytest.mark.parametrize("codec", CODECS[:2], ids=lambda c: c.name)
def test_any_exception_while_decoding_is_a_codec_error(codec):
    assert codec.decode(codec.encode(Picky(7)), Picky) == Picky(7)
    with pytest.raises(
        CodecError, match="cannot decode payload.*LookupError: 13 is unlucky"
    ) as info:
        codec.decode(codec.encode({"n": 13}), Picky)
    assert isinstance(info.value.__cause__, LookupError)


def test_an_unhashable_target_type_is_a_codec_error():
    from typing import Annotated

    with pytest.raises(CodecError, match="cannot decode into"):
        JsonCodec().decode(b"1", Annotated[int, ["unhashable"]])


class Unpicklable:
    def __reduce__(self):
        raise LookupError("not today")


class Unloadable:
    def __init__(self) -> None:
        self.state = "saved"

    def __setstate__(self, state):
        raise LookupError("cannot restore")


def test_pickle_errors_name_the_exception_and_chain_it():
    codec = PickleCodec()
    with pytest.raises(
        CodecError, match="pickle: cannot encode Unpicklable value: LookupError: not today"
    ) as info:
        codec.encode(Unpicklable())
    assert isinstance(info.value.__cause__, LookupError)
    data = codec.encode(Unloadable())
    with pytest.raises(
        CodecError, match="cannot decode payload.*LookupError: cannot restore"
    ) as info:
        codec.decode(data)
    assert isinstance(info.value.__cause__, LookupError)

"""The one JSON reader (pocketswap.core.jsonio): bounds, decoding, the schema check and JSON-lines logs."""

from __future__ import annotations

import json
import logging
import os

import pytest

from pocketswap.core.errors import PocketswapError
from pocketswap.core.jsonio import (
    JSONFileError,
    Obj,
    check_schema,
    nesting_depth,
    parse_json,
    read_json,
    read_jsonl,
)
from pocketswap.core.manifest import ManifestError


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_a_file_pocketswap_wrote_reads_back(tmp_path):
    data = {"a": [1, 2.5, None, True, "é"], "b": {"c": {"d": []}}, "psnr_db": float("inf")}
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    assert read_json(path) == data
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(data).encode())  # a byte-order mark from an editor
    assert read_json(path) == data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"name": "caf\xe9"}', "not UTF-8 text (byte 0xe9 at offset 13)"),
        (b"\xff\xfe{}", "not UTF-8 text (byte 0xff at offset 0)"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64 levels"),  # the parser's RecursionError
        (b'{"a": ' * 100 + b"1" + b"}" * 100, "nested deeper than 64 levels"),  # parses; refused after
        (b'{"size": ' + b"9" * 5000 + b"}", "not valid JSON (a number of 5000 digits, over the 4300 allowed)"),
        (b'{"a": 1', "not valid JSON (Expecting ',' delimiter at line 1 column 8)"),
        (b"", "not valid JSON (Expecting value at line 1 column 1)"),
        (b"{} {}", "not valid JSON (Extra data"),
    ],
)
def test_broken_json_is_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(ManifestError) as info:
        read_json(path, "manifest", error=ManifestError)
    text = one_line(info)
    assert text.startswith(f"manifest {path}: ") and message in text, text


def test_files_that_are_not_json_files_are_one_line(tmp_path):
    with pytest.raises(JSONFileError, match="no such file") as info:
        read_json(tmp_path / "missing.json")
    one_line(info)
    with pytest.raises(JSONFileError, match="is a folder"):
        read_json(tmp_path)
    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(JSONFileError, match="not a regular file"):  # opening it would block
        read_json(tmp_path / "pipe.json")
    big = tmp_path / "big.json"
    big.write_bytes(b"[" + b"1," * 600 + b"1]")
    with pytest.raises(JSONFileError, match=r"1203 bytes, over the 1000 bytes limit"):
        read_json(big, max_bytes=1000)
    assert issubclass(JSONFileError, PocketswapError)


def test_depth_is_counted_without_recursion():
    deep: list = []
    for _ in range(200_000):  # built and measured without recursion (json.dumps would overflow on it)
        deep = [deep]
    assert nesting_depth(deep, 64) == 65  # stops just past the limit
    assert nesting_depth({"a": [{"b": 1}], "c": []}) == 3
    assert nesting_depth(5) == 0
    assert parse_json(b'{"a": [[[]]]}', max_depth=4) == {"a": [[[]]]}
    with pytest.raises(JSONFileError, match="nested deeper than 3 levels"):
        parse_json(b'{"a": [[[]]]}', "header", max_depth=3)


SCHEMA = Obj(
    {
        "inputs": [Obj({"name": str, "shape": [(int, None)]}, required=("name",), closed=True)],
        "parity": {"max_abs": float, "passed": bool, "cases": [{"psnr_db": (float, None)}]},
        "delegation": ({"fully_accelerated": bool}, None),
        "ops": Obj(values=int),
        "source": {"identity": (dict, str, None)},
        "extra": dict,
    },
    required=("inputs",),
)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"inputs": "abc"}, "field 'inputs' must be a list, got 'abc'"),
        ({"inputs": 5}, "field 'inputs' must be a list, got 5"),
        ({"inputs": [None]}, "field 'inputs[0]' must be an object, got null"),
        ({"inputs": [{"name": "x", "bogus": 1}]}, "field 'inputs[0].bogus' is not a field here (known: name, shape)"),
        ({"inputs": [{"shape": [1]}]}, "field 'inputs[0].name' is missing"),
        ({"inputs": [{"name": "x", "shape": [1, True]}]}, "field 'inputs[0].shape[1]' must be a whole number or null"),
        ({"inputs": [{"name": "x", "shape": [1.5]}]}, "field 'inputs[0].shape[0]' must be a whole number or null"),
        ({"inputs": [], "parity": [1]}, "field 'parity' must be an object, got a list"),
        ({"inputs": [], "parity": {"max_abs": "x"}}, "field 'parity.max_abs' must be a number, got 'x'"),
        ({"inputs": [], "parity": {"passed": 1}}, "field 'parity.passed' must be true or false, got 1"),
        ({"inputs": [], "parity": {"cases": [{"psnr_db": "a"}]}}, "field 'parity.cases[0].psnr_db' must be a number or null"),
        ({"inputs": [], "delegation": "x"}, "field 'delegation' must be an object or null, got 'x'"),
        ({"inputs": [], "delegation": {"fully_accelerated": "yes"}}, "field 'delegation.fully_accelerated' must be"),
        ({"inputs": [], "ops": {"Conv": "33"}}, "field 'ops.Conv' must be a whole number, got '33'"),
        ({"inputs": [], "source": "abc"}, "field 'source' must be an object, got 'abc'"),
        ({"inputs": [], "source": {"identity": 5}}, "field 'source.identity' must be an object or a string or null, got 5"),
        ({"inputs": [], "extra": [1, 2]}, "field 'extra' must be an object, got a list"),
        ({}, "field 'inputs' is missing"),
        ([], "m.json must be an object, got a list"),
    ],
)  # fmt: skip
def test_the_schema_check_names_the_field_and_the_type(data, message):
    with pytest.raises(JSONFileError) as info:
        check_schema(data, SCHEMA, "m.json")
    assert message in one_line(info), str(info.value)


def test_the_schema_check_passes_what_fits():
    data = {"inputs": [{"name": "image", "shape": [1, None, 64]}], "parity": {"max_abs": 1, "cases": [{"psnr_db": None}]},
            "delegation": None, "ops": {"Conv": 3}, "source": {"identity": "old name"}, "extra": {}, "more": [1]}  # fmt: skip
    assert check_schema(data, SCHEMA, "m.json") is data


def _log(tmp_path, content: bytes):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(content)
    return path


def test_a_jsonl_log_cut_by_a_kill_drops_its_last_line_and_says_so(tmp_path, caplog):
    lines = b'{"step": 1, "kind": "train"}\n\n{"step": 2, "kind": "train"}\n'
    assert [r["step"] for r in read_jsonl(_log(tmp_path, lines))] == [1, 2]
    for cut in (b'{"step": 3, "ki', b'{"step": 3, "name": "caf\xc3', b"{" * 100_000):
        with caplog.at_level(logging.WARNING, "pocketswap.core.jsonio"):
            caplog.clear()
            assert [r["step"] for r in read_jsonl(_log(tmp_path, lines + cut))] == [1, 2]
        assert "skipped its last line 4, cut off" in caplog.text, caplog.text
    with caplog.at_level(logging.WARNING, "pocketswap.core.jsonio"):
        caplog.clear()
        read_jsonl(_log(tmp_path, lines + b'{"step": 3'), warn_cut=False)  # a reader polling a live log
    assert not caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"step": 1}\n{"step": 2, "ki\n{"step": 3}\n', "line 2: not valid JSON"),
        (b'{"step": 1}\n{"step": 2, "ki\n', "line 2: not valid JSON"),  # ended by a newline: not a cut
        (b'{"step": 1}\n\xff\n{"step": 3}\n', "line 2: not UTF-8 text"),
        (b'{"step": 1}\n' + b"[" * 100_000 + b"\n", "line 2: nested deeper than 64 levels"),
        (b'{"step": 1}\n{"step": "x"}\n', "line 2: field 'step' must be a whole number, got 'x'"),
    ],
)
def test_corruption_inside_a_jsonl_log_is_refused_naming_the_line(tmp_path, content, message):
    path = _log(tmp_path, content)
    with pytest.raises(JSONFileError) as info:
        read_jsonl(path, "training log", schema={"step": int})
    text = one_line(info)
    assert text.startswith(f"training log {path} line") and message in text, text

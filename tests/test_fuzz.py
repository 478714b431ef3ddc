"""Seeded fuzzing of the three readers of user files: the .scale table, .npy tensors and images. Each case
mutates a valid file (bit flips, truncation, inserted bytes, spliced-in foreign content, edited header
text); the reader must either succeed or raise QuantError (one clean line), never anything else.

A success is checked too: a table that still reads has only finite positive scales and zero points in
range, and a decoded sample has the input's shape and dtype and only finite values. No case may emit a
Python warning either (it would be a raw, unformatted line on stderr)."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
from onnx import helper
from PIL import Image

from quanttool.errors import QuantError
from quanttool.inputs import InputSpec, Preprocess, load_sample
from quanttool.rewrite import check_table as check_names
from quanttool.table import read_table
from tests.helpers import make_model, tensor_info

CASES = 150  # per reader: a few seconds in all


@pytest.fixture(autouse=True)
def no_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert [str(w.message) for w in caught] == []

NOISE = [b"\x00", b"\xff", b"\r", b"\n", b"#", b" ", b"\t", b"\x85", b"\xe2\x80\xa8", b"nan", b"-inf", b"1e999",
         b"-0", b"99999999999999999999", b"'", b"(", b")", b",", b":", b"{", b"}", b"\xc3", b"\x1b[2J"]


def mutate(data: bytes, rng: np.random.Generator, foreign: list[bytes], header: int = 0) -> bytes:
    """One to four random edits of `data`; with `header`, half of them land in its first `header` bytes."""
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        kind = rng.integers(6)
        end = header if header and rng.random() < 0.5 else len(data)
        at = int(rng.integers(0, min(end, len(data)) + 1))
        if kind == 0 and data:  # flip bits in a few bytes
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                data[int(pos)] ^= 1 << int(rng.integers(8))
        elif kind == 1:  # truncate
            del data[at:]
        elif kind == 2:  # insert a token that parsers treat specially
            data[at:at] = NOISE[int(rng.integers(len(NOISE)))]
        elif kind == 3 and data:  # delete a range
            del data[at:at + int(rng.integers(1, 16))]
        elif kind == 4:  # overwrite with random bytes
            data[at:at + 8] = rng.integers(0, 256, size=8, dtype=np.uint8).tobytes()
        else:  # splice in a piece of another format
            piece = foreign[int(rng.integers(len(foreign)))]
            data[at:at] = piece[: int(rng.integers(1, len(piece) + 1))]
    return bytes(data)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def image_bytes(fmt: str, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


SPEC = InputSpec("data", (1, 3, 5, 7))


def valid_npys() -> list[bytes]:
    x = np.random.default_rng(1).normal(size=(3, 5, 7))
    return [npy_bytes(x.astype(np.float32)), npy_bytes(x[None].astype(np.float64)),
            npy_bytes(np.asfortranarray(x.astype(">f4"))), npy_bytes((x * 10).astype(np.int16))]


def valid_images() -> dict[str, bytes]:
    return {".png": image_bytes("PNG", 2), ".jpg": image_bytes("JPEG", 3), ".bmp": image_bytes("BMP", 4),
            ".webp": image_bytes("WEBP", 5)}


def check_sample(feeds: dict) -> None:
    array = feeds["data"]
    assert array.shape == SPEC.shape and array.dtype == np.float32 and np.isfinite(array).all()


def check_table(table) -> None:
    for qp in table.params.values():
        assert math.isfinite(qp.scale) and qp.scale > 0 and -128 <= qp.zero_point <= 127


def fuzz(files, read, check) -> None:
    """`files` writes each mutated case and yields (case number, path): `read(case, path)` must succeed (and
    pass `check`) or raise QuantError. Both outcomes must occur, or the mutations test nothing."""
    outcomes = {"ok": 0, "refused": 0}
    for case, path in files:
        try:
            result = read(case, path)
        except QuantError:
            outcomes["refused"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 -- the point of the test
            pytest.fail(f"case {case}: {type(exc).__name__}: {exc} on {path.read_bytes()[:200]!r}")
        outcomes["ok"] += 1
        check(result)
    assert outcomes["ok"] > 10 and outcomes["refused"] > 10


def test_fuzz_table_reader(tmp_path):
    names = ["input", "conv out", "relu:0", "x"]
    valid = ("# quanttool scale table: name scale zero_point\n# model: m.onnx\n"
             + "".join(f"{name} {0.01 * (i + 1):.9g} {-128 if i % 2 else 0}\n" for i, name in enumerate(names))
             ).encode()
    rng = np.random.default_rng(11)
    foreign = [b"\x93NUMPY", valid_npys()[0][:40], b"\xef\xbb\xbf"]

    def files():
        for case in range(CASES):
            path = tmp_path / "t.scale"
            path.write_bytes(mutate(valid, rng, foreign))
            yield case, path

    # every other case also goes through the one check of a table's names against a model (the converter's)
    model = make_model([helper.make_node("Relu", [a], [b]) for a, b in zip(names, names[1:])],
                       [tensor_info(names[0], [1, 2])], [tensor_info(names[-1], [1, 2])])

    def read(case, path):
        table = read_table(path)
        if case % 2:
            check_names(model, table)
        return table

    fuzz(files(), read, check_table)


def test_fuzz_npy_reader(tmp_path):
    valid = valid_npys()
    rng = np.random.default_rng(12)
    pieces = [b"{'descr': '|O'", b"'shape': (99999999999,", b"((((((((((((((((((((((((((((((((((((", *valid]

    def files():
        for case in range(CASES):
            path = tmp_path / "x.npy"
            path.write_bytes(mutate(valid[case % len(valid)], rng, pieces, header=128))
            yield case, path

    fuzz(files(), lambda case, path: load_sample({"data": path}, [SPEC], Preprocess()), check_sample)


def test_fuzz_image_reader(tmp_path):
    valid = valid_images()
    foreign = [*valid.values(), b"%!PS-Adobe-3.0 EPSF-3.0\n", b"GIF89a", b"\x00\x00\x00\x0cjP  \r\n\x87\n"]
    rng = np.random.default_rng(13)
    extensions = list(valid)

    def files():
        for case in range(CASES):
            ext = extensions[case % len(extensions)]
            path = tmp_path / f"img{ext}"
            path.write_bytes(mutate(valid[ext], rng, foreign, header=64))
            yield case, path

    pp = Preprocess(resize="letterbox")
    fuzz(files(), lambda case, path: load_sample({"data": path}, [SPEC], pp), check_sample)

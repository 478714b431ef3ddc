"""The .scale table: round trip at full precision, names with spaces, and every validation error."""

import numpy as np
import pytest

from quanttool.errors import QuantError
from quanttool.qparams import QParam
from quanttool.table import Table, read_table, write_table


def test_round_trip_keeps_float32_precision_and_spaces(tmp_path):
    params = {
        "conv1/out": QParam(float(np.float32(3.1234567e-9)), 0),  # %f would print 0.000000
        "name with spaces": QParam(float(np.float32(0.0234375)), -128),
        "x": QParam(float(np.float32(1 / 3)), 17),
    }
    path = tmp_path / "m.scale"
    write_table(path, Table(params, {"algorithm": "kl", "images": "3"}))
    table = read_table(path)
    assert table.meta["algorithm"] == "kl" and table.meta["images"] == "3"
    assert list(table.params) == list(params)
    for name, qp in params.items():
        assert np.float32(table.params[name].scale) == np.float32(qp.scale)
        assert table.params[name].zero_point == qp.zero_point


@pytest.mark.parametrize("line, reason", [
    ("a 0 0", "positive"),
    ("a -0.5 0", "positive"),
    ("a nan 0", "positive"),
    ("a inf 0", "positive"),
    ("a 0.1 200", "outside"),
    ("a 0.1", "expected"),
    ("a abc 0", "not a number"),
    ("a 0.1 0\na 0.2 0", "twice"),
    ('"a 0.1 0', "quoted name"),
    ('"a" 0.1', "quoted name"),
])
def test_bad_lines_name_the_line_and_reason(tmp_path, line, reason):
    path = tmp_path / "bad.scale"
    path.write_text("# header\n" + line + "\n")
    with pytest.raises(QuantError) as err:
        read_table(path)
    message = str(err.value)
    bad_line = 2 + line.count("\n")  # the header is line 1; a duplicate is reported on its second line
    assert f"{path}:{bad_line}" in message and reason in message


def test_missing_and_empty_table(tmp_path):
    with pytest.raises(QuantError, match="not found"):
        read_table(tmp_path / "nope.scale")
    (tmp_path / "empty.scale").write_text("# nothing\n")
    with pytest.raises(QuantError, match="no entries"):
        read_table(tmp_path / "empty.scale")


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "win.scale"
    path.write_bytes("\ufeff# made on Windows\r\nx 0.5 0\r\n".encode("utf-8"))
    assert read_table(path).params == {"x": QParam(0.5, 0)}


@pytest.mark.parametrize("scale", ["1e-45", "1e40"])
def test_scales_outside_float32_are_rejected(tmp_path, scale):
    path = tmp_path / "t.scale"
    path.write_text(f"x {scale} 0\n")
    with pytest.raises(QuantError, match="float32"):
        read_table(path)

"""Bad input never crashes: each case gives one line on stderr naming the file, tensor or option, and the
right exit code (1 data/model, 2 usage). Inputs are never modified and failed runs leave no output file."""

import hashlib
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from PIL import Image

from quanttool.cli import main
from tests.helpers import init, make_model, tensor_info


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


PROGRESS = re.compile(r"^[\w ]+:\s+\d+%\|")  # a tqdm bar: "calibrate:  50%|█████     | 2/4 [...]"


def one_line_error(err: str, warnings: int = 0) -> str:
    """The error of a failed run: exactly one `quanttool: error:` line, exactly `warnings` warning lines, and
    nothing else on stderr but progress bars (tqdm redraws with \r, so each redraw is split off)."""
    assert "Traceback" not in err
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line and not PROGRESS.match(line)]
    errors = [line for line in lines if line.startswith("quanttool: error: ")]
    warned = [line for line in lines if line.startswith("quanttool: warning: ")]
    assert len(errors) == 1 and len(warned) == warnings and len(lines) == 1 + warnings, err
    return errors[0]


@pytest.fixture
def workspace(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = make_model(nodes, [tensor_info("x", ["N", 3, 8, 8])], [tensor_info("y", ["N", 4, 8, 8])],
                       [init("w", rng.normal(size=(4, 3, 3, 3)).astype(np.float32)),
                        init("b", rng.normal(size=4).astype(np.float32))])
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return tmp_path, path, images


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_happy_path_then_bad_tables(workspace, capsys):
    tmp, model, images = workspace
    before = digest(model)
    code, out, _ = run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")
    assert code == 0 and "3 images" in out
    code, out, _ = run_cli(capsys, "convert", "-m", model, "-f", tmp / "t.scale", "-o", tmp / "q.onnx")
    assert code == 0 and "quantized" in out
    assert digest(model) == before  # the input model is never modified

    table = (tmp / "t.scale").read_text().splitlines()
    cases = {
        "nan": ("x nan 0", "positive and finite"),
        "negative": ("x -1 0", "positive and finite"),
        "foreign": ("other_model_tensor 0.1 0", "not a tensor of this model"),
        "malformed": ("x 0.1", "expected `name scale zero_point`"),
    }
    for name, (line, reason) in cases.items():
        bad = tmp / f"{name}.scale"
        bad.write_text("\n".join(table + [line]) + "\n")
        out_path = tmp / f"{name}.onnx"
        code, _, err = run_cli(capsys, "convert", "-m", model, "-f", bad, "-o", out_path)
        message = one_line_error(err)
        assert code == 1 and reason in message and str(bad) in message, message
        assert not out_path.exists()
    missing = tmp / "missing.scale"
    missing.write_text("\n".join(line for line in table if not line.startswith("c ") and not line.startswith("y "))
                       + "\n")
    code, _, err = run_cli(capsys, "convert", "-m", model, "-f", missing, "-o", tmp / "missing.onnx")
    message = one_line_error(err)
    assert code == 1 and ("'y'" in message or "'c'" in message) and "no entry in the table" in message


def test_corrupt_model(workspace, capsys):
    tmp, _, images = workspace
    bad = tmp / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    code, _, err = run_cli(capsys, "calibrate", "-m", bad, "-i", images)
    assert code == 1 and str(bad) in one_line_error(err)
    code, _, err = run_cli(capsys, "calibrate", "-m", tmp / "nope.onnx", "-i", images)
    assert code == 1 and "nope.onnx" in one_line_error(err)


def test_empty_folder_and_unreadable_image(workspace, capsys):
    tmp, model, images = workspace
    empty = tmp / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "calibrate", "-m", model, "-i", empty, "-o", tmp / "e.scale")
    assert code == 1 and str(empty) in one_line_error(err)
    assert not (tmp / "e.scale").exists()
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    code, out, err = run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")
    assert code == 0 and "broken.jpg" in err and "3 images" in out  # skipped, warned and counted


def test_wrong_shape_npy_and_nan(workspace, capsys):
    tmp, model, _ = workspace
    folder = tmp / "npy"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((3, 5, 5), np.float32))
    code, _, err = run_cli(capsys, "calibrate", "-m", model, "-i", folder)
    message = one_line_error(err)
    assert code == 1 and "a.npy" in message
    np.save(folder / "a.npy", np.full((3, 8, 8), np.nan, np.float32))
    code, _, err = run_cli(capsys, "calibrate", "-m", model, "-i", folder)
    message = one_line_error(err)
    assert code == 1 and "a.npy" in message and "NaN" in message


def test_bad_options(workspace, capsys):
    tmp, model, images = workspace
    for args, needle, exit_code in [
        (["calibrate", "-m", model, "-i", images, "--mean", "1,2"], "--mean", 2),
        (["calibrate", "-m", model, "-i", images, "--shape", "3,x,8"], "--shape", 2),
        (["calibrate", "-m", model, "-i", images, "--shape", "1,8,8"], "shape", 1),  # contradicts the model
        (["calibrate", "-m", model, "-i", images, "--max-images", "0"], "--max-images", 2),
        (["calibrate", "-m", model, "-i", tmp / "nowhere"], "nowhere", 2),
        (["convert", "-m", model, "-f", tmp / "t.scale", "-o", model], "--output", 2),
        (["calibrate", "-m", model, "-i", images, "-a", "percentile", "--percentile", "nan"], "--percentile", 2),
    ]:
        code, _, err = run_cli(capsys, *args)
        message = one_line_error(err)
        assert code == exit_code and needle in message, (args, message)
    code, _, err = run_cli(capsys, "calibrate", "-m", model, "-i", images, "--colour", "rgb")
    assert code == 2 and "--colour" in one_line_error(err)


def test_output_written_atomically_keeps_old_file_on_failure(workspace, capsys):
    tmp, model, images = workspace
    target = tmp / "keep.scale"
    target.write_text("old content\n")
    empty = tmp / "empty2"
    empty.mkdir()
    code, _, _ = run_cli(capsys, "calibrate", "-m", model, "-i", empty, "-o", target)
    assert code == 1 and target.read_text() == "old content\n"
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".keep")] == []  # no temp file left


def test_table_from_a_different_model_file_warns_but_converts(workspace, capsys):
    tmp, model, images = workspace
    code, _, _ = run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")
    assert code == 0
    other = tmp / "retrained.onnx"  # same graph and names, different bytes (e.g. fine-tuned weights)
    proto = onnx.load(str(model))
    proto.doc_string = "retrained"
    onnx.save(proto, str(other))
    code, out, err = run_cli(capsys, "convert", "-m", other, "-f", tmp / "t.scale", "-o", tmp / "r.onnx")
    assert code == 0 and "different model file" in err and (tmp / "r.onnx").exists()


def test_bad_output_path_fails_before_any_output_is_written(workspace, capsys):
    tmp, model, images = workspace
    code, _, _ = run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")
    assert code == 0
    code, _, err = run_cli(capsys, "convert", "-m", model, "-f", tmp / "t.scale", "-o", tmp / "q.onnx",
                           "--params", tmp / "missing" / "p.json")
    assert code == 1 and "--params" in one_line_error(err) and not (tmp / "q.onnx").exists()
    code, _, err = run_cli(capsys, "calibrate", "-m", model, "-i", images, "--stats", tmp / "s.npz",
                           "-o", tmp / "t.scale" / "x.scale")
    assert code == 1 and "is not a folder" in one_line_error(err) and not (tmp / "s.npz").exists()
    code, _, err = run_cli(capsys, "evaluate", "-m", model, "-f", tmp / "t.scale", "-i", images,
                           "--json", tmp / "r.out", "--report", tmp / "r.out")
    assert code == 2 and "--report" in one_line_error(err) and not (tmp / "r.out").exists()


def test_labels_with_bom_and_out_of_range_label(workspace, capsys):
    tmp, model, images = workspace
    run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")
    flat = tmp / "flat.onnx"  # the workspace model's output is a feature map: give it a class vector
    proto = onnx.load(str(model))
    proto.graph.node.append(helper.make_node("GlobalAveragePool", ["y"], ["g"], name="gap"))
    proto.graph.node.append(helper.make_node("Flatten", ["g"], ["logits"], name="flat"))
    del proto.graph.output[:]
    proto.graph.output.append(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 4]))
    onnx.save(proto, str(flat))
    run_cli(capsys, "calibrate", "-m", flat, "-i", images, "-o", tmp / "f.scale")
    labels = tmp / "labels.txt"
    labels.write_bytes("\ufeff0.png 1\r\n1.png 2\r\n2.png 3\r\n".encode("utf-8"))
    code, out, err = run_cli(capsys, "evaluate", "-m", flat, "-f", tmp / "f.scale", "-i", images, "--labels", labels)
    assert code == 0 and "3 labeled images" in out, out + err
    labels.write_text("0.png 1\n1.png 99\n")
    code, _, err = run_cli(capsys, "evaluate", "-m", flat, "-f", tmp / "f.scale", "-i", images, "--labels", labels)
    message = one_line_error(err)
    assert code == 1 and "99" in message and "4 classes" in message


def test_inconsistent_shapes_for_two_inputs_point_at_the_shape_option(tmp_path, capsys):
    nodes = [helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    model = make_model(nodes, [tensor_info("a", [1, 1, "H", "W"]), tensor_info("b", [1, 1, "H", "W"])],
                       [tensor_info("y", [1, 1, "H", "W"])])
    path = tmp_path / "two.onnx"
    onnx.save(model, str(path))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "0.npy", np.zeros((1, 4, 4) if name == "a" else (1, 5, 5), np.float32))
    code, _, err = run_cli(capsys, "calibrate", "-m", path, "--images", f"a={tmp_path / 'a'}",
                           "--images", f"b={tmp_path / 'b'}", "--shape", "a=1,4,4", "--shape", "b=1,5,5",
                           "-o", tmp_path / "t.scale")
    message = one_line_error(err, warnings=1)  # the original model cannot run at these shapes either
    assert code == 1 and "--shape" in message and not (tmp_path / "t.scale").exists()


def test_two_image_inputs_with_their_own_preprocessing(tmp_path, capsys):
    """An RGB input and a gray one: --color b=gray and --norm b=... apply to b only; the table's scale for each
    input equals its own preprocessed maximum computed here (minmax, never negative: max / 255)."""
    nodes = [helper.make_node("GlobalAveragePool", ["a"], ["pa"], name="gap_a"),
             helper.make_node("GlobalAveragePool", ["b"], ["pb"], name="gap_b"),
             helper.make_node("Concat", ["pa", "pb"], ["y"], axis=1, name="cat")]
    model = make_model(nodes, [tensor_info("a", [1, 3, 4, 4]), tensor_info("b", [1, 1, 4, 4])],
                       [tensor_info("y", [1, 4, 1, 1])])
    path = tmp_path / "ab.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 200, (4, 4, 3), dtype=np.uint8)
    gray = rng.integers(0, 250, (4, 4), dtype=np.uint8)
    for name, pixels in (("a", rgb), ("b", gray)):
        (tmp_path / name).mkdir()
        Image.fromarray(pixels).save(tmp_path / name / "0.png")
    code, _, err = run_cli(capsys, "calibrate", "-m", path, "--images", f"a={tmp_path / 'a'}",
                           "--images", f"b={tmp_path / 'b'}", "--color", "b=gray", "--norm", "0.5",
                           "--norm", "b=0.01", "--scheme", "auto", "-o", tmp_path / "t.scale")
    assert code == 0, err
    from quanttool.table import read_table

    table = read_table(tmp_path / "t.scale").params
    assert table["a"].scale == pytest.approx(rgb.max() * 0.5 / 255, rel=1e-6)
    assert table["b"].scale == pytest.approx(gray.max() * 0.01 / 255, rel=1e-6)
    code, _, err = run_cli(capsys, "calibrate", "-m", path, "--images", f"a={tmp_path / 'a'}",
                           "--images", f"b={tmp_path / 'b'}", "--color", "b=gray", "--color", "b=rgb")
    assert code == 2 and "--color given twice" in one_line_error(err)


def test_no_output_ever_replaces_an_input(workspace, capsys):
    """Outputs that are an input by another spelling or link, or that lie inside the image folder, are refused
    before any work (usage error, exit 2) and every input keeps its bytes."""
    tmp, model, images = workspace
    code, _, _ = run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")
    assert code == 0
    labels = tmp / "labels.txt"
    labels.write_text("0.png 1\n")
    outside = tmp / "photos"
    outside.mkdir()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(outside / "p.png")
    (images / "p.png").symlink_to(outside / "p.png")  # an image reached through a link
    (tmp / "alias").symlink_to(tmp)
    ext = tmp / "ext"  # a model whose weights live in a data file beside it
    ext.mkdir()
    onnx.save_model(onnx.load(str(model)), str(ext / "m.onnx"), save_as_external_data=True, location="m.data",
                    size_threshold=0)
    inputs = [model, tmp / "t.scale", labels, *images.iterdir(), outside / "p.png", ext / "m.onnx", ext / "m.data"]
    before = {path: digest(path) for path in inputs}
    evaluate = ["evaluate", "-m", model, "-f", tmp / "t.scale", "-i", images, "--labels", labels]
    cases = [
        (evaluate + ["--json", labels], "--json"),
        (evaluate + ["--json", tmp / "alias" / "labels.txt"], "--json"),
        (evaluate + ["--report", images / "1.png"], "--report"),
        (evaluate + ["--json", outside / "p.png"], "--json"),
        (["calibrate", "-m", model, "-i", images, "-o", images / "t.scale"], "--output"),
        (["calibrate", "-m", model, "-i", tmp / "alias" / "images", "-o", images / "x.npy"], "--output"),
        (["calibrate", "-m", model, "-i", images, "-o", tmp / "new.scale", "--stats", tmp / "alias" / "m.onnx"],
         "--stats"),
        (["convert", "-m", model, "-f", tmp / "t.scale", "-o", tmp / "q.onnx", "--params", tmp / "t.scale"],
         "--params"),
        (["convert", "-m", ext / "m.onnx", "-f", tmp / "t.scale", "-o", ext / "m.data"], "--output"),
    ]
    for args, option in cases:
        code, _, err = run_cli(capsys, *args)
        message = one_line_error(err)
        assert code == 2 and message.startswith(f"quanttool: error: {option} "), (args, message)
    assert {path: digest(path) for path in inputs} == before
    assert not (images / "t.scale").exists() and not (images / "x.npy").exists() and not (tmp / "q.onnx").exists()


def test_unwritable_params_location_fails_before_the_model_is_written(workspace, capsys):
    tmp, model, images = workspace
    run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")
    code, _, err = run_cli(capsys, "convert", "-m", model, "-f", tmp / "t.scale", "-o", tmp / "q.onnx",
                           "--params", "/proc/p.json")  # /proc takes no new files, even from root
    message = one_line_error(err)
    assert code == 1 and message.startswith("quanttool: error: --params /proc/p.json: cannot write")
    assert not (tmp / "q.onnx").exists()


def test_full_disk_while_writing_is_one_line_naming_the_file(workspace, capsys):
    """RLIMIT_FSIZE makes the model write fail for real (EFBIG), as a full disk does (ENOSPC)."""
    tmp, model, images = workspace
    assert run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")[0] == 0

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))

    result = subprocess.run([sys.executable, "-m", "quanttool", "convert", "-m", str(model), "-f", str(tmp / "t.scale"),
                             "-o", str(tmp / "q.onnx")], capture_output=True, text=True, preexec_fn=limit)
    assert result.returncode == 1
    assert one_line_error(result.stderr) == (f"quanttool: error: cannot write {tmp / 'q.onnx'}: File too large; "
                                             f"free some space or write to another location")
    assert not [p for p in tmp.iterdir() if p.name.startswith((".q.onnx", "q.onnx"))]  # no output, no temp


def test_huge_and_hostile_names_give_one_short_line(workspace, capsys):
    """A 10 MB tensor name (with a terminal escape and a line break in it) is shortened and escaped: the line
    keeps the file, the start of the name and the fix."""
    tmp, model, images = workspace
    run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")
    name = "\x1b[2J" + "n" * 10_000_000 + "\x07tail"
    bad = tmp / "long.scale"
    lines = (tmp / "t.scale").read_text().splitlines()
    bad.write_text("\n".join(lines + [f"{name} 0.5 0"]) + "\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "convert", "-m", model, "-f", bad, "-o", tmp / "q.onnx")
    message = one_line_error(err)
    assert code == 1 and len(message) <= 700
    assert message.startswith(f"quanttool: error: {bad}:{len(lines) + 1}: '\\x1b[2Jnnn")
    assert message.endswith("is not a tensor of this model; the table was probably made for another model, "
                            "re-run calibrate")
    assert "\x1b" not in err and "\x07" not in err
    assert re.search(r"\[\.\.\. 100\d{5} characters shortened \.\.\.\]", message)


def test_npy_inputs_of_any_rank_take_a_shape(tmp_path, capsys):
    """A [N, 8] input (-g 8) and a [N, T, 1, C] input (-g with the batch, 4 dims) are fed from .npy files; each
    table entry is max|x| / 127 of the data (minmax, symmetric), computed here."""
    rng = np.random.default_rng(5)
    for rank_shape, npy_shape, option in [(["N", 8], (1, 8), "x=8"), (["N", "T", 1, "C"], (6, 1, 4), "x=1,6,1,4")]:
        model = make_model([helper.make_node("Neg", ["x"], ["y"], name="neg")], [tensor_info("x", rank_shape)],
                           [tensor_info("y", rank_shape)])
        folder = tmp_path / f"npy{len(rank_shape)}"
        folder.mkdir()
        data = [rng.normal(size=npy_shape).astype(np.float32) for _ in range(3)]
        for i, array in enumerate(data):
            np.save(folder / f"{i}.npy", array)
        path = tmp_path / f"r{len(rank_shape)}.onnx"
        onnx.save(model, str(path))
        code, _, err = run_cli(capsys, "calibrate", "-m", path, "-i", folder, "-g", option,
                               "-o", tmp_path / f"r{len(rank_shape)}.scale")
        assert code == 0, err
        from quanttool.table import read_table

        table = read_table(tmp_path / f"r{len(rank_shape)}.scale").params
        peak = max(float(np.abs(a).max()) for a in data)
        assert table["x"].scale == pytest.approx(peak / 127, rel=1e-6) and table["x"].zero_point == 0


def test_fifo_table_and_labels_are_refused_without_hanging(workspace, capsys):
    """`-f` and `--labels` name FIFOs: refused at once (a plain read would wait for a writer forever); a FIFO
    as the model is named as such, not as a missing file."""
    import os

    tmp, model, images = workspace
    os.mkfifo(tmp / "t.scale")
    os.mkfifo(tmp / "labels.txt")
    os.mkfifo(tmp / "fifo.onnx")
    code, _, err = run_cli(capsys, "calibrate", "-m", tmp / "fifo.onnx", "-i", images)
    assert code == 1 and one_line_error(err).endswith(f"{tmp / 'fifo.onnx'}: is not a regular file; "
                                                      f"pass the path of an .onnx file")
    code, _, err = run_cli(capsys, "convert", "-m", model, "-f", tmp / "t.scale", "-o", tmp / "q.onnx")
    message = one_line_error(err)
    assert code == 1 and f"{tmp / 't.scale'}: cannot read the table" in message and "not a regular file" in message
    run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "real.scale")
    code, _, err = run_cli(capsys, "evaluate", "-m", model, "-f", tmp / "real.scale", "-i", images,
                           "--labels", tmp / "labels.txt")
    message = one_line_error(err)
    assert code == 1 and f"--labels {tmp / 'labels.txt'}: cannot read it" in message


def test_model_file_name_that_is_not_utf8_or_has_a_newline(workspace, capsys):
    """The table header records the model's file name on one printable line: the table reads back and equals
    the table of the same model under a plain name."""
    import os

    tmp, model, images = workspace
    odd = Path(os.fsdecode(bytes(tmp) + b"/bad\xff\nname.onnx"))
    odd.write_bytes(model.read_bytes())
    assert run_cli(capsys, "calibrate", "-m", odd, "-i", images, "-o", tmp / "odd.scale")[0] == 0
    assert run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "plain.scale")[0] == 0
    from quanttool.table import read_table

    odd_table, plain_table = read_table(tmp / "odd.scale"), read_table(tmp / "plain.scale")
    assert odd_table.meta["model"] == "bad\\udcff name.onnx"
    assert odd_table.params == plain_table.params and len(plain_table.params) == 3
    code, _, err = run_cli(capsys, "convert", "-m", model, "-f", tmp / "odd.scale", "-o", tmp / "q.onnx")
    assert code == 0, err

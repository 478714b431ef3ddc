"""Tests for quanttool.inputs: every preprocessing mode against tensors computed independently in the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quanttool.errors import QuantError, UsageError
from quanttool.inputs import (
    InputSpec,
    LoadReport,
    Preprocess,
    UnreadableInput,
    discover,
    iter_samples,
    load_image,
    load_sample,
    parse_floats,
    parse_image_dirs,
    parse_shape,
)

RNG = np.random.default_rng(1234)


def rgb_array(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)  # uint8 HxW -> L, HxWx3 -> RGB, HxWx4 -> RGBA
    return path


def normalise(hwc, mean, norm):
    """The reference formula: (pixel - mean[c]) * norm[c], HWC -> CHW, float32."""
    hwc = np.asarray(hwc, dtype=np.float32)
    return ((hwc - np.float32(mean)) * np.float32(norm)).transpose(2, 0, 1)


def spec(c, h, w, name="data"):
    return InputSpec(name, (1, c, h, w))


# ---------------------------------------------------------------------------------------------- options


def test_parse_floats_accepts_one_or_many_values():
    assert parse_floats("0.5", "--norm") == (0.5,)
    assert parse_floats("104, 117,123", "--mean") == (104.0, 117.0, 123.0)


@pytest.mark.parametrize("text", ["", "a", "1,,2", "1;2", "nan", "1,inf"])
def test_parse_floats_rejects_bad_text_naming_the_option(text):
    with pytest.raises(UsageError, match="--mean"):
        parse_floats(text, "--mean")


def test_parse_shape():
    assert parse_shape("3,224,224") == (3, 224, 224)
    assert parse_shape(" 1, 28 ,28") == (1, 28, 28)
    # any rank: .npy-fed inputs such as [N, 512] or [N, T, 1, 512]; the model checks the count
    assert parse_shape("512") == (512,)
    assert parse_shape("1,1,1,512") == (1, 1, 1, 512)
    for bad in ["0,2,2", "3,-1,4", "a,b,c", "3x224x224", "", "3,,4"]:
        with pytest.raises(UsageError, match="--shape"):
            parse_shape(bad)


def test_parse_image_dirs_plain_and_named(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b=c"
    a.mkdir()
    b.mkdir()
    assert parse_image_dirs([str(a)], ["x"]) == {"x": a}
    assert parse_image_dirs([f"x={a}"], ["x"]) == {"x": a}
    # A folder whose name contains '=' but whose prefix is no input name is a plain folder.
    assert parse_image_dirs([str(b)], ["x"]) == {"x": b}
    got = parse_image_dirs([f"im2={b}", f"im1={a}"], ["im1", "im2"])
    assert got == {"im1": a, "im2": b} and list(got) == ["im1", "im2"]


def test_parse_image_dirs_errors(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    afile = tmp_path / "f.png"
    afile.write_bytes(b"x")
    with pytest.raises(UsageError, match="nothere"):
        parse_image_dirs([str(tmp_path / "nothere")], ["x"])
    with pytest.raises(UsageError, match="f.png.*not a folder"):
        parse_image_dirs([str(afile)], ["x"])
    with pytest.raises(UsageError, match="no input 'zz'.*'im1', 'im2'"):
        parse_image_dirs([f"zz={a}"], ["im1", "im2"])
    with pytest.raises(UsageError, match="'im2'.*NAME=DIR"):
        parse_image_dirs([f"im1={a}"], ["im1", "im2"])
    with pytest.raises(UsageError, match="2 inputs.*NAME=DIR"):
        parse_image_dirs([str(a)], ["im1", "im2"])
    with pytest.raises(UsageError, match="twice"):
        parse_image_dirs([f"im1={a}", f"im1={a}"], ["im1", "im2"])
    with pytest.raises(UsageError, match="--images"):
        parse_image_dirs([], ["x"])


def test_preprocess_validation_names_the_option():
    with pytest.raises(UsageError, match="--color"):
        Preprocess(color="rgba")
    with pytest.raises(UsageError, match="--resize"):
        Preprocess(resize="fit")
    with pytest.raises(UsageError, match="--mean"):
        Preprocess(color="gray", mean=(1.0, 2.0, 3.0))
    with pytest.raises(UsageError, match="--norm"):
        Preprocess(norm=(1.0, 2.0))
    with pytest.raises(UsageError, match="--norm"):
        Preprocess(norm=(0.0,))


def test_describe_is_stable_and_distinguishes_settings():
    pp = Preprocess(shape=(3, 224, 224), mean=(104.0, 117.0, 123.0), norm=(0.017,), color="bgr", resize="letterbox")
    assert pp.describe() == (
        "shape=3x224x224 mean=104,117,123 norm=0.017 color=bgr resize=letterbox pad=mean focus=off"
    )
    same = Preprocess(shape=(3, 224, 224), mean=(104, 117, 123), norm=(0.017,), color="bgr", resize="letterbox")
    assert same.describe() == pp.describe()
    others = [
        Preprocess(),
        Preprocess(pad_value=114.0),
        Preprocess(focus=True),
        Preprocess(norm=(1 / 255,)),
        Preprocess(shape=(1, 28, 28), color="gray"),
    ]
    texts = {p.describe() for p in others} | {pp.describe()}
    assert len(texts) == len(others) + 1
    assert "\n" not in "".join(texts)


# ---------------------------------------------------------------------------------------------- modes


def test_stretch_identity_with_per_channel_mean_and_norm(tmp_path):
    arr = rgb_array(4, 6)
    path = save(tmp_path / "a.png", arr)
    mean, norm = (10.0, 20.0, 30.0), (0.5, 0.25, 2.0)
    got = load_image(path, Preprocess(shape=(3, 4, 6), mean=mean, norm=norm))
    assert got.dtype == np.float32 and got.shape == (3, 4, 6)
    # Hand formula for one pixel, then the whole tensor.
    assert got[1, 2, 5] == (float(arr[2, 5, 1]) - 20.0) * 0.25
    np.testing.assert_array_equal(got, normalise(arr, mean, norm))


def test_stretch_resizes_bilinearly_ignoring_aspect(tmp_path):
    arr = rgb_array(10, 16, seed=3)
    path = save(tmp_path / "a.png", arr)
    got = load_image(path, Preprocess(shape=(3, 5, 4), mean=(1.0,), norm=(0.5,)))
    expected = np.asarray(Image.fromarray(arr).resize((4, 5), Image.BILINEAR))
    np.testing.assert_array_equal(got, normalise(expected, 1.0, 0.5))


def test_center_crop_offsets_square_and_non_square(tmp_path):
    # 8x10 image, 7x7 target: short side -> round(7 / 0.875) = 8, so no resize; crop rows 0..7, cols 1..8.
    arr = rgb_array(8, 10, seed=1)
    path = save(tmp_path / "a.png", arr)
    got = load_image(path, Preprocess(shape=(3, 7, 7), resize="center-crop"))
    np.testing.assert_array_equal(got, normalise(arr[0:7, 1:8], 0, 1))
    # 8x16 image, 7x14 target: H/0.875 = 8, W/0.875 = 16 -> no resize; left = (16 - 14) // 2 = 1.
    arr2 = rgb_array(8, 16, seed=2)
    path2 = save(tmp_path / "b.png", arr2)
    got2 = load_image(path2, Preprocess(shape=(3, 7, 14), resize="center-crop"))
    np.testing.assert_array_equal(got2, normalise(arr2[0:7, 1:15], 0, 1))


def test_center_crop_with_resize(tmp_path):
    # 20x30 image, 7x7 target: scale = 8 / 20 = 0.4 -> 8x12, crop top 0, left (12 - 7) // 2 = 2.
    arr = rgb_array(20, 30, seed=4)
    path = save(tmp_path / "a.png", arr)
    got = load_image(path, Preprocess(shape=(3, 7, 7), resize="center-crop"))
    resized = np.asarray(Image.fromarray(arr).resize((12, 8), Image.BILINEAR))
    np.testing.assert_array_equal(got, normalise(resized[0:7, 2:9], 0, 1))


def test_letterbox_odd_split_pads_to_zero(tmp_path):
    arr = rgb_array(4, 6, seed=5)
    path = save(tmp_path / "a.png", arr)
    mean, norm = (10.0, 20.0, 30.0), (0.5, 0.5, 0.5)
    # 4x6 into 7x6: r = min(7/4, 6/6) = 1, 3 rows of padding: 1 on top, 2 at the bottom.
    got = load_image(path, Preprocess(shape=(3, 7, 6), mean=mean, norm=norm, resize="letterbox"))
    assert got.shape == (3, 7, 6)
    np.testing.assert_array_equal(got[:, 0, :], 0.0)
    np.testing.assert_array_equal(got[:, 5:, :], 0.0)
    np.testing.assert_array_equal(got[:, 1:5, :], normalise(arr, mean, norm))
    # Columns: 6x4 image into 6x7: 1 column left, 2 right.
    arr2 = rgb_array(6, 4, seed=6)
    path2 = save(tmp_path / "b.png", arr2)
    got2 = load_image(path2, Preprocess(shape=(3, 6, 7), mean=mean, norm=norm, resize="letterbox"))
    np.testing.assert_array_equal(got2[:, :, 0], 0.0)
    np.testing.assert_array_equal(got2[:, :, 5:], 0.0)
    np.testing.assert_array_equal(got2[:, :, 1:5], normalise(arr2, mean, norm))


def test_letterbox_pad_value_and_resize(tmp_path):
    arr = rgb_array(4, 8, seed=7)
    path = save(tmp_path / "a.png", arr)
    mean, norm = (10.0, 20.0, 30.0), (1 / 255, 1 / 255, 1 / 255)
    pp = Preprocess(shape=(3, 6, 6), mean=mean, norm=norm, resize="letterbox", pad_value=114.0)
    got = load_image(path, pp)
    # r = min(6/4, 6/8) = 0.75 -> 6x3 content, top (6 - 3) // 2 = 1, bottom 2.
    content = np.asarray(Image.fromarray(arr).resize((6, 3), Image.BILINEAR))
    canvas = np.full((6, 6, 3), 114.0, dtype=np.float32)
    canvas[1:4] = content
    np.testing.assert_allclose(got, normalise(canvas, mean, norm), rtol=0, atol=1e-6)
    assert np.isclose(got[2, 0, 0], (114 - 30) / 255)


def test_bgr_reverses_channels_before_mean(tmp_path):
    arr = rgb_array(4, 6, seed=8)
    path = save(tmp_path / "a.png", arr)
    mean = (104.0, 117.0, 123.0)
    got = load_image(path, Preprocess(shape=(3, 4, 6), mean=mean, color="bgr"))
    # Channel 0 is blue, with mean[0].
    np.testing.assert_array_equal(got[0], arr[:, :, 2].astype(np.float32) - 104.0)
    np.testing.assert_array_equal(got[2], arr[:, :, 0].astype(np.float32) - 123.0)


def test_gray(tmp_path):
    gray = RNG.integers(0, 256, size=(4, 6), dtype=np.uint8)
    path = save(tmp_path / "g.png", gray)
    got = load_image(path, Preprocess(shape=(1, 4, 6), color="gray", mean=(3.0,), norm=(2.0,)))
    np.testing.assert_array_equal(got, ((gray.astype(np.float32) - 3) * 2)[None])
    # A colour file for a gray model: ITU-R 601-2 luma.
    arr = rgb_array(4, 6, seed=9)
    path2 = save(tmp_path / "c.png", arr)
    got2 = load_image(path2, Preprocess(shape=(1, 4, 6), color="gray"))
    luma = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    assert np.abs(got2[0] - luma).max() <= 1.0
    # A gray file for an rgb model: three identical channels.
    got3 = load_image(path, Preprocess(shape=(3, 4, 6)))
    for c in range(3):
        np.testing.assert_array_equal(got3[c], gray.astype(np.float32))


def test_rgba_palette_and_16bit_files(tmp_path):
    arr = rgb_array(4, 6, seed=10)
    alpha = np.zeros((4, 6, 1), dtype=np.uint8)  # fully transparent: alpha must simply be dropped
    rgba = save(tmp_path / "a.png", np.concatenate([arr, alpha], axis=2))
    pp = Preprocess(shape=(3, 4, 6))
    np.testing.assert_array_equal(load_image(rgba, pp), normalise(arr, 0, 1))

    palette_img = Image.fromarray(np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8), "P")
    colours = [(255, 0, 0), (0, 200, 0), (7, 8, 9)]
    palette_img.putpalette([v for c in colours for v in c] + [0] * (768 - 9))
    ppath = tmp_path / "p.png"
    palette_img.save(ppath)
    got = load_image(ppath, Preprocess(shape=(3, 2, 3)))
    expected = np.array([[colours[i] for i in row] for row in [[0, 1, 2], [2, 1, 0]]], dtype=np.float32)
    np.testing.assert_array_equal(got, expected.transpose(2, 0, 1))

    wide = np.array([[0, 257, 65535], [32896, 514, 1000]], dtype=np.uint16)
    wpath = tmp_path / "w.png"
    Image.fromarray(wide).save(wpath)
    got16 = load_image(wpath, Preprocess(shape=(1, 2, 3), color="gray"))
    np.testing.assert_array_equal(got16[0], np.round(wide / 257.0).astype(np.float32))


def test_focus_block_order_matches_tengine_loops(tmp_path):
    arr = rgb_array(4, 6, seed=11)
    path = save(tmp_path / "a.png", arr)
    mean, norm = (1.0, 2.0, 3.0), (0.5, 0.25, 1.0)
    # Model input (12, 2, 3): the image is prepared at 4x6 (identity), then folded.
    got = load_image(path, Preprocess(shape=(12, 2, 3), mean=mean, norm=norm, focus=True))
    # Tengine quant_utils.cpp focus loops, written out over flat buffers.
    rows, cols = 4, 6
    flat_in = normalise(arr, mean, norm).ravel()
    flat_out = np.zeros(12 * 2 * 3, dtype=np.float32)
    for i in range(2):
        for g in range(2):
            for c in range(3):
                for h in range(rows // 2):
                    for w in range(cols // 2):
                        in_index = i + g * cols + c * cols * rows + h * 2 * cols + w * 2
                        out_index = (i * 2 * 3 + g * 3 + c) * (rows // 2) * (cols // 2) + h * (cols // 2) + w
                        flat_out[out_index] = flat_in[in_index]
    np.testing.assert_array_equal(got, flat_out.reshape(12, 2, 3))
    # Second block (channels 3..5) is rows 1::2, cols 0::2 (YOLOv5's x[..., 1::2, ::2]).
    np.testing.assert_array_equal(got[3], (arr[1::2, ::2, 0].astype(np.float32) - 1) * 0.5)


def test_channel_mismatch_names_file_and_options(tmp_path):
    path = save(tmp_path / "pic.png", rgb_array(4, 6))
    with pytest.raises(QuantError, match=r"pic\.png.*1 channels.*--color"):
        load_sample({"data": path}, [spec(1, 4, 6)], Preprocess())
    with pytest.raises(QuantError, match=r"pic\.png.*3 channels.*--focus"):
        load_sample({"data": path}, [spec(3, 4, 6)], Preprocess(focus=True))


def test_load_sample_uses_spec_shape_and_adds_batch(tmp_path):
    arr = rgb_array(4, 6)
    path = save(tmp_path / "a.png", arr)
    feeds = load_sample({"data": path}, [spec(3, 4, 6)], Preprocess(shape=(3, 99, 99)))
    assert list(feeds) == ["data"] and feeds["data"].shape == (1, 3, 4, 6)
    np.testing.assert_array_equal(feeds["data"][0], normalise(arr, 0, 1))
    with pytest.raises(QuantError, match="'data'.*--shape"):
        load_sample({"data": path}, [InputSpec("data", (1, 3, None, 6))], Preprocess())
    with pytest.raises(QuantError, match=r"a\.png.*'tokens'.*\.npy"):
        load_sample({"tokens": path}, [InputSpec("tokens", (1, 10))], Preprocess())


# ---------------------------------------------------------------------------------------------- .npy


def test_npy_chw_and_nchw_pass_through(tmp_path):
    x = RNG.standard_normal((3, 4, 6)).astype(np.float32)
    np.save(tmp_path / "chw.npy", x)
    np.save(tmp_path / "nchw.npy", x[None])
    np.save(tmp_path / "f64.npy", x.astype(np.float64))
    pp = Preprocess(mean=(100.0,), norm=(9.0,))  # ignored for .npy
    for name in ["chw.npy", "nchw.npy", "f64.npy"]:
        feeds = load_sample({"data": tmp_path / name}, [spec(3, 4, 6)], pp)
        assert feeds["data"].dtype == np.float32
        np.testing.assert_array_equal(feeds["data"], x[None])


def test_npy_wrong_shape_and_nan_name_the_file(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((3, 5, 6), np.float32))
    with pytest.raises(QuantError, match=r"bad\.npy.*\(3, 5, 6\).*\(1, 3, 4, 6\)"):
        load_sample({"data": tmp_path / "bad.npy"}, [spec(3, 4, 6)], Preprocess())
    y = np.zeros((3, 4, 6), np.float32)
    y[0, 1, 2] = np.nan
    np.save(tmp_path / "nan.npy", y)
    with pytest.raises(QuantError, match=r"nan\.npy.*NaN"):
        load_sample({"data": tmp_path / "nan.npy"}, [spec(3, 4, 6)], Preprocess())


# ---------------------------------------------------------------------------------------------- discovery


def test_empty_folder_error_names_folder_and_extensions(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    (empty / ".hidden.png").write_bytes(b"x")
    with pytest.raises(QuantError, match=r"empty.*\.jpg.*\.npy"):
        discover({"data": empty})


def test_sorted_nested_hidden_and_case_insensitive(tmp_path):
    root = tmp_path / "imgs"
    names = ["z.png", "b/2.JPG", "a.bmp", "b/10.npy", "b/c/1.png", "A.webp"]
    for name in reversed(names):  # creation order must not matter
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    for hidden in [".git/x.png", "b/.cache.png", ".d/e/f.jpg"]:
        p = root / hidden
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    (root / "labels.txt").write_text("")
    samples = discover({"data": root})
    keys = [s.key for s in samples]
    assert keys == ["A.webp", "a.bmp", "b/10.npy", "b/2.JPG", "b/c/1.png", "z.png"]  # codepoint order
    assert [s["data"] for s in samples] == [root / k for k in keys]


def test_max_images_keeps_an_even_spread_in_sorted_order(tmp_path):
    for i in reversed(range(10)):
        (tmp_path / f"{i:02d}.png").write_bytes(b"")
    keys = [s.key for s in discover({"data": tmp_path}, max_images=4)]
    assert keys == [f"{i * 10 // 4:02d}.png" for i in range(4)]  # 00, 02, 05, 07
    assert len(discover({"data": tmp_path}, max_images=50)) == 10
    with pytest.raises(UsageError, match="--max-images"):
        discover({"data": tmp_path}, max_images=0)


def test_multi_input_pairing(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for rel in ["s1.png", "x/s2.png", "s3.png"]:
        save(a / rel, rgb_array(4, 6))
    for rel in ["s1.npy", "x/s2.npy", "only_b.npy"]:
        (b / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(b / rel, np.full((2, 3), 7.0, np.float32))
    samples = discover({"img": a, "aux": b})
    assert [s.key for s in samples] == ["s1", "x/s2"]
    assert samples[1] == {"img": a / "x/s2.png", "aux": b / "x/s2.npy"}
    assert "skipping 2 sample" in capsys.readouterr().err
    specs = [spec(3, 4, 6, "img"), InputSpec("aux", (1, 2, 3))]
    feeds = load_sample(samples[0], specs, Preprocess())
    np.testing.assert_array_equal(feeds["aux"], np.full((1, 2, 3), 7.0, np.float32))
    assert feeds["img"].shape == (1, 3, 4, 6)
    c = tmp_path / "c"
    save(c / "other.png", rgb_array(4, 6))
    with pytest.raises(QuantError, match="paired"):
        discover({"img": a, "c": c})


# ---------------------------------------------------------------------------------------------- iterating


def test_iter_samples_skips_corrupt_and_keeps_order(tmp_path, capsys):
    arrays = {}
    for i in range(6):
        arrays[f"{i}.png"] = rgb_array(4, 6, seed=100 + i)
        save(tmp_path / f"{i}.png", arrays[f"{i}.png"])
    (tmp_path / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    good = (tmp_path / "5.png").read_bytes()
    (tmp_path / "5.png").write_bytes(good[: len(good) // 2])
    report = LoadReport()
    out = list(iter_samples(discover({"data": tmp_path}), [spec(3, 4, 6)], Preprocess(), threads=2, prefetch=2, report=report))
    assert [k for k, _ in out] == ["0.png", "1.png", "2.png", "4.png"]
    for key, feeds in out:
        np.testing.assert_array_equal(feeds["data"][0], normalise(arrays[key], 0, 1))
    assert report.loaded == 4 and report.skipped == 2
    assert report.skipped_files == [tmp_path / "3.png", tmp_path / "5.png"]
    err = capsys.readouterr().err
    assert "3.png" in err and "5.png" in err


def test_iter_samples_shape_mismatch_is_an_error(tmp_path):
    save(tmp_path / "a.png", rgb_array(4, 6))
    np.save(tmp_path / "b.npy", np.zeros((3, 9, 9), np.float32))
    with pytest.raises(QuantError, match=r"b\.npy"):
        list(iter_samples(discover({"data": tmp_path}), [spec(3, 4, 6)], Preprocess()))


def test_iter_samples_all_unreadable_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "b.npy").write_bytes(b"not npy")
    with pytest.raises(QuantError, match="all 2 samples"):
        list(iter_samples(discover({"data": tmp_path}), [spec(3, 4, 6)], Preprocess()))


def test_iter_samples_plain_dicts_and_early_stop(tmp_path):
    paths = [save(tmp_path / f"{i}.png", rgb_array(4, 6, seed=i)) for i in range(5)]
    report = LoadReport()
    gen = iter_samples([{"data": p} for p in paths], [spec(3, 4, 6)], Preprocess(), prefetch=2, report=report)
    key, feeds = next(gen)
    assert key == paths[0].as_posix()  # plain dicts (not from discover) are keyed by their file
    np.testing.assert_array_equal(feeds["data"][0], normalise(rgb_array(4, 6, seed=0), 0, 1))
    gen.close()  # stopping early is clean; the bound on work ahead: test_iter_samples_bounds_the_work_ahead
    assert report.loaded == 1 and report.skipped == 0


def test_iter_samples_bounds_the_work_ahead(tmp_path):
    """Decoding runs at most `prefetch` samples ahead of the consumer: counted by how many samples the pool
    has taken from the sample list after each one consumed (an unbounded pool would take all 40 at once)."""
    paths = [save(tmp_path / f"{i}.png", rgb_array(4, 6, seed=i)) for i in range(40)]
    taken = []

    def listing():
        for path in paths:
            taken.append(path)
            yield {"data": path}

    import threading

    before = set(threading.enumerate())  # other tests' generators may still await garbage collection
    gen = iter_samples(listing(), [spec(3, 4, 6)], Preprocess(), threads=2, prefetch=3)
    for consumed in range(1, 6):
        key, feeds = next(gen)
        assert key == paths[consumed - 1].as_posix()
        np.testing.assert_array_equal(feeds["data"][0], normalise(rgb_array(4, 6, seed=consumed - 1), 0, 1))
        assert len(taken) - consumed <= 3  # in flight: at most `prefetch`
    gen.close()
    assert len(taken) <= 5 + 3
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("quanttool-load")]  # shut down


def test_only_regular_files_with_utf8_names_are_samples(tmp_path, capsys):
    """Dangling and looping symlinks, FIFOs and non-UTF-8 names are skipped at discovery with one counted
    warning; a FIFO that appears after discovery is refused when opened, without blocking."""
    import os
    import threading

    good = save(tmp_path / "good.png", rgb_array(4, 6))
    (tmp_path / "dangling.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "loop1.npy").symlink_to(tmp_path / "loop2.npy")
    (tmp_path / "loop2.npy").symlink_to(tmp_path / "loop1.npy")
    os.mkfifo(tmp_path / "fifo.png")
    os.mkfifo(tmp_path / "fifo.npy")
    (tmp_path / "linked.png").symlink_to(good)  # a symlink to a regular file is used
    Path(os.fsdecode(bytes(tmp_path) + b"/bad\xff.png")).write_bytes(good.read_bytes())
    samples = discover({"data": tmp_path})
    assert [s.key for s in samples] == ["good.png", "linked.png"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped 6 file(s)" in err and "only regular files" in err
    outcome = []

    def read_fifo():
        try:
            load_sample({"data": tmp_path / "fifo.npy"}, [spec(3, 4, 6)], Preprocess())
        except QuantError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=read_fifo, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive() and isinstance(outcome[0], UnreadableInput) and "not a regular file" in str(outcome[0])
    feeds = load_sample({"data": tmp_path / "linked.png"}, [spec(3, 4, 6)], Preprocess())
    np.testing.assert_array_equal(feeds["data"][0], normalise(rgb_array(4, 6), 0, 1))


def _npy_bytes(header: bytes, data: bytes = b"", version: bytes = b"\x01\x00") -> bytes:
    pad = 64 - (10 + len(header) + 1) % 64
    text = header + b" " * pad + b"\n"
    return b"\x93NUMPY" + version + len(text).to_bytes(2, "little") + text + data


@pytest.mark.parametrize("raw", [
    _npy_bytes(b"{'descr': 1}"),
    _npy_bytes(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4, 6"),
    _npy_bytes(b"{'descr': 'not a dtype', 'fortran_order': False, 'shape': (3, 4, 6), }"),
    _npy_bytes(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4, 6), }", bytes(20)),  # truncated data
    _npy_bytes(b"((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((("
               b"((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((("),
    _npy_bytes(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4, 6), }", version=b"\x07\x00"),
    b"\x93NUMPY\x01\x00\xff\xff{",
    b"\x93NUM",
])
def test_broken_npy_headers_are_unreadable_files(tmp_path, raw):
    (tmp_path / "x.npy").write_bytes(raw)
    with pytest.raises(UnreadableInput, match=r"x\.npy"):
        load_sample({"data": tmp_path / "x.npy"}, [spec(3, 4, 6)], Preprocess())


def test_npy_claiming_a_huge_shape_is_refused_from_its_header(tmp_path):
    """4 KB of file claiming 10^13 floats: refused by shape before any data is read (no memory error)."""
    (tmp_path / "huge.npy").write_bytes(_npy_bytes(b"{'descr': '<f4', 'fortran_order': False, "
                                                   b"'shape': (100000, 100000, 1000), }", bytes(4000)))
    with pytest.raises(QuantError, match=r"huge\.npy: \.npy shape \(100000, 100000, 1000\) does not fit"):
        load_sample({"data": tmp_path / "huge.npy"}, [spec(3, 4, 6)], Preprocess())


def test_npy_fortran_order_and_big_endian_read_like_numpy(tmp_path):
    x = RNG.standard_normal((3, 4, 6))
    np.save(tmp_path / "f.npy", np.asfortranarray(x.astype(">f8")))
    feeds = load_sample({"data": tmp_path / "f.npy"}, [spec(3, 4, 6)], Preprocess())
    np.testing.assert_array_equal(feeds["data"][0], x.astype(np.float32))


def test_npy_casts_that_change_values_are_refused(tmp_path):
    """int64 300 would wrap to int8 44 and float64 1e300 would become float32 inf: both refused naming the file;
    casts that keep every value (int64 100 -> int8, float64 -> float32 rounding) are used."""
    cases = [
        (np.array([[300, -5]], np.int64), np.int8, r"big\.npy: \.npy values -5\.\.300 \(int64\) do not fit input "
                                                   r"'ids' of dtype int8 \(-128\.\.127\)"),
        (np.array([[200, 1]], np.uint8), np.int8, r"big\.npy: \.npy values 1\.\.200 \(uint8\) do not fit"),
        (np.array([[1e300, 1.0]]), np.float32, r"big\.npy: \.npy values up to 1e\+300 \(float64\) overflow input "
                                               r"'ids' of dtype float32"),
        (np.array([[70000, 1]], np.int64), np.float16, r"big\.npy: \.npy values up to 70000 \(int64\) overflow"),
    ]
    for array, dtype, message in cases:
        np.save(tmp_path / "big.npy", array)
        with pytest.raises(QuantError, match=message):
            load_sample({"ids": tmp_path / "big.npy"}, [InputSpec("ids", (1, 2), np.dtype(dtype))], Preprocess())
    for array, dtype in [(np.array([[100, -128]], np.int64), np.int8), (np.array([[0.1, 3e38]]), np.float32),
                         (np.array([[65504, 7]], np.int32), np.float16)]:
        np.save(tmp_path / "ok.npy", array)
        feeds = load_sample({"ids": tmp_path / "ok.npy"}, [InputSpec("ids", (1, 2), np.dtype(dtype))], Preprocess())
        assert feeds["ids"].dtype == dtype
        np.testing.assert_array_equal(feeds["ids"], array.astype(dtype))


def test_images_decode_only_as_the_format_their_extension_promises(tmp_path, monkeypatch):
    """A JPEG named .png or a PNG named .bmp is unreadable; PostScript named .png never reaches Pillow's EPS
    plugin (which would run Ghostscript on it)."""
    from PIL import EpsImagePlugin

    opened = []
    original = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: (opened.append(1), original(self))[1])
    Image.fromarray(rgb_array(4, 6)).save(tmp_path / "photo.png", format="JPEG")
    Image.fromarray(rgb_array(4, 6)).save(tmp_path / "pic.bmp", format="PNG")
    (tmp_path / "doc.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 6\nshowpage\n")
    for name, promised in [("photo.png", "PNG"), ("pic.bmp", "BMP"), ("doc.png", "PNG")]:
        with pytest.raises(UnreadableInput, match=rf"{name}: cannot read image \(not a {promised} file"):
            load_sample({"data": tmp_path / name}, [spec(3, 4, 6)], Preprocess())
    assert opened == []
    Image.fromarray(rgb_array(4, 6)).save(tmp_path / "real.jpg", format="JPEG", quality=100)
    feeds = load_sample({"data": tmp_path / "real.jpg"}, [spec(3, 4, 6)], Preprocess())
    with Image.open(tmp_path / "real.jpg") as im:
        np.testing.assert_array_equal(feeds["data"][0], normalise(np.asarray(im.convert("RGB")), 0, 1))

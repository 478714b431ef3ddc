"""Streaming per-tensor statistics: bounded memory, exact, and independent of image order and batching.

One `TensorStats` per activation tensor holds the count, min/max, float64 moments (sum, sum of squares, sum of
|x|), the number of exact zeros, and two 2048-bin histograms of |x| (one per sign) over (0, R], where R is a
power of two that doubles whenever a larger value arrives.

Why the histogram is exact for any order: a value x > 0 goes to bin floor(x / R * BINS). BINS / R is a power
of two, so x * BINS / R is computed without rounding, and doubling R halves the bin index:
floor(x / (2R) * BINS) == floor(floor(x / R * BINS) / 2). Merging adjacent bin pairs on every doubling
therefore gives exactly the histogram a single pass with the final R would give, whatever the order of the
images and however they are split into batches. Negative values are binned the same way on -x. The one
exception is |x| == R itself, clipped into the top bin BINS - 1: at 2R it belongs to bin BINS / 2, not
(BINS - 1) // 2, so those values are counted apart (edge_pos, edge_neg) and moved up on the first doubling.

The per-tensor pass runs in a small C kernel (_statskernel.c, built at install time, loaded with ctypes, which
releases the GIL while it runs) when it is available, and in numpy otherwise; both give the same histograms,
counts, min and max, and sums that differ only in float64 summation order (x * x is taken in float64 by both).
Set QUANTTOOL_NO_KERNEL=1 to force the numpy path.
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from .errors import QuantError, first_line
from .fileio import atomic_open

BINS = 2048  # per sign; a power of two (see the module docstring)

# Values are processed in chunks that fit in the CPU cache: every temporary stays small and hot.
_CHUNK = 1 << 15
_LANES = 4                # interleaved copies of the histogram in `update` (see there)
_SLOTS = 2 * BINS + 1     # signed bin indices -BINS..BINS, offset by BINS
_FORMAT = "quanttool-stats-2"  # 2: edge counts added
_SCALARS = ("count", "numel", "samples", "zeros", "edge_pos", "edge_neg", "min", "max", "sum", "sumsq", "sumabs",
            "range")
_INTEGERS = ("count", "numel", "samples", "zeros", "edge_pos", "edge_neg")
_SUMS = ("sum", "sumsq", "sumabs")


def _add_partial(partials: list[float], x: float) -> None:
    """Add x to a list of non-overlapping floats whose exact sum is the running total (Shewchuk's algorithm,
    the one behind math.fsum); the list stays a few entries long."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


def _load_kernel():
    """(qt_fold from the compiled _statskernel library or None, and a sentence saying which path runs and why).
    A kernel that was built but cannot be loaded is reported with the loader's reason, not hidden."""
    if os.environ.get("QUANTTOOL_NO_KERNEL", "") not in ("", "0"):
        return None, "numpy fallback (QUANTTOOL_NO_KERNEL is set)"
    spec = importlib.util.find_spec(f"{__package__}._statskernel")
    if spec is None or not spec.origin:
        return None, "numpy fallback (the C kernel was not built at install time: no C compiler?)"
    try:
        fold = ctypes.CDLL(spec.origin).qt_fold
    except (OSError, AttributeError) as exc:
        return None, f"numpy fallback (the C kernel {spec.origin} failed to load: {first_line(exc)})"
    fold.restype = ctypes.c_int
    fold.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.POINTER(ctypes.c_double),
                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return fold, f"C kernel ({spec.origin})"


_KERNEL, KERNEL_STATUS = _load_kernel()  # tests set _KERNEL to None to exercise the numpy path
_NONFINITE = 1  # qt_fold's return codes (_statskernel.c): 0 ok, 1 NaN/Inf in the data, 2 bad arguments
# qt_fold's work area (qt_scratch_bytes(BINS)): its histogram lanes and a block of bin indices
_SCRATCH_BYTES = 4 * _LANES * (2 * BINS + 3) + 4 * 4096


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


class _Buffers(threading.local):
    """Per-thread scratch arrays for `update`: no allocation per chunk, and workers never share them."""

    def __init__(self) -> None:
        self.f32 = np.empty(_CHUNK, np.float32)
        self.f64 = np.empty(_CHUNK, np.float64)
        self.mask = np.empty(_CHUNK, np.bool_)
        self.index = np.empty(_CHUNK, np.int64)
        self.lanes = (np.arange(_CHUNK) % _LANES) * _SLOTS + BINS  # lane offset plus the sign offset BINS
        self.kernel = np.empty(_SCRATCH_BYTES, np.uint8)  # qt_fold's work area, off the thread's stack
        self.hist = np.zeros(2 * (BINS + 1), np.int64)  # qt_fold's outputs, read before the thread's next call
        self.moments = np.empty(6, np.float64)
        # raw addresses, taken once: `array.ctypes` and fresh outputs cost ~8 us more per qt_fold call (of ~28;
        # the 66 tensors of a MobileNetV2 image: 0.5 ms)
        self.addresses = tuple(_address(a) for a in (self.kernel, self.hist, self.moments))


_BUFFERS = _Buffers()  # a threading.local: each thread sees its own arrays


def _power_of_two_at_least(value: float) -> float:
    """Smallest 2**k (k may be negative) that is >= value > 0; exact, via frexp rather than log2 rounding."""
    mantissa, exponent = math.frexp(value)  # value = mantissa * 2**exponent, mantissa in [0.5, 1)
    return math.ldexp(1.0, exponent - 1) if mantissa == 0.5 else math.ldexp(1.0, exponent)


def _halve_bins(hist: np.ndarray, edge: int) -> np.ndarray:
    """The histogram for twice the range: new[i] = old[2i] + old[2i+1] in the lower half, zeros above; the
    `edge` values equal to the old range move from the top bin to their own bin BINS / 2."""
    out = np.zeros_like(hist)
    out[: hist.size // 2] = hist.reshape(-1, 2).sum(axis=1)
    out[BINS // 2 - 1] -= edge
    out[BINS // 2] += edge
    return out


def _bins_at(hist: np.ndarray, rng: float, target: float, edge: int) -> np.ndarray:
    """`hist` over (0, rng] re-expressed over (0, target], target = rng * 2**k with k >= 0."""
    while rng < target:
        hist = _halve_bins(hist, edge)
        edge, rng = 0, rng * 2.0
    return hist


def _fold_numpy(flat: np.ndarray, rng: float) -> tuple:
    """The numpy twin of qt_fold in _statskernel.c (see there): (lo, hi, zeros, sum, sumsq, sumabs, R, pos, neg),
    pos and neg with BINS + 1 bins at the returned R, the last one counting |x| == R."""
    lo, hi = float(flat.min()), float(flat.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):  # min/max propagate NaN, so this catches it too
        raise ValueError("contains NaN or Inf")
    absmax = max(-lo, hi)
    if absmax > 0.0:
        rng = _power_of_two_at_least(max(absmax, rng))

    add, f64 = np.add.reduce, np.float64
    scale = BINS / rng if rng else 0.0
    # BINS / R is a power of two; in float32 it stays exact unless R is tiny, where float64 takes over.
    work = np.float32 if 0.0 < scale < 2.0**120 else np.float64
    scale = work(scale)
    signed = lo < 0.0
    buf = _BUFFERS
    hist = np.zeros(_LANES * _SLOTS, np.int64)
    total = sq = absolute = 0.0
    negatives = zeros = 0
    for start in range(0, flat.size, _CHUNK):
        part = flat[start:start + _CHUNK]
        n = part.size
        f32, mask, index = buf.f32[:n], buf.mask[:n], buf.index[:n]
        plus = add(part, dtype=f64)
        sq += add(np.multiply(part, part, out=buf.f64[:n], dtype=f64))  # squared in float64, exactly
        total += plus
        if signed:
            absolute += add(np.abs(part, out=f32), dtype=f64)
            negatives += int(np.count_nonzero(np.less(part, 0, out=mask)))
        else:
            absolute += plus
        zeros += int(np.count_nonzero(np.equal(part, 0, out=mask)))
        if absmax > 0.0:
            # trunc(x * BINS / R) is floor(|x| * BINS / R) with the sign of x: bin k of pos lands at
            # BINS + k, bin k of neg at BINS - k; the shared slot BINS (bin 0 of both, and the zeros) is
            # split below from the counts of negatives and zeros. Neighbouring values go to different
            # copies of the histogram (lanes): runs of equal bins (the zeros of a ReLU) would otherwise
            # make every increment wait for the previous one.
            if work is np.float32:
                np.copyto(index, np.multiply(part, scale, out=f32), casting="unsafe")
            else:
                np.copyto(index, np.multiply(part, scale, dtype=work), casting="unsafe")
            index += buf.lanes[:n]
            hist += np.bincount(index, minlength=_LANES * _SLOTS)
    hist = hist.reshape(_LANES, _SLOTS).sum(axis=0)
    pos = hist[BINS:].copy()
    neg = hist[BINS::-1].copy()
    if absmax > 0.0:  # otherwise nothing was binned
        neg_zero = negatives - int(neg[1:].sum())
        pos[0] -= neg_zero + zeros
        neg[0] = neg_zero
    return lo, hi, zeros, float(total), float(sq), float(absolute), rng, pos, neg


def _fold_kernel(flat: np.ndarray, rng: float) -> tuple:
    """`_fold_numpy` in C: the same results in one pass, without the GIL. The histograms returned are views of
    this thread's buffer: the caller adds them up before it folds the next tensor."""
    buf = _BUFFERS
    hist, moments = buf.hist, buf.moments
    hist.fill(0)
    box = ctypes.c_double(rng)
    scratch, hist_at, moments_at = buf.addresses
    code = _KERNEL(_address(flat), flat.size, BINS, ctypes.byref(box), hist_at, moments_at, scratch, _SCRATCH_BYTES)
    if code == _NONFINITE:
        raise ValueError("contains NaN or Inf")
    if code:
        raise RuntimeError(f"the statistics kernel refused its arguments (code {code}, {BINS} bins)")
    lo, hi, zeros, total, sq, absolute = moments.tolist()
    return lo, hi, int(zeros), total, sq, absolute, box.value, hist[:BINS + 1], hist[BINS + 1:]


@dataclass
class TensorStats:
    count: int = 0          # elements seen
    numel: int = 0          # elements per sample (first update: x.size / batch); Tengine's ACIQ uses it
    samples: int = 0
    min: float = math.inf
    max: float = -math.inf
    sum: float = 0.0        # sum, sumsq and sumabs accumulate in float64
    sumsq: float = 0.0
    sumabs: float = 0.0
    zeros: int = 0          # exact zeros, counted apart from the histograms (ReLU outputs are full of them)
    edge_pos: int = 0       # values x == R (in pos[BINS - 1]); see the module docstring
    edge_neg: int = 0       # values x == -R (in neg[BINS - 1])
    range: float = 0.0      # R: a power of two, 0 until a non-zero value is seen
    pos: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))  # x > 0 over (0, R]
    neg: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))  # -x for x < 0, over (0, R]
    # The per-sample float64 sums are added exactly (non-overlapping partials, as math.fsum keeps them), and
    # sum/sumsq/sumabs are the correctly rounded totals: the same bits for any order of images, split into
    # shards or worker processes and merged.
    partials: dict = field(default_factory=dict, repr=False, compare=False)

    # ---- derived values -------------------------------------------------------------------------------
    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        if not self.count:
            return 0.0
        mean = self.sum / self.count
        return math.sqrt(max(self.sumsq / self.count - mean * mean, 0.0))

    @property
    def mean_abs(self) -> float:
        return self.sumabs / self.count if self.count else 0.0

    @property
    def is_nonnegative(self) -> bool:
        return self.min >= 0

    @property
    def is_constant(self) -> bool:
        return self.min == self.max

    def abs_hist(self) -> tuple[np.ndarray, float]:
        """Histogram of |x| without the exact zeros: (counts over BINS bins of (0, R], R)."""
        return self.pos + self.neg, self.range

    def problem(self) -> str | None:
        """Why these statistics cannot have come from `update` (a damaged or edited file), or None. Every field
        is checked, since each feeds an algorithm: a NaN or negative range gave a wrong scale or an endless
        loop before."""
        ints = {key: getattr(self, key) for key in _INTEGERS}
        for key, value in ints.items():
            if not isinstance(value, int) or value < 0:
                return f"{key} is {value}, not a count"
        for key in ("sum", "sumsq", "sumabs"):
            if not math.isfinite(getattr(self, key)):
                return f"{key} is {getattr(self, key)}"
        if self.sumsq < 0 or self.sumabs < 0:
            return "a sum of squares or of |x| is negative"
        for key, hist in (("pos", self.pos), ("neg", self.neg)):
            if hist.shape != (BINS,) or hist.dtype.kind not in "iu" or int(hist.min(initial=0)) < 0:
                return f"histogram {key} is not {BINS} non-negative counts"
        if self.zeros > self.count or self.zeros + int(self.pos.sum()) + int(self.neg.sum()) != self.count:
            return "the histograms and the count of zeros do not add up to the element count"
        if self.edge_pos > self.pos[BINS - 1] or self.edge_neg > self.neg[BINS - 1]:
            return "the edge counts exceed the top bins"
        if self.count == 0:
            return None if self.range == 0.0 and self.min == math.inf and self.max == -math.inf else \
                "no elements, yet a range, min or max"
        if not (math.isfinite(self.min) and math.isfinite(self.max) and self.min <= self.max):
            return f"min {self.min} and max {self.max} are not a finite interval"
        if self.sumabs < abs(self.sum) * (1 - 1e-9) or self.sumabs > self.count * self.absmax * (1 + 1e-9):
            return "the sum of |x| does not fit the sum, count and range"
        absmax = self.absmax
        if absmax == 0.0:
            return None if self.range == 0.0 else f"range {self.range} for all-zero values"
        if not (math.isfinite(self.range) and self.range > 0 and math.frexp(self.range)[0] == 0.5):
            return f"range {self.range} is not a positive power of two"
        if not absmax <= self.range < 2 * absmax:
            return f"range {self.range} does not fit the largest |x| {absmax}"
        return None

    # ---- accumulation ---------------------------------------------------------------------------------
    def _add_exact(self, key: str, value: float) -> None:
        parts = self.partials.get(key)
        if parts is None:
            parts = self.partials[key] = [getattr(self, key)] if getattr(self, key) else []
        _add_partial(parts, value)
        setattr(self, key, math.fsum(parts))

    def _grow(self, target: float) -> None:
        """Double R until it reaches `target`, merging bin pairs so the histograms stay exact."""
        if not (math.isfinite(target) and target > 0) or not (math.isfinite(self.range) and self.range >= 0):
            # would never end (a negative or infinite range); update/merge only see this with damaged statistics
            raise ValueError(f"cannot grow the histogram range {self.range} to {target}")
        if self.range == 0.0:
            self.range = target
            return
        while self.range < target:
            self.pos = _halve_bins(self.pos, self.edge_pos)
            self.neg = _halve_bins(self.neg, self.edge_neg)
            self.edge_pos = self.edge_neg = 0
            self.range *= 2.0

    def update(self, x: np.ndarray, batch: int = 1) -> None:
        """Fold one tensor (a batch of `batch` samples) into the statistics.

        Raises ValueError("contains NaN or Inf") and leaves the statistics unchanged; the caller names the
        tensor and the image.
        """
        flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        if flat.size:
            fold = _fold_kernel if _KERNEL is not None else _fold_numpy
            lo, hi, zeros, total, sq, absolute, target, pos, neg = fold(flat, self.range)
        if self.samples == 0:
            self.numel = flat.size // max(int(batch), 1)
        self.samples += int(batch)
        if flat.size == 0:
            return
        if target > 0.0:
            self._grow(target)
            # |x| == R (bin BINS) belongs to the top bin BINS - 1, and is remembered for later doublings.
            self.pos += pos[:BINS]
            self.pos[BINS - 1] += pos[BINS]
            self.neg += neg[:BINS]
            self.neg[BINS - 1] += neg[BINS]
            self.edge_pos += int(pos[BINS])
            self.edge_neg += int(neg[BINS])

        self.count += flat.size
        self.zeros += zeros
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        for key, value in (("sum", total), ("sumsq", sq), ("sumabs", absolute)):
            self._add_exact(key, value)

    def merge(self, other: TensorStats) -> None:
        """Add the statistics of `other` (e.g. from another worker) into these."""
        if other.count == 0 and other.samples == 0:
            return
        if self.samples == 0:
            self.numel = other.numel
        if other.range:
            self._grow(max(other.range, self.range))
            self.pos += _bins_at(other.pos, other.range, self.range, other.edge_pos)
            self.neg += _bins_at(other.neg, other.range, self.range, other.edge_neg)
            if other.range == self.range:
                self.edge_pos += other.edge_pos
                self.edge_neg += other.edge_neg
        self.count += other.count
        self.samples += other.samples
        self.zeros += other.zeros
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        for key in _SUMS:
            for value in other.partials.get(key, [getattr(other, key)]):
                self._add_exact(key, value)


# ---- files ----------------------------------------------------------------------------------------------
def _pack_strings(items: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes and end offsets: any character survives, NUL included (numpy 'U' arrays strip it)."""
    encoded = [s.encode("utf-8") for s in items]
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
    return data, ends


def _unpack_strings(data: np.ndarray, ends: np.ndarray) -> list[str]:
    raw = data.astype(np.uint8).tobytes()
    starts = np.concatenate([[0], ends[:-1]]) if ends.size else ends
    return [raw[int(a):int(b)].decode("utf-8") for a, b in zip(starts, ends)]


def save_stats(path: str | os.PathLike, stats: dict[str, TensorStats], meta: dict[str, str]) -> None:
    """Write statistics and string metadata to one .npz file, atomically."""
    names = list(stats)
    items = [stats[n] for n in names]
    arrays = {
        "format": np.array(_FORMAT),
        "bins": np.array(BINS, np.int64),
        "pos": np.array([s.pos for s in items], np.int64).reshape(len(items), BINS),
        "neg": np.array([s.neg for s in items], np.int64).reshape(len(items), BINS),
    }
    for key in _SCALARS:
        dtype = np.int64 if key in _INTEGERS else np.float64
        arrays[key] = np.array([getattr(s, key) for s in items], dtype)
    for key in _SUMS:  # the exact partials, so parts merged later still give the single-pass bits
        rows = [s.partials.get(key, [getattr(s, key)]) for s in items]
        width = max((len(row) for row in rows), default=0)
        arrays[f"{key}_partials"] = np.array([row + [0.0] * (width - len(row)) for row in rows],
                                             np.float64).reshape(len(items), width)
    arrays["names"], arrays["name_ends"] = _pack_strings(names)
    arrays["meta_keys"], arrays["meta_key_ends"] = _pack_strings(list(meta))
    arrays["meta_values"], arrays["meta_value_ends"] = _pack_strings([str(v) for v in meta.values()])
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)


class _Damaged(ValueError):
    """A statistics file that reads fine but holds values `update` cannot produce."""


def load_stats(path: str | os.PathLike) -> tuple[dict[str, TensorStats], dict[str, str]]:
    """Read a file written by `save_stats`; anything else is a QuantError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["format"]) != _FORMAT or int(data["bins"]) != BINS:
                raise ValueError(f"format {str(data['format'])!r} with {int(data['bins'])} bins")
            names = _unpack_strings(data["names"], data["name_ends"])
            keys = _unpack_strings(data["meta_keys"], data["meta_key_ends"])
            values = _unpack_strings(data["meta_values"], data["meta_value_ends"])
            columns = {key: data[key] for key in _SCALARS}
            exact = {key: data[f"{key}_partials"] for key in _SUMS if f"{key}_partials" in data}
            pos, neg = data["pos"], data["neg"]
            if pos.shape != (len(names), BINS) or neg.shape != pos.shape:
                raise ValueError("histogram shape does not match the tensor names")
            for key, column in columns.items():
                want = "i" if key in _INTEGERS else "f"
                if column.shape != (len(names),) or column.dtype.kind != want:
                    raise ValueError(f"column {key!r} does not hold one {'integer' if want == 'i' else 'float'} "
                                     f"per tensor")
            if pos.dtype.kind not in "iu" or neg.dtype.kind not in "iu":
                raise ValueError("histograms are not integer counts")
            stats = {}
            for i, name in enumerate(names):
                item = TensorStats(pos=pos[i].astype(np.int64), neg=neg[i].astype(np.int64))
                for key, column in columns.items():
                    setattr(item, key, int(column[i]) if key in _INTEGERS else float(column[i]))
                for key, rows in exact.items():
                    parts = [float(v) for v in rows[i] if v]
                    if not all(math.isfinite(v) for v in parts) or math.fsum(parts) != getattr(item, key):
                        raise _Damaged(f"tensor {name!r}: the exact parts of {key} do not add up to it")
                    item.partials[key] = parts
                problem = item.problem()
                if problem:
                    raise _Damaged(f"tensor {name!r}: {problem}")
                stats[name] = item
    except FileNotFoundError:
        raise QuantError(f"{path}: statistics file not found; run calibrate with --stats to create it") from None
    except _Damaged as exc:
        raise QuantError(f"{path}: damaged statistics ({exc}); delete the file or choose another --stats path, "
                         f"and calibrate again") from None
    except Exception as exc:  # zip, npz, key, decode and shape errors all mean the same to the user
        # numpy's own text is advice for numpy users (e.g. "set allow_pickle=True"), wrong here: say what it is
        what = "a pickle, which is never loaded" if "pickle" in str(exc) else type(exc).__name__
        raise QuantError(f"{path}: not a quanttool statistics file ({what}); --stats takes the .npz file "
                         f"calibrate --stats writes: delete it or choose another --stats path") from None
    return stats, dict(zip(keys, values))

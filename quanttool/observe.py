"""Observation: run the calibration samples through onnxruntime once, streaming the activations calibration
needs into per-tensor statistics (quanttool.stats) with memory that does not grow with the number of images.

The tensors are fetched in onnxruntime's blocked layout where that saves a copy (quanttool.blocked).
Inference and histogramming overlap: while onnxruntime runs sample k, a worker thread folds sample k-1
into the statistics (numpy and the C kernel release the GIL), and decoding runs ahead in quanttool.inputs'
thread pool. With jobs > 1, worker processes (each with its own onnxruntime session and statistics) take
chunks of the sample list as they become free, and their statistics are merged at the end: the statistics
are exact and independent of order (stats.py), so the result has the same bits for any number of workers.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx

from .errors import QuantError
from .stats import TensorStats

CHUNK = 8  # samples a worker claims at a time: small enough to balance, large enough to keep decoding ahead


class _Runner:
    """sess.run(names, feeds), writing the outputs into two alternating sets of buffers allocated once
    (IOBinding) instead of onnxruntime allocating ~27 MB of fresh outputs per MobileNetV2 image: 13% less CPU
    for the exposed run on this benchmark. A set is rewritten two calls later, after the caller has folded
    it. Models whose output shapes change between samples (data-dependent shapes) go back to sess.run."""

    def __init__(self, sess, names: list[str]) -> None:
        self.sess, self.names = sess, names
        self.sets: list | None = None
        self.calls = 0

    def _bind(self, outputs: list[np.ndarray]) -> list:
        sets = []
        for _ in range(2):
            buffers = [np.empty_like(out) for out in outputs]
            binding = self.sess.io_binding()
            for name, buf in zip(self.names, buffers):
                binding.bind_output(name, "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)
            sets.append((binding, buffers))
        return sets

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        if self.sets is None:
            outputs = self.sess.run(self.names, dict(feeds))
            if self.calls == 1 and all(isinstance(out, np.ndarray) for out in outputs):
                self.sets = self._bind(outputs)
            return outputs
        binding, buffers = self.sets[self.calls % 2]
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        try:
            self.sess.run_with_iobinding(binding)
        except Exception:  # an output's shape changed: this model's outputs need fresh arrays every time
            self.sets = None
            return self.sess.run(self.names, dict(feeds))
        return buffers


def nonfinite(name: str, key: str, is_input: bool) -> QuantError:
    """The error for a NaN/Inf in tensor `name` on image `key`, blaming what can cause it."""
    if is_input:
        return QuantError(f"input {name!r} contains NaN or Inf on image {key}; check the image and the "
                          f"preprocessing options (--mean/--norm)")
    return QuantError(f"tensor {name!r} contains NaN or Inf on image {key} although the model's inputs are finite: "
                      f"the model overflows or divides by zero on this input; check the model")


def observe(model: onnx.ModelProto, samples: Iterable[tuple[str, Mapping[str, np.ndarray]]], total: int,
            threads: int = 0, names: list[str] | None = None, desc: str | None = "calibrate",
            tick=None) -> dict[str, TensorStats]:
    """Run every sample once and return streaming statistics for each tensor in `names` (default: every float
    activation; a tensor that turns out not to be float is left out). `desc=None` shows no progress bar;
    `tick()` is called after each sample."""
    from tqdm import tqdm

    from .blocked import observing_session
    from .prepare.activations import float_activations

    names = float_activations(model) if names is None else names
    inputs = {inp.name for inp in model.graph.input}
    run_names = [n for n in names if n not in inputs]
    shapes = ", ".join(f"{i.name}=" + "x".join(str(d.dim_value) for d in i.type.tensor_type.shape.dim)
                       for i in model.graph.input)
    # the dims are fixed by then: an inconsistent --shape is the usual reason onnxruntime refuses the graph
    what = f"the model at input shapes {shapes} (check --shape)"
    observing = observing_session(model, run_names, threads, what)
    stats = {name: TensorStats() for name in names}
    run = _Runner(observing.sess, observing.outputs)

    def fold(key: str, values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            if value.dtype.kind != "f":
                stats.pop(name, None)  # a tensor of unknown type that is really integer
                continue
            try:
                stats[name].update(value, batch=value.shape[0] if value.ndim else 1)
            except ValueError:
                raise nonfinite(name, key, name in inputs) from None

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for key, feeds in tqdm(samples, total=total, unit="img", desc=desc, dynamic_ncols=True,
                               disable=desc is None):
            outputs = run(feeds)
            if run.calls == 1 and not observing.agrees(outputs):  # a padded block after all: plain tensors
                observing = observing_session(model, run_names, threads, what, blocked=False)
                run = _Runner(observing.sess, observing.outputs)
                outputs = run(feeds)
            values = {name: feeds[name] for name in names if name in feeds}
            values.update({name: out for name, out in zip(run_names, outputs) if name in stats})
            if pending is not None:
                pending.result()
            pending = pool.submit(fold, key, values)
            if tick is not None:
                tick()
        if pending is not None:
            pending.result()
    return stats


@dataclass
class Job:
    """What each worker needs to observe its share of the samples (picklable, sent once per worker)."""

    model: bytes  # the prepared model, serialized
    names: list[str]
    samples: list  # the whole sample list; workers claim chunks of it
    specs: list
    pp: object
    threads: int  # onnxruntime threads per worker
    chunk: int = CHUNK  # samples claimed at a time
    decoders: int = 1  # decoding threads per worker


_shared: dict = {}  # per worker process: the claim counter, the progress counter and the stop flag


def _init(next_chunk, done, stop) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the workers
    _shared.update(next_chunk=next_chunk, done=done, stop=stop)


def _claimed(job: Job, report) -> Iterable:
    """The samples of every chunk this process claims, decoded ahead within a chunk."""
    from .inputs import LoadReport, iter_samples

    next_chunk, stop = _shared["next_chunk"], _shared["stop"]
    while not stop.value:
        with next_chunk.get_lock():
            start = next_chunk.value * job.chunk
            next_chunk.value += 1
        if start >= len(job.samples):
            return
        chunk = job.samples[start:start + job.chunk]
        part = LoadReport()
        try:
            yield from iter_samples(chunk, job.specs, job.pp, threads=job.decoders, report=part)
        except QuantError:
            if part.loaded or part.skipped < len(chunk):
                raise  # not "every sample of this chunk was unreadable", which other chunks may make up for
        finally:
            report.loaded += part.loaded
            report.skipped += part.skipped
            report.skipped_files += part.skipped_files


def _work(job: Job, model: onnx.ModelProto | None = None, desc: str | None = None, tick=None):
    """Observe the chunks this process claims: (statistics, images loaded, images skipped)."""
    from .inputs import LoadReport

    report = LoadReport()
    done = _shared["done"]

    def count() -> None:
        with done.get_lock():
            done.value += 1
        if tick is not None:
            tick()

    model = onnx.ModelProto.FromString(job.model) if model is None else model
    try:
        stats = observe(model, _claimed(job, report), total=len(job.samples), threads=job.threads,
                        names=job.names, desc=desc, tick=count)
    except BaseException:
        _shared["stop"].value = 1
        raise
    return stats, report.loaded, report.skipped


def merge(parts: Sequence[dict[str, TensorStats]]) -> dict[str, TensorStats]:
    """Statistics of all parts together, keyed in the order of the first part that has each tensor."""
    merged: dict[str, TensorStats] = {}
    for part in parts:
        for name, st in part.items():
            merged.setdefault(name, TensorStats()).merge(st)
    return merged


def observe_parallel(model: onnx.ModelProto, samples: list, specs: list, pp, names: list[str], *, jobs: int,
                     threads: int) -> tuple[dict[str, TensorStats], int]:
    """Observe `samples` with `jobs` processes (this one included): (merged statistics, images skipped).

    Each process runs its own onnxruntime session with `threads` threads; the others are started with
    'spawn', so nothing of this process's threads or onnxruntime state is inherited."""
    from tqdm import tqdm

    jobs = max(1, min(jobs, -(-len(samples) // CHUNK)))
    ctx = multiprocessing.get_context("spawn")
    next_chunk, done, stop = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Value("b", 0)
    # one process takes every sample as one chunk, decoding ahead with as many threads as onnxruntime has
    job = Job(model.SerializeToString(), names, samples, specs, pp, threads) if jobs > 1 else \
        Job(b"", names, samples, specs, pp, threads, chunk=max(1, len(samples)), decoders=max(1, threads))
    pool = ctx.Pool(jobs - 1, initializer=_init, initargs=(next_chunk, done, stop)) if jobs > 1 else None
    _shared.update(next_chunk=next_chunk, done=done, stop=stop)
    bar = tqdm(total=len(samples), unit="img", desc="calibrate", dynamic_ncols=True)

    def refresh() -> None:
        if done.value != bar.n:
            bar.update(done.value - bar.n)

    try:
        others = [pool.apply_async(_work, (job,)) for _ in range(jobs - 1)] if pool else []
        results = [_work(job, model, tick=refresh)]
        while not all(r.ready() for r in others):  # this process is done: follow the others' progress
            refresh()
            time.sleep(0.1)
        results += [r.get() for r in others]  # re-raises a worker's error here
    except BaseException:
        stop.value = 1
        if pool is not None:
            pool.terminate()
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        refresh()
        bar.close()
    loaded, skipped = sum(r[1] for r in results), sum(r[2] for r in results)
    if not loaded:
        raise QuantError(f"all {skipped} samples were unreadable; check --images" if skipped else
                         "no calibration sample could be run; check the --images folder")
    stats = merge([r[0] for r in results])
    # graph order, as a single process gives; a tensor some process found not to be float is dropped
    gone = {name for r in results for name in names if name not in r[0]}
    return {name: stats[name] for name in names if name in stats and name not in gone and stats[name].count}, \
        skipped

"""Calibrate on a Dask cluster: one `quanttool calibrate --shard K/N` task per shard, then `merge-stats` and the
table, which is byte for byte the table one machine would write.

    python scripts/dask_calibrate.py [--scheduler tcp://HOST:8786] [--shards N] [--workdir DIR] \\
        -- -m model.onnx -i /shared/images -a kl -o model.scale [any other calibrate option]

Without --scheduler it starts a LocalCluster on this machine; with one, the same script runs on a real
cluster unchanged. Every worker needs quanttool installed (`pip install quanttool`) and must see the model,
the images and --workdir (where the shard statistics go) under the same paths: a shared file system.
Needs the `dist` extra: `pip install 'quanttool[dist]'`.
"""

from __future__ import annotations

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path


def run_shard(calibrate_args: list[str], shard: str, part: str) -> str:
    """One task: calibrate one shard into `part` with the worker's own Python and quanttool."""
    result = subprocess.run([sys.executable, "-m", "quanttool", "calibrate", *calibrate_args, "--shard", shard,
                             "--stats", part], capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}"]
        raise RuntimeError(f"shard {shard}: {lines[-1]}")
    return part


def _without_output(args: list[str]) -> tuple[list[str], str | None]:
    """calibrate's arguments without -o/--output (a shard writes no table), and the output."""
    rest, output, skip = [], None, False
    for k, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in ("-o", "--output"):
            output, skip = args[k + 1], True
        elif arg.startswith("--output="):
            output = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, output


def calibrate_on_cluster(client, calibrate_args: list[str], shards: int, workdir: str | Path) -> str:
    """Run the shards as Dask tasks, merge their statistics here, write the table; returns calibrate's summary."""
    args, output = _without_output(list(calibrate_args))
    workdir = Path(workdir)
    parts = [str(workdir / f"part{k}of{shards}.npz") for k in range(1, shards + 1)]
    futures = [client.submit(run_shard, args, f"{k}/{shards}", part, pure=False)
               for k, part in enumerate(parts, start=1)]
    client.gather(futures)  # re-raises the first failed shard's error
    merged = str(workdir / "all.npz")
    quanttool = [sys.executable, "-m", "quanttool"]
    subprocess.run([*quanttool, "merge-stats", *parts, "-o", merged], check=True, capture_output=True)
    table = subprocess.run([*quanttool, "calibrate", *args, "--stats", merged,
                            *(["-o", output] if output else [])], check=True, capture_output=True, text=True)
    return table.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workdir", default=None, help="folder for the shard statistics (shared by the workers)")
    parser.add_argument("calibrate_args", nargs=argparse.REMAINDER, help="-- then quanttool calibrate's options")
    args = parser.parse_args()
    calibrate_args = args.calibrate_args[1:] if args.calibrate_args[:1] == ["--"] else args.calibrate_args

    from dask.distributed import Client, LocalCluster

    cluster = None if args.scheduler else LocalCluster(threads_per_worker=1, dashboard_address=None)
    with Client(args.scheduler or cluster) as client:
        workdir = args.workdir or tempfile.mkdtemp(prefix="quanttool_shards_")
        print(calibrate_on_cluster(client, calibrate_args, args.shards, workdir))
    if cluster is not None:
        cluster.close()


if __name__ == "__main__":
    main()

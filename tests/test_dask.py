"""The Dask recipe (scripts/dask_calibrate.py) on a LocalCluster writes the table one process writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="dask distributed is not installed (pip install -e '.[dist]'); "
                                          ".ci/run installs it")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from dask_calibrate import calibrate_on_cluster  # noqa: E402

from tests.test_shards import _model_and_images  # noqa: E402


def test_dask_recipe_gives_the_one_process_table(tmp_path):
    from dask.distributed import Client, LocalCluster

    path, images = _model_and_images(tmp_path, n=9)
    args = ["-m", str(path), "-i", str(images), "-a", "kl"]
    one = subprocess.run([sys.executable, "-m", "quanttool", "calibrate", *args, "-o", str(tmp_path / "one.scale")],
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    work = tmp_path / "work"
    work.mkdir()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        summary = calibrate_on_cluster(client, [*args, "-o", str(tmp_path / "dask.scale")], 2, work)
    assert "9 images" in summary
    assert (tmp_path / "dask.scale").read_bytes() == (tmp_path / "one.scale").read_bytes()

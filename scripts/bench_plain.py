"""The plain pass calibration is measured against, as a whole process: imports, decode + preprocess every
image with quanttool's input pipeline, one onnxruntime fp32 run each (default session, default threads).

    python scripts/bench_plain.py MODEL IMAGE_DIR N_IMAGES
"""

from __future__ import annotations

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import sys

from bench_common import PREPROCESS

from quanttool import prepare as prep
from quanttool.inputs import Preprocess, discover, iter_samples
from quanttool.runtime import session


def main() -> None:
    model_path, image_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = prep.load_model(model_path)
    specs = prep.input_specs(model, None)
    sess = session(model)
    samples = discover({specs[0].name: image_dir}, n)
    for _, feeds in iter_samples(samples, specs, Preprocess(**PREPROCESS)):
        sess.run(None, feeds)


if __name__ == "__main__":
    main()

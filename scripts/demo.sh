#!/usr/bin/env bash
# The main job on the bundled demo: install quanttool into .venv, then calibrate, convert and evaluate
# demo/digits_mobilenet.onnx with the images in calibration_data/ and demo/heldout/. Outputs go to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -e '.[plot]'
mkdir -p out
PRE=(--color gray --norm 0.00392156862745098)   # the demo's input is pixel / 255, one channel
set -x
.venv/bin/quanttool calibrate -m demo/digits_mobilenet.onnx -i calibration_data "${PRE[@]}" \
    -o out/digits.scale --stats out/digits.stats.npz
.venv/bin/quanttool convert -m demo/digits_mobilenet.onnx -f out/digits.scale -i calibration_data \
    -o out/digits_int8.onnx --params out/digits_params.json
.venv/bin/quanttool evaluate -m demo/digits_mobilenet.onnx -q out/digits_int8.onnx -i demo/heldout "${PRE[@]}" \
    --labels demo/heldout_labels.txt --max-images 497 --json out/digits_eval.json --report out/digits_eval.html

#!/usr/bin/env bash
# The demo: the shipped demo model (4 synthetic shapes, 128 px) on the sample images, then the
# accuracy-speed sweep on 200 freshly generated held-out images (ends with the AUC-Policy of the
# router against random routing). Run from anywhere: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python detect.py --device cpu                                   # data/images -> runs/detect/exp*
python data/make_demo_data.py --root data/demo --n-train 0 --n-val 200 --img-size 128 --seed 1
python test.py --weights demo-dy-yolov7-tiny.pt --data data/demo/demo.yaml --device cpu --dy-sweep

#!/usr/bin/env bash
# The README's pictures, rebuilt from the shipped demo model: its routed detections on the sample
# images (docs/routed_detections.jpg) and its accuracy-speed sweep on 200 freshly generated
# held-out images (docs/sweep.png). About a minute on 2 cores. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
python detect.py --device cpu --project "$out" --name detect
python data/make_demo_data.py --root "$out/heldout" --n-train 0 --n-val 200 --img-size 128 --seed 1
python test.py --weights weights/demo-dy-yolov7-tiny.pt --data "$out/heldout/demo.yaml" --device cpu --dy-sweep \
    --project "$out" --name sweep
python - "$out" <<'PY'
import shutil, sys
from pathlib import Path

import cv2
import numpy as np

out = Path(sys.argv[1])
tiles = [cv2.resize(cv2.imread(str(p)), (256, 256), interpolation=cv2.INTER_AREA)
         for p in sorted((out / "detect").glob("*.jpg"))[:6]]
rows = [np.hstack(tiles[i:i + 3]) for i in range(0, len(tiles) - len(tiles) % 3, 3)]
cv2.imwrite("docs/routed_detections.jpg", np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 88])
shutil.copy(out / "sweep" / "sweep_gflops.png", "docs/sweep.png")
print("wrote docs/routed_detections.jpg and docs/sweep.png")
PY

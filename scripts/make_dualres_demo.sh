#!/usr/bin/env bash
# How weights/demo-dualres-yolov7-tiny.pt was made (the exact commands, with their seeds), and the
# side-by-side comparison on held-out images that docs/dualres.md reports. Run from anywhere:
#     bash scripts/make_dualres_demo.sh [WORK_DIR]        # default /tmp/dualres_demo
# About 16 minutes on one core: no detector is trained, only the router.
#
# The plain demo detector is detector 1 of the shipped Dy demo (weights/demo-dy-yolov7-tiny.pt):
# that model was trained with --freeze-detector1 from the plain yolov7-tiny of the recipe in docs/training.md
# (runs/train/demo-plain), so its detector 1 *is* that plain detector (fp16-rounded). Step 2 maps
# its tensors back to a yolov7-tiny checkpoint (the inverse of the stage-1 warm start) and checks
# that the plain model's predictions equal the Dy model's detector-1 route bit for bit.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/dualres_demo}
export OMP_NUM_THREADS=1
mkdir -p "$W"

# 1. Data: the training data of the demo models (seed 0), 200 held-out images (seed 1) and fresh
#    images for the router (seed 2). The router learns which images the frozen detector gets wrong;
#    on the detector's own training images it gets almost all of them right, so a router trained
#    there learns little that carries over (held-out AUC 0.519 vs random 0.500).
python data/make_demo_data.py --root "$W/demo-train" --n-train 800 --n-val 200 --img-size 128 --seed 0
python data/make_demo_data.py --root "$W/router-train" --n-train 4000 --n-val 400 --img-size 128 --seed 2
python data/make_demo_data.py --root "$W/heldout" --n-train 0 --n-val 200 --img-size 128 --seed 1

# 2. The plain demo detector: detector 1 of the Dy demo as a yolov7-tiny checkpoint.
python - weights/demo-dy-yolov7-tiny.pt "$W/demo-plain.pt" <<'EOF'
import sys

import torch

from models.yolo import build_model
from utils.weights.checkpoints import load_checkpoint, load_strict, read_checkpoint, save_checkpoint

src, dst = sys.argv[1], sys.argv[2]
ckpt = read_checkpoint(src)
dy, _ = load_checkpoint(src)
n = dy.n_backbone
cfg = {k: v for k, v in ckpt["cfg"].items() if k != "dynamic"}
ref = build_model("yolov7-tiny", nc=len(ckpt["names"]))
for key in ("backbone", "head", "anchors"):
    assert cfg[key] == ref.cfg[key], f"detector 1's {key} differs from cfg/yolov7-tiny.yaml"
cfg["name"] = "yolov7-tiny"
plain = build_model(cfg, names=list(ckpt["names"]))
state = {}
for key, v in ckpt["model"].items():  # model_b.i -> model.i, model_h.j -> model.(n + j)
    part, i, rest = key.split(".", 2)
    if part == "model_b":
        state[f"model.{i}.{rest}"] = v
    elif part == "model_h":
        state[f"model.{int(i) + n}.{rest}"] = v
load_strict(plain, state, source=src)  # every tensor of the plain model, nothing else
plain.eval(), dy.eval()
x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    a, b = plain(x), dy(x, threshold=1.0).pred  # threshold 1: every image on detector 1
a = a[0] if isinstance(a, (tuple, list)) else a
assert torch.equal(a, b), float((a - b).abs().max())
save_checkpoint(dst, plain, names=ckpt["names"], img_size=ckpt["img_size"], meta={"stage": f"detector 1 of {src}"})
print(f"{dst}: detector 1 of {src} as a plain yolov7-tiny ({len(state)} tensors), predictions identical")
EOF
python test.py --weights "$W/demo-plain.pt" --data "$W/demo-train/demo.yaml" --device cpu --workers 0 \
    --no-plots --project "$W/test" --name plain-val --exist-ok                   # its mAP on val
python test.py --weights "$W/demo-plain.pt" --data "$W/heldout/demo.yaml" --device cpu --workers 0 \
    --no-plots --project "$W/test" --name plain-heldout --exist-ok               # and on held-out

# 3. The DualRes router around it (detector frozen; only the router trains). Chosen among
#    lr 3.2e-4 (default) / 1e-2 / 3e-2, scale 0.5 / 0.75 and thumbnails 128 / 64 / 32 px by the
#    mAP AUC-Policy on a val split (never on the held-out images): the paper's
#    lr 3.2e-4 barely moves the router in 40 epochs here; 64 px thumbnails overfit least.
ROUTER_OPTS=(--scale 0.75 --router-size 64 --lr 0.01 --epochs 150 --seed 0)
python train_router.py --router dualres --weights "$W/demo-plain.pt" --data "$W/router-train/demo.yaml" \
    --img-size 128 --device cpu --workers 0 "${ROUTER_OPTS[@]}" --project "$W/runs" --name dualres --exist-ok

# 4. Release copy: fp16 weights, calibrated as they ship (as for the Dy demo), no training state.
python scripts/strip_checkpoint.py --src $W/runs/dualres/weights/best.pt --dst $W/dualres-fp16.pt
python train_router.py --router dualres --weights "$W/dualres-fp16.pt" --data "$W/router-train/demo.yaml" \
    --img-size 128 --batch-size 16 --device cpu --workers 0 --calibrate --project "$W/runs" --name dualres-calib --exist-ok
python scripts/strip_checkpoint.py --src $W/runs/dualres-calib/weights/calibrated.pt --dst weights/demo-dualres-yolov7-tiny.pt

# 5. Composability: the same router, untrained, on another detector of the same data (the Dy
#    demo's detector 2, inner threshold 0), calibrated on the router data's val images.
python train_router.py --router dualres --weights weights/demo-dy-yolov7-tiny.pt \
    --router-from weights/demo-dualres-yolov7-tiny.pt --data "$W/router-train/demo.yaml" --img-size 128 \
    --batch-size 16 --device cpu --workers 0 --project "$W/runs" --name dualres-on-dy2 --exist-ok
python scripts/strip_checkpoint.py --src $W/runs/dualres-on-dy2/weights/calibrated.pt --dst $W/dualres-on-dy2.pt

# 6. Side by side on the held-out images (the table in docs/dualres.md).
python scripts/compare_routers.py --data "$W/heldout/demo.yaml" --device cpu --workers 0 --project "$W/compare" \
    --weights weights/demo-dy-yolov7-tiny.pt weights/demo-dualres-yolov7-tiny.pt "$W/dualres-on-dy2.pt"

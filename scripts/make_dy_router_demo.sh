#!/usr/bin/env bash
# How the router of weights/demo-dy-yolov7-tiny.pt was made (its detectors are the stage-1 demo
# detectors, unchanged), with the comparison that chose it. Run from anywhere:
#     bash scripts/make_dy_router_demo.sh [WORK_DIR]        # default /tmp/dy_router_demo
# About 30 minutes on 2 cores: no detector is trained, only routers.
#
# Every choice is made on the router data's val split (seed 2); the held-out images (seed 1) are
# scored once, for the numbers the README reports.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/dy_router_demo}
SRC=${SRC:-weights/demo-dy-yolov7-tiny.pt}
mkdir -p "$W"
COMMON=(--img-size 128 --batch-size 16 --device cpu --workers 2 --project "$W/runs" --exist-ok)

# 1. Data: the detectors' training data (seed 0: 800 train, 200 val), images the detectors never
#    saw for the router (seed 2: 4,000 router images, of which the runs use the first 1,000 or 2,000, + 400 val) and the held-out images (seed 1).
[ -f "$W/demo-train/demo.yaml" ] || python data/make_demo_data.py --root "$W/demo-train" --n-train 800 --n-val 200 --img-size 128 --seed 0
[ -f "$W/router-train/demo.yaml" ] || python data/make_demo_data.py --root "$W/router-train" --n-train 4000 --n-val 400 --img-size 128 --seed 2
[ -f "$W/heldout/demo.yaml" ] || python data/make_demo_data.py --root "$W/heldout" --n-train 0 --n-val 200 --img-size 128 --seed 1

# 2. Stage-1 weights with a freshly initialised router, and the record of the detectors' own
#    training images (what train_router.py checks the router's images against).
python - "$SRC" "$W/demo-train" "$W/stage1.pt" <<'EOF'
import sys
from pathlib import Path

import torch

from utils.data.config import find_images
from utils.data.image_set import image_set_record
from utils.weights.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint

src, train_root, dst = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
ckpt = read_checkpoint(src)
model, _ = load_checkpoint(src)
torch.manual_seed(0)
for m in (model.router.layer1, model.router.layer2):
    m.reset_parameters()
meta = {k: v for k, v in (ckpt.get("meta") or {}).items() if k not in ("router_trained_on", "stripped_from")}
meta["trained_on"] = image_set_record(find_images(train_root / "images" / "train"))
save_checkpoint(dst, model.float(), names=ckpt["names"], img_size=ckpt["img_size"], meta=meta)
print(f"{dst}: detectors of {src}, fresh router, trained_on {meta['trained_on']['n']} images")
EOF

# 3. Data YAMLs: the router trains on the 'router' split and chooses its best epoch on 'val'.
cat > "$W/own.yaml" <<EOF
path: $W/demo-train
train: images/train
val: $W/router-train/images/val
names: {0: circle, 1: square, 2: triangle, 3: cross}
EOF
ls "$W"/router-train/images/train/*.jpg > "$W/router-images.txt"
for n in 1000 2000; do
    mkdir -p "$W/router-$n"
    head -n "$n" "$W/router-images.txt" > "$W/router-$n/images.txt"
    cat > "$W/unseen-$n.yaml" <<EOF
path: $W/router-train
train: $W/demo-train/images/train
val: images/val
router: $W/router-$n/images.txt
names: {0: circle, 1: square, 2: triangle, 3: cross}
EOF
done

# 4. Candidates, each scored on the val split (the sweep's AUC-Policy): Eq. 12 on the detectors'
#    own 800 images (the old recipe); Eq. 12 on 1,000 and 2,000 unseen images; Eq. 12 without the
#    logit decay (the paper's objective alone); and the 'ap' baseline.
run() {  # name data [train_router.py options]
    local name=$1 data=$2
    shift 2
    python train_router.py --weights "$W/stage1.pt" --data "$W/$data.yaml" "$@" "${COMMON[@]}" --name "$name"
    python test.py --weights "$W/runs/$name/weights/best.pt" --data "$W/unseen-2000.yaml" --dy-sweep --device cpu \
        --workers 2 --no-plots --project "$W/val" --name "$name" --exist-ok | grep "AUC-Policy"
}
CANDIDATES=(own-adaptive unseen1k-adaptive unseen2k-adaptive unseen2k-nodecay unseen2k-ap)
run own-adaptive own
run unseen1k-adaptive unseen-1000
run unseen2k-adaptive unseen-2000
run unseen2k-nodecay unseen-2000 --logit-decay 0
run unseen2k-ap unseen-2000 --strategy ap
BEST=$(python - "$W/val" "${CANDIDATES[@]}" <<'EOF'
import json, sys
from pathlib import Path
root, names = Path(sys.argv[1]), sys.argv[2:]
auc = {n: json.loads((root / n / "metrics.json").read_text())["dynamic"]["sweep"]["auc_policy_router"] for n in names}
for n, a in auc.items():
    print(f"val AUC-Policy {n}: {a:.3f}", file=sys.stderr)
print(max(auc, key=auc.get))
EOF
)
echo "chosen on val: $BEST"

# 5. Release copy of the chosen router: fp16 weights, calibrated as they ship (the dial's table
#    and the per-route score maps on the val split), no training state.
python scripts/strip_checkpoint.py --src "$W/runs/$BEST/weights/best.pt" --dst "$W/fp16.pt"
python train_router.py --weights "$W/fp16.pt" --data "$W/unseen-2000.yaml" --calibrate "${COMMON[@]}" --name calib
python scripts/strip_checkpoint.py --src "$W/runs/calib/weights/calibrated.pt" --dst "$W/demo-dy-yolov7-tiny.pt"

# 6. The held-out numbers (README model zoo): the sweep with oracle, router and random.
python test.py --weights "$W/demo-dy-yolov7-tiny.pt" --data "$W/heldout/demo.yaml" --dy-sweep --device cpu \
    --workers 2 --project "$W/heldout-test" --name new --exist-ok
echo "cp $W/demo-dy-yolov7-tiny.pt weights/demo-dy-yolov7-tiny.pt   # to ship it"

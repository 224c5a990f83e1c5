#!/usr/bin/env bash
# The GPU check: the CUDA tests, then a short fp16 benchmark of dy-yolov7 at 640 (batch 1 and 32)
# against plain YOLOv7, beside the paper's V100 ratios. Needs a CUDA GPU; about 5 minutes on one
# datacenter GPU. Figures go to runs/gpu_check/ (gpu_benchmark.md is printed at the end).
#
#     pip install -r requirements-dev.txt && bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to PyTorch')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
python -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
python scripts/gpu_benchmark.py --cfg dy-yolov7 --img-size 640 --batch 1 32 --device 0 --out runs/gpu_check
echo "gpu_check: $(( $(date +%s) - start )) s"

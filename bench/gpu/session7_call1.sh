#!/bin/bash
# Prepared here: bash ../shared/tools/gpu-wheels.sh (.gpu/) and python3 bench/carry.py pack --out .carry/<video> new=<subject>
# (katie for calls 1 and 3, d10 for call 2); run there with the device tool: bash bench/gpu/session7_call1.sh, carry .gpu and .carry.
# The device tool brings back at most 8 files: call 3 packs its results into one results.tgz.
# Session 7 call 1: katie, 4 recipes side by side (5 min each), then render speed one at a time, then viewer latency.
set -u
T0=$(date +%s)
mkdir -p /tmp/site && tar -xJf .gpu/taichi-slim.tar.xz -C /tmp/site && python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
python3 bench/carry.py unpack .carry/katie --to /tmp/subjects > $OUT/unpack.log 2>&1 || { cat $OUT/unpack.log; exit 1; }
S=/tmp/subjects/katie_new
echo "setup $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv,noheader
run() { name=$1; shift; python3 bench/empty_space.py run --subject $S --test-last 40 --minutes 5 --no-render --score-train 20 --workspace /tmp/ws/$name --out $OUT/$name.json "$@" > $OUT/$name.log 2>&1; }
run today --variant today &
run fix1 --variant fix --set train.distortion_weight=1 --set train.distortion_steps=4000 &
run d1all --variant fix --set train.distortion_weight=1 &
run d01all --variant fix --set train.distortion_weight=0.1 &
wait
echo "trained+scored $(( $(date +%s) - T0 )) s"
for n in today fix1 d1all d01all; do timeout 60 python3 bench/empty_space.py render $OUT/$n.json 2>&1 | tail -1; done
echo "rendered $(( $(date +%s) - T0 )) s"
for n in today fix1; do timeout 45 python3 bench/viewer_latency.py /tmp/ws/$n/checkpoints/latest.pth --subject $S --side 512 --changes 50 --json $OUT/latency_$n.json 2>&1 | tail -3; done
echo "done $(( $(date +%s) - T0 )) s"
python3 bench/empty_space.py table $OUT/today.json $OUT/fix1.json $OUT/d1all.json $OUT/d01all.json
python3 - <<'PY'
import json, os
for n in ("today", "fix1", "d1all", "d01all"):
    try:
        d = json.load(open(f"{os.environ['OUT']}/{n}.json"))
    except Exception as e:
        print(n, "missing", e); continue
    h, t = d["held_out"], d.get("train_frames", {})
    f = lambda r: " / ".join(f"{r[k]['psnr']:.2f}" if r.get(k) and r[k].get('psnr') is not None else "-" for k in ("full", "face", "mouth", "face_hull"))
    print(n, "steps", d["steps"], "held-out", f(h), "| train frames", f(t) if t else "-")
PY

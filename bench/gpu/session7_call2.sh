#!/bin/bash
# Prepared here: bash ../shared/tools/gpu-wheels.sh (.gpu/) and python3 bench/carry.py pack --out .carry/<video> new=<subject>
# (katie for calls 1 and 3, d10 for call 2); run there with the device tool: bash bench/gpu/session7_call2.sh, carry .gpu and .carry.
# The device tool brings back at most 8 files: call 3 packs its results into one results.tgz.
# Session 7 call 2: d10, issue 15's ablation side by side (5 min each), render speed one at a time, test-time pose
# refinement of today's held-out frames, a profile of today's single-frame render, viewer latency.
set -u
T0=$(date +%s)
mkdir -p /tmp/site && tar -xJf .gpu/taichi-slim.tar.xz -C /tmp/site && python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
python3 bench/carry.py unpack .carry/d10 --to /tmp/subjects > /tmp/unpack.log 2>&1 || { cat /tmp/unpack.log; exit 1; }
S=/tmp/subjects/d10_new
echo "setup $(( $(date +%s) - T0 )) s"
run() { name=$1; shift; python3 bench/empty_space.py run --subject $S --test-last 60 --minutes 5 --no-render --score-train 20 --workspace /tmp/ws/$name --out $OUT/$name.json "$@" > /tmp/$name.log 2>&1; tail -2 /tmp/$name.log > $OUT/$name.log; }
run today --variant today &
run carve --variant carve &
run carveskip --variant carve --set render.skip_hidden_samples=1 &
run d1k4 --variant distortion --set train.distortion_weight=1 --set train.distortion_steps=4000 &
run fix1 --variant fix --set train.distortion_weight=1 --set train.distortion_steps=4000 &
wait
echo "trained+scored $(( $(date +%s) - T0 )) s"
for n in today carve carveskip d1k4 fix1; do timeout 50 python3 bench/empty_space.py render $OUT/$n.json 2>&1 | tail -1; done
echo "rendered $(( $(date +%s) - T0 )) s"
timeout 40 python3 bench/render_profile.py /tmp/ws/today/checkpoints/latest.pth --subject $S --frames 20 > $OUT/profile_today.txt 2>&1; head -3 $OUT/profile_today.txt | tail -1
timeout 30 python3 bench/viewer_latency.py /tmp/ws/today/checkpoints/latest.pth --subject $S --side 512 --changes 50 --json $OUT/latency_today.json 2>&1 | tail -1
echo "profiled $(( $(date +%s) - T0 )) s"
timeout 100 python3 cli.py eval /tmp/ws/today/checkpoints/latest.pth --subject $S --refine-poses 50 --out /tmp/eval_today > $OUT/eval_today.log 2>&1; tail -25 $OUT/eval_today.log
echo "done $(( $(date +%s) - T0 )) s"
python3 bench/empty_space.py table $OUT/today.json $OUT/carve.json $OUT/carveskip.json $OUT/d1k4.json $OUT/fix1.json
python3 - <<'PY'
import json, os
for n in ("today", "carve", "carveskip", "d1k4", "fix1"):
    try:
        d = json.load(open(f"{os.environ['OUT']}/{n}.json"))
    except Exception as e:
        print(n, "missing", e); continue
    h, t = d["held_out"], d.get("train_frames", {})
    f = lambda r: " / ".join(f"{r[k]['psnr']:.2f}" if r.get(k) and r[k].get('psnr') is not None else "-" for k in ("full", "face", "mouth", "face_hull"))
    print(n, "steps", d["steps"], "held-out", f(h), "| train frames", f(t) if t else "-")
PY

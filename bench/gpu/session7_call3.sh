#!/bin/bash
# Prepared here: bash ../shared/tools/gpu-wheels.sh (.gpu/) and python3 bench/carry.py pack --out .carry/<video> new=<subject>
# (katie for calls 1 and 3, d10 for call 2); run there with the device tool: bash bench/gpu/session7_call3.sh, carry .gpu and .carry.
# The device tool brings back at most 8 files: call 3 packs its results into one results.tgz.
# Session 7 call 3: katie, the default recipe beside the distortion recipe (5 min each, two side by side), render
# speed and viewer latency one at a time, a profile of the default's single-frame render, and the default's
# held-out frames scored from test-time refined cameras.
set -u
T0=$(date +%s)
R=/tmp/results; mkdir -p $R
mkdir -p /tmp/site && tar -xJf .gpu/taichi-slim.tar.xz -C /tmp/site && python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
python3 bench/carry.py unpack .carry/katie --to /tmp/subjects > /tmp/unpack.log 2>&1 || { cat /tmp/unpack.log; exit 1; }
S=/tmp/subjects/katie_new
echo "setup $(( $(date +%s) - T0 )) s"
run() { name=$1; shift; python3 bench/empty_space.py run --subject $S --test-last 40 --minutes 5 --no-render --score-train 20 --workspace /tmp/ws/$name --out $R/$name.json "$@" > $R/$name.log 2>&1; }
run today --variant today &
run d1k4 --variant distortion --set train.distortion_weight=1 --set train.distortion_steps=4000 &
wait
echo "trained+scored $(( $(date +%s) - T0 )) s"
for n in today d1k4; do timeout 45 python3 bench/empty_space.py render $R/$n.json 2>&1 | tail -1; done
for n in today d1k4; do timeout 30 python3 bench/viewer_latency.py /tmp/ws/$n/checkpoints/latest.pth --subject $S --side 512 --changes 50 --json $R/latency_$n.json 2>&1 | tail -1; done
echo "rendered $(( $(date +%s) - T0 )) s"
timeout 30 python3 bench/render_profile.py /tmp/ws/today/checkpoints/latest.pth --subject $S --frames 20 --rows 30 > $R/profile_today.txt 2>&1; grep "ms per frame" $R/profile_today.txt
( cd $R && tar -czf $OUT/results.tgz . )
timeout 80 python3 cli.py eval /tmp/ws/today/checkpoints/latest.pth --subject $S --refine-poses 20 --out /tmp/eval_today > $R/eval_today.log 2>&1; grep -v "evaluating\|refining" $R/eval_today.log | tail -30
( cd $R && tar -czf $OUT/results.tgz . )
echo "done $(( $(date +%s) - T0 )) s"
python3 - <<'PY'
import json
for n in ("today", "d1k4"):
    try:
        d = json.load(open(f"/tmp/results/{n}.json"))
    except Exception as e:
        print(n, "missing", e); continue
    h, t = d["held_out"], d.get("train_frames", {})
    f = lambda r: " / ".join(f"{r[k]['psnr']:.2f}" if r.get(k) and r[k].get('psnr') is not None else "-" for k in ("full", "face", "mouth", "face_hull"))
    print(n, "steps", d["steps"], "held-out", f(h), "| train frames", f(t) if t else "-")
PY

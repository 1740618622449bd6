#!/bin/bash
# Session 8, device call 2 (issues 16 and 15): katie, the default recipe, 5 minutes (bench/empty_space.py run, its
# held-out scores and render figures with this session's inference path); then on that avatar, side by side with
# the code before this session (.carry/base: `git archive cb6fdd5 nerfbs taichi_kernels cli.py` plus today's
# bench/): the viewer's slider-to-frame latency, the held-out render figures (batch 8 and one frame at a time) and
# a single frame's profile. This session's inference path: the K tables blended once per render, the MLPs'
# weights cast once, their last layers padded to 8 outputs, the colour input's row width a compile-time constant.
# Prepared here as bench/gpu/katie_setup.sh says. Carry .gpu and .carry. Everything comes back as results.tgz.
# A CPU dry run: MINUTES=0.2 MODEL=small NERFBS_ARCH=cpu SIDE=64 FRAMES=2 OUT=/tmp/out bash bench/gpu/session8_call2.sh
MINUTES=${MINUTES:-5} MODEL=${MODEL:-original} SIDE=${SIDE:-512} FRAMES=${FRAMES:-20}
source bench/gpu/katie_setup.sh
timeout $(( $(left) - 150 )) python3 bench/empty_space.py run --subject $S --test-last 40 --minutes $MINUTES --model $MODEL \
    --variant today --render-frames $FRAMES --workspace /tmp/ws/katie --out $R/katie_new.json > $R/katie_new.log 2>&1
echo "trained $(( $(date +%s) - T0 )) s"; tail -4 $R/katie_new.log
K=/tmp/ws/katie/checkpoints/latest.pth
latency() { timeout $(( $(left) < 40 ? $(left) : 40 )) python3 $1/bench/viewer_latency.py $K --subject $S --side $SIDE \
    --changes 50 --json $R/latency_$2.json 2>&1 | tail -1; }
echo "new:"; latency . new
echo "base:"; latency .carry/base base
cp $R/katie_new.json $R/katie_base.json
timeout $(( $(left) < 45 ? $(left) : 45 )) python3 .carry/base/bench/empty_space.py render $R/katie_base.json > $R/katie_base.log 2>&1
tail -3 $R/katie_base.log
for code in new base; do
    dir=.; [ $code = base ] && dir=.carry/base
    [ $(left) -gt 20 ] && timeout $(( $(left) < 50 ? $(left) : 50 )) python3 $dir/bench/render_profile.py $K --subject $S \
        --frames $FRAMES --rows 30 --per-round 8,24 > $R/profile_$code.txt 2>&1
    echo "$code:"; grep "ms per frame" $R/profile_$code.txt
done

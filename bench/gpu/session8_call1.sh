#!/bin/bash
# Session 8, device call 1 (issue 16's latency, issue 15's pictures): katie, the default recipe, 5 minutes through
# bench/samples.py (the occupancy history, where the samples lie, the grid slice and per-pixel samples pictures);
# then, on that avatar, a single frame's render profile and the viewer's slider-to-frame latency with the code
# before this session's change (.carry/base: `git archive cb6fdd5 nerfbs taichi_kernels cli.py` plus today's
# bench/) and after it (the working tree: the K tables blended once per render instead of once per round).
# Prepared here as bench/gpu/katie_setup.sh says. Carry .gpu and .carry. Everything comes back as results.tgz.
# A CPU dry run: MINUTES=0.3 MODEL=small NERFBS_ARCH=cpu SIDE=64 FRAMES=2 OUT=/tmp/out bash bench/gpu/session8_call1.sh
MINUTES=${MINUTES:-5} MODEL=${MODEL:-original} SIDE=${SIDE:-512} FRAMES=${FRAMES:-20}
source bench/gpu/katie_setup.sh
nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv,noheader > $R/gpu.txt 2>&1
timeout $(( 430 - $(date +%s) + T0 )) python3 bench/samples.py --subject $S --test-last 40 --minutes $MINUTES --model $MODEL --workspace /tmp/ws/katie \
    --pictures $R/katie_pictures --out $R/katie_samples.json > $R/katie_samples.log 2>&1
echo "trained $(( $(date +%s) - T0 )) s"
tail -12 $R/katie_samples.log
K=/tmp/ws/katie/checkpoints/latest.pth
for code in base new; do
    dir=.; [ $code = base ] && dir=.carry/base
    timeout 75 python3 $dir/bench/render_profile.py $K --subject $S --frames $FRAMES --rows 30 --per-round 24,32,48 \
        > $R/profile_$code.txt 2>&1
    echo "$code:"; grep "ms per frame" $R/profile_$code.txt
    timeout 45 python3 $dir/bench/viewer_latency.py $K --subject $S --side $SIDE --changes 50 \
        --json $R/latency_$code.json 2>&1 | tail -1
done
nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv,noheader >> $R/gpu.txt 2>&1

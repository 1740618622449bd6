#!/bin/bash
# Session 8, device call 3 (issue 16), planned for the next device time: it ran once and measured nothing (the
# wait for the checkpoint gave up before training had written it, and the session's device time was spent). Katie,
# the default recipe, 5 minutes (bench/empty_space.py run, stopped once its checkpoint is written: session 8's call 2
# scored the same recipe's held-out frames); then on that avatar the viewer's slider-to-frame latency, interleaved
# (figures drifted by up to 20 % within call 2): this session's code and the code before it (.carry/base, as in
# session8_call2.sh) on the render thread, this session's code served on the main thread, then both again.
# BUDGET: seconds for the whole call.
# Prepared here as bench/gpu/katie_setup.sh says. Carry .gpu and .carry. Everything comes back as results.tgz.
# A CPU dry run: MINUTES=0.2 MODEL=small NERFBS_ARCH=cpu SIDE=64 OUT=/tmp/out bash bench/gpu/session8_call3.sh
MINUTES=${MINUTES:-5} MODEL=${MODEL:-original} SIDE=${SIDE:-512}
BUDGET=${BUDGET:-480}
source bench/gpu/katie_setup.sh
cap() { local l=$(left); echo $(( l < $1 ? (l > 1 ? l : 1) : $1 )); }  # seconds: at most $1, at most what is left
K=/tmp/ws/katie/checkpoints/latest.pth
python3 bench/empty_space.py run --subject $S --test-last 40 --minutes $MINUTES --model $MODEL \
    --variant today --no-render --workspace /tmp/ws/katie --out $R/katie.json > $R/katie.log 2>&1 &
TRAIN=$!
while [ ! -f $K ] && kill -0 $TRAIN 2>/dev/null; do sleep 2; done
sleep 3; kill $TRAIN 2>/dev/null
echo "trained $(( $(date +%s) - T0 )) s"; grep -v "^\[" $R/katie.log | tail -2
latency() { [ $(left) -gt 12 ] && timeout $(cap 25) python3 $1/bench/viewer_latency.py $K --subject $S --side $SIDE \
    --changes 40 --json $R/latency_$2.json $3 2>&1 | tail -1; }
echo "new:"; latency . new1 ""
echo "base:"; latency .carry/base base1 ""
echo "new, main thread:"; latency . new_main --main-thread
echo "base:"; latency .carry/base base2 ""
echo "new:"; latency . new2 ""

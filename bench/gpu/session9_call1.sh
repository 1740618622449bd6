#!/bin/bash
# Session 9, device call 1 (issue 16, and 15's render figures): katie, the default recipe, 5 minutes with this
# session's code (bench/empty_space.py run --no-render: held-out scores); then on that avatar, side by side
# with session 8's code (.carry/base: `git archive 6cccb72 nerfbs taichi_kernels bench cli.py` plus today's
# bench/frame_paths.py): the viewer's slider-to-frame latency on the render thread and on the main thread,
# interleaved; where the viewer's frame time goes (bench/frame_paths.py); a profile.
# This session's changes: the fast kernel launch (taichi_kernels/launch.py), the colour input without a copy
# (nerfbs/field.py::FrozenField's row).
# Prepared here as bench/gpu/katie_setup.sh says. Carry .gpu and .carry. Everything comes back as results.tgz.
# A CPU dry run: MINUTES=0.2 MODEL=small NERFBS_ARCH=cpu SIDE=64 FRAMES=2 OUT=/tmp/out bash bench/gpu/session9_call1.sh
MINUTES=${MINUTES:-5} MODEL=${MODEL:-original} SIDE=${SIDE:-512} FRAMES=${FRAMES:-20}
BUDGET=${BUDGET:-585}
source bench/gpu/katie_setup.sh
cap() { local l=$(left); echo $(( l < $1 ? (l > 1 ? l : 1) : $1 )); }  # seconds: at most $1, at most what is left
rm -rf /tmp/ws/katie
K=/tmp/ws/katie/checkpoints/latest.pth
# Training writes the checkpoint after its 5 minutes, then scores the held-out frames and writes the JSON; the
# scores are waited for until 190 s before the end (the first run of this call killed training at a fixed limit
# just before it ended: nothing measured).
python3 bench/empty_space.py run --subject $S --test-last 40 --minutes $MINUTES --model $MODEL --variant today \
    --no-render --workspace /tmp/ws/katie --out $R/katie_new.json > $R/katie_new.log 2>&1 &
TRAIN=$!
while [ ! -f $R/katie_new.json ] && kill -0 $TRAIN 2>/dev/null && [ $(left) -gt 120 ] && { [ ! -f $K ] || [ $(left) -gt 190 ]; }; do sleep 2; done
kill $TRAIN 2>/dev/null; wait $TRAIN 2>/dev/null
echo "trained $(( $(date +%s) - T0 )) s"; grep -v "^\[" $R/katie_new.log | tail -3
[ -f $K ] || { echo "no checkpoint"; exit 1; }
timeout $(cap 20) python3 bench/launch_overhead.py 2>&1 | grep -v "^\[Taichi"
latency() {  # code dir, name, extra flag
    [ $(left) -gt 15 ] && echo "$2:" && timeout $(cap 30) python3 $1/bench/viewer_latency.py $K --subject $S --side $SIDE \
        --changes 40 --json $R/latency_$2.json $3 2>&1 | tail -1; }
latency . new1 ""
latency .carry/base base1 ""
latency . new_main1 --main-thread
latency .carry/base base_main1 --main-thread
for code in new base; do
    dir=.; [ $code = base ] && dir=.carry/base
    [ $(left) -gt 30 ] && echo "frame paths, $code:" && timeout $(cap 40) python3 $dir/bench/frame_paths.py $K --subject $S \
        --frames 12 --trials 2 --json $R/paths_$code.json 2>&1 | grep -v "^\[Taichi\]"
done
[ $(left) -gt 30 ] && timeout $(cap 40) python3 bench/render_profile.py $K --subject $S --frames 10 --rows 30 \
    > $R/profile_new.txt 2>&1; grep "ms per frame" $R/profile_new.txt
latency . new2 ""
latency .carry/base base2 ""
latency . new_main2 --main-thread

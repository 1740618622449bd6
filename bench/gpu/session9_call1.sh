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
# (Its first run killed training at a fixed time limit just before it ended: nothing measured.)
SCORE_UNTIL=190
source bench/gpu/katie_train.sh
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

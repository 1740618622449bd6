#!/bin/bash
# Session 9, device call 2 (issue 16, and 15's render figures): as call 1 (session9_call1.sh), after the harmonics
# kernel's fix (one thread per element on CUDA; call 1's profile showed a thread per point taking 4.6 ms of a
# frame): katie, the default recipe, 5 minutes with this session's code; then on that avatar, side by side with
# session 8's code (.carry/base, as in call 1): the viewer's slider-to-frame latency (interleaved, twice each), a
# profile, and the held-out render figures (batch 8, one frame at a time) of both codes as time allows.
# Prepared here as bench/gpu/katie_setup.sh says. Carry .gpu and .carry. Everything comes back as results.tgz.
# A CPU dry run: MINUTES=0.2 MODEL=small NERFBS_ARCH=cpu SIDE=64 FRAMES=2 OUT=/tmp/out bash bench/gpu/session9_call2.sh
MINUTES=${MINUTES:-5} MODEL=${MODEL:-original} SIDE=${SIDE:-512} FRAMES=${FRAMES:-20}
BUDGET=${BUDGET:-550}
source bench/gpu/katie_setup.sh
SCORE_UNTIL=170
source bench/gpu/katie_train.sh
latency . new1 ""
latency .carry/base base1 ""
latency . new2 ""
latency .carry/base base2 ""
[ $(left) -gt 30 ] && timeout $(cap 40) python3 bench/render_profile.py $K --subject $S --frames 10 --rows 30 \
    > $R/profile_new.txt 2>&1; grep "ms per frame" $R/profile_new.txt
if [ -f $R/katie_new.json ]; then
    cp $R/katie_new.json $R/katie_base.json
    for code in new base; do
        dir=.; [ $code = base ] && dir=.carry/base
        [ $(left) -gt 35 ] && timeout $(cap 45) python3 $dir/bench/empty_space.py render $R/katie_$code.json \
            > $R/render_$code.log 2>&1 && echo "renders, $code:" && tail -1 $R/render_$code.log
    done
fi

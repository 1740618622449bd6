# Sourced by session 9's device calls after katie_setup.sh: katie, the default recipe, $MINUTES of training with this
# checkout's code (bench/empty_space.py run --no-render) into /tmp/ws/katie; training writes the checkpoint $K after
# its minutes, then scores the held-out frames and writes $R/katie_new.json, which is waited for until $SCORE_UNTIL
# seconds before the end of the budget. Then the launch benchmark, and latency(), the viewer's slider-to-frame
# benchmark of a code folder. Sets K, cap() and latency().
cap() { local l=$(left); echo $(( l < $1 ? (l > 1 ? l : 1) : $1 )); }  # seconds: at most $1, at most what is left
rm -rf /tmp/ws/katie
K=/tmp/ws/katie/checkpoints/latest.pth
python3 bench/empty_space.py run --subject $S --test-last 40 --minutes $MINUTES --model $MODEL --variant today \
    --no-render --workspace /tmp/ws/katie --out $R/katie_new.json > $R/katie_new.log 2>&1 &
TRAIN=$!
while [ ! -f $R/katie_new.json ] && kill -0 $TRAIN 2>/dev/null && [ $(left) -gt 120 ] && { [ ! -f $K ] || [ $(left) -gt $SCORE_UNTIL ]; }; do sleep 2; done
kill $TRAIN 2>/dev/null; wait $TRAIN 2>/dev/null
echo "trained $(( $(date +%s) - T0 )) s"; grep -v "^\[" $R/katie_new.log | tail -3
[ -f $K ] || { echo "no checkpoint"; exit 1; }
timeout $(cap 20) python3 bench/launch_overhead.py 2>&1 | grep -v "^\[Taichi"
latency() {  # code dir, name, extra flag
    [ $(left) -gt 15 ] && echo "$2:" && timeout $(cap 30) python3 $1/bench/viewer_latency.py $K --subject $S --side $SIDE \
        --changes 40 --json $R/latency_$2.json $3 2>&1 | tail -1; }

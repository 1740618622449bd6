#!/bin/bash
# Session 10's device calls (issue 15): several trainings side by side on the one GPU, then some avatars' renders
# measured one at a time. RUNS lists the trainings as NAME:SUBJECT:TEST_LAST:STEP_SCALE[:LONG_STEP_DENSITY]
# (SUBJECT under /tmp/subjects, as katie_setup.sh unpacks the carried groups). Each trains $MINUTES of the default
# recipe with render.step_scale (long marching steps, that many times the original recipe's) and
# render.long_step_density (0 when not given: every step long) set, by `bench/empty_space.py run --variant today
# --no-render`, and scores its held-out frames (and $SCORE_TRAIN training frames). Then, for the runs named in
# RENDER (default: all), in that order, `bench/empty_space.py render` adds samples per pixel and frames/s, batched
# and one at a time, over the first RENDER_FRAMES held-out frames (0: all); those also named in RENDER_PRODUCTS render
# with the MLPs as products instead of one kernel (`--products`: figures under render_products). SYNTH lists subjects
# to make first, as NAME:TRACKS_SUBJECT:FRAMES (`nerfbs synth --tracks-from`, 512x512). Last, for the runs named in EVAL (default:
# none), `nerfbs eval`'s report of the checkpoint (metrics and contact sheet) into eval_NAME/, EVAL_RESERVE seconds each.
# Carry .gpu and .carry. Everything comes back as results.tgz. A CPU dry run:
#   MINUTES=0.1 MODEL=small NERFBS_ARCH=cpu OUT=/tmp/out RUNS="a:katie_new:40:1 b:katie_new:40:4" bash bench/gpu/side_by_side.sh
MINUTES=${MINUTES:-5} MODEL=${MODEL:-original} SCORE_TRAIN=${SCORE_TRAIN:-0} SYNTH=${SYNTH:-} RENDER_FRAMES=${RENDER_FRAMES:-0}
BUDGET=${BUDGET:-585} RENDER_RESERVE=${RENDER_RESERVE:-45}  # seconds kept per rendered avatar for its figures
EVAL=${EVAL:-} EVAL_RESERVE=${EVAL_RESERVE:-40} RENDER_PRODUCTS=${RENDER_PRODUCTS:-}
source bench/gpu/katie_setup.sh
cap() { local l=$(left); echo $(( l < $1 ? (l > 1 ? l : 1) : $1 )); }  # seconds: at most $1, at most what is left
for spec in $SYNTH; do
    IFS=: read name tracks frames <<< "$spec"
    python3 cli.py synth /tmp/subjects/$name --tracks-from /tmp/subjects/$tracks --frames $frames --size 512 \
        > $R/synth_$name.log 2>&1 || { tail -3 $R/synth_$name.log; exit 1; }
    echo "synth $name $(( $(date +%s) - T0 )) s"
done
pids=() names=()
for spec in $RUNS; do
    IFS=: read name subject test_last scale density <<< "$spec"
    rm -rf /tmp/ws/$name
    python3 bench/empty_space.py run --subject /tmp/subjects/$subject --test-last $test_last --minutes $MINUTES \
        --model $MODEL --variant today --set render.step_scale=$scale \
        --set render.long_step_density=${density:-0} --score-train $SCORE_TRAIN --render-frames $RENDER_FRAMES --no-render \
        --workspace /tmp/ws/$name --out $R/$name.json > $R/$name.log 2>&1 &
    pids+=($!) names+=($name)
done
RENDER=${RENDER:-${names[*]}}
reserve=$(( RENDER_RESERVE * $(wc -w <<< "$RENDER") + EVAL_RESERVE * $(wc -w <<< "$EVAL") + 10 ))
# A run needs about 70 s beyond its minutes before it can be scored (Taichi's first compile: 48-60 s on a fresh H100,
# session 13) and 15-30 s to score; runs still going at BUDGET - reserve are stopped, keeping their training figures.
echo "trainings stopped at $(( ${BUDGET:-585} - reserve )) s if not done; $MINUTES-minute runs need about" \
    "$(awk "BEGIN { print int($MINUTES * 60 + 100) }") s"
alive() { for p in "${pids[@]}"; do kill -0 $p 2>/dev/null && return 0; done; return 1; }
while alive && [ $(left) -gt $reserve ]; do sleep 2; done
for p in "${pids[@]}"; do kill $p 2>/dev/null; done; wait
echo "trained $(( $(date +%s) - T0 )) s"
for name in "${names[@]}"; do
    cp /tmp/ws/$name/metrics.jsonl $R/$name.metrics.jsonl 2>/dev/null
    [ -f $R/$name.json ] || { echo "$name: no report"; grep -v "^\[" $R/$name.log | tail -3; continue; }
    grep -q '"held_out": null' $R/$name.json && echo "$name: stopped before its held-out frames were scored"
done
for name in $RENDER; do
    products=$(grep -qw $name <<< "$RENDER_PRODUCTS" && echo --products)
    [ -f $R/$name.json ] && [ $(left) -gt 10 ] && timeout $(cap $RENDER_RESERVE) python3 bench/empty_space.py render $R/$name.json \
        $products > $R/$name.render.log 2>&1
done
for name in $EVAL; do
    [ -f $R/$name.json ] && [ $(left) -gt 10 ] && timeout $(cap $EVAL_RESERVE) python3 bench/empty_space.py eval \
        $R/$name.json --out $R/eval_$name > $R/eval_$name.log 2>&1
done
ls $R/*.json > /dev/null 2>&1 && python3 bench/empty_space.py table $R/*.json 2>&1 | grep -v "^\["

#!/bin/bash
# Planned in session 9 for the next device time (not run yet): the per-kernel GPU benchmark of ../shared/GPU.md
# (bench/encoder.py, bench/rendering.py) and training speed, this checkout against the code in .carry/base (for
# session 9's launch change: `git archive 6cccb72 nerfbs taichi_kernels bench cli.py`), interleaved: the kernels of
# both codes twice, then katie trained $MINUTES with each code in turn (steps/s after the first step's
# compilation, bench/empty_space.py run), the held-out scoring after it cut by its time limit when need be.
# Prepared here as bench/gpu/katie_setup.sh says. Carry .gpu and .carry. Everything comes back as results.tgz.
# A CPU dry run: MINUTES=0.1 MODEL=small NERFBS_ARCH=cpu OUT=/tmp/out bash bench/gpu/kernels_before_after.sh
MINUTES=${MINUTES:-1.5} MODEL=${MODEL:-original}
BUDGET=${BUDGET:-585}
source bench/gpu/katie_setup.sh
cap() { local l=$(left); echo $(( l < $1 ? (l > 1 ? l : 1) : $1 )); }  # seconds: at most $1, at most what is left
for pass in 1 2; do
    for code in new base; do
        dir=.; [ $code = base ] && dir=.carry/base
        [ $(left) -gt 300 ] && timeout $(cap 50) python3 $dir/bench/encoder.py --out $R/encoder_${code}$pass.json \
            > $R/encoder_${code}$pass.log 2>&1; echo "encoder, $code $pass:"; grep -v "^\[" $R/encoder_${code}$pass.log | tail -8
        [ $(left) -gt 300 ] && timeout $(cap 50) python3 $dir/bench/rendering.py --no-study --out $R/rendering_${code}$pass.json \
            > $R/rendering_${code}$pass.log 2>&1; echo "rendering, $code $pass:"; grep -v "^\[" $R/rendering_${code}$pass.log | tail -8
    done
done
for code in base new; do
    dir=.; [ $code = base ] && dir=.carry/base
    rm -rf /tmp/ws/$code
    [ $(left) -gt 60 ] && timeout $(( $(left) / 2 )) python3 $dir/bench/empty_space.py run --subject $S --test-last 40 \
        --minutes $MINUTES --model $MODEL --variant today --no-render --workspace /tmp/ws/$code --out $R/train_$code.json \
        > $R/train_$code.log 2>&1
    echo "training, $code:"; grep -v "^\[" $R/train_$code.log | tail -2
    python3 -c "import json, statistics; rows = [json.loads(l) for l in open('/tmp/ws/$code/metrics.jsonl')]
half = [r['ms_per_step'] for r in rows[len(rows) // 2:] if 'ms_per_step' in r]
print(f\"step {rows[-1]['step']} at {rows[-1]['elapsed_s']:.0f} s; median {statistics.median(half):.2f} ms per step (last half)\")" 2>&1 | tail -1
done

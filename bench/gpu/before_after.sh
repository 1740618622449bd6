#!/bin/bash
# Issue 14's headline comparison in one device call: a real video preprocessed and trained by the code the issue was
# filed against (main at 72f1b20: fov 63 assumed, MediaPipe's poses, GrabCut masks, the original's marching) beside
# today's `nerfbs preprocess` and `nerfbs train` defaults, side by side on the one GPU, all scored by today's
# `nerfbs eval` (the face score does not depend on the masks, so it compares two preprocessors).
# RUNS lists the trainings as NAME:TREE:SUBJECT:TEST_LAST[:OPTIONS], TREE "base" (the old code, carried as
# .carry/code_base.tar.xz: `git archive 72f1b20 | xz > .carry/code_base.tar.xz`) or "new" (this tree); SUBJECT
# under /tmp/subjects, as katie_setup.sh unpacks the carried groups (`bench/carry.py pack --out .carry/katie
# base=<old preprocess> new=<new preprocess>` gives katie_base and katie_new). Each trains $MINUTES with the CLI's
# defaults (LPIPS off: it starts after step 20,000, and its weights are not on the machine) and OPTIONS, more train
# options with commas for spaces ("--no-pose-refinement,--step-scale,1"). The new runs' own
# evaluation (face score, contact sheet) comes back as eval_NAME/; the base runs' checkpoints are scored by today's
# `nerfbs eval` into eval_NAME/. The runs in REFINE_RUNS are scored again with `--refine-poses $REFINE` (the held-out
# cameras fitted on their own images, the field frozen) into refine_NAME/. CROSS_EVALS lists NAME:SUBJECT pairs: run
# NAME's checkpoint scored against another subject of the same video and cameras (katie_track's run against
# katie_new's segmenter head images, say) into cross_NAME_SUBJECT/.
# Carry .gpu and .carry. The figures come back as results.tgz, each contact sheet as contact_NAME.jpg (the PNGs of
# four runs are over the 16 MiB a file may have). A CPU dry run:
#   MINUTES=0.1 NERFBS_ARCH=cpu OUT=/tmp/out RUNS="a:base:katie_base:40 b:new:katie_new:40" bash bench/gpu/before_after.sh
MINUTES=${MINUTES:-5} BUDGET=${BUDGET:-585} EVAL_RESERVE=${EVAL_RESERVE:-35} REFINE=${REFINE:-20}
REFINE_RUNS=${REFINE_RUNS:-} REFINE_RESERVE=${REFINE_RESERVE:-60} CROSS_EVALS=${CROSS_EVALS:-}
source bench/gpu/katie_setup.sh
set -m  # each training in its own process group, so that SIGINT (the trainer saves a checkpoint) reaches it
rm -rf /tmp/base_tree && mkdir -p /tmp/base_tree && tar -xJf .carry/code_base.tar.xz -C /tmp/base_tree || exit 1
cap() { local l=$(left); echo $(( l < $1 ? (l > 1 ? l : 1) : $1 )); }  # seconds: at most $1, at most what is left
score() {  # CHECKPOINT SUBJECT OUT SECONDS [EVAL OPTIONS]: today's `nerfbs eval` into OUT (log OUT.log), if time is left
    local ckpt=$1 subject=$2 out=$3 seconds=$4; shift 4
    [ $(left) -gt 10 ] && timeout $(cap $seconds) python3 cli.py eval $ckpt --subject /tmp/subjects/$subject \
        --out $out "$@" > $out.log 2>&1
}
pids=() names=()
for spec in $RUNS; do
    IFS=: read name tree subject test_last options <<< "$spec"
    code=$PWD; [ $tree = base ] && code=/tmp/base_tree
    rm -rf /tmp/ws/$name
    ( cd $code && exec python3 cli.py train /tmp/subjects/$subject --test-last $test_last --minutes $MINUTES --no-lpips \
        --workspace /tmp/ws/$name ${options//,/ } ) > $R/$name.train.log 2>&1 &
    pids+=($!) names+=($name)
done
reserve=$(( EVAL_RESERVE * ($(grep -o ":base:" <<< "$RUNS" | wc -l) + $(wc -w <<< "$CROSS_EVALS")) \
    + REFINE_RESERVE * $(wc -w <<< "$REFINE_RUNS") + 10 ))
echo "trainings stopped at $(( BUDGET - reserve )) s if not done"
alive() { for p in "${pids[@]}"; do kill -0 $p 2>/dev/null && return 0; done; return 1; }
while alive && [ $(left) -gt $reserve ]; do sleep 2; done
for p in "${pids[@]}"; do kill -INT $p 2>/dev/null; done; wait  # as Ctrl-C: the trainer saves its checkpoint
echo "trained $(( $(date +%s) - T0 )) s"
for spec in $RUNS; do
    IFS=: read name tree subject _ <<< "$spec"
    cp /tmp/ws/$name/metrics.jsonl $R/$name.metrics.jsonl 2>/dev/null
    ckpt=/tmp/ws/$name/checkpoints/latest.pth
    [ -f $ckpt ] || { echo "$name: no checkpoint"; tail -3 $R/$name.train.log; continue; }
    if [ $tree = new ]; then cp -r /tmp/ws/$name/eval $R/eval_$name; echo "$name: $(tail -1 $R/$name.train.log)"; continue; fi
    score $ckpt $subject $R/eval_$name $EVAL_RESERVE
    echo "$name: $(grep -a -m1 '^trained' $R/$name.train.log), $(grep -m1 "face hull" $R/eval_$name/metrics.md)"
done
for name in $REFINE_RUNS; do
    spec=$(tr ' ' '\n' <<< "$RUNS" | grep "^$name:"); IFS=: read name tree subject _ <<< "$spec"
    score /tmp/ws/$name/checkpoints/latest.pth $subject $R/refine_$name $REFINE_RESERVE --refine-poses $REFINE
    echo "$name, tracked / refined held-out cameras:" $(grep -h "face hull" $R/refine_$name/metrics.md \
        $R/refine_$name/refined_poses/metrics.md 2>/dev/null)
done
for pair in $CROSS_EVALS; do
    IFS=: read name subject <<< "$pair"
    score /tmp/ws/$name/checkpoints/latest.pth $subject $R/cross_${name}_$subject $EVAL_RESERVE
    echo "$name against $subject:" $(grep -E "^\| (full|face) " $R/cross_${name}_$subject/metrics.md | tr -s ' ')
done
for f in $R/eval_*/metrics.md; do echo "== $f"; cat $f; done 2>/dev/null | head -120
for sheet in $(cd $R && find . -name contact.png); do  # the sheets as JPEGs beside results.tgz; no PNG goes into it
    jpg=$(dirname ${sheet#./}); python3 -c "import cv2, sys; cv2.imwrite(sys.argv[2], cv2.imread(sys.argv[1]), \
        [cv2.IMWRITE_JPEG_QUALITY, 88])" $R/$sheet $OUT/contact_${jpg//\//_}.jpg
done
find $R -name "*.png" -delete

# Sourced by the device calls of sessions 8-10: Taichi from the carried wheels (.gpu/, made by
# ../shared/tools/gpu-wheels.sh) where the machine has none, every subject group
# carried in .carry/ unpacked into /tmp/subjects (katie's made by `python3 bench/carry.py pack --out .carry/katie
# new=<nerfbs preprocess of talk_speech_katie.mp4>`, giving /tmp/subjects/katie_new), and the
# results folder $R, packed into $OUT/results.tgz on exit (the device tool brings back at most 8 files).
# Sets T0, R, S and left() (seconds left of ${BUDGET:-585}).
set -u
T0=$(date +%s)
R=/tmp/results; rm -rf $R; mkdir -p $R
finish() { ( cd $R && tar -czf $OUT/results.tgz . ); echo "done $(( $(date +%s) - T0 )) s"; }
trap finish EXIT
left() { echo $(( ${BUDGET:-585} - $(date +%s) + T0 )); }
if [ -f .gpu/taichi-slim.tar.xz ] && ! python3 -c "import taichi" 2>/dev/null; then
    mkdir -p /tmp/site && tar -xJf .gpu/taichi-slim.tar.xz -C /tmp/site && python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
for group in .carry/*/ori_imgs; do  # every carried group (katie, and any other video packed beside it)
    python3 bench/carry.py unpack ${group%/ori_imgs} --to /tmp/subjects >> $R/unpack.log 2>&1 || { cat $R/unpack.log; exit 1; }
done
S=/tmp/subjects/katie_new
echo "setup $(( $(date +%s) - T0 )) s"

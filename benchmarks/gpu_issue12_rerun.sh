#!/usr/bin/env bash
# Second, shorter GPU run of issue 12 (the first lost its tables to a bug in table1's last
# step): one Table 1 run, bicubic / MR-GAN / second-order with LR models, random-degrade
# scored for realism; every stage record comes back in stages.tgz.
#   bash benchmarks/gpu_issue12_rerun.sh DATA OUT
set -uo pipefail
DATA=$(cd "${1:-.gpu}" && pwd); OUT=${2:-gpu-out}; RUN=/tmp/gpu-t1
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 RANFACE_DATA=$DATA
mkdir -p "$OUT"
timeout 225 python3 -m ranface table1 --faces "$DATA/faces_train" --lr-pool "$DATA/lr_pool" \
  --test-faces "$DATA/faces_test" --pairs "$DATA/test_pairs.txt" --out "$RUN" --set progress=false \
  --set eval_modes=[hr-lr] --set no_translator=false --set mr_degraders=[] --set probe_sizes=[16,12,8] \
  --set degraders=[bicubic,mrgan,second-order] --set gan_steps=1000 --set expert_steps=600 > "$OUT/log.txt" 2>&1
echo "exit $?" >> "$OUT/log.txt"
tar czf "$OUT/stages.tgz" -C "$RUN" stages eval table1 models/gan/samples 2>/dev/null
cp "$RUN/table1/table1.md" "$RUN/table1/degraders.png" "$OUT/" 2>/dev/null
true

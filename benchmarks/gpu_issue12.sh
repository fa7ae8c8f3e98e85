#!/usr/bin/env bash
# One prepared GPU session for issue 12 (MR-GAN realism) and issue 16 item 6 (GPU speed).
#
#   bash benchmarks/gpu_issue12.sh DATA OUT
#
# DATA holds the demo's prepared folders (faces_train, lr_pool, faces_test, test_pairs.txt from
# a `ranface demo` run) and models/faceapi-resnet29; OUT receives at most 8 files.
# 1. speed, alone on the machine: MR-GAN step with both experts, recognition train step;
# 2. Table 1 variants in parallel (each its own process and output folder):
#    A  every degrader, MR-GAN 2000 steps, distilled MobileFaceNet expert, g_every
#    B  MR-GAN only, d_ratio pixel schedule, 5000 steps (= 1000 G updates)
#    C  MR-GAN only, g_every, 1000 steps (1000 G updates: B's pair; also a point of the curve)
#    D  MR-GAN only, g_every, 200 steps (the CPU demo's budget)
#    E  MR-GAN only, the HR ResNet-29 as expert, 2000 steps (A's pair)
set -uo pipefail
DATA=$(cd "${1:-.gpu}" && pwd); OUT=${2:-gpu-out}; RUNS=/tmp/gpu-runs
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 RANFACE_DATA=$DATA
PY=${PY:-python3}
mkdir -p "$OUT" "$RUNS"
S=$OUT/summary.md
{ echo "# GPU session $(date -u +%FT%TZ)"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$S" 2>&1
{
  echo "## MR-GAN step, ResNet-29 expert (150 px)"; $PY benchmarks/gan.py --device cuda --expert resnet29 --steps 5 --repeats 3
  echo "## MR-GAN step, MobileFaceNet expert (112 px)"; $PY benchmarks/gan.py --device cuda --expert mobilefacenet --steps 5 --repeats 3
  echo "## recognition train step"; $PY benchmarks/train_step.py --device cuda --batch 128 --steps 5 --repeats 3
} >> "$S" 2>&1
common=(--faces "$DATA/faces_train" --lr-pool "$DATA/lr_pool" --test-faces "$DATA/faces_test"
        --pairs "$DATA/test_pairs.txt" --set progress=false --set eval_modes=[hr-lr] --set no_translator=false
        --set expert_steps=1500 --set mr_degraders=[] --set probe_sizes=[16,12,8])
run() {  # name, settings...
  local n=$1; shift
  OMP_NUM_THREADS=3 timeout 450 $PY -m ranface table1 "${common[@]}" --out "$RUNS/$n" "$@" > "$RUNS/$n.log" 2>&1
  echo "$n exit $?" >> "$RUNS/exits.txt"
}
t0=$(date +%s)
run A --set degraders=[bicubic,mrgan,second-order,random-degrade] --set gan_steps=2000 &
run B --set degraders=[mrgan] --set gan_steps=5000 --set gan_pixel_schedule=d_ratio &
run C --set degraders=[mrgan] --set gan_steps=1000 &
run D --set degraders=[mrgan] --set gan_steps=200 &
run E --set degraders=[mrgan] --set gan_steps=2000 --set gan_expert=hr &
wait
echo "table1 runs: $(( $(date +%s) - t0 )) s" >> "$S"
cat "$RUNS/exits.txt" >> "$S"
for n in A B C D E; do
  echo "## run $n"; cat "$RUNS/$n/table1/table1.md" 2>/dev/null | sed -n '/^|/p'
  grep -h '"elapsed_s"' "$RUNS/$n/stages/"{expert,gan}.json 2>/dev/null | head -2
done >> "$S"
for n in A B C D E; do echo "=== $n"; grep -v '^\s*$' "$RUNS/$n.log" | tail -25; done > "$OUT/logs.txt"
$PY - "$RUNS" "$OUT" <<'PY'
import glob, json, os, shutil, sys
runs, out = sys.argv[1], sys.argv[2]
allrows = {}
for n in "ABCDE":
    p = os.path.join(runs, n, "table1", "table1.json")
    if os.path.exists(p):
        allrows[n] = json.load(open(p))
    st = {}
    for f in glob.glob(os.path.join(runs, n, "stages", "*.json")):
        r = json.load(open(f)); st[os.path.basename(f)[:-5]] = {"s": r.get("elapsed_s"), "res": {k: v for k, v in r.get("result", {}).items() if k in ("final_cosine_to_teacher", "steps", "elapsed_s")}}
    allrows[n + "_stages"] = st
json.dump(allrows, open(os.path.join(out, "table1_all.json"), "w"), indent=1, default=str)
g = os.path.join(runs, "A", "table1", "degraders.png")
if os.path.exists(g): shutil.copy(g, os.path.join(out, "A_degraders.png"))
s = sorted(glob.glob(os.path.join(runs, "A", "models", "gan", "samples", "*.png")))
if s: shutil.copy(s[-1], os.path.join(out, "A_gan_samples.png"))
s = sorted(glob.glob(os.path.join(runs, "D", "models", "gan", "samples", "*.png")))
if s: shutil.copy(s[-1], os.path.join(out, "D_gan_samples.png"))
PY
echo done >> "$S"

#!/usr/bin/env bash
# Paper Table 3: SCface rank-1 identification per distance (d1 4.2 m, d2 2.6 m, d3 1.0 m)
# on the 80 test subjects, without and with fine-tuning on the other 50
# (src/ranface/eval/protocols/scface_split.txt; recipe configs/finetune_scface.yaml).
#
#   scripts/scface_table3.sh SCFACE_ROOT HR_MODEL OUT [evaluate options, e.g. --set align=mtcnn]
#
# Environment: RANFACE (the command, default `ranface`), TRAIN_ARGS (extra `ranface train`
# arguments, e.g. "--set model.backbone=resnet29_dlib"). Writes OUT/wo_ft, OUT/ft (the
# fine-tuned run), OUT/w_ft and OUT/table3/report.md (one row each: "w/o FT", "FT").
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 SCFACE_ROOT HR_MODEL OUT [evaluate --set options]" >&2
  exit 2
fi
root=$1; model=$2; out=$3; shift 3
rf=${RANFACE:-ranface}
cfg=$(cd "$(dirname "$0")/.." && pwd)/configs/finetune_scface.yaml
# shellcheck disable=SC2086
$rf evaluate -p scface --root "$root" --model "$model" --no-progress --set split=paper \
  --set write_finetune="$out/finetune_faces" -o "$out/wo_ft" "$@"
# shellcheck disable=SC2086
$rf train --stage hr -c "$cfg" --set model.init="$model" --set data.train="$out/finetune_faces" \
  --set run.out_dir="$out" --set run.name=ft ${TRAIN_ARGS:-}
# shellcheck disable=SC2086
$rf evaluate -p scface --root "$root" --model "$out/ft/model.pt" --no-progress --set split=paper \
  -o "$out/w_ft" "$@"
$rf report "$out/wo_ft/result.json" "$out/w_ft/result.json" --labels "w/o FT,FT" -o "$out/table3"

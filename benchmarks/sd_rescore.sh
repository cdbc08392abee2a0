#!/bin/sh
# Score the images of benchmarks/sd_debias_seeds.sh again with a larger held-out reference (the SD data configs keep
# 30 real digits per group, so precision / recall there move in steps of 1/60). Nothing is sampled: each audit's and
# debias folder's samples are evaluated by `fairdiff evaluate` with the test judge of a data config whose
# heldout_per_group is H (the judge that scores is trained without those H digits per group; the images were kept
# or steered by the validation judge as before), then recorded as rows of setting "NAME (H-digit reference): PROMPT":
#   OMP_NUM_THREADS=1 sh benchmarks/sd_rescore.sh [OUT] [MODEL] [N] [SEEDS] [H]
#   (defaults: runs/sd known-bias-4800 500 "0 1 2" 980; MNIST's test split has 974-1135 digits per class)
set -ex
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-runs/sd}; M=${2:-known-bias-4800}; N=${3:-500}; SEEDS=${4:-"0 1 2"}; H=${5:-980}
cd "$OUT"
F=$ROOT/.venv/bin/fairdiff
NAME=$(echo "$M" | sed 's/^known-bias-\([0-9]*\)$/known-bias \1 steps/')
P1="a handwritten digit"; P2="a number"
RS=rescore-h$H
mkdir -p $RS
for p in p01 p78; do sed "/^data:/a\\  heldout_per_group: $H" $p.yaml > $RS/$p.yaml; done
score() {  # FOLDER_SAMPLES OUT CONFIG TARGET [DEBIAS_JSON]
  [ -f "$2/metrics.json" ] || $F evaluate "$1" --config "$3" --judge auto --target "$4" --out "$2" -q
  [ -z "$5" ] || cp "$5" "$2/debias.json"
}
for s in $SEEDS; do
  R=$M-n$N-s$s
  for pp in p1:p01 p2:p78; do
    p=${pp%%:*}; c=${pp##*:}
    a=$(ls -d audits/$R-$p/prompts/*/ | head -1)
    mkdir -p $RS/audits/$R-$p/prompts/$(basename $a)
    score "${a}samples" "$RS/audits/$R-$p/prompts/$(basename $a)" $RS/$c.yaml 0.5,0.5
  done
  for d in $R-filter-p1-t0.5,0.5 $R-filter-p1-t0.3,0.7 $R-guide-p1-t0.5,0.5 $R-guidef-p1-t0.3,0.7 \
           $R-guidef-p1-t0.5,0.5; do
    score "$d/samples" "$RS/$d" $RS/p01.yaml "${d##*-t}" "$d/debias.json"
  done
  d=$R-filter-p2-t0.5,0.5; score "$d/samples" "$RS/$d" $RS/p78.yaml 0.5,0.5 "$d/debias.json"
  (cd "$ROOT" && .venv/bin/python benchmarks/record_sd_debias.py --seed $s --setting "$NAME ($H-digit reference): $P1" \
      base="$OUT/$RS/audits/$R-p1" filter="$OUT/$RS/$R-filter-p1-t0.5,0.5" filter="$OUT/$RS/$R-filter-p1-t0.3,0.7" \
      guide="$OUT/$RS/$R-guide-p1-t0.5,0.5" guide-filter="$OUT/$RS/$R-guidef-p1-t0.3,0.7" \
      guide-filter="$OUT/$RS/$R-guidef-p1-t0.5,0.5")
  (cd "$ROOT" && .venv/bin/python benchmarks/record_sd_debias.py --seed $s --setting "$NAME ($H-digit reference): $P2" \
      base="$OUT/$RS/audits/$R-p2" filter="$OUT/$RS/$R-filter-p2-t0.5,0.5")
done

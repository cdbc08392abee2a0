#!/bin/sh
# `fairdiff debias --sd` on a trained known-bias model (benchmarks/sd_known_bias.sh) at several seeds, judged by
# the validation / test pair (the validation domain CNN keeps and steers, the test CNN scores; results.md 0g):
#   OMP_NUM_THREADS=1 sh benchmarks/sd_debias_seeds.sh [OUT] [MODEL] [N] [SEEDS]
#   (defaults: runs/sd known-bias-4800 500 "0 1 2"; MODEL is a folder under OUT)
# Seed s draws images from 1000 + 100000 s. Every step is skipped when its output exists, so the script resumes;
# each seed's rows go to docs/results/debias_sd.csv as soon as the seed is done.
set -ex
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-runs/sd}; M=${2:-known-bias-4800}; N=${3:-500}; SEEDS=${4:-"0 1 2"}
cd "$OUT"
F=$ROOT/.venv/bin/fairdiff
PY=$ROOT/.venv/bin/python
D="data.source=mnist data.resolution=16 data.channels=3"
P1="a handwritten digit"; P2="a number"
NAME=$(echo "$M" | sed 's/^known-bias-\([0-9]*\)$/known-bias \1 steps/')  # the rows' setting, as in 0g
[ -f p01.yaml ] && [ -f p78.yaml ]
# guidance heads learn from the validation CNN only (the judge that scores never steers)
[ -f judge01-val.pt ] || $PY "$ROOT/benchmarks/sd_pair_judge.py" p01.yaml judge01-val.pt --validation
[ -d $M-heads-p1-val ] || $F heads fit --sd $M --prompt "$P1" --judge judge01-val.pt --out $M-heads-p1-val --n 256 \
    --steps 25 --cfg-scale 1 --batch-size 64 --seed 5000 -q
for s in $SEEDS; do
  S=$((1000 + 100000 * s)); R=$M-n$N-s$s; A="--cfg-scale 1 --seed $S --judge auto"
  [ -d audits/$R-p1 ] || $F audit $M --prompt "$P1" --n $N --out audits/$R-p1 $A $D 'data.groups=[0,1]' --steps 25 -q
  [ -d audits/$R-p2 ] || $F audit $M --prompt "$P2" --n $N --out audits/$R-p2 $A $D 'data.groups=[7,8]' --steps 25 -q
  for t in 0.5,0.5 0.3,0.7; do
    [ -d $R-filter-p1-t$t ] || $F debias --sd $M --prompt "$P1" --target $t --n $N --steps 25 $A --config p01.yaml \
        --out $R-filter-p1-t$t -q
  done
  [ -d $R-filter-p2-t0.5,0.5 ] || $F debias --sd $M --prompt "$P2" --target 0.5,0.5 --n $N --steps 25 $A \
      --config p78.yaml --out $R-filter-p2-t0.5,0.5 -q
  [ -d $R-guide-p1-t0.5,0.5 ] || $F debias --sd $M --method guide --heads $M-heads-p1-val --prompt "$P1" \
      --target 0.5,0.5 --n $N --batch-size 50 $A --config p01.yaml --out $R-guide-p1-t0.5,0.5 -q
  for t in 0.3,0.7 0.5,0.5; do
    [ -d $R-guidef-p1-t$t ] || $F debias --sd $M --method guide --then-filter --heads $M-heads-p1-val \
        --prompt "$P1" --target $t --n $N --batch-size 50 $A --config p01.yaml --out $R-guidef-p1-t$t -q
  done
  (cd "$ROOT" && $PY benchmarks/record_sd_debias.py --seed $s --setting "$NAME: $P1" base="$OUT/audits/$R-p1" \
      filter="$OUT/$R-filter-p1-t0.5,0.5" filter="$OUT/$R-filter-p1-t0.3,0.7" guide="$OUT/$R-guide-p1-t0.5,0.5" \
      guide-filter="$OUT/$R-guidef-p1-t0.3,0.7" guide-filter="$OUT/$R-guidef-p1-t0.5,0.5")
  (cd "$ROOT" && $PY benchmarks/record_sd_debias.py --seed $s --setting "$NAME: $P2" base="$OUT/audits/$R-p2" \
      filter="$OUT/$R-filter-p2-t0.5,0.5")
done

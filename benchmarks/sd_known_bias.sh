#!/bin/sh
# The known-bias text-to-image model of docs/text-to-image.md (digits 0/1 at 4:1 under "a handwritten digit",
# 7/8 at 1:1 under "a number"), its audits, and `fairdiff debias --sd` on it (results.md 0g):
#   OMP_NUM_THREADS=1 sh benchmarks/sd_known_bias.sh [OUT] [STEPS]      (default runs/sd, 1200 steps)
# Every step is skipped when its output exists, so the script resumes. Rows: benchmarks/record_sd_debias.py.
set -ex
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-runs/sd}; STEPS=${2:-1200}
mkdir -p "$OUT" && cd "$OUT"
F=$ROOT/.venv/bin/fairdiff
D="data.source=mnist data.resolution=16 data.channels=3"
printf 'a handwritten digit: [0, 1]\na number: [7, 8]\n' > prompt-groups.yaml
printf 'data:\n  source: mnist\n  resolution: 16\n  channels: 3\n  groups: [0, 1]\n' > p01.yaml
printf 'data:\n  source: mnist\n  resolution: 16\n  channels: 3\n  groups: [7, 8]\n' > p78.yaml
M=known-bias-$STEPS
[ -f vae.done ] || { $F train --vae --out vae $D 'data.groups=[0,1,7,8]' 'data.shares=[0.25,0.25,0.25,0.25]' data.size=8000 train.steps=350 train.batch_size=64 train.lr=1e-3 --device cpu -q && touch vae.done; }
[ -d sd-base ] || $F data tiny-sd sd-base --resolution 16 --vae vae
[ -f sd-run-$STEPS.done ] || { $F train --sd sd-base --out sd-run-$STEPS --prompt-groups prompt-groups.yaml $D 'data.groups=[0,1,7,8]' 'data.shares=[0.4,0.1,0.25,0.25]' data.size=10000 method.name=baseline train.steps=$STEPS train.batch_size=32 train.lr=1e-3 train.warmup_steps=20 train.ema_decay=0.995 model.lora_rank=64 model.lora_alpha=64 'model.lora_targets=[to_q,to_k,to_v,proj_in,proj_out,conv_in,conv1,conv2,conv_shortcut,conv,conv_out,time_emb_proj,linear_1,linear_2]' -q && touch sd-run-$STEPS.done; }
[ -d $M ] || $F export sd-run-$STEPS $M
A="--cfg-scale 1 --seed 1000 --judge auto"
[ -d audits/$M-p1 ] || $F audit $M --prompt "a handwritten digit" --n 200 --out audits/$M-p1 $A $D 'data.groups=[0,1]' --steps 25 -q
[ -d audits/$M-p2 ] || $F audit $M --prompt "a number" --n 200 --out audits/$M-p2 $A $D 'data.groups=[7,8]' --steps 25 -q
[ -d $M-filter-p1-t0.5 ] || $F debias --sd $M --prompt "a handwritten digit" --target 0.5,0.5 --n 200 --steps 25 $A --config p01.yaml --out $M-filter-p1-t0.5 -q
[ -d $M-filter-p1-t0.3 ] || $F debias --sd $M --prompt "a handwritten digit" --target 0.3,0.7 --n 200 --steps 25 $A --config p01.yaml --out $M-filter-p1-t0.3 -q
[ -d $M-filter-p2-t0.5 ] || $F debias --sd $M --prompt "a number" --target 0.5,0.5 --n 200 --steps 25 $A --config p78.yaml --out $M-filter-p2-t0.5 -q
# guidance: heads learn from a TorchScript export of the same domain CNN (0 vs 1)
[ -f judge01.pt ] || $ROOT/.venv/bin/python $ROOT/benchmarks/sd_pair_judge.py p01.yaml judge01.pt
[ -d $M-heads-p1 ] || $F heads fit --sd $M --prompt "a handwritten digit" --judge judge01.pt --out $M-heads-p1 --n 256 --steps 25 --cfg-scale 1 --batch-size 64 --seed 5000 -q
for t in 0.5,0.5 0.3,0.7; do
  [ -d $M-guide-p1-t$t ] || $F debias --sd $M --method guide --heads $M-heads-p1 --prompt "a handwritten digit" --target $t --n 200 --batch-size 50 --pilot-n 100 --max-pilots 6 $A --config p01.yaml --out $M-guide-p1-t$t -q
done
[ -d $M-guidef-p1-t0.3,0.7 ] || $F debias --sd $M --method guide --then-filter --heads $M-heads-p1 --prompt "a handwritten digit" --target 0.3,0.7 --n 200 --batch-size 50 --pilot-n 100 --max-pilots 6 $A --config p01.yaml --out $M-guidef-p1-t0.3,0.7 -q

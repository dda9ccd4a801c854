#!/usr/bin/env bash
# The long CPU measurements behind the CIFAR tables, one after another in one background command; every step
# is resumable (run it again to continue where it stopped) and writes its results as it goes.
#
#   nohup benchmarks/cpu_long.sh [OUT] > runs/cpu-long.log 2>&1 &
#
# Steps (STEPS="..." runs a subset, in this order; TAGS="..." limits the distill step to those tuning tags):
#   cifar10     dk reproduce cifar10 --scale full                           (~3 h on 2 cores)
#   distill     cifar10_tuning.py on the full run's split, members and cached bank: distillation settings
#               (hard weight 0, T 2, mixed views, a 40-epoch student beside a 40-epoch member; section 6
#               at T 1, 5, 10, hard weight 0, mixed views, a 128-view bank) (~3.5 h)
#   patience    section 6 on the quick scale's split: 100 against 1,000 epochs for both arms (~1 h; after quick)
#   patient4    section 4 on the quick scale's split, seed 0: hard-label members and distilled students (T 4, the
#               quick run's 3 members, 8-view bank) side by side at 24, 48 and 96 epochs, and a 96-epoch student on
#               96 mixed views; each student beside a member trained as long (~50 min; after quick)
#   ls0         one member without label smoothing (saved as a teacher), then section 6 from it (~35 min)
#   cifar100    dk reproduce cifar100 --scale full                          (~2.5-3 h)
#   variants    time_to_accuracy.py: base, fp32 (where the CPU has bf16), lookahead, alternating flips; 10 epochs,
#               3 seeds, in the doubling step's JSON (its 10-epoch base run is seed 0's) (~2 h)
#   doubling    time_to_accuracy.py: airnet and resnet-s-w8 at 5, 10, 20, 40 epochs (~2 h)
#   quick       dk reproduce cifar10/cifar100 --quick on the real data, timed (<= 20 min each is the target)
#   generality  dk reproduce cifar10 --quick on benchmarks/cifar_variants.py's data sets (never tuned on)
#   robustness  benchmarks/robustness.py --scale quick: dk reproduce mnist on MNIST and 5 other 28x28 sets (~1 h)
#   lm          dk reproduce lm --quick on the CPython standard library (~30 min)
#   peer        peer_torchdistill_cifar.py in benchmarks/.venv-peer (its docstring sets it up): the variants
#               step's 10-epoch airnet-32-128-128 nets into airnet-16-64-64, beside torchdistill (~1 h)
# Nothing else should run beside it: two processes of two threads each on two cores run several times slower.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs}"
PY="${PYTHON:-.venv/bin/python}"
DATA="${DK_DATA:-$PWD/.cache/data}"
STEPS="${STEPS:-cifar10 distill patience patient4 ls0 cifar100 variants doubling quick generality robustness lm peer}"
RESULTS=benchmarks/results
mkdir -p "$OUT"
if [ ! -d "$DATA/cifar-100-python" ]; then
    "$PY" ../shared/tools/datasets.py install "$DATA"
fi
timed() {  # NAME CMD...: run, then append the wall seconds to OUT/walls.txt
    local name=$1 start
    shift
    start=$(date +%s)
    "$@"
    echo "$name: $(( $(date +%s) - start )) s wall ($(date -u +%FT%TZ))" | tee -a "$OUT/walls.txt"
}
reproduce() {  # EXPERIMENT SCALE DATA OUTDIR
    "$PY" -m darkknowledge reproduce "$1" --scale "$2" --device cpu --data-dir "$3" --out "$4" --resume --no-progress
}
tune() {  # ROLE TAG [KEY=VALUE...]: one run on the validation split of scale $SCALE (full), skipped if logged
    local role=$1 tag=$2 extra=()
    shift 2
    [ "${1:-}" = --mixup ] && { extra=(--mixup "$2"); shift 2; }
    grep -q "\"tag\": \"$tag\"" "$RESULTS/cifar10-tuning.jsonl" 2>/dev/null && return 0
    [ -n "${TAGS:-}" ] && [[ " $TAGS " != *" $tag "* ]] && return 0
    local scale=${SCALE:-full}
    timed "tuning $tag" "$PY" benchmarks/cifar10_tuning.py --data-dir "$DATA" --scale "$scale" --role "$role" \
        --members "$OUT/cifar10-$scale/members" --cache "$OUT/cifar10-$scale/cache" --tag "$tag" \
        --views "${VIEWS:-0}" ${THREADS:+--threads "$THREADS"} ${extra[@]+"${extra[@]}"} --set "$@"
}
for step in $STEPS; do
    case $step in
        cifar10 | cifar100)
            timed "$step full" reproduce "$step" full "$DATA" "$OUT/$step-full" ;;
        distill)
            # base: the full run's distilled stage (T 1 chosen there, hard weight 0.5) with its cached bank
            tune distilled full-dist-base temperature=1
            # patience first: a 40-epoch student beside a 40-epoch member (the baseline at the same budget)
            tune member full-member-e40 epochs=40 warmup_epochs=8
            tune distilled full-dist-e40 temperature=1 epochs=40 warmup_epochs=8
            tune distilled full-dist-hard0 temperature=1 hard_weight=0 soft_weight=1
            tune distilled full-dist-T2 temperature=2
            tune distilled full-dist-mixup --mixup 0.5 temperature=1 hard_weight=0 soft_weight=1
            # section 6 on 3% (the full run used T 1, chosen for section 4; its teacher is member0)
            tune hard_small full-hard3-base epochs=100
            for t in 1 5 10; do tune soft_small "full-soft3-T$t" "temperature=$t"; done
            tune soft_small full-soft3-T5-h0 temperature=5 hard_weight=0 soft_weight=1
            tune soft_small full-soft3-T5-mix1 --mixup 1.0 temperature=5 hard_weight=0 soft_weight=1
            tune soft_small full-soft3-T1-mix1 --mixup 1.0 temperature=1 hard_weight=0 soft_weight=1
            VIEWS=128 tune soft_small full-soft3-T5-mix1-v128 --mixup 1.0 temperature=5 hard_weight=0 soft_weight=1
            ;;
        patience)
            # Section 6, patient (Beyer et al. 2022): both 6% arms of the quick scale's split trained 10x longer, the
            # soft run on a bank with as many mixed views as epochs, beside the reproduction's 100 epochs; the
            # teacher is the quick run's member 0 (the quick step first).
            SCALE=quick tune hard_small quick-hard6-e100 epochs=100
            SCALE=quick tune soft_small quick-soft6-e100 --mixup 1.0 temperature=5 hard_weight=0 soft_weight=1
            SCALE=quick tune hard_small quick-hard6-e1000 epochs=1000
            SCALE=quick VIEWS=1000 tune soft_small quick-soft6-e1000-v1000 --mixup 1.0 temperature=5 hard_weight=0 \
                soft_weight=1 epochs=1000 ;;
        patient4)
            # Is the students' small share of the ensemble's gain a matter of steps (benchmarks/fidelity.py: at 12
            # epochs they fit the ensemble on only 90.7% of their own transfer images)? Students and members trained
            # as long as each other, the warm-up the recipe's 4 epochs (20% of 20) as the scales cap it.
            for e in 48 96 24; do
                SCALE=quick tune member "q-member-e$e" "epochs=$e" warmup_epochs=4
                SCALE=quick tune distilled "q-dist-T4-e$e" temperature=4 "epochs=$e" warmup_epochs=4
                if [ "$e" = 96 ]; then
                    SCALE=quick VIEWS=96 tune distilled q-dist-T4-mix1-v96-e96 --mixup 1.0 temperature=4 hard_weight=0 \
                        soft_weight=1 epochs=96 warmup_epochs=4
                fi
            done ;;
        ls0)
            # Is label smoothing in the members' recipe what leaves little dark knowledge? One member without
            # it (saved as a teacher), then section 6 from it beside the runs above (Müller et al. 2019).
            grep -q '"tag": "full-member-ls0"' "$RESULTS/cifar10-tuning.jsonl" || timed "tuning full-member-ls0" "$PY" benchmarks/cifar10_tuning.py \
                --data-dir "$DATA" --scale full --role member --tag full-member-ls0 --save "$OUT/ls0/member0" \
                --set label_smoothing=0
            for args in "full-soft3-ls0-T1 temperature=1" "full-soft3-ls0-T5 temperature=5" \
                        "full-soft3-ls0-T5-mix1 --mixup 1.0 temperature=5 hard_weight=0 soft_weight=1"; do
                set -- $args
                tag=$1; shift
                grep -q "\"tag\": \"$tag\"" "$RESULTS/cifar10-tuning.jsonl" 2>/dev/null && continue
                extra=()
                [ "${1:-}" = --mixup ] && { extra=(--mixup "$2"); shift 2; }
                timed "tuning $tag" "$PY" benchmarks/cifar10_tuning.py --data-dir "$DATA" --scale full \
                    --role soft_small --members "$OUT/ls0" --cache "$OUT/ls0/cache" --tag "$tag" \
                    ${extra[@]+"${extra[@]}"} --set "$@"
            done ;;
        variants)
            # fp32 against the recipe's bf16 only where the CPU has bf16 (elsewhere the recipe runs in fp32)
            fp32=$("$PY" -c 'from darkknowledge.device import cpu_supports_bf16; print("precision=fp32" if cpu_supports_bf16() else "")')
            timed variants "$PY" benchmarks/time_to_accuracy.py --data-dir "$DATA" --archs airnet-32-128-128 \
                --epochs 10 --seeds 3 --variants base $fp32 lookahead=true alternate_flips=true --resume --save "$OUT/tta-nets" ;;
        doubling)
            timed doubling "$PY" benchmarks/time_to_accuracy.py --data-dir "$DATA" \
                --archs airnet-32-128-128 resnet-s-w8 --epochs ${DOUBLING_EPOCHS:-5 10 20 40} --resume --save "$OUT/tta-nets" ;;
        quick)
            for exp in cifar10 cifar100; do
                timed "$exp quick" reproduce "$exp" quick "$DATA" "$OUT/$exp-quick"
            done ;;
        generality)
            for variant in cifar100-10 inverted; do
                [ -d "$OUT/data-$variant/cifar-10-batches-py" ] ||
                    "$PY" benchmarks/cifar_variants.py --data-dir "$DATA" --variant "$variant" --out "$OUT/data-$variant"
                timed "cifar10 quick on $variant" reproduce cifar10 quick "$OUT/data-$variant" "$OUT/cifar10-quick-$variant"
            done ;;
        robustness)
            # Issue 18's standing check: dk reproduce mnist --quick on MNIST, its variants and the 28x28 CIFAR sets
            timed "robustness quick" "$PY" benchmarks/robustness.py --mnist "$DATA" --cifar "$DATA" --scale quick \
                --work "$OUT/robustness" --resume ;;
        lm)
            # Issue 19: token-level distillation at the quick scale on the CPython standard library's source
            stdlib=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
            timed "lm quick" reproduce lm quick "$stdlib" "$OUT/lm-quick" ;;
        peer)
            # The paper's setting at this machine's cost: the teacher is the variants step's three 10-epoch
            # airnet-32-128-128 nets (seeds 0-2; 3.3x the student's FLOPs each, ~10x together), the student the
            # quarter-width airnet-16-64-64 for 20 epochs; torchdistill in benchmarks/.venv-peer (its docstring
            # sets it up) beside darkknowledge: wall time to the same accuracy.
            # PEER_MEMBERS="DIR DIR ..." names other member checkpoints (e.g. the quick airnet-32 run's members);
            # PEER_EPOCHS and PEER_VIEWS the student's epochs and the bank's views (20 and 8)
            members=()
            for s in 0 1 2; do members+=(--member "$OUT/tta-nets/airnet-32-128-128-e10-s$s-base"); done
            if [ -n "${PEER_MEMBERS:-}" ]; then members=(); for m in $PEER_MEMBERS; do members+=(--member "$m"); done; fi
            timed peer benchmarks/.venv-peer/bin/python benchmarks/peer_torchdistill_cifar.py --data-dir "$DATA" \
                "${members[@]}" --arch airnet-16-64-64 --epochs "${PEER_EPOCHS:-20}" --views "${PEER_VIEWS:-8}" --device cpu ;;
        *)
            echo "unknown step $step; steps: cifar10 distill patience ls0 cifar100 variants doubling quick generality robustness lm peer" >&2
            exit 2 ;;
    esac
done
echo "done: $OUT/walls.txt; reproductions in $OUT/*/results.md; benchmarks in $RESULTS"

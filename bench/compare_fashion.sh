#!/usr/bin/env bash
# Every unlearning method side by side on Fashion-MNIST (small-cnn; SISA with S=8, R=4),
# from the same trained runs, through the CLI exactly as a user runs it.
#
#   bash bench/compare_fashion.sh [FORGET-ARGS...]     (default: --forget-subject subject-0100)
#
# Prints one JSON object on the last line of stdout and writes it to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
LETHE=${LETHE:-.venv/bin/lethe}
DEVICE=${DEVICE:-auto}
EPOCHS=${EPOCHS:-2}
store=$(mktemp -d /tmp/lethe-compare-XXXXXX)
trap 'rm -rf "$store"' EXIT
forget=("$@")
[ ${#forget[@]} -gt 0 ] || forget=(--forget-subject subject-0100)
common=(--dataset fashion-mnist --model small-cnn --epochs "$EPOCHS" --batch-size 128 --lr 0.05
        --seed 0 --subject-size 10 --store "$store" --device "$DEVICE" --json)
$LETHE train "${common[@]}" --run-id single --method amnesiac >&2
$LETHE train "${common[@]}" --run-id sisa --method sisa --shards 8 --slices 4 --sisa-by-subject >&2
out=bench/results/compare_fashion.json
mkdir -p bench/results
PY=${PY:-.venv/bin/python}
METHODS=${METHODS:-retrain,sisa,amnesiac,partial-amnesiac,label-flip,neg-grad,partial-label-flip,partial-neg-grad,neggrad-plus,scrub,salun,l1-sparse,partial-neggrad-plus,partial-scrub,partial-salun,partial-l1-sparse}
# the result with its provenance (commit, machine, load, the code lethe ran: bench/provenance.py)
$LETHE unlearn --store "$store" --run-id single --sisa-run-id sisa --device "$DEVICE" --json \
    --compare "$METHODS" --recovery-steps "${RECOVERY_STEPS:-0}" "${forget[@]}" \
    | $PY bench/provenance.py --stamp "$out" --command "EPOCHS=$EPOCHS DEVICE=$DEVICE bash bench/compare_fashion.sh $*" \
    | tail -n 1

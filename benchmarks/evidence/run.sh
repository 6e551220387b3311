#!/usr/bin/env bash
# The evidence benchmark, end to end and resumable: the main grid (S2L, baselines, random at
# several budgets), the full pool and the untrained target (on the other core), then random's
# calibration curve and the paired comparisons. Outputs and logs under runs/benchmarks/evidence/.
#   bash benchmarks/evidence/run.sh              # main grid + full pool + calibration
#   bash benchmarks/evidence/run.sh proxy-small  # then also the proxy comparison
#   bash benchmarks/evidence/run.sh proxy-pretrained  # then the pretrained (SmolLM2 cut) proxy
#   bash benchmarks/evidence/run.sh targeted     # then targeted selection (gsm_symbolic)
#   bash benchmarks/evidence/run.sh target-smollm2  # then the pretrained target (SmolLM2-135M)
# Logs are appended to, so that a resumed run keeps the first run's log.
# The published figures ran each experiment on one core of a 2-core machine (main grid on core
# 0, full pool on core 1), one torch thread each:
#   OMP_NUM_THREADS=1 bash benchmarks/evidence/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
S2L=${S2L:-.venv/bin/s2l}
PY=${PY:-.venv/bin/python}
OUT=runs/benchmarks/evidence
mkdir -p "$OUT"
stamp() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/timings.log"; }
# One core per experiment when there are two or more (taskset is in util-linux).
on_core() { if command -v taskset >/dev/null && [ "$(nproc --all)" -ge 2 ]; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }

stamp "start: $(nproc --all) CPUs, OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"
"$PY" benchmarks/evidence/make_eval.py --out "$OUT/eval.jsonl"
if [ ! -f "$OUT/target-small/s2l_init.json" ]; then
  stamp "untrained target"
  "$S2L" init-model small src/smalltolarge/bundled/demo_pool.jsonl -o "$OUT/target-small"
fi

stamp "full pool + untrained target (core 1), main grid (core 0)"
( on_core 1 "$S2L" experiment benchmarks/evidence/full.yaml >> "$OUT/full.log" 2>&1
  stamp "full pool done" ) &
full=$!
on_core 0 "$S2L" experiment benchmarks/evidence/main.yaml >> "$OUT/main.log" 2>&1
stamp "main grid done"
wait "$full"
"$PY" benchmarks/evidence/merge.py "$OUT/main" "$OUT/full"
# Every run is in results.csv now: this only writes calibration.md and re-makes the tables.
"$S2L" experiment benchmarks/evidence/main.yaml --calibrate >> "$OUT/calibrate.log" 2>&1
stamp "calibration and comparisons written: $OUT/main/{results,calibration}.md"

if [ "${1:-}" = proxy-small ]; then
  stamp "proxy comparison: the target's own architecture as the proxy"
  on_core 0 "$S2L" experiment benchmarks/evidence/proxy-small.yaml >> "$OUT/proxy-small.log" 2>&1
  stamp "proxy comparison done"
fi
if [ "${1:-}" = proxy-pretrained ]; then
  stamp "proxy comparison: SmolLM2-135M-Instruct cut to 4 layers as the proxy"
  [ -f "$OUT/smollm2-k4/config.json" ] || "$S2L" truncate-model smollm2-135m --layers 4 -o "$OUT/smollm2-k4"
  on_core 1 "$S2L" experiment benchmarks/evidence/proxy-pretrained.yaml >> "$OUT/proxy-pretrained.log" 2>&1
  stamp "pretrained proxy comparison done"
fi
if [ "${1:-}" = targeted ]; then
  stamp "targeted selection: gsm_symbolic's bundled eval items as the target set"
  "$PY" benchmarks/evidence/make_target.py --source gsm_symbolic --out "$OUT/target-gsm_symbolic.jsonl"
  on_core 0 "$S2L" experiment benchmarks/evidence/targeted.yaml >> "$OUT/targeted.log" 2>&1
  stamp "targeted selection done"
fi
if [ "${1:-}" = target-smollm2 ]; then
  # Two parts of one experiment, one per core, selecting from the main grid's proxy run;
  # merged into $T, whose `s2l experiment` then skips every run and writes the tables.
  stamp "pretrained target: SmolLM2-135M-Instruct fine-tuned on each subset (2 parts, 2 cores)"
  T=$OUT/target-smollm2
  part() { on_core "$1" "$PY" benchmarks/evidence/run_part.py benchmarks/evidence/target-smollm2.yaml \
             --proxy-run "$OUT/main/run" "${@:2}"; }
  ( part 1 --out-dir "$T-b" --runs random-balanced@0.05,s2l-per-source@0.05 >> "$T-b.log" 2>&1
    part 1 --out-dir "$T-b" --runs random@0.1 --seeds 1,2 >> "$T-b.log" 2>&1
    stamp "target-smollm2 part b done" ) &
  b=$!
  part 0 --out-dir "$T" --runs random@0.05,s2l@0.05 --base >> "$T.log" 2>&1
  part 0 --out-dir "$T" --runs random@0.1 --seeds 0 >> "$T.log" 2>&1
  stamp "target-smollm2 part a done"
  wait "$b"
  "$PY" benchmarks/evidence/merge.py "$T" "$T-b"
  "$S2L" experiment benchmarks/evidence/target-smollm2.yaml >> "$T.log" 2>&1
  stamp "pretrained target done: $T/results.md"
fi
stamp "done"

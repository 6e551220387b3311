#!/usr/bin/env bash
# Issue 24's head-to-head on the pretrained target tier, both pools, 8 seeds, end to end and
# resumable (finished runs are skipped; a killed run is redone). Two cores, one torch thread
# each; outputs and logs under runs/benchmarks/evidence/ (h2h-*/, h2h-*.log, h2h-timings.log);
# the analysis (paired differences to per-source random, detectable differences, proxy fit)
# in runs/benchmarks/evidence/h2h-analysis.md.
#   OMP_NUM_THREADS=1 bash benchmarks/evidence/h2h.sh
# Per core, in order (each k4 arm is split by seeds over the two cores; the part that starts
# first trains that pool's pretrained proxy and probes the target, the other part copies them):
#   core 0: h2h-a-tiny (pool A, tiny proxy), h2h-b-k4 seeds 0-3, h2h-a-k4 seeds 4-7
#   core 1: h2h-b-tiny (pool B, tiny proxy), h2h-a-k4 seeds 0-3, h2h-b-k4 seeds 4-7
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=runs/benchmarks/evidence
E=benchmarks/evidence
K4=s2l-per-source-k4@0.05,s2l-checked@0.05,s2l-cut@0.05,kmq@0.05
mkdir -p "$OUT"
stamp() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/h2h-timings.log"; }
on_core() { if command -v taskset >/dev/null && [ "$(nproc --all)" -ge 2 ]; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
s2l() { "$PY" -m smalltolarge.cli "$@"; }
part() { on_core "$1" "$PY" "$E/run_part.py" "${@:2}"; }
wait_for() { while [ ! -f "$1" ]; do sleep 60; done; }

stamp "h2h start: $(nproc --all) CPUs, OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"
"$PY" "$E/make_eval.py" --out "$OUT/eval.jsonl"
"$PY" "$E/make_pool_b.py" --out-dir "$OUT/pool-b"
[ -f "$OUT/smollm2-k4/config.json" ] || s2l truncate-model smollm2-135m --layers 4 -o "$OUT/smollm2-k4"

( stamp "core 0: h2h-a-tiny"
  on_core 0 "$PY" -m smalltolarge.cli experiment "$E/h2h-a-tiny.yaml" >> "$OUT/h2h-a-tiny.log" 2>&1
  stamp "core 0: h2h-b-k4 seeds 0-3 (trains pool B's k4 proxy, probes)"
  part 0 "$E/h2h-b-k4.yaml" --out-dir "$OUT/h2h-b-k4" --runs "$K4" --seeds 0,1,2,3 >> "$OUT/h2h-b-k4.log" 2>&1
  wait_for "$OUT/h2h-a-k4/run/probe/probe.json"
  stamp "core 0: h2h-a-k4 seeds 4-7"
  part 0 "$E/h2h-a-k4.yaml" --out-dir "$OUT/h2h-a-k4-b" --runs "$K4" --seeds 4,5,6,7 \
    --proxy-run "$OUT/h2h-a-k4/run" >> "$OUT/h2h-a-k4-b.log" 2>&1
  stamp "core 0: done" ) &
core0=$!
( stamp "core 1: h2h-b-tiny"
  on_core 1 "$PY" -m smalltolarge.cli experiment "$E/h2h-b-tiny.yaml" >> "$OUT/h2h-b-tiny.log" 2>&1
  stamp "core 1: h2h-a-k4 seeds 0-3 (trains pool A's k4 proxy, probes)"
  part 1 "$E/h2h-a-k4.yaml" --out-dir "$OUT/h2h-a-k4" --runs "$K4" --seeds 0,1,2,3 >> "$OUT/h2h-a-k4.log" 2>&1
  wait_for "$OUT/h2h-b-k4/run/probe/probe.json"
  stamp "core 1: h2h-b-k4 seeds 4-7"
  part 1 "$E/h2h-b-k4.yaml" --out-dir "$OUT/h2h-b-k4-b" --runs "$K4" --seeds 4,5,6,7 \
    --proxy-run "$OUT/h2h-b-k4/run" >> "$OUT/h2h-b-k4-b.log" 2>&1
  stamp "core 1: done" ) &
core1=$!
wait "$core0" "$core1"

for pool in a b; do
  "$PY" "$E/merge.py" "$OUT/h2h-$pool-k4" "$OUT/h2h-$pool-k4-b"
  s2l experiment "$E/h2h-$pool-k4.yaml" >> "$OUT/h2h-$pool-k4.log" 2>&1   # tables only
done
"$PY" "$E/analyse_h2h.py" > "$OUT/h2h-analysis.md"
stamp "h2h done: $OUT/h2h-analysis.md"

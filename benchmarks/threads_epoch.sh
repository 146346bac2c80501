#!/bin/bash
# LeNet-5 on the digits: median training seconds per epoch (epochs 2-6) with --threads 2 and
# --threads 1, on the machine as it is and with three extra busy loops.  Run from the
# checkout: bash benchmarks/threads_epoch.sh   (the README's "First run" section quotes it)
set -euo pipefail
out=$(mktemp -d)
run() {  # $1 label, $2 threads, $3 repetition (each run gets its own run folder)
  python -m nn train --epochs 6 --patience 100 --quiet --threads "$2" --out "$out/$1-t$2-$3" \
    > /dev/null
  python - "$out/$1-t$2-$3/metrics.json" "$1" "$2" <<'PY'
import json, os, statistics, sys
path, label, threads = sys.argv[1:]
secs = [r["train_seconds"] for r in json.load(open(path))["history"][1:]]
print(f"{label:10s} threads={threads} median epoch {statistics.median(secs):.3f} s "
      f"(min {min(secs):.3f}, max {max(secs):.3f}), load average {os.getloadavg()[0]:.2f}")
PY
}
for label in as-is busy+3; do
  pids=()
  if [ "$label" = busy+3 ]; then
    for _ in 1 2 3; do python -c 'while 1: pass' & pids+=($!); done
    sleep 5
  fi
  for rep in 1 2; do run "$label" 2 "$rep"; run "$label" 1 "$rep"; done
  if [ ${#pids[@]} -gt 0 ]; then kill "${pids[@]}"; fi
done
rm -rf "$out"

#!/usr/bin/env bash
# Decode speed of several builds of moekit in one GPU call, alternating, so that the figures
# compare (the decode step moves by ~3% from one call to the next: docs/decode.md).
#   bench/ab_generate.sh ROUNDS NAME=DIR [NAME=DIR ...]
# DIR holds a `moekit` package (python/moekit with its built _moekit_ops.so and _eager.*.so); each round runs
# bench/generate.py --shapes 20b --reps 1 once per build, in the order given, with PYTHONPATH set
# to that DIR. Extra generate.py arguments go in GEN_ARGS. JSON and logs go to $OUT (default
# ab_out); the last lines printed are the runs' tokens/s, one line a run.
set -euo pipefail
rounds=$1
shift
out=${OUT:-ab_out}
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
  for build in "$@"; do
    name=${build%%=*}
    dir=${build#*=}
    log="$out/generate_${name}_${round}"
    PYTHONPATH="$dir" python3 bench/generate.py --shapes 20b --reps 1 ${GEN_ARGS:-} --out "$log.json" > "$log.log" 2>&1 ||
      { tail -20 "$log.log"; exit 1; }
    echo "$round $name: $(grep -m1 'moekit graph' "$log.log")"
  done
done

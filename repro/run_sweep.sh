#!/bin/sh
# usage: run_sweep.sh SECS [extra options]: sweep_stress under the preload while sweep_poke asks for sweeps.
d=$(mktemp -d); chmod 700 "$d"
KFENCE_OPTIONS=sample_rate=1:state_dir=$d:num_objects=255$2 LD_PRELOAD=/work/wt/review/kfence_py/libkfence.so \
  ./sweep_stress "$1" > "$d/out" 2> "$d/err" &
pid=$!
python3 "$(dirname "$0")/sweep_poke.py" "$d" $pid $(($1 - 1))
wait $pid; echo "exit=$?"
cat "$d/out"; echo "reports: $(grep -c '^BUG' "$d/err")"; grep '^BUG\|^The\|^Invalid\|^Corrupt' "$d/err" | sort | uniq -c | head

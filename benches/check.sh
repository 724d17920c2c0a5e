#!/usr/bin/env bash
# Runs the selection and layer benches and prints each speed target as a ratio with ok/FAIL,
# so a regression is seen the day it lands. Exit status 1 when a target fails.
#
#   bash benches/check.sh            # both benches, and the layer's instructions per request
#                                    # under callgrind when valgrind is there (about 2 minutes)
#   bash benches/check.sh --no-run   # only read the last results in target/criterion
#
# Run it on a quiet machine: the targets are ratios within one run, but a busy machine moves
# the benches unequally.
set -euo pipefail
cd "$(dirname "$0")/.."

# Where the instruction counts go, for the report below.
export INSTRUCTIONS=target/criterion/layer-instructions.txt
if [ "${1:-}" != "--no-run" ]; then
    cargo bench --bench selection -- --warm-up-time 0.5 --measurement-time 2 \
        'select/(floor|round_robin|round_robin_half_unhealthy|tower_p2c)/(10|10000)$' >/dev/null 2>&1
    cargo bench --bench layer -- --warm-up-time 0.5 --measurement-time 2 \
        'layer/(bare|pool/1000|p2c_buffer/1000)$' >/dev/null 2>&1
    # Instructions per request, by callgrind: the difference between 11,000 and 1,000
    # requests, so the set-up is not counted. Unlike time, it does not move with the load.
    rm -f "$INSTRUCTIONS"
    if command -v valgrind >/dev/null; then
        bin=$(cargo bench --bench layer --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "layer":
        print(m["executable"])')
        refs() {
            valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" --requests "$1" \
                --service "$2" 2>&1 | sed -n 's/.*I *refs: *//p' | tr -d ,
        }
        for service in bare pool; do
            echo "$service $(( ($(refs 11000 $service) - $(refs 1000 $service)) / 10000 ))" >>"$INSTRUCTIONS"
        done
    fi
fi

python3 - <<'EOF'
import json
import os
import sys
from pathlib import Path

root = Path("target/criterion")

def measured(path):
    """A bench's time per iteration in ns, as criterion prints it: the slope of its linear
    fit (the mean, which one slow sample moves, where criterion made no fit)."""
    file = root / path / "new" / "estimates.json"
    if not file.exists():
        sys.exit(f"no result for {path}: run without --no-run first")
    estimates = json.loads(file.read_text())
    return (estimates.get("slope") or estimates["mean"])["point_estimate"]

failed = False

def target(name, value, limit, unit, detail):
    global failed
    ok = value < limit
    failed |= not ok
    shown = f"{value:8d}" if isinstance(value, int) else f"{value:8.2f}"
    print(f"{'ok  ' if ok else 'FAIL'}  {name:<52} {shown}{unit}  (target < {limit}{unit}; {detail})")

rr10, rr10k = measured("select/round_robin/10"), measured("select/round_robin/10000")
half, floor, p2c = (measured("select/round_robin_half_unhealthy/10000"),
                    measured("select/floor/10000"), measured("select/tower_p2c/10000"))
target("select: round_robin/10000 / round_robin/10", rr10k / rr10, 1.5, "x",
       f"{rr10k:.0f} / {rr10:.0f} ns")
target("select: half_unhealthy/10000 / floor/10000", half / floor, 10, "x",
       f"{half:.0f} / {floor:.0f} ns")
target("select: half_unhealthy/10000 / tower_p2c/10000", half / p2c, 0.5, "x",
       f"{half:.0f} / {p2c:.0f} ns")

bare, layer, balanced = (measured("layer/bare"), measured("layer/pool/1000"),
                         measured("layer/p2c_buffer/1000"))
target("layer: pool/1000 - bare (the layer's own cost)", (layer - bare) / 1000, 1, " µs",
       f"{layer:.0f} - {bare:.0f} ns")
target("layer: pool/1000 / p2c_buffer/1000", layer / balanced, 1, "x",
       f"{layer:.0f} / {balanced:.0f} ns")
counted = Path(os.environ["INSTRUCTIONS"])
if counted.exists():
    per_request = dict(line.split() for line in counted.read_text().splitlines())
    bare_ir, pool_ir = int(per_request["bare"]), int(per_request["pool"])
    target("layer: instructions per request, pool/1000 - bare", pool_ir - bare_ir, 7500, "",
           f"{pool_ir} - {bare_ir}; callgrind, a regression guard for this compiler")
else:
    print("skip  layer: instructions per request (valgrind not found)")
print("gateway: run `cargo run --release --example loadgen --features kiro,admin -- "
      "--compare --pinned --rounds 20`: it prints (c)/(p), overall and round by round "
      "(target (c) >= 0.9 x (p))")
sys.exit(1 if failed else 0)
EOF

#!/usr/bin/env bash
# Runs the selection and layer benches and prints each speed target as a ratio with ok/FAIL,
# so a regression is seen the day it lands. Exit status 1 when a target fails.
#
#   bash benches/check.sh            # both benches (about 3 minutes in release)
#   bash benches/check.sh --no-run   # only read the last results in target/criterion
#
# Run it on a quiet machine: the targets are ratios within one run, but a busy machine moves
# the benches unequally.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != "--no-run" ]; then
    cargo bench --bench selection -- --warm-up-time 0.5 --measurement-time 2 \
        'select/(floor|round_robin|round_robin_half_unhealthy|tower_p2c)/(10|10000)$' >/dev/null 2>&1
    cargo bench --bench layer -- --warm-up-time 0.5 --measurement-time 2 \
        'layer/(bare|pool/1000|p2c_buffer/1000)$' >/dev/null 2>&1
fi

python3 - <<'EOF'
import json
import sys
from pathlib import Path

root = Path("target/criterion")

def mean(path):
    """The mean estimate of a bench, in ns."""
    file = root / path / "new" / "estimates.json"
    if not file.exists():
        sys.exit(f"no result for {path}: run without --no-run first")
    return json.loads(file.read_text())["mean"]["point_estimate"]

failed = False

def target(name, value, limit, unit, detail):
    global failed
    ok = value < limit
    failed |= not ok
    print(f"{'ok  ' if ok else 'FAIL'}  {name:<52} {value:8.2f}{unit}  (target < {limit}{unit}; {detail})")

rr10, rr10k = mean("select/round_robin/10"), mean("select/round_robin/10000")
half, floor, p2c = (mean("select/round_robin_half_unhealthy/10000"),
                    mean("select/floor/10000"), mean("select/tower_p2c/10000"))
target("select: round_robin/10000 / round_robin/10", rr10k / rr10, 1.5, "x",
       f"{rr10k:.0f} / {rr10:.0f} ns")
target("select: half_unhealthy/10000 / floor/10000", half / floor, 10, "x",
       f"{half:.0f} / {floor:.0f} ns")
target("select: half_unhealthy/10000 / tower_p2c/10000", half / p2c, 0.5, "x",
       f"{half:.0f} / {p2c:.0f} ns")

bare, layer, balanced = (mean("layer/bare"), mean("layer/pool/1000"),
                         mean("layer/p2c_buffer/1000"))
target("layer: pool/1000 - bare (the layer's own cost)", (layer - bare) / 1000, 1, " µs",
       f"{layer:.0f} - {bare:.0f} ns")
target("layer: pool/1000 / p2c_buffer/1000", layer / balanced, 1, "x",
       f"{layer:.0f} / {balanced:.0f} ns")
print("gateway: run `cargo run --release --example loadgen --features kiro,admin -- "
      "--compare --pinned --rounds 20`: it prints (c)/(p), overall and round by round "
      "(target (c) >= 0.9 x (p))")
sys.exit(1 if failed else 0)
EOF

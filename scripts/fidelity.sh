#!/usr/bin/env bash
# Measure the quantizer's levers at equal bytes: the relative projection
# error sqrt(sum |Delta - Delta_hat|^2 / sum |Delta|^2), over all projections,
# of each grid and refit setting at each ratio, on real and synthetic pairs
# (docs/FIDELITY.md records the results).
#
# Usage: scripts/fidelity.sh [BIN]
#   BIN   the deltacome binary (default bin/deltacome; `make build` builds it)
# Environment:
#   MODELS  folder holding base.safetensors, math.safetensors and
#           docs.safetensors (default /work/shared/models/tiny-llama)
#   PAIRS   pairs to measure (default "docs math synth"); "synth" is a
#           tiny-shaped synthetic pair made by `deltacome synth`
#   RATIOS  ratios (default 16,32,64,128)
#   CONFIGS settings to compare, each "label:flags" with commas for spaces
#           (default: asym, sym with refit 0, 1, 2, 3)
#   TMP     scratch folder (default a new temporary folder, removed at exit)
#   LAYER   when set, a folder holding base/ and ft/ of one Llama-2-7B-shaped
#           layer (`deltacome synth --layers 1 DIR`, as scripts/bench.sh
#           makes): the pairs are skipped and each setting compresses the
#           layer at --ratio 16 RUNS times (default 3), the settings
#           interleaved run by run; the median wall time, the median CPU
#           time (user + sys, /usr/bin/time: steadier than the wall time on
#           a shared machine) and the error are printed.
#
# Every number is read back from the archive compress wrote (`deltacome
# compare --json`): stored bytes are the archive's, errors those compress
# measured on the decoded result. The output is one line per pair, setting
# and ratio: pair, setting, ratio asked, measured projection ratio, error.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-bin/deltacome}
MODELS=${MODELS:-/work/shared/models/tiny-llama}
PAIRS=${PAIRS:-docs math synth}
RATIOS=${RATIOS:-16,32,64,128}
CONFIGS=${CONFIGS:-"asym:--grid,asym sym:--grid,sym,--refit,0 sym+refit1:--grid,sym,--refit,1 sym+refit2:--grid,sym,--refit,2 sym+refit3:--grid,sym,--refit,3"}
if [ -z "${TMP:-}" ]; then
	TMP=$(mktemp -d)
	trap 'rm -rf "$TMP"' EXIT
fi

pair() { # pair NAME: prints "BASE FT"
	case $1 in
	synth)
		if [ ! -d "$TMP/synth/ft" ]; then
			"$BIN" synth --shape tiny --layers 4 --delta-scale 0.15 "$TMP/synth" >/dev/null
		fi
		echo "$TMP/synth/base $TMP/synth/ft"
		;;
	*) echo "$MODELS/base.safetensors $MODELS/$1.safetensors" ;;
	esac
}

if [ -n "${LAYER:-}" ]; then
	RUNS=${RUNS:-3}
	median() { sort -n | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
	for i in $(seq "$RUNS"); do
		for c in $CONFIGS; do
			label=${c%%:*}
			flags=${c#*:}
			rm -f "$TMP/layer.dcm"
			# shellcheck disable=SC2086 # flags are words
			/usr/bin/time -f '%e %U %S' -o "$TMP/time" \
				"$BIN" compress -q --ratio 16 ${flags//,/ } "$LAYER/base" "$LAYER/ft" "$TMP/layer.dcm"
			awk '{print $1}' "$TMP/time" >>"$TMP/$label.times"
			awk '{print $2 + $3}' "$TMP/time" >>"$TMP/$label.cpu"
			"$BIN" inspect --json "$TMP/layer.dcm" |
				python3 -c 'import json, sys; print("%.4f" % json.load(sys.stdin)["totals"]["rel_error"])' >"$TMP/$label.err"
		done
	done
	printf '%-12s %8s %8s %9s\n' setting wall_s cpu_s rel_error
	for c in $CONFIGS; do
		label=${c%%:*}
		printf '%-12s %8.1f %8.1f %9s\n' "$label" "$(median <"$TMP/$label.times")" "$(median <"$TMP/$label.cpu")" "$(cat "$TMP/$label.err")"
	done
	exit 0
fi

printf '%-6s %-12s %6s %10s %9s\n' pair setting ratio proj_ratio rel_error
for p in $PAIRS; do
	read -r base ft <<<"$(pair "$p")"
	for c in $CONFIGS; do
		label=${c%%:*}
		flags=${c#*:}
		# shellcheck disable=SC2086 # flags are words
		"$BIN" compare -q --json --methods deltacome --ratios "$RATIOS" ${flags//,/ } "$base" "$ft" |
			python3 -c '
import json, sys
for r in json.load(sys.stdin):
    print("%-6s %-12s %6g %10.2f %9.4f" % (sys.argv[1], sys.argv[2], r["ratio"], r["projection_ratio"], r["rel_error"]))
' "$p" "$label"
	done
done

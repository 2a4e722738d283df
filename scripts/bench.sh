#!/usr/bin/env bash
# Benchmark compress and reconstruct of one Llama-2-shaped layer against the
# machine's GEMM floor.
#
# Usage: scripts/bench.sh [BIN] [RUNS]
#   BIN   the deltacome binary (default bin/deltacome; `make bench` builds it)
#   RUNS  runs of each step; medians are reported (default 3)
# Environment: SHAPE (7B, 70B or both, "7B 70B"; default 7B), SVD
#   (auto|exact|randomized, default auto), RATIO (default 16), DATA (one
#   shape only; default bench-data/llama2-7b-1layer or
#   bench-data/llama2-70b-1layer, generated if absent).
#
# For each step it prints the wall time, the GFLOP/s achieved (the step's
# floor operation count divided by its wall time), the floor (operations
# divided by the float32 GEMM rate measured in the same run), the ratio to
# the floor and the peak RSS (/usr/bin/time -v). Operation counts come from
# the archive (`deltacome gemm-rate --archive`): compress is charged a
# randomized SVD with one power iteration at each matrix's kept rank k
# (8mnk + 4·min(m,n)·k²), reconstruct the product of the factors (2mnk).
# The row "compress@svd-rank" charges compress the same SVD at the rank the
# ratio makes it compute (the pairs the budget holds at 2 bits), the floor
# as the targets in docs/PERFORMANCE.md state it.
# For each shape it also prints the compress time per million parameters
# of the layer's projections and, with both shapes, the 70B layer's against
# the 7B one's (the issue's target: at most 1.3 x).
#
# Last for each shape, on the same layer, it times the CPU route a Python
# user would take instead (scripts/numpy-route.py: numpy.linalg.svd of each
# projection's delta, one run) and prints how many times faster deltacome's
# compress is. PYTHON (default python3) runs it; skipped with a note when it
# has no numpy, or with NUMPY=0.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-bin/deltacome}
RUNS=${2:-3}
SVD=${SVD:-auto}
RATIO=${RATIO:-16}
SHAPE=${SHAPE:-7B}
OUT_ROOT=${OUT:-bench-data/out}
PYTHON=${PYTHON:-python3}

if [ ! -x /usr/bin/time ]; then
	echo "bench: /usr/bin/time is needed for peak RSS (apt-get install time)" >&2
	exit 1
fi

# run LABEL CMD...: runs CMD under /usr/bin/time -v, appends "wall rss_kib" to $OUT/LABEL.times.
run() {
	local label=$1
	shift
	/usr/bin/time -v -o "$OUT/$label.time" "$@" >/dev/null 2>"$OUT/$label.log"
	awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,t,":"); s=0; for(i=1;i<=n;i++) s=s*60+t[i]; w=s}
		/Maximum resident set size/ {r=$2} END {print w, r}' "$OUT/$label.time" >>"$OUT/$label.times"
}

median() { sort -n | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

# bench_shape SHAPE: the runs and the table of one shape.
bench_shape() {
	local shape=$1 synth_flags data params
	# params: the projections' parameters, 2h² + 2·kv·h + 3·h·i.
	case $shape in
	7B) synth_flags="--layers 1" params=202375168 ;;
	70B) synth_flags="--layers 1 --hidden 8192 --intermediate 28672 --kv-hidden 1024" params=855638016 ;;
	*)
		echo "bench: SHAPE must be 7B, 70B or both (\"7B 70B\"), got $shape" >&2
		exit 2
		;;
	esac
	data=${DATA:-bench-data/llama2-$(echo "$shape" | tr 'B' 'b')-1layer}
	OUT=$OUT_ROOT/$shape
	if [ ! -f "$data/ft/model.safetensors" ]; then
		echo "bench: generating $data (one Llama-2-$shape layer, bf16)" >&2
		# shellcheck disable=SC2086 # the flags are words
		"$BIN" synth $synth_flags "$data"
	fi
	mkdir -p "$OUT"
	DATA=$data
	rm -f "$OUT"/*.times
	for i in $(seq "$RUNS"); do
		rm -rf "$OUT/layer.dcm" "$OUT/rebuilt"
		run compress "$BIN" compress -q --svd "$SVD" --ratio "$RATIO" "$DATA/base" "$DATA/ft" "$OUT/layer.dcm"
		run reconstruct "$BIN" reconstruct -q "$DATA/base" "$OUT/layer.dcm" "$OUT/rebuilt"
	done
	"$BIN" gemm-rate --archive "$OUT/layer.dcm" >"$OUT/floor.json"
	load=$(cut -d' ' -f1-3 /proc/loadavg)
	json() { sed -n "s/.*\"$1\": \([0-9.e+-]*\).*/\1/p" "$OUT/floor.json"; }
	rate=$(json gflops)
	"$BIN" version | sed -n 's/^linear algebra backend: /backend:   /p'
	echo "shape:     $shape ($synth_flags), $params parameters in the projections"
	echo "svd:       $SVD, ratio $RATIO, $RUNS runs (medians), load average before the floor probe: $load"
	echo "gemm rate: $rate GFLOP/s (float32, n=4096, best of 3)"
	printf '%-18s %9s %9s %10s %9s %8s %9s\n' step wall_s GFLOP/s floor_s x_floor rss_MiB TFLOP
	for row in compress compress@svd-rank reconstruct; do
		step=${row%@*}
		key=$step
		[ "$row" = compress@svd-rank ] && key=compress_svd_rank
		flops=$(json "${key}_flops")
		floor=$(json "${key}_floor_s")
		wall=$(cut -d' ' -f1 "$OUT/$step.times" | median)
		rss=$(cut -d' ' -f2 "$OUT/$step.times" | median)
		awk -v s="$row" -v w="$wall" -v f="$flops" -v fl="$floor" -v r="$rss" \
			'BEGIN {printf "%-18s %9.1f %9.1f %10.1f %9.2f %8.0f %9.3f\n", s, w, f/w/1e9, fl, w/fl, r/1024, f/1e12}'
	done
	"$BIN" inspect "$OUT/layer.dcm" | grep -E '^ +lowrank(-sym)? ' || true
	wall=$(cut -d' ' -f1 "$OUT/compress.times" | median)
	per_m=$(awk -v w="$wall" -v n="$params" 'BEGIN {printf "%.4f", w/(n/1e6)}')
	echo "compress:  $per_m s per million parameters"
	echo "$per_m" >"$OUT_ROOT/$shape.per-mparam"

	# The route a Python user would take, on the same layer and machine.
	if [ "${NUMPY:-1}" = 0 ]; then
		echo "numpy route: skipped (NUMPY=0)"
	elif ! "$PYTHON" -c 'import numpy' 2>/dev/null; then
		echo "numpy route: skipped ($PYTHON has no numpy)"
	else
		"$PYTHON" scripts/numpy-route.py "$DATA/base" "$DATA/ft" >"$OUT/numpy.log"
		numpy_s=$(sed -n 's/^numpy_svd_s //p' "$OUT/numpy.log")
		awk -v n="$numpy_s" -v w="$wall" -v v="$("$PYTHON" -c 'import numpy; print(numpy.__version__)')" \
			'BEGIN {printf "numpy route: %.1f s of numpy.linalg.svd (numpy %s, SVD alone, a lower bound); deltacome compress %.1f s: %.1fx faster\n", n, v, w, n/w}'
	fi
}

for shape in $SHAPE; do
	bench_shape "$shape"
	echo
done
if [ -f "$OUT_ROOT/7B.per-mparam" ] && [ -f "$OUT_ROOT/70B.per-mparam" ] && [ "$(echo "$SHAPE" | wc -w)" -gt 1 ]; then
	awk -v a="$(cat "$OUT_ROOT/70B.per-mparam")" -v b="$(cat "$OUT_ROOT/7B.per-mparam")" \
		'BEGIN {printf "70B layer against 7B layer, compress time per parameter: %.2f x (target: at most 1.3 x)\n", a/b}'
fi

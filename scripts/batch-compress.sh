#!/usr/bin/env bash
# batch-compress.sh: compress a list of fine-tunes against one base with
# deltacome, skipping archives that are up to date. See docs/BATCH.md.
#
# usage: batch-compress.sh [--keep-going] [--bin PATH] BASE MANIFEST OUTDIR [-- COMPRESS_FLAGS...]
#
# MANIFEST holds one model per line, fields separated by blanks:
#   NAME  FT_PATH  [COMPRESS_FLAG...]
# NAME ([A-Za-z0-9._-]+) names the archive OUTDIR/NAME.dcm; FT_PATH is a
# .safetensors file or model folder (relative paths from the current
# folder; no blanks in paths); flags after it apply to this model only,
# after the COMPRESS_FLAGS given to every model. Blank lines and lines
# starting with # are ignored.
#
# For each model one JSON line goes to stdout:
#   {"name":..,"status":"compressed"|"up-to-date"|"failed","archive":..,
#    "exit_code":N,"seconds":N,"result":{compress --json summary}|null,"error":".."}
# Progress and compress's messages go to stderr.
#
# Exit status: 0 when every model is compressed or up to date, 1 when one
# failed (after the first failure unless --keep-going), 2 on usage errors.
set -u -o pipefail

usage() {
	sed -n '4,5p' "$0" | sed 's/^# //' >&2
	exit 2
}

keep_going=0
bin=${DELTACOME:-deltacome}
while [ $# -gt 0 ]; do
	case $1 in
	--keep-going) keep_going=1; shift ;;
	--bin) [ $# -ge 2 ] || usage; bin=$2; shift 2 ;;
	--bin=*) bin=${1#--bin=}; shift ;;
	-h|--help) usage ;;
	--) break ;;
	-*) echo "batch-compress: unknown option $1" >&2; usage ;;
	*) break ;;
	esac
done
[ $# -ge 3 ] || usage
base=$1 manifest=$2 outdir=$3
shift 3
common=()
if [ $# -gt 0 ]; then
	[ "$1" = "--" ] || usage
	shift
	common=("$@")
fi
[ -r "$manifest" ] || { echo "batch-compress: cannot read manifest $manifest" >&2; exit 2; }
command -v "$bin" >/dev/null 2>&1 || { echo "batch-compress: deltacome binary not found: $bin (use --bin)" >&2; exit 2; }
mkdir -p "$outdir" || exit 1

# json_string prints $1 as a JSON string.
json_string() {
	local s=$1
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	s=${s//$'\t'/\\t}
	s=${s//$'\r'/\\r}
	s=${s//$'\n'/\\n}
	printf '"%s"' "$s"
}

# stamp NAME FT ARCHIVE FLAGS... prints what an up-to-date archive must have
# been made from: the tool version, the flags, and quick fingerprints (file
# names, sizes, modification times, headers; no tensor bytes read) of the
# base, the fine-tune and the archive itself.
stamp() {
	local ft=$1 archive=$2
	shift 2
	local version fps
	version=$("$bin" version | head -n 1) || return 1
	fps=$("$bin" fingerprint --quick "$base" "$ft" "$archive") || return 1
	printf 'deltacome-batch-stamp 1\n%s\nflags' "$version"
	printf ' %q' "$@"
	printf '\n%s\n' "$(printf '%s\n' "$fps" | cut -d ' ' -f 1)"
}

failed=0
lineno=0
while IFS= read -r line || [ -n "$line" ]; do
	lineno=$((lineno + 1))
	line=${line%$'\r'}
	case $line in '' | '#'*) continue ;; esac
	read -r -a fields <<<"$line"
	[ ${#fields[@]} -eq 0 ] && continue
	if [ ${#fields[@]} -lt 2 ]; then
		echo "batch-compress: $manifest:$lineno: want NAME FT_PATH [FLAGS...]" >&2
		exit 2
	fi
	name=${fields[0]} ft=${fields[1]}
	extra=("${fields[@]:2}")
	case $name in *[!A-Za-z0-9._-]* | .*) echo "batch-compress: $manifest:$lineno: bad name $name" >&2; exit 2 ;; esac
	archive=$outdir/$name.dcm
	stampfile=$archive.stamp
	flags=(${common[@]+"${common[@]}"} ${extra[@]+"${extra[@]}"})
	start=$SECONDS

	if [ -f "$archive" ] && [ -f "$stampfile" ] &&
		now=$(stamp "$ft" "$archive" ${flags[@]+"${flags[@]}"} 2>/dev/null) &&
		[ "$now" = "$(cat "$stampfile")" ]; then
		echo "batch-compress: $name: up to date" >&2
		printf '{"name":%s,"status":"up-to-date","archive":%s,"exit_code":0,"seconds":0,"result":null}\n' \
			"$(json_string "$name")" "$(json_string "$archive")"
		continue
	fi

	echo "batch-compress: $name: compressing $ft" >&2
	rm -f "$stampfile"
	errfile=$(mktemp) || exit 1
	result=$("$bin" compress --json --force ${flags[@]+"${flags[@]}"} "$base" "$ft" "$archive" 2>"$errfile" </dev/null)
	code=$?
	seconds=$((SECONDS - start))
	if [ $code -eq 0 ] && stamp "$ft" "$archive" ${flags[@]+"${flags[@]}"} >"$stampfile"; then
		rm -f "$errfile"
		printf '{"name":%s,"status":"compressed","archive":%s,"exit_code":0,"seconds":%d,"result":%s}\n' \
			"$(json_string "$name")" "$(json_string "$archive")" "$seconds" "$(printf '%s' "$result" | tr -d '\n')"
		continue
	fi
	rm -f "$stampfile"
	[ $code -eq 0 ] && code=1 # the archive was written but its stamp was not
	msg=$(tail -n 1 "$errfile")
	cat "$errfile" >&2
	rm -f "$errfile"
	failed=$((failed + 1))
	printf '{"name":%s,"status":"failed","archive":%s,"exit_code":%d,"seconds":%d,"result":null,"error":%s}\n' \
		"$(json_string "$name")" "$(json_string "$archive")" "$code" "$seconds" "$(json_string "$msg")"
	if [ $keep_going -eq 0 ]; then
		echo "batch-compress: $name failed; stopping (--keep-going goes on)" >&2
		exit 1
	fi
done <"$manifest"

if [ $failed -gt 0 ]; then
	echo "batch-compress: $failed model(s) failed" >&2
	exit 1
fi
exit 0

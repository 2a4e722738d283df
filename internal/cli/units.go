package cli

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"
)

// size formats a byte count for people: bytes below 1 KiB, then KiB, MiB,
// GiB with one decimal (two for GiB). Exact counts are in the --json
// output.
func size(n int64) string {
	const (
		kib = 1 << 10
		mib = 1 << 20
		gib = 1 << 30
	)
	switch {
	case n < kib && n > -kib:
		return fmt.Sprintf("%d B", n)
	case n < mib && n > -mib:
		return fmt.Sprintf("%.1f KiB", float64(n)/kib)
	case n < gib && n > -gib:
		return fmt.Sprintf("%.1f MiB", float64(n)/mib)
	}
	return fmt.Sprintf("%.2f GiB", float64(n)/gib)
}

// parseSize parses a byte count for a flag: a number with an optional
// unit, B, K/KB/KiB, M/MB/MiB, G/GB/GiB or T/TB/TiB, counted in powers of
// 1024 either way ("2GiB", "1.5G", "512MiB", "2147483648").
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	}
	shift := 0
	switch strings.TrimSuffix(strings.TrimSuffix(unit, "ib"), "b") {
	case "":
	case "k":
		shift = 10
	case "m":
		shift = 20
	case "g":
		shift = 30
	case "t":
		shift = 40
	default:
		return 0, fmt.Errorf("size %q: unknown unit %q (want B, KiB, MiB, GiB or TiB)", s, t[i:])
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || !(v > 0) || v*float64(int64(1)<<shift) >= 1<<62 {
		return 0, fmt.Errorf("size %q: want a positive number of bytes such as 2GiB", s)
	}
	return int64(v * float64(int64(1)<<shift)), nil
}

// naturalCompare orders strings with their runs of digits compared as
// numbers, so that model.layers.2 comes before model.layers.10.
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := digitRun(a), digitRun(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := cmp.Or(cmp.Compare(len(na), len(nb)), strings.Compare(na, nb)); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

// digitRun returns the length of the run of ASCII digits s starts with.
func digitRun(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

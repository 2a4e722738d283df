package cli

import (
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/engine"
)

// roleErrors recomputes, from an archive's manifest, the aggregate error of
// the lossy tensors whose names contain each projection name.
func roleErrors(t *testing.T, rep *engine.Report) map[string]float64 {
	t.Helper()
	errSq, normSq := map[string]float64{}, map[string]float64{}
	for _, tt := range rep.Manifest.Tensors {
		rel, norm, ok := tt.DeltaError()
		if !ok {
			continue
		}
		for _, k := range []string{"q", "k", "v", "o", "gate", "up", "down"} {
			if strings.Contains(tt.Name, "."+k+"_proj.") {
				errSq[k] += rel * norm * rel * norm
				normSq[k] += norm * norm
			}
		}
	}
	out := map[string]float64{}
	for k := range errSq {
		out[k] = math.Sqrt(errSq[k] / normSq[k])
	}
	return out
}

func TestCompareTable(t *testing.T) {
	keep := filepath.Join(t.TempDir(), "kept")
	stdout, stderr, code := execute(t, "compare", "--methods", "lowrank,bitdelta", "--ratios", "16,32", "--keep", keep, tinyBase, tinyFT)
	require.Equal(t, ExitOK, code, stderr)
	t.Log("\n" + stdout)

	lines := strings.Split(stdout, "\n")
	header := strings.Fields(lines[0])
	require.Equal(t, []string{"method", "ratio", "archive", "bytes", "file", "ratio", "proj.", "bytes", "proj.", "ratio", "error",
		"q", "k", "v", "o", "gate", "up", "down"}, header)
	want := []struct{ method, ratio, file string }{
		{"lowrank", "16", "lowrank-16.dcm"},
		{"lowrank", "32", "lowrank-32.dcm"},
		{"bitdelta", "fixed", "bitdelta.dcm"},
	}
	for i, w := range want {
		f := strings.Fields(lines[1+i])
		require.Len(t, f, 14, lines[1+i])
		assert.Equal(t, w.method, f[0])
		assert.Equal(t, w.ratio, f[1])

		rep, err := engine.Inspect(filepath.Join(keep, w.file))
		require.NoError(t, err, "archive kept under its name")
		assert.Equal(t, strconv.FormatInt(rep.Size, 10), f[2], "archive bytes")
		assert.Equal(t, fmt.Sprintf("%.4f", rep.Totals.RelError), f[6], "aggregate error")
		re := roleErrors(t, rep)
		for j, role := range []string{"q", "k", "v", "o", "gate", "up", "down"} {
			assert.Equal(t, fmt.Sprintf("%.4f", re[role]), f[7+j], "%s error of %s", role, w.file)
		}
	}
	assert.Contains(t, stdout, "bitdelta stores 1 bit per weight")
}

func TestCompareJSON(t *testing.T) {
	keep := t.TempDir()
	stdout, stderr, code := execute(t, "compare", "--json", "--methods", "bitdelta,lowrank", "--ratios", "32", "--keep", keep, tinyBase, tinyFT)
	require.Equal(t, ExitOK, code, stderr)
	assert.Empty(t, stderr, "--json prints no progress")
	var rows []compareJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &rows))
	require.Len(t, rows, 2)
	assert.Equal(t, "bitdelta", rows[0].Method)
	assert.Zero(t, rows[0].Ratio, "no asked ratio for bitdelta")
	assert.Equal(t, "lowrank", rows[1].Method)
	assert.Equal(t, 32.0, rows[1].Ratio)
	for _, r := range rows {
		rep, err := engine.Inspect(r.Archive)
		require.NoError(t, err)
		assert.Equal(t, rep.Size, r.ArchiveBytes)
		assert.Equal(t, rep.Totals.RelError, r.RelError)
		assert.Equal(t, 28, r.Projections)
		for role, e := range roleErrors(t, rep) {
			assert.InDelta(t, e, r.ByRole[role], 1e-12, role)
		}
		assert.InDelta(t, float64(r.ProjFP16Bytes)/float64(r.ProjStoredBytes), r.ProjRatio, 1e-12)
	}
	assert.GreaterOrEqual(t, rows[1].ProjRatio, 32.0, "lowrank keeps the budget")
}

func TestCompareUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--methods", "zip"},
		{"--ratios", "0.5"},
		{"--ratios", "abc"},
		{"--ratios", ""},
		{"--ratios", "16,"},
		{"--ratios", "16,16"},
		{"--methods", ""},
		{"--methods", "lowrank,lowrank"},
		{"--group-size", "-1"},
		{"--grid", "nf4"},
		{"--refit", "-1"},
		{"--schedule", "9:1"},
	} {
		_, _, code := execute(t, append(append([]string{"compare"}, args...), tinyBase, tinyFT)...)
		assert.Equal(t, ExitUsage, code, args)
	}
	_, _, code := execute(t, "compare", tinyBase)
	assert.Equal(t, ExitUsage, code, "one argument")
}

func TestCompressMethodFlag(t *testing.T) {
	dir := t.TempDir()
	arch := filepath.Join(dir, "b.dcm")
	stdout, stderr, code := execute(t, "compress", "--json", "--method", "bitdelta", tinyBase, tinyFT, arch)
	require.Equal(t, ExitOK, code, stderr)
	var sum compressJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &sum))
	assert.Equal(t, "bitdelta", sum.Method)
	assert.Equal(t, 28, sum.Lossy)

	stdout, _, code = execute(t, "inspect", arch)
	require.Equal(t, ExitOK, code)
	assert.Contains(t, stdout, "method bitdelta")
	assert.Contains(t, stdout, "bitdelta  ")

	_, _, code = execute(t, "compress", "--method", "zip", tinyBase, tinyFT, filepath.Join(dir, "c.dcm"))
	assert.Equal(t, ExitUsage, code)
	_, _, code = execute(t, "compress", "--lossless", "--method", "lowrank", tinyBase, tinyFT, filepath.Join(dir, "c.dcm"))
	assert.Equal(t, ExitUsage, code)
}

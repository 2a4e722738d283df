package cli

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/engine"
)

// identityStats writes statistics for every projection site of the layer-0
// projections of the checkpoint at path, each H the identity times the
// token count, and returns their path.
func identityStats(t *testing.T, path string, tokens int) string {
	t.Helper()
	c, err := checkpoint.Open(path)
	require.NoError(t, err)
	defer c.Close()
	sites := map[string][]float32{}
	for _, name := range c.Names() {
		tt, _ := c.Tensor(name)
		site := engine.CalibrationSite(name)
		if len(tt.Shape) != 2 || !strings.HasPrefix(name, "model.layers.0.") || site == "" {
			continue
		}
		n := int(tt.Shape[1])
		h := make([]float32, n*n)
		for i := range n {
			h[i*n+i] = float32(tokens)
		}
		sites[site] = engine.PackTriangle(h, n)
	}
	fp, err := engine.Fingerprint(context.Background(), path)
	require.NoError(t, err)
	out := filepath.Join(t.TempDir(), "stats.safetensors")
	require.NoError(t, engine.WriteCalibration(out, sites, map[string]string{engine.CalibTokensKey: "100000",
		engine.CalibTextKey: "domain.txt", engine.CalibTextSHA256Key: "ab12", engine.CalibFingerprintKey: fp}))
	return out
}

// TestCalibrationCommand compresses the bundled pair's first layer with
// statistics and checks the summary, inspect's text and JSON.
func TestCalibrationCommand(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "a.dcm")
	stats := identityStats(t, tinyFT, 100000)
	layer0 := []string{"--include", `^model\.layers\.[01]\..*_proj\.weight$`}
	stdout, stderr, code := execute(t, append([]string{"compress", "--json", "--calibration", stats, tinyBase, tinyFT, out}, layer0...)...)
	require.Equal(t, ExitOK, code, stderr)
	var res compressJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &res))
	require.Len(t, res.Warnings, 1, "layer 1 has no sites")
	assert.Equal(t, engine.WarnNoCalibrationSite, res.Warnings[0].Code)

	text, stderr, code := execute(t, "inspect", out)
	require.Equal(t, ExitOK, code, stderr)
	assert.Contains(t, text, "calibration: stats.safetensors, 100000 tokens of domain.txt (sha256 ab12), 4 sites")
	assert.Contains(t, text, "calibrated encode kept for")
	assert.Regexp(t, `model\.layers\.1\.mlp\.down_proj\.weight +no-statistics`, text)

	js, stderr, code := execute(t, "inspect", "--json", out)
	require.Equal(t, ExitOK, code, stderr)
	var rep inspectJSON
	require.NoError(t, json.Unmarshal([]byte(js), &rep))
	require.NotNil(t, rep.Settings.Calibration)
	assert.Equal(t, int64(100000), rep.Settings.Calibration.Tokens)
	seen := map[string]int{}
	for _, tj := range rep.Tensors {
		if tj.Calibration != "" {
			seen[tj.Calibration]++
		}
		if tj.Calibration == "calibrated" {
			require.NotNil(t, tj.HRelError)
			assert.LessOrEqual(t, *tj.HRelError, *tj.HRelErrorDataFree, tj.Name)
		}
	}
	assert.Equal(t, 7, seen[engine.CalibNoStatistics], "layer 1")
	assert.Equal(t, 7, seen["calibrated"]+seen["data-free"], "layer 0")
}

// TestCalibrationRefusals: flags calibration does not combine with are
// usage errors; statistics of another layout are bad input (exit 3).
func TestCalibrationRefusals(t *testing.T) {
	dir := t.TempDir()
	base, ft := writePair(t, dir, nil)
	out := filepath.Join(dir, "a.dcm")
	stats := identityStats(t, tinyFT, 100)
	refused(t, dir, []refusal{
		{"asym", []string{"compress", "--grid", "asym", "--calibration", stats, base, ft, out}, ExitUsage, "--grid asym has no refit and no calibrated encode"},
		{"max error", []string{"compress", "--max-error", "0.3", "--calibration", stats, base, ft, out}, ExitUsage, "--calibration cannot be combined with --max-error"},
		{"budget model", []string{"compress", "--budget", "model", "--calibration", stats, base, ft, out}, ExitUsage, "--calibration cannot be combined with --budget model"},
		{"lossless", []string{"compress", "--lossless", "--calibration", stats, base, ft, out}, ExitUsage, "--calibration"},
		{"other layout", []string{"compress", "--calibration", stats, base, ft, out}, ExitBadInput, "no weight of the fine-tune"},
	})
}

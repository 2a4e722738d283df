package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/engine"
)

func TestExportLoRAJSON(t *testing.T) {
	out := filepath.Join(t.TempDir(), "adapter")
	var stdout, stderr bytes.Buffer
	o := &exportLoRAOptions{rank: 8, dtype: "bf16", svd: "auto", json: true}
	require.NoError(t, runExportLoRA(context.Background(), o, tinyBase, tinyFT, out, &stdout, &stderr))
	assert.Empty(t, stderr.String(), "--json prints the document only")
	var rep loraJSON
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &rep))
	assert.Equal(t, "deltacome.lora/1", rep.Schema)
	assert.Len(t, rep.Modules, 28)
	assert.Equal(t, 8, rep.Config.R)
	st, err := os.Stat(filepath.Join(out, engine.AdapterWeightsFile))
	require.NoError(t, err)
	assert.Equal(t, st.Size(), rep.Totals.AdapterBytes)
	require.NotNil(t, rep.Totals.RelError)
	assert.Greater(t, *rep.Totals.RelError, 0.0)
	for _, m := range rep.Modules {
		require.NotNil(t, m.RelError, m.Module)
		assert.GreaterOrEqual(t, *m.RelError, *m.TruncError-1e-6, m.Module)
	}
	// The bundled fine-tune changed its embeddings, head and norms too.
	var names []string
	share := 0.0
	for _, x := range rep.Others {
		names = append(names, x.Name)
		share += x.Share
		assert.False(t, x.Saved)
	}
	assert.Contains(t, names, "lm_head.weight")
	assert.Contains(t, names, "model.embed_tokens.weight")
	require.NotNil(t, rep.Totals.ProjShare)
	assert.InDelta(t, 1, share+*rep.Totals.ProjShare, 1e-9, "the shares of the delta energy add up")
	var codes []string
	for _, w := range rep.Warnings {
		codes = append(codes, w.Code)
	}
	assert.Contains(t, codes, engine.WarnLeftOut)

	// The dry run predicts the same file from the headers, measuring nothing.
	stdout.Reset()
	o.dryRun = true
	require.NoError(t, runExportLoRA(context.Background(), o, tinyBase, tinyFT, "", &stdout, &stderr))
	var plan loraJSON
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &plan))
	assert.True(t, plan.DryRun)
	assert.Equal(t, rep.Totals.AdapterBytes, plan.Totals.AdapterBytes)
	assert.Nil(t, plan.Totals.RelError)
	assert.Nil(t, plan.Modules[0].RelError)
}

func TestExportLoRADryRunText(t *testing.T) {
	stdout, stderr, code := execute(t, "export-lora", "--dry-run", "--rank", "200", "--rank-mlp", "384", tinyBase, tinyFT)
	require.Equal(t, ExitOK, code, stderr)
	t.Log("\n" + stdout)
	assert.Contains(t, stdout, "model.layers.0.mlp.up_proj  1024x384   384")
	assert.Contains(t, stdout, "model.layers.0.self_attn.k_proj   128x384   128")
	assert.Contains(t, stdout, "model.layers.0.self_attn.q_proj   384x384   200")
	assert.Contains(t, stdout, "adapter (predicted): 28 modules, r 384")
	assert.Contains(t, stdout, "warning: 8 projections are smaller than the rank asked")
}

func TestExportLoRARefused(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "full")
	require.NoError(t, os.Mkdir(full, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(full, "keep"), []byte("mine"), 0o644))
	out := filepath.Join(dir, "adapter")
	refused(t, dir, []refusal{
		{"no rank", []string{"export-lora", tinyBase, tinyFT, out}, ExitUsage, "--rank must be >= 1, got 0"},
		{"rank 0", []string{"export-lora", "--rank", "0", tinyBase, tinyFT, out}, ExitUsage, "--rank must be >= 1"},
		{"negative rank", []string{"export-lora", "--rank", "-3", tinyBase, tinyFT, out}, ExitUsage, "--rank must be >= 1"},
		{"rank above every matrix", []string{"export-lora", "--rank", "2000", tinyBase, tinyFT, out}, ExitUsage, "the largest rank any of them takes is 384"},
		{"bad dtype", []string{"export-lora", "--rank", "8", "--dtype", "fp8", tinyBase, tinyFT, out}, ExitUsage, "--dtype \"fp8\""},
		{"outdir not empty", []string{"export-lora", "--rank", "8", tinyBase, tinyFT, full}, ExitUsage, "is not empty"},
		{"missing outdir", []string{"export-lora", "--rank", "8", tinyBase, tinyFT}, ExitUsage, "missing OUTDIR"},
	})
	assert.NoDirExists(t, out)
}

func TestExportLoRAFromArchiveJSON(t *testing.T) {
	dir := t.TempDir()
	arch := filepath.Join(dir, "lowrank.dcm")
	_, stderr, code := execute(t, "compress", "-q", "--method", "lowrank", tinyBase, tinyFT, arch)
	require.Equal(t, ExitOK, code, stderr)
	stdout, stderr, code := execute(t, "export-lora", "--json", "--rank", "8", tinyBase, arch, filepath.Join(dir, "adapter"))
	require.Equal(t, ExitOK, code, stderr)
	var rep loraJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &rep))
	assert.True(t, rep.FromArchive)
	require.NotNil(t, rep.Totals.ArchiveRelError)
	assert.Greater(t, *rep.Totals.ArchiveRelError, 0.0)
	require.NotEmpty(t, rep.Modules)
	assert.NotNil(t, rep.Modules[0].ArchiveRelError)

	lossless := filepath.Join(dir, "lossless.dcm")
	_, stderr, code = execute(t, "compress", "-q", "--lossless", tinyBase, tinyFT, lossless)
	require.Equal(t, ExitOK, code, stderr)
	err, code := executeErr(t, "export-lora", "--rank", "8", tinyBase, lossless, filepath.Join(dir, "other"))
	assert.Equal(t, ExitUsage, code)
	assert.ErrorContains(t, err, "stores no projection as a low-rank delta")
	assert.NoDirExists(t, filepath.Join(dir, "other"))
}

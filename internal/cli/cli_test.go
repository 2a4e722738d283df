package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/engine"
	"github.com/deltacome/deltacome/pkg/archive"
)

var (
	tinyBase = filepath.Join("..", "..", "testdata", "tiny-llama", "base")
	tinyFT   = filepath.Join("..", "..", "testdata", "tiny-llama", "math")
)

// execute runs the command line args through the root command, as main does.
func execute(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := NewRootCmd(&out, &errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), errOut.String(), ExitCode(err)
}

func TestCompressInspectReconstruct(t *testing.T) {
	dir := t.TempDir()
	arch := filepath.Join(dir, "math.dcm")
	stdout, stderr, code := execute(t, "compress", "--json", tinyBase, tinyFT, arch)
	require.Equal(t, ExitOK, code, stderr)
	var sum compressJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &sum))
	assert.Equal(t, 28, sum.Lossy)
	fi, err := os.Stat(arch)
	require.NoError(t, err)
	assert.Equal(t, fi.Size(), sum.ArchiveSize, "the summary reports the bytes on disk")

	stdout, _, code = execute(t, "inspect", arch)
	require.Equal(t, ExitOK, code)
	assert.Contains(t, stdout, "model.layers.0.self_attn.q_proj.weight")
	assert.Contains(t, stdout, "lowrank")
	assert.Contains(t, stdout, "schedule auto")

	stdout, _, code = execute(t, "inspect", "--json", arch)
	require.Equal(t, ExitOK, code)
	var rep inspectJSON
	require.NoError(t, json.Unmarshal([]byte(stdout), &rep))
	assert.Equal(t, fi.Size(), rep.ArchiveBytes)
	assert.Equal(t, 28, rep.ByKind[archive.KindLowRankSym].Tensors)

	out := filepath.Join(dir, "out")
	_, stderr, code = execute(t, "apply", "-q", tinyBase, arch, out)
	require.Equal(t, ExitOK, code, stderr)
	assert.Empty(t, stderr, "--quiet prints nothing")
	assert.FileExists(t, filepath.Join(out, "model.safetensors"))
	assert.FileExists(t, filepath.Join(out, "config.json"))
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	arch := filepath.Join(dir, "a.dcm")
	_, stderr, code := execute(t, "compress", "--lossless", tinyBase, tinyFT, arch)
	require.Equal(t, ExitOK, code, stderr)
	garbage := filepath.Join(dir, "garbage.dcm")
	require.NoError(t, os.WriteFile(garbage, []byte("not an archive at all"), 0o644))

	cases := []struct {
		name string
		args []string
		want int
	}{
		{"missing args", []string{"compress", tinyBase}, ExitUsage},
		{"unknown flag", []string{"inspect", "--nope", arch}, ExitUsage},
		{"bad ratio", []string{"compress", "--ratio", "0.5", tinyBase, tinyFT, filepath.Join(dir, "x.dcm")}, ExitUsage},
		{"bad schedule", []string{"compress", "--schedule", "3:2,8:4", tinyBase, tinyFT, filepath.Join(dir, "x.dcm")}, ExitUsage},
		{"bad include", []string{"compress", "--include", "(", tinyBase, tinyFT, filepath.Join(dir, "x.dcm")}, ExitUsage},
		{"missing input", []string{"compress", filepath.Join(dir, "nope"), tinyFT, filepath.Join(dir, "x.dcm")}, ExitBadInput},
		{"not an archive", []string{"inspect", garbage}, ExitBadInput},
		{"wrong base", []string{"reconstruct", tinyFT, arch, filepath.Join(dir, "out")}, ExitBadInput},
		{"output not empty", []string{"reconstruct", tinyBase, arch, tinyFT}, ExitUsage},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, code := execute(t, tc.args...)
			assert.Equal(t, tc.want, code)
		})
	}
	assert.NoFileExists(t, filepath.Join(dir, "x.dcm"))
	assert.NoDirExists(t, filepath.Join(dir, "out"))
}

func TestExitCodeMapping(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, ExitOK},
		{context.Canceled, ExitInterrupted},
		{fmt.Errorf("x: %w", engine.ErrWrongBase), ExitBadInput},
		{fmt.Errorf("x: %w", archive.ErrChecksum), ExitBadInput},
		{fmt.Errorf("x: %w", archive.ErrVersion), ExitBadInput},
		{errors.New("disk full"), ExitFailure},
	} {
		assert.Equal(t, tc.want, ExitCode(tc.err), "%v", tc.err)
	}
}

func TestTensorLine(t *testing.T) {
	got := tensorLine(engine.Event{Index: 11, Total: 291, Name: "model.layers.1.mlp.up_proj.weight", Shape: []uint64{11008, 4096},
		DType: "BF16", Kind: archive.KindLowRank, Rank: 1462, Bands: "8:2 3:32 2:1428", OrigBytes: 11008 * 4096 * 2,
		StoredBytes: 5662310, RelError: 0.041})
	assert.Equal(t, "[ 12/291] model.layers.1.mlp.up_proj.weight [11008x4096] BF16 -> rank 1462 (8:2 3:32 2:1428) 86.0 MiB -> 5.4 MiB err 0.0410", got)

	got = tensorLine(engine.Event{Index: 0, Total: 1, Name: "w", Shape: []uint64{8, 8}, DType: "BF16", Kind: archive.KindLowRank,
		Rank: 1, Bands: "8:1", OrigBytes: 128, StoredBytes: 20, RelError: 0.5, SVDFallback: "float32 eigensolver failed"})
	assert.Equal(t, "[1/1] w [8x8] BF16 -> rank 1 (8:1) 128 B -> 20 B err 0.5000 (svd fell back: float32 eigensolver failed)", got)
}

// TestBinarySmoke builds the real binary and runs it end to end.
func TestBinarySmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "deltacome")
	build := exec.Command("go", "build", "-o", bin, "../../cmd/deltacome")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	require.NoError(t, err)
	assert.Contains(t, string(out), "linear algebra backend")

	arch := filepath.Join(dir, "a.dcm")
	require.NoError(t, exec.Command(bin, "compress", "-q", tinyBase, tinyFT, arch).Run())
	cmd := exec.Command(bin, "reconstruct", tinyFT, arch, filepath.Join(dir, "out"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, ExitBadInput, ee.ExitCode())
	assert.True(t, strings.HasPrefix(stderr.String(), "deltacome: error: "), stderr.String())
	assert.Contains(t, stderr.String(), "is the fine-tune stored in this archive, not its base")
	assert.NotContains(t, stderr.String(), "--force", "forcing the fine-tune onto itself only garbles it")
}

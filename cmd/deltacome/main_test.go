package main

import (
	"bufio"
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/internal/cli"
	"github.com/deltacome/deltacome/internal/dtype"
	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// binary builds the deltacome binary into a temporary folder, with the
// linear algebra backend of the test binary itself.
func binary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary and runs it on a large synthetic pair")
	}
	bin := filepath.Join(t.TempDir(), "deltacome")
	args := []string{"build", "-o", bin}
	if linalg.Kernel() != "gonum" {
		args = append(args, "-tags", "openblas")
	}
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// bigPair writes a base and a fine-tune (single bf16 files) of n
// rows x cols projections whose deltas are full-rank noise, so that every
// projection costs a real SVD: compress runs long enough to be interrupted
// between tensors.
func bigPair(t *testing.T, n, rows, cols int) (base, ft string) {
	t.Helper()
	rng := rand.New(rand.NewPCG(11, 12))
	dir := t.TempDir()
	var infos []stfile.Info
	var bdata, fdata []byte
	w := make([]float32, rows*cols)
	for i := range n {
		for j := range w {
			w[j] = float32(rng.NormFloat64() * 0.02)
		}
		b := make([]byte, 2*len(w))
		require.NoError(t, dtype.Encode(b, w, safetensors.BF16))
		for j := range w {
			w[j] += float32(rng.NormFloat64() * 0.002)
		}
		f := make([]byte, 2*len(w))
		require.NoError(t, dtype.Encode(f, w, safetensors.BF16))
		infos = append(infos, stfile.Info{Name: "model.layers." + strconv.Itoa(i) + ".self_attn.q_proj.weight",
			DType: safetensors.BF16, Shape: []uint64{uint64(rows), uint64(cols)}})
		bdata, fdata = append(bdata, b...), append(fdata, f...)
	}
	h, err := stfile.EncodeHeader(infos, nil)
	require.NoError(t, err)
	write := func(name string, data []byte) string {
		var buf bytes.Buffer
		require.NoError(t, stfile.WriteHeader(&buf, h))
		buf.Write(data)
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, buf.Bytes(), 0o644))
		return p
	}
	return write("base.safetensors", bdata), write("ft.safetensors", fdata)
}

// startUntilFirstTensor starts cmd and returns once it has reported its
// first finished tensor on stderr (one line per tensor when stderr is not a
// terminal), so that a signal sent then lands midway. The rest of stderr is
// drained, so the process never blocks on a full pipe.
func startUntilFirstTensor(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	sc, stderr := startReadingStderr(t, cmd)
	go func() {
		for sc.Scan() {
		}
		stderr.Close()
	}()
}

// startReadingStderr starts cmd with stderr on a pipe and returns once the
// first tensor line has been read, with the pipe's read end.
func startReadingStderr(t *testing.T, cmd *exec.Cmd) (*bufio.Scanner, *os.File) {
	t.Helper()
	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	cmd.Stderr = pw
	require.NoError(t, cmd.Start())
	pw.Close()
	sc := bufio.NewScanner(pr)
	require.True(t, sc.Scan(), "no progress line before exit: %v", sc.Err())
	require.Regexp(t, `^\[ *1/\d+\] `, sc.Text())
	return sc, pr
}

// exitCode waits for cmd and returns its exit status, or -signal when a
// signal ended it.
func exitCode(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	err := cmd.Wait()
	var ee *exec.ExitError
	if err == nil {
		return 0
	}
	require.ErrorAs(t, err, &ee)
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -int(ws.Signal())
	}
	return ee.ExitCode()
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// leftover matches the temporary files compress may leave after SIGKILL,
// as the README documents: hidden, named after OUT.
var leftover = regexp.MustCompile(`^\.out\.dcm\.(spool|tmp)-[0-9]+$`)

func TestSignals(t *testing.T) {
	bin := binary(t)
	base, ft := bigPair(t, 8, 256, 256)
	older := []byte("older archive")

	t.Run("SIGKILL compress", func(t *testing.T) {
		dir := t.TempDir()
		out := filepath.Join(dir, "out.dcm")
		require.NoError(t, os.WriteFile(out, older, 0o644))
		cmd := exec.Command(bin, "compress", "--force", "--workers", "1", base, ft, out)
		startUntilFirstTensor(t, cmd)
		require.NoError(t, cmd.Process.Kill())
		assert.Equal(t, -int(syscall.SIGKILL), exitCode(t, cmd))
		got, err := os.ReadFile(out)
		require.NoError(t, err)
		assert.Equal(t, older, got, "an older OUT is untouched")
		t.Logf("left after SIGKILL: %v", names(t, dir))
		for _, n := range names(t, dir) {
			if n != "out.dcm" {
				assert.Regexp(t, leftover, n, "only documented temporary files remain")
			}
		}
	})
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		t.Run(sig.String()+" compress", func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "out.dcm")
			require.NoError(t, os.WriteFile(out, older, 0o644))
			cmd := exec.Command(bin, "compress", "--force", "--workers", "1", base, ft, out)
			startUntilFirstTensor(t, cmd)
			require.NoError(t, cmd.Process.Signal(sig))
			assert.Equal(t, cli.ExitInterrupted, exitCode(t, cmd))
			assert.Equal(t, []string{"out.dcm"}, names(t, dir), "temporary files removed")
			got, err := os.ReadFile(out)
			require.NoError(t, err)
			assert.Equal(t, older, got)
		})
	}

	// `deltacome compress ... 2>&1 | head -1`: the pipe closes after the
	// first line; the next write raises SIGPIPE, which must end the run as
	// an interruption does, leaving nothing behind.
	t.Run("broken pipe compress", func(t *testing.T) {
		dir := t.TempDir()
		out := filepath.Join(dir, "out.dcm")
		cmd := exec.Command(bin, "compress", "--workers", "1", base, ft, out)
		_, stderr := startReadingStderr(t, cmd)
		stderr.Close()
		assert.Equal(t, cli.ExitInterrupted, exitCode(t, cmd))
		assert.Empty(t, names(t, dir), "no archive, no temporary files")
	})

	// Reconstruct: a lossless archive of many tensors, interrupted after the
	// first.
	lbase, lft := bigPair(t, 48, 256, 1024)
	dir := t.TempDir()
	arch := filepath.Join(dir, "l.dcm")
	require.NoError(t, exec.Command(bin, "compress", "-q", "--lossless", lbase, lft, arch).Run())
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String()+" reconstruct", func(t *testing.T) {
			work := t.TempDir()
			cmd := exec.Command(bin, "reconstruct", "--workers", "1", lbase, arch, filepath.Join(work, "out"))
			startUntilFirstTensor(t, cmd)
			require.NoError(t, cmd.Process.Signal(sig))
			assert.Equal(t, cli.ExitInterrupted, exitCode(t, cmd))
			assert.Empty(t, names(t, work), "no output folder, no temporary folder")
		})
	}
}

// TestFileSizeLimit runs compress and reconstruct under a file size limit
// (ulimit -f), a full disk that needs no privileges: writes fail with
// "file too large", the exit code is 1, and nothing is left.
func TestFileSizeLimit(t *testing.T) {
	bin := binary(t)
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	base, ft := bigPair(t, 2, 256, 512)
	dir := t.TempDir()
	arch := filepath.Join(dir, "a.dcm")
	require.NoError(t, exec.Command(bin, "compress", "-q", "--lossless", base, ft, arch).Run())

	limited := func(args ...string) (int, string) {
		// ulimit -f counts 512-byte blocks (POSIX); 64 blocks = 32 KiB.
		cmd := exec.Command("sh", append([]string{"-c", `ulimit -f 64 && exec "$@"`, "sh", bin}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), stderr.String()
		}
		require.NoError(t, err)
		return 0, stderr.String()
	}
	work := t.TempDir()
	out := filepath.Join(work, "b.dcm")
	require.NoError(t, os.WriteFile(out, []byte("older archive"), 0o644))
	code, msg := limited("compress", "-q", "--force", "--lossless", base, ft, out)
	assert.Equal(t, cli.ExitFailure, code, msg)
	assert.Contains(t, msg, "file too large")
	assert.Equal(t, []string{"b.dcm"}, names(t, work))

	code, msg = limited("reconstruct", "-q", base, arch, filepath.Join(work, "out"))
	assert.Equal(t, cli.ExitFailure, code, msg)
	assert.Contains(t, msg, "file too large")
	assert.Equal(t, []string{"b.dcm"}, names(t, work))
}

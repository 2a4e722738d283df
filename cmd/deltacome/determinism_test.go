package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSameBytesOnAnyCores checks that compress writes the same archive, and
// reconstruct the same checkpoint, whatever the cores the process may use
// (GOMAXPROCS), the BLAS's thread setting and --workers, on both SVD routes,
// the randomized one with a refit round (whose products and k x k solves
// must not depend on the cores either).
// The projections are large enough for every product to be cut into several
// tiles and for OpenBLAS to split them over threads if it were let to.
func TestSameBytesOnAnyCores(t *testing.T) {
	bin := binary(t)
	base, ft := bigPair(t, 3, 700, 1900)
	dir := t.TempDir()
	runs := []struct{ procs, blas, workers int }{{1, 1, 1}, {2, 2, 0}, {3, 3, 2}, {4, 1, 3}}
	for _, route := range []string{"randomized", "exact"} {
		var first, firstOut string
		for i, r := range runs {
			env := append(os.Environ(), fmt.Sprintf("GOMAXPROCS=%d", r.procs),
				fmt.Sprintf("OPENBLAS_NUM_THREADS=%d", r.blas), fmt.Sprintf("OMP_NUM_THREADS=%d", r.blas))
			name := fmt.Sprintf("%s-%d", route, i)
			arc := filepath.Join(dir, name+".dcm")
			refit := map[string]string{"randomized": "1", "exact": "0"}[route]
			cmd := exec.Command(bin, "compress", "--svd", route, "--refit", refit, "--workers", fmt.Sprint(r.workers), base, ft, arc)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "compress: %s", out)
			rec := filepath.Join(dir, name)
			cmd = exec.Command(bin, "reconstruct", base, arc, rec)
			cmd.Env = env
			out, err = cmd.CombinedOutput()
			require.NoError(t, err, "reconstruct: %s", out)
			if i == 0 {
				first, firstOut = arc, rec
				continue
			}
			require.Equal(t, readFile(t, first), readFile(t, arc),
				"--svd %s: the archive with GOMAXPROCS=%d, %d BLAS threads, --workers %d differs from the one with 1, 1, 1", route, r.procs, r.blas, r.workers)
			require.Equal(t, readFile(t, filepath.Join(firstOut, "ft.safetensors")), readFile(t, filepath.Join(rec, "ft.safetensors")),
				"--svd %s: the reconstruction with GOMAXPROCS=%d differs", route, r.procs)
		}
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// TestMaxErrorSameBytes checks that an error target gives the same archive
// whatever the cores and workers: the first pass's curves, the choice of
// budgets and any step-up depend on the inputs and flags alone.
func TestMaxErrorSameBytes(t *testing.T) {
	bin := binary(t)
	base, ft := bigPair(t, 3, 200, 520)
	dir := t.TempDir()
	runs := []struct{ procs, workers int }{{1, 1}, {3, 2}, {2, 0}}
	for _, route := range []string{"randomized", "exact"} {
		var first string
		for i, r := range runs {
			arc := filepath.Join(dir, fmt.Sprintf("%s-%d.dcm", route, i))
			cmd := exec.Command(bin, "compress", "--max-error", "0.8", "--svd", route, "--workers", fmt.Sprint(r.workers), base, ft, arc)
			cmd.Env = append(os.Environ(), fmt.Sprintf("GOMAXPROCS=%d", r.procs), fmt.Sprintf("OPENBLAS_NUM_THREADS=%d", r.procs))
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "compress: %s", out)
			if i == 0 {
				first = arc
				continue
			}
			require.Equal(t, readFile(t, first), readFile(t, arc),
				"--svd %s --max-error: the archive with GOMAXPROCS=%d, --workers %d differs from the one with 1, 1", route, r.procs, r.workers)
		}
	}
}

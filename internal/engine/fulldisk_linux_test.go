package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// smallDisk mounts a tmpfs of size bytes on a fresh folder and returns it;
// the test is skipped where mounting is not permitted (not root, or in a
// container without the capability).
func smallDisk(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, 0) })
	return dir
}

func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	require.NoError(t, filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		n += fi.Size()
		return err
	}))
	return n
}

// TestFullDisk runs compress and reconstruct onto disks too small for their
// output, failing at different stages (while spooling blobs, while writing
// the final archive next to its spool, in the first shard, in a later file):
// each fails with an error naming the file and the cause, and leaves the disk
// as it was, an older output included.
func TestFullDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts file systems")
	}
	ctx := context.Background()
	ref := filepath.Join(t.TempDir(), "ref.dcm")
	_, err := Compress(ctx, tinyBase, tinyFT, ref, losslessOpts())
	require.NoError(t, err)
	fi, err := os.Stat(ref)
	require.NoError(t, err)
	archSize := fi.Size()
	older := []byte("older archive")

	for _, size := range []int64{16 << 10, archSize / 2, archSize * 3 / 2} {
		t.Run(fmt.Sprintf("compress on %d bytes", size), func(t *testing.T) {
			disk := smallDisk(t, size)
			out := filepath.Join(disk, "a.dcm")
			require.NoError(t, os.WriteFile(out, older, 0o644))
			opt := losslessOpts()
			opt.Overwrite = true
			_, err := Compress(ctx, tinyBase, tinyFT, out, opt)
			require.ErrorIs(t, err, syscall.ENOSPC)
			t.Log(err)
			assert.Contains(t, err.Error(), "a.dcm")
			assert.Equal(t, []string{"a.dcm"}, fileNames(t, disk), "no temporary files left")
			got, err := os.ReadFile(out)
			require.NoError(t, err)
			assert.Equal(t, older, got)
		})
	}

	full := filepath.Join(t.TempDir(), "full")
	_, err = Reconstruct(ctx, tinyBase, ref, full, ReconstructOptions{})
	require.NoError(t, err)
	outSize := dirSize(t, full)
	for _, size := range []int64{16 << 10, outSize / 2, outSize - 2<<10} {
		t.Run(fmt.Sprintf("reconstruct on %d bytes", size), func(t *testing.T) {
			disk := smallDisk(t, size)
			_, err := Reconstruct(ctx, tinyBase, ref, filepath.Join(disk, "out"), ReconstructOptions{Workers: 2})
			require.ErrorIs(t, err, syscall.ENOSPC)
			t.Log(err)
			assert.Empty(t, fileNames(t, disk), "no partial output")
		})
	}
}

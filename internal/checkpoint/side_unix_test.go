//go:build unix

package checkpoint

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSideFilesNotRegular: a named pipe and a socket in the folder are
// skipped, not read (reading a pipe would block).
func TestSideFilesNotRegular(t *testing.T) {
	openBase(t)
	dir := t.TempDir()
	require.NoError(t, os.Symlink(absPath(t, basePath), filepath.Join(dir, SingleName)))
	require.NoError(t, syscall.Mkfifo(filepath.Join(dir, "pipe"), 0o644))
	l, err := net.Listen("unix", filepath.Join(dir, "sock"))
	require.NoError(t, err)
	defer l.Close()

	side, skipped, err := openDir(t, dir).SideFiles()
	require.NoError(t, err)
	assert.Empty(t, side)
	assert.Equal(t, []SkippedFile{{Name: "pipe", Reason: "a named pipe"}, {Name: "sock", Reason: "a socket"}}, skipped)
}

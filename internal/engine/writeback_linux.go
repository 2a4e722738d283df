package engine

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to begin writing n bytes of f at off to
// disk now, without waiting, so that the fsync at the end of a long write
// finds little left to do: writing overlaps the computing of later
// tensors instead of following it. It is advice: failures are ignored (the
// closing fsync reports real write errors).
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

//go:build unix

package stfile

import (
	"os"

	"golang.org/x/sys/unix"
)

// mapFile maps the first size bytes of fd read-only and shared, so that
// pages come from the page cache and cost no private memory.
func mapFile(fd *os.File, size int) ([]byte, func([]byte) error, error) {
	buf, err := unix.Mmap(int(fd.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	return buf, unix.Munmap, nil
}

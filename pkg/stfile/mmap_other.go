//go:build !unix

package stfile

import (
	"io"
	"os"
)

// mapFile reads the file into memory where mmap is not available.
func mapFile(fd *os.File, size int) ([]byte, func([]byte) error, error) {
	buf := make([]byte, size)
	if _, err := io.ReadFull(fd, buf); err != nil {
		return nil, nil, err
	}
	return buf, func([]byte) error { return nil }, nil
}

// release is a no-op where the file is read into memory rather than mapped.
func release([]byte) {}

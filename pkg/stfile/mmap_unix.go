//go:build unix

package stfile

import (
	"os"
	"unsafe"

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

// release tells the kernel that the whole pages inside b are not needed for
// now. For a shared read-only file mapping this drops them from the
// process's resident set; a later access faults them in again from the page
// cache or the file, unchanged.
func release(b []byte) {
	if len(b) == 0 {
		return
	}
	page := unix.Getpagesize()
	skip := (page - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%uintptr(page))) % page
	if skip >= len(b) {
		return
	}
	whole := (len(b) - skip) / page * page
	if whole == 0 {
		return
	}
	_ = unix.Madvise(b[skip:skip+whole], unix.MADV_DONTNEED)
}

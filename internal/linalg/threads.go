package linalg

import "sync"

var single struct {
	sync.Mutex
	users int // callers inside SingleThreaded
	prev  int // the thread count to restore when the last one leaves
}

// SingleThreaded makes the BLAS run each product on its calling thread until
// the returned function is called, for callers that spread independent
// products over goroutines themselves: an OpenBLAS product run on every core
// from each of several goroutines oversubscribes the cores, and its idle
// threads spin between calls on cores the goroutines' other work needs.
// Nested and concurrent uses are counted; the last one out restores the
// previous setting.
//
// OpenBLAS's results depend on its thread count in the last bits: products
// run under SingleThreaded are the same whatever the goroutines do, but may
// differ from multi-threaded ones. Callers whose output must not depend on
// the worker count (compress) leave the setting alone; since the setting is
// process-wide, a compress running in the same process while a
// SingleThreaded section lasts gets single-threaded products too.
func SingleThreaded() (restore func()) {
	single.Lock()
	if single.users == 0 {
		single.prev = blasThreads()
		setBLASThreads(1)
	}
	single.users++
	single.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			single.Lock()
			if single.users--; single.users == 0 {
				setBLASThreads(single.prev)
			}
			single.Unlock()
		})
	}
}

// Package par runs the independent iterations of a loop on several
// goroutines.
package par

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// For calls fn(s, i) for every i in [0, n) on up to workers goroutines
// (GOMAXPROCS when workers < 1), each with its own state s from newState:
// scratch buffers that live as long as the goroutine. Iterations are handed
// out in increasing order as goroutines free up. When fn writes only to
// outputs indexed by i, the results do not depend on the schedule.
func For[S any](n, workers int, newState func() S, fn func(s S, i int)) {
	if workers < 1 {
		workers = runtime.GOMAXPROCS(0)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := newState()
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				fn(s, i)
			}
		}()
	}
	wg.Wait()
}

// Each calls fn(i) for every i in [0, n) on up to GOMAXPROCS goroutines, as
// For does.
func Each(n int, fn func(i int)) {
	For(n, 0, func() struct{} { return struct{}{} }, func(_ struct{}, i int) { fn(i) })
}

package par

import (
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestForVisitsEachOnce(t *testing.T) {
	for _, tc := range []struct{ n, workers int }{{0, 3}, {1, 3}, {1000, 1}, {1000, 3}, {7, 0}} {
		counts := make([]int32, tc.n)
		var states atomic.Int32
		For(tc.n, tc.workers, func() *int { states.Add(1); return new(int) }, func(s *int, i int) {
			*s++ // goroutine-local: no race
			atomic.AddInt32(&counts[i], 1)
		})
		for i, c := range counts {
			assert.Equal(t, int32(1), c, "n=%d workers=%d: item %d", tc.n, tc.workers, i)
		}
		if tc.workers > 0 {
			assert.LessOrEqual(t, int(states.Load()), min(tc.workers, tc.n), "one state per goroutine")
		}
	}
}

func TestEach(t *testing.T) {
	out := make([]int, 100)
	Each(len(out), func(i int) { out[i] = i * i })
	for i, v := range out {
		assert.Equal(t, i*i, v)
	}
}

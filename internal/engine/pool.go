package engine

import (
	"context"
	"sync"
)

// ordered runs work(i) for i in [0, n) on up to workers goroutines and hands
// each result to consume in index order, on the calling goroutine. A slot is
// freed only when its result has been consumed, so at most `workers` results
// exist at once: memory stays bounded even when an early item is slow. The
// first error (from work, consume or ctx) stops the run and is returned.
func ordered[T any](ctx context.Context, n, workers int, work func(ctx context.Context, i int) (T, error), consume func(i int, v T) error) error {
	if workers < 1 {
		workers = 1
	}
	ctx, cancel := context.WithCancel(ctx)

	type result struct {
		v   T
		err error
	}
	slots := make(chan struct{}, workers)
	results := make([]chan result, n)
	for i := range results {
		results[i] = make(chan result, 1)
	}
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()

	wg.Add(1) // the producer; it holds the count while it adds workers
	go func() {
		defer wg.Done()
		for i := 0; i < n; i++ {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				v, err := work(ctx, i)
				results[i] <- result{v, err}
			}(i)
		}
	}()

	for i := 0; i < n; i++ {
		var r result
		select {
		case r = <-results[i]:
		case <-ctx.Done():
			return ctx.Err()
		}
		if r.err != nil {
			return r.err
		}
		if err := consume(i, r.v); err != nil {
			return err
		}
		<-slots
	}
	return ctx.Err()
}

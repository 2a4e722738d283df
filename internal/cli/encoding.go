package cli

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/engine"
)

// encodingFlags are the flags compress and compare share: which tensors are
// compressed lossily and how Delta-CoMe quantizes them.
type encodingFlags struct {
	schedule  string
	groupSize int
	include   []string
	exclude   []string
	workers   int
}

func (o *encodingFlags) addFlags(f *pflag.FlagSet) {
	f.StringVar(&o.schedule, "schedule", "auto", `bit widths of singular vectors: "auto", "paper", or a list such as "8:2,3:32,2:rest"`)
	f.IntVar(&o.groupSize, "group-size", 128, "quantization group length along each singular vector")
	f.StringArrayVar(&o.include, "include", nil, "regexp of tensor names to compress lossily (repeatable; replaces the default rule: every weight matrix of the transformer blocks)")
	f.StringArrayVar(&o.exclude, "exclude", nil, "regexp of tensor names to store losslessly instead (repeatable)")
	f.IntVar(&o.workers, "workers", 0, "tensors processed at once (0: one per CPU, fewer when the largest working sets would not fit 9/16 of the memory cap, 2 GiB up to 6 CPUs; compress: --max-memory); the archive is identical whatever the value")
}

// parse validates the flags and returns the schedule and tensor selector.
func (o *encodingFlags) parse() (alloc.Schedule, *engine.Selector, error) {
	if o.groupSize < 1 {
		return alloc.Schedule{}, nil, usageError{fmt.Errorf("--group-size must be >= 1, got %d", o.groupSize)}
	}
	if o.workers < 0 {
		return alloc.Schedule{}, nil, usageError{fmt.Errorf("--workers must be >= 0, got %d", o.workers)}
	}
	s, err := alloc.ParseSchedule(o.schedule)
	if err != nil {
		return alloc.Schedule{}, nil, usageError{fmt.Errorf("--schedule: %w", err)}
	}
	sel, err := engine.NewSelector(o.include, o.exclude)
	if err != nil {
		return alloc.Schedule{}, nil, usageError{err}
	}
	return s, sel, nil
}

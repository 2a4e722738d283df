package cli

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/deltacome/deltacome/internal/alloc"
	"github.com/deltacome/deltacome/internal/engine"
	"github.com/deltacome/deltacome/internal/svdquant"
)

// encodingFlags are the flags compress and compare share: which tensors are
// compressed lossily and how Delta-CoMe quantizes them.
type encodingFlags struct {
	schedule  string
	groupSize int
	grid      string
	refit     int
	include   []string
	exclude   []string
	workers   int
}

func (o *encodingFlags) addFlags(f *pflag.FlagSet) {
	f.StringVar(&o.schedule, "schedule", "auto", `bit widths of singular vectors: "auto", "paper", or a list such as "8:2,3:32,2:rest"`)
	f.StringVar(&o.grid, "grid", engine.GridSym, `quantization grid of --method deltacome: "sym" (each singular vector on its own symmetric grid, one bf16 scale per vector or group and no minimum, the singular value folded into u's scales) or "asym" (a bf16 scale and minimum per group and a float32 singular value: the first format's grid, kept to rerun comparisons)`)
	f.IntVar(&o.groupSize, "group-size", 0, "quantization group length along each singular vector (0: the grid's default, the whole vector on --grid sym, 128 on --grid asym)")
	f.IntVar(&o.refit, "refit", svdquant.DefaultRefit, "alternating least-squares rounds on the quantized factors (--grid sym; 0: off): each round refits U·S to the delta given the quantized V, requantizes it, then V likewise, and the round of least error is kept. Lowers the error at equal bytes, but one round adds about a third to compress's CPU time on 7B-sized matrices (docs/FIDELITY.md); later rounds cost as much each and gain less")
	f.StringArrayVar(&o.include, "include", nil, "regexp of tensor names to compress lossily (repeatable; replaces the default rule: every weight matrix of the transformer blocks)")
	f.StringArrayVar(&o.exclude, "exclude", nil, "regexp of tensor names to store losslessly instead (repeatable)")
	f.IntVar(&o.workers, "workers", 0, "tensors processed at once (0: one per CPU, fewer when the largest working sets would not fit 9/16 of the memory cap, 2 GiB up to 6 CPUs; compress: --max-memory); the archive is identical whatever the value")
}

// parse validates the flags and returns the schedule and tensor selector.
func (o *encodingFlags) parse() (alloc.Schedule, *engine.Selector, error) {
	if o.groupSize < 0 {
		return alloc.Schedule{}, nil, usageError{fmt.Errorf("--group-size must be >= 1, or 0 for the grid's default, got %d", o.groupSize)}
	}
	if !slices.Contains(engine.Grids, o.grid) {
		return alloc.Schedule{}, nil, usageError{fmt.Errorf("--grid must be one of %s, got %q", strings.Join(engine.Grids, ", "), o.grid)}
	}
	if o.refit < 0 || o.refit > svdquant.MaxRefit {
		return alloc.Schedule{}, nil, usageError{fmt.Errorf("--refit must be 0 to %d rounds, got %d", svdquant.MaxRefit, o.refit)}
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

// asymGroupSize is the group length of --grid asym when --group-size is 0:
// the paper's (quant.DefaultGroupSize).
const asymGroupSize = 128

// resolvedGroupSize returns --group-size with 0 resolved for the grid: one
// group per vector (0) on grid sym, asymGroupSize on grid asym.
func (o *encodingFlags) resolvedGroupSize() int {
	if o.groupSize == 0 && o.grid == engine.GridAsym {
		return asymGroupSize
	}
	return o.groupSize
}

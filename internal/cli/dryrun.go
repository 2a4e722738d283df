package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/deltacome/deltacome/internal/engine"
	"github.com/deltacome/deltacome/pkg/archive"
)

// planJSON is compress --dry-run --json (schema in docs/JSON.md).
type planJSON struct {
	Schema          string                   `json:"schema"`
	Base            string                   `json:"base"`
	FineTune        string                   `json:"fine_tune"`
	Settings        planSettingsJSON         `json:"settings"`
	Tensors         []planTensorJSON         `json:"tensors"`
	ByKind          map[string]planTotalJSON `json:"by_kind"`
	OrigBytes       int64                    `json:"original_bytes"`
	SideFiles       int                      `json:"side_files"`
	SideBytes       int64                    `json:"side_bytes"`
	SkippedFiles    []skippedFileJSON        `json:"skipped_files"`
	HeaderBytes     int64                    `json:"header_bytes_estimate"`
	MaxArchiveBytes int64                    `json:"max_archive_bytes"`
	MinRatio        float64                  `json:"min_ratio"`
	Warnings        []engine.Warning         `json:"warnings"`
	// Estimate is present with --max-error: the first pass's prediction.
	Estimate *planEstimateJSON `json:"estimate,omitempty"`
	// Shard is present with --shard: each part's share of the work.
	Shard *planShardJSON `json:"shard,omitempty"`
	// Memory is the pool compress would run and the peak it expects.
	Memory planMemoryJSON `json:"memory"`
}

type planMemoryJSON struct {
	MaxMemory     int64  `json:"max_memory"`
	Workers       int    `json:"workers"`
	PeakEstimate  int64  `json:"peak_estimate"`
	LargestTensor string `json:"largest_tensor"`
	LargestBytes  int64  `json:"largest_bytes"`
}

type planShardJSON struct {
	Index int            `json:"index"`
	Count int            `json:"count"`
	Parts []planPartJSON `json:"parts"`
	// Speedup is the whole work over the busiest part's.
	Speedup float64 `json:"speedup"`
}

type planPartJSON struct {
	Index        int     `json:"index"`
	Tensors      int     `json:"tensors"`
	LossyTensors int     `json:"lossy_tensors"`
	OrigBytes    int64   `json:"original_bytes"`
	BaseOnly     int     `json:"base_only_tensors"`
	SideFiles    bool    `json:"side_files"`
	WorkShare    float64 `json:"work_share"`
}

// planEstimateJSON is the estimate of a --max-error dry run.
type planEstimateJSON struct {
	Method        string  `json:"method"`
	RelError      float64 `json:"rel_error"`
	LossyTensors  int     `json:"lossy_tensors"`
	LossyBytes    int64   `json:"lossy_bytes"`
	ArchiveBytes  int64   `json:"archive_bytes"`
	LosslessBound int64   `json:"lossless_max_bytes"`
}

type planSettingsJSON struct {
	Mode      string  `json:"mode"`
	Method    string  `json:"method,omitempty"`
	Ratio     float64 `json:"ratio,omitempty"`
	MaxError  float64 `json:"max_error,omitempty"`
	Budget    string  `json:"budget,omitempty"`
	Schedule  string  `json:"schedule,omitempty"`
	GroupSize int     `json:"group_size,omitempty"`
	Grid      string  `json:"grid,omitempty"`
	Refit     int     `json:"refit,omitempty"`
}

type planTensorJSON struct {
	Name      string   `json:"name"`
	Shape     []uint64 `json:"shape"`
	DType     string   `json:"dtype"`
	Kind      string   `json:"kind"`
	OrigBytes int64    `json:"original_bytes"`
	Budget    int64    `json:"budget,omitempty"`
	MaxBytes  int64    `json:"max_bytes"`
	Part      int      `json:"part,omitempty"`
}

// skippedFileJSON is an entry of the FT folder that is not carried.
type skippedFileJSON struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

type planTotalJSON struct {
	Tensors   int   `json:"tensors"`
	OrigBytes int64 `json:"original_bytes"`
	MaxBytes  int64 `json:"max_bytes"`
}

// runDryRun prints what compress would do, reading headers only (and,
// with --max-error, the projections: compress's first pass).
func runDryRun(ctx context.Context, o *compressOptions, base, ft string, out io.Writer) error {
	eo, err := o.validate()
	if err != nil {
		return err
	}
	p, err := engine.PlanContext(ctx, base, ft, *eo)
	if err != nil {
		return err
	}
	if o.json {
		res := planJSON{Schema: "deltacome.plan/1", Base: base, FineTune: ft,
			Settings: planSettingsJSON{Mode: eo.Mode}, ByKind: map[string]planTotalJSON{},
			OrigBytes: p.OrigBytes, SideFiles: p.SideFiles, SideBytes: p.SideBytes, HeaderBytes: p.HeaderBytes,
			MaxArchiveBytes: p.MaxArchiveBytes, MinRatio: float64(p.OrigBytes) / float64(max(p.MaxArchiveBytes, 1)),
			SkippedFiles: []skippedFileJSON{}, Warnings: append([]engine.Warning{}, p.Warnings...),
			Memory: planMemoryJSON{MaxMemory: p.Memory.MaxMemory, Workers: p.Memory.Workers, PeakEstimate: p.Memory.Peak,
				LargestTensor: p.Memory.Largest, LargestBytes: p.Memory.LargestBytes}}
		for _, f := range p.Skipped {
			res.SkippedFiles = append(res.SkippedFiles, skippedFileJSON{Name: f.Name, Reason: f.Reason})
		}
		if eo.Mode == engine.ModeDeltaCoMe {
			res.Settings.Method, res.Settings.Ratio, res.Settings.Schedule, res.Settings.GroupSize = eo.Method, eo.Ratio, eo.Schedule.String(), eo.GroupSize
			res.Settings.Grid, res.Settings.Refit = eo.Grid, eo.Refit
		}
		if tg := p.Target; tg != nil {
			res.Settings.Budget = tg.Budget
			if tg.MaxError > 0 {
				res.Settings.Ratio, res.Settings.MaxError = 0, tg.MaxError
			}
			lossless := losslessMax(p)
			res.Estimate = &planEstimateJSON{Method: estimateMethod(tg), RelError: tg.RelError, LossyTensors: tg.LossyTensors,
				LossyBytes: tg.LossyBytes, ArchiveBytes: tg.LossyBytes + p.HeaderBytes + lossless, LosslessBound: lossless}
		}
		for _, t := range p.Tensors {
			res.Tensors = append(res.Tensors, planTensorJSON{Name: t.Name, Shape: t.Shape, DType: t.DType, Kind: t.Kind,
				OrigBytes: t.OrigBytes, Budget: t.Budget, MaxBytes: t.MaxBytes, Part: t.Part})
		}
		if len(p.Parts) > 0 {
			total, most := work(p.Parts)
			res.Shard = &planShardJSON{Index: eo.Shard.Index, Count: eo.Shard.Count, Speedup: total / most}
			for _, s := range p.Parts {
				res.Shard.Parts = append(res.Shard.Parts, planPartJSON{Index: s.Index, Tensors: s.Tensors, LossyTensors: s.LossyTensors,
					OrigBytes: s.OrigBytes, BaseOnly: s.BaseOnly, SideFiles: s.SideFiles, WorkShare: float64(s.Work) / total})
			}
		}
		for k, t := range p.ByKind {
			res.ByKind[k] = planTotalJSON{Tensors: t.Tensors, OrigBytes: t.OrigBytes, MaxBytes: t.MaxBytes}
		}
		return writeJSON(out, res)
	}
	return renderPlan(out, p, eo, base, ft)
}

func renderPlan(out io.Writer, p *engine.CompressPlan, eo *engine.CompressOptions, base, ft string) error {
	if p.Target != nil {
		fmt.Fprintf(out, "plan:      %s against %s, budgets from compress's first pass over the projections, nothing written\n", ft, base)
	} else {
		fmt.Fprintf(out, "plan:      %s against %s, from the headers only: nothing read past them, nothing written\n", ft, base)
	}
	grid := ""
	if eo.Grid != "" {
		grid = fmt.Sprintf(", grid %s, refit %d", eo.Grid, eo.Refit)
	}
	switch {
	case eo.Mode == engine.ModeLossless:
		fmt.Fprintf(out, "settings:  mode lossless\n\n")
	case p.Target != nil && p.Target.MaxError > 0:
		fmt.Fprintf(out, "settings:  mode %s, method %s, max error %g, budget %s, schedule %s, group size %d%s\n\n", eo.Mode, eo.Method, p.Target.MaxError, p.Target.Budget, eo.Schedule, eo.GroupSize, grid)
	case p.Target != nil:
		fmt.Fprintf(out, "settings:  mode %s, method %s, ratio %g, budget %s, schedule %s, group size %d%s\n\n", eo.Mode, eo.Method, eo.Ratio, p.Target.Budget, eo.Schedule, eo.GroupSize, grid)
	default:
		fmt.Fprintf(out, "settings:  mode %s, method %s, ratio %g, schedule %s, group size %d%s\n\n", eo.Mode, eo.Method, eo.Ratio, eo.Schedule, eo.GroupSize, grid)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	partCol := ""
	if len(p.Parts) > 0 {
		partCol = "part\t"
	}
	fmt.Fprintln(tw, "tensor\tshape\tdtype\tplan\toriginal\tbudget\tat most\t"+partCol)
	for _, t := range p.Tensors {
		budget, part := "", ""
		if t.Budget > 0 {
			budget = fmt.Sprint(t.Budget)
		}
		if partCol != "" {
			part = fmt.Sprintf("%d\t", t.Part)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\n", t.Name, shapeString(t.Shape), t.DType, t.Kind, t.OrigBytes, budget, t.MaxBytes, part)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "plan\ttensors\toriginal\tat most\t")
	kinds := slices.Sorted(maps.Keys(p.ByKind))
	var lossy, lossless engine.PlanTotals
	for _, k := range kinds {
		t := p.ByKind[k]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t\n", k, t.Tensors, t.OrigBytes, t.MaxBytes)
		sum := &lossless
		if archive.KindLossy(k) {
			sum = &lossy
		}
		sum.Tensors += t.Tensors
		sum.OrigBytes += t.OrigBytes
		sum.MaxBytes += t.MaxBytes
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nside files: %d, %d bytes (stored zstd-compressed: at most %d)\n", p.SideFiles, p.SideBytes, p.SideMaxBytes)
	for _, f := range p.Skipped {
		fmt.Fprintf(out, "not carried: %s (%s)\n", f.Name, f.Reason)
	}
	fmt.Fprintf(out, "header and manifest: about %d bytes (estimated from the plan)\n", p.HeaderBytes)
	switch {
	case p.Target != nil:
		fmt.Fprintf(out, "lossy tensors: %d, %s -> about %s at a predicted aggregate error of %.4f (estimated: %s)\n",
			lossy.Tensors, size(lossy.OrigBytes), size(p.Target.LossyBytes), p.Target.RelError, estimateMethod(p.Target))
	case lossy.Tensors > 0:
		fmt.Fprintf(out, "lossy tensors: %d, %s -> at most %s: each within its exact budget, which the allocation fills nearly to the byte\n",
			lossy.Tensors, size(lossy.OrigBytes), size(lossy.MaxBytes))
	}
	fmt.Fprintf(out, "lossless tensors: %d, %s -> 0 to %s: nothing for a tensor equal to its base, otherwise what zstd makes of its XOR with the base, unknown without reading the bytes\n",
		lossless.Tensors, size(lossless.OrigBytes), size(lossless.MaxBytes))
	var err error
	if p.Target != nil {
		est := p.Target.LossyBytes + p.HeaderBytes + lossless.MaxBytes + p.SideMaxBytes
		_, err = fmt.Fprintf(out, "estimated archive size: about %s (%d bytes) with the lossless tensors at their bound, for %s of tensors: ratio about %s\n",
			size(est), est, size(p.OrigBytes), ratioString(p.OrigBytes, est))
	} else {
		_, err = fmt.Fprintf(out, "predicted archive size: at most %s (%d bytes) for %s of tensors: ratio at least %s\n",
			size(p.MaxArchiveBytes), p.MaxArchiveBytes, size(p.OrigBytes), ratioString(p.OrigBytes, p.MaxArchiveBytes))
	}
	if err == nil {
		m := p.Memory
		_, err = fmt.Fprintf(out, "peak memory: about %s expected, within a cap of %s (--max-memory): %d %s at once, the largest working set %s (%s)\n",
			size(m.Peak), size(m.MaxMemory), m.Workers, map[bool]string{true: "tensor", false: "tensors"}[m.Workers == 1], size(m.LargestBytes), m.Largest)
	}
	if err == nil && len(p.Parts) > 0 {
		err = renderParts(out, p.Parts, eo.Shard)
	}
	for _, w := range p.Warnings {
		if w.Code == engine.WarnSkippedFile {
			continue // listed with the side files
		}
		if err == nil {
			_, err = fmt.Fprintln(out, "warning:", w.Message)
		}
	}
	return err
}

// renderParts prints each part's share of the work, marking this worker's.
func renderParts(out io.Writer, parts []engine.PartShare, this engine.Shard) error {
	total, most := work(parts)
	fmt.Fprintf(out, "\nparts: %d, balanced by the estimated work of each tensor (SVD operations of the lossy ones, bytes of all)\n", len(parts))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "part\ttensors\tlossy\toriginal\twork\t\t")
	for _, s := range parts {
		var notes []string
		if s.SideFiles {
			notes = append(notes, "side files")
		}
		if s.BaseOnly > 0 {
			notes = append(notes, fmt.Sprintf("hashes %d base-only tensors", s.BaseOnly))
		}
		if s.Index == this.Index {
			notes = append(notes, "<- --shard "+this.String())
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%.1f%%\t%s\t\n", s.Index, s.Tensors, s.LossyTensors, size(s.OrigBytes), 100*float64(s.Work)/total, strings.Join(notes, ", "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	idle := 0
	for _, s := range parts {
		if s.Work == 0 {
			idle++
		}
	}
	if idle > 0 {
		fmt.Fprintf(out, "%d parts get no work: at most %d workers are of use\n", idle, len(parts)-idle)
	}
	_, err := fmt.Fprintf(out, "the busiest part has %.1f%% of the work: %d workers take about 1/%.1f of one machine's time, plus the merge\n",
		100*most/total, len(parts), total/most)
	return err
}

// work returns the total work of the parts and the busiest part's (each
// at least 1, so that the ratios are defined).
func work(parts []engine.PartShare) (total, most float64) {
	for _, s := range parts {
		total += float64(s.Work)
		most = max(most, float64(s.Work))
	}
	return max(total, 1), max(most, 1)
}

// writeJSON writes v as indented JSON.
func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// estimateMethod says how a first pass's estimate was made.
func estimateMethod(t *engine.TargetEstimate) string {
	if t.MaxError == 0 {
		return fmt.Sprintf("compress's first pass: one SVD of each projection and the allocation at %d budgets per projection from 0.77x to 1.41x of its share of the ratio's budget, then the least predicted error whose budgets add up to at most the shares'; no vector encoded, so the archive differs by a few bytes per projection",
			t.LadderPoints)
	}
	return fmt.Sprintf("compress's first pass: one SVD of each projection and the allocation at %d budgets per projection from fp16 size / %d to / %d, then the fewest bytes whose predicted error meets %g; no vector encoded, so the archive differs by a few bytes per projection, more if one misses its share of the error and takes a larger budget",
		t.LadderPoints, t.MaxRatio, t.MinRatio, t.MaxError)
}

// losslessMax is the bound on the bytes of the tensors stored losslessly
// and the side files.
func losslessMax(p *engine.CompressPlan) int64 {
	var n int64
	for k, t := range p.ByKind {
		if !archive.KindLossy(k) {
			n += t.MaxBytes
		}
	}
	return n + p.SideMaxBytes
}

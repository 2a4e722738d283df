package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
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
}

type planSettingsJSON struct {
	Mode      string  `json:"mode"`
	Method    string  `json:"method,omitempty"`
	Ratio     float64 `json:"ratio,omitempty"`
	Schedule  string  `json:"schedule,omitempty"`
	GroupSize int     `json:"group_size,omitempty"`
}

type planTensorJSON struct {
	Name      string   `json:"name"`
	Shape     []uint64 `json:"shape"`
	DType     string   `json:"dtype"`
	Kind      string   `json:"kind"`
	OrigBytes int64    `json:"original_bytes"`
	Budget    int64    `json:"budget,omitempty"`
	MaxBytes  int64    `json:"max_bytes"`
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

// runDryRun prints what compress would do, reading headers only.
func runDryRun(o *compressOptions, base, ft string, out io.Writer) error {
	eo, err := o.validate()
	if err != nil {
		return err
	}
	p, err := engine.Plan(base, ft, *eo)
	if err != nil {
		return err
	}
	if o.json {
		res := planJSON{Schema: "deltacome.plan/1", Base: base, FineTune: ft,
			Settings: planSettingsJSON{Mode: eo.Mode}, ByKind: map[string]planTotalJSON{},
			OrigBytes: p.OrigBytes, SideFiles: p.SideFiles, SideBytes: p.SideBytes, HeaderBytes: p.HeaderBytes,
			MaxArchiveBytes: p.MaxArchiveBytes, MinRatio: float64(p.OrigBytes) / float64(max(p.MaxArchiveBytes, 1)),
			SkippedFiles: []skippedFileJSON{}, Warnings: append([]engine.Warning{}, p.Warnings...)}
		for _, f := range p.Skipped {
			res.SkippedFiles = append(res.SkippedFiles, skippedFileJSON{Name: f.Name, Reason: f.Reason})
		}
		if eo.Mode == engine.ModeDeltaCoMe {
			res.Settings.Method, res.Settings.Ratio, res.Settings.Schedule, res.Settings.GroupSize = eo.Method, eo.Ratio, eo.Schedule.String(), eo.GroupSize
		}
		for _, t := range p.Tensors {
			res.Tensors = append(res.Tensors, planTensorJSON{Name: t.Name, Shape: t.Shape, DType: t.DType, Kind: t.Kind,
				OrigBytes: t.OrigBytes, Budget: t.Budget, MaxBytes: t.MaxBytes})
		}
		for k, t := range p.ByKind {
			res.ByKind[k] = planTotalJSON{Tensors: t.Tensors, OrigBytes: t.OrigBytes, MaxBytes: t.MaxBytes}
		}
		return writeJSON(out, res)
	}
	return renderPlan(out, p, eo, base, ft)
}

func renderPlan(out io.Writer, p *engine.CompressPlan, eo *engine.CompressOptions, base, ft string) error {
	fmt.Fprintf(out, "plan:      %s against %s, from the headers only: nothing read past them, nothing written\n", ft, base)
	if eo.Mode == engine.ModeLossless {
		fmt.Fprintf(out, "settings:  mode lossless\n\n")
	} else {
		fmt.Fprintf(out, "settings:  mode %s, method %s, ratio %g, schedule %s, group size %d\n\n", eo.Mode, eo.Method, eo.Ratio, eo.Schedule, eo.GroupSize)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tensor\tshape\tdtype\tplan\toriginal\tbudget\tat most\t")
	for _, t := range p.Tensors {
		budget := ""
		if t.Budget > 0 {
			budget = fmt.Sprint(t.Budget)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d\t\n", t.Name, shapeString(t.Shape), t.DType, t.Kind, t.OrigBytes, budget, t.MaxBytes)
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
	if lossy.Tensors > 0 {
		fmt.Fprintf(out, "lossy tensors: %d, %s -> at most %s: each within its exact budget, which the allocation fills nearly to the byte\n",
			lossy.Tensors, size(lossy.OrigBytes), size(lossy.MaxBytes))
	}
	fmt.Fprintf(out, "lossless tensors: %d, %s -> 0 to %s: nothing for a tensor equal to its base, otherwise what zstd makes of its XOR with the base, unknown without reading the bytes\n",
		lossless.Tensors, size(lossless.OrigBytes), size(lossless.MaxBytes))
	_, err := fmt.Fprintf(out, "predicted archive size: at most %s (%d bytes) for %s of tensors: ratio at least %s\n",
		size(p.MaxArchiveBytes), p.MaxArchiveBytes, size(p.OrigBytes), ratioString(p.OrigBytes, p.MaxArchiveBytes))
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

// writeJSON writes v as indented JSON.
func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

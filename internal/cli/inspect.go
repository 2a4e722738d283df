package cli

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/deltacome/deltacome/internal/engine"
	"github.com/deltacome/deltacome/internal/storage"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
)

type inspectOptions struct {
	json   bool
	plot   string
	tensor string
}

func (o *inspectOptions) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVar(&o.json, "json", false, "print the report as JSON (schema deltacome.inspect/1, docs/JSON.md)")
	f.StringVar(&o.plot, "plot", "", "also draw the figure into this .png or .svg file: a tensor's singular values by bit band, change and error per layer")
	f.StringVar(&o.tensor, "tensor", "", "the tensor whose spectrum --plot draws (default: the first low-rank one)")
	_ = cmd.MarkFlagFilename("plot", "png", "svg") // shell completion offers image names only
}

func newInspectCmd() *cobra.Command {
	o := &inspectOptions{}
	cmd := &cobra.Command{
		Use:   "inspect ARCHIVE",
		Short: "Show what an archive holds: settings, base fingerprint, per-tensor storage and error",
		Long: `Inspect prints an archive's format version, the tool and settings it was made
with, the fingerprint of its base, and one line per tensor: shape, dtype,
storage kind (same / xor / full / lowrank, or bitdelta / lowrank-bf16 for
the compare methods), the bytes stored for it, its original bytes and the
ratio, and for lossy tensors the relative error |Delta - Delta_hat| / |Delta|,
with for low-rank ones the rank kept, the bit bands (bits:count) and the
share of the delta's energy kept. Totals follow, by storage kind and by
tensor role (q, k, v, o, gate, up, down projections, recognised by name
across Llama, Mistral, Qwen, GPT-2, GPT-NeoX and Phi; everything else is
"other"), with bits stored per weight. All bytes are measured from what the
archive stores; errors are those measured at compression (verify measures
them again against the fine-tune).

What to look for: where the error concentrates. A role or layer whose
error stands out is a candidate for --exclude (stored bit-exact) or a lower
--ratio; energy kept near 1 with a small error means the ratio could go up.

--plot FILE.png|FILE.svg draws the singular values of one low-rank tensor
(--tensor, by default the first), coloured by the bit width of their band,
and, per layer, the size of the delta |Delta|_F and the relative error of each role.
The archive stores the singular values of the kept vectors only, so the
spectrum stops at the rank kept.

--json prints the report as one JSON document, schema deltacome.inspect/1,
described field by field in docs/JSON.md.` + exitCodesHelp,
		Example: `  deltacome inspect math.dcm
  deltacome inspect --json math.dcm | jq '.by_role'
  deltacome inspect --plot math.png --tensor model.layers.1.mlp.up_proj.weight math.dcm`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runInspect(o, args[0], cmd.OutOrStdout())
		},
	}
	o.addFlags(cmd)
	return cmd
}

func runInspect(o *inspectOptions, path string, out io.Writer) error {
	if o.tensor != "" && o.plot == "" {
		return usageError{fmt.Errorf("--tensor names the tensor --plot draws; give --plot too")}
	}
	r, err := engine.Inspect(path)
	if err != nil {
		return err
	}
	if o.plot != "" {
		if err := writePlot(r, o.plot, o.tensor); err != nil {
			return err
		}
	}
	if o.json {
		return writeJSON(out, newInspectJSON(r))
	}
	return renderInspect(out, r)
}

func renderInspect(out io.Writer, r *engine.Report) error {
	m := r.Manifest
	s := m.Settings
	fmt.Fprintf(out, "archive:   %s (%s)\n", r.Path, size(r.Size))
	fmt.Fprintf(out, "format:    %s v%d, written by %s\n", m.Format, m.Version, m.Tool)
	switch {
	case s.Mode == engine.ModeLossless:
		fmt.Fprintf(out, "settings:  mode lossless\n")
	case s.Method == engine.MethodBitDelta:
		fmt.Fprintf(out, "settings:  mode %s, method bitdelta (1 bit per weight and one scale per matrix; fixed size)\n", s.Mode)
	case s.Method == engine.MethodLowRank:
		fmt.Fprintf(out, "settings:  mode %s, method lowrank (bf16 singular factors), ratio %g, svd %s\n", s.Mode, s.Ratio, s.SVD)
	default:
		size := fmt.Sprintf("ratio %g", s.Ratio)
		switch {
		case s.MaxError > 0:
			size = fmt.Sprintf("max error %g (budget %s)", s.MaxError, s.Budget)
		case s.Budget != "":
			size += fmt.Sprintf(" (budget %s)", s.Budget)
		}
		grid := fmt.Sprintf("grid asym, group size %d", s.GroupSize)
		if s.Grid == engine.GridSym {
			grid = "grid sym (one scale per vector)"
			if s.GroupSize > 0 {
				grid = fmt.Sprintf("grid sym (group size %d)", s.GroupSize)
			}
			grid += fmt.Sprintf(", refit %d", s.Refit)
		}
		fmt.Fprintf(out, "settings:  mode %s, %s, schedule %s, %s, svd %s\n", s.Mode, size, s.Schedule, grid, s.SVD)
	}
	if c := s.Calibration; c != nil {
		fmt.Fprintf(out, "calibration: %s, %d tokens of %s (sha256 %s), %d sites, measured on %s\n", c.File, c.Tokens, c.Text, c.TextSHA256, c.Sites, c.Fingerprint)
	}
	if m.Base.Source != "" {
		fmt.Fprintf(out, "base:      %s, %s (%d tensors)\n", m.Base.Source, m.Base.Fingerprint, len(m.Base.Tensors))
	} else {
		fmt.Fprintf(out, "base:      %s (%d tensors)\n", m.Base.Fingerprint, len(m.Base.Tensors))
	}
	files := make([]string, len(m.Layout.Shards))
	for i, sh := range m.Layout.Shards {
		files[i] = sh.File
	}
	fmt.Fprintf(out, "shards:    %s\n", strings.Join(files, ", "))
	side := make([]string, len(m.SideFiles))
	for i, f := range m.SideFiles {
		side[i] = f.Name
	}
	fmt.Fprintf(out, "side files: %s\n\n", strings.Join(side, ", "))

	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tensor\tshape\tdtype\tkind\tstored\toriginal\tratio\trank\tbands\terror\tenergy\t")
	order := make([]*archive.Tensor, len(m.Tensors))
	for i := range m.Tensors {
		order[i] = &m.Tensors[i]
	}
	slices.SortStableFunc(order, func(a, b *archive.Tensor) int { return naturalCompare(a.Name, b.Name) })
	for _, t := range order {
		rank, rel, energy := "", "", ""
		rep := report(t)
		if rep.Rank != nil {
			rank = fmt.Sprint(*rep.Rank)
		}
		if r, _, ok := t.DeltaError(); ok {
			rel = fmt.Sprintf("%.4f", r)
		}
		if rep.EnergyKept != nil {
			energy = fmt.Sprintf("%.3f", *rep.EnergyKept)
		}
		bands := engine.BandsString(rep.Bands)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", t.Name, shapeString(t.Shape), t.DType, t.Kind,
			size(t.StoredBytes()), size(t.Bytes), ratioString(t.Bytes, t.StoredBytes()), rank, bands, rel, energy)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "kind\ttensors\tstored\toriginal\tratio\terror\t")
	kinds := slices.Sorted(maps.Keys(r.ByKind))
	row := func(name string, t *engine.Totals) {
		rel := ""
		if t.RelError > 0 {
			rel = fmt.Sprintf("%.4f", t.RelError)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t\n", name, t.Tensors, size(t.StoredBytes), size(t.OrigBytes), ratioString(t.OrigBytes, t.StoredBytes), rel)
	}
	for _, k := range kinds {
		row(k, r.ByKind[k])
	}
	row("tensors", &r.Totals)
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := renderRoles(out, m); err != nil {
		return err
	}
	if err := renderCalibration(out, s.Calibration, order); err != nil {
		return err
	}
	_, err := fmt.Fprintf(out, "\narchive file: %s for %s of tensors: ratio %s (header and manifest: %s; exact byte counts: --json)\n",
		size(r.Size), size(r.Totals.OrigBytes), ratioString(r.Totals.OrigBytes, r.Size), size(r.Size-r.Totals.StoredBytes-sideBytes(m)))
	return err
}

// report is what the record t says of its tensor, through its kind's
// entry of the storage table; nothing for a kind this build does not know.
func report(t *archive.Tensor) storage.Report {
	if k, ok := storage.Lookup(t.Kind); ok {
		return k.Report(t)
	}
	return storage.Report{}
}

func sideBytes(m *archive.Manifest) int64 {
	var n int64
	for _, f := range m.SideFiles {
		n += f.Blob.Size
	}
	return n
}

func shapeString(shape []uint64) string {
	parts := make([]string, len(shape))
	for i, d := range shape {
		parts[i] = fmt.Sprint(d)
	}
	return strings.Join(parts, "x")
}

func ratioString(orig, stored int64) string {
	if stored == 0 {
		return "inf"
	}
	return fmt.Sprintf("%.2f", float64(orig)/float64(stored))
}

// renderCalibration prints, for an archive made with calibration
// statistics, which result each projection kept and the H-weighted
// relative errors of both (docs/CALIBRATION.md).
func renderCalibration(out io.Writer, c *archive.Calibration, order []*archive.Tensor) error {
	if c == nil {
		return nil
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "projection\tkept\tH-error\tdata-free H-error\t")
	kept, total := 0, 0
	for _, t := range order {
		lr := t.LowRankSym
		if lr == nil || lr.Calibration == "" {
			continue
		}
		total++
		hErr, free := "", ""
		if lr.Calibration == svdquant.CalibKept || lr.Calibration == svdquant.CalibDataFree {
			hErr, free = fmt.Sprintf("%.4f", lr.HRelError), fmt.Sprintf("%.4f", lr.HRelErrorDataFree)
		}
		if lr.Calibration == svdquant.CalibKept {
			kept++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", t.Name, lr.Calibration, hErr, free)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(out, "calibrated encode kept for %d of %d projections\n", kept, total)
	return err
}

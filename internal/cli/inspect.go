package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/deltacome/deltacome/internal/engine"
	"github.com/deltacome/deltacome/pkg/archive"
)

type inspectOptions struct {
	json bool
}

func (o *inspectOptions) addFlags(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&o.json, "json", false, "print the report as JSON (the manifest plus totals)")
}

func newInspectCmd() *cobra.Command {
	o := &inspectOptions{}
	cmd := &cobra.Command{
		Use:   "inspect ARCHIVE",
		Short: "Show what an archive holds: settings, base fingerprint, per-tensor storage and error",
		Long: `Inspect prints an archive's format version, the tool and settings it was made
with, the fingerprint of its base, and one line per tensor: shape, dtype,
storage kind (same / xor / full / lowrank), the bytes stored for it, its
original bytes and the ratio, and for low-rank tensors the rank kept, the bit
bands (bits:count), the relative error |Delta - Delta_hat| / |Delta| and the
share of the delta's energy kept. Totals follow. All bytes are measured from
what the archive stores.` + exitCodesHelp,
		Example: `  deltacome inspect math.dcm
  deltacome inspect --json math.dcm | jq '.totals'`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runInspect(o, args[0], cmd.OutOrStdout())
		},
	}
	o.addFlags(cmd)
	return cmd
}

// inspectJSON is the --json report.
type inspectJSON struct {
	Archive      string                `json:"archive"`
	ArchiveBytes int64                 `json:"archive_bytes"`
	Manifest     *archive.Manifest     `json:"manifest"`
	Totals       totalsJSON            `json:"totals"`
	ByKind       map[string]totalsJSON `json:"by_kind"`
}

type totalsJSON struct {
	Tensors     int     `json:"tensors"`
	OrigBytes   int64   `json:"original_bytes"`
	StoredBytes int64   `json:"stored_bytes"`
	RelError    float64 `json:"rel_error,omitempty"`
}

func toTotalsJSON(t *engine.Totals) totalsJSON {
	return totalsJSON{Tensors: t.Tensors, OrigBytes: t.OrigBytes, StoredBytes: t.StoredBytes, RelError: t.RelError}
}

func runInspect(o *inspectOptions, path string, out io.Writer) error {
	r, err := engine.Inspect(path)
	if err != nil {
		return err
	}
	if o.json {
		res := inspectJSON{Archive: path, ArchiveBytes: r.Size, Manifest: r.Manifest, Totals: toTotalsJSON(&r.Totals), ByKind: map[string]totalsJSON{}}
		for k, t := range r.ByKind {
			res.ByKind[k] = toTotalsJSON(t)
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	return renderInspect(out, r)
}

func renderInspect(out io.Writer, r *engine.Report) error {
	m := r.Manifest
	s := m.Settings
	fmt.Fprintf(out, "archive:   %s (%d bytes)\n", r.Path, r.Size)
	fmt.Fprintf(out, "format:    %s v%d, written by %s\n", m.Format, m.Version, m.Tool)
	if s.Mode == engine.ModeLossless {
		fmt.Fprintf(out, "settings:  mode lossless\n")
	} else {
		fmt.Fprintf(out, "settings:  mode %s, ratio %g, schedule %s, group size %d, svd %s\n", s.Mode, s.Ratio, s.Schedule, s.GroupSize, s.SVD)
	}
	fmt.Fprintf(out, "base:      %s (%d tensors)\n", m.Base.Fingerprint, len(m.Base.Tensors))
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
	for i := range m.Tensors {
		t := &m.Tensors[i]
		rank, bands, rel, energy := "", "", "", ""
		if lr := t.LowRank; lr != nil {
			rank, bands = fmt.Sprint(lr.Rank), engine.BandsString(lr.Bands)
			rel, energy = fmt.Sprintf("%.4f", lr.RelError), fmt.Sprintf("%.3f", lr.EnergyKept)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t\n", t.Name, shapeString(t.Shape), t.DType, t.Kind,
			t.StoredBytes(), t.Bytes, ratioString(t.Bytes, t.StoredBytes()), rank, bands, rel, energy)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "kind\ttensors\tstored\toriginal\tratio\terror\t")
	kinds := make([]string, 0, len(r.ByKind))
	for k := range r.ByKind {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	row := func(name string, t *engine.Totals) {
		rel := ""
		if t.RelError > 0 {
			rel = fmt.Sprintf("%.4f", t.RelError)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t\n", name, t.Tensors, t.StoredBytes, t.OrigBytes, ratioString(t.OrigBytes, t.StoredBytes), rel)
	}
	for _, k := range kinds {
		row(k, r.ByKind[k])
	}
	row("tensors", &r.Totals)
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(out, "\narchive file: %d bytes for %d bytes of tensors: ratio %s (header and manifest: %d bytes)\n",
		r.Size, r.Totals.OrigBytes, ratioString(r.Totals.OrigBytes, r.Size), r.Size-r.Totals.StoredBytes-sideBytes(m))
	return err
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

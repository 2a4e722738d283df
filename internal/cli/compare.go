package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/deltacome/deltacome/internal/engine"
)

type compareOptions struct {
	ratios  string
	methods []string
	encodingFlags
	keep  string
	quiet bool
	json  bool
}

func (o *compareOptions) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.ratios, "ratios", "8,16,32", "compression ratios to measure, comma-separated (bitdelta is measured once: its size is fixed)")
	f.StringSliceVar(&o.methods, "methods", engine.Methods, "methods to measure, comma-separated: deltacome, bitdelta, lowrank")
	o.encodingFlags.addFlags(f)
	f.StringVar(&o.keep, "keep", "", "keep the archives in this folder (created if missing; archives of the same names are replaced) instead of deleting them")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "print the table only, no progress")
	f.BoolVar(&o.json, "json", false, "print the results as JSON on stdout instead of a table")
}

func (o *compareOptions) validate() (*engine.CompareOptions, error) {
	if len(o.methods) == 0 {
		return nil, usageError{fmt.Errorf("--methods must not be empty")}
	}
	var ratios []float64
	for _, f := range strings.Split(o.ratios, ",") {
		r, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || !(r >= 1) || math.IsInf(r, 0) {
			return nil, usageError{fmt.Errorf("--ratios: each ratio must be a finite number >= 1, got %q", f)}
		}
		ratios = append(ratios, r)
	}
	s, sel, err := o.encodingFlags.parse()
	if err != nil {
		return nil, err
	}
	refit := o.refit
	if o.grid != engine.GridSym {
		refit = 0
	}
	return &engine.CompareOptions{Methods: o.methods, Ratios: ratios, Schedule: s, GroupSize: o.resolvedGroupSize(),
		Grid: o.grid, Refit: refit, Select: sel, Workers: o.workers, Tool: tool(), KeepDir: o.keep}, nil
}

func newCompareCmd() *cobra.Command {
	o := &compareOptions{}
	cmd := &cobra.Command{
		Use:   "compare BASE FT",
		Short: "Measure Delta-CoMe, BitDelta and plain low rank side by side on one fine-tune",
		Long: `Compare compresses FT against BASE with each method at each ratio, exactly as
"deltacome compress --method M --ratio R" would, and reports for each run the
measured archive size and the relative error |Delta - Delta_hat| / |Delta| of
the projection deltas: aggregated over all projections and per kind of
projection (q, k, v, o, gate, up, down by tensor name). Every number is read
back from the archive written: bytes are the file's size and the stored
blobs, errors those recorded per tensor by compress.

Methods:
  deltacome  truncated SVD with singular vectors quantized, more bits for
             larger singular values, within each projection's --ratio budget.
  lowrank    the top-r singular vectors in bf16 (LoRA extraction), r the
             largest rank within the same budget.
  bitdelta   sign(Delta), 1 bit per weight, times mean |Delta| per matrix.
             Its size is fixed (about fp16 size / 16 for the projections)
             whatever the ratio, so it is measured once and its row shows
             its real ratio, not an asked one.

Columns: asked ratio; archive file bytes and FT tensor bytes / archive bytes;
the projections' stored bytes and their fp16 size / stored bytes (what
--ratio bounds); aggregate error; error per projection kind.

The archives go to a temporary folder and are deleted once measured, unless
--keep DIR names a folder to keep them in (deltacome-16.dcm, lowrank-8.dcm,
bitdelta.dcm, ...).` + exitCodesHelp,
		Example: `  deltacome compare base.safetensors math.safetensors
  deltacome compare --ratios 16 --methods deltacome,lowrank --json ./base ./ft
  deltacome compare --keep archives/ ./base ./ft`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCompare(cmd.Context(), o, args[0], args[1], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	o.addFlags(cmd)
	return cmd
}

// compareJSON is one row of the --json output.
type compareJSON struct {
	Method string `json:"method"`
	// Ratio is the asked ratio; absent for bitdelta, whose size is fixed.
	Ratio           float64            `json:"ratio,omitempty"`
	Archive         string             `json:"archive,omitempty"`
	ArchiveBytes    int64              `json:"archive_bytes"`
	OrigBytes       int64              `json:"original_bytes"`
	FileRatio       float64            `json:"file_ratio"`
	Projections     int                `json:"projections"`
	ProjStoredBytes int64              `json:"projection_stored_bytes"`
	ProjFP16Bytes   int64              `json:"projection_fp16_bytes"`
	ProjRatio       float64            `json:"projection_ratio"`
	RelError        float64            `json:"rel_error"`
	ByRole          map[string]float64 `json:"rel_error_by_kind"`
}

func toCompareJSON(r *engine.CompareRow) compareJSON {
	j := compareJSON{Method: r.Method, Ratio: r.Ratio, Archive: r.Archive, ArchiveBytes: r.ArchiveBytes, OrigBytes: r.OrigBytes,
		FileRatio: float64(r.OrigBytes) / float64(r.ArchiveBytes), Projections: r.Projections, ProjStoredBytes: r.ProjStoredBytes,
		ProjFP16Bytes: r.ProjFP16Bytes, RelError: r.RelError, ByRole: map[string]float64{}}
	if r.ProjStoredBytes > 0 {
		j.ProjRatio = r.ProjRatio()
	}
	for _, g := range r.ByRole {
		j.ByRole[g.Role] = g.RelError
	}
	return j
}

func runCompare(ctx context.Context, o *compareOptions, base, ft string, stdout, stderr io.Writer) error {
	co, err := o.validate()
	if err != nil {
		return err
	}
	p := newProgress(stderr, o.quiet || o.json, "compare", nil)
	co.Progress = p
	co.Measured = func(r *engine.CompareRow) {
		p.finish()
		if !o.quiet && !o.json {
			fmt.Fprintf(stderr, "measured %s %s: %d bytes, error %.4f\n", r.Method, askedRatio(r), r.ArchiveBytes, r.RelError)
		}
	}
	rows, err := engine.Compare(ctx, base, ft, *co)
	p.finish()
	if err != nil {
		return err
	}
	if o.json {
		res := make([]compareJSON, len(rows))
		for i := range rows {
			res[i] = toCompareJSON(&rows[i])
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	return renderCompare(stdout, rows)
}

// askedRatio renders a row's asked ratio; bitdelta has none.
func askedRatio(r *engine.CompareRow) string {
	if r.Ratio == 0 {
		return "fixed"
	}
	return strconv.FormatFloat(r.Ratio, 'g', -1, 64)
}

func renderCompare(out io.Writer, rows []engine.CompareRow) error {
	var roles []string // union of the roles present, in report order
	for _, role := range engine.Roles() {
		for _, r := range rows {
			if hasRole(&r, role) {
				roles = append(roles, role)
				break
			}
		}
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "method\tratio\tarchive bytes\tfile ratio\tproj. bytes\tproj. ratio\terror\t%s\t\n", strings.Join(roles, "\t"))
	fixed := false
	for i := range rows {
		r := &rows[i]
		fixed = fixed || r.Ratio == 0
		errs := make([]string, len(roles))
		for j, role := range roles {
			errs[j] = "-"
			for _, g := range r.ByRole {
				if g.Role == role {
					errs[j] = fmt.Sprintf("%.4f", g.RelError)
				}
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%.4f\t%s\t\n", r.Method, askedRatio(r), r.ArchiveBytes, ratioString(r.OrigBytes, r.ArchiveBytes),
			r.ProjStoredBytes, ratioString(r.ProjFP16Bytes, r.ProjStoredBytes), r.RelError, strings.Join(errs, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(out, "\nerror: |Delta - Delta_hat| / |Delta| over the projections; proj. ratio: their fp16 bytes / stored bytes.")
	if err == nil && fixed {
		_, err = fmt.Fprintln(out, "bitdelta stores 1 bit per weight and one scale per matrix: its size is fixed, so it is measured once whatever --ratios.")
	}
	return err
}

func hasRole(r *engine.CompareRow, role string) bool {
	for _, g := range r.ByRole {
		if g.Role == role {
			return true
		}
	}
	return false
}

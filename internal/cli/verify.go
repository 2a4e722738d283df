package cli

import (
	"context"
	"fmt"
	"io"
	"math"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/deltacome/deltacome/internal/engine"
)

type verifyOptions struct {
	maxError float64
	limited  bool // --max-error was given
	workers  int
	quiet    bool
	json     bool
}

func (o *verifyOptions) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.Float64Var(&o.maxError, "max-error", 0, "fail (exit 4) when the aggregate relative error of the lossy tensors is above this; unset: no limit")
	f.IntVar(&o.workers, "workers", 0, "tensors processed at once (0: one per CPU)")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "print nothing but errors; the exit code tells the result")
	f.BoolVar(&o.json, "json", false, "print the report as JSON on stdout")
}

func (o *verifyOptions) validate(cmd *cobra.Command) error {
	o.limited = cmd.Flags().Changed("max-error")
	if o.limited && !(o.maxError >= 0) {
		return usageError{fmt.Errorf("--max-error must be >= 0, got %v", o.maxError)}
	}
	if o.workers < 0 {
		return usageError{fmt.Errorf("--workers must be >= 0, got %d", o.workers)}
	}
	return nil
}

func newVerifyCmd() *cobra.Command {
	o := &verifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify BASE FT ARCHIVE",
		Short: "Reconstruct ARCHIVE in memory and measure it against the fine-tune FT",
		Long: `Verify applies ARCHIVE to BASE in memory, as reconstruct would, writes
nothing, and compares every tensor with the fine-tune FT it was made from.
It prints, per tensor, how it is stored and its relative error against FT,
|W_hat - W_ft| / |W_ft - W_base| (Frobenius norms, with the rounding to FT's
dtype included, so it can sit a little above the error inspect reports for
the delta alone), then the aggregate over the lossy tensors,
sqrt(sum |W_hat - W_ft|^2 / sum |W_ft - W_base|^2), and the error relative
to the whole fine-tune's weights.

Every check reconstruct makes is made: each blob's CRC-32C, each bit-exact
tensor's SHA-256, each side file's SHA-256, the base's fingerprint. Beyond
them verify checks that FT is the checkpoint the archive was made from (its
tensors' SHA-256), that every tensor stored bit-exact comes back identical
to FT's, that side files match FT's copies, and, with --max-error, that the
aggregate error is at most that. Reading all three inputs in full, it takes
about as long as reconstruct without the writing.

Choosing --max-error: the error grows with --ratio; on the bundled tiny
pair the default settings (ratio 16, schedule auto) give about 0.29. A
limit a little above what compress reported for the archive catches a
damaged archive, base or build without failing on the method's own loss.` + exitCodesHelp,
		Example: `  deltacome verify base.safetensors math.safetensors math.dcm
  deltacome verify --max-error 0.35 ./Llama-2-7b ./my-ft my-ft.dcm && echo ok
  deltacome verify --json ./base ./ft ft.dcm | jq '.rel_error'`,
		Args: exactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.validate(cmd); err != nil {
				return err
			}
			return runVerify(cmd.Context(), o, args[0], args[1], args[2], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	o.addFlags(cmd)
	return cmd
}

// verifyJSON is the --json report (schema in docs/JSON.md).
type verifyJSON struct {
	Schema         string             `json:"schema"`
	Archive        string             `json:"archive"`
	OK             bool               `json:"ok"`
	MaxError       *float64           `json:"max_error"`
	RelError       float64            `json:"rel_error"`
	WeightRelError float64            `json:"weight_rel_error"`
	Lossy          int                `json:"lossy_tensors"`
	Exact          int                `json:"exact_tensors"`
	SideFiles      int                `json:"side_files_checked"`
	Problems       []string           `json:"problems"`
	Tensors        []verifyTensorJSON `json:"tensors"`
}

type verifyTensorJSON struct {
	Name          string   `json:"name"`
	Shape         []uint64 `json:"shape"`
	DType         string   `json:"dtype"`
	Kind          string   `json:"kind"`
	Exact         bool     `json:"exact"`
	RelError      *float64 `json:"rel_error"`
	RecordedError float64  `json:"recorded_error,omitempty"`
	Problem       string   `json:"problem,omitempty"`
}

// finite returns &x, or nil (JSON null) for an infinite or NaN x.
func finite(x float64) *float64 {
	if math.IsInf(x, 0) || math.IsNaN(x) {
		return nil
	}
	return &x
}

func runVerify(ctx context.Context, o *verifyOptions, base, ft, arch string, stdout, stderr io.Writer) error {
	p := newProgress(stderr, o.quiet || o.json, "verify", nil)
	rep, err := engine.Verify(ctx, base, ft, arch, engine.VerifyOptions{Workers: o.workers, Progress: p})
	p.finish()
	if err != nil {
		return err
	}
	limit := math.NaN() // Check accepts any error
	if o.limited {
		limit = o.maxError
	}
	check := rep.Check(limit)
	switch {
	case o.json:
		res := verifyJSON{Schema: "deltacome.verify/1", Archive: arch, OK: check == nil, RelError: rep.RelError,
			WeightRelError: rep.WeightRelError, Lossy: rep.Lossy, Exact: rep.Exact, SideFiles: rep.SideFiles,
			Problems: append([]string{}, rep.Problems...)}
		if o.limited {
			res.MaxError = &o.maxError
		}
		for _, t := range rep.Tensors {
			res.Tensors = append(res.Tensors, verifyTensorJSON{Name: t.Name, Shape: t.Shape, DType: t.DType, Kind: t.Kind,
				Exact: t.Exact, RelError: finite(t.RelError), RecordedError: t.RecordedError, Problem: t.Problem})
		}
		if err := writeJSON(stdout, res); err != nil {
			return err
		}
	case !o.quiet:
		if err := renderVerify(stdout, rep, o, check); err != nil {
			return err
		}
	}
	return check
}

func renderVerify(out io.Writer, rep *engine.VerifyReport, o *verifyOptions, check error) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tensor\tshape\tdtype\tkind\texact\terror\trecorded\t")
	for _, t := range rep.Tensors {
		exact, rel, recorded := "no", fmt.Sprintf("%.4f", t.RelError), ""
		if t.Exact {
			exact, rel = "yes", "0"
		}
		if t.RecordedError > 0 {
			recorded = fmt.Sprintf("%.4f", t.RecordedError)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", t.Name, shapeString(t.Shape), t.DType, t.Kind, exact, rel, recorded)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n%d tensors bit-exact, %d lossy; %d side files checked\n", rep.Exact, rep.Lossy, rep.SideFiles)
	fmt.Fprintf(out, "aggregate relative error of the lossy tensors: %.4f (relative to the whole fine-tune's weights: %.3g)\n", rep.RelError, rep.WeightRelError)
	for _, p := range rep.Problems {
		fmt.Fprintf(out, "problem: %s\n", p)
	}
	verdict := "OK"
	switch {
	case check != nil:
		verdict = "FAILED: " + check.Error()
	case o.limited:
		verdict = fmt.Sprintf("OK: within --max-error %g", o.maxError)
	}
	_, err := fmt.Fprintln(out, verdict)
	return err
}

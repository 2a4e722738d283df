package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nlpodyssey/safetensors"
	"github.com/spf13/cobra"

	"github.com/deltacome/deltacome/internal/engine"
	"github.com/deltacome/deltacome/internal/linalg"
)

type exportLoRAOptions struct {
	rank          int
	rankAttn      int
	rankMLP       int
	dtype         string
	modulesToSave bool
	svd           string
	workers       int
	dryRun        bool
	json          bool
	quiet         bool
}

func (o *exportLoRAOptions) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.IntVar(&o.rank, "rank", 0, "rank r of every projection's factors (required); a matrix smaller than r gets its full rank")
	f.IntVar(&o.rankAttn, "rank-attn", 0, "rank of the attention projections (q, k, v, o) instead of --rank")
	f.IntVar(&o.rankMLP, "rank-mlp", 0, "rank of the MLP projections (gate, up, down) instead of --rank")
	f.StringVar(&o.dtype, "dtype", "bf16", "dtype of lora_A and lora_B: bf16, f16 or f32")
	f.BoolVar(&o.modulesToSave, "modules-to-save", false, "put the changed tensors outside the projections (embeddings, norms, head) in the adapter whole, as PEFT's modules_to_save; vLLM refuses such adapters")
	f.StringVar(&o.svd, "svd", "auto", `truncated SVD route: "exact", "randomized" or "auto" (as compress)`)
	f.IntVar(&o.workers, "workers", 0, "tensors processed at once (0: one per CPU, fewer when memory is short); the adapter is identical whatever the value")
	f.BoolVar(&o.dryRun, "dry-run", false, "print each module's rank and bytes and the adapter's size from the headers alone; write nothing")
	f.BoolVar(&o.json, "json", false, "print the report as JSON on stdout (schema in docs/LORA.md)")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "print nothing but errors")
}

// loraDTypes maps --dtype to the factors' dtype.
var loraDTypes = map[string]safetensors.DType{"bf16": safetensors.BF16, "f16": safetensors.F16, "f32": safetensors.F32}

func (o *exportLoRAOptions) validate() (*engine.LoRAOptions, error) {
	if o.rank < 1 {
		return nil, usageError{fmt.Errorf("--rank must be >= 1, got %d", o.rank)}
	}
	if o.rankAttn < 0 || o.rankMLP < 0 {
		return nil, usageError{fmt.Errorf("--rank-attn and --rank-mlp must be >= 1 when given, got %d and %d", o.rankAttn, o.rankMLP)}
	}
	if o.workers < 0 {
		return nil, usageError{fmt.Errorf("--workers must be >= 0, got %d", o.workers)}
	}
	dt, ok := loraDTypes[strings.ToLower(o.dtype)]
	if !ok {
		return nil, usageError{fmt.Errorf("--dtype %q: must be bf16, f16 or f32", o.dtype)}
	}
	route, err := linalg.ParseRoute(o.svd)
	if err != nil {
		return nil, usageError{fmt.Errorf("--svd: %w", err)}
	}
	return &engine.LoRAOptions{Rank: o.rank, RankAttn: o.rankAttn, RankMLP: o.rankMLP, DType: dt,
		ModulesToSave: o.modulesToSave, SVD: route, Workers: o.workers}, nil
}

func newExportLoRACmd() *cobra.Command {
	o := &exportLoRAOptions{}
	cmd := &cobra.Command{
		Use:   "export-lora BASE FT|ARCHIVE OUTDIR",
		Short: "Write FT's projection deltas to BASE as a PEFT LoRA adapter in OUTDIR",
		Long: `Export-lora writes the fine-tune FT as a LoRA adapter over BASE, in the folder
PEFT saves (adapter_model.safetensors and adapter_config.json), which PEFT,
vLLM (--enable-lora), S-LoRA, LoRAX and TGI load: many fine-tunes served
over one base.

Each projection compress would compress (the *_proj, c_attn/c_proj/c_fc,
query_key_value/dense, fc1/fc2 weights) gets the top-r truncated SVD of its
delta, split as lora_B = U sqrt(S) (out x r) and lora_A = sqrt(S) V^T
(r x in), stored in --dtype under PEFT's names
(base_model.model.<module>.lora_A.weight); lora_alpha = r, so the scaling
is 1 and BASE + B A is the rank-r approximation of FT. A matrix smaller
than r gets its full rank, its delta exactly; a rank above every matrix is
refused. Projections equal to their base get no factors. GPT-2's Conv1D
weights, stored [in, out], are exported with fan_in_fan_out true.

What a LoRA cannot carry: changed tensors outside the projections
(embeddings, norms, lm_head, biases) are listed with their share of the
delta's energy |Delta|^2 and left out; --modules-to-save puts the tensors
of other modules in the adapter whole as PEFT's modules_to_save (PEFT loads
them; vLLM refuses adapters that have any). vLLM also refuses ranks above
512.

Report: per module its rank, bytes, the relative error
|Delta - B A|_F / |Delta|_F measured on the stored factors, the error of
the exact rank-r truncation (what rounding to --dtype adds is the
difference) and the energy kept; then the totals. --json prints it as JSON
(docs/LORA.md). --dry-run prints ranks and sizes from the headers alone,
before any SVD.

From an archive: given an archive made by compress against BASE instead of
FT, the projections it stores as a low-rank delta (methods deltacome and
lowrank) are factored from the delta the archive holds, truncated to r (or
to the rank the archive keeps, if smaller); tensors it stores bit-exact
are decoded and treated as from FT. No full checkpoint is rebuilt. The
errors are then against the archive's delta; the report adds the
archive's own error against the fine-tune's, recorded by compress. BASE
is checked against the archive's record, as in reconstruct. Archives of
--method bitdelta or --lossless are refused: give the fine-tune.

OUTDIR must not exist or be empty; it appears only when complete.` + exitCodesHelp,
		Example: `  deltacome export-lora --rank 16 ./Llama-2-7b ./my-ft ./my-ft-lora
  deltacome export-lora --rank 64 --rank-mlp 32 --dtype f16 ./base ./ft ./adapter
  deltacome export-lora --dry-run --rank 128 ./base ./ft
  deltacome export-lora --rank 32 ./base my-ft.dcm ./my-ft-lora`,
		Args: func(cmd *cobra.Command, args []string) error {
			if o.dryRun && len(args) == 2 {
				return nil
			}
			return exactArgs(3)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			outDir := ""
			if len(args) == 3 {
				outDir = args[2]
			}
			return runExportLoRA(cmd.Context(), o, args[0], args[1], outDir, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	o.addFlags(cmd)
	return cmd
}

func runExportLoRA(ctx context.Context, o *exportLoRAOptions, base, ft, outDir string, stdout, stderr io.Writer) error {
	eo, err := o.validate()
	if err != nil {
		return err
	}
	start := time.Now()
	var res *engine.LoRAResult
	if o.dryRun {
		res, err = engine.PlanLoRA(base, ft, *eo)
	} else {
		p := newProgress(stderr, o.quiet || o.json, "export-lora", tensorLine)
		p.warn = !o.quiet && !o.json
		eo.Progress = p
		res, err = engine.ExportLoRA(ctx, base, ft, outDir, *eo)
		p.finish()
	}
	if err != nil {
		return err
	}
	switch {
	case o.json:
		return writeJSON(stdout, toLoRAJSON(res, o, base, ft, outDir, time.Since(start)))
	case o.quiet:
		return nil
	}
	return renderLoRA(stdout, res, o, outDir)
}

// loraJSON is export-lora --json (schema in docs/LORA.md).
type loraJSON struct {
	Schema      string               `json:"schema"`
	Base        string               `json:"base"`
	FineTune    string               `json:"fine_tune"`
	OutDir      string               `json:"out_dir,omitempty"`
	DryRun      bool                 `json:"dry_run"`
	FromArchive bool                 `json:"from_archive"`
	Settings    loraSettingsJSON     `json:"settings"`
	Config      engine.AdapterConfig `json:"adapter_config"`
	Modules     []loraModuleJSON     `json:"modules"`
	Unchanged   []string             `json:"unchanged"`
	Others      []loraOtherJSON      `json:"others"`
	Totals      loraTotalsJSON       `json:"totals"`
	Seconds     float64              `json:"seconds"`
	Warnings    []engine.Warning     `json:"warnings"`
}

type loraSettingsJSON struct {
	Rank          int    `json:"rank"`
	RankAttn      int    `json:"rank_attn,omitempty"`
	RankMLP       int    `json:"rank_mlp,omitempty"`
	DType         string `json:"dtype"`
	ModulesToSave bool   `json:"modules_to_save"`
	SVD           string `json:"svd"`
}

type loraModuleJSON struct {
	Module    string `json:"module"`
	Tensor    string `json:"tensor"`
	Role      string `json:"role"`
	Out       int    `json:"out_features"`
	In        int    `json:"in_features"`
	Rank      int    `json:"rank"`
	AskedRank int    `json:"asked_rank"`
	Bytes     int64  `json:"bytes"`
	OrigBytes int64  `json:"original_bytes"`
	// The measurements are null in a dry run.
	DeltaNorm  *float64 `json:"delta_norm"`
	RelError   *float64 `json:"rel_error"`
	TruncError *float64 `json:"truncation_error"`
	EnergyKept *float64 `json:"energy_kept"`
	// ArchiveRelError is present from an archive only.
	ArchiveRelError *float64 `json:"archive_rel_error,omitempty"`
}

type loraOtherJSON struct {
	Name   string   `json:"name"`
	Role   string   `json:"role"`
	DType  string   `json:"dtype"`
	Shape  []uint64 `json:"shape"`
	Bytes  int64    `json:"bytes"`
	Share  float64  `json:"energy_share"`
	Saved  bool     `json:"in_adapter"`
	Reason string   `json:"why"`
}

type loraTotalsJSON struct {
	Modules         int      `json:"modules"`
	LoRABytes       int64    `json:"lora_bytes"`
	SavedBytes      int64    `json:"modules_to_save_bytes"`
	HeaderBytes     int64    `json:"header_bytes"`
	AdapterBytes    int64    `json:"adapter_bytes"`
	OrigBytes       int64    `json:"projection_original_bytes"`
	RelError        *float64 `json:"rel_error"`
	EnergyKept      *float64 `json:"energy_kept"`
	ProjShare       *float64 `json:"projection_energy_share"`
	ArchiveRelError *float64 `json:"archive_rel_error,omitempty"`
}

func toLoRAJSON(res *engine.LoRAResult, o *exportLoRAOptions, base, ft, outDir string, took time.Duration) loraJSON {
	measured := func(x float64) *float64 {
		if o.dryRun {
			return nil
		}
		return &x
	}
	fromArchive := func(x float64) *float64 {
		if !res.FromArchive {
			return nil
		}
		return measured(x)
	}
	j := loraJSON{Schema: "deltacome.lora/1", Base: base, FineTune: ft, OutDir: outDir, DryRun: o.dryRun, FromArchive: res.FromArchive,
		Settings: loraSettingsJSON{Rank: o.rank, RankAttn: o.rankAttn, RankMLP: o.rankMLP, DType: strings.ToLower(o.dtype),
			ModulesToSave: o.modulesToSave, SVD: o.svd},
		Config: res.Config, Unchanged: append([]string{}, res.Unchanged...), Modules: []loraModuleJSON{}, Others: []loraOtherJSON{},
		Totals: loraTotalsJSON{Modules: len(res.Modules), LoRABytes: res.LoRABytes, SavedBytes: res.SavedBytes, HeaderBytes: res.HeaderBytes,
			AdapterBytes: res.AdapterBytes, RelError: measured(res.RelError), EnergyKept: measured(res.EnergyKept), ProjShare: measured(res.ProjShare),
			ArchiveRelError: fromArchive(res.ArchiveRelError)},
		Seconds: took.Seconds(), Warnings: append([]engine.Warning{}, res.Warnings...)}
	for _, m := range res.Modules {
		j.Totals.OrigBytes += m.OrigBytes
		j.Modules = append(j.Modules, loraModuleJSON{Module: m.Module, Tensor: m.Tensor, Role: m.Role, Out: m.Out, In: m.In,
			Rank: m.Rank, AskedRank: m.AskedRank, Bytes: m.Bytes, OrigBytes: m.OrigBytes, DeltaNorm: measured(m.DeltaNorm),
			RelError: measured(m.RelError), TruncError: measured(m.TruncError), EnergyKept: measured(m.EnergyKept),
			ArchiveRelError: fromArchive(m.ArchiveRelError)})
	}
	for _, x := range res.Others {
		j.Others = append(j.Others, loraOtherJSON{Name: x.Name, Role: x.Role, DType: x.DType, Shape: x.Shape, Bytes: x.Bytes,
			Share: x.Share, Saved: x.Saved, Reason: x.Why})
	}
	return j
}

// renderLoRA prints the report as tables.
func renderLoRA(out io.Writer, res *engine.LoRAResult, o *exportLoRAOptions, outDir string) error {
	if o.dryRun {
		fmt.Fprintf(out, "plan: from the headers only, nothing read past them, nothing written; every projection taken as changed\n\n")
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	archived := res.FromArchive && !o.dryRun
	switch {
	case o.dryRun:
		fmt.Fprintln(tw, "module\tout x in\trank\tbytes\t")
	case archived:
		fmt.Fprintln(tw, "module\tout x in\trank\tbytes\terror\ttruncation\tenergy kept\tarchive error\t")
	default:
		fmt.Fprintln(tw, "module\tout x in\trank\tbytes\terror\ttruncation\tenergy kept\t")
	}
	for _, m := range res.Modules {
		fmt.Fprintf(tw, "%s\t%dx%d\t%d\t%s\t", m.Module, m.Out, m.In, m.Rank, size(m.Bytes))
		if !o.dryRun {
			fmt.Fprintf(tw, "%.4f\t%.4f\t%.4f\t", m.RelError, m.TruncError, m.EnergyKept)
		}
		if archived {
			fmt.Fprintf(tw, "%.4f\t", m.ArchiveRelError)
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(res.Others) > 0 {
		fmt.Fprintln(out, "\nchanged tensors outside the projections:")
		tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "tensor\trole\tbytes\tenergy share\tin adapter\twhy\t")
		for _, x := range res.Others {
			in := "left out"
			if x.Saved {
				in = "modules_to_save"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.2f%%\t%s\t%s\t\n", x.Name, x.Role, size(x.Bytes), 100*x.Share, in, x.Why)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(out)
	if len(res.Unchanged) > 0 {
		fmt.Fprintf(out, "unchanged projections, no factors: %d (%s)\n", len(res.Unchanged), strings.Join(res.Unchanged, ", "))
	}
	where := outDir
	if o.dryRun {
		where = "predicted"
	}
	fmt.Fprintf(out, "adapter (%s): %d modules, r %d, %s factors; %s = %s (factors %s, modules_to_save %s, header %s)\n",
		where, len(res.Modules), res.Config.R, strings.ToLower(o.dtype), engine.AdapterWeightsFile, size(res.AdapterBytes),
		size(res.LoRABytes), size(res.SavedBytes), size(res.HeaderBytes))
	var err error
	if !o.dryRun {
		_, err = fmt.Fprintf(out, "projection error |Delta - B A| / |Delta|: %.4f; energy kept %.4f; the projections hold %.2f%% of the delta's energy\n",
			res.RelError, res.EnergyKept, 100*res.ProjShare)
	}
	if archived && err == nil {
		_, err = fmt.Fprintf(out, "from the archive: Delta above is the archive's delta, whose own error against the fine-tune's is %.4f (recorded by compress)\n",
			res.ArchiveRelError)
	}
	if o.dryRun {
		for _, w := range res.Warnings {
			if err == nil {
				_, err = fmt.Fprintln(out, "warning:", w.Message)
			}
		}
	}
	return err
}

package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltacome/deltacome/internal/engine"
	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/pkg/archive"
)

type compressOptions struct {
	encodingFlags
	lossless bool
	method   string
	ratio    float64
	maxError float64
	budget   string
	quiet    bool
	json     bool
	dryRun   bool
	svd      string
	force    bool
	// calibration is --calibration: the input statistics file, "" for
	// none.
	calibration string
	shard       string
	// maxMemory is --max-memory as given ("" for the default).
	maxMemory string
	// changed reports whether a flag was given on the command line; nil
	// means none was (tests that build options directly).
	changed func(name string) bool
}

func (o *compressOptions) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVar(&o.lossless, "lossless", false, "store every tensor bit-exact (XOR with the base, zstd): larger, no quality loss")
	f.Float64Var(&o.ratio, "ratio", 16, "compression ratio of each projection: its stored bytes <= fp16 size / ratio")
	f.Float64Var(&o.maxError, "max-error", 0, "instead of --ratio: the smallest archive whose aggregate projection error is at most this (0 < E < 1); reads every projection twice (see Trade-offs)")
	f.StringVar(&o.budget, "budget", "", "how the bytes are spread over the projections: matrix (one ratio for all; the default with --ratio) or model (each projection's budget within 0.75-1.5x of its share, chosen for the least aggregate error; the default with --max-error)")
	f.StringVar(&o.method, "method", engine.MethodDeltaCoMe, "how projections are stored: deltacome (quantized singular vectors), bitdelta (1 bit/weight + a scale) or lowrank (bf16 top-r factors); see Trade-offs")
	o.encodingFlags.addFlags(f)
	f.StringVar(&o.svd, "svd", "auto", `truncated SVD route: "exact", "randomized" (block Krylov, several times faster on large matrices, under 1% more error) or "auto" (randomized from a short side of 1536 with OpenBLAS, 512 in pure Go; exact below)`)
	f.BoolVarP(&o.quiet, "quiet", "q", false, "print nothing but errors")
	f.BoolVar(&o.json, "json", false, "print a JSON summary on stdout instead of text (and no progress)")
	f.BoolVarP(&o.dryRun, "dry-run", "n", false, "read the checkpoints' headers only, print the plan and the predicted archive size, write nothing (OUT may be omitted)")
	f.BoolVarP(&o.force, "force", "f", false, "replace OUT if it exists (an input is never replaced)")
	f.StringVar(&o.maxMemory, "max-memory", "", "memory to work within, such as 2GiB (default: 2 GiB up to 6 CPUs, 341 MiB more per CPU beyond): sizes the tensors encoded at once and the runtime's memory limit; a smaller cap is slower, never an error, and the archive is the same; --dry-run prints the expected peak")
	f.StringVar(&o.calibration, "calibration", "", "input statistics (a safetensors file of Gram matrices per input site, made by scripts/calibrate.py; docs/CALIBRATION.md): each projection is also encoded with GPTQ and a least-squares refit weighted by its inputs, and keeps the result of lower output error (grid sym, --ratio only)")
	f.StringVar(&o.shard, "shard", "", "write part i of n (i/n, counting from 1) of the archive to OUT: a cost-balanced share of the work; 'deltacome merge' joins the n parts (see Parts)")
}

// given reports whether the flag name was set on the command line.
func (o *compressOptions) given(name string) bool { return o.changed != nil && o.changed(name) }

// notApplying names the given flags that the chosen mode or method ignores,
// so that a contradiction is refused instead of silently ignored.
func (o *compressOptions) notApplying() (flags []string, why string) {
	var ignored []string
	switch {
	case o.lossless:
		ignored, why = []string{"ratio", "max-error", "budget", "method", "schedule", "group-size", "grid", "refit", "include", "exclude", "svd", "calibration"}, "--lossless stores every tensor bit-exact"
	case o.method == engine.MethodBitDelta:
		ignored, why = []string{"ratio", "max-error", "budget", "schedule", "group-size", "grid", "refit", "svd", "calibration"}, "--method bitdelta stores one sign per weight and one scale, a fixed size"
	case o.method == engine.MethodLowRank:
		ignored, why = []string{"max-error", "budget", "schedule", "group-size", "grid", "refit", "svd", "calibration"}, "--method lowrank keeps bf16 factors from the exact SVD at the --ratio budget"
	case o.grid == engine.GridAsym:
		ignored, why = []string{"refit", "calibration"}, "--grid asym has no refit and no calibrated encode"
	}
	for _, f := range ignored {
		if o.given(f) {
			flags = append(flags, "--"+f)
		}
	}
	return flags, why
}

func (o *compressOptions) validate() (*engine.CompressOptions, error) {
	eo := &engine.CompressOptions{Mode: engine.ModeDeltaCoMe, Ratio: o.ratio, GroupSize: o.resolvedGroupSize(),
		Workers: o.workers, Tool: tool()}
	if o.lossless {
		eo.Mode = engine.ModeLossless
	}
	switch {
	case !slices.Contains(engine.Methods, o.method):
		return nil, usageError{fmt.Errorf("--method must be one of %s, got %q", strings.Join(engine.Methods, ", "), o.method)}
	case o.lossless && o.method != engine.MethodDeltaCoMe:
		return nil, usageError{fmt.Errorf("--method %s compresses projections lossily; it cannot be combined with --lossless", o.method)}
	}
	eo.Method = o.method
	if o.method == engine.MethodDeltaCoMe && !o.lossless {
		eo.Grid = o.grid
		if o.grid == engine.GridSym {
			eo.Refit, eo.Calibration = o.refit, o.calibration
		}
	}
	if flags, why := o.notApplying(); len(flags) > 0 {
		return nil, usageError{fmt.Errorf("%s does not apply: %s", strings.Join(flags, ", "), why)}
	}
	if !(o.ratio >= 1) || math.IsInf(o.ratio, 0) {
		return nil, usageError{fmt.Errorf("--ratio must be a number >= 1 (fp16 size / stored size of each projection), got %v", o.ratio)}
	}
	if o.given("max-error") {
		switch {
		case o.given("ratio"):
			return nil, usageError{fmt.Errorf("--max-error and --ratio cannot be combined: --ratio fixes each projection's size and the error follows, --max-error fixes the aggregate error and chooses the sizes")}
		case !(o.maxError > 0 && o.maxError < 1):
			return nil, usageError{fmt.Errorf("--max-error must be a relative error between 0 and 1 (such as 0.3), got %v", o.maxError)}
		case o.shard != "":
			return nil, usageError{fmt.Errorf("--max-error cannot be combined with --shard: it chooses every projection's size from all of them; use --ratio for parts")}
		}
		eo.MaxError = o.maxError
	}
	if o.given("budget") {
		switch {
		case !slices.Contains(engine.BudgetModes, o.budget):
			return nil, usageError{fmt.Errorf("--budget must be one of %s, got %q", strings.Join(engine.BudgetModes, ", "), o.budget)}
		case o.budget == engine.BudgetModel && o.shard != "":
			return nil, usageError{fmt.Errorf("--budget model cannot be combined with --shard: it chooses every projection's size from all of them")}
		}
		eo.Budget = o.budget
	}
	if o.calibration != "" {
		switch {
		case o.given("max-error"):
			return nil, usageError{fmt.Errorf("--calibration cannot be combined with --max-error: the target is met on data-free errors; give --ratio")}
		case o.given("budget") && o.budget == engine.BudgetModel:
			return nil, usageError{fmt.Errorf("--calibration cannot be combined with --budget model: it spreads the bytes by data-free errors")}
		}
	}
	eo.Overwrite = o.force
	var err error
	if o.maxMemory != "" {
		if eo.MaxMemory, err = parseSize(o.maxMemory); err != nil {
			return nil, usageError{fmt.Errorf("--max-memory: %w", err)}
		}
	}
	if eo.Schedule, eo.Select, err = o.encodingFlags.parse(); err != nil {
		return nil, err
	}
	if eo.SVD, err = linalg.ParseRoute(o.svd); err != nil {
		return nil, usageError{fmt.Errorf("--svd: %w", err)}
	}
	if o.shard != "" {
		if eo.Shard, err = parseShard(o.shard); err != nil {
			return nil, err
		}
	}
	return eo, nil
}

// parseShard parses --shard i/n.
func parseShard(s string) (engine.Shard, error) {
	is, ns, ok := strings.Cut(s, "/")
	i, ierr := strconv.Atoi(is)
	n, nerr := strconv.Atoi(ns)
	switch {
	case !ok || ierr != nil || nerr != nil:
		return engine.Shard{}, usageError{fmt.Errorf("--shard %q: want i/n, part i of n counting from 1, such as 2/8", s)}
	case n < 1 || n > archive.MaxParts:
		return engine.Shard{}, usageError{fmt.Errorf("--shard %q: the part count must be 1 to %d", s, archive.MaxParts)}
	case i == 0:
		return engine.Shard{}, usageError{fmt.Errorf("--shard %q: parts count from 1; from a 0-based index such as JOB_COMPLETION_INDEX give $((JOB_COMPLETION_INDEX + 1))/%d", s, n)}
	case i < 1 || i > n:
		return engine.Shard{}, usageError{fmt.Errorf("--shard %q: the part must be 1 to %d", s, n)}
	}
	return engine.Shard{Index: i, Count: n}, nil
}

func newCompressCmd() *cobra.Command {
	o := &compressOptions{}
	cmd := &cobra.Command{
		Use:   "compress BASE FT OUT",
		Short: "Store a fine-tune FT as a compressed delta to BASE in the archive OUT",
		Long: `Compress stores the fine-tune FT as a delta to BASE in one archive file OUT
(itself a valid safetensors file).

BASE and FT are .safetensors files or Hugging Face model folders (sharded
with model.safetensors.index.json or not), in bf16, f16 or f32.

Each linear projection is stored as a truncated SVD of its delta, with the
singular vectors quantized: more bits for larger singular values
(Delta-CoMe). By default the projections are every 2-D floating-point
*.weight inside a numbered transformer block (model.layers.N.,
transformer.h.N., blocks.N., layer.N.), whatever the family calls it:
q_proj ... down_proj, c_attn, query_key_value, fused qkv, MoE experts and
shared experts; embeddings, position tables, norms, output heads and MoE
routers inside a block are not projections. --include replaces this rule
with your patterns; --exclude removes names from either.

Every other tensor is stored bit-exact: nothing for tensors equal to the
base, XOR with the base then zstd for changed ones, whole for those the
base lacks or has in another shape (an embedding grown by added tokens; a
warning names them). The other
files of an FT folder (config.json, tokenizer files, README.md, LICENSE,
dotfiles; up to 64 MiB each) are carried along, byte for byte; weights in
other formats (.bin, .pt, .gguf, ...) and subfolders are not, and a warning
names each.

Trade-offs:
  --ratio     higher ratio: smaller archive, larger error. Each projection's
              stored bytes (codes, scales, singular values) are at most its
              fp16 size / ratio, counted from what is written. 16 is the
              paper's setting. On the bundled test pair (a math fine-tune)
              the task accuracy is 1.000 at 8, 0.999 at 16 and 0.998 at 32
              (the fine-tune: 1.000); harder fine-tunes lose more.
  --max-error instead of --ratio, a quality target: the smallest archive
              found whose aggregate projection error, sqrt(sum |Delta -
              Delta_hat|^2 / sum |Delta|^2) as the archive records it, is at
              most E (0 < E < 1). --budget model (default) gives projections
              whose deltas are cheap to approximate fewer bytes and hard
              ones more, each within 0.75-1.5x of an even share; --budget
              matrix gives all one ratio (the ladder's, in 9% steps). It
              costs a first pass over the projections (one SVD each and the
              allocation at 57 budgets, ratios 8 to 1024) before the encoding
              one: about 2.5x the time of a --ratio compress on small models,
              less where the SVD dominates. --dry-run runs that pass and prints the
              estimated size. On the bundled pair, --max-error 0.2934 (the
              error of --ratio 16) stores the projections in 11% fewer bytes
              (docs/TARGET.md); v_proj gets 20% fewer, and whether that
              costs task accuracy is not yet measured.
  --budget    matrix: every projection gets the same ratio. model: each
              projection's budget is chosen within 0.75-1.5x of its share
              for the least aggregate error, the total within the shares'
              sum (with --ratio the per-model promise: the projections
              together take at most fp16 size / ratio; one matrix may take
              up to 1.41x its share). On the bundled pairs at ratios 16-64 it
              lowers the error by 0.7-6% at equal bytes, partly by giving
              v_proj fewer bytes (docs/TARGET.md); it needs the first pass
              --max-error has. Default: matrix with --ratio, model with
              --max-error.
  --schedule  auto: choose each singular vector's width from {0,1,2,3,4,8}
              bits to minimise the measured error within the budget (best).
              paper: the Delta-CoMe paper's 8 bit x 2, 3 bit x 32, 2 bit for
              the rest, fitted to each matrix's budget. A list such as
              8:2,3:32,2:rest fixes the bands yourself.
  --grid      sym (default): each kept singular vector is quantized on its
              own symmetric grid (levels at odd multiples of one bf16 scale,
              no minimum), the singular value folded into u's scale: 4 bytes
              of scales per pair instead of 4 per group of 128 plus a
              float32 sigma, so more pairs fit the same bytes. asym: the
              first format's grid (bf16 scale and minimum per --group-size
              group, float32 sigma; archive kind lowrank), kept so that
              comparisons can be rerun. docs/FIDELITY.md has the numbers.
  --refit     rounds of alternating least squares after quantizing (grid
              sym; default 0, off): given the quantized V, U·S is refitted
              to the delta by least squares in the span of the SVD (k x k
              normal equations, no product of the full matrix) and
              requantized, then V likewise; each matrix keeps its round of
              least error. One round lowers the error at the same bytes
              (docs pair at ratio 16: 0.570 -> 0.556) but adds about a third
              to compress's CPU time on 7B-sized matrices; later rounds cost
              as much each and gain less (docs/FIDELITY.md).
  --calibration STATS
              input statistics of the fine-tune (scripts/calibrate.py; see
              docs/CALIBRATION.md): each projection with an input site in
              STATS is also encoded with its inputs' Gram matrix H (GPTQ on
              the right vectors, a least-squares refit of U·S under H, GPTQ
              on U·S), at the data-free widths and bytes, and keeps
              whichever result has the lower output error tr(E H E^T).
              Opt-in: statistics must be measured first, on text from the
              fine-tune's own domain at best, and H costs memory (12 bytes
              per input pair while its matrix is encoded). Grid sym and
              --ratio only (not --max-error, not --budget model).
  --method    deltacome (default): the above, the smallest error at a given
              size. lowrank: the top-r singular vectors in bf16, r the
              largest rank within the --ratio budget, as LoRA extraction
              tools do; no quantization, so fewer vectors fit and the error
              is larger. bitdelta: sign(Delta) at 1 bit per weight and one
              scale, mean |Delta|, per matrix (BitDelta); its size is fixed
              (about fp16 size / 16) and --ratio, --schedule, --group-size do
              not apply. On the bundled test pair at ratio 16 the projection
              error is 0.29 for deltacome, 0.52 for lowrank and 0.65 for
              bitdelta; "deltacome compare" measures all three on yours.
  --lossless  every tensor bit-exact; typically 1.3-2x smaller than FT.

OUT is written under a temporary name and renamed when complete. An
existing OUT is refused unless --force is given; an OUT that is one of the
inputs, or lies inside an input folder, is always refused. Flags that the
chosen mode or method would ignore (--ratio with --lossless, --schedule
with --method bitdelta, ...) are refused rather than ignored.

Output: one line per tensor on stderr, in the manner of llama-quantize
(position, name, shape, dtype, how it is stored, bytes before -> after, and
the relative error of lossy ones), with a progress bar (rate, ETA) below the
lines when stderr is a terminal; then the totals: original size, archive
size on disk, measured ratio, error, time. --quiet prints nothing; --json
prints only a JSON summary on stdout.

--dry-run reads the checkpoints' headers only and prints the plan: which
tensors would be stored lossily, each one's exact byte budget, and bounds
for the rest, whose size depends on bytes the plan does not read (a tensor
equal to its base costs nothing, a changed one what zstd makes of it),
and the peak memory it expects.

Memory: a projection of more than 64Mi weights (a 70B or 405B MLP matrix)
is never held whole in float32: its delta is read from the mapped
checkpoints a panel of rows at a time, and the pages read are released.
--max-memory (default 2 GiB up to 6 CPUs, 341 MiB more per CPU beyond)
sets how many tensors are encoded at once and the runtime's memory limit;
below what one tensor needs, compress runs slower, never fails for it, and
the archive is the same.

Parts: --shard i/n writes part i of n to OUT instead of the archive: a
share of the tensors chosen from the checkpoints' headers and the flags
alone, so that n workers given the same inputs and flags split the work
with no coordinator, balanced by the estimated cost of each tensor (the
SVDs of the large projections dominate). "deltacome merge" joins the n
parts into the archive this command writes without --shard, byte for
byte. With --dry-run, --shard i/n also prints each part's share of the
work, to pick n. docs/DISTRIBUTED.md has recipes for Kubernetes, Slurm,
GitHub Actions and xargs.` + exitCodesHelp,
		Example: `  deltacome compress base.safetensors math.safetensors math.dcm
  deltacome compress --ratio 32 --schedule paper meta-llama/Llama-2-7b ./my-ft my-ft.dcm
  deltacome compress --lossless ./base ./ft ft-exact.dcm
  deltacome compress --dry-run --ratio 32 ./base ./ft
  deltacome compress --max-error 0.3 ./base ./ft ft.dcm
  deltacome compress --max-memory 3GiB ./llama-70b ./ft-70b ft-70b.dcm
  deltacome compress --shard 2/8 ./base ./ft ft.part2.dcm
  deltacome compress --calibration ft-stats.safetensors ./base ./ft ft.dcm`,
		Args: func(cmd *cobra.Command, args []string) error {
			if o.dryRun && len(args) == 2 {
				return nil
			}
			return exactArgs(3)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			o.changed = cmd.Flags().Changed
			if o.dryRun {
				return runDryRun(cmd.Context(), o, args[0], args[1], cmd.OutOrStdout())
			}
			return runCompress(cmd.Context(), o, args[0], args[1], args[2], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	o.addFlags(cmd)
	return cmd
}

// compressJSON is the --json summary.
type compressJSON struct {
	Archive     string  `json:"archive"`
	Shard       string  `json:"shard,omitempty"`
	Mode        string  `json:"mode"`
	Method      string  `json:"method,omitempty"`
	Tensors     int     `json:"tensors"`
	Lossy       int     `json:"lowrank_tensors"`
	OrigBytes   int64   `json:"original_bytes"`
	ArchiveSize int64   `json:"archive_bytes"`
	Ratio       float64 `json:"ratio"`
	RelError    float64 `json:"rel_error"`
	// MaxError is --max-error, absent without it; TargetSteps then counts
	// the projections re-encoded one budget up for missing their share.
	MaxError    float64 `json:"max_error,omitempty"`
	TargetSteps *int    `json:"target_steps,omitempty"`
	Seconds     float64 `json:"seconds"`
	// Warnings is never null, so that scripts can count it.
	Warnings []engine.Warning `json:"warnings"`
}

func runCompress(ctx context.Context, o *compressOptions, base, ft, out string, stdout, stderr io.Writer) error {
	eo, err := o.validate()
	if err != nil {
		return err
	}
	p := newProgress(stderr, o.quiet || o.json, "compress", tensorLine)
	p.warn = !o.quiet
	eo.Progress = p
	start := time.Now()
	sum, err := engine.Compress(ctx, base, ft, out, *eo)
	p.finish()
	if err != nil {
		return err
	}
	res := compressJSON{Archive: out, Mode: eo.Mode, Method: eo.Method, Tensors: sum.Tensors, Lossy: sum.LossyTensors,
		OrigBytes: sum.OrigBytes, ArchiveSize: sum.ArchiveSize, Ratio: float64(sum.OrigBytes) / float64(sum.ArchiveSize),
		RelError: sum.AggRelError, MaxError: eo.MaxError, Seconds: time.Since(start).Seconds(), Warnings: append([]engine.Warning{}, sum.Warnings...)}
	if eo.MaxError > 0 {
		res.TargetSteps = &sum.TargetSteps
	}
	what := "archive"
	if eo.Shard != (engine.Shard{}) {
		res.Shard, what = eo.Shard.String(), "part"
	}
	switch {
	case o.json:
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	case o.quiet:
		return nil
	}
	if res.Shard != "" {
		fmt.Fprintf(stderr, "%s: part %s of the archive; merge it with the other parts (deltacome merge)\n", out, res.Shard)
	}
	target := ""
	if res.MaxError > 0 {
		target = fmt.Sprintf(" (--max-error %g; %d re-encodings at a larger budget)", res.MaxError, *res.TargetSteps)
	}
	_, err = fmt.Fprintf(stderr, "%s: %d tensors (%d lossy)\n  original size  %s\n  %-14s %s (measured on disk)\n  ratio          %.2f\n  projection err %.4f%s\n  time           %.1fs\n",
		out, res.Tensors, res.Lossy, size(res.OrigBytes), what+" size", size(res.ArchiveSize), res.Ratio, res.RelError, target, res.Seconds)
	return err
}

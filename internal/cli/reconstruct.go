package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltacome/deltacome/internal/engine"
)

type reconstructOptions struct {
	force   bool
	workers int
	quiet   bool
}

func (o *reconstructOptions) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVar(&o.force, "force", false, "apply the archive to a BASE whose fingerprint differs from the one it was made against")
	f.IntVar(&o.workers, "workers", 0, "tensors processed at once (0: one per CPU)")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "print nothing but errors")
}

func (o *reconstructOptions) validate() error {
	if o.workers < 0 {
		return usageError{fmt.Errorf("--workers must be >= 0, got %d", o.workers)}
	}
	return nil
}

func newReconstructCmd() *cobra.Command {
	o := &reconstructOptions{}
	cmd := &cobra.Command{
		Use:     "reconstruct BASE ARCHIVE OUTDIR",
		Aliases: []string{"apply"},
		Short:   "Write the fine-tune stored in ARCHIVE, applied to BASE, into OUTDIR",
		Long: `Reconstruct writes the fine-tune stored in ARCHIVE as a checkpoint in the
folder OUTDIR: the same tensor names, dtypes, shapes, shard files, index json
and side files (config.json, tokenizer files) as the original fine-tune, so
transformers and vLLM load it unchanged. A single-file fine-tune comes back
as one file of the same name inside OUTDIR.

Tensors stored losslessly come back bit-exact (checked against their
SHA-256); projections stored as a compressed delta come back as
BASE + U diag(sigma) V^T rounded to the fine-tune's dtype.

BASE must be the checkpoint the archive was made against: every base tensor
read is checked against the archive's record, and another base is refused
with both fingerprints named (--force applies anyway). OUTDIR must not
exist or be empty; it appears only when complete.` + exitCodesHelp,
		Example: `  deltacome reconstruct base.safetensors math.dcm ./math
  deltacome apply ./Llama-2-7b my-ft.dcm ./my-ft`,
		Args: exactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runReconstruct(cmd.Context(), o, args[0], args[1], args[2], cmd.ErrOrStderr())
		},
	}
	o.addFlags(cmd)
	return cmd
}

func runReconstruct(ctx context.Context, o *reconstructOptions, base, arch, outDir string, stderr io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	p := newProgress(stderr, o.quiet, "reconstruct", reconstructLine)
	start := time.Now()
	sum, err := engine.Reconstruct(ctx, base, arch, outDir, engine.ReconstructOptions{Force: o.force, Workers: o.workers, Progress: p})
	p.finish()
	if err != nil || o.quiet {
		return err
	}
	_, err = fmt.Fprintf(stderr, "%s: %d tensors, %s in %d files, %.1fs\n", outDir, sum.Tensors, size(sum.Bytes), len(sum.Files), time.Since(start).Seconds())
	return err
}

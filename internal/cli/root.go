package cli

import (
	"context"
	"errors"
	"io"

	"github.com/spf13/cobra"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/internal/engine"
	"github.com/deltacome/deltacome/pkg/archive"
	"github.com/deltacome/deltacome/pkg/stfile"
)

// Version is the tool version, set at build time with
// -ldflags "-X github.com/deltacome/deltacome/internal/cli.Version=...".
var Version = "0.1.0-dev"

// Exit codes, the same for every command.
const (
	ExitOK          = 0
	ExitFailure     = 1
	ExitUsage       = 2
	ExitBadInput    = 3
	ExitVerify      = 4
	ExitInterrupted = 130
)

// exitCodesHelp is appended to every command's long help.
const exitCodesHelp = `
Exit codes:
  0    success
  1    failure (I/O error, full disk, ...)
  2    usage error (bad flags or arguments, output folder not empty)
  3    bad or corrupt input (malformed checkpoint or archive, checksum
       mismatch, wrong base, shape mismatch, NaN/Inf in a delta)
  4    verification failed (verify: the reconstruction differs from the
       fine-tune where it must not, or its error is above --max-error)
  130  interrupted`

// usageError marks errors in flags and arguments.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// ExitCode maps an error returned by a command to the process exit code.
func ExitCode(err error) int {
	var ue usageError
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, context.Canceled):
		return ExitInterrupted
	case errors.Is(err, engine.ErrVerify):
		return ExitVerify
	case errors.As(err, &ue), errors.Is(err, engine.ErrUsage), errors.Is(err, engine.ErrExists):
		return ExitUsage
	case errors.Is(err, engine.ErrInput), errors.Is(err, engine.ErrWrongBase),
		errors.Is(err, archive.ErrFormat), errors.Is(err, archive.ErrVersion), errors.Is(err, archive.ErrChecksum),
		errors.Is(err, stfile.ErrFormat), errors.Is(err, checkpoint.ErrFormat), errors.Is(err, checkpoint.ErrMissingShard):
		return ExitBadInput
	}
	return ExitFailure
}

// NewRootCmd builds the deltacome command tree writing to out and errOut.
func NewRootCmd(out, errOut io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "deltacome",
		Short: "Store fine-tuned LLMs as their base plus a compressed delta",
		Long: `deltacome stores a fine-tuned model as its base model plus a compressed
delta (Delta-CoMe: truncated SVD of each projection's delta, singular vectors
quantized with more bits for larger singular values), and turns the delta
back into full weights that transformers and vLLM load unchanged.

  deltacome compress BASE FT OUT.dcm      make an archive
  deltacome reconstruct BASE OUT.dcm DIR  get the fine-tune back
  deltacome inspect OUT.dcm               see what an archive holds
  deltacome verify BASE FT OUT.dcm        check an archive against FT
  deltacome compare BASE FT               Delta-CoMe against BitDelta and low rank
` + exitCodesHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	addProfileFlag(root)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newCompressCmd(), newReconstructCmd(), newInspectCmd(), newVerifyCmd(),
		newCompareCmd(), newFingerprintCmd(), newVersionCmd(),
		newSynthCmd(), newGEMMRateCmd()) // the last two hidden: benchmark fixtures and floors
	documentCompletion(root)
	return root
}

// exactArgs is cobra.ExactArgs with the error marked as a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

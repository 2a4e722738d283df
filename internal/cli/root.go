package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

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
  deltacome compress --shard i/n BASE FT PART   part i of n of it, on worker i
  deltacome merge PART... OUT.dcm         join the parts into the archive
  deltacome reconstruct BASE OUT.dcm DIR  get the fine-tune back
  deltacome inspect OUT.dcm               see what an archive holds
  deltacome verify BASE FT OUT.dcm        check an archive against FT
  deltacome compare BASE FT               Delta-CoMe against BitDelta and low rank
  deltacome export-lora --rank R BASE FT DIR   a PEFT LoRA adapter for LoRA servers
` + exitCodesHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// Runnable, so that an unknown command reaches Args (a usage error, exit
	// 2) instead of cobra printing the help with exit 0.
	root.Args = unknownCommand
	root.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	root.Version = Version
	root.SetVersionTemplate("deltacome {{.Version}}\n")
	root.SetOut(out)
	root.SetErr(errOut)
	addProfileFlag(root)
	root.SetFlagErrorFunc(flagError)
	root.AddCommand(newCompressCmd(), newMergeCmd(), newReconstructCmd(), newInspectCmd(), newVerifyCmd(),
		newCompareCmd(), newFingerprintCmd(), newVersionCmd(), newExportLoRACmd(),
		newSynthCmd(), newGEMMRateCmd()) // the last two hidden: benchmark fixtures and floors
	documentCompletion(root)
	return root
}

// exactArgs accepts exactly n arguments; otherwise it returns a usage error
// that names the missing arguments from the command's Use line ("missing
// OUT") or quotes the first extra one.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == n {
			return nil
		}
		usage := "usage: " + strings.TrimSuffix(cmd.UseLine(), " [flags]")
		names := strings.Fields(cmd.Use)[1:]
		if len(args) < n && len(names) >= n {
			return usageError{fmt.Errorf("missing %s (%s)", strings.Join(names[len(args):n], " and "), usage)}
		}
		if len(args) < n {
			return usageError{fmt.Errorf("%d arguments missing (%s)", n-len(args), usage)}
		}
		return usageError{fmt.Errorf("unexpected argument %q: %s takes %d (%s)", args[n], cmd.Name(), n, usage)}
	}
}

// unknownCommand is the root's Args: any argument is a command that does
// not exist.
func unknownCommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q", args[0])
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", s[0])
	}
	return usageError{errors.New(msg + "; run 'deltacome --help' for the list")}
}

// flagError marks a flag error as a usage error and says what a value must
// be in the user's terms instead of the parser's ("strconv.ParseFloat: ...").
func flagError(_ *cobra.Command, err error) error {
	var ive *pflag.InvalidValueError
	if errors.As(err, &ive) {
		want := "a valid " + ive.GetFlag().Value.Type()
		switch ive.GetFlag().Value.Type() {
		case "float64", "float32":
			want = "a number"
		case "int", "int64", "uint", "uint64":
			want = "a whole number"
		case "bool":
			want = "true or false"
		}
		err = fmt.Errorf("--%s %q: must be %s", ive.GetFlag().Name, ive.GetValue(), want)
	}
	return usageError{err}
}

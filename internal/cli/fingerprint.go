package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/deltacome/deltacome/internal/engine"
)

type fingerprintOptions struct {
	quick bool
}

func (o *fingerprintOptions) addFlags(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&o.quick, "quick", false, "from file names, sizes, modification times and headers only: no tensor bytes read")
}

func newFingerprintCmd() *cobra.Command {
	o := &fingerprintOptions{}
	cmd := &cobra.Command{
		Use:   "fingerprint CHECKPOINT...",
		Short: "Print a checkpoint's fingerprint, as archives record their base's",
		Long: `Fingerprint prints one line per checkpoint: its fingerprint, two spaces,
and the path given, like sha256sum.

By default the fingerprint is the one an archive records for its base
(see inspect): a SHA-256 over every tensor's name, dtype, shape and the
SHA-256 of its bytes. It reads every byte, so it costs about as long as
reading the checkpoint from disk; two checkpoints with the same tensors
have the same fingerprint wherever they are stored and however sharded.

--quick reads no tensor bytes: "quick:" + a SHA-256 over each file's name,
size and modification time and each shard's header. It changes whenever a
file is rewritten (a new modification time) and stays the same when nothing
was touched, which is what deciding "is this archive up to date?" needs
(scripts/batch-compress.sh uses it); it does not identify content: a copy
of the same checkpoint, with other times, has another quick fingerprint.` + exitCodesHelp,
		Example: `  deltacome fingerprint ./Llama-2-7b
  deltacome fingerprint --quick ./base ./ft-math ./ft-code`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{fmt.Errorf("fingerprint needs at least one checkpoint")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFingerprint(cmd.Context(), o, args, cmd.OutOrStdout())
		},
	}
	o.addFlags(cmd)
	return cmd
}

func runFingerprint(ctx context.Context, o *fingerprintOptions, paths []string, out io.Writer) error {
	for _, p := range paths {
		var fp string
		var err error
		if o.quick {
			fp, err = engine.QuickFingerprint(p)
		} else {
			fp, err = engine.Fingerprint(ctx, p)
		}
		if err != nil {
			return fmt.Errorf("fingerprint %s: %w", p, err)
		}
		if _, err := fmt.Fprintf(out, "%s  %s\n", fp, p); err != nil {
			return err
		}
	}
	return nil
}

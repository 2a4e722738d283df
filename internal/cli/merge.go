package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltacome/deltacome/internal/engine"
)

type mergeOptions struct {
	force bool
	quiet bool
	json  bool
}

func (o *mergeOptions) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVarP(&o.force, "force", "f", false, "replace OUT if it exists (a part is never replaced)")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "print nothing but errors")
	f.BoolVar(&o.json, "json", false, "print a JSON summary on stdout instead of text (and no progress)")
}

func newMergeCmd() *cobra.Command {
	o := &mergeOptions{}
	cmd := &cobra.Command{
		Use:   "merge PART... OUT",
		Short: "Join the parts written by compress --shard into the archive OUT",
		Long: `Merge joins the part files that "deltacome compress --shard i/n" wrote, one
per worker, into the archive OUT: byte for byte the archive one
"deltacome compress" with the same inputs and flags writes on one machine.
The parts may be given in any order.

The parts must be exactly one complete set: all n parts of one archive
(the same BASE and FT, the same flags and deltacome version, the same n),
each once. A missing part, a part given twice, or a part of another archive
is refused with exit code 3, naming each, and nothing is written.

Merge copies each tensor's stored blobs from the part that holds it, one at
a time, checking their checksums: it reads no checkpoint, and its memory
does not grow with the model. OUT is written under a temporary name and
renamed when complete; an existing OUT is refused unless --force is given.
See docs/DISTRIBUTED.md for running the parts under a scheduler.` + exitCodesHelp,
		Example: `  deltacome merge ft.part1.dcm ft.part2.dcm ft.part3.dcm ft.dcm
  deltacome merge parts/*.dcm ft.dcm`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch len(args) {
			case 0:
				return usageError{fmt.Errorf("missing PART and OUT (usage: deltacome merge PART... OUT)")}
			case 1:
				return usageError{fmt.Errorf("missing OUT after the part %s (usage: deltacome merge PART... OUT)", args[0])}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runMerge(cmd.Context(), o, args[:len(args)-1], args[len(args)-1], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	o.addFlags(cmd)
	return cmd
}

// mergeJSON is merge's --json summary (docs/JSON.md).
type mergeJSON struct {
	Archive     string  `json:"archive"`
	Parts       int     `json:"parts"`
	Tensors     int     `json:"tensors"`
	OrigBytes   int64   `json:"original_bytes"`
	ArchiveSize int64   `json:"archive_bytes"`
	Ratio       float64 `json:"ratio"`
	Seconds     float64 `json:"seconds"`
}

func runMerge(ctx context.Context, o *mergeOptions, parts []string, out string, stdout, stderr io.Writer) error {
	p := newProgress(stderr, o.quiet || o.json, "merge", tensorLine)
	start := time.Now()
	sum, err := engine.Merge(ctx, parts, out, engine.MergeOptions{Overwrite: o.force, Progress: p})
	p.finish()
	if err != nil {
		return err
	}
	res := mergeJSON{Archive: out, Parts: sum.Parts, Tensors: sum.Tensors, OrigBytes: sum.OrigBytes, ArchiveSize: sum.ArchiveSize,
		Ratio: float64(sum.OrigBytes) / float64(sum.ArchiveSize), Seconds: time.Since(start).Seconds()}
	switch {
	case o.json:
		return writeJSON(stdout, res)
	case o.quiet:
		return nil
	}
	_, err = fmt.Fprintf(stderr, "%s: %d tensors from %d parts\n  original size  %s\n  archive size   %s (measured on disk)\n  ratio          %.2f\n  time           %.1fs\n",
		out, res.Tensors, res.Parts, size(res.OrigBytes), size(res.ArchiveSize), res.Ratio, res.Seconds)
	return err
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltacome/deltacome/internal/synth"
)

type synthOptions struct {
	shape        string
	layers       int
	vocab        int
	hidden       int
	intermediate int
	kvHidden     int
	deltaScale   float64
	signalRank   int
	noiseShare   float64
	seed         uint64
	workers      int
}

func (o *synthOptions) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.shape, "shape", "llama2-7b", `base shape: "llama2-7b" or "tiny"; the flags below override parts of it`)
	f.IntVar(&o.layers, "layers", 1, "decoder layers")
	f.IntVar(&o.vocab, "vocab", 0, "vocabulary size; 0 writes the layers only (no embeddings, final norm or lm_head)")
	f.IntVar(&o.hidden, "hidden", 0, "hidden size (0: the shape's)")
	f.IntVar(&o.intermediate, "intermediate", 0, "MLP size (0: the shape's)")
	f.IntVar(&o.kvHidden, "kv-hidden", 0, "k/v projection output size (0: the shape's)")
	f.Float64Var(&o.deltaScale, "delta-scale", 0, "|Delta|/|W| of every projection (0: the shape's, 0.03)")
	f.IntVar(&o.signalRank, "signal-rank", 0, "directions of the structured part of each delta (0: the shape's)")
	f.Float64Var(&o.noiseShare, "noise-share", -1, "share of each delta's energy in full-rank noise (-1: the shape's, 0.3)")
	f.Uint64Var(&o.seed, "seed", 1, "random seed; the same seed and flags write the same bytes")
	f.IntVar(&o.workers, "workers", 0, "goroutines generating rows (0: one per CPU); the output does not depend on it")
}

func (o *synthOptions) config() (synth.Config, error) {
	var c synth.Config
	switch o.shape {
	case "llama2-7b":
		c = synth.Llama2_7B(o.layers)
	case "tiny":
		c = synth.Tiny(o.layers)
	default:
		return c, usageError{fmt.Errorf("--shape %q: want llama2-7b or tiny", o.shape)}
	}
	c.Vocab, c.Seed = o.vocab, o.seed
	for _, ov := range []struct {
		dst *int
		v   int
	}{{&c.Hidden, o.hidden}, {&c.Intermediate, o.intermediate}, {&c.KVHidden, o.kvHidden}, {&c.SignalRank, o.signalRank}} {
		if ov.v != 0 {
			*ov.dst = ov.v
		}
	}
	if o.deltaScale != 0 {
		c.DeltaScale = o.deltaScale
	}
	if o.noiseShare != -1 {
		c.NoiseShare = o.noiseShare
	}
	if o.workers < 0 {
		return c, usageError{fmt.Errorf("--workers must be >= 0, got %d", o.workers)}
	}
	return c, nil
}

func newSynthCmd() *cobra.Command {
	o := &synthOptions{}
	cmd := &cobra.Command{
		Use:    "synth DIR",
		Short:  "Write a synthetic Llama-shaped base/fine-tune pair (for benchmarks)",
		Hidden: true,
		Long: `Synth writes DIR/base and DIR/ft, two bf16 checkpoint folders shaped like a
Llama model, whose projections differ by a realistic delta: a structured part
with a slowly decaying singular spectrum plus full-rank noise, |Delta|/|W| of
0.03 by default. The bytes depend only on the flags and --seed.` + exitCodesHelp,
		Example: `  deltacome synth --layers 1 bench-data/llama2-7b-1layer
  deltacome synth --shape tiny --layers 2 --vocab 512 /tmp/tiny-pair`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSynth(cmd.Context(), o, args[0], cmd.ErrOrStderr())
		},
	}
	o.addFlags(cmd)
	return cmd
}

func runSynth(ctx context.Context, o *synthOptions, dir string, errOut io.Writer) error {
	c, err := o.config()
	if err != nil {
		return err
	}
	start := time.Now()
	if err := synth.Write(ctx, dir, c, o.workers); err != nil {
		return usageOrFailure(err)
	}
	_, err = fmt.Fprintf(errOut, "%s: base and ft written (%d layers, hidden %d, MLP %d), %.1fs\n",
		dir, c.Layers, c.Hidden, c.Intermediate, time.Since(start).Seconds())
	return err
}

// usageOrFailure marks configuration errors from synth as usage errors.
func usageOrFailure(err error) error {
	if errors.Is(err, synth.ErrConfig) {
		return usageError{err}
	}
	return err
}

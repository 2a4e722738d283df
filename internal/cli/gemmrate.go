package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/internal/svdquant"
	"github.com/deltacome/deltacome/pkg/archive"
)

type gemmRateOptions struct {
	n       int
	reps    int
	archive string
}

func newGEMMRateCmd() *cobra.Command {
	o := &gemmRateOptions{}
	cmd := &cobra.Command{
		Use:    "gemm-rate",
		Short:  "Measure the float32 GEMM rate and the compute floors of an archive (for benchmarks)",
		Hidden: true,
		Long: `Gemm-rate multiplies two N x N float32 matrices through the linear algebra
backend and prints the best rate as JSON. With --archive it also prints the
floating-point operations and floor seconds (operations / rate) of the
archive's low-rank tensors: for compress, a randomized SVD with one power
iteration (8mnk + 4·min(m,n)·k²) at the rank kept, and again at the rank the
ratio makes compress compute (the pairs its budget holds at 2 bits, from
which the allocator chooses); for reconstruct, the product of the factors
(2mnk).` + exitCodesHelp,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runGEMMRate(o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.n, "n", 4096, "matrix size")
	f.IntVar(&o.reps, "reps", 3, "products timed; the best counts")
	f.StringVar(&o.archive, "archive", "", "archive whose compute floors to print")
	return cmd
}

// gemmRateJSON is gemm-rate's output.
type gemmRateJSON struct {
	Backend          string  `json:"backend"`
	N                int     `json:"n"`
	GFLOPS           float64 `json:"gflops"`
	CompressFLOPs    float64 `json:"compress_flops,omitempty"`
	CompressFloorS   float64 `json:"compress_floor_s,omitempty"`
	SVDRankFLOPs     float64 `json:"compress_svd_rank_flops,omitempty"`
	SVDRankFloorS    float64 `json:"compress_svd_rank_floor_s,omitempty"`
	ReconstructFLOPs float64 `json:"reconstruct_flops,omitempty"`
	ReconstructFloor float64 `json:"reconstruct_floor_s,omitempty"`
	LowRankTensors   int     `json:"lowrank_tensors,omitempty"`
}

func runGEMMRate(o *gemmRateOptions, out io.Writer) error {
	if o.n < 1 || o.reps < 1 {
		return usageError{fmt.Errorf("--n and --reps must be >= 1, got %d and %d", o.n, o.reps)}
	}
	res := gemmRateJSON{Backend: linalg.Backend, N: o.n}
	res.GFLOPS, _ = linalg.GEMMRate(o.n, o.reps)
	if o.archive != "" {
		ar, err := archive.Open(o.archive)
		if err != nil {
			return err
		}
		defer ar.Close()
		for _, t := range ar.Manifest.Tensors {
			lr, svdRank := t.LowRank, svdquant.SVDRank
			if t.LowRankSym != nil {
				lr, svdRank = &t.LowRankSym.LowRank, svdquant.SVDRankSym
			}
			if lr == nil || len(t.Shape) != 2 {
				continue
			}
			m, n, k := int(t.Shape[0]), int(t.Shape[1]), lr.Rank
			res.CompressFLOPs += linalg.RandomizedFLOPs(m, n, k)
			res.SVDRankFLOPs += linalg.RandomizedFLOPs(m, n, svdRank(m, n, lr.GroupSize, lr.Budget))
			res.ReconstructFLOPs += linalg.ProductFLOPs(m, n, k)
			res.LowRankTensors++
		}
		res.CompressFloorS = res.CompressFLOPs / res.GFLOPS / 1e9
		res.SVDRankFloorS = res.SVDRankFLOPs / res.GFLOPS / 1e9
		res.ReconstructFloor = res.ReconstructFLOPs / res.GFLOPS / 1e9
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}

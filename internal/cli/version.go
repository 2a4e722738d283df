package cli

import (
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/deltacome/deltacome/internal/linalg"
	"github.com/deltacome/deltacome/pkg/archive"
)

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, archive format version and linear algebra backend",
		Long: `Version prints the tool's version, the archive format version it writes
(it reads that version only), the linear algebra backend it was built with
(pure Go, or OpenBLAS/LAPACK through cgo: about ten times faster SVDs on
large matrices; results agree up to floating-point rounding), and the Go version
and platform. Include it in bug reports.` + exitCodesHelp,
		Example: `  deltacome version
  deltacome version | head -n 1`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVersion(cmd.OutOrStdout())
		},
	}
}

func runVersion(out io.Writer) error {
	_, err := fmt.Fprintf(out, "deltacome %s\narchive format %d\nlinear algebra backend: %s\nBLAS kernels: %s\n%s %s/%s\n",
		Version, archive.Version, linalg.Backend, linalg.Kernel(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return err
}

// tool is what archives record as the tool that wrote them: the version,
// and the BLAS kernels, whose rounding the lossy factors' last bits follow
// (docs/PERFORMANCE.md, section "Same bytes everywhere").
func tool() string { return "deltacome " + Version + " (" + linalg.Kernel() + ")" }

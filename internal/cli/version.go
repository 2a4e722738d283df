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
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVersion(cmd.OutOrStdout())
		},
	}
}

func runVersion(out io.Writer) error {
	_, err := fmt.Fprintf(out, "deltacome %s\narchive format %d\nlinear algebra backend: %s\n%s %s/%s\n",
		Version, archive.Version, linalg.Backend, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return err
}

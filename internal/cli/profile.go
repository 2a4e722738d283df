package cli

import (
	"fmt"
	"os"
	"runtime/pprof"
	"sync"

	"github.com/spf13/cobra"
)

// profileFile is the CPU profile being written, if any: one per process.
var profileFile *os.File

var registerProfileStop sync.Once

// addProfileFlag gives root a hidden --cpuprofile FILE flag that writes a
// pprof CPU profile of the whole command (docs/PERFORMANCE.md uses it). The
// profile is stopped and closed when the command ends, failed or not.
func addProfileFlag(root *cobra.Command) {
	var path string
	root.PersistentFlags().StringVar(&path, "cpuprofile", "", "write a CPU profile to this file")
	_ = root.PersistentFlags().MarkHidden("cpuprofile")
	registerProfileStop.Do(func() { cobra.OnFinalize(stopProfile) })
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		if path == "" {
			return nil
		}
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			_ = f.Close()
			return fmt.Errorf("cpu profile: %w", err)
		}
		profileFile = f
		return nil
	}
}

// stopProfile ends the CPU profile started by --cpuprofile, if any.
func stopProfile() {
	if profileFile != nil {
		pprof.StopCPUProfile()
		_ = profileFile.Close()
		profileFile = nil
	}
}

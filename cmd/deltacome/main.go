// Command deltacome stores fine-tuned LLM checkpoints as their base plus a
// compressed delta and reconstructs them. See internal/cli for the commands.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/deltacome/deltacome/internal/cli"
	"github.com/deltacome/deltacome/internal/linalg"
)

// stopSignals cancel the command: Ctrl-C, kill, a closed terminal, and a
// closed pipe (`deltacome ... | head`), which would otherwise end the
// process at once and leave its temporary files behind.
var stopSignals = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE}

func main() {
	portableKernels()
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, stopSignals...)
	go func() {
		sig := <-sigs
		cancel(fmt.Errorf("interrupted by %v", sig))
	}()
	// Notification stays on to the end: the last message may meet the
	// broken pipe too.
	err := cli.NewRootCmd(os.Stdout, os.Stderr).ExecuteContext(ctx)
	code := cli.ExitCode(err)
	if code == cli.ExitInterrupted {
		err = fmt.Errorf("%w; nothing was written", context.Cause(ctx))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "deltacome: error:", err)
	}
	os.Exit(code)
}

// portableKernels re-executes the command with the BLAS kernels that give
// the same archive bytes on every CPU able to run them, unless the user
// chose kernels (linalg.PortableKernelEnv). If the re-execution fails, the
// command goes on with the kernels the BLAS picked; archives record which.
func portableKernels() {
	env := linalg.PortableKernelEnv()
	if env == "" {
		return
	}
	if exe, err := os.Executable(); err == nil {
		_ = syscall.Exec(exe, os.Args, append(os.Environ(), env))
	}
}

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
)

// stopSignals cancel the command: Ctrl-C, kill, a closed terminal, and a
// closed pipe (`deltacome ... | head`), which would otherwise end the
// process at once and leave its temporary files behind.
var stopSignals = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE}

func main() {
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

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

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.NewRootCmd(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "deltacome: error:", err)
	}
	os.Exit(cli.ExitCode(err))
}

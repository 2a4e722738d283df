package cli

import "github.com/spf13/cobra"

// documentCompletion adds cobra's completion command to root now, rather
// than when it first runs, and gives it the exit codes and examples every
// command's help carries.
func documentCompletion(root *cobra.Command) {
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			c.Long += "\n" + exitCodesHelp
			c.Example = `  source <(deltacome completion bash)                      # this shell
  deltacome completion bash > /etc/bash_completion.d/deltacome
  deltacome completion zsh > "${fpath[1]}/_deltacome"
  deltacome completion fish > ~/.config/fish/completions/deltacome.fish`
		}
	}
}

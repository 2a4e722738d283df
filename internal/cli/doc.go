// Package cli is deltacome's command line: one file per command, each with
// an options struct (addFlags, validate) and a runX function that calls the
// engine and renders its results as text or JSON. Flags, output formats, the
// progress bar and the exit-code table live here and only here.
package cli

package engine

import "errors"

// Sentinel errors of the use cases, for callers to branch on with errors.Is.
var (
	// ErrUsage reports invalid options.
	ErrUsage = errors.New("invalid usage")
	// ErrInput reports unusable input checkpoints: malformed files, a
	// selected projection whose shape differs between BASE and FT, NaN or
	// Inf where a delta is computed.
	ErrInput = errors.New("bad input")
	// ErrWrongBase reports a BASE that is not the one the archive was made
	// against.
	ErrWrongBase = errors.New("wrong base checkpoint")
	// ErrExists reports an output path that already exists.
	ErrExists = errors.New("output already exists")
)

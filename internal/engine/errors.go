package engine

import (
	"errors"
	"fmt"
	"regexp/syntax"
)

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

// kindError is an error of a sentinel's kind whose message is written for
// the user alone: errors.Is matches the sentinel, but its text (meant for
// programs) is not repeated in front of the message.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// errorf formats an error of kind sentinel (see kindError); format may use
// %w.
func errorf(sentinel error, format string, args ...any) error {
	return &kindError{kind: sentinel, err: fmt.Errorf(format, args...)}
}

// regexpError restates a pattern's syntax error without the parser's
// wording ("error parsing regexp: ...").
func regexpError(err error) error {
	var se *syntax.Error
	if errors.As(err, &se) {
		return fmt.Errorf("not a valid regular expression: %s at %q", se.Code, se.Expr)
	}
	return err
}

package engine

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/deltacome/deltacome/pkg/archive"
)

// checkArchiveOut checks, before any work, that an archive can be written
// at out: its folder exists and is writable, out is none of the inputs
// (checkNotInput), not a folder, and does not exist unless overwrite.
// Errors wrap ErrUsage or ErrExists.
func checkArchiveOut(out string, overwrite bool, inputs ...string) error {
	if err := checkParent(out); err != nil {
		return err
	}
	if err := checkNotInput(out, "the archive", inputs...); err != nil {
		return err
	}
	st, err := os.Stat(out)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return errorf(ErrUsage, "output %s: %v", out, pathErr(err))
	case st.IsDir():
		return errorf(ErrUsage, "output %s is a folder; give the archive's file name, such as %s", out, filepath.Join(out, "model.dcm"))
	case !overwrite:
		return errorf(ErrExists, "%s exists; use --force to replace it", out)
	}
	return nil
}

// commit writes the archive w builds with manifest m at out, unless ctx is
// done or out was created meanwhile by someone else (checkArchiveOut, with
// the inputs), and returns its size in bytes.
func commit(ctx context.Context, w *archive.Writer, m *archive.Manifest, out string, overwrite bool, inputs ...string) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := checkArchiveOut(out, overwrite, inputs...); err != nil {
		return 0, err // created meanwhile: never replaced unasked
	}
	if err := w.Commit(m); err != nil {
		return 0, err
	}
	st, err := os.Stat(out)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// checkParent checks that the folder out is to be created in exists, is a
// folder and is writable.
func checkParent(out string) error {
	dir := filepath.Dir(filepath.Clean(out))
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errorf(ErrUsage, "output folder %s does not exist; create it first", dir)
	case err != nil:
		return errorf(ErrUsage, "output folder %s: %v", dir, pathErr(err))
	case !st.IsDir():
		return errorf(ErrUsage, "%s is not a folder, so %s cannot be created in it", dir, out)
	}
	const wOK = 2 // W_OK of access(2)
	if err := syscall.Access(dir, wOK); err != nil {
		return errorf(ErrUsage, "output folder %s is not writable: %v", dir, err)
	}
	return nil
}

// checkNotInput refuses an output path that is, or resolves to, one of the
// inputs or a file of an input folder, or that lies inside an input folder:
// writing there would replace or mix with what the output is made from.
// Errors wrap ErrUsage.
func checkNotInput(out, what string, inputs ...string) error {
	outAbs, err := resolve(out)
	if err != nil {
		return errorf(ErrUsage, "output %s: %v", out, pathErr(err))
	}
	outSt, outErr := os.Stat(out)
	for _, in := range inputs {
		inSt, err := os.Stat(in)
		if err != nil {
			continue // reported when the input is opened
		}
		if outErr == nil && os.SameFile(outSt, inSt) {
			return errorf(ErrUsage, "output %s is the input %s; %s must be a new path", out, in, what)
		}
		if !inSt.IsDir() {
			continue
		}
		inAbs, err := resolve(in)
		if err != nil {
			continue
		}
		if rel, err := filepath.Rel(inAbs, outAbs); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			return errorf(ErrUsage, "output %s lies inside the input folder %s; %s must be outside it", out, in, what)
		}
		if outErr == nil && !outSt.IsDir() && sameAsFileIn(outSt, in) {
			return errorf(ErrUsage, "output %s is a file of the input folder %s (through a link); %s must be a new path", out, in, what)
		}
	}
	return nil
}

// sameAsFileIn reports whether st is one of the files directly in dir,
// links followed (the Hugging Face cache links shards to a blob store).
func sameAsFileIn(st fs.FileInfo, dir string) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if fst, err := os.Stat(filepath.Join(dir, e.Name())); err == nil && os.SameFile(st, fst) {
			return true
		}
	}
	return false
}

// resolve returns the absolute path of p with links resolved; for a path
// that does not exist yet, its folder's links are resolved.
func resolve(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r, nil
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, filepath.Base(abs)), nil
}

// pathErr drops the operation and path from an *fs.PathError, which the
// caller's message already names, leaving the reason ("permission denied").
func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

package engine

import (
	"errors"
	"io/fs"
	"os"

	"github.com/deltacome/deltacome/internal/checkpoint"
	"github.com/deltacome/deltacome/pkg/archive"
)

// openPair opens BASE and FT; errors wrap ErrInput and say which failed.
func openPair(basePath, ftPath string) (base, ft *checkpoint.Checkpoint, err error) {
	if base, err = openCheckpoint("base", basePath); err != nil {
		return nil, nil, err
	}
	if ft, err = openCheckpoint("fine-tune", ftPath); err != nil {
		base.Close()
		return nil, nil, err
	}
	return base, ft, nil
}

// openCheckpoint opens the checkpoint at path, the role (base, fine-tune)
// naming it in errors, which wrap ErrInput. A deltacome archive given as a
// checkpoint is refused with what to do instead.
func openCheckpoint(role, path string) (*checkpoint.Checkpoint, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, errorf(ErrInput, "%s %s does not exist", role, path)
	}
	c, err := checkpoint.Open(path)
	if err != nil {
		return nil, errorf(ErrInput, "%s: %w", role, err)
	}
	for _, sh := range c.Shards() {
		if _, ok := sh.Metadata()[archive.MetadataKey]; ok {
			c.Close()
			return nil, errorf(ErrInput, "%s %s is a deltacome archive, not a checkpoint: rebuild the checkpoint first with deltacome reconstruct BASE ARCHIVE OUTDIR", role, path)
		}
	}
	return c, nil
}

// openArchive opens the archive at path, saying plainly when path does not
// exist or is a folder (arguments given in the wrong order).
func openArchive(path string) (*archive.Reader, error) {
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, errorf(ErrInput, "archive %s does not exist", path)
	case err == nil && st.IsDir():
		return nil, errorf(ErrInput, "%s is a folder, not an archive file: are the arguments in the right order?", path)
	}
	return archive.Open(path)
}

// samePath reports whether two paths name one file or folder.
func samePath(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/deltacome/deltacome/internal/checkpoint"
)

// Fingerprint returns the content fingerprint of the checkpoint at path: the
// SHA-256 of every tensor's bytes combined with its name, dtype and shape
// (archive.Fingerprint), the value an archive records for its base. It reads
// every tensor byte.
func Fingerprint(ctx context.Context, path string) (string, error) {
	c, err := checkpoint.Open(path)
	if err != nil {
		return "", errorf(ErrInput, "%w", err)
	}
	defer c.Close()
	b, err := fingerprintBase(ctx, c, nil, nil)
	if err != nil {
		return "", err
	}
	return b.Fingerprint, nil
}

// QuickFingerprint returns a fingerprint of the checkpoint at path that reads
// no tensor bytes: "quick:" + hex SHA-256 over, for each shard file, its
// name, size, modification time (nanoseconds) and safetensors header bytes,
// then the same file facts for the index json and each side file. Any
// rewrite of a file that changes its size or modification time changes it,
// as does any change to tensor names, dtypes, shapes or offsets; a rewrite
// that keeps size and modification time and changes only tensor values
// (which tools do not do unless told to) does not. The value depends on
// file names, not on the folder's path, so a checkpoint keeps it when
// moved within a file system that keeps modification times.
func QuickFingerprint(path string) (string, error) {
	c, err := checkpoint.Open(path)
	if err != nil {
		return "", errorf(ErrInput, "%w", err)
	}
	defer c.Close()
	h := sha256.New()
	fileFacts := func(kind, p string) error {
		st, err := os.Stat(p)
		if err != nil {
			return errorf(ErrInput, "%w", err)
		}
		fmt.Fprintf(h, "%s\x00%s\x00%d\x00%d\n", kind, filepath.Base(p), st.Size(), st.ModTime().UnixNano())
		return nil
	}
	for _, sh := range c.Shards() {
		if err := fileFacts("shard", sh.Path()); err != nil {
			return "", err
		}
		hdr := sha256.Sum256(sh.Header())
		fmt.Fprintf(h, "header\x00%x\n", hdr)
	}
	if idx := c.IndexFile(); idx != "" {
		if err := fileFacts("index", filepath.Join(c.Dir(), idx)); err != nil {
			return "", err
		}
	}
	side, _, err := c.SideFiles()
	if err != nil {
		return "", errorf(ErrInput, "%w", err)
	}
	for _, f := range side {
		if err := fileFacts("side", f.Path); err != nil {
			return "", err
		}
	}
	return "quick:" + hex.EncodeToString(h.Sum(nil)), nil
}

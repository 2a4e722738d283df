package checkpoint

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// MaxSideFileSize is the size, in bytes, from which a file is no longer a
// side file. Configs, tokenizers and chat templates are far smaller (a
// Llama-3 tokenizer.json is about 9 MB); larger files are weights or data.
const MaxSideFileSize = 16 << 20

// sideExts are the extensions of side files: configs and tokenizer indexes
// (.json), vocabularies and merges (.txt), sentencepiece models (.model),
// chat templates (.jinja), tiktoken vocabularies (.tiktoken) and the Python
// code of trust_remote_code models (.py).
var sideExts = []string{".json", ".txt", ".model", ".jinja", ".tiktoken", ".py"}

// SideFile is a small non-weight file of a checkpoint folder.
type SideFile struct {
	// Name is the base file name.
	Name string
	// Path is the file's path (the folder joined with Name).
	Path string
	// Size is the length in bytes.
	Size int64
}

// SideFiles lists the small files a loader needs beside the weights:
// regular files (symbolic links followed, as in the Hugging Face cache)
// directly in the folder, named *.json, *.txt, *.model, *.jinja, *.tiktoken
// or *.py, not hidden, and smaller than MaxSideFileSize. The index json is
// one of them. The list is sorted by name.
//
// A checkpoint opened from a single file has none (nil, nil): the folder of
// a lone file may hold anything, such as another model's config.
func (c *Checkpoint) SideFiles() ([]SideFile, error) {
	if !c.isFolder {
		return nil, nil
	}
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, err
	}
	var out []SideFile
	for _, e := range entries { // ReadDir sorts by name.
		name := e.Name()
		if strings.HasPrefix(name, ".") || !hasSideExt(name) {
			continue
		}
		path := filepath.Join(c.dir, name)
		st, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("side file: %w", err)
		}
		if !st.Mode().IsRegular() || st.Size() >= MaxSideFileSize {
			continue
		}
		out = append(out, SideFile{Name: name, Path: path, Size: st.Size()})
	}
	return out, nil
}

func hasSideExt(name string) bool { return slices.Contains(sideExts, filepath.Ext(name)) }

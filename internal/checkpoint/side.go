package checkpoint

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// MaxSideFileSize is the size, in bytes, from which a file of a checkpoint
// folder is no longer carried as a side file: 64 MiB. Configs, model cards,
// licences, tokenizers and chat templates are far smaller (the largest
// common one, Gemma's tokenizer.json, is about 33 MB); larger files are
// weights or data.
const MaxSideFileSize = 64 << 20

// MaxSideTotal caps the bytes of all side files of a folder together:
// 256 MiB, which a folder of files under MaxSideFileSize that a loader needs
// does not approach. Files are taken in name order; those that would pass
// the cap are skipped.
const MaxSideTotal = 256 << 20

// weightExts are the extensions of weight files in formats other than the
// checkpoint's own: PyTorch (.bin, .pt, .pth), Lightning and TensorFlow
// checkpoints (.ckpt), llama.cpp (.gguf, .ggml), Keras (.h5), Flax
// (.msgpack), ONNX (.onnx, and its external data .onnx_data). They duplicate
// the weights rather than describe them, so they are not carried.
var weightExts = []string{".bin", ".pt", ".pth", ".ckpt", ".gguf", ".ggml", ".h5", ".msgpack", ".onnx", ".onnx_data"}

// SideFile is a non-weight file of a checkpoint folder, carried along.
type SideFile struct {
	// Name is the base file name.
	Name string
	// Path is the file's path (the folder joined with Name).
	Path string
	// Size is the length in bytes.
	Size int64
}

// SkippedFile is an entry of a checkpoint folder that is neither a weight
// shard of the checkpoint nor carried as a side file.
type SkippedFile struct {
	// Name is the entry's base name.
	Name string
	// Reason says why it is not carried, for the user.
	Reason string
}

// SideFiles lists the entries of a checkpoint folder beside its weight
// shards, split into the side files carried along and the entries skipped.
//
// Every regular file directly in the folder (symbolic links followed, as in
// the Hugging Face cache; dotfiles such as .gitattributes included) is a side
// file: configs, the index json, tokenizer and generation files, the model
// card README.md, LICENSE and anything else, except weight files in other
// formats (weightExts) and .safetensors files that are not shards of the
// checkpoint, files of MaxSideFileSize bytes or more, files past the
// MaxSideTotal cap, names holding a backslash (which archives refuse), and
// entries that are not regular files: subfolders (not carried), sockets,
// pipes, devices, links to nothing. Both lists are sorted by name.
//
// A checkpoint opened from a single file has none (nil, nil, nil): the
// folder of a lone file may hold anything, such as another model's config.
func (c *Checkpoint) SideFiles() ([]SideFile, []SkippedFile, error) {
	if !c.isFolder {
		return nil, nil, nil
	}
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, nil, err
	}
	var side []SideFile
	var skipped []SkippedFile
	var total int64
	for _, e := range entries { // ReadDir sorts by name.
		name := e.Name()
		if slices.Contains(c.shardNames, name) {
			continue
		}
		path := filepath.Join(c.dir, name)
		st, err := os.Stat(path)
		if errors.Is(err, fs.ErrNotExist) && e.Type()&fs.ModeSymlink != 0 {
			skipped = append(skipped, SkippedFile{Name: name, Reason: "a symbolic link to nothing"})
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("side file: %w", err)
		}
		if reason := skipReason(name, st, total); reason != "" {
			skipped = append(skipped, SkippedFile{Name: name, Reason: reason})
			continue
		}
		total += st.Size()
		side = append(side, SideFile{Name: name, Path: path, Size: st.Size()})
	}
	return side, skipped, nil
}

// skipReason says why the folder entry name (st, followed through links)
// is not carried when the side files before it total total bytes, or
// returns "" when it is carried.
func skipReason(name string, st fs.FileInfo, total int64) string {
	ext := strings.ToLower(filepath.Ext(name))
	switch mode := st.Mode(); {
	case mode.IsDir():
		return "a subfolder: only the files directly in the folder are carried"
	case mode&fs.ModeSocket != 0:
		return "a socket"
	case mode&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case mode&fs.ModeDevice != 0:
		return "a device"
	case !mode.IsRegular():
		return "not a regular file"
	case strings.Contains(name, `\`):
		return "its name holds a backslash, which archives refuse"
	case ext == ".safetensors":
		return "a safetensors file that is not a shard of the checkpoint"
	case slices.Contains(weightExts, ext):
		return "weights in another format: " + ext
	case st.Size() >= MaxSideFileSize:
		return fmt.Sprintf("%d bytes, at or over the %d MiB cap for one side file", st.Size(), MaxSideFileSize>>20)
	case total+st.Size() > MaxSideTotal:
		return fmt.Sprintf("past the %d MiB cap for all side files together, taken in name order", MaxSideTotal>>20)
	}
	return ""
}

package checkpoint

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/deltacome/deltacome/pkg/stfile"
	"github.com/nlpodyssey/safetensors"
)

// File names of a Hugging Face checkpoint folder.
const (
	// IndexName is the index of a sharded checkpoint.
	IndexName = "model.safetensors.index.json"
	// SingleName is the weights file of an unsharded checkpoint folder.
	SingleName = "model.safetensors"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrFormat reports a malformed safetensors file or index, or shards
	// that disagree with their index or with each other. It is
	// stfile.ErrFormat, so one errors.Is covers both packages.
	ErrFormat = stfile.ErrFormat
	// ErrNotFound reports a tensor name the checkpoint does not hold.
	ErrNotFound = stfile.ErrNotFound
	// ErrMissingShard reports a shard named by the index but absent.
	ErrMissingShard = errors.New("missing shard")
	// ErrNoCheckpoint reports a folder with neither model.safetensors nor
	// model.safetensors.index.json.
	ErrNoCheckpoint = errors.New("no checkpoint found")
)

// Tensor describes one tensor of a checkpoint.
type Tensor struct {
	// Name is the tensor name exactly as in the checkpoint.
	Name string
	// DType is the element type.
	DType safetensors.DType
	// Shape is the size of each dimension; empty for a scalar.
	Shape []uint64
	// Shard indexes Shards() and ShardNames().
	Shard int
	// Offset is the tensor's first byte within its shard's data region.
	Offset int64
	// Size is the tensor's length in bytes.
	Size int64
}

// Checkpoint is an opened model checkpoint: one or more safetensors shards.
// All methods but Close are safe for concurrent use.
type Checkpoint struct {
	path       string
	dir        string
	isFolder   bool
	indexFile  string
	indexMeta  map[string][]byte
	shards     []*stfile.File
	shardNames []string
	names      []string
	tensors    map[string]Tensor
}

// Open opens the checkpoint at path: a safetensors file (one shard, any
// name), or a folder. In a folder, model.safetensors.index.json is used
// when present (every shard it names is opened; shards it does not name are
// ignored), else model.safetensors; otherwise Open fails with
// ErrNoCheckpoint. The caller must Close the Checkpoint.
func Open(path string) (*Checkpoint, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		if strings.HasSuffix(path, ".json") {
			return nil, fmt.Errorf("%s: a JSON file; pass the checkpoint folder or a .safetensors file", path)
		}
		f, err := stfile.Open(path)
		if err != nil {
			return nil, err
		}
		c := &Checkpoint{path: path, dir: filepath.Dir(path)}
		if err := c.addShards([]*stfile.File{f}); err != nil {
			return nil, errors.Join(err, c.Close())
		}
		return c, nil
	}

	c := &Checkpoint{path: path, dir: path, isFolder: true}
	indexPath := filepath.Join(path, IndexName)
	idx, err := readIndex(indexPath)
	switch {
	case err == nil:
		c.indexFile = IndexName
		c.indexMeta = idx.metadata
		if err := c.openIndexed(indexPath, idx); err != nil {
			return nil, errors.Join(err, c.Close())
		}
		return c, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	f, err := stfile.Open(filepath.Join(path, SingleName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w: no %s or %s%s", path, ErrNoCheckpoint, SingleName, IndexName, folderHint(path))
	}
	if err != nil {
		return nil, err
	}
	if err := c.addShards([]*stfile.File{f}); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

// openIndexed opens the shards idx names, sorted by file name, and checks
// that the index and the shards agree tensor for tensor.
func (c *Checkpoint) openIndexed(indexPath string, idx *index) error {
	if len(idx.entries) == 0 {
		return formatError(indexPath, "malformed index", "empty weight_map")
	}
	set := make(map[string]struct{})
	for _, e := range idx.entries {
		set[e.shard] = struct{}{}
	}
	names := slices.Sorted(maps.Keys(set))
	files := make([]*stfile.File, 0, len(names))
	for _, name := range names {
		f, err := stfile.Open(filepath.Join(c.dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			err = fmt.Errorf("%s: shard %q: %w", indexPath, name, ErrMissingShard)
		}
		if err != nil {
			for _, g := range files {
				err = errors.Join(err, g.Close())
			}
			return err
		}
		files = append(files, f)
	}
	if err := c.addShards(files); err != nil {
		return err
	}
	mapped := make(map[string]struct{}, len(idx.entries))
	for _, e := range idx.entries {
		mapped[e.tensor] = struct{}{}
		t, ok := c.tensors[e.tensor]
		if !ok {
			return formatError(indexPath, "index disagrees with shards", "maps tensor %q to %s, which does not hold it", e.tensor, e.shard)
		}
		if got := c.shardNames[t.Shard]; got != e.shard {
			return formatError(indexPath, "index disagrees with shards", "maps tensor %q to %s, but it is in %s", e.tensor, e.shard, got)
		}
	}
	for _, name := range c.names {
		if _, ok := mapped[name]; !ok {
			shard := c.shardNames[c.tensors[name].Shard]
			return formatError(indexPath, "index disagrees with shards", "tensor %q of %s is missing from the weight_map", name, shard)
		}
	}
	return nil
}

// addShards takes ownership of files (in shard order) and indexes their
// tensors, refusing a name held by two shards.
func (c *Checkpoint) addShards(files []*stfile.File) error {
	c.shards = files
	c.tensors = make(map[string]Tensor)
	for i, f := range files {
		c.shardNames = append(c.shardNames, filepath.Base(f.Path()))
		for _, name := range f.Names() {
			if prev, dup := c.tensors[name]; dup {
				return formatError(c.path, "inconsistent shards", "tensor %q is in both %s and %s", name, c.shardNames[prev.Shard], c.shardNames[i])
			}
			info, _ := f.Info(name)
			c.tensors[name] = Tensor{
				Name:   name,
				DType:  info.DType,
				Shape:  info.Shape,
				Shard:  i,
				Offset: info.Offset,
				Size:   info.Size,
			}
			c.names = append(c.names, name)
		}
	}
	return nil
}

// Close unmaps every shard. Slices returned by Data must no longer be used.
// It is idempotent and returns the shards' Close errors joined.
func (c *Checkpoint) Close() error {
	var errs []error
	for _, f := range c.shards {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// Path returns the path Open was given.
func (c *Checkpoint) Path() string { return c.path }

// Dir returns the folder holding the checkpoint: the path itself for a
// folder, the file's folder for a single file.
func (c *Checkpoint) Dir() string { return c.dir }

// IsFolder reports whether the checkpoint was opened from a folder.
func (c *Checkpoint) IsFolder() bool { return c.isFolder }

// IndexFile returns IndexName when the shards come from an index, else "".
func (c *Checkpoint) IndexFile() string { return c.indexFile }

// IndexMetadata returns the index's "metadata" object as raw JSON values
// by key (typically "total_size"), or nil without an index. The map and
// its values are the caller's.
func (c *Checkpoint) IndexMetadata() map[string][]byte {
	if c.indexMeta == nil {
		return nil
	}
	out := make(map[string][]byte, len(c.indexMeta))
	for k, v := range c.indexMeta {
		out[k] = slices.Clone(v)
	}
	return out
}

// Shards returns the opened shards: sorted by file name for an index, else
// the single file. The Checkpoint keeps ownership: do not Close them.
func (c *Checkpoint) Shards() []*stfile.File { return slices.Clone(c.shards) }

// ShardNames returns the shards' base file names, in Shards order.
func (c *Checkpoint) ShardNames() []string { return slices.Clone(c.shardNames) }

// Names returns every tensor name: shard by shard in Shards order, and in
// file order within a shard. The slice is the caller's.
func (c *Checkpoint) Names() []string { return slices.Clone(c.names) }

// Len returns the number of tensors.
func (c *Checkpoint) Len() int { return len(c.names) }

// Tensor returns the description of the named tensor and whether it exists.
// The Shape slice is the caller's.
func (c *Checkpoint) Tensor(name string) (Tensor, bool) {
	t, ok := c.tensors[name]
	if !ok {
		return Tensor{}, false
	}
	t.Shape = slices.Clone(t.Shape)
	return t, true
}

// Data returns the named tensor's little-endian bytes as a slice of its
// shard's read-only mapping (see stfile.File.Data: do not write; valid
// until Close; not necessarily aligned). Errors wrap ErrNotFound, or
// stfile.ErrClosed after Close.
func (c *Checkpoint) Data(name string) ([]byte, error) {
	t, ok := c.tensors[name]
	if !ok {
		return nil, fmt.Errorf("%s: tensor %q: %w", c.path, name, ErrNotFound)
	}
	return c.shards[t.Shard].Data(name)
}

// Release drops the named tensor's pages from memory once a caller is done
// with them (see stfile.File.Release); its bytes stay readable.
func (c *Checkpoint) Release(name string) {
	if t, ok := c.tensors[name]; ok {
		c.shards[t.Shard].Release(name)
	}
}

// ReleaseRange drops the pages of bytes [off, off+n) of the named tensor
// (see stfile.File.ReleaseRange); its bytes stay readable.
func (c *Checkpoint) ReleaseRange(name string, off, n int64) {
	if t, ok := c.tensors[name]; ok {
		c.shards[t.Shard].ReleaseRange(name, off, n)
	}
}

// formatErr is an error that reads as its own text and matches ErrFormat,
// whose text ("malformed safetensors file") would mislead for an index.
type formatErr struct{ msg string }

func (e *formatErr) Error() string { return e.msg }
func (e *formatErr) Unwrap() error { return ErrFormat }

// formatError returns an error "path: what: detail" wrapping ErrFormat.
func formatError(path, what, format string, args ...any) error {
	return &formatErr{msg: path + ": " + what + ": " + fmt.Sprintf(format, args...)}
}

// folderHint says what a folder without a safetensors checkpoint holds
// instead, when that tells the user what to do: weights in another format,
// other .safetensors names, or the snapshots of a Hugging Face cache entry.
func folderHint(dir string) string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return ""
	}
	var other, st []string
	for _, e := range entries {
		name := e.Name()
		switch ext := filepath.Ext(name); {
		case e.IsDir() && name == "snapshots":
			return "; this looks like a Hugging Face cache entry: give its snapshots/<revision> folder"
		case ext == ".safetensors":
			st = append(st, name)
		case ext == ".bin" || ext == ".pt" || ext == ".pth" || ext == ".ckpt" || ext == ".gguf" || ext == ".h5" || ext == ".msgpack":
			other = append(other, name)
		}
	}
	switch {
	case len(st) > 0:
		return fmt.Sprintf("; it holds %s: give that file itself as the checkpoint", strings.Join(st, ", "))
	case len(other) > 0:
		return fmt.Sprintf("; it holds %s, which deltacome does not read: save the model as safetensors first (transformers: model.save_pretrained(dir, safe_serialization=True))", strings.Join(other, ", "))
	}
	return ""
}

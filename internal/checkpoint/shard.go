package checkpoint

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/deltacome/deltacome/pkg/stfile"
)

// maxShards keeps shard names in the five-digit pattern transformers uses.
const maxShards = 99999

// WriteShardedCopy writes src into dir (created if needed) as a sharded
// Hugging Face checkpoint: nShards files model-0000i-of-0000N.safetensors
// holding src's tensors in src.Names() order, cut into contiguous groups
// of roughly equal bytes (each non-empty), every shard with metadata
// {"format": "pt"}; a model.safetensors.index.json with
// {"metadata": {"total_size": bytes of all tensors}, "weight_map": ...}
// formatted as transformers writes it; and a copy of config.json from
// src.Dir() when there is one. Opening dir then gives the same Names and
// Data as src. Each file is written to a temporary name and renamed. It
// fails if nShards is not in [1, src.Len()].
func WriteShardedCopy(src *Checkpoint, dir string, nShards int) error {
	names := src.Names()
	if nShards < 1 || nShards > len(names) || nShards > maxShards {
		return fmt.Errorf("shard %s: %d shards for %d tensors", src.Path(), nShards, len(names))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var total int64
	for _, name := range names {
		total += src.tensors[name].Size
	}

	// Cut greedily at multiples of total/nShards, and early where the
	// remaining tensors are just enough to give each later shard one.
	groups := make([][]string, nShards)
	k := 0
	var acc int64
	for i, name := range names {
		left := len(names) - i
		if len(groups[k]) > 0 && k < nShards-1 &&
			(acc*int64(nShards) >= int64(k+1)*total || left <= nShards-1-k) {
			k++
		}
		groups[k] = append(groups[k], name)
		acc += src.tensors[name].Size
	}

	weightMap := make(map[string]string, len(names))
	for i, group := range groups {
		shard := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, nShards)
		for _, name := range group {
			weightMap[name] = shard
		}
		if err := writeShard(src, filepath.Join(dir, shard), group); err != nil {
			return err
		}
	}

	type indexJSON struct {
		Metadata  map[string]int64  `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	// json.MarshalIndent sorts map keys, as Python's json.dumps(sort_keys=True)
	// in transformers does.
	idx, err := json.MarshalIndent(indexJSON{
		Metadata:  map[string]int64{"total_size": total},
		WeightMap: weightMap,
	}, "", "  ")
	if err != nil {
		return err
	}
	idx = append(idx, '\n')
	if err := writeFileAtomic(filepath.Join(dir, IndexName), func(w io.Writer) error {
		_, err := w.Write(idx)
		return err
	}); err != nil {
		return err
	}

	config, err := os.ReadFile(filepath.Join(src.Dir(), "config.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, "config.json"), func(w io.Writer) error {
		_, err := w.Write(config)
		return err
	})
}

// writeShard writes the named tensors of src, in order, as one file.
func writeShard(src *Checkpoint, path string, names []string) error {
	infos := make([]stfile.Info, len(names))
	for i, name := range names {
		t := src.tensors[name]
		infos[i] = stfile.Info{Name: name, DType: t.DType, Shape: t.Shape, Size: t.Size}
	}
	header, err := stfile.EncodeHeader(infos, map[string]string{"format": "pt"})
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return writeFileAtomic(path, func(w io.Writer) error {
		if err := stfile.WriteHeader(w, header); err != nil {
			return err
		}
		for _, name := range names {
			data, err := src.Data(name)
			if err != nil {
				return err
			}
			if _, err := w.Write(data); err != nil {
				return err
			}
		}
		return nil
	})
}

// writeFileAtomic writes path through a temporary file in the same folder,
// renamed over path only once fully written and closed.
func writeFileAtomic(path string, write func(w io.Writer) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			// Best effort: the write error is the one to report.
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := write(bw); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return os.Rename(tmp.Name(), path)
}

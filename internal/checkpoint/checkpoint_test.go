package checkpoint

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/deltacome/deltacome/pkg/stfile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The bundled real base: a single-file bf16 Llama checkpoint with its
// config.json.
const (
	modelDir = "../../testdata/tiny-llama/base"
	basePath = modelDir + "/model.safetensors"
)

func openBase(t *testing.T) *Checkpoint {
	t.Helper()
	c, err := Open(basePath)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	return c
}

// openDir opens dir and registers its Close.
func openDir(t *testing.T, dir string) *Checkpoint {
	t.Helper()
	c, err := Open(dir)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	return c
}

// assertSameTensors checks that got holds want's tensors, in the same
// order, with equal descriptions (but for Shard) and bytes.
func assertSameTensors(t *testing.T, want, got *Checkpoint) {
	t.Helper()
	require.Equal(t, want.Names(), got.Names())
	for _, name := range want.Names() {
		wt, ok := want.Tensor(name)
		require.True(t, ok)
		gt, ok := got.Tensor(name)
		require.True(t, ok, name)
		assert.Equal(t, wt.DType, gt.DType, name)
		assert.Equal(t, wt.Shape, gt.Shape, name)
		assert.Equal(t, wt.Size, gt.Size, name)
		wd, err := want.Data(name)
		require.NoError(t, err)
		gd, err := got.Data(name)
		require.NoError(t, err)
		require.Equal(t, wd, gd, name)
	}
}

func TestOpenSingleFile(t *testing.T) {
	c := openBase(t)
	assert.Equal(t, basePath, c.Path())
	assert.Equal(t, modelDir, c.Dir())
	assert.False(t, c.IsFolder())
	assert.Empty(t, c.IndexFile())
	assert.Nil(t, c.IndexMetadata())
	assert.Equal(t, []string{"model.safetensors"}, c.ShardNames())
	require.Len(t, c.Shards(), 1)
	assert.Equal(t, c.Shards()[0].Names(), c.Names())
	assert.Equal(t, c.Len(), len(c.Names()))
	side, skipped, err := c.SideFiles()
	require.NoError(t, err)
	assert.Nil(t, side, "a lone file has no side files")
	assert.Nil(t, skipped)

	tensor, ok := c.Tensor("model.layers.0.mlp.down_proj.weight")
	require.True(t, ok)
	assert.Equal(t, []uint64{384, 1024}, tensor.Shape)
	assert.EqualValues(t, 384*1024*2, tensor.Size)
	assert.Equal(t, 0, tensor.Shard)
	_, ok = c.Tensor("nope")
	assert.False(t, ok)
	_, err = c.Data("nope")
	assert.ErrorIs(t, err, ErrNotFound)
}

func TestShardedCopies(t *testing.T) {
	base := openBase(t)
	for _, n := range []int{1, 2, 3, base.Len()} {
		t.Run(fmt.Sprintf("shards=%d", n), func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, WriteShardedCopy(base, dir, n))
			c := openDir(t, dir)
			assert.True(t, c.IsFolder())
			assert.Equal(t, IndexName, c.IndexFile())
			assertSameTensors(t, base, c)
			names := c.ShardNames()
			require.Len(t, names, n)
			assert.Len(t, c.Shards(), n)
			assert.Equal(t, fmt.Sprintf("model-00001-of-%05d.safetensors", n), names[0])
			for i, f := range c.Shards() {
				assert.NotZero(t, f.Len(), "shard %d is empty", i)
				assert.Equal(t, names[i], filepath.Base(f.Path()))
			}
			var total int64
			for _, name := range c.Names() {
				tensor, _ := c.Tensor(name)
				total += tensor.Size
			}
			var size int64
			require.NoError(t, json.Unmarshal(c.IndexMetadata()["total_size"], &size))
			assert.Equal(t, total, size)

			side, skipped, err := c.SideFiles()
			require.NoError(t, err)
			assert.Empty(t, skipped)
			require.Len(t, side, 2)
			assert.Equal(t, "config.json", side[0].Name)
			assert.Equal(t, IndexName, side[1].Name)
			assert.Equal(t, filepath.Join(dir, IndexName), side[1].Path)
		})
	}

	// Resharding a sharded checkpoint keeps everything.
	dir3, dir2 := t.TempDir(), t.TempDir()
	require.NoError(t, WriteShardedCopy(base, dir3, 3))
	c3 := openDir(t, dir3)
	require.NoError(t, WriteShardedCopy(c3, dir2, 2))
	assertSameTensors(t, base, openDir(t, dir2))

	assert.Error(t, WriteShardedCopy(base, t.TempDir(), 0))
	assert.Error(t, WriteShardedCopy(base, t.TempDir(), base.Len()+1))
}

func TestFolderSingleFile(t *testing.T) {
	base := openBase(t)
	dir := t.TempDir()
	require.NoError(t, os.Symlink(absPath(t, basePath), filepath.Join(dir, SingleName)))
	c := openDir(t, dir)
	assert.True(t, c.IsFolder())
	assert.Empty(t, c.IndexFile())
	assert.Equal(t, []string{SingleName}, c.ShardNames())
	assertSameTensors(t, base, c)

	_, err := Open(t.TempDir())
	assert.ErrorIs(t, err, ErrNoCheckpoint)
	_, err = Open(filepath.Join(t.TempDir(), "missing"))
	assert.Error(t, err)
}

// shardedFixture writes a 3-shard copy of base once and returns a function
// that makes a fresh folder linking to those shards, with the index
// rewritten by edit (nil: unchanged).
func shardedFixture(t *testing.T) (shards []string, mk func(edit func(idx []byte) []byte) string) {
	base := openBase(t)
	src := t.TempDir()
	require.NoError(t, WriteShardedCopy(base, src, 3))
	idx, err := os.ReadFile(filepath.Join(src, IndexName))
	require.NoError(t, err)
	shards, err = filepath.Glob(filepath.Join(src, "model-*.safetensors"))
	require.NoError(t, err)
	return shards, func(edit func([]byte) []byte) string {
		dir := t.TempDir()
		for _, s := range shards {
			require.NoError(t, os.Symlink(s, filepath.Join(dir, filepath.Base(s))))
		}
		out := idx
		if edit != nil {
			out = edit(idx)
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, IndexName), out, 0o644))
		return dir
	}
}

// editWeightMap decodes the index, lets f change the weight map and
// encodes it again.
func editWeightMap(t *testing.T, f func(wm map[string]string)) func([]byte) []byte {
	return func(b []byte) []byte {
		var idx map[string]any
		require.NoError(t, json.Unmarshal(b, &idx))
		wm := map[string]string{}
		for k, v := range idx["weight_map"].(map[string]any) {
			wm[k] = v.(string)
		}
		f(wm)
		idx["weight_map"] = wm
		out, err := json.Marshal(idx)
		require.NoError(t, err)
		return out
	}
}

func TestIndexErrors(t *testing.T) {
	shards, mk := shardedFixture(t)
	shard1 := filepath.Base(shards[0])
	shard2 := filepath.Base(shards[1])

	c := openDir(t, mk(nil))
	require.Len(t, c.ShardNames(), 3)
	first := c.Shards()[0].Names()[0]
	firstOf2 := c.Shards()[1].Names()[0]

	replace := func(old, new string) func([]byte) []byte {
		return func(b []byte) []byte { return []byte(strings.Replace(string(b), old, new, 1)) }
	}
	cases := map[string]func([]byte) []byte{
		"tensor not in shard": editWeightMap(t, func(wm map[string]string) { wm["bogus.weight"] = shard1 }),
		"tensor not in index": editWeightMap(t, func(wm map[string]string) { delete(wm, first) }),
		"wrong shard":         editWeightMap(t, func(wm map[string]string) { wm[firstOf2] = shard1 }),
		"path traversal":      editWeightMap(t, func(wm map[string]string) { wm[first] = "../" + shard1 }),
		"empty weight map":    func([]byte) []byte { return []byte(`{"weight_map": {}}`) },
		"no weight map":       func([]byte) []byte { return []byte(`{"metadata": {}}`) },
		"not json":            func([]byte) []byte { return []byte(`{"weight_map": `) },
		"trailing junk":       func(b []byte) []byte { return append(b, "x"...) },
		"duplicate entry": replace(`"weight_map": {`,
			`"weight_map": {"`+first+`": "`+shard2+`", `),
		"duplicate key": replace(`"weight_map": {`, `"weight_map": {}, "weight_map": {`),
		"shard not string": replace(`"weight_map": {`,
			`"weight_map": {"x": 1, `),
	}
	for _, name := range slices.Sorted(maps.Keys(cases)) {
		t.Run(name, func(t *testing.T) {
			dir := mk(cases[name])
			_, err := Open(dir)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrFormat)
			assert.Contains(t, err.Error(), filepath.Join(dir, IndexName), "the error names the index")
		})
	}
}

func TestMissingShard(t *testing.T) {
	shards, mk := shardedFixture(t)
	dir := mk(nil)
	missing := filepath.Base(shards[1])
	require.NoError(t, os.Remove(filepath.Join(dir, missing)))
	_, err := Open(dir)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrMissingShard)
	assert.Contains(t, err.Error(), filepath.Join(dir, IndexName))
	assert.Contains(t, err.Error(), missing)
}

func TestTensorInTwoShards(t *testing.T) {
	base := openBase(t)
	_, mk := shardedFixture(t)
	const extraShard = "model-extra.safetensors"
	dir := mk(editWeightMap(t, func(wm map[string]string) { wm["extra.weight"] = extraShard }))

	// The extra shard holds its own tensor plus one that shard 3 holds too.
	dup := base.Names()[base.Len()-1]
	dupInfo, _ := base.Tensor(dup)
	dupData, err := base.Data(dup)
	require.NoError(t, err)
	header, err := stfile.EncodeHeader([]stfile.Info{
		{Name: dup, DType: dupInfo.DType, Shape: dupInfo.Shape},
		{Name: "extra.weight", DType: dupInfo.DType, Shape: dupInfo.Shape},
	}, nil)
	require.NoError(t, err)
	require.NoError(t, writeFileAtomic(filepath.Join(dir, extraShard), func(w io.Writer) error {
		if err := stfile.WriteHeader(w, header); err != nil {
			return err
		}
		if _, err := w.Write(dupData); err != nil {
			return err
		}
		_, err := w.Write(dupData)
		return err
	}))

	_, err = Open(dir)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrFormat)
	assert.Contains(t, err.Error(), dup)
	assert.Contains(t, err.Error(), extraShard)
}

// TestSideFiles: every regular file beside the shards is carried, whatever
// its name; what is not is listed with a reason.
func TestSideFiles(t *testing.T) {
	openBase(t)
	dir := t.TempDir()
	require.NoError(t, os.Symlink(absPath(t, basePath), filepath.Join(dir, SingleName)))
	write := func(name string, size int) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), make([]byte, size), 0o644))
	}
	sparse := func(name string, size int64) {
		f, err := os.Create(filepath.Join(dir, name))
		require.NoError(t, err)
		require.NoError(t, f.Truncate(size)) // sparse: costs no disk
		require.NoError(t, f.Close())
	}
	write("config.json", 10)
	write("tokenizer.model", 20)
	write("chat_template.jinja", 30)
	write("merges.txt", 40)
	write("qwen.tiktoken", 50)
	write("configuration_x.py", 60)
	write("README.md", 5)
	write("LICENSE", 7)
	write(".gitattributes", 3)
	write(".hidden.json", 5)
	write(`back\slash.txt`, 1)
	write("other.safetensors", 5)
	write("pytorch_model.bin", 5)
	write("training_args.bin", 5)
	write("model.Q4_K_M.gguf", 5)
	write("flax_model.msgpack", 5)
	require.NoError(t, os.Mkdir(filepath.Join(dir, "original"), 0o755))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "sub.json"), 0o755))
	require.NoError(t, os.Symlink(filepath.Join(dir, "config.json"), filepath.Join(dir, "linked.json")))
	require.NoError(t, os.Symlink(filepath.Join(dir, "gone"), filepath.Join(dir, "dangling.json")))
	sparse("big.json", MaxSideFileSize)
	sparse("fill1.dat", MaxSideFileSize-1)
	sparse("fill2.dat", MaxSideFileSize-1)
	sparse("fill3.dat", MaxSideFileSize-1)
	sparse("fill4.dat", MaxSideFileSize-1) // the total cap falls on this one

	c := openDir(t, dir)
	side, skipped, err := c.SideFiles()
	require.NoError(t, err)
	var names []string
	for _, s := range side {
		names = append(names, s.Name)
		assert.Equal(t, filepath.Join(dir, s.Name), s.Path)
	}
	assert.Equal(t, []string{".gitattributes", ".hidden.json", "LICENSE", "README.md", "chat_template.jinja",
		"config.json", "configuration_x.py", "fill1.dat", "fill2.dat", "fill3.dat", "linked.json", "merges.txt",
		"qwen.tiktoken", "tokenizer.model"}, names)
	assert.EqualValues(t, 10, side[5].Size)
	assert.EqualValues(t, 10, side[10].Size, "symbolic links are followed")

	reasons := map[string]string{}
	for _, s := range skipped {
		reasons[s.Name] = s.Reason
	}
	for name, want := range map[string]string{
		`back\slash.txt`:     "backslash",
		"big.json":           "cap for one side file",
		"dangling.json":      "link to nothing",
		"fill4.dat":          "cap for all side files together",
		"flax_model.msgpack": "another format: .msgpack",
		"model.Q4_K_M.gguf":  "another format: .gguf",
		"original":           "a subfolder",
		"other.safetensors":  "not a shard",
		"pytorch_model.bin":  "another format: .bin",
		"sub.json":           "a subfolder",
		"training_args.bin":  "another format: .bin",
	} {
		assert.Contains(t, reasons[name], want, name)
	}
	assert.Len(t, skipped, 11)
	assert.NotContains(t, reasons, SingleName, "the shard is neither carried nor skipped")
}

func TestCloseAndOddPaths(t *testing.T) {
	openBase(t)
	c, err := Open(basePath)
	require.NoError(t, err)
	name := c.Names()[0]
	require.NoError(t, c.Close())
	require.NoError(t, c.Close(), "Close is idempotent")
	_, err = c.Data(name)
	assert.ErrorIs(t, err, stfile.ErrClosed)

	_, err = Open(filepath.Join(modelDir, "config.json"))
	assert.Error(t, err, "a JSON file is not a checkpoint")

	bad := filepath.Join(t.TempDir(), "bad.safetensors")
	require.NoError(t, os.WriteFile(bad, []byte("not a safetensors file"), 0o644))
	_, err = Open(bad)
	assert.ErrorIs(t, err, ErrFormat)
}

// absPath makes a path absolute, for symlinks that live in other folders.
func absPath(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	require.NoError(t, err)
	return a
}

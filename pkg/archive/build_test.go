package archive

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"testing"

	"github.com/nlpodyssey/safetensors"
	"github.com/stretchr/testify/require"

	"github.com/deltacome/deltacome/pkg/stfile"
)

// builder writes test archives whose records agree with each other: the
// shard header, the base records and the fingerprint follow from the
// tensors added.
type builder struct {
	tb     testing.TB
	path   string
	w      *Writer
	m      Manifest
	header []stfile.Info
}

// newBuilder starts an archive of one shard, made in mode with method.
func newBuilder(tb testing.TB, mode, method string) *builder {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "a.dcm")
	w, err := Create(path)
	require.NoError(tb, err)
	return &builder{tb: tb, path: path, w: w, m: Manifest{Format: FormatName, Version: Version, Tool: "test",
		Settings: Settings{Mode: mode, Method: method},
		Layout:   Layout{Folder: true}}}
}

// blob encodes raw and adds it to the file as tensor name, a 1-D U8
// tensor of its stored size when shape is nil.
func (b *builder) blob(role, name string, raw []byte, codec string, shuffle int, dt safetensors.DType, shape []uint64) Blob {
	b.tb.Helper()
	bl, stored, err := EncodeBlob(role, name, raw, codec, shuffle)
	require.NoError(b.tb, err)
	if shape == nil {
		shape = []uint64{uint64(len(stored))}
	}
	require.NoError(b.tb, b.w.Add(bl, dt, shape, stored))
	return bl
}

// tensor records t, filling in its size, its SHA-256 (a hash of its name)
// and its shard entry, and a base tensor of baseDT and the same shape
// unless baseDT is "" (for kind same: t itself).
func (b *builder) tensor(t Tensor, baseDT string) {
	b.tb.Helper()
	dt, err := safetensors.ParseDType(t.DType)
	require.NoError(b.tb, err)
	t.Bytes = int64(dt.Size())
	for _, d := range t.Shape {
		t.Bytes *= int64(d)
	}
	t.SHA256 = fakeSHA(t.Name)
	b.m.Tensors = append(b.m.Tensors, t)
	b.header = append(b.header, stfile.Info{Name: t.Name, DType: dt, Shape: t.Shape})
	if baseDT != "" {
		sha := fakeSHA("base " + t.Name)
		if t.Kind == KindSame {
			sha = t.SHA256
		}
		b.m.Base.Tensors = append(b.m.Base.Tensors, BaseTensor{Name: t.Name, DType: baseDT, Shape: t.Shape, SHA256: sha})
	}
}

// side records a side file of the given bytes.
func (b *builder) side(name string, data []byte, codec string) {
	b.tb.Helper()
	bl := b.blob(RoleSideFile, "__side__/"+name, data, codec, 0, safetensors.U8, nil)
	sum := sha256.Sum256(data)
	b.m.SideFiles = append(b.m.SideFiles, SideFile{Name: name, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:]), Blob: bl})
}

// commit writes the archive and returns its path.
func (b *builder) commit() string {
	b.tb.Helper()
	h, err := stfile.EncodeHeader(b.header, nil)
	require.NoError(b.tb, err)
	b.m.Layout.Shards = []Shard{{File: "model.safetensors", Header: string(h)}}
	b.m.Base.Fingerprint = Fingerprint(b.m.Base.Tensors)
	require.NoError(b.tb, b.w.Commit(&b.m))
	return b.path
}

func fakeSHA(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

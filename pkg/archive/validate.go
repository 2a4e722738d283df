package archive

import (
	"fmt"
	"math/bits"
	"slices"
	"strings"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/pkg/stfile"
)

// This file holds the checks that decide, once, where a manifest is read,
// whether an archive is well formed: every record against itself, against
// the other records and against the blobs of the file. Decoders may then
// size their work from a record without further checks; a refusal wraps
// ErrFormat (ErrVersion for a newer version) and names the tensor, side
// file or shard and the field. docs/FORMAT.md section 4 lists the same
// rules.

// Limits of what a reader accepts (docs/FORMAT.md section 5).
const (
	// maxTensorBytes caps the size of one tensor, and of one decoded blob
	// (64 GiB, above any single tensor of released models), so that no
	// size read from a file makes a reader allocate without bound.
	maxTensorBytes = 64 << 30
	// maxShuffle is the largest Blob.Shuffle: the largest element size of a
	// safetensors dtype (8 bytes, F64, I64, U64).
	maxShuffle = 8
	// maxBits is the widest code of a Delta-CoMe band.
	maxBits = 8
	// maxZstdRatio bounds a zstd blob's decoded size by its stored size, so
	// that what DecodeBlob allocates is proportional to bytes actually in
	// the file: no zstd frame expands more than 32768-fold (its densest
	// form, an RLE block, spends 4 bytes on at most 128 KiB).
	maxZstdRatio = 1 << 15
)

// validate checks the manifest's internal consistency and its agreement
// with blobs, the tensors of the archive file by name.
func (m *Manifest) validate(blobs map[string]stfile.Info) error {
	checks := []func() error{
		m.validateHeader,
		m.validatePart,
		m.validateFiles,
		m.validateSideFiles,
		m.validateBase,
		m.validateTensors,
		m.validateShards,
		func() error { return m.validateBlobRefs(blobs) },
	}
	for _, check := range checks {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// refuse returns the error refusing an archive: what is wrong (a tensor,
// side file or shard), in which field, and why.
func refuse(what, field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s: %s", ErrFormat, what, field, fmt.Sprintf(format, args...))
}

// validateHeader checks format, version and the settings a reader relies
// on: the mode and the method, which say which storage kinds may appear.
func (m *Manifest) validateHeader() error {
	what, newest := "archive", Version
	switch {
	case m.Format == PartFormatName && m.Part != nil:
		what, newest = "part", PartVersion
	case m.Format != FormatName || m.Part != nil:
		return fmt.Errorf("%w: manifest format %q, want %q (or %q with a part record)", ErrFormat, m.Format, FormatName, PartFormatName)
	}
	if m.Version < 1 {
		return fmt.Errorf("%w: manifest version %d", ErrFormat, m.Version)
	}
	if m.Version > newest {
		return fmt.Errorf("%w: %s is version %d, this build reads up to %d; upgrade deltacome", ErrVersion, what, m.Version, newest)
	}
	s := m.Settings
	if _, ok := s.lossyKind(); !ok {
		return refuse("settings", "mode", "unknown mode %q or method %q", s.Mode, s.Method)
	}
	if s.Ratio < 0 {
		return refuse("settings", "ratio", "%v is negative", s.Ratio)
	}
	if !(s.MaxError >= 0 && s.MaxError < 1) {
		return refuse("settings", "max_error", "%v is outside [0, 1)", s.MaxError)
	}
	if s.GroupSize < 0 {
		return refuse("settings", "group_size", "%d is negative", s.GroupSize)
	}
	return nil
}

// validatePart checks a part file's part record: its place in the set, the
// base tensor names and the identities (docs/FORMAT.md section 7).
func (m *Manifest) validatePart() error {
	p := m.Part
	if p == nil {
		return nil
	}
	if p.Count < 1 || p.Count > MaxParts {
		return refuse("part", "count", "%d out of range [1, %d]", p.Count, MaxParts)
	}
	if p.Index < 1 || p.Index > p.Count {
		return refuse("part", "index", "%d out of range [1, %d]", p.Index, p.Count)
	}
	if !isIdentity(p.BaseIdentity) {
		return refuse("part", "base_identity", "%q is not sha256: and 64 lowercase hex digits", p.BaseIdentity)
	}
	if !isIdentity(p.FineTuneIdentity) {
		return refuse("part", "fine_tune_identity", "%q is not sha256: and 64 lowercase hex digits", p.FineTuneIdentity)
	}
	seen := make(map[string]bool, len(p.BaseTensors))
	for _, name := range p.BaseTensors {
		if name == "" || seen[name] {
			return refuse("part", "base_tensors", "%q is empty or listed twice", name)
		}
		seen[name] = true
	}
	for _, bt := range m.Base.Tensors {
		if !seen[bt.Name] {
			return refuse(fmt.Sprintf("base tensor %q", bt.Name), "name", "not in part.base_tensors")
		}
	}
	return nil
}

// isIdentity reports whether s is an identity as section 7.2 writes it.
func isIdentity(s string) bool {
	hex, ok := strings.CutPrefix(s, "sha256:")
	return ok && isSHA256(hex)
}

// lossyKind returns the one lossy kind an archive made with s may hold
// ("" for none), and false for an unknown mode or method.
func (s Settings) lossyKind() (string, bool) {
	switch s.Mode {
	case "lossless":
		return "", s.Method == "" && s.Grid == ""
	case "deltacome":
		return MethodKind(s.Method, s.Grid)
	}
	return "", false
}

// validateFiles checks the names of the files a reconstruction creates:
// shards, side files and the index.
func (m *Manifest) validateFiles() error {
	l := m.Layout
	if len(l.Shards) == 0 && len(m.Tensors) > 0 {
		return refuse("layout", "shards", "tensors but no shards")
	}
	if !l.Folder && (len(l.Shards) > 1 || l.Index != "") {
		return refuse("layout", "folder", "a lone file has %d shards and index %q", len(l.Shards), l.Index)
	}
	files := make(map[string]string)
	name := func(what, field, s string) error {
		if !safeName(s) {
			return refuse(what, field, "%q is not a plain file name", s)
		}
		if other, ok := files[s]; ok {
			return refuse(what, field, "%q is also the name of %s", s, other)
		}
		files[s] = what
		return nil
	}
	for i, s := range l.Shards {
		if err := name(fmt.Sprintf("shard %d", i), "file", s.File); err != nil {
			return err
		}
	}
	if l.Index != "" && !safeName(l.Index) {
		return refuse("layout", "index", "%q is not a plain file name", l.Index)
	}
	if _, ok := files[l.Index]; ok {
		return refuse("layout", "index", "%q is also a shard", l.Index)
	}
	for _, f := range m.SideFiles {
		if err := name(fmt.Sprintf("side file %q", f.Name), "name", f.Name); err != nil {
			return err
		}
	}
	return nil
}

// validateSideFiles checks each side file's checksum, size and blob record.
func (m *Manifest) validateSideFiles() error {
	for i := range m.SideFiles {
		f := &m.SideFiles[i]
		what := fmt.Sprintf("side file %q", f.Name)
		if !isSHA256(f.SHA256) {
			return refuse(what, "sha256", "%q is not 64 lowercase hex digits", f.SHA256)
		}
		if f.Size < 0 || f.Size > maxTensorBytes {
			return refuse(what, "size", "%d out of range [0, %d]", f.Size, int64(maxTensorBytes))
		}
		if err := sideSpec(*f).check(what, f.Blob); err != nil {
			return err
		}
	}
	return nil
}

// validateBase checks the base records and their fingerprint.
func (m *Manifest) validateBase() error {
	seen := make(map[string]bool, len(m.Base.Tensors))
	for i := range m.Base.Tensors {
		bt := &m.Base.Tensors[i]
		what := fmt.Sprintf("base tensor %q", bt.Name)
		if bt.Name == "" || seen[bt.Name] {
			return refuse(what, "name", "empty or recorded twice")
		}
		seen[bt.Name] = true
		if _, err := tensorBytes(what, bt.DType, bt.Shape); err != nil {
			return err
		}
		if !isSHA256(bt.SHA256) {
			return refuse(what, "sha256", "%q is not 64 lowercase hex digits", bt.SHA256)
		}
	}
	if m.Part != nil {
		if m.Base.Fingerprint != "" {
			return refuse("base", "fingerprint", "%q in a part, which holds only its share of the base records", m.Base.Fingerprint)
		}
		return nil
	}
	if fp := Fingerprint(m.Base.Tensors); fp != m.Base.Fingerprint {
		return refuse("base", "fingerprint", "%q, the base records give %q", m.Base.Fingerprint, fp)
	}
	return nil
}

// validateTensors checks each tensor record: its own fields, its kind's
// record and blobs, and its agreement with the base record of the same
// name.
func (m *Manifest) validateTensors() error {
	base := make(map[string]*BaseTensor, len(m.Base.Tensors))
	for i := range m.Base.Tensors {
		base[m.Base.Tensors[i].Name] = &m.Base.Tensors[i]
	}
	lossy, _ := m.Settings.lossyKind() // checked by validateHeader
	seen := make(map[string]bool, len(m.Tensors))
	for i := range m.Tensors {
		t := &m.Tensors[i]
		what := fmt.Sprintf("tensor %q", t.Name)
		if t.Name == "" || seen[t.Name] {
			return refuse(what, "name", "empty or recorded twice")
		}
		seen[t.Name] = true
		if t.Shard < 0 || t.Shard >= len(m.Layout.Shards) {
			return refuse(what, "shard", "%d out of range [0, %d)", t.Shard, len(m.Layout.Shards))
		}
		if !isSHA256(t.SHA256) {
			return refuse(what, "sha256", "%q is not 64 lowercase hex digits", t.SHA256)
		}
		n, err := tensorBytes(what, t.DType, t.Shape)
		if err != nil {
			return err
		}
		if t.Bytes != n {
			return refuse(what, "bytes", "%d, but %s %v holds %d", t.Bytes, t.DType, t.Shape, n)
		}
		k, ok := lookupKind(t.Kind)
		if !ok {
			return refuse(what, "kind", "unknown storage kind %q", t.Kind)
		}
		if k.lossy && t.Kind != lossy {
			return refuse(what, "kind", "%s in an archive of mode %q, method %q", t.Kind, m.Settings.Mode, m.Settings.Method)
		}
		if err := validateRecords(what, t); err != nil {
			return err
		}
		if err := k.base(what, t, base[t.Name]); err != nil {
			return err
		}
		specs, err := k.blobs(what, t)
		if err != nil {
			return err
		}
		if err := checkBlobs(what, t.Blobs, specs); err != nil {
			return err
		}
	}
	return nil
}

// sameAsBase requires the base tensor of kind same to be the tensor itself.
func sameAsBase(what string, t *Tensor, bt *BaseTensor) error {
	if err := likeBase(what, t, bt); err != nil {
		return err
	}
	if bt.SHA256 != t.SHA256 {
		return refuse(what, "sha256", "kind same, but the base tensor's is %s", bt.SHA256)
	}
	return nil
}

// likeBase requires a base tensor of the same dtype and shape.
func likeBase(what string, t *Tensor, bt *BaseTensor) error {
	if bt == nil {
		return refuse(what, "kind", "%s, but the base has no tensor of that name", t.Kind)
	}
	if bt.DType != t.DType || !slices.Equal(bt.Shape, t.Shape) {
		return refuse(what, "dtype", "%s %v of kind %s over a base tensor of %s %v", t.DType, t.Shape, t.Kind, bt.DType, bt.Shape)
	}
	return nil
}

// matrixOverBase requires a floating-point matrix over a floating-point
// base tensor of the same shape: what the lossy kinds decode.
func matrixOverBase(what string, t *Tensor, bt *BaseTensor) error {
	if bt == nil {
		return refuse(what, "kind", "%s, but the base has no tensor of that name", t.Kind)
	}
	if len(t.Shape) != 2 || !slices.Equal(bt.Shape, t.Shape) {
		return refuse(what, "shape", "%v of kind %s over a base tensor of shape %v", t.Shape, t.Kind, bt.Shape)
	}
	if !isFloat(t.DType) || !isFloat(bt.DType) {
		return refuse(what, "dtype", "%s of kind %s over a base tensor of %s: both must be floating point", t.DType, t.Kind, bt.DType)
	}
	return nil
}

// isFloat reports the dtypes the lossy kinds decode from and to.
func isFloat(dt string) bool {
	return dt == "F16" || dt == "BF16" || dt == "F32" || dt == "F64"
}

// exactBlob returns the blobs of a bit-exact kind: role, of the tensor's
// size.
func exactBlob(role string) func(string, *Tensor) ([]blobSpec, error) {
	return func(_ string, t *Tensor) ([]blobSpec, error) {
		return []blobSpec{{role: role, dtype: safetensors.U8, rawSize: t.Bytes}}, nil
	}
}

// lowRankBlobs checks a Delta-CoMe record (rank, bands, group size,
// budget) and returns the five blobs it implies.
func lowRankBlobs(what string, t *Tensor) ([]blobSpec, error) {
	lr := t.LowRank
	if lr.GroupSize < 1 {
		return nil, refuse(what, "lowrank.group_size", "%d, want at least 1", lr.GroupSize)
	}
	rows, cols, r, sumBits, err := checkQuantized(what, "lowrank", t, lr)
	if err != nil {
		return nil, err
	}
	g := int64(lr.GroupSize)
	// rows, cols and r are at most 2^36 (maxTensorBytes) and sumBits at
	// most 8r: no product below overflows.
	groupsU, groupsV := ceilDiv(rows, g)*r, ceilDiv(cols, g)*r
	specs := []blobSpec{
		{role: RoleSigma, dtype: safetensors.F32, shape: []uint64{uint64(r)}},
		{role: RoleUCodes, dtype: safetensors.U8, shape: []uint64{uint64(ceilDiv(rows*sumBits, 8))}},
		{role: RoleUQParams, dtype: safetensors.BF16, shape: []uint64{uint64(groupsU), 2}},
		{role: RoleVCodes, dtype: safetensors.U8, shape: []uint64{uint64(ceilDiv(cols*sumBits, 8))}},
		{role: RoleVQParams, dtype: safetensors.BF16, shape: []uint64{uint64(groupsV), 2}},
	}
	return rawSpecs(what, "lowrank.budget", lr.Budget, specs)
}

// checkQuantized checks the fields a record of quantized singular vectors
// (JSON name record) shares with lowrank: rank, bands and measurements. It
// returns the tensor's rows and cols, the rank and the sum of the widths.
func checkQuantized(what, record string, t *Tensor, lr *LowRank) (rows, cols, r, sumBits int64, err error) {
	rows, cols = int64(t.Shape[0]), int64(t.Shape[1])
	r = int64(lr.Rank)
	if r < 0 || r > min(rows, cols) {
		return 0, 0, 0, 0, refuse(what, record+".rank", "%d out of range [0, %d]", r, min(rows, cols))
	}
	if sumBits, err = checkBands(what, lr.Bands, r); err != nil {
		return 0, 0, 0, 0, err
	}
	if err := checkMetrics(what, record, lr.RelError, lr.DeltaNorm, lr.EnergyKept, lr.Budget); err != nil {
		return 0, 0, 0, 0, err
	}
	return rows, cols, r, sumBits, nil
}

// lowRankSymBlobs checks a symmetric-grid record (rank, bands, group size,
// refit, budget) and returns the four blobs it implies.
func lowRankSymBlobs(what string, t *Tensor) ([]blobSpec, error) {
	lr := t.LowRankSym
	if lr.GroupSize < 0 {
		return nil, refuse(what, "lowrank_sym.group_size", "%d is negative", lr.GroupSize)
	}
	if lr.Refit < 0 || lr.RefitRound < 0 || lr.RefitRound > lr.Refit {
		return nil, refuse(what, "lowrank_sym.refit_round", "round %d of %d refit rounds", lr.RefitRound, lr.Refit)
	}
	rows, cols, r, sumBits, err := checkQuantized(what, "lowrank_sym", t, &lr.LowRank)
	if err != nil {
		return nil, err
	}
	groups := func(n int64) int64 {
		if lr.GroupSize == 0 {
			return 1
		}
		return ceilDiv(n, int64(lr.GroupSize))
	}
	specs := []blobSpec{
		{role: RoleUCodes, dtype: safetensors.U8, shape: []uint64{uint64(ceilDiv(rows*sumBits, 8))}},
		{role: RoleUScales, dtype: safetensors.BF16, shape: []uint64{uint64(groups(rows) * r)}},
		{role: RoleVCodes, dtype: safetensors.U8, shape: []uint64{uint64(ceilDiv(cols*sumBits, 8))}},
		{role: RoleVScales, dtype: safetensors.BF16, shape: []uint64{uint64(groups(cols) * r)}},
	}
	return rawSpecs(what, "lowrank_sym.budget", lr.Budget, specs)
}

// checkBands checks Delta-CoMe bands against rank r and returns the sum of
// the widths of all r vectors. Counts are compared with what is left of r
// before they are added, so no sum overflows.
func checkBands(what string, bands []Band, r int64) (int64, error) {
	var n, sumBits int64
	for i, b := range bands {
		field := fmt.Sprintf("lowrank.bands[%d]", i)
		if b.Bits < 1 || b.Bits > maxBits {
			return 0, refuse(what, field+".bits", "%d out of range [1, %d]", b.Bits, maxBits)
		}
		if i > 0 && b.Bits > bands[i-1].Bits {
			return 0, refuse(what, field+".bits", "%d after %d: widths must not increase", b.Bits, bands[i-1].Bits)
		}
		if b.Count < 1 || int64(b.Count) > r-n {
			return 0, refuse(what, field+".count", "%d: the bands before hold %d of rank %d vectors, each band at least 1", b.Count, n, r)
		}
		n += int64(b.Count)
		sumBits += int64(b.Count) * int64(b.Bits)
	}
	if n != r {
		return 0, refuse(what, "lowrank.bands", "hold %d vectors, rank is %d", n, r)
	}
	return sumBits, nil
}

// checkMetrics checks the measurements a lossy record carries (record
// names it in errors): none is negative (encoding/json refuses non-finite
// numbers).
func checkMetrics(what, record string, relError, deltaNorm, energyKept float64, budget int64) error {
	for _, m := range []struct {
		field string
		v     float64
	}{{"rel_error", relError}, {"delta_norm", deltaNorm}, {"energy_kept", energyKept}, {"budget", float64(budget)}} {
		if m.v < 0 {
			return refuse(what, record+"."+m.field, "%v is negative", m.v)
		}
	}
	return nil
}

// bitDeltaBlobs returns the blobs of a BitDelta tensor: one sign bit per
// element and one float32 scale.
func bitDeltaBlobs(what string, t *Tensor) ([]blobSpec, error) {
	bd := t.BitDelta
	if err := checkMetrics(what, "bitdelta", bd.RelError, bd.DeltaNorm, 0, 0); err != nil {
		return nil, err
	}
	n := int64(t.Shape[0]) * int64(t.Shape[1]) // at most maxTensorBytes
	specs := []blobSpec{
		{role: RoleSigns, dtype: safetensors.U8, shape: []uint64{uint64(ceilDiv(n, 8))}},
		{role: RoleScale, dtype: safetensors.F32, shape: []uint64{1}},
	}
	return rawSpecs(what, "", -1, specs)
}

// lowRankBF16Blobs checks a low-rank bf16 record and returns its two
// factor blobs.
func lowRankBF16Blobs(what string, t *Tensor) ([]blobSpec, error) {
	lr := t.LowRankBF16
	rows, cols := t.Shape[0], t.Shape[1]
	if lr.Rank < 0 || uint64(lr.Rank) > min(rows, cols) {
		return nil, refuse(what, "lowrank_bf16.rank", "%d out of range [0, %d]", lr.Rank, min(rows, cols))
	}
	if err := checkMetrics(what, "lowrank_bf16", lr.RelError, lr.DeltaNorm, lr.EnergyKept, lr.Budget); err != nil {
		return nil, err
	}
	r := uint64(lr.Rank)
	specs := []blobSpec{
		{role: RoleU, dtype: safetensors.BF16, shape: []uint64{rows, r}},
		{role: RoleV, dtype: safetensors.BF16, shape: []uint64{r, cols}},
	}
	return rawSpecs(what, "lowrank_bf16.budget", lr.Budget, specs)
}

// rawSpecs fills in the raw sizes of blobs stored raw, whose dtype and
// shape fix their size, and checks their total against budget (none when
// budget < 0).
func rawSpecs(what, budgetField string, budget int64, specs []blobSpec) ([]blobSpec, error) {
	var total int64
	for i := range specs {
		s := &specs[i]
		s.rawOnly = true
		n, err := tensorBytes(what+": blob "+s.role, s.dtype.String(), s.shape)
		if err != nil {
			return nil, err
		}
		s.rawSize = n
		total += n
	}
	if budget >= 0 && total > budget {
		return nil, refuse(what, budgetField, "%d bytes, but the blobs it describes hold %d", budget, total)
	}
	return specs, nil
}

// blobSpec is what a record implies about one of its blobs.
type blobSpec struct {
	role  string
	dtype safetensors.DType
	// shape is the blob's shape in the file; nil for a 1-D U8 blob of its
	// stored size.
	shape []uint64
	// rawSize is the blob's size once decoded.
	rawSize int64
	// rawOnly blobs are stored with CodecRaw.
	rawOnly bool
}

// checkBlobs checks that blobs holds exactly one blob of each role specs
// names, and no other, each as its spec says.
func checkBlobs(what string, blobs []Blob, specs []blobSpec) error {
	if len(blobs) != len(specs) {
		return refuse(what, "blobs", "%d blobs, want %d", len(blobs), len(specs))
	}
	for _, s := range specs {
		n := 0
		for _, b := range blobs {
			if b.Role == s.role {
				n++
				if err := s.check(what, b); err != nil {
					return err
				}
			}
		}
		if n != 1 {
			return refuse(what, "blobs", "%d blobs of role %q, want 1", n, s.role)
		}
	}
	return nil
}

// check checks b's record against the spec (the stored blob is checked
// against the file by validateBlobRefs).
func (s blobSpec) check(what string, b Blob) error {
	what = fmt.Sprintf("%s: blob %q", what, b.Tensor)
	if b.Role != s.role {
		return refuse(what, "role", "%q, want %q", b.Role, s.role)
	}
	if s.rawOnly && b.Codec != CodecRaw {
		return refuse(what, "codec", "%q, want %q", b.Codec, CodecRaw)
	}
	if err := checkCodec(what, b); err != nil {
		return err
	}
	if b.RawSize != s.rawSize {
		return refuse(what, "raw_size", "%d, the record implies %d", b.RawSize, s.rawSize)
	}
	return nil
}

// checkCodec checks the fields of b that DecodeBlob relies on: a known
// codec, the sizes, and a shuffle that divides the raw size. Errors wrap
// ErrFormat and begin with what.
func checkCodec(what string, b Blob) error {
	if b.Size < 0 || b.RawSize < 0 || b.RawSize > maxTensorBytes {
		return refuse(what, "size", "stored %d, raw %d: out of range [0, %d]", b.Size, b.RawSize, int64(maxTensorBytes))
	}
	switch b.Codec {
	case CodecRaw:
		if b.RawSize != b.Size || b.Shuffle != 0 {
			return refuse(what, "raw_size", "raw blob with raw size %d, size %d, shuffle %d", b.RawSize, b.Size, b.Shuffle)
		}
	case CodecZstd:
		if ceilDiv(b.RawSize, maxZstdRatio) > b.Size {
			return refuse(what, "raw_size", "%d is beyond what %d zstd bytes can hold", b.RawSize, b.Size)
		}
		if b.Shuffle < 0 || b.Shuffle > maxShuffle || (b.Shuffle > 1 && b.RawSize%int64(b.Shuffle) != 0) {
			return refuse(what, "shuffle", "%d: want 0 to %d, dividing the raw size %d", b.Shuffle, maxShuffle, b.RawSize)
		}
	default:
		return refuse(what, "codec", "unknown codec %q", b.Codec)
	}
	return nil
}

// validateShards checks that each shard header parses as a safetensors
// header and lists exactly the tensors recorded in that shard, with their
// dtypes, shapes and sizes; in a part, which records its share of the
// tensors, each record is listed and the rest need no record.
func (m *Manifest) validateShards() error {
	byName := make(map[string]*Tensor, len(m.Tensors))
	for i := range m.Tensors {
		byName[m.Tensors[i].Name] = &m.Tensors[i]
	}
	listed := 0
	for si, s := range m.Layout.Shards {
		what := fmt.Sprintf("shard %q", s.File)
		infos, _, err := stfile.ParseHeader([]byte(s.Header))
		if err != nil {
			return refuse(what, "header", "%v", err)
		}
		for _, info := range infos {
			t, ok := byName[info.Name]
			switch {
			case !ok && m.Part != nil:
				continue
			case !ok:
				return refuse(what, "header", "tensor %q has no record", info.Name)
			case t.Shard != si:
				return refuse(what, "header", "tensor %q is recorded in shard %d", info.Name, t.Shard)
			case t.DType != info.DType.String() || !slices.Equal(t.Shape, info.Shape) || t.Bytes != info.Size:
				return refuse(what, "header", "tensor %q is %s %v there, %s %v in its record", info.Name, info.DType, info.Shape, t.DType, t.Shape)
			}
		}
		for _, info := range infos {
			if _, ok := byName[info.Name]; ok {
				listed++
			}
		}
	}
	if listed != len(m.Tensors) {
		return refuse("layout", "shards", "the headers list %d tensors, %d are recorded", listed, len(m.Tensors))
	}
	return nil
}

// validateBlobRefs checks that every blob record names a tensor of the
// file, with the size, dtype and shape its role implies, that no two
// records name the same one, and that every tensor of the file is named.
func (m *Manifest) validateBlobRefs(file map[string]stfile.Info) error {
	owner := make(map[string]string, len(file))
	ref := func(what string, b Blob, s blobSpec) error {
		if other, ok := owner[b.Tensor]; ok {
			return refuse(what, "tensor", "blob %q is also %s's", b.Tensor, other)
		}
		owner[b.Tensor] = what
		info, ok := file[b.Tensor]
		if !ok {
			return refuse(what, "tensor", "blob %q is not in the file", b.Tensor)
		}
		if info.Size != b.Size {
			return refuse(what, "size", "blob %q: %d bytes in the file, record says %d", b.Tensor, info.Size, b.Size)
		}
		shape := s.shape
		if shape == nil {
			shape = []uint64{uint64(b.Size)}
		}
		if info.DType != s.dtype || !slices.Equal(info.Shape, shape) {
			return refuse(what, "tensor", "blob %q is %s %v in the file, want %s %v", b.Tensor, info.DType, info.Shape, s.dtype, shape)
		}
		return nil
	}
	for i := range m.Tensors {
		t := &m.Tensors[i]
		k, _ := lookupKind(t.Kind)
		specs, _ := k.blobs("", t) // checked by validateTensors
		for _, s := range specs {
			b, _ := t.Blob(s.role)
			if err := ref(fmt.Sprintf("tensor %q", t.Name), b, s); err != nil {
				return err
			}
		}
	}
	for _, f := range m.SideFiles {
		if err := ref(fmt.Sprintf("side file %q", f.Name), f.Blob, sideSpec(f)); err != nil {
			return err
		}
	}
	for name := range file {
		if _, ok := owner[name]; !ok {
			return refuse("blobs", "tensor", "%q is in the file but in no record", name)
		}
	}
	return nil
}

// sideSpec is what side file f implies about its blob.
func sideSpec(f SideFile) blobSpec {
	return blobSpec{role: RoleSideFile, dtype: safetensors.U8, rawSize: f.Size}
}

// tensorBytes returns the size in bytes of a tensor of dtype dt and shape,
// refusing unknown dtypes and sizes above maxTensorBytes (checked at each
// step, so no product overflows).
func tensorBytes(what, dt string, shape []uint64) (int64, error) {
	d, err := safetensors.ParseDType(dt)
	if err != nil {
		return 0, refuse(what, "dtype", "unknown dtype %q", dt)
	}
	n := d.Size()
	for _, x := range shape {
		hi, lo := bits.Mul64(n, x)
		if hi != 0 || lo > maxTensorBytes || x > maxTensorBytes {
			return 0, refuse(what, "shape", "%s %v is over %d bytes", dt, shape, int64(maxTensorBytes))
		}
		n = lo
	}
	return int64(n), nil
}

// ceilDiv returns ceil(a / b) for a >= 0, b >= 1, with no overflow.
func ceilDiv(a, b int64) int64 {
	if a == 0 {
		return 0
	}
	return (a-1)/b + 1
}

// isSHA256 reports whether s is a SHA-256 as the format writes it: 64
// lowercase hex digits.
func isSHA256(s string) bool {
	return len(s) == 64 && !slices.ContainsFunc([]byte(s), func(c byte) bool {
		return !('0' <= c && c <= '9' || 'a' <= c && c <= 'f')
	})
}

// safeName reports whether a file name from an archive may be created in an
// output folder: a plain base name, no separators, not "." or "..".
func safeName(s string) bool {
	return s != "" && s != "." && s != ".." && !slices.ContainsFunc([]byte(s), func(c byte) bool {
		return c == '/' || c == '\\' || c == 0
	})
}

package archive

import "errors"

// FormatName is the value of Manifest.Format in every deltacome archive.
const FormatName = "deltacome"

// Version is the manifest version this package writes and the newest it
// reads. Readers refuse a newer version with ErrVersion: a new version is
// introduced whenever an older reader would otherwise misread an archive.
const Version = 1

// PartFormatName is the value of Manifest.Format in a part file: one
// worker's share of an archive, written by compress --shard and joined by
// merge (docs/FORMAT.md section 7). Open refuses a part (ErrPart);
// OpenPart reads one.
const PartFormatName = "deltacome-part"

// PartVersion is the part format version this package writes and the
// newest it reads, under the rules of Version.
const PartVersion = 1

// MaxParts is the most parts one archive may be split into: far above any
// useful worker count, and a bound on what a reader sizes from Part.Count.
const MaxParts = 1 << 16

// MetadataKey is the safetensors __metadata__ key holding the manifest JSON.
const MetadataKey = "deltacome.manifest"

// MetadataCRCKey is the safetensors __metadata__ key holding the CRC-32C of
// the manifest JSON (the bytes of the value under MetadataKey), written as 8
// lowercase hex digits. Readers refuse an archive whose manifest does not
// match it (ErrChecksum) or that lacks it (ErrFormat): blob checksums live in
// the manifest, so the manifest itself must be protected too.
const MetadataCRCKey = "deltacome.manifest.crc32c"

// Sentinel errors returned (wrapped) by Open and Reader methods.
var (
	// ErrFormat reports a file that is not a well-formed deltacome archive.
	ErrFormat = errors.New("not a valid deltacome archive")
	// ErrVersion reports an archive written by a newer format version.
	ErrVersion = errors.New("unsupported archive format version")
	// ErrChecksum reports stored bytes that do not match their checksum.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrPart reports a part file where a whole archive is expected (see
	// PartError); errors wrapping it wrap ErrFormat too.
	ErrPart = errors.New("a part of an archive, not an archive")
)

// Storage kinds of a fine-tune tensor (Tensor.Kind).
const (
	// KindSame: the tensor is byte-identical to the base tensor of the same
	// name; nothing is stored.
	KindSame = "same"
	// KindXOR: blob "xor" holds FT bytes XOR base bytes; bit-exact.
	KindXOR = "xor"
	// KindFull: blob "data" holds the fine-tune bytes; bit-exact. Used for
	// tensors absent from the base or stored with another dtype there.
	KindFull = "full"
	// KindLowRank: the delta to the base is stored as quantized singular
	// vectors (blobs "sigma", "u.codes", "u.qparams", "v.codes",
	// "v.qparams"); lossy, described by LowRank.
	KindLowRank = "lowrank"
	// KindBitDelta: the delta is stored as its signs, one bit per element
	// (blob "signs"), times one float32 scale per matrix (blob "scale"), the
	// BitDelta method; lossy, described by BitDelta.
	KindBitDelta = "bitdelta"
	// KindLowRankBF16: the delta is stored as its top-r singular factors in
	// bfloat16 (blobs "u", rows x r, and "v", r x cols), what LoRA
	// extraction tools keep; lossy, described by LowRankBF16.
	KindLowRankBF16 = "lowrank-bf16"
	// KindLowRankSym: the delta is stored as singular vectors quantized on
	// symmetric grids, one bf16 scale per group and no minimum, sigma
	// folded into the scales of u (blobs "u.codes", "u.scales", "v.codes",
	// "v.scales"); lossy, described by LowRankSym.
	KindLowRankSym = "lowrank-sym"
)

// Grids of method "deltacome" (Settings.Grid).
const (
	// GridSym quantizes singular vectors on symmetric grids (kind
	// KindLowRankSym): what compress writes by default.
	GridSym = "sym"
	// GridAsym quantizes them on asymmetric grids with a minimum per
	// group (kind KindLowRank), the first format's; absent Settings.Grid
	// means it.
	GridAsym = "asym"
)

// Blob roles (Blob.Role).
const (
	RoleXOR      = "xor"
	RoleData     = "data"
	RoleSigma    = "sigma"
	RoleUCodes   = "u.codes"
	RoleUQParams = "u.qparams"
	RoleVCodes   = "v.codes"
	RoleVQParams = "v.qparams"
	RoleSideFile = "side"
	RoleSigns    = "signs"
	RoleScale    = "scale"
	RoleU        = "u"
	RoleV        = "v"
	RoleUScales  = "u.scales"
	RoleVScales  = "v.scales"
)

// Codecs (Blob.Codec).
const (
	// CodecRaw: the stored bytes are the blob's bytes.
	CodecRaw = "raw"
	// CodecZstd: the stored bytes are one zstd frame (optionally of shuffled
	// byte planes, see Blob.Shuffle).
	CodecZstd = "zstd"
)

// Manifest describes the whole archive. It is stored as JSON under
// MetadataKey; field names below are the JSON names of docs/FORMAT.md.
type Manifest struct {
	Format    string     `json:"format"`
	Version   int        `json:"version"`
	Tool      string     `json:"tool"`
	Settings  Settings   `json:"settings"`
	Base      Base       `json:"base"`
	Layout    Layout     `json:"layout"`
	SideFiles []SideFile `json:"side_files"`
	Tensors   []Tensor   `json:"tensors"`
	// Part is set in a part file (Format PartFormatName) only: which share
	// of the archive it holds and what it was made from.
	Part *Part `json:"part,omitempty"`
}

// Part describes a part file: share Index of Count of one archive's work.
// The part's Tensors, SideFiles and Base.Tensors hold its share of the
// records (Base.Fingerprint is empty: only the whole set gives it); its
// Settings, Layout and Tool are the whole archive's.
type Part struct {
	// Index is the part's number, 1 to Count.
	Index int `json:"index"`
	// Count is the number of parts of the archive.
	Count int `json:"count"`
	// BaseTensors names every tensor of the base, in the order of the
	// archive's base records; each is recorded (hashed) by one part.
	BaseTensors []string `json:"base_tensors"`
	// BaseIdentity and FineTuneIdentity identify the inputs the part was
	// made from ("sha256:" + 64 lowercase hex digits, docs/FORMAT.md
	// section 7.2): the parts of one archive carry the same values.
	BaseIdentity     string `json:"base_identity"`
	FineTuneIdentity string `json:"fine_tune_identity"`
}

// Settings records the options the archive was made with.
type Settings struct {
	// Mode is "deltacome" (low-rank compression of projections) or
	// "lossless" (every tensor bit-exact).
	Mode string `json:"mode"`
	// Method is how the projections are stored in "deltacome" mode:
	// "deltacome" (quantized singular vectors), "bitdelta" (signs and one
	// scale) or "lowrank" (bf16 singular factors). Absent means "deltacome".
	Method string `json:"method,omitempty"`
	// Grid is the quantization grid of method "deltacome": GridSym or
	// GridAsym; absent means GridAsym (archives written before it existed).
	Grid string `json:"grid,omitempty"`
	// Refit is the number of alternating least-squares rounds asked for
	// (grid "sym"); informative.
	Refit int     `json:"refit,omitempty"`
	Ratio float64 `json:"ratio,omitempty"`
	// MaxError is the aggregate relative error target the projections'
	// budgets were chosen for (compress --max-error), in place of Ratio;
	// absent when a ratio was given.
	MaxError float64 `json:"max_error,omitempty"`
	// Budget is how the bytes were spread over the projections for
	// MaxError: "model" (equal slope within a trust region) or "matrix"
	// (one ratio for all); absent without MaxError.
	Budget    string   `json:"budget,omitempty"`
	Schedule  string   `json:"schedule,omitempty"`
	GroupSize int      `json:"group_size,omitempty"`
	SVD       string   `json:"svd,omitempty"`
	Include   []string `json:"include,omitempty"`
	Exclude   []string `json:"exclude,omitempty"`
	// Calibration describes the input statistics compress --calibration
	// was given; absent for a data-free archive.
	Calibration *Calibration `json:"calibration,omitempty"`
}

// Calibration describes the input statistics (docs/CALIBRATION.md) an
// archive's projections were encoded with; informative, reconstruct does
// not read it.
type Calibration struct {
	// File is the statistics file's name, without the path leading to it.
	File string `json:"file"`
	// Tokens is the number of tokens the statistics were measured on.
	Tokens int64 `json:"tokens"`
	// Text and TextSHA256 name the calibration text file and its hex
	// SHA-256, as the statistics record them.
	Text       string `json:"text"`
	TextSHA256 string `json:"text_sha256"`
	// Fingerprint is the fingerprint of the checkpoint the statistics were
	// measured on, as they record it.
	Fingerprint string `json:"fingerprint"`
	// Sites is the number of input sites the statistics hold.
	Sites int `json:"sites"`
}

// Base identifies the base checkpoint the archive was made against.
type Base struct {
	// Fingerprint is "sha256:" + hex SHA-256 over the Tensors records
	// (see Fingerprint).
	Fingerprint string `json:"fingerprint"`
	// Source names the base as compress was given it (the folder or file
	// name, without the path that leads to it); informative only, absent
	// in archives written before it existed.
	Source  string       `json:"source,omitempty"`
	Tensors []BaseTensor `json:"tensors"`
}

// BaseTensor is one tensor of the base: enough to check, tensor by tensor,
// that a base given to reconstruct is the one used to compress.
type BaseTensor struct {
	Name   string   `json:"name"`
	DType  string   `json:"dtype"`
	Shape  []uint64 `json:"shape"`
	SHA256 string   `json:"sha256"`
}

// Layout is how the fine-tune was laid out on disk, so that reconstruct
// writes the same files.
type Layout struct {
	// Folder is true when the fine-tune was a folder; false for a lone file.
	Folder bool `json:"folder"`
	// Index is the index json file name ("model.safetensors.index.json") of
	// a sharded fine-tune, or "". Its bytes travel as a side file.
	Index  string  `json:"index,omitempty"`
	Shards []Shard `json:"shards"`
}

// Shard is one safetensors file of the fine-tune.
type Shard struct {
	// File is the shard's base name.
	File string `json:"file"`
	// Header is the shard's header JSON exactly as it was in the file,
	// padding included; it fixes tensor order, offsets and __metadata__.
	Header string `json:"header"`
}

// SideFile is a small non-tensor file of the fine-tune folder (config.json,
// tokenizer files, the index json), carried verbatim.
type SideFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	Blob   Blob   `json:"blob"`
}

// Tensor is the record of one fine-tune tensor.
type Tensor struct {
	Name  string   `json:"name"`
	DType string   `json:"dtype"`
	Shape []uint64 `json:"shape"`
	// Shard indexes Layout.Shards.
	Shard int `json:"shard"`
	// Kind is one of KindSame, KindXOR, KindFull, KindLowRank, KindBitDelta,
	// KindLowRankBF16, KindLowRankSym.
	Kind string `json:"kind"`
	// SHA256 is the hex SHA-256 of the fine-tune tensor's bytes; for the
	// bit-exact kinds it is verified on reconstruction.
	SHA256 string `json:"sha256"`
	// Bytes is the original size of the tensor in bytes.
	Bytes int64  `json:"bytes"`
	Blobs []Blob `json:"blobs,omitempty"`
	// LowRank is set for KindLowRank only.
	LowRank *LowRank `json:"lowrank,omitempty"`
	// BitDelta is set for KindBitDelta only.
	BitDelta *BitDelta `json:"bitdelta,omitempty"`
	// LowRankBF16 is set for KindLowRankBF16 only.
	LowRankBF16 *LowRankBF16 `json:"lowrank_bf16,omitempty"`
	// LowRankSym is set for KindLowRankSym only.
	LowRankSym *LowRankSym `json:"lowrank_sym,omitempty"`
}

// Blob is one stored safetensors tensor of the archive.
type Blob struct {
	Role string `json:"role"`
	// Tensor is the blob's tensor name inside the archive file.
	Tensor string `json:"tensor"`
	Codec  string `json:"codec"`
	// Shuffle is the element size whose byte planes were separated before
	// compression (0 or 1: none).
	Shuffle int `json:"shuffle,omitempty"`
	// RawSize is the size in bytes after decoding.
	RawSize int64 `json:"raw_size"`
	// Size is the stored size in bytes.
	Size int64 `json:"size"`
	// CRC32C is the Castagnoli CRC-32 of the stored bytes.
	CRC32C uint32 `json:"crc32c"`
}

// LowRank describes a tensor stored as quantized singular vectors:
// W = W_base + U_q diag(sigma) V_q^T, U_q (rows x rank) and V_q (cols x rank).
type LowRank struct {
	Rank int `json:"rank"`
	// Bands are consecutive runs of singular vectors sharing a bit width, in
	// singular-value order; their counts sum to Rank.
	Bands     []Band `json:"bands"`
	GroupSize int    `json:"group_size"`
	// RelError is |Delta - Delta_hat|_F / |Delta|_F measured at compression.
	RelError float64 `json:"rel_error"`
	// DeltaNorm is |Delta|_F, to aggregate errors over tensors.
	DeltaNorm float64 `json:"delta_norm"`
	// EnergyKept is sum of kept sigma^2 / |Delta|_F^2.
	EnergyKept float64 `json:"energy_kept"`
	// Budget is the byte budget the allocation had (fp16 size / ratio).
	Budget int64 `json:"budget"`
	// SVDFallback, informative, says why the SVD route asked for was not the one used.
	SVDFallback string `json:"svd_fallback,omitempty"`
}

// LowRankSym describes a tensor stored as singular vectors quantized on
// symmetric grids (docs/FORMAT.md section 2.10): W = W_base + U_q V_q^T,
// U_q (rows x rank) carrying the singular values in its scales. Its fields
// are those of LowRank, but GroupSize 0 means one group per vector; Refit
// says how many alternating least-squares rounds were run and RefitRound
// which one was kept (0: the SVD's vectors).
//
// Calibration is set when compress was given input statistics
// (Settings.Calibration): "calibrated" when the calibrated factors were
// kept, "data-free" when the data-free ones had the lower H-weighted error,
// "unusable" when the statistics could not be used for this matrix (not
// positive definite), "no-statistics" when the statistics have no site
// for it; absent without statistics. HRelError is the kept factors'
// H-weighted relative error sqrt(tr(E H Eᵀ) / tr(Delta H Deltaᵀ)), and
// HRelErrorDataFree the data-free factors' (docs/CALIBRATION.md).
type LowRankSym struct {
	LowRank
	Refit             int     `json:"refit,omitempty"`
	RefitRound        int     `json:"refit_round,omitempty"`
	Calibration       string  `json:"calibration,omitempty"`
	HRelError         float64 `json:"h_rel_error,omitempty"`
	HRelErrorDataFree float64 `json:"h_rel_error_data_free,omitempty"`
}

// BitDelta describes a tensor stored as W = W_base + scale * sign(Delta),
// sign(x) = +1 for x >= 0 and -1 for x < 0 (docs/FORMAT.md section 2.8).
type BitDelta struct {
	// RelError is |Delta - Delta_hat|_F / |Delta|_F measured at compression.
	RelError float64 `json:"rel_error"`
	// DeltaNorm is |Delta|_F, to aggregate errors over tensors.
	DeltaNorm float64 `json:"delta_norm"`
}

// LowRankBF16 describes a tensor stored as W = W_base + U' V', U' (rows x
// rank) and V' (rank x cols) the bf16 factors of the top-rank truncated SVD
// of Delta, each carrying the square root of the singular values
// (docs/FORMAT.md section 2.9).
type LowRankBF16 struct {
	Rank int `json:"rank"`
	// RelError is |Delta - Delta_hat|_F / |Delta|_F measured at compression.
	RelError float64 `json:"rel_error"`
	// DeltaNorm is |Delta|_F, to aggregate errors over tensors.
	DeltaNorm float64 `json:"delta_norm"`
	// EnergyKept is sum of kept sigma^2 / |Delta|_F^2.
	EnergyKept float64 `json:"energy_kept"`
	// Budget is the byte budget the rank was chosen for (fp16 size / ratio).
	Budget int64 `json:"budget"`
}

// Band is a run of Count singular vectors quantized at Bits bits.
type Band struct {
	Bits  int `json:"bits"`
	Count int `json:"count"`
}

// StoredBytes returns the sum of the stored sizes of t's blobs.
func (t *Tensor) StoredBytes() int64 {
	var n int64
	for _, b := range t.Blobs {
		n += b.Size
	}
	return n
}

// DeltaError returns the relative error |Delta - Delta_hat|_F / |Delta|_F
// recorded for a lossily stored tensor and |Delta|_F, whatever its lossy
// kind; ok is false for the bit-exact kinds.
func (t *Tensor) DeltaError() (relError, deltaNorm float64, ok bool) {
	switch {
	case t.LowRank != nil:
		return t.LowRank.RelError, t.LowRank.DeltaNorm, true
	case t.BitDelta != nil:
		return t.BitDelta.RelError, t.BitDelta.DeltaNorm, true
	case t.LowRankBF16 != nil:
		return t.LowRankBF16.RelError, t.LowRankBF16.DeltaNorm, true
	case t.LowRankSym != nil:
		return t.LowRankSym.RelError, t.LowRankSym.DeltaNorm, true
	}
	return 0, 0, false
}

// Blob returns t's blob with the given role.
func (t *Tensor) Blob(role string) (Blob, bool) {
	for _, b := range t.Blobs {
		if b.Role == role {
			return b, true
		}
	}
	return Blob{}, false
}

package archive

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C returns the Castagnoli CRC-32 of b, the checksum Blob.CRC32C holds.
func CRC32C(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// zstd encoders and decoders are safe for concurrent EncodeAll/DecodeAll and
// costly to build, so one of each serves the process. Encoder concurrency 1
// keeps output independent of the machine.
var (
	encoder = sync.OnceValue(func() *zstd.Encoder {
		e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression),
			zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
		if err != nil {
			panic(err) // options are constant: a failure is a bug here
		}
		return e
	})
	decoder = sync.OnceValue(func() *zstd.Decoder {
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecodeAllCapLimit(true))
		if err != nil {
			panic(err)
		}
		return d
	})
)

// EncodeBlob encodes raw with the given codec (CodecRaw or CodecZstd) and
// shuffle element size (0 or 1 for none), and returns the Blob record with
// sizes and checksum filled in, and the bytes to store. raw is not modified;
// with CodecRaw the stored bytes alias raw.
func EncodeBlob(role, tensor string, raw []byte, codec string, shuffle int) (Blob, []byte, error) {
	b := Blob{Role: role, Tensor: tensor, Codec: codec, RawSize: int64(len(raw))}
	var stored []byte
	switch codec {
	case CodecRaw:
		stored = raw
	case CodecZstd:
		src := raw
		if shuffle > 1 {
			if len(raw)%shuffle != 0 {
				return Blob{}, nil, fmt.Errorf("blob %q: %d bytes is not a multiple of shuffle %d", tensor, len(raw), shuffle)
			}
			src = make([]byte, len(raw))
			shuffleBytes(src, raw, shuffle)
			b.Shuffle = shuffle
		}
		stored = encoder().EncodeAll(src, make([]byte, 0, len(src)/2+64))
	default:
		return Blob{}, nil, fmt.Errorf("blob %q: unknown codec %q", tensor, codec)
	}
	b.Size = int64(len(stored))
	b.CRC32C = CRC32C(stored)
	return b, stored, nil
}

// DecodeBlob checks stored against b's size and checksum and returns the
// decoded bytes. Errors wrap ErrChecksum or ErrFormat.
func DecodeBlob(b Blob, stored []byte) ([]byte, error) {
	if int64(len(stored)) != b.Size {
		return nil, fmt.Errorf("%w: blob %q: %d bytes stored, manifest says %d", ErrFormat, b.Tensor, len(stored), b.Size)
	}
	if got := CRC32C(stored); got != b.CRC32C {
		return nil, fmt.Errorf("%w: blob %q: crc32c %08x, manifest says %08x", ErrChecksum, b.Tensor, got, b.CRC32C)
	}
	if err := checkCodec(fmt.Sprintf("blob %q", b.Tensor), b); err != nil {
		return nil, err
	}
	switch b.Codec {
	case CodecRaw:
		return stored, nil
	case CodecZstd:
		out, err := decoder().DecodeAll(stored, make([]byte, 0, b.RawSize))
		if err != nil {
			return nil, fmt.Errorf("%w: blob %q: zstd: %v", ErrFormat, b.Tensor, err)
		}
		if int64(len(out)) != b.RawSize {
			return nil, fmt.Errorf("%w: blob %q: decoded %d bytes, manifest says %d", ErrFormat, b.Tensor, len(out), b.RawSize)
		}
		if b.Shuffle > 1 { // checkCodec: a divisor of the raw size, at most maxShuffle
			plain := make([]byte, len(out))
			unshuffleBytes(plain, out, b.Shuffle)
			out = plain
		}
		return out, nil
	default:
		return nil, fmt.Errorf("%w: blob %q: unknown codec %q", ErrFormat, b.Tensor, b.Codec)
	}
}

// shuffleBytes writes src's k-byte elements to dst as k byte planes. Planes
// group the sign/exponent bytes of floats together, which zstd compresses far
// better than interleaved bytes.
func shuffleBytes(dst, src []byte, k int) {
	n := len(src) / k
	for j := 0; j < k; j++ {
		plane := dst[j*n : (j+1)*n]
		for i := range plane {
			plane[i] = src[i*k+j]
		}
	}
}

// unshuffleBytes inverts shuffleBytes.
func unshuffleBytes(dst, src []byte, k int) {
	n := len(src) / k
	for j := 0; j < k; j++ {
		plane := src[j*n : (j+1)*n]
		for i, c := range plane {
			dst[i*k+j] = c
		}
	}
}

// Fingerprint returns "sha256:" + hex SHA-256 over the records of ts sorted by
// name, each written as name, dtype, shape and sha256 separated by NUL bytes
// and ended by a newline. It identifies a base checkpoint by content.
func Fingerprint(ts []BaseTensor) string {
	sorted := slices.Clone(ts)
	slices.SortFunc(sorted, func(a, b BaseTensor) int { return strings.Compare(a.Name, b.Name) })
	h := sha256.New()
	for _, t := range sorted {
		fmt.Fprintf(h, "%s\x00%s\x00%v\x00%s\n", t.Name, t.DType, t.Shape, t.SHA256)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

package storage

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/nlpodyssey/safetensors"

	"github.com/deltacome/deltacome/pkg/archive"
)

// DecodeTensor returns the fine-tune bytes of the tensor rec of the archive
// ar: it reads rec's blobs, checking their CRC-32C, and decodes them with
// rec's kind over base, the base tensor of the same name of dtype baseDT
// (ignored for kinds whose Base is false; the caller checks it is the
// archive's base). When verify is set, a bit-exact kind's bytes must match
// rec's SHA-256 (ErrChecksum otherwise); callers forcing another base leave
// it unset. Computed bytes go into a buffer from alloc; others may alias
// the base or the archive, and must not be modified. Errors name the
// tensor and wrap archive.ErrFormat, archive.ErrChecksum or ErrBase.
func DecodeTensor(ar *archive.Reader, rec *archive.Tensor, base []byte, baseDT safetensors.DType, verify bool, alloc func(n int64) []byte) ([]byte, error) {
	k, ok := Lookup(rec.Kind)
	if !ok {
		return nil, fmt.Errorf("%w: tensor %q: unknown storage kind %q", archive.ErrFormat, rec.Name, rec.Kind)
	}
	blobs, err := ReadBlobs(ar, rec)
	if err != nil {
		return nil, err
	}
	in := &DecodeInput{Rec: rec, Blobs: blobs, Alloc: alloc}
	if k.Base {
		in.Base, in.BaseDType = base, baseDT
	}
	out, err := k.Decode(in)
	switch {
	case err != nil:
		return nil, fmt.Errorf("tensor %q: %w", rec.Name, err)
	case archive.KindLossy(rec.Kind):
		return out, nil
	}
	if int64(len(out)) != rec.Bytes || (verify && SHA256Hex(out) != rec.SHA256) {
		return nil, fmt.Errorf("%w: tensor %q: reconstructed bytes do not match the recorded SHA-256", archive.ErrChecksum, rec.Name)
	}
	return out, nil
}

// ReadBlobs reads the blobs of rec from ar, checking their CRC-32C, in
// archive.KindRoles order. Errors name the tensor.
func ReadBlobs(ar *archive.Reader, rec *archive.Tensor) ([][]byte, error) {
	roles := archive.KindRoles(rec.Kind)
	blobs := make([][]byte, len(roles))
	for i, role := range roles {
		b, ok := rec.Blob(role)
		if !ok {
			return nil, fmt.Errorf("%w: tensor %q: no %s blob", archive.ErrFormat, rec.Name, role)
		}
		data, err := ar.Blob(b)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", rec.Name, err)
		}
		blobs[i] = data
	}
	return blobs, nil
}

// SHA256Hex is the lowercase hex SHA-256 of b, as records store it.
func SHA256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

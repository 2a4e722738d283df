package engine

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestBuffersReuseSmallestFit(t *testing.T) {
	var b buffers
	big, small := b.get(100), b.get(10)
	assert.Len(t, big, 100)
	assert.Len(t, small, 10)
	b.put(big)
	b.put(small)
	got := b.get(8) // both fit: the smaller is taken
	assert.Len(t, got, 8)
	assert.Same(t, &small[0], &got[0])
	got = b.get(50)
	assert.Same(t, &big[0], &got[0])
	fresh := b.get(20) // none left
	assert.Len(t, fresh, 20)
	assert.NotSame(t, &big[0], &fresh[0])
}

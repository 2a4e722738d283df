package engine

import (
	"fmt"
	"strings"

	"github.com/deltacome/deltacome/pkg/archive"
)

// BandsString renders bands as "8:2 3:32 2:1428" (bits:count).
func BandsString(bands []archive.Band) string {
	parts := make([]string, len(bands))
	for i, b := range bands {
		parts[i] = fmt.Sprintf("%d:%d", b.Bits, b.Count)
	}
	return strings.Join(parts, " ")
}

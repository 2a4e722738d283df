package delta_test

import (
	"fmt"
	"log"
	"path/filepath"

	"github.com/deltacome/deltacome/pkg/delta"
)

// Example reconstructs every tensor of the Delta-CoMe archive of the
// format's test vectors over their base, and prints each with its storage
// kind and its first values.
func Example() {
	dir := filepath.Join("..", "..", "testdata", "vectors")
	r, err := delta.Open(filepath.Join(dir, "base"), filepath.Join(dir, "deltacome.dcm"))
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	for _, t := range r.Manifest().Tensors {
		w, err := r.Float32(t.Name)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%-40s %-7s %-4s %v %.5f\n", t.Name, t.Kind, t.DType, t.Shape, w[:2])
	}
	// Output:
	// model.embed_tokens.weight                same    BF16 [10 32] [0.00970 0.00178]
	// model.layers.0.input_layernorm.weight    xor     BF16 [32] [2.35938 1.78125]
	// model.layers.0.self_attn.o_proj.weight   lowrank BF16 [4 8] [-0.00000 0.01636]
	// model.layers.0.self_attn.q_proj.weight   lowrank F32  [32 32] [0.02351 -0.06098]
	// model.layers.0.self_attn.v_proj.weight   lowrank F16  [16 32] [-0.01645 -0.02023]
	// score.bias                               full    F32  [2] [0.50000 -2.00000]
}

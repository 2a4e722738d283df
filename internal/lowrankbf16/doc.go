// Package lowrankbf16 encodes the delta of one linear projection as plain
// truncated-SVD factors in bfloat16 and decodes it back: what LoRA
// extraction tools (mergekit-extract-lora, LoRD) keep, and the "low-rank
// only" baseline of the Delta-CoMe paper (arXiv 2406.08903, section 4).
//
// Delta ~= B A with B = U_r diag(sqrt(s)) (rows x r) and A = diag(sqrt(s))
// V_r^T (r x cols), the layout of a LoRA adapter's lora_B and lora_A, both
// rounded to bf16 (docs/FORMAT.md section 2.9). The rank r is the largest
// whose factors fit the matrix's byte budget, Cost(rows, cols, r) =
// 2 r (rows + cols) bytes <= fp16 size / ratio; there is no quantization and
// no per-vector overhead.
package lowrankbf16

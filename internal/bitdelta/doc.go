// Package bitdelta encodes the delta of one linear projection the BitDelta
// way (Liu et al. 2024, "BitDelta: Your Fine-Tune May Only Be Worth One
// Bit", arXiv 2402.10193, section 3.1) and decodes it back: one sign bit per
// element and one scale per matrix,
//
//	Delta_hat = scale * sign(Delta),  scale = mean |Delta|,
//
// with sign(x) = +1 for x >= 0 (exact zeros included) and -1 for x < 0.
// The scale is the paper's initialisation, which minimises the L2 error of
// a sign matrix times one scale; the paper's optional scale distillation
// needs calibration data and is not done. Signs are packed eight per byte,
// least significant bit first (docs/FORMAT.md section 2.8).
//
// deltacome offers BitDelta as a baseline to compare Delta-CoMe against. At
// 1 bit per parameter (ratio about 16 against fp16) its relative error on
// the bundled test pair is 0.65, against 0.29 for Delta-CoMe at ratio 16.
package bitdelta

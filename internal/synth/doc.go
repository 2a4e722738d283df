// Package synth writes deterministic synthetic base/fine-tune checkpoint pairs
// shaped like Llama models, for benchmarks and scale tests of compression.
//
// Each linear projection's base weight is Gaussian (standard deviation
// Config.WeightStd, the scale of Llama-2 weights); its fine-tune differs by a
// delta built like real fine-tuning deltas: a structured part with a slowly
// decaying singular spectrum (a power law over Config.SignalRank directions)
// plus full-rank Gaussian noise holding Config.NoiseShare of the delta's
// energy, scaled so that |Delta|_F / |W|_F is Config.DeltaScale (real
// fine-tunes: 0.01-0.05). Norm weights are near 1 and change slightly;
// embeddings, when present, change slightly too. Both checkpoints are bf16.
//
// The output depends only on the Config (including its Seed): every random
// stream is a PCG seeded from the seed, the tensor's index and the row block,
// and the arithmetic runs in a fixed order in pure Go whatever the worker
// count or BLAS backend, so two runs write identical bytes.
package synth

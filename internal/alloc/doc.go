// Package alloc owns the bit allocation of Delta-CoMe (Ping et al., arXiv
// 2406.08903, NeurIPS 2024), which quantizes the singular vectors of a weight
// delta at mixed precision, more bits for larger singular values. Given the
// shape, byte budget and singular values of one delta, alloc decides how many
// singular vector pairs to keep and at which code width to quantize each one.
//
// The decisions are pure: a Problem describes a matrix by its shape, its
// budget, its spectrum and a caller-measured error function, and a Schedule
// turns it into a Plan. No weights are read here, so every rule is testable
// with synthetic spectra.
//
// Bytes are counted honestly (Cost): codes, per-group scales and minima and
// the singular values themselves, exactly as the archive stores them, and a
// Plan never exceeds its budget. Schedules:
//
//   - paper: the paper's released Llama-2-7B schedule (8 bit for 2 pairs,
//     3 bit for 32, 2 bit for the rest; its "1/16" counts code bits only),
//     fitted to each matrix's honest budget by filling the bands in order.
//   - explicit band lists such as 8:2,3:32,2:rest, filled the same way.
//   - auto: the plan of non-increasing widths that minimises the total
//     squared error the caller measured, subject to the budget (a
//     multiple-choice knapsack with an order constraint; solved exactly for
//     small problems, otherwise by a Lagrangian relaxation refined by local
//     and windowed exact search, in milliseconds for 4096 pairs).
//   - greedy: the error-drop-per-byte greedy allocation, kept as the
//     baseline auto improves on.
//
// Across matrices, Target (and TargetWithin, its trust-region form) picks
// one point of each matrix's error-versus-bytes Curve so that the total
// error meets a bound with the fewest total bytes found: the equal-slope
// rule over the curves' lower convex hulls, repaired and trimmed. It serves
// compress --max-error and --budget model.
package alloc

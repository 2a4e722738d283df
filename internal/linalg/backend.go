package linalg

// Backend names the BLAS/LAPACK implementation this build uses, for
// `deltacome version`.
const Backend = "pure-Go gonum"

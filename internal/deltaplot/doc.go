// Package deltaplot draws the figures of a delta archive with gonum/plot:
// the singular-value spectrum of one compressed projection with its bit
// bands coloured, and the size of the delta and the relative error of the
// compressed projections layer by layer across the model. It takes plain
// numbers (Figure) and writes PNG or SVG; reading archives is the caller's
// business.
package deltaplot

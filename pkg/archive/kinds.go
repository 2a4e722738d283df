package archive

// kind describes once what the format requires of one storage kind: its
// blob roles, whether it is lossy, its description record, how it stands
// to the base and what blobs its record implies. A new kind is added here,
// and its codec (encoding, decoding, costs, reports) in the table of
// internal/storage.
// Validate checks every tensor record against its kind's entry; KindRoles
// and KindLossy give the entry to writers and readers outside the package.
type kind struct {
	// name is the kind's Tensor.Kind.
	name string
	// roles are the roles of the kind's blobs, in the order writers store
	// them (docs/FORMAT.md section 2.5); blobs returns specs in this order.
	roles []string
	// lossy kinds are written only by the method that makes them.
	lossy bool
	// record is the JSON name of the kind's description record ("" for
	// none) and hasRecord reports whether a tensor carries it.
	record    string
	hasRecord func(t *Tensor) bool
	// base checks the tensor against its base record (nil when the base
	// has no tensor of that name).
	base func(what string, t *Tensor, bt *BaseTensor) error
	// blobs checks the kind's record and returns the blobs it implies.
	blobs func(what string, t *Tensor) ([]blobSpec, error)
}

// kinds are the storage kinds this reader knows, in the order Validate
// looks for their records.
var kinds = []kind{
	{name: KindSame, base: sameAsBase, blobs: func(string, *Tensor) ([]blobSpec, error) { return nil, nil }},
	{name: KindXOR, roles: []string{RoleXOR}, base: likeBase, blobs: exactBlob(RoleXOR)},
	{name: KindFull, roles: []string{RoleData}, base: func(string, *Tensor, *BaseTensor) error { return nil }, blobs: exactBlob(RoleData)},
	{name: KindLowRank, roles: []string{RoleSigma, RoleUCodes, RoleUQParams, RoleVCodes, RoleVQParams}, lossy: true,
		record: "lowrank", hasRecord: func(t *Tensor) bool { return t.LowRank != nil },
		base: matrixOverBase, blobs: lowRankBlobs},
	{name: KindBitDelta, roles: []string{RoleSigns, RoleScale}, lossy: true,
		record: "bitdelta", hasRecord: func(t *Tensor) bool { return t.BitDelta != nil },
		base: matrixOverBase, blobs: bitDeltaBlobs},
	{name: KindLowRankBF16, roles: []string{RoleU, RoleV}, lossy: true,
		record: "lowrank_bf16", hasRecord: func(t *Tensor) bool { return t.LowRankBF16 != nil },
		base: matrixOverBase, blobs: lowRankBF16Blobs},
	{name: KindLowRankSym, roles: []string{RoleUCodes, RoleUScales, RoleVCodes, RoleVScales}, lossy: true,
		record: "lowrank_sym", hasRecord: func(t *Tensor) bool { return t.LowRankSym != nil },
		base: matrixOverBase, blobs: lowRankSymBlobs},
}

// methodKinds maps each method of mode "deltacome" to the kind it stores
// projections as (method "deltacome" with grid GridAsym; see MethodKind).
var methodKinds = map[string]string{
	"":          KindLowRank,
	"deltacome": KindLowRank,
	"bitdelta":  KindBitDelta,
	"lowrank":   KindLowRankBF16,
}

// MethodKind returns the lossy storage kind that method (Settings.Method
// of mode "deltacome", "" meaning "deltacome") stores projections as with
// grid (Settings.Grid: GridSym, GridAsym or "" meaning GridAsym), and false
// for an unknown method, or a grid given with a method other than
// "deltacome" or unknown.
func MethodKind(method, grid string) (string, bool) {
	k, ok := methodKinds[method]
	switch {
	case !ok:
		return "", false
	case grid == "" || (grid == GridAsym && k == KindLowRank):
		return k, true
	case grid == GridSym && k == KindLowRank:
		return KindLowRankSym, true
	}
	return "", false
}

// lookupKind returns the entry of storage kind name, and false for an
// unknown kind.
func lookupKind(name string) (kind, bool) {
	for _, k := range kinds {
		if k.name == name {
			return k, true
		}
	}
	return kind{}, false
}

// Kinds lists the storage kinds this reader knows, in the order of
// docs/FORMAT.md section 2.5. The slice is the caller's.
func Kinds() []string {
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = k.name
	}
	return names
}

// KindRoles returns the roles of the blobs a tensor of storage kind k
// holds, in the order writers store them: none for KindSame, one for the
// bit-exact kinds, the factors' blobs for the lossy kinds. It returns nil
// for an unknown kind. The slice is the caller's.
func KindRoles(k string) []string {
	e, _ := lookupKind(k)
	return append([]string(nil), e.roles...)
}

// KindLossy reports whether storage kind k is lossy (written only by the
// method that makes it: KindLowRank, KindBitDelta, KindLowRankBF16,
// KindLowRankSym).
func KindLossy(k string) bool {
	e, _ := lookupKind(k)
	return e.lossy
}

// validateRecords checks that t carries the description record of its
// kind, and only that one.
func validateRecords(what string, t *Tensor) error {
	for _, k := range kinds {
		if k.hasRecord == nil {
			continue
		}
		switch present, want := k.hasRecord(t), k.name == t.Kind; {
		case present && !want:
			return refuse(what, k.record, "present on a tensor of kind %s", t.Kind)
		case want && !present:
			return refuse(what, k.record, "missing on a tensor of kind %s", t.Kind)
		}
	}
	return nil
}

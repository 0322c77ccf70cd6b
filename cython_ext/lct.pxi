# Link-cut tree over the suffix-link tree of a suffix automaton, shared by rosa_sam.pyx and rosa_tokens.pyx.
#
# Rooted (no re-rooting: the tree root is the automaton's root). Each node carries a value, e + 1 with e the
# latest end position of its state's strings (0 = none), and values only grow: every update raises the
# values of a whole root path to the current position + 1. A pending update is therefore a lazy "max with"
# tag on a splay subtree (0 = none; the node's own value is already raised), and tags can be pushed in any
# order without changing the result. A rotation pushes the two nodes it moves; a splay leaves its node pushed.
#
# Layout. Node x's record is L[x * LCT_W ...] (splay or path parent, two splay children, tag); <idx_t> -1 is
# NIL. Its value is V[x * LCT_VAL_W + LCT_VAL], which lets the value sit in a wider per-state record (the
# retrieval kernel keeps it there, where its naive path reads it without the tree) or in an array of its own
# (the token channel). The including .pyx defines before the include:
#   idx_t                  the integer type of node ids, values and tags (a fused type or one type)
#   LCT_VAL_W, LCT_VAL     (enum) stride and offset of a node's value in V
# and includes journal.pxi first: every write goes through ``jput(jr, &slot, value)``, a plain store when the
# first argument is a ``NoJournal *`` (pass NULL) and a journaled one for a ``Journal *`` (streaming rollback).
# Offsets are computed in int64_t, so node ids may use the whole range of idx_t.


cdef enum:
    L_FA = 0        # splay parent or path parent, NIL = none
    L_CH = 1        # L_CH + 0, L_CH + 1: splay children (left = towards the root)
    L_TAG = 3       # pending "max with" for the splay subtree, 0 = none
    LCT_W = 4
    READ_SPLAY_DEPTH = 8    # lct_value splays a node deeper than this in its splay tree


cdef inline bint lct_is_root(idx_t *L, idx_t x) noexcept nogil:
    """Whether x is the root of its splay tree (its parent, if any, is a path parent)."""
    cdef idx_t p = L[x * <int64_t> LCT_W + L_FA]
    return p == <idx_t> -1 or (L[p * <int64_t> LCT_W + L_CH] != x and L[p * <int64_t> LCT_W + L_CH + 1] != x)


cdef inline void lct_apply(jr_t *jr, idx_t *L, idx_t *V, idx_t x, idx_t val) noexcept nogil:
    """Raise x's value and its subtree's pending tag to at least val (x may be NIL)."""
    if x != <idx_t> -1:
        if V[x * <int64_t> LCT_VAL_W + LCT_VAL] < val:
            jput(jr, &V[x * <int64_t> LCT_VAL_W + LCT_VAL], val)
        if L[x * <int64_t> LCT_W + L_TAG] < val:
            jput(jr, &L[x * <int64_t> LCT_W + L_TAG], val)


cdef inline void lct_push(jr_t *jr, idx_t *L, idx_t *V, idx_t x) noexcept nogil:
    cdef idx_t t = L[x * <int64_t> LCT_W + L_TAG]
    if t != 0:
        lct_apply(jr, L, V, L[x * <int64_t> LCT_W + L_CH], t)
        lct_apply(jr, L, V, L[x * <int64_t> LCT_W + L_CH + 1], t)
        jput(jr, &L[x * <int64_t> LCT_W + L_TAG], 0)


cdef inline void lct_rotate(jr_t *jr, idx_t *L, idx_t *V, idx_t x) noexcept nogil:
    """Rotate x above its splay parent p. Only p and x change which nodes lie below them, so pushing
    their tags first is enough: a tag above p covers the same node set after the rotation."""
    cdef idx_t p = L[x * <int64_t> LCT_W + L_FA]
    cdef idx_t g = L[p * <int64_t> LCT_W + L_FA]
    cdef int side
    cdef idx_t b
    lct_push(jr, L, V, p)
    lct_push(jr, L, V, x)
    side = 1 if L[p * <int64_t> LCT_W + L_CH + 1] == x else 0
    b = L[x * <int64_t> LCT_W + L_CH + 1 - side]
    if not lct_is_root(L, p):
        if L[g * <int64_t> LCT_W + L_CH] == p:
            jput(jr, &L[g * <int64_t> LCT_W + L_CH], x)
        else:
            jput(jr, &L[g * <int64_t> LCT_W + L_CH + 1], x)
    jput(jr, &L[x * <int64_t> LCT_W + L_FA], g)
    jput(jr, &L[x * <int64_t> LCT_W + L_CH + 1 - side], p)
    jput(jr, &L[p * <int64_t> LCT_W + L_FA], x)
    jput(jr, &L[p * <int64_t> LCT_W + L_CH + side], b)
    if b != <idx_t> -1:
        jput(jr, &L[b * <int64_t> LCT_W + L_FA], p)


cdef void lct_splay(jr_t *jr, idx_t *L, idx_t *V, idx_t x) noexcept nogil:
    """Make x the root of its splay tree, with its own tag pushed; x's stored value is exact after."""
    cdef idx_t p, g
    while not lct_is_root(L, x):
        p = L[x * <int64_t> LCT_W + L_FA]
        if not lct_is_root(L, p):
            g = L[p * <int64_t> LCT_W + L_FA]
            if (L[g * <int64_t> LCT_W + L_CH] == p) == (L[p * <int64_t> LCT_W + L_CH] == x):
                lct_rotate(jr, L, V, p)
            else:
                lct_rotate(jr, L, V, x)
        lct_rotate(jr, L, V, x)
    lct_push(jr, L, V, x)


cdef inline idx_t lct_value(jr_t *jr, idx_t *L, idx_t *V, idx_t x) noexcept nogil:
    """Current value (e + 1) of node x without restructuring: its stored value raised by the pending tags
    of its splay ancestors (a tag covers its node's splay subtree). A node deeper than
    READ_SPLAY_DEPTH is splayed instead, so repeated deep reads stay amortised O(log n)."""
    cdef idx_t v = V[x * <int64_t> LCT_VAL_W + LCT_VAL]
    cdef idx_t y = x, p, t
    cdef int d = 0
    while True:
        p = L[y * <int64_t> LCT_W + L_FA]
        if p == <idx_t> -1 or (L[p * <int64_t> LCT_W + L_CH] != y and L[p * <int64_t> LCT_W + L_CH + 1] != y):
            return v
        t = L[p * <int64_t> LCT_W + L_TAG]
        if t > v:
            v = t
        d += 1
        if d > READ_SPLAY_DEPTH:
            lct_splay(jr, L, V, x)
            return V[x * <int64_t> LCT_VAL_W + LCT_VAL]
        y = p


cdef void lct_access(jr_t *jr, idx_t *L, idx_t *V, idx_t x) noexcept nogil:
    """Make the root-to-x path one splay tree with x at its root and no deeper part; x's stored value is
    then exact (every tag above it was pushed)."""
    cdef idx_t below = <idx_t> -1
    cdef idx_t y = x
    while y != <idx_t> -1:
        lct_splay(jr, L, V, y)
        jput(jr, &L[y * <int64_t> LCT_W + L_CH + 1], below)
        below = y
        y = L[y * <int64_t> LCT_W + L_FA]
    lct_splay(jr, L, V, x)


cdef inline void lct_cut(jr_t *jr, idx_t *L, idx_t *V, idx_t x) noexcept nogil:
    """Detach x, with its subtree, from its parent (x is not the tree root); x's stored value is exact after."""
    cdef idx_t left
    lct_access(jr, L, V, x)
    left = L[x * <int64_t> LCT_W + L_CH]
    jput(jr, &L[left * <int64_t> LCT_W + L_FA], <idx_t> -1)
    jput(jr, &L[x * <int64_t> LCT_W + L_CH], <idx_t> -1)


cdef inline void lct_node_init(jr_t *jr, idx_t *L, idx_t x, idx_t parent) noexcept nogil:
    """A lone node (no splay children, no tag) whose path parent is ``parent`` (NIL = none)."""
    jput(jr, &L[x * <int64_t> LCT_W + L_FA], parent)
    jput(jr, &L[x * <int64_t> LCT_W + L_CH], <idx_t> -1)
    jput(jr, &L[x * <int64_t> LCT_W + L_CH + 1], <idx_t> -1)
    jput(jr, &L[x * <int64_t> LCT_W + L_TAG], 0)

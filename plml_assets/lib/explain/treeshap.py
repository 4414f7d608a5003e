"""Exact path-dependent TreeSHAP for the boosters, ~5x less work per row than the libraries' own.

XGBoost's ``pred_contribs`` and LightGBM's ``pred_contrib`` run the TreeSHAP recursion of Lundberg
et al. (2020): O(L D^2) per tree and row (L leaves, D depth). On the sp500_5yr holdout (125,638
rows, 400 depth-5 trees) that was 72 s (XGBoost) and 125 s (LightGBM) on 2 threads
(docs/benchmarks.md). Fast TreeSHAP v2 (Yang, 2021, arXiv:2109.09847) computes the same values in
O(L D) per tree and row after a per-tree precomputation that no longer depends on the row:

For a leaf l with value v whose path splits on the distinct features F (d = |F|), let z_j be the
share of the training cover that follows the path's edges on feature j (the product of child cover
/ parent cover over those edges) and o_j(x) in {0, 1} whether row x follows all of them. The
leaf's term of feature i's Shapley value is

    v (o_i - z_i) * sum over S subset of F \\ {i} with o_S = 1 of  w(|S|, d) * prod_{j in F \\ S \\ {i}} z_j,
    w(s, d) = s! (d - s - 1)! / d!

which depends on x only through the pattern P = {j : o_j(x) = 1}. For leaves with at most
``TABLE_MAX_D`` distinct features a table T_l[P][i] over the 2^d patterns is filled once; a row
walks each tree once (every split evaluated once, the pattern carried down as a bitmask) and adds
T_l[P] at every leaf: O(d) per leaf. A deeper leaf (LightGBM's leaf-wise trees reach 13 distinct
features on 30) is evaluated directly per row from the polynomial
prod_{j in P} (z_j + t) prod_{j not in P} z_j, whose coefficient of t^k sums the products over the
subsets of size k: O(d^2), like TreeSHAP, for the few such leaves. A feature split on twice on a
path has one z (the product) and one o (both conditions), as in TreeSHAP. The values are the
libraries' own up to floating point (tests compare them with ``pred_contribs``/``pred_contrib``);
the base value (the expected margin, base score included) is taken from the library itself.

Trees the kernel does not cover (categorical splits, DART, several trees per round, a path with
more than ``MAX_PATH_FEATURES`` distinct features, tables over ``MAX_TABLE_ENTRIES``) make the
readers return None: the caller uses the library's own routine.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Table entries (float64) above which the library's own TreeSHAP is used instead: 2^d * d per leaf
#: (depth 5: 160 per leaf), so 16M entries (128 MiB) hold ~3,000 full depth-5 trees.
MAX_TABLE_ENTRIES = 16_000_000
#: Leaves with more distinct features than this are computed directly per row (O(d^2)) instead of
#: from a 2^d x d table: 8 keeps a leaf's table within 2,048 entries (16 KiB).
TABLE_MAX_D = 8
#: The most distinct features on one path (the row's pattern is a 62-bit mask).
MAX_PATH_FEATURES = 48
#: Missing-value rules (``_Trees.missing``): NaN follows the default edge (XGBoost; LightGBM
#: missing_type NaN); NaN is read as 0 (LightGBM None); 0 and NaN follow the default (LightGBM Zero).
NAN_DEFAULT, NAN_AS_ZERO, ZERO_DEFAULT = 0, 1, 2


@dataclass
class _Trees:
    """Every tree's nodes in flat arrays (global node ids), and each leaf's table."""

    feature: np.ndarray  # int32, -1 at leaves
    threshold: np.ndarray  # float64
    left: np.ndarray  # int32
    right: np.ndarray  # int32
    default_left: np.ndarray  # bool
    missing: np.ndarray  # int8
    path_index: np.ndarray  # int8: the split feature's position among its path's distinct features
    leaf: np.ndarray  # int32: leaf id at leaves, -1 at splits
    tree_start: np.ndarray  # int32: first node (the root) of each tree with at least one split
    tree_end: np.ndarray  # int32: one past its last node
    leaf_features: np.ndarray  # int32 [leaves, MAX_PATH_FEATURES]
    leaf_d: np.ndarray  # int32
    leaf_offset: np.ndarray  # int64 [leaves]: start of the leaf's table; -1: computed directly
    leaf_z: np.ndarray  # float64 [leaves, MAX_PATH_FEATURES]: zero fractions
    leaf_value: np.ndarray  # float64 [leaves]
    weights: np.ndarray  # float64 [MAX_PATH_FEATURES + 1, MAX_PATH_FEATURES + 1]: Shapley weights w[d, s]
    table: np.ndarray  # float64
    max_nodes: int


class _Builder:
    """Collects nodes tree by tree (parent links, covers), then the leaves' paths and tables."""

    def __init__(self) -> None:
        self.feature: list[int] = []
        self.threshold: list[float] = []
        self.left: list[int] = []
        self.right: list[int] = []
        self.default_left: list[bool] = []
        self.missing: list[int] = []
        self.cover: list[float] = []
        self.value: list[float] = []
        self.roots: list[int] = []
        self.ends: list[int] = []

    def end_tree(self, root: int | None) -> None:
        """The tree just added, rooted at ``root`` (None: a tree without a split, left out)."""
        if root is not None:
            self.roots.append(root)
            self.ends.append(len(self.feature))

    def add(self, feature: int, threshold: float, default_left: bool, missing: int, cover: float, value: float) -> int:
        self.feature.append(feature)
        self.threshold.append(threshold)
        self.left.append(-1)
        self.right.append(-1)
        self.default_left.append(default_left)
        self.missing.append(missing)
        self.cover.append(cover)
        self.value.append(value)
        return len(self.feature) - 1

    def build(self) -> _Trees | None:
        n = len(self.feature)
        path_index = np.zeros(n, dtype=np.int8)
        leaf = np.full(n, -1, dtype=np.int32)
        leaf_features: list[list[int]] = []
        leaf_z: list[list[float]] = []
        leaf_value: list[float] = []
        for root in self.roots:
            # (node, depth, distinct features on the path so far, their zero fractions)
            stack = [(root, 0, [], [])]
            while stack:
                node, depth, feats, zs = stack.pop()
                if self.feature[node] < 0:
                    leaf[node] = len(leaf_features)
                    leaf_features.append(feats)
                    leaf_z.append(zs)
                    leaf_value.append(self.value[node])
                    continue
                f = self.feature[node]
                if f in feats:
                    k = feats.index(f)
                else:
                    k = len(feats)
                    if k >= MAX_PATH_FEATURES:
                        return None
                path_index[node] = k
                parent_cover = self.cover[node]
                for child in (self.left[node], self.right[node]):
                    ratio = self.cover[child] / parent_cover if parent_cover > 0 else 0.0
                    if k < len(feats):
                        child_zs = list(zs)
                        child_zs[k] *= ratio
                        stack.append((child, depth + 1, feats, child_zs))
                    else:
                        stack.append((child, depth + 1, [*feats, f], [*zs, ratio]))
        d = np.array([len(f) for f in leaf_features], dtype=np.int32)
        tabled = d <= TABLE_MAX_D
        sizes = np.where(tabled, (2 ** np.minimum(d, TABLE_MAX_D).astype(np.int64)) * d, 0)
        if int(sizes.sum()) > MAX_TABLE_ENTRIES:
            return None
        starts = np.zeros(len(d) + 1, dtype=np.int64)
        np.cumsum(sizes, out=starts[1:])
        offset = np.where(tabled, starts[:-1], -1).astype(np.int64)
        features = np.zeros((len(d), MAX_PATH_FEATURES), dtype=np.int32)
        zeros = np.zeros((len(d), MAX_PATH_FEATURES), dtype=np.float64)
        for i, (f, z) in enumerate(zip(leaf_features, leaf_z, strict=True)):
            features[i, : len(f)] = f
            zeros[i, : len(z)] = z
        values = np.asarray(leaf_value, dtype=np.float64)
        table = np.zeros(int(starts[-1]), dtype=np.float64)
        weights = _shapley_weights(MAX_PATH_FEATURES)
        _fill_tables(zeros, values, d, offset, weights, table)
        return _Trees(
            feature=np.asarray(self.feature, dtype=np.int32), threshold=np.asarray(self.threshold, dtype=np.float64),
            left=np.asarray(self.left, dtype=np.int32), right=np.asarray(self.right, dtype=np.int32),
            default_left=np.asarray(self.default_left, dtype=np.bool_), missing=np.asarray(self.missing, dtype=np.int8),
            path_index=path_index, leaf=leaf, tree_start=np.asarray(self.roots, dtype=np.int32),
            tree_end=np.asarray(self.ends, dtype=np.int32), leaf_features=features, leaf_d=d, leaf_offset=offset,
            leaf_z=zeros, leaf_value=values, weights=weights, table=table, max_nodes=max([e - r for r, e in zip(self.roots, self.ends, strict=True)], default=1),
        )


def _shapley_weights(n: int) -> np.ndarray:
    """w[d, s] = s! (d - s - 1)! / d! for 0 <= s < d <= n."""
    w = np.zeros((n + 1, n + 1), dtype=np.float64)
    for d in range(1, n + 1):
        for s in range(d):
            w[d, s] = math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d)
    return w


def _jit(parallel: bool = False):
    import numba

    return numba.njit(cache=True, nogil=True, parallel=parallel)


_KERNELS: dict[str, object] = {}


def _kernels():
    """The two numba kernels, compiled (or loaded from numba's cache) on first use."""
    if _KERNELS:
        return _KERNELS["fill"], _KERNELS["explain"]
    import os

    import numba

    # numba's own thread pool, not OpenMP: with its 'omp' layer the OpenMP threads it leaves behind
    # slowed torch (its own OpenMP) in the same process 4.6x afterwards (the explanations step runs the
    # nets' integrated gradients after the trees: 12 s -> 56 s on sp500_5yr's GRU, 2 cores). The
    # kernel is called from one thread at a time, which is what 'workqueue' needs.
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"

    @_jit()
    def fill(zeros, values, d_all, offset, weights, table):
        e = np.zeros(zeros.shape[1] + 1)
        for leaf in range(d_all.shape[0]):
            d = d_all[leaf]
            v = values[leaf]
            base = offset[leaf]
            if base < 0:
                continue  # computed per row (explain)
            for pattern in range(1 << d):
                for i in range(d):
                    q = pattern & ~(1 << i)
                    outside = 1.0  # features other than i that the row does not follow: always "absent"
                    e[:] = 0.0
                    e[0] = 1.0
                    size = 0
                    for j in range(d):
                        if j == i:
                            continue
                        if (q >> j) & 1:
                            size += 1
                            for m in range(size, 0, -1):  # elementary symmetric polynomials of z over q
                                e[m] += e[m - 1] * zeros[leaf, j]
                        else:
                            outside *= zeros[leaf, j]
                    inner = 0.0
                    for k in range(size + 1):  # |S| = k present, the other size - k of q absent
                        inner += weights[d, k] * e[size - k]
                    one = 1.0 if (pattern >> i) & 1 else 0.0
                    table[base + pattern * d + i] = v * (one - zeros[leaf, i]) * outside * inner

    @_jit(parallel=True)
    def explain(X, feature, threshold, left, right, default_left, missing, path_index, leaf, tree_start, tree_end,
                leaf_features, leaf_d, leaf_offset, leaf_z, leaf_value, weights, table, max_nodes, out):
        # Nodes of a tree are contiguous and every parent precedes its children: one pass in node
        # order evaluates each split once, hands each child the pattern mask of the rows' path
        # (the other child loses the split feature's bit) and adds each leaf's table row.
        n = X.shape[0]
        block = 256
        full = (np.int64(1) << 62) - 1
        for b in numba.prange((n + block - 1) // block):
            masks = np.empty(max_nodes, dtype=np.int64)
            poly = np.empty(leaf_z.shape[1] + 2)
            # Trees outside, rows inside: a tree's tables (~40 KiB at depth 5) stay in cache over the
            # block's rows instead of every row reading every tree's tables from memory.
            for t in range(tree_start.shape[0]):
                first = tree_start[t]
                for r in range(b * block, min(n, (b + 1) * block)):
                    masks[0] = full
                    for node in range(first, tree_end[t]):
                        mask = masks[node - first]
                        lf = leaf[node]
                        if lf >= 0:
                            d = leaf_d[lf]
                            if leaf_offset[lf] >= 0:
                                at = leaf_offset[lf] + (mask & ((1 << d) - 1)) * d
                                for i in range(d):
                                    out[r, leaf_features[lf, i]] += table[at + i]
                                continue
                            # A deep leaf: the polynomial prod_{j in P} (z_j + t) prod_{j not in P} z_j.
                            v = leaf_value[lf]
                            poly[0] = 1.0
                            degree = 0
                            for j in range(d):
                                z = leaf_z[lf, j]
                                if (mask >> j) & 1:
                                    poly[degree + 1] = poly[degree]
                                    for m in range(degree, 0, -1):
                                        poly[m] = poly[m] * z + poly[m - 1]
                                    poly[0] *= z
                                    degree += 1
                                else:
                                    for m in range(degree + 1):
                                        poly[m] *= z
                            # i not in P: v (0 - z_i) * (poly / z_i) weighted = -v * sum_k w(d, k) poly_k
                            absent = 0.0
                            for m in range(degree + 1):
                                absent += weights[d, m] * poly[m]
                            for i in range(d):
                                if (mask >> i) & 1:
                                    # poly / (z_i + t), highest coefficient first, then weighted
                                    z = leaf_z[lf, i]
                                    q = poly[degree]
                                    acc = weights[d, degree - 1] * q
                                    for m in range(degree - 1, 0, -1):
                                        q = poly[m] - z * q
                                        acc += weights[d, m - 1] * q
                                    out[r, leaf_features[lf, i]] += v * (1.0 - z) * acc
                                else:
                                    out[r, leaf_features[lf, i]] -= v * absent
                            continue
                        x = X[r, feature[node]]
                        rule = missing[node]
                        if rule == 1 and np.isnan(x):
                            x = 0.0
                        if np.isnan(x) or (rule == 2 and abs(x) <= 1e-35):
                            go_left = default_left[node]
                        else:
                            go_left = x <= threshold[node]
                        off = mask & ~(np.int64(1) << path_index[node])
                        if go_left:
                            masks[left[node] - first] = mask
                            masks[right[node] - first] = off
                        else:
                            masks[left[node] - first] = off
                            masks[right[node] - first] = mask

    _KERNELS["fill"], _KERNELS["explain"] = fill, explain
    return fill, explain


def _fill_tables(zeros, values, d, offset, weights, table) -> None:
    fill, _ = _kernels()
    fill(zeros, values, d, offset, weights, table)


def _run(trees: _Trees, X: np.ndarray, n_features: int, threads: int | None) -> np.ndarray:
    import numba

    _, explain = _kernels()
    out = np.zeros((X.shape[0], n_features), dtype=np.float64)
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(threads or 1), numba.config.NUMBA_NUM_THREADS)))
    try:
        explain(X, trees.feature, trees.threshold, trees.left, trees.right, trees.default_left, trees.missing,
                trees.path_index, trees.leaf, trees.tree_start, trees.tree_end, trees.leaf_features, trees.leaf_d,
                trees.leaf_offset, trees.leaf_z, trees.leaf_value, trees.weights, trees.table, trees.max_nodes, out)
    finally:
        numba.set_num_threads(previous)
    return out


# ---- the boosters' trees ------------------------------------------------------------------------
def xgboost_trees(booster, n_rounds: int, feature_names: list[str]) -> _Trees | None:
    """The first ``n_rounds`` trees of a gbtree ``xgboost.Booster`` (one tree per round, numerical
    splits), read from its JSON model (float32 thresholds, exact); None where that does not hold.
    XGBoost sends ``x < threshold`` left: with float32 inputs that is ``x <= nextbelow(threshold)``."""
    model = json.loads(booster.save_raw(raw_format="json"))
    gbm = model["learner"]["gradient_booster"]
    if gbm.get("name") != "gbtree":
        return None
    trees_json = gbm["model"]["trees"]
    indptr = gbm["model"].get("iteration_indptr")
    if indptr is not None and any(b - a != 1 for a, b in zip(indptr[:-1], indptr[1:], strict=False)):
        return None
    names = model["learner"].get("feature_names") or feature_names
    position = {name: i for i, name in enumerate(feature_names)}
    builder = _Builder()
    for tree in trees_json[:n_rounds]:
        if any(int(s) != 0 for s in tree.get("split_type", [])) or tree.get("categories"):
            return None
        left, right = tree["left_children"], tree["right_children"]
        split, cond = tree["split_indices"], tree["split_conditions"]
        default_left, hess = tree["default_left"], tree["sum_hessian"]
        ids = {}
        for node in range(len(left)):
            is_leaf = left[node] == -1
            feature = -1 if is_leaf else position[names[int(split[node])]]
            # x < t on float32 values, as x <= the largest float32 below t (in float64).
            threshold = 0.0 if is_leaf else float(np.nextafter(np.float32(cond[node]), np.float32(-np.inf)))
            ids[node] = builder.add(feature, threshold, bool(default_left[node]), NAN_DEFAULT, float(hess[node]),
                                    float(cond[node]) if is_leaf else 0.0)
        for node in range(len(left)):
            if left[node] != -1:
                builder.left[ids[node]] = ids[left[node]]
                builder.right[ids[node]] = ids[right[node]]
        builder.end_tree(ids[0] if left[0] != -1 else None)
    return builder.build()


_LGB_MISSING = {"NaN": NAN_DEFAULT, "None": NAN_AS_ZERO, "Zero": ZERO_DEFAULT}


def lightgbm_trees(booster, n_rounds: int, feature_names: list[str]) -> _Trees | None:
    """The first ``n_rounds`` trees of a ``lightgbm.Booster`` (numerical ``<=`` splits, one tree per
    round), from ``dump_model``; None where that does not hold."""
    dump = booster.dump_model(num_iteration=n_rounds)
    if dump.get("num_tree_per_iteration", 1) != 1:
        return None
    names = dump.get("feature_names") or feature_names
    position = {name: i for i, name in enumerate(feature_names)}
    builder = _Builder()
    for info in dump["tree_info"][:n_rounds]:
        root = info["tree_structure"]
        if "leaf_value" in root:
            continue  # a tree without a split: a constant in the base value
        stack = [(root, None, None)]
        while stack:
            node, parent, side = stack.pop()
            if "leaf_value" in node:
                me = builder.add(-1, 0.0, False, NAN_DEFAULT, float(node["leaf_count"]), float(node["leaf_value"]))
            else:
                if node.get("decision_type") != "<=":
                    return None
                me = builder.add(position[names[int(node["split_feature"])]], float(node["threshold"]),
                                 bool(node["default_left"]), _LGB_MISSING[node.get("missing_type", "None")],
                                 float(node["internal_count"]), 0.0)
                stack.append((node["right_child"], me, "right"))
                stack.append((node["left_child"], me, "left"))
            if parent is None:
                root_id = me
            elif side == "left":
                builder.left[parent] = me
            else:
                builder.right[parent] = me
        builder.end_tree(root_id)
    return builder.build()


def fast_contributions(trees: _Trees | None, X: np.ndarray, threads: int | None = None) -> np.ndarray | None:
    """Per-feature TreeSHAP values (rows x features, float64; no base value) of ``trees`` on ``X``
    (float64, the model's columns in order), or None when ``trees`` is None."""
    if trees is None:
        return None
    return _run(trees, np.ascontiguousarray(X, dtype=np.float64), X.shape[1], threads)


#: Rows x trees below which the library's own TreeSHAP is used: it costs ~2.7 us per tree and row on
#: one thread (docs/benchmarks.md), so below 1M tree-rows it takes under ~3 s, about what building
#: the tables and loading (or, on a fresh clone, compiling: ~2 s) the kernels costs.
FAST_MIN_TREE_ROWS = 1_000_000
_READERS = {"xgboost": xgboost_trees, "lightgbm": lightgbm_trees}


def tree_contributions(kind: str, booster, n_rounds: int, feature_names: list[str], X: np.ndarray,
                       native: Callable[[np.ndarray], np.ndarray], threads: int | None = None,
                       min_tree_rows: int | None = None) -> np.ndarray:
    """TreeSHAP values of a booster's first ``n_rounds`` trees on ``X`` (float32, the model's
    columns), laid out as the libraries return them: one column per feature, then the base value.
    Fast TreeSHAP v2 where the trees allow it and the work is large enough (``min_tree_rows``,
    default FAST_MIN_TREE_ROWS); ``native(X)`` (the library's own ``pred_contribs``/``pred_contrib``)
    otherwise. The base value is the library's own either way (its base score and link included)."""
    rows = X.shape[0]
    threshold = FAST_MIN_TREE_ROWS if min_tree_rows is None else min_tree_rows
    if rows and rows * max(n_rounds, 1) >= threshold:
        trees = _READERS[kind](booster, n_rounds, feature_names)
        if trees is not None:
            phi = fast_contributions(trees, X, threads=threads)
            bias = float(np.asarray(native(X[:1]), dtype="float64")[0, -1])
            return np.column_stack([phi, np.full(rows, bias)])
    return np.asarray(native(X), dtype="float64")

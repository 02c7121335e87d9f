"""Vector search (exact and usearch HNSW) and the reconstruction-retrieval metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lvmae.retrieval.index import (
    IndexMismatchError,
    VectorIndex,
    array_fingerprint,
    exact_search,
    load_or_build,
    normalize,
)
from lvmae.retrieval.ranks import median_rank, recall_at_k, retrieval_ranks


def _brute_top_k(q: np.ndarray, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: full score matrix, sort by (score desc, index asc)."""
    s = normalize(q) @ normalize(c).T
    idx = np.broadcast_to(np.arange(c.shape[0]), s.shape)
    order = np.lexsort((idx, -s), axis=-1)[:, :k]
    return np.take_along_axis(s, order, axis=1), order


def _brute_ranks(q: np.ndarray, c: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Reference: an explicit per-query count of the OTHER candidates scoring at least as
    high as the target (ties count against the query)."""
    s = normalize(q) @ normalize(c).T
    return np.array(
        [
            1 + sum(1 for j in range(s.shape[1]) if j != t and s[i, j] >= s[i, t])
            for i, t in enumerate(targets)
        ]
    )


def _dyadic(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    """Unit rows with four entries ±0.5: every dot product is exact, so ties are exact."""
    x = np.zeros((n, d), np.float32)
    for row in x:
        row[rng.choice(d, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return x


def _with_duplicate(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Unit candidates ``[n, D]`` (widths where BLAS kernels have tails) in which row ``j``
    is an exact copy of row ``t``, and queries ``[Q, D]`` near row ``t``."""
    d = int(rng.choice([37, 64, 768, 1024]))
    n = int(rng.integers(20, 300))
    c = normalize(rng.standard_normal((n, d)).astype(np.float32))
    t, j = (int(x) for x in rng.choice(n, 2, replace=False))
    c[j] = c[t]
    q = c[t] + 0.01 * rng.standard_normal((int(rng.integers(1, 20)), d)).astype(np.float32)
    return q, c, t, j


# ---------------------------------------------------------------------------- normalize


def test_normalize_unit_rows_and_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0], [1e30, 1e30]])
    y = normalize(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[0], [0.6, 0.8], rtol=1e-6)
    assert np.all(y[1] == 0)
    np.testing.assert_allclose(np.linalg.norm(y[[0, 2, 3]], axis=1), 1.0, rtol=1e-6)


# ---------------------------------------------------------------------------- exact search


@pytest.mark.parametrize(
    ("n_q", "n", "k", "chunk"),
    [(1, 1, 1, 65536), (7, 50, 5, 16), (20, 300, 10, 64), (5, 9, 20, 4), (0, 10, 3, 4)],
)
def test_exact_search_matches_brute_force(n_q, n, k, chunk):
    rng = np.random.default_rng(n * 31 + k)
    q = rng.standard_normal((n_q, 12)).astype(np.float32)
    c = rng.standard_normal((n, 12)).astype(np.float32) * rng.uniform(0.1, 10, (n, 1))
    scores, idx = exact_search(q, c, k, chunk=chunk)
    ref_s, ref_i = _brute_top_k(q, c, min(k, n))
    assert scores.shape == idx.shape == (n_q, min(k, n))
    assert scores.dtype == np.float32 and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize("chunk", [3, 7, 1000])
def test_exact_search_breaks_ties_by_lower_index(chunk):
    rng = np.random.default_rng(0)
    c = _dyadic(rng, 60)
    c = np.concatenate([c, c[::-1]])  # every row twice: exact ties everywhere
    q = _dyadic(rng, 9)
    scores, idx = exact_search(q, c, 25, chunk=chunk)
    ref_s, ref_i = _brute_top_k(q, c, 25)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(scores, ref_s)


def test_exact_search_scores_identical_rows_identically():
    """A float32 matrix product can score two identical rows 1 ulp apart (where each sits
    among the BLAS kernel's tails); they must tie, the lower index first."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        q, c, t, j = _with_duplicate(rng)
        scores, idx = exact_search(q, c, 3)
        for row_s, row_i in zip(scores, idx, strict=True):
            assert list(row_i[:2]) == sorted((t, j)), (row_i, t, j)
            assert row_s[0] == row_s[1]


def test_exact_search_errors():
    c = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="dim"):
        exact_search(np.ones((2, 5)), c, 1)
    with pytest.raises(ValueError, match="empty"):
        exact_search(np.ones((2, 3)), np.ones((0, 3)), 1)
    with pytest.raises(ValueError, match="k must"):
        exact_search(np.ones((2, 3)), c, 0)
    with pytest.raises(ValueError, match="2-D"):
        exact_search(np.ones(3), c, 1)
    with pytest.raises(ValueError, match="NaN"):
        exact_search(np.full((1, 3), np.nan), c, 1)


# ---------------------------------------------------------------------------- HNSW index


@pytest.fixture(scope="module")
def small_set():
    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((2000, 64)).astype(np.float32)
    queries = rng.standard_normal((100, 64)).astype(np.float32)
    return corpus, queries


@pytest.fixture(scope="module")
def small_index(small_set):
    # Random Gaussian queries in 64-d are HNSW's hard case (no cluster structure): with the
    # default ef=64 top-1 agreement is ~97-99 %; ef=256 makes it exact on this set.
    corpus, _ = small_set
    return VectorIndex.build(
        corpus, fingerprint={"encoder": "tiny", "dim": 64}, expansion_search=256
    )


def test_index_matches_exact_search(small_set, small_index):
    corpus, queries = small_set
    assert (small_index.size, small_index.dim) == (2000, 64)
    scores, idx = small_index.search(queries, 10)
    ex_s, ex_i = exact_search(queries, corpus, 10)
    assert scores.shape == idx.shape == (100, 10) and idx.dtype == np.int64
    assert scores.dtype == np.float32
    # HNSW is approximate and its multi-threaded build is not deterministic: compare rates.
    top1 = idx[:, 0] == ex_i[:, 0]
    assert top1.mean() >= 0.95
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, ex_i, strict=True)])
    assert recall >= 0.95
    # Scores are cosine similarities (not distances), descending.
    np.testing.assert_allclose(scores[top1, 0], ex_s[top1, 0], atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    # A stored vector finds itself with similarity 1 (approximate too: a node the
    # non-deterministic build left poorly linked can miss, about 1 in 100 here).
    s_self, i_self = small_index.search(corpus[:100] * 3.0, 1)
    found = i_self[:, 0] == np.arange(100)
    assert found.mean() >= 0.95
    np.testing.assert_allclose(s_self[found, 0], 1.0, atol=1e-5)


def test_index_default_parameters_on_near_duplicate_queries(small_set):
    # The realistic case (a query near some stored segment) with the default parameters.
    corpus, _ = small_set
    rng = np.random.default_rng(7)
    truth = rng.integers(0, len(corpus), 100)
    queries = corpus[truth] + 0.3 * rng.standard_normal((100, 64)).astype(np.float32)
    index = VectorIndex.build(corpus, fingerprint={})
    _, idx = index.search(queries, 10)
    _, ex_i = exact_search(queries, corpus, 10)
    assert np.mean(idx[:, 0] == ex_i[:, 0]) >= 0.95  # approximate: rates, not equality
    assert np.mean(idx[:, 0] == truth) >= 0.95
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, ex_i, strict=True)])
    assert recall >= 0.95


def test_index_k_larger_than_size_and_errors():
    rng = np.random.default_rng(2)
    vecs = rng.standard_normal((6, 8)).astype(np.float32)
    index = VectorIndex.build(vecs, fingerprint={"n": 6})
    scores, idx = index.search(vecs[:3], 50)
    assert scores.shape == idx.shape == (3, 6)
    assert sorted(idx[0].tolist()) == list(range(6))
    np.testing.assert_array_equal(idx, exact_search(vecs[:3], vecs, 50)[1])
    with pytest.raises(ValueError, match="dim"):
        index.search(np.ones((1, 9)), 1)
    with pytest.raises(ValueError, match="k must"):
        index.search(vecs, 0)
    with pytest.raises(ValueError, match="zero vectors"):
        VectorIndex.build(np.ones((0, 8)), fingerprint={})


def test_save_load_round_trip(tmp_path, small_set, small_index):
    _, queries = small_set
    out = small_index.save(tmp_path / "idx")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["fingerprint"] == {"encoder": "tiny", "dim": 64}
    assert (meta["size"], meta["dim"]) == (2000, 64)
    assert meta["library"]["name"] == "usearch" and meta["library"]["version"]
    assert (out / meta["index_file"]).is_file()
    assert not list(out.glob("*.tmp"))

    loaded = VectorIndex.load(out, fingerprint={"dim": 64, "encoder": "tiny"})
    assert loaded.fingerprint == small_index.fingerprint
    assert (loaded.size, loaded.dim) == (2000, 64)
    a_s, a_i = small_index.search(queries, 10)
    b_s, b_i = loaded.search(queries, 10)
    np.testing.assert_array_equal(a_i, b_i)
    np.testing.assert_allclose(a_s, b_s, atol=1e-6)
    assert VectorIndex.load(out).size == 2000  # no fingerprint: no check

    # Saving again replaces the index file; only one remains.
    small_index.save(out)
    assert len(list(out.glob("index-*.usearch"))) == 1


def test_load_with_other_fingerprint_raises(tmp_path, small_index):
    small_index.save(tmp_path)
    with pytest.raises(IndexMismatchError, match=r"'encoder'.*rebuild") as info:
        VectorIndex.load(tmp_path, fingerprint={"encoder": "huge", "dim": 64})
    assert "'tiny'" in str(info.value) and "'huge'" in str(info.value)
    with pytest.raises(IndexMismatchError, match="'dim'"):
        VectorIndex.load(tmp_path, fingerprint={"encoder": "tiny", "dim": 1024})
    with pytest.raises(IndexMismatchError, match="sha"):
        VectorIndex.load(tmp_path, fingerprint={"encoder": "tiny", "dim": 64, "sha": "x"})
    with pytest.raises(FileNotFoundError):
        VectorIndex.load(tmp_path / "nowhere")


def test_load_or_build_builds_once_then_reloads_and_rebuilds(tmp_path):
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((300, 16)).astype(np.float32)
    calls = []

    def vectors_fn():
        calls.append(1)
        return vecs

    fp = {"encoder": "tiny", "embeddings": array_fingerprint(vecs)}
    index, built = load_or_build(tmp_path, vectors_fn, fp)
    assert built and len(calls) == 1 and index.size == 300
    again, built = load_or_build(tmp_path, vectors_fn, fp)
    assert not built and len(calls) == 1
    np.testing.assert_array_equal(again.search(vecs[:5], 3)[1], index.search(vecs[:5], 3)[1])

    # The embeddings changed: the fingerprint changes and the index is rebuilt.
    vecs = np.concatenate([vecs, rng.standard_normal((50, 16)).astype(np.float32)])
    fp2 = {"encoder": "tiny", "embeddings": array_fingerprint(vecs)}
    assert fp2 != fp
    index, built = load_or_build(tmp_path, vectors_fn, fp2)
    assert built and len(calls) == 2 and index.size == 350
    assert not load_or_build(tmp_path, vectors_fn, fp2)[1]
    # An explicit rebuild builds even when current.
    assert load_or_build(tmp_path, vectors_fn, fp2, rebuild=True)[1]
    assert len(calls) == 3


# ---------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("chunk", [5, 64, 65536])
def test_retrieval_ranks_match_brute_force(chunk):
    rng = np.random.default_rng(4)
    cands = rng.standard_normal((200, 16)).astype(np.float32)
    targets = rng.integers(0, 200, 80)
    recon = cands[targets] + 0.9 * rng.standard_normal((80, 16)).astype(np.float32)
    ranks = retrieval_ranks(recon, cands, targets, chunk=chunk)
    assert ranks.dtype == np.int64 and ranks.shape == (80,)
    np.testing.assert_array_equal(ranks, _brute_ranks(recon, cands, targets))
    assert ranks.min() >= 1 and ranks.max() <= 200
    assert ranks.max() > 1  # the noise is large enough that some are not first


@pytest.mark.parametrize("chunk", [3, 1000])
def test_retrieval_ranks_exact_ties_count_against_the_query(chunk):
    rng = np.random.default_rng(5)
    cands = _dyadic(rng, 40)
    cands = np.concatenate([cands, cands[:10]])  # duplicates: exact ties with the target
    queries = _dyadic(rng, 30)
    targets = rng.integers(0, 50, 30)
    ranks = retrieval_ranks(queries, cands, targets, chunk=chunk)
    np.testing.assert_array_equal(ranks, _brute_ranks(queries, cands, targets))
    # Rank is 1 + others at least as high: a query equal to a duplicated candidate ties
    # with the duplicate, so it is second, not first.
    same = retrieval_ranks(cands[:10], cands, np.arange(40, 50), chunk=chunk)
    np.testing.assert_array_equal(same, 2)


@pytest.mark.parametrize("chunk", [7, 65536])
def test_retrieval_ranks_an_exact_duplicate_of_the_target_always_ties(chunk):
    """Whatever the matrix product's rounding, a candidate identical to the target ties
    with it and counts against the query: no query ranks first."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        q, c, t, _j = _with_duplicate(rng)
        ranks = retrieval_ranks(q, c, np.full(q.shape[0], t), chunk=chunk)
        assert ranks.min() >= 2, ranks


@pytest.mark.parametrize("chunk", [4, 1000])
def test_all_zero_reconstructions_rank_last_not_first(chunk):
    """Zero queries score 0 against every candidate: all tie, so each target ranks N and
    R@1 is 0 (a tie-in-favour rule would report a perfect R@1 = 1.0)."""
    cands = np.random.default_rng(8).standard_normal((10, 6)).astype(np.float32)
    ranks = retrieval_ranks(np.zeros((7, 6), np.float32), cands, np.arange(7), chunk=chunk)
    np.testing.assert_array_equal(ranks, 10)
    assert recall_at_k(ranks, (1,)) == {"R@1": 0.0}


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_retrieval_ranks_refuse_non_finite_scores(bad):
    cands = np.eye(4, dtype=np.float32)
    q = np.ones((2, 4), np.float32)
    q[1, 2] = bad
    with pytest.raises(ValueError, match="finite"):
        retrieval_ranks(q, cands, np.array([0, 1]))
    with pytest.raises(ValueError, match="finite"):
        retrieval_ranks(cands, np.where(np.eye(4) > 0, bad, 0).astype(np.float32), np.arange(4))


def test_retrieval_ranks_not_index_differences():
    # Target 3's score is the best; the reference bug (index arithmetic) would not say 1.
    cands = np.eye(4, dtype=np.float32)
    q = np.array([[0.1, 0.2, 0.3, 1.0], [1.0, 0.9, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(retrieval_ranks(q, cands, np.array([3, 1])), [1, 2])


def test_perfect_reconstruction_gives_rank_one():
    rng = np.random.default_rng(6)
    cands = rng.standard_normal((500, 32)).astype(np.float32)
    targets = rng.permutation(500)[:100]
    ranks = retrieval_ranks(cands[targets] * 2.5, cands, targets, chunk=64)
    np.testing.assert_array_equal(ranks, 1)
    assert recall_at_k(ranks) == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    assert median_rank(ranks) == 1.0


def test_retrieval_ranks_errors():
    c = np.ones((5, 4), np.float32)
    with pytest.raises(ValueError, match="targets must lie"):
        retrieval_ranks(np.ones((2, 4)), c, np.array([0, 5]))
    with pytest.raises(ValueError, match="targets must lie"):
        retrieval_ranks(np.ones((2, 4)), c, np.array([-1, 0]))
    with pytest.raises(ValueError, match="shape"):
        retrieval_ranks(np.ones((2, 4)), c, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="integers"):
        retrieval_ranks(np.ones((2, 4)), c, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="dim"):
        retrieval_ranks(np.ones((2, 3)), c, np.array([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        retrieval_ranks(np.ones((0, 4)), np.ones((0, 4)), np.array([], int))
    with pytest.raises(ValueError, match="2-D"):
        retrieval_ranks(np.ones((2, 4, 1)), c, np.array([0, 1]))


def test_recall_and_median_on_hand_made_ranks():
    ranks = np.array([1, 2, 5, 6, 10, 11, 100, 1])
    assert recall_at_k(ranks) == {"R@1": 0.25, "R@5": 0.5, "R@10": 0.75}
    assert recall_at_k(ranks, ks=(2, 50)) == {"R@2": 0.375, "R@50": 0.875}
    assert median_rank(ranks) == 5.5  # sorted 1 1 2 5 | 6 10 11 100
    assert median_rank([3, 1, 2]) == 2.0
    assert median_rank([4.0]) == 4.0
    with pytest.raises(ValueError, match="1-based"):
        recall_at_k([0, 1])
    with pytest.raises(ValueError, match="non-empty"):
        median_rank([])
    with pytest.raises(ValueError, match="integers"):
        median_rank([1.5])
    with pytest.raises(ValueError, match="k must"):
        recall_at_k([1], ks=(0,))


def test_index_search_with_a_single_query_matches_exact_search():
    rng = np.random.default_rng(5)
    corpus = rng.normal(size=(300, 16)).astype(np.float32)
    index = VectorIndex.build(corpus, fingerprint={"t": 1}, expansion_search=256)
    query = corpus[7:8] + 0.01 * rng.normal(size=(1, 16)).astype(np.float32)
    scores, idx = index.search(query, 5)
    exact_scores, exact_idx = exact_search(query, corpus, 5)
    assert idx.shape == (1, 5) and idx[0, 0] == exact_idx[0, 0] == 7
    np.testing.assert_allclose(scores[0, 0], exact_scores[0, 0], atol=1e-4)

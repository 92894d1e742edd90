"""PCA projections fitted on a collection, and the pre-filtered search that uses them."""
import numpy as np
import pytest

from nearsight.retrieval.errors import InvalidQuery
from nearsight.retrieval.pca import PCA, fit_pca, prefilter_recall, prefiltered_search
from nearsight.retrieval.search import exact_search


def test_fit_pca_recovers_a_low_rank_space(tmp_path):
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(64, 5)))[0].T  # 5 orthonormal directions in 64-d
    x = (rng.normal(size=(2000, 5)) * [10, 8, 6, 4, 2]) @ basis + 3.0
    pca = fit_pca(x.astype(np.float32), 5)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(5), atol=1e-5)
    assert pca.explained.sum() > 0.999 and np.all(np.diff(pca.explained) <= 0)
    recon = pca.project(x) @ pca.components + pca.mean
    np.testing.assert_allclose(recon, x, atol=1e-3)
    pca.save(str(tmp_path / "p.npz"))
    again = PCA.load(str(tmp_path / "p.npz"))
    np.testing.assert_array_equal(again.components, pca.components)
    with pytest.raises(InvalidQuery, match="PCA dim"):
        fit_pca(x.astype(np.float32), 65)


def test_prefiltered_search_equals_exact_with_a_full_shortlist():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:7] + 0.05 * rng.normal(size=(7, 32)).astype(np.float32)
    pca = fit_pca(x, 8)
    D, I = prefiltered_search(x, pca.project(x), pca, q, 5, "ip", shortlist=300)
    De, Ie = exact_search(x, q, 5, "ip")
    np.testing.assert_array_equal(I, Ie)
    np.testing.assert_allclose(D, De, rtol=1e-5)


def test_collection_pca_prefilter(collection):
    with pytest.raises(InvalidQuery, match="fit-pca"):
        collection.search(id=3, prefilter=5)
    pca = collection.fit_pca("tiny", 8)
    assert pca.components.shape == (8, 3072)
    assert collection.search(id=3, k=3, prefilter=6)[0].id == 3
    assert prefilter_recall(collection, "tiny", k=5, shortlist=12) == 1.0  # shortlist = whole collection

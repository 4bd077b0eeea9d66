from __future__ import annotations

import numpy as np
import pytest
import torch

from sarsteer_guard.errors import VectorsError
from sarsteer_guard.steering import (
    mean_difference,
    principal_directions,
    project_out,
    refusal_vectors,
)

L, H = 3, 16


def states(n: int, seed: int, *, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # An offset common to all turns, plus a few strong directions: like real residual streams.
    base = torch.randn(1, L, H, generator=g) * 10
    coords, dirs = torch.randn(n, L, 4, generator=g), torch.randn(L, 4, H, generator=g)
    mix = torch.einsum("nlk,lkh->nlh", coords, dirs) * 3
    return (base + mix + torch.randn(n, L, H, generator=g) * scale).float()


def reference(
    hb: torch.Tensor, hr: torch.Tensor, bb: torch.Tensor, k: int, lam: float
) -> np.ndarray:
    """Independent numpy recomputation of SARSteer's v = d - lam * U_k U_k^T d."""
    d: np.ndarray = (hr.double().numpy() - hb.double().numpy()).mean(axis=0)
    out = np.empty_like(d)
    for layer in range(d.shape[0]):
        x = bb[:, layer].double().numpy()
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        u = vt[:k].T
        out[layer] = d[layer] - lam * u @ (u.T @ d[layer])
    return out


@pytest.mark.parametrize(("k", "lam"), [(1, 1.0), (4, 1.0), (10, 0.5), (5, 2.0)])
def test_refusal_vectors_match_numpy_reference(k: int, lam: float) -> None:
    hb, hr, bb = states(6, 1), states(6, 2), states(12, 3)
    v = refusal_vectors(hb, hr, bb, k=k, lam=lam)
    assert v.shape == (L, H)
    assert v.dtype == torch.float32
    ref = reference(hb, hr, bb, k, lam)
    np.testing.assert_allclose(v.numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_lam_one_makes_vectors_orthogonal_to_the_benign_subspace() -> None:
    hb, hr, bb = states(6, 1), states(6, 2), states(12, 3)
    v = refusal_vectors(hb, hr, bb, k=5, lam=1.0).double()
    u = principal_directions(bb, 5).double()
    d = mean_difference(hr, hb).double()
    along = torch.einsum("lhk,lh->lk", u, v).norm(dim=1)
    assert (along < 1e-5 * v.norm(dim=1)).all()
    # ... and the projection removed something: d did have a component in that subspace.
    assert (torch.einsum("lhk,lh->lk", u, d).norm(dim=1) > 1e-2 * d.norm(dim=1)).all()


def test_lam_zero_or_k_zero_is_exactly_the_mean_difference() -> None:
    hb, hr, bb = states(6, 1), states(6, 2), states(12, 3)
    d = mean_difference(hr, hb)
    assert torch.equal(refusal_vectors(hb, hr, bb, k=10, lam=0.0), d)
    assert torch.equal(refusal_vectors(hb, hr, bb, k=0, lam=1.0), d)
    expected = (hr.double() - hb.double()).mean(0).float()
    assert torch.equal(d, expected)


def test_principal_directions_span_the_numpy_subspace() -> None:
    bb = states(12, 3)
    u = principal_directions(bb, 4)
    assert u.shape == (L, H, 4)
    assert u.dtype == torch.float32
    eye = torch.eye(4).expand(L, 4, 4)
    torch.testing.assert_close(u.transpose(1, 2) @ u, eye, atol=1e-5, rtol=0)
    for layer in range(L):
        x = bb[:, layer].double().numpy()
        _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
        ref_proj = vt[:4].T @ vt[:4]  # sign-free comparison: projectors must agree
        proj = (u[layer] @ u[layer].T).double().numpy()
        np.testing.assert_allclose(proj, ref_proj, atol=1e-5)


def test_rank_deficient_benign_set_gives_zero_columns_not_noise() -> None:
    one = states(3, 3)
    bb = torch.cat([one, one, one])  # 9 turns, centred rank 2
    u = principal_directions(bb, 5)
    norms = u.norm(dim=1)  # [L, k]
    torch.testing.assert_close(norms[:, :2], torch.ones(L, 2), atol=1e-5, rtol=0)
    assert torch.equal(norms[:, 2:], torch.zeros(L, 3))


def test_k_larger_than_the_benign_set_supports_is_an_error() -> None:
    with pytest.raises(VectorsError, match="at least 11 benign turns, got 4"):
        principal_directions(states(4, 3), 10)
    with pytest.raises(VectorsError, match="hidden size"):
        principal_directions(states(40, 3), H + 1)
    with pytest.raises(VectorsError, match="non-negative"):
        principal_directions(states(4, 3), -1)
    hb, hr = states(6, 1), states(6, 2)
    with pytest.raises(VectorsError, match="benign"):
        refusal_vectors(hb, hr, states(4, 3), k=10)


@pytest.mark.parametrize(
    ("hb", "hr", "bb", "match"),
    [
        (torch.zeros(4, L, H), torch.zeros(5, L, H), torch.zeros(9, L, H), "harmful_refusal"),
        (torch.zeros(4, L, H), torch.zeros(4, L, H), torch.zeros(9, L, H + 1), "same model"),
        (torch.zeros(4, L, H), torch.zeros(4, L, H), torch.zeros(9, L + 1, H), "same model"),
        (torch.zeros(L, H), torch.zeros(L, H), torch.zeros(9, L, H), r"\[turns, layers"),
        (torch.zeros(0, L, H), torch.zeros(0, L, H), torch.zeros(9, L, H), "no turns"),
        (
            torch.full((4, L, H), float("nan")),
            torch.zeros(4, L, H),
            torch.zeros(9, L, H),
            "NaN",
        ),
        (
            torch.zeros(4, L, H, dtype=torch.long),
            torch.zeros(4, L, H),
            torch.zeros(9, L, H),
            "floating",
        ),
    ],
)
def test_shape_errors(hb: torch.Tensor, hr: torch.Tensor, bb: torch.Tensor, match: str) -> None:
    with pytest.raises(VectorsError, match=match) as exc:
        refusal_vectors(hb, hr, bb, k=2)
    assert "\n" not in str(exc.value)


def test_mean_difference_and_project_out_validate_shapes() -> None:
    with pytest.raises(VectorsError, match="differ"):
        mean_difference(torch.zeros(2, L, H), torch.zeros(3, L, H))
    with pytest.raises(VectorsError, match="project_out"):
        project_out(torch.zeros(L, H), torch.zeros(L, H + 1, 2), 1.0)


def test_project_out_keeps_dtype_and_removes_the_component() -> None:
    u = torch.zeros(1, 4, 1)
    u[0, 0, 0] = 1.0
    d = torch.tensor([[3.0, 1.0, 2.0, 0.0]], dtype=torch.bfloat16)
    out = project_out(d, u, 1.0)
    assert out.dtype == torch.bfloat16
    assert out.tolist() == [[0.0, 1.0, 2.0, 0.0]]
    assert project_out(d, u, 0.5).tolist() == [[1.5, 1.0, 2.0, 0.0]]

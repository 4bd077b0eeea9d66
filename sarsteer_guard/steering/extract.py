"""SARSteer vector extraction: pure functions on captured last-position states.

Inputs are ``[N, layers, hidden]`` tensors (one row per calibration turn, as returned by
:class:`~sarsteer_guard.steering.hooks.LastPositionCapture`). Arithmetic runs in float64 on the
inputs' device, because the mean difference of two nearly equal states and an SVD of centred
states both lose most of their float32 digits on real models; results come back as float32.

``v_l = d_l - lam * U_k U_k^T d_l``: ``d_l`` is the harmful mean difference (refusal instruction
minus base), ``U_k`` the top-k principal directions of the centred benign base states. Removing
the benign subspace keeps steering from shifting what every turn has in common.
"""

from __future__ import annotations

import torch

from sarsteer_guard.errors import VectorsError

__all__ = ["mean_difference", "principal_directions", "project_out", "refusal_vectors"]

#: Singular values below this fraction of a layer's largest one count as zero variance.
RANK_RTOL = 1e-6


def _check_states(name: str, states: torch.Tensor) -> None:
    if not isinstance(states, torch.Tensor):
        raise VectorsError(f"{name} must be a torch.Tensor, got {type(states).__name__}")
    if states.ndim != 3:
        raise VectorsError(
            f"{name} must be [turns, layers, hidden], got shape {tuple(states.shape)}: "
            "stack one capture per calibration turn"
        )
    if states.shape[0] == 0:
        raise VectorsError(f"{name} has no turns: add calibration turns")
    if not states.is_floating_point():
        raise VectorsError(f"{name} must be floating point, got {states.dtype}")
    if not bool(torch.isfinite(states).all()):
        raise VectorsError(
            f"{name} contains NaN or Inf: recapture in float32 or bfloat16 (float16 overflows)"
        )


def mean_difference(harmful_refusal: torch.Tensor, harmful_base: torch.Tensor) -> torch.Tensor:
    """Mean over turns of ``harmful_refusal - harmful_base``: the raw refusal direction ``d``.

    Args:
        harmful_refusal: ``[N, L, H]`` states with the refusal instruction appended.
        harmful_base: ``[N, L, H]`` states of the same turns without it (row i = same turn).

    Returns:
        ``[L, H]`` float32 on the inputs' device.

    Raises:
        VectorsError: shapes differ or are not ``[N, L, H]``.
    """
    _check_states("harmful_refusal", harmful_refusal)
    _check_states("harmful_base", harmful_base)
    if harmful_refusal.shape != harmful_base.shape:
        raise VectorsError(
            f"harmful_refusal {tuple(harmful_refusal.shape)} and harmful_base "
            f"{tuple(harmful_base.shape)} differ: capture both variants of every harmful turn"
        )
    return _mean_difference64(harmful_refusal, harmful_base).float()


def _mean_difference64(refusal: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    return (refusal.double() - base.double()).mean(dim=0)


def principal_directions(states: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` principal directions of the per-layer centred states.

    One batched SVD over layers. Centred states of ``N`` turns have rank at most ``N - 1``, and
    singular vectors past the rank are arbitrary, so asking for more is an error rather than a
    silent clip (the vector file records ``k``; it must be the ``k`` that was used). Columns
    whose singular value is numerically zero (duplicate turns) are returned as zero vectors, so
    projecting onto them removes nothing.

    Args:
        states: ``[N, L, H]`` benign base states.
        k: number of directions, ``0 <= k <= min(N - 1, H)``.

    Returns:
        ``[L, H, k]`` float32 with orthonormal (or zero) columns, on the input's device.

    Raises:
        VectorsError: bad shape, or ``k`` larger than the data supports.
    """
    _check_states("benign_base", states)
    return _principal_directions64(states, k).float()


def _principal_directions64(states: torch.Tensor, k: int) -> torch.Tensor:
    n, layers, hidden = states.shape
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise VectorsError(f"k must be a non-negative int, got {k!r}")
    if k > hidden:
        raise VectorsError(f"k={k} exceeds the hidden size {hidden}: lower k")
    if k > n - 1:
        raise VectorsError(
            f"k={k} principal directions need at least {k + 1} benign turns, got {n}: "
            "add benign calibration turns or lower k"
        )
    if k == 0:
        return states.new_zeros((layers, hidden, 0), dtype=torch.float64)
    x = states.double().transpose(0, 1)  # [L, N, H]
    x = x - x.mean(dim=1, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)  # s [L, r], vh [L, r, H]
    u = vh[:, :k, :].transpose(1, 2)  # [L, H, k]
    keep = s[:, :k] > RANK_RTOL * s[:, :1].clamp_min(torch.finfo(torch.float64).tiny)
    out: torch.Tensor = u * keep[:, None, :]
    return out


def project_out(d: torch.Tensor, u: torch.Tensor, lam: float) -> torch.Tensor:
    """Return ``d - lam * U U^T d`` per layer.

    Args:
        d: ``[L, H]`` directions.
        u: ``[L, H, k]`` orthonormal (or zero) columns per layer.
        lam: fraction of the subspace component to remove (1 removes it entirely).

    Returns:
        ``[L, H]`` in ``d``'s dtype (computed in float64).

    Raises:
        VectorsError: shapes do not line up.
    """
    if d.ndim != 2 or u.ndim != 3 or u.shape[:2] != d.shape:
        raise VectorsError(
            f"project_out needs d [L, H] and U [L, H, k], got {tuple(d.shape)} and "
            f"{tuple(u.shape)}: fix the caller"
        )
    return _project_out64(d.double(), u.double(), float(lam)).to(d.dtype)


def _project_out64(d: torch.Tensor, u: torch.Tensor, lam: float) -> torch.Tensor:
    if lam == 0.0 or u.shape[-1] == 0:
        return d
    coeff = torch.einsum("lhk,lh->lk", u, d)
    return d - lam * torch.einsum("lhk,lk->lh", u, coeff)


def refusal_vectors(
    harmful_base: torch.Tensor,
    harmful_refusal: torch.Tensor,
    benign_base: torch.Tensor,
    *,
    k: int = 10,
    lam: float = 1.0,
) -> torch.Tensor:
    """SARSteer vectors ``v = d - lam * U_k U_k^T d``.

    With ``lam == 0`` or ``k == 0`` the result is exactly :func:`mean_difference` (the SVD is
    skipped, but ``benign_base`` is still validated).

    Args:
        harmful_base: ``[N_h, L, H]`` harmful turns without the refusal instruction.
        harmful_refusal: ``[N_h, L, H]`` the same turns with it appended.
        benign_base: ``[N_b, L, H]`` benign turns without it.
        k: benign principal directions to project out (paper default 10).
        lam: projection strength (paper default 1.0).

    Returns:
        ``[L, H]`` float32 on the inputs' device.

    Raises:
        VectorsError: shape mismatches, non-finite states, or ``k`` the benign set cannot support.
    """
    _check_states("harmful_base", harmful_base)
    _check_states("harmful_refusal", harmful_refusal)
    _check_states("benign_base", benign_base)
    if harmful_refusal.shape != harmful_base.shape:
        raise VectorsError(
            f"harmful_refusal {tuple(harmful_refusal.shape)} and harmful_base "
            f"{tuple(harmful_base.shape)} differ: capture both variants of every harmful turn"
        )
    if benign_base.shape[1:] != harmful_base.shape[1:]:
        raise VectorsError(
            f"benign_base has [layers, hidden] {tuple(benign_base.shape[1:])} but the harmful "
            f"states have {tuple(harmful_base.shape[1:])}: capture all from the same model"
        )
    if not isinstance(lam, int | float) or isinstance(lam, bool):
        raise VectorsError(f"lam must be a float, got {lam!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise VectorsError(f"k must be a non-negative int, got {k!r}")
    d = _mean_difference64(harmful_refusal, harmful_base)
    if float(lam) == 0.0 or k == 0:
        return d.float()
    u = _principal_directions64(benign_base.to(d.device), k)
    return _project_out64(d, u, float(lam)).float()

"""Collectives over DDP ranks, no-ops in a single process: the one place equiseg sums or gathers
tensors across processes (method state, the pseudo-label audit, DST-CBC's histograms)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(*tensors: torch.Tensor, device: Optional[torch.device] = None) -> tuple[torch.Tensor, ...]:
    """Sum each tensor over ranks (one collective for all of them); returns new tensors on the
    tensors' devices. ``device``: where the collective runs (NCCL reduces CUDA tensors only).
    Sums travel as float64: exact for counts below 2**53."""
    if not is_distributed():
        return tensors
    flat = torch.cat([t.reshape(-1).to(device=device or t.device, dtype=torch.float64) for t in tensors])
    dist.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view(t.shape).to(device=t.device, dtype=t.dtype))
        start += t.numel()
    return tuple(out)


def all_gather_rows(indices: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every rank's ``(indices (N,), rows (N, C))``; N may differ between ranks."""
    if not is_distributed():
        return indices, rows
    world = dist.get_world_size()
    count = torch.tensor([indices.numel()], device=indices.device, dtype=torch.int64)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    # Pad to the longest contribution (all_gather needs equal shapes), then drop the padding.
    packed = torch.zeros(longest, 1 + rows.shape[1], dtype=torch.int64, device=indices.device)
    packed[: indices.numel(), 0] = indices.to(torch.int64)
    packed[: indices.numel(), 1:] = rows.to(torch.int64)
    gathered = [torch.zeros_like(packed) for _ in range(world)]
    dist.all_gather(gathered, packed)
    packed = torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts)])
    return packed[:, 0], packed[:, 1:].to(rows.dtype)

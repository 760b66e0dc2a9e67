"""Random draws for methods, all from an explicit ``torch.Generator`` (the run's ``ctx.generator``).

The run's generator lives on the CPU and is checkpointed by the engine, so every choice a method
makes (mixing partners, boxes, sampled classes, dataset seeds) is reproducible and resumable.
Per-pixel fields that are needed on the GPU are drawn there from a generator seeded by one draw
of the run's generator, so only a seed crosses the bus.
"""
from __future__ import annotations

import torch

_SEED_HIGH = 2**62
_DATASET_SEED_HIGH = 2**31 - 1


def draw_seed(generator: torch.Generator, high: int = _SEED_HIGH) -> int:
    """One integer in ``[0, high)``: a seed for a dataset sample or a device generator."""
    return int(torch.randint(high, (1,), generator=generator, device=generator.device).item())


def dataset_seed(generator: torch.Generator) -> int:
    """A seed for ``dataset.load(index, seed)`` (fits numpy's ``SeedSequence`` and 32-bit ints)."""
    return draw_seed(generator, _DATASET_SEED_HIGH)


def uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``U[0, 1)`` of ``shape`` on ``device``."""
    device = torch.device(device)
    if generator.device == device:
        return torch.rand(shape, generator=generator, device=device)
    local = torch.Generator(device=device)
    local.manual_seed(draw_seed(generator))
    return torch.rand(shape, generator=local, device=device)


def randint(high: int, generator: torch.Generator) -> int:
    """One integer uniform in ``[0, high)``."""
    return int(torch.randint(high, (1,), generator=generator, device=generator.device).item())


def categorical(probs: torch.Tensor, num_samples: int, generator: torch.Generator,
                replacement: bool = True) -> torch.Tensor:
    """``num_samples`` indices drawn from the distribution ``probs`` (1-D), on ``probs``' device."""
    draws = torch.multinomial(probs.detach().to(generator.device, torch.float64), num_samples,
                              replacement=replacement, generator=generator)
    return draws.to(probs.device)

"""AEL's banks are identical on every DDP rank after updates from different per-rank batches."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from equiseg.methods.components import ClassPresenceBank, ConfidenceBank

WORLD = 2
C = 3
IGNORE = 255


def rank_batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Different probabilities and labels on each rank; class 2 only on rank 1."""
    g = torch.Generator().manual_seed(100 * rank + step)
    probs = torch.rand(2, C, 4, 4, generator=g).softmax(1)
    label = torch.randint(2 if rank == 0 else C, (2, 4, 4), generator=g)
    label[:, 0, 0] = IGNORE
    return probs, label


POOLINGS = ("image", "pixel")


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        banks = {p: ConfidenceBank(C, IGNORE, momentum=0.5, pooling=p, init=0.3) for p in POOLINGS}
        presence = ClassPresenceBank(num_images=8, num_classes=C, ignore_index=IGNORE)
        for step in range(3):
            probs, label = rank_batch(rank, step)
            for bank in banks.values():
                bank.update(probs, label)
            # Rank r sees images (4 step + 2 r, +1); rank 1 contributes one image more on step 0.
            indices = torch.tensor([(4 * step + 2 * rank + i) % 8 for i in range(2 + (rank == 1 and step == 0))])
            maps = label[[0, 1, 1][: indices.numel()]]
            presence.update(indices, maps, min_ratio=0.1)
        torch.save({"conf": {p: b.conf for p, b in banks.items()}, "present": presence.present},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_banks_identical_on_two_gloo_ranks(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert torch.equal(states[0]["present"], states[1]["present"])
    assert states[0]["present"].any()
    for pooling in POOLINGS:
        assert torch.equal(states[0]["conf"][pooling], states[1]["conf"][pooling])
        # Same as one process seeing both ranks' batches at once (all-reduced sums and counts).
        single = ConfidenceBank(C, IGNORE, momentum=0.5, pooling=pooling, init=0.3)
        for step in range(3):
            batches = [rank_batch(r, step) for r in range(WORLD)]
            single.update(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
        assert torch.allclose(single.conf, states[0]["conf"][pooling], atol=1e-6)
        assert not torch.allclose(single.conf, torch.full((C,), 0.3))

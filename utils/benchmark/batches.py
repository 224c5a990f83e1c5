"""The benchmark's mixed batch: images and a threshold that send exactly half of them to detector 2."""
from __future__ import annotations

import torch


def split_batch(model: torch.nn.Module, batch: int, img_size: int, device: torch.device
                ) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Images, a threshold sending exactly half of them to detector 2, and the hard mask.

    The model is a random-weight benchmark copy: its router's output layer is scaled up so φ
    differs clearly between images of different brightness.
    """
    if batch < 2:
        raise ValueError(f"--batch must be at least 2 for a mixed batch, got {batch}")
    g = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.2, 1.0, batch).view(-1, 1, 1, 1)
    x = (torch.rand(batch, 3, img_size, img_size, generator=g) * scale).to(device)
    output = [m for m in model.router.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]  # its last layer
    with torch.no_grad():
        output.weight.mul_(1e3)
    phi = model.difficulty(x).detach().float().cpu()
    s = phi.sort().values
    k = batch - batch // 2  # images at or below the threshold stay easy
    threshold = float(s[k - 1] + s[k]) / 2
    hard = (phi > threshold).to(device)
    if int(hard.sum()) != batch // 2:
        raise RuntimeError("benchmark images did not get distinct φ; cannot split the batch in half")
    return x, threshold, hard

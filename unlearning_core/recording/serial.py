"""Memory-bound tensor arithmetic on the calling thread, for summing updates on the CPU.

Summing stored updates is one pass over memory per blob; a single core does it faster than
a store verifies the bytes (sha256). Torch would split each large ``add_`` over its
intra-op thread pool, and on a busy machine (the reader threads hashing, other processes)
waiting for those threads costs far more than the addition: measured on two shared cores, a
100k-element ``add_`` took 100-2,500 us multi-threaded and 7-12 us on one thread. These
helpers work in chunks below torch's parallel grain size, so every operation runs on the
calling thread and leaves the other cores to the readers, without touching the
process-wide thread setting. On a GPU they are the plain torch operations.
"""

from __future__ import annotations

import numpy as np
import torch

#: elements per chunk: below torch's parallel grain (32,768), so a chunk never goes parallel
CHUNK = 16_384


def zeros(n: int, device: torch.device) -> torch.Tensor:
    """A float32 vector of ``n`` zeros (calloc on the CPU: no parallel fill)."""
    if device.type == "cpu":
        return torch.from_numpy(np.zeros(n, dtype=np.float32))
    return torch.zeros(n, dtype=torch.float32, device=device)


def add_(acc: torch.Tensor, x: torch.Tensor) -> None:
    """``acc += x`` (``acc`` float32 and contiguous; ``x`` any float dtype, same numel)."""
    if acc.device.type != "cpu":
        acc.add_(x.reshape(acc.shape))
        return
    a, b = acc.view(-1), x.reshape(-1)
    n = a.numel()
    if n <= CHUNK:
        a.add_(b)
        return
    for start in range(0, n, CHUNK):
        a[start : start + CHUNK].add_(b[start : start + CHUNK])


def scatter(n: int, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A float32 vector of ``n`` zeros but ``values`` at ``index`` (unique positions)."""
    out = zeros(n, values.device)
    if values.device.type == "cpu":
        out.numpy()[index.numpy()] = values.numpy()
    else:
        out[index] = values
    return out


def minus(state: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``state - delta`` computed in float32, returned on the CPU in ``state``'s dtype."""
    if delta.device.type != "cpu":
        return (state.to(device=delta.device, dtype=torch.float32) - delta).to(dtype=state.dtype, device="cpu")
    s = state.detach().to("cpu").reshape(-1)
    d = delta.reshape(-1)
    if s.dtype == torch.float32:
        out = np.subtract(s.numpy(), d.numpy())  # one thread, float32 throughout
        return torch.from_numpy(out).reshape(state.shape)
    result = torch.empty(s.shape, dtype=state.dtype)
    for start in range(0, s.numel(), CHUNK):
        part = s[start : start + CHUNK].to(torch.float32) - d[start : start + CHUNK]
        result[start : start + CHUNK] = part
    return result.reshape(state.shape)

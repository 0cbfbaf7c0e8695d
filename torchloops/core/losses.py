"""Hand-written losses and the shared quality metrics (one place, used by every workload)."""

from __future__ import annotations

import torch


def raw_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log softmax(logits)[target]``, written out: ``logsumexp - logit of the label``."""
    picked = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    return (logits.logsumexp(dim=1) - picked).mean()


def raw_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``torch.mean((y_hat - y) ** 2)``, as the notes write it."""
    return torch.mean((prediction - target) ** 2)


def accuracy(outputs: torch.Tensor, target: torch.Tensor) -> float:
    """Share of rows whose arg-max output is the label (``torch.max(out, 1)`` in the notes)."""
    return (outputs.argmax(dim=1) == target).double().mean().item()


def mse(outputs: torch.Tensor, target: torch.Tensor) -> float:
    return torch.mean((outputs.double() - target.double()) ** 2).item()

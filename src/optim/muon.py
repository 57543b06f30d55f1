"""Muon for the hidden matrices and AdamW for everything else, stepped as one optimizer.

Muon (Jordan et al., 2024) orthogonalises the momentum of a 2-D weight with a
Newton-Schulz iteration; its authors apply it only to the hidden matrices
(attention and MLP projections). Embeddings / input projections, output heads,
biases and norm gains go to AdamW in the same step. This uses
``torch.optim.Muon`` for the matrices and ``torch.optim.AdamW`` for the rest.
"""

from __future__ import annotations

import torch
from torch import nn


def hidden_matrices(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split parameters: 2-D weights inside the encoder's blocks (Muon) vs the rest (AdamW).

    Models without ``encoder.blocks`` (the MLP) put every 2-D weight of their
    encoder except the first (the input projection) on Muon.
    """
    enc = getattr(model, "encoder", model)
    if hasattr(model, "muon_matrices"):  # an ensemble, or the policy + add-on modules: the policy's own matrices
        muon = model.muon_matrices()
    elif hasattr(enc, "blocks"):
        muon = [p for p in enc.blocks.parameters() if p.ndim == 2 and p.requires_grad]
    else:
        mats = [p for p in enc.parameters() if p.ndim == 2 and p.requires_grad]
        muon = mats[1:]
    ids = {id(p) for p in muon}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return muon, rest


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer over two inner ones; ``param_groups`` are the inner groups themselves,
    so LR schedulers and gradient clipping see every parameter, and
    ``state_dict``/``load_state_dict`` round-trip both states exactly."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw
        self.defaults = {}
        self.state = {}  # the inner optimizers keep the real state
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._optimizer_state_dict_pre_hooks = {}
        self._optimizer_state_dict_post_hooks = {}
        self._optimizer_load_state_dict_pre_hooks = {}
        self._optimizer_load_state_dict_post_hooks = {}
        for g in muon.param_groups:
            g["optimizer"] = "muon"
        for g in adamw.param_groups:
            g["optimizer"] = "adamw"

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])

    def __repr__(self) -> str:
        return f"MuonAdamW(muon={self.muon!r}, adamw={self.adamw!r})"

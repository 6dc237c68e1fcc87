"""The post-norm residual sublayers of every transformer layer in the model (pixel-decoder encoder,
token interaction, BATO, decoder): ``norm(x + dropout(update))`` after an attention, and the ReLU
feed-forward network with its own residual and norm.

They are functions of the layer's own modules rather than modules themselves, so that each layer
keeps the parameter names of the published checkpoints (``norm1``, ``linear1``, ...).
"""
from torch import nn
from torch.nn import functional as F

__all__ = ["add_and_norm", "feed_forward_and_norm"]


def add_and_norm(x, update, dropout: nn.Module, norm: nn.Module):
    """Residual connection then LayerNorm: (..., C), (..., C) -> (..., C)."""
    return norm(x + dropout(update))


def feed_forward_and_norm(x, linear1: nn.Module, dropout: nn.Module, linear2: nn.Module, dropout_out: nn.Module,
                          norm: nn.Module):
    """``norm(x + dropout_out(linear2(dropout(relu(linear1(x))))))``: (..., C) -> (..., C)."""
    return add_and_norm(x, linear2(dropout(F.relu(linear1(x)))), dropout_out, norm)

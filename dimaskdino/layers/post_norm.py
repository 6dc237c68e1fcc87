"""The post-norm residual sublayers of every transformer layer in the model (pixel-decoder encoder,
token interaction, BATO, decoder): ``norm(x + dropout(update))`` after an attention, and the ReLU
feed-forward network with its own residual and norm.

They are functions of the layer's own modules rather than modules themselves, so that each layer
keeps the parameter names of the published checkpoints (``norm1``, ``linear1``, ...).
"""
from torch import nn
from torch.nn import functional as F

__all__ = ["add_and_norm", "add_feed_forward", "feed_forward_and_norm"]


def add_feed_forward(layer: nn.Module, d_model: int, d_ffn: int, dropout: float,
                     dropout_names=("dropout2", "dropout3"), norm_name: str = "norm2") -> None:
    """Register the feed-forward sublayer's modules on ``layer``, in this order: ``linear1``
    (C -> d_ffn), ``dropout_names[0]``, ``linear2`` (d_ffn -> C), ``dropout_names[1]``, ``norm_name``.
    The names (and the order, which fixes the random initialisation) are the published checkpoints'."""
    layer.linear1 = nn.Linear(d_model, d_ffn)
    setattr(layer, dropout_names[0], nn.Dropout(dropout))
    layer.linear2 = nn.Linear(d_ffn, d_model)
    setattr(layer, dropout_names[1], nn.Dropout(dropout))
    setattr(layer, norm_name, nn.LayerNorm(d_model))


def add_and_norm(x, update, dropout: nn.Module, norm: nn.Module):
    """Residual connection then LayerNorm: (..., C), (..., C) -> (..., C)."""
    return norm(x + dropout(update))


def feed_forward_and_norm(x, linear1: nn.Module, dropout: nn.Module, linear2: nn.Module, dropout_out: nn.Module,
                          norm: nn.Module):
    """``norm(x + dropout_out(linear2(dropout(relu(linear1(x))))))``: (..., C) -> (..., C)."""
    return add_and_norm(x, linear2(dropout(F.relu(linear1(x)))), dropout_out, norm)

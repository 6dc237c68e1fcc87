"""Feature-level sizes kept both as a tensor (for the deformable-attention op) and as Python numbers.

``torch.export`` traces the model on fake tensors, where ``spatial_shapes.tolist()`` gives
data-dependent values that cannot size a split or a reshape. A spatial-shapes tensor made by
:func:`spatial_shapes_tensor` remembers the sizes it was made from (ints in eager mode, the input's
symbolic sizes under export), and :func:`level_shapes` returns them, so that the model sizes its tensors
the same way in both. Any other (L, 2) tensor is read with ``tolist()``.
"""
from typing import List, Sequence, Tuple

import torch

__all__ = ["spatial_shapes_tensor", "level_shapes"]

_SIZES_ATTRIBUTE = "_dimaskdino_level_shapes"


def spatial_shapes_tensor(sizes: Sequence[Sequence[int]], device) -> torch.Tensor:
    """(L, 2) int64 tensor of the (height, width) ``sizes``, which :func:`level_shapes` gives back."""
    sizes = tuple((h, w) for h, w in sizes)
    if any(isinstance(n, torch.SymInt) for size in sizes for n in size):
        # traced sizes: torch.as_tensor would fix them to the example's values, torch.full keeps them symbolic
        shapes = torch.stack([torch.full((), n, dtype=torch.long, device=device) for size in sizes for n in size])
    else:
        shapes = torch.as_tensor(sizes, dtype=torch.long, device=device)
    shapes = shapes.reshape(len(sizes), 2)
    setattr(shapes, _SIZES_ATTRIBUTE, sizes)
    return shapes


def level_shapes(spatial_shapes) -> List[Tuple[int, int]]:
    """(height, width) of every level from an (L, 2) tensor (or a sequence of pairs)."""
    remembered = getattr(spatial_shapes, _SIZES_ATTRIBUTE, None)
    if remembered is not None:
        return list(remembered)
    if isinstance(spatial_shapes, torch.Tensor):
        return [(h, w) for h, w in spatial_shapes.tolist()]
    return [(h, w) for h, w in spatial_shapes]

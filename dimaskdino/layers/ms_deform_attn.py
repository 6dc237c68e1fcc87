"""Multi-scale deformable attention (Deformable DETR): the op, its PyTorch reference and the module.

Each query samples P points on each of L feature levels per head, bilinearly, and sums the samples
with its attention weights. ``ms_deform_attn`` runs the compiled kernel of ``dimaskdino._C`` (C++ on
CPU, CUDA on GPU) and falls back to ``ms_deform_attn_reference`` (``grid_sample``), with a warning
that says why, when no kernel fits the inputs.

Tensor layout (B batch, S flattened pixels of all levels, H heads, D channels per head, Q queries,
L levels, P points per level):

- value: (B, S, H, D)
- spatial_shapes: (L, 2) int64, (height, width) of each level, in the order of S
- level_start_index: (L,) int64, index in S of each level's first pixel
- sampling_locations: (B, Q, H, L, P, 2), (x, y) normalised to [0, 1] over the level; (0, 0) is the
  top-left corner of the top-left pixel. Points outside the map read zeros.
- attention_weights: (B, Q, H, L, P)
- output: (B, Q, H * D)
"""
import contextlib
import contextvars
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .level_shapes import level_shapes

try:
    from dimaskdino import _C
except ImportError as e:  # the op is not built: everything runs on the reference
    _C = None
    _C_IMPORT_ERROR = f"the compiled op dimaskdino._C is not available ({e}); build it with " \
        "`python setup.py build_ext --inplace` or `pip install -e .`"
else:
    _C_IMPORT_ERROR = None

__all__ = ["ms_deform_attn", "ms_deform_attn_reference", "ms_deform_attn_backends", "reference_ms_deform_attn",
           "MSDeformAttn", "reset_deformable_transformer"]

# dtypes each compiled kernel accepts for value.
_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
_REDUCED_PRECISION = (torch.float16, torch.bfloat16)
_warned_fallbacks = set()
# set by ``reference_ms_deform_attn``: run the grid_sample reference instead of the compiled op
_force_reference = contextvars.ContextVar("dimaskdino_ms_deform_attn_force_reference", default=False)


def ms_deform_attn_backends():
    """Which compiled kernels can run here: ``{"cpu": bool, "cuda": bool}``.

    "cuda" needs the op built with CUDA (``FORCE_CUDA=1``) and a visible GPU.
    """
    if _C is None:
        return {"cpu": False, "cuda": False}
    return {"cpu": True, "cuda": bool(_C.compiled_with_cuda()) and torch.cuda.is_available()}


def ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Multi-scale deformable attention in plain PyTorch, one ``grid_sample`` per level.

    The oracle of the tests and the fallback of ``ms_deform_attn``; same arguments and result.
    ``level_start_index`` is implied by ``spatial_shapes`` here. Computes in the promoted dtype of
    value and sampling_locations and returns value's dtype.
    """
    B, S, H, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    compute_dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    shapes = level_shapes(spatial_shapes)
    level_sizes = [h * w for h, w in shapes]
    value_levels = value.to(compute_dtype).split(level_sizes, dim=1)
    # grid_sample wants (x, y) in [-1, 1]; -1 and 1 are the outer edges of the border pixels.
    grids = (2 * sampling_locations.to(compute_dtype) - 1).transpose(1, 2).flatten(0, 1)  # (B*H, Q, L, P, 2)
    samples = []
    for level, (h, w) in enumerate(shapes):
        value_l = value_levels[level].permute(0, 2, 3, 1).reshape(B * H, D, h, w)
        samples.append(
            F.grid_sample(value_l, grids[:, :, level], mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B*H, D, Q, P)
    samples = torch.stack(samples, dim=3).flatten(3)  # (B*H, D, Q, L*P)
    weights = attention_weights.to(compute_dtype).transpose(1, 2).reshape(B * H, 1, Q, L * P)
    output = (samples * weights).sum(-1).view(B, H * D, Q)
    return output.transpose(1, 2).contiguous().to(value.dtype)


@contextlib.contextmanager
def reference_ms_deform_attn():
    """Inside this context ``ms_deform_attn`` runs ``ms_deform_attn_reference`` (standard PyTorch ops),
    not the compiled op: how the model is traced for ONNX, whose runtimes know GridSample but not our op."""
    token = _force_reference.set(True)
    try:
        yield
    finally:
        _force_reference.reset(token)


def _fail(kind, message):
    raise kind(f"ms_deform_attn: {message}")


def _shape(t):
    return tuple(t.shape)


def _check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    if value.dim() != 4:
        _fail(ValueError, f"value must be (B, S, H, D), got shape {_shape(value)}")
    B, S, H, D = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        _fail(ValueError, f"sampling_locations must be (B, Q, H, L, P, 2), got shape {_shape(sampling_locations)}")
    _, Q, _, L, P, _ = sampling_locations.shape
    if sampling_locations.shape[0] != B or sampling_locations.shape[2] != H:
        _fail(ValueError, f"sampling_locations must be (B, Q, H, L, P, 2) with B = {B} and H = {H} as in value "
                          f"{_shape(value)}, got shape {_shape(sampling_locations)}")
    if _shape(spatial_shapes) != (L, 2):
        _fail(ValueError, f"spatial_shapes must be (L, 2) = ({L}, 2) (L from sampling_locations), got shape "
                          f"{_shape(spatial_shapes)}")
    if _shape(level_start_index) != (L,):
        _fail(ValueError, f"level_start_index must be (L,) = ({L},), got shape {_shape(level_start_index)}")
    if _shape(attention_weights) != (B, Q, H, L, P):
        _fail(ValueError, f"attention_weights must be (B, Q, H, L, P) = {(B, Q, H, L, P)} to match value and "
                          f"sampling_locations, got shape {_shape(attention_weights)}")


def _check_dtypes_and_devices(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    if not value.is_floating_point():
        _fail(TypeError, f"value must be a floating-point tensor, got {value.dtype}")
    allowed = (value.dtype, torch.float32) if value.dtype in _REDUCED_PRECISION else (value.dtype,)
    for name, t in (("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if t.dtype not in allowed:
            _fail(TypeError, f"{name} must have value's dtype {value.dtype}"
                             f"{' (or float32)' if len(allowed) > 1 else ''}, got {t.dtype}")
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if t.dtype != torch.int64:
            _fail(TypeError, f"{name} must be int64, got {t.dtype}")
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index),
                    ("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if t.device != value.device:
            _fail(ValueError, f"{name} must be on value's device {value.device}, got {t.device}")


def _check_levels(value, spatial_shapes, level_start_index):
    """spatial_shapes and level_start_index must describe the S pixels of value (reads them: a host sync on GPU)."""
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    total = 0
    for level, ((h, w), start) in enumerate(zip(shapes, starts)):
        if h < 0 or w < 0:
            _fail(ValueError, f"spatial_shapes[{level}] must be a non-negative (height, width), got {(h, w)}")
        if start != total:
            _fail(ValueError, f"level_start_index[{level}] must be {total} (pixels of the levels before it), got {start}")
        total += h * w
    if total != value.shape[1]:
        _fail(ValueError, f"value has S = {value.shape[1]} pixels but spatial_shapes {shapes} sum to {total}")


def _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    args = dict(value=value, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                sampling_locations=sampling_locations, attention_weights=attention_weights)
    for name, t in args.items():
        if not isinstance(t, torch.Tensor):
            _fail(TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _check_shapes(**args)
    _check_dtypes_and_devices(**args)
    if not torch.compiler.is_compiling():
        _check_levels(value, spatial_shapes, level_start_index)


def _kernel_unavailable_reason(value):
    """None when a compiled kernel handles value's device and dtype, else the reason it does not."""
    device = value.device.type
    if _C is None:
        return _C_IMPORT_ERROR
    if device not in _KERNEL_DTYPES:
        return f"there is no kernel for device type '{device}'"
    if device == "cuda" and not _C.compiled_with_cuda():
        return "dimaskdino._C was built without CUDA (rebuild with FORCE_CUDA=1)"
    if value.dtype not in _KERNEL_DTYPES[device]:
        supported = ", ".join(str(d) for d in _KERNEL_DTYPES[device])
        return f"the {device} kernel supports {supported}, not {value.dtype}"
    return None


def _warn_fallback(reason):
    if reason not in _warned_fallbacks:
        _warned_fallbacks.add(reason)
        warnings.warn(f"ms_deform_attn runs the slow PyTorch reference because {reason}", stacklevel=3)


def _autocast_inputs(value, sampling_locations, attention_weights):
    """Under autocast: value in the autocast dtype on CUDA (float32 on CPU, whose kernel is float32/64),
    locations and weights in float32, which keeps sub-pixel precision on large maps."""
    device = value.device.type
    if not value.is_floating_point():
        return value, sampling_locations, attention_weights  # _check_inputs explains
    if value.dtype != torch.float64:
        value = value.to(torch.get_autocast_dtype(device) if device == "cuda" else torch.float32)
    location_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32

    def cast(t):
        return t.to(location_dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    return value, cast(sampling_locations), cast(attention_weights)


def _match_value_dtype(value, t):
    """t in a dtype ms_deform_attn accepts beside value: value's, or float32 for a float16/bfloat16 value."""
    if t.dtype == value.dtype or (value.dtype in _REDUCED_PRECISION and t.dtype == torch.float32):
        return t
    return t.to(value.dtype)


def _value_for_kernel(value, sampling_locations):
    """value (B, S, H, D) laid out for the kernels.

    The CPU kernels work one head at a time. In the (B, S, H, D) layout the pixels of one head are
    H * D numbers apart and share 1 / H of the cache sets, so when the queries sample value many
    times over (the encoder: Q = S) a head-major copy, (B, H, S, D) in memory, is much faster; it is
    made once here and saved for the backward. A few hundred decoder queries do not pay for it.
    """
    _, S, H, _ = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    if value.device.type == "cpu" and H > 1 and Q * L * P >= 2 * S:
        return value.transpose(1, 2).contiguous().transpose(1, 2)
    return value.contiguous()


class _MSDeformAttnFunction(torch.autograd.Function):
    """Autograd around the compiled forward and backward kernels (torch.ops.dimaskdino.*)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        value = _value_for_kernel(value, sampling_locations)
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return torch.ops.dimaskdino.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = torch.ops.dimaskdino.ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            grad_output.contiguous(),
        )
        return grad_value, None, None, grad_locations, grad_weights


if _C is not None:
    # Shapes of the compiled ops' results, so that torch.compile and export can trace through them.
    @torch.library.register_fake("dimaskdino::ms_deform_attn_forward")
    def _forward_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        B, _, H, D = value.shape
        return value.new_empty((B, sampling_locations.shape[1], H * D))

    @torch.library.register_fake("dimaskdino::ms_deform_attn_backward")
    def _backward_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output):
        return value.new_empty(value.shape), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Multi-scale deformable attention, differentiable in value, sampling_locations and attention_weights.

    Args:
        value: (B, S, H, D) floating point
        spatial_shapes: (L, 2) int64 (height, width) of each level
        level_start_index: (L,) int64 first pixel of each level in S
        sampling_locations: (B, Q, H, L, P, 2) normalised (x, y); value's dtype, or float32 when value is
            float16/bfloat16
        attention_weights: (B, Q, H, L, P), same dtype rule as sampling_locations

    Returns:
        (B, Q, H * D) in value's dtype: for each query and head, sum over levels and points of the weight
        times value bilinearly sampled at the location (zeros outside the map, like
        ``grid_sample(align_corners=False, padding_mode="zeros")``).

    Runs the compiled kernel for float32/float64 on CPU and float32/float64/float16/bfloat16 on CUDA,
    otherwise the PyTorch reference (with a one-time warning saying why). Non-contiguous inputs are
    copied. Under autocast, value takes the autocast dtype on CUDA (float32 on CPU) and the locations
    and weights float32.
    """
    if isinstance(value, torch.Tensor) and torch.is_autocast_enabled(value.device.type):
        value, sampling_locations, attention_weights = _autocast_inputs(value, sampling_locations, attention_weights)
        with torch.autocast(value.device.type, enabled=False):
            return ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if _force_reference.get():
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    reason = _kernel_unavailable_reason(value)
    if reason is not None:
        _warn_fallback(reason)
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return _MSDeformAttnFunction.apply(
        value, spatial_shapes.contiguous(), level_start_index.contiguous(),
        sampling_locations.contiguous(), attention_weights.contiguous(),
    )


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention layer (Deformable DETR), parameter names as the published checkpoints.

    Each query predicts, per head, level and point, a sampling offset and an attention weight (softmax
    over the L * P samples of its head); the projected values are sampled there and projected back.

    Args:
        embed_dim: C, channels of queries and values; divisible by n_heads
        n_levels: L
        n_heads: H
        n_points: P, sampling points per head and level
    """

    def __init__(self, embed_dim=256, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        if embed_dim % n_heads != 0:
            raise ValueError(f"MSDeformAttn: embed_dim ({embed_dim}) must be divisible by n_heads ({n_heads})")
        self.embed_dim = embed_dim
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(embed_dim, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(embed_dim, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self):
        """Deformable DETR's init: head h starts looking along direction 2*pi*h/H, point k at k+1 pixels;
        uniform attention; xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (H, 2)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values  # onto the unit square
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = directions.view(self.n_heads, 1, 1, 2) * steps  # (H, 1, P, 2)
        grid = grid.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query, reference_points, value_input, spatial_shapes, level_start_index, padding_mask=None):
        """
        Args:
            query: (B, Q, C)
            reference_points: (B, Q, L, 2) normalised (x, y) points, offsets in pixels of each level; or
                (B, Q, L, 4) normalised boxes (cx, cy, w, h), offsets relative to the box size
            value_input: (B, S, C) flattened features of all levels
            spatial_shapes: (L, 2) int64 (height, width) per level
            level_start_index: (L,) int64
            padding_mask: optional (B, S) bool, True at padded pixels (their values become 0)

        Returns:
            (B, Q, C)
        """
        B, Q, _ = query.shape
        _, S, _ = value_input.shape
        H, L, P = self.n_heads, self.n_levels, self.n_points
        if reference_points.dim() != 4 or reference_points.shape[:3] != (B, Q, L) or \
                reference_points.shape[-1] not in (2, 4):
            raise ValueError(f"MSDeformAttn: reference_points must be (B, Q, L, 2) or (B, Q, L, 4) with "
                             f"(B, Q, L) = {(B, Q, L)}, got shape {tuple(reference_points.shape)}")
        value = self.value_proj(value_input)
        if padding_mask is not None:
            if tuple(padding_mask.shape) != (B, S):
                raise ValueError(f"MSDeformAttn: padding_mask must be (B, S) = {(B, S)}, got "
                                 f"shape {tuple(padding_mask.shape)}")
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(B, S, H, self.embed_dim // H)
        offsets = self.sampling_offsets(query).view(B, Q, H, L, P, 2)
        weights = self.attention_weights(query).view(B, Q, H, L * P).softmax(-1).view(B, Q, H, L, P)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide by (width, height)
            level_size = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], dim=-1).to(offsets.dtype)
            locations = reference_points[:, :, None, :, None, :] + offsets / level_size[None, None, None, :, None, :]
        else:
            # offsets are in units of half the box size divided by P
            locations = reference_points[:, :, None, :, None, :2] + \
                offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5
        if not torch.is_autocast_enabled(value.device.type):
            locations, weights = _match_value_dtype(value, locations), _match_value_dtype(value, weights)
        output = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(output)


def reset_deformable_transformer(module: nn.Module) -> None:
    """Xavier-uniform every matrix of ``module``, then give its MSDeformAttn layers their own
    initialisation (sampling offsets on rings around the reference point)."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    for m in module.modules():
        if isinstance(m, MSDeformAttn):
            m.reset_parameters()

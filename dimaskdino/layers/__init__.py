"""Building blocks shared by the model: the multi-scale deformable attention op and its module."""
from .ms_deform_attn import (
    MSDeformAttn, ms_deform_attn, ms_deform_attn_backends, ms_deform_attn_reference,
    reference_ms_deform_attn,
)

__all__ = ["MSDeformAttn", "ms_deform_attn", "ms_deform_attn_backends", "ms_deform_attn_reference",
           "reference_ms_deform_attn"]

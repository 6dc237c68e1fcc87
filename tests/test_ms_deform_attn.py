"""Multi-scale deformable attention: the compiled kernels against the grid_sample reference."""
import importlib
import math
import warnings
from pathlib import Path

import pytest
import torch

from dimaskdino.layers.ms_deform_attn import (
    MSDeformAttn,
    ms_deform_attn,
    ms_deform_attn_backends,
    ms_deform_attn_reference,
)

# the package exports a function of the same name, so fetch the module itself for monkeypatching
msda = importlib.import_module("dimaskdino.layers.ms_deform_attn")
REPO = Path(__file__).resolve().parents[1]
STATE_DICT_TSV = REPO.parent / "shared" / "reference" / "dimaskdino_r50_state_dict.tsv"

needs_cpu_kernel = pytest.mark.skipif(not ms_deform_attn_backends()["cpu"], reason="dimaskdino._C is not built")
_cuda_skip = pytest.mark.skipif(
    not ms_deform_attn_backends()["cuda"], reason="needs a GPU and dimaskdino._C built with FORCE_CUDA=1"
)


def needs_cuda_kernel(test):
    return pytest.mark.gpu(_cuda_skip(test))


def level_metadata(shapes, device="cpu"):
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device).view(-1, 2)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index


def random_case(B, Q, H, D, shapes, P, dtype=torch.float64, spread=0.3, seed=0, device="cpu"):
    """Inputs of ms_deform_attn; locations uniform in [-spread, 1 + spread], so some fall outside the map."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index = level_metadata(shapes)
    S = int(spatial_shapes.prod(1).sum())
    L = len(shapes)
    value = torch.randn(B, S, H, D, generator=gen, dtype=dtype)
    locations = torch.rand(B, Q, H, L, P, 2, generator=gen, dtype=dtype) * (1 + 2 * spread) - spread
    weights = torch.rand(B, Q, H, L, P, generator=gen, dtype=dtype)
    return [t.to(device) for t in (value, spatial_shapes, level_start_index, locations, weights)]


# (B, Q, H, D, level shapes, P)
CASES = {
    "two_levels": (1, 7, 2, 8, [(6, 5), (3, 3)], 3),
    "tiny_levels": (2, 11, 3, 4, [(4, 6), (1, 1), (2, 1), (1, 3)], 2),
    "batch_odd_channels": (3, 5, 3, 5, [(5, 7), (2, 2)], 4),  # H * D = 15
    "head_dim_32": (2, 9, 2, 32, [(7, 9), (4, 5), (2, 3), (1, 1)], 4),
    "head_dim_16": (1, 6, 4, 16, [(3, 8), (2, 2)], 2),
    "head_dim_64": (1, 4, 1, 64, [(5, 5)], 3),
    "no_queries": (2, 0, 2, 8, [(3, 3), (2, 2)], 2),
    # Q * L * P >= 2 * S: the CPU path gathers from a head-major copy of value
    "many_queries": (2, 40, 3, 8, [(4, 5), (2, 3)], 2),
}


def test_many_queries_case_takes_the_head_major_path():
    value, _, _, locations, _ = random_case(*CASES["many_queries"])
    laid_out = msda._value_for_kernel(value, locations)
    assert laid_out.transpose(1, 2).is_contiguous() and not laid_out.is_contiguous()
    torch.testing.assert_close(laid_out, value, rtol=0, atol=0)


def grads(fn, inputs, grad_output_seed=1):
    value, spatial_shapes, level_start_index, locations, weights = inputs
    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    output = fn(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
    gen = torch.Generator().manual_seed(grad_output_seed)
    grad_output = torch.randn(output.shape, generator=gen, dtype=output.dtype).to(output.device)
    output.backward(grad_output)
    return [output.detach()] + [leaf.grad for leaf in leaves]


@needs_cpu_kernel
@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_kernel_matches_reference_float64(case):
    inputs = random_case(*CASES[case])
    ours = grads(ms_deform_attn, inputs)
    reference = grads(ms_deform_attn_reference, inputs)
    B, Q, H, D = CASES[case][:4]
    assert ours[0].shape == (B, Q, H * D)
    for name, a, b in zip(["output", "grad_value", "grad_locations", "grad_weights"], ours, reference):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8, msg=lambda m: f"{case}/{name}: {m}")
    if Q > 0:
        assert ours[1].abs().sum() > 0 and ours[2].abs().sum() > 0  # the case exercises every gradient


@needs_cpu_kernel
def test_cpu_kernel_matches_reference_float32():
    inputs = random_case(2, 40, 8, 32, [(20, 30), (10, 15), (5, 8), (3, 4)], 4, dtype=torch.float32)
    for a, b in zip(grads(ms_deform_attn, inputs), grads(ms_deform_attn_reference, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@needs_cpu_kernel
def test_points_on_and_beyond_the_border():
    """Hand-placed points: centres of corner pixels, the outer edge, half a pixel out, far out."""
    value, spatial_shapes, level_start_index, _, _ = random_case(1, 1, 1, 3, [(4, 5)], 1)
    xs = [0.1, 0.9, 0.0, 1.0, -0.1, 1.1, -5.0, 7.0, 0.5, 0.5]
    ys = [0.125, 0.875, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0, -0.125]
    Q = len(xs)
    locations = torch.tensor([xs, ys], dtype=torch.float64).T.reshape(1, Q, 1, 1, 1, 2)
    weights = torch.ones(1, Q, 1, 1, 1, dtype=torch.float64)
    inputs = [value, spatial_shapes, level_start_index, locations, weights]
    ours = grads(ms_deform_attn, inputs)
    # location gradients are left out: these points sit on the kinks of bilinear sampling, where the
    # one-sided derivative depends on rounding (grid_sample computes x through 2 * loc - 1)
    for index, (a, b) in enumerate(zip(ours, grads(ms_deform_attn_reference, inputs))):
        if index != 2:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-8)
    out = ours[0][0]
    # x = 0.1 on a width-5 map is the centre of column 0; y = 0.125 of row 0: exactly pixel (0, 0)
    torch.testing.assert_close(out[0], value[0, 0, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1], value[0, 19, 0], rtol=0, atol=1e-12)
    # the left edge x = 0 is half a pixel left of column 0's centre: half of it (rows 1 and 2 averaged)
    torch.testing.assert_close(out[2], 0.25 * (value[0, 5, 0] + value[0, 10, 0]), rtol=0, atol=1e-12)
    assert out[6].abs().max() == 0 and out[7].abs().max() == 0  # far outside reads zeros


@needs_cpu_kernel
def test_gradcheck():
    inputs = random_case(2, 3, 2, 3, [(3, 4), (1, 2)], 2, seed=3)
    value, spatial_shapes, level_start_index, locations, weights = inputs
    # keep points away from pixel centres, where bilinear sampling has kinks
    locations = locations.clamp(-0.2, 1.2)
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, spatial_shapes, level_start_index, loc, w), leaves, eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=needs_cpu_kernel),
                                    pytest.param("cuda", marks=[pytest.mark.gpu, _cuda_skip])])
def test_non_contiguous_inputs(device):
    value, spatial_shapes, level_start_index, locations, weights = random_case(
        2, 6, 3, 4, [(5, 4), (2, 3)], 2, device=device)
    value_nc = value.transpose(0, 2).contiguous().transpose(0, 2)  # same values, other strides
    locations_nc = torch.stack([locations, locations], -1)[..., 0]
    weights_nc = weights.permute(4, 3, 2, 1, 0).contiguous().permute(4, 3, 2, 1, 0)
    shapes_nc = spatial_shapes.t().contiguous().t()
    starts_nc = torch.stack([level_start_index, level_start_index], 1)[:, 0]
    for t in (value_nc, locations_nc, weights_nc, shapes_nc, starts_nc):
        assert not t.is_contiguous()
    ours = grads(ms_deform_attn, [value_nc, shapes_nc, starts_nc, locations_nc, weights_nc])
    reference = grads(ms_deform_attn_reference, [value, spatial_shapes, level_start_index, locations, weights])
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)


@needs_cpu_kernel
def test_baseline_isa_copy_matches_reference():
    """On x86-64 the kernels have a baseline copy and an AVX2 copy chosen at run time; test the baseline one too."""
    isa = msda._C.cpu_kernel_isa()
    msda._C.set_cpu_kernel_isa("baseline")
    try:
        assert msda._C.cpu_kernel_isa() == "baseline"
        for case in ("head_dim_32", "batch_odd_channels"):
            inputs = random_case(*CASES[case])
            for a, b in zip(grads(ms_deform_attn, inputs), grads(ms_deform_attn_reference, inputs)):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-8)
    finally:
        msda._C.set_cpu_kernel_isa(isa)
    with pytest.raises(RuntimeError, match="isa must be 'avx2' or 'baseline'"):
        msda._C.set_cpu_kernel_isa("sse")


def bad(**overrides):
    """Valid float64 inputs with some replaced."""
    value, spatial_shapes, level_start_index, locations, weights = random_case(2, 3, 2, 4, [(3, 4), (2, 2)], 2)
    args = dict(value=value, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                sampling_locations=locations, attention_weights=weights)
    args.update(overrides)
    return args


BAD_INPUTS = {
    "value_rank": (lambda a: dict(value=a["value"].flatten(2)), ValueError, r"value must be \(B, S, H, D\)"),
    "locations_rank": (lambda a: dict(sampling_locations=a["sampling_locations"][..., 0]), ValueError,
                       r"sampling_locations must be \(B, Q, H, L, P, 2\)"),
    "locations_batch": (lambda a: dict(sampling_locations=a["sampling_locations"][:1]), ValueError,
                        r"sampling_locations .* B = 2 and H = 2"),
    "locations_heads": (lambda a: dict(sampling_locations=a["sampling_locations"][:, :, :1]), ValueError,
                        r"sampling_locations .* H = 2"),
    "shapes_levels": (lambda a: dict(spatial_shapes=a["spatial_shapes"][:1]), ValueError,
                      r"spatial_shapes must be \(L, 2\) = \(2, 2\)"),
    "starts_levels": (lambda a: dict(level_start_index=a["level_start_index"][:1]), ValueError,
                      r"level_start_index must be \(L,\) = \(2,\)"),
    "weights_points": (lambda a: dict(attention_weights=a["attention_weights"][..., :1]), ValueError,
                       r"attention_weights must be \(B, Q, H, L, P\) = \(2, 3, 2, 2, 2\)"),
    "weights_levels": (lambda a: dict(attention_weights=a["attention_weights"][:, :, :, :1]), ValueError,
                       r"attention_weights must be \(B, Q, H, L, P\)"),
    "pixels_vs_shapes": (lambda a: dict(value=a["value"][:, :-1]), ValueError,
                         r"value has S = 15 pixels but spatial_shapes \[\[3, 4\], \[2, 2\]\] sum to 16"),
    "wrong_start": (lambda a: dict(level_start_index=torch.tensor([0, 11])), ValueError,
                    r"level_start_index\[1\] must be 12"),
    "negative_shape": (lambda a: dict(spatial_shapes=torch.tensor([[3, 4], [-2, -2]])), ValueError,
                       r"spatial_shapes\[1\] must be a non-negative"),
    "locations_dtype": (lambda a: dict(sampling_locations=a["sampling_locations"].float()), TypeError,
                        r"sampling_locations must have value's dtype torch.float64, got torch.float32"),
    "weights_dtype": (lambda a: dict(attention_weights=a["attention_weights"].float()), TypeError,
                      r"attention_weights must have value's dtype torch.float64"),
    "value_integer": (lambda a: dict(value=a["value"].long()), TypeError, r"value must be a floating-point"),
    "shapes_int32": (lambda a: dict(spatial_shapes=a["spatial_shapes"].int()), TypeError,
                     r"spatial_shapes must be int64, got torch.int32"),
    "starts_float": (lambda a: dict(level_start_index=a["level_start_index"].double()), TypeError,
                     r"level_start_index must be int64"),
    "weights_device": (lambda a: dict(attention_weights=a["attention_weights"].to("meta")), ValueError,
                       r"attention_weights must be on value's device cpu, got meta"),
    "shapes_device": (lambda a: dict(spatial_shapes=a["spatial_shapes"].to("meta")), ValueError,
                      r"spatial_shapes must be on value's device cpu, got meta"),
    "not_a_tensor": (lambda a: dict(spatial_shapes=[[3, 4], [2, 2]]), TypeError,
                     r"spatial_shapes must be a torch.Tensor, got list"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_reported(name):
    change, error, message = BAD_INPUTS[name]
    args = bad()
    args.update(change(args))
    with pytest.raises(error, match=message):
        ms_deform_attn(**args)


@needs_cpu_kernel
def test_compiled_op_checks_its_inputs_too():
    """The torch.ops entry points are public as well: they must refuse what would read out of bounds."""
    args = bad()
    with pytest.raises(RuntimeError, match="value has S = 15 pixels but spatial_shapes sums to 16"):
        torch.ops.dimaskdino.ms_deform_attn_forward(
            args["value"][:, :-1], args["spatial_shapes"], args["level_start_index"],
            args["sampling_locations"], args["attention_weights"])
    with pytest.raises(RuntimeError, match=r"grad_output must be \(B, Q, H \* D\)"):
        torch.ops.dimaskdino.ms_deform_attn_backward(*args.values(), torch.zeros(2, 3, 7, dtype=torch.float64))


def test_fallback_warns_once_with_the_reason(monkeypatch):
    monkeypatch.setattr(msda, "_C", None)
    monkeypatch.setattr(msda, "_C_IMPORT_ERROR", "the compiled op is missing (test)")
    monkeypatch.setattr(msda, "_warned_fallbacks", set())
    assert ms_deform_attn_backends() == {"cpu": False, "cuda": False}
    inputs = random_case(1, 4, 2, 3, [(3, 3)], 2)
    with pytest.warns(UserWarning, match=r"slow PyTorch reference because the compiled op is missing \(test\)"):
        out = ms_deform_attn(*inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call must not warn again
        ms_deform_attn(*inputs)
    torch.testing.assert_close(out, ms_deform_attn_reference(*inputs), rtol=0, atol=0)


@needs_cpu_kernel
def test_cpu_half_falls_back_to_reference(monkeypatch):
    monkeypatch.setattr(msda, "_warned_fallbacks", set())
    inputs = random_case(1, 4, 2, 8, [(4, 4), (2, 2)], 2, dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match="the cpu kernel supports torch.float32, torch.float64, not torch.bfloat16"):
        out = ms_deform_attn(*inputs)
    assert out.dtype == torch.bfloat16
    expected = ms_deform_attn_reference(*[t.double() if t.is_floating_point() else t for t in inputs])
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)


@needs_cpu_kernel
def test_cpu_autocast_runs_the_float32_kernel():
    value, spatial_shapes, level_start_index, locations, weights = random_case(1, 5, 2, 8, [(4, 4)], 2,
                                                                               dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ms_deform_attn(value.bfloat16(), spatial_shapes, level_start_index, locations, weights)
    assert out.dtype == torch.float32
    expected = ms_deform_attn_reference(value.bfloat16().float(), spatial_shapes, level_start_index, locations, weights)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@needs_cpu_kernel
def test_torch_compile_traces_the_op():
    inputs = random_case(1, 5, 2, 4, [(3, 4), (2, 2)], 2)
    compiled = torch.compile(ms_deform_attn, backend="aot_eager", fullgraph=True)
    ours = grads(compiled, inputs)
    for a, b in zip(ours, grads(ms_deform_attn_reference, inputs)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)


def checkpoint_shapes(prefix):
    shapes = {}
    for line in STATE_DICT_TSV.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[0].startswith(prefix):
            shapes[fields[0][len(prefix):]] = tuple(int(x) for x in fields[1].split(","))
    return shapes


@pytest.mark.skipif(not STATE_DICT_TSV.exists(), reason="needs ../shared/reference/dimaskdino_r50_state_dict.tsv")
def test_module_parameters_match_checkpoint():
    expected = checkpoint_shapes("sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.")
    assert len(expected) == 8
    ours = {name: tuple(p.shape) for name, p in MSDeformAttn(256, 4, 8, 4).state_dict().items()}
    assert ours == expected
    decoder = checkpoint_shapes("sem_seg_head.predictor.decoder.layers.0.cross_attn.")
    assert ours == decoder


def test_module_init_follows_deformable_detr():
    module = MSDeformAttn(embed_dim=64, n_levels=2, n_heads=8, n_points=3)
    bias = module.sampling_offsets.bias.view(8, 2, 3, 2)
    # head 0 looks right, head 2 down, head 4 left; point k is k + 1 steps away; same on every level
    torch.testing.assert_close(bias[0, 1, :, :], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))
    torch.testing.assert_close(bias[2, 0, :, :], torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]), atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(bias[4, 0, 1, :], torch.tensor([-2.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[1, 0, 0, :], torch.tensor([1.0, 1.0]))  # diagonal, onto the unit square
    assert module.sampling_offsets.weight.abs().max() == 0
    assert module.attention_weights.weight.abs().max() == 0 and module.attention_weights.bias.abs().max() == 0
    assert module.value_proj.bias.abs().max() == 0 and module.value_proj.weight.std() > 0


def expected_module_output(module, query, reference_points, value_input, spatial_shapes, level_start_index, mask):
    """MSDeformAttn written out step by step on top of the reference op."""
    B, Q, C = query.shape
    H, L, P = module.n_heads, module.n_levels, module.n_points
    value = value_input @ module.value_proj.weight.T + module.value_proj.bias
    if mask is not None:
        value = value * (~mask)[..., None]
    offsets = (query @ module.sampling_offsets.weight.T + module.sampling_offsets.bias).view(B, Q, H, L, P, 2)
    logits = (query @ module.attention_weights.weight.T + module.attention_weights.bias).view(B, Q, H, L * P)
    weights = torch.softmax(logits, -1).view(B, Q, H, L, P)
    locations = torch.empty(B, Q, H, L, P, 2, dtype=query.dtype)
    for level in range(L):
        h, w = spatial_shapes[level].tolist()
        for axis, size in ((0, w), (1, h)):
            ref = reference_points[:, :, level, axis].view(B, Q, 1, 1)
            if reference_points.shape[-1] == 2:
                locations[:, :, :, level, :, axis] = ref + offsets[:, :, :, level, :, axis] / size
            else:
                extent = reference_points[:, :, level, 2 + axis].view(B, Q, 1, 1)
                locations[:, :, :, level, :, axis] = ref + offsets[:, :, :, level, :, axis] / P * extent * 0.5
    sampled = ms_deform_attn_reference(value.view(B, -1, H, C // H), spatial_shapes, level_start_index, locations,
                                       weights)
    return sampled @ module.output_proj.weight.T + module.output_proj.bias


@pytest.mark.parametrize("reference_dim,embed_dim,use_mask", [(2, 64, False), (4, 128, True), (2, 48, True)])
def test_module_matches_step_by_step_computation(reference_dim, embed_dim, use_mask):
    torch.manual_seed(0)
    shapes = [(6, 8), (3, 4), (2, 2)]
    spatial_shapes, level_start_index = level_metadata(shapes)
    module = MSDeformAttn(embed_dim=embed_dim, n_levels=3, n_heads=4, n_points=2).double()
    with torch.no_grad():  # non-trivial offsets and weights
        module.sampling_offsets.weight.normal_(std=0.1)
        module.attention_weights.weight.normal_(std=0.1)
    B, Q, S = 2, 5, 64
    query = torch.randn(B, Q, embed_dim, dtype=torch.float64)
    value_input = torch.randn(B, S, embed_dim, dtype=torch.float64)
    reference_points = torch.rand(B, Q, 3, reference_dim, dtype=torch.float64)
    mask = torch.rand(B, S) < 0.3 if use_mask else None
    out = module(query, reference_points, value_input, spatial_shapes, level_start_index, mask)
    assert out.shape == (B, Q, embed_dim)
    with torch.no_grad():
        expected = expected_module_output(module, query, reference_points, value_input, spatial_shapes,
                                          level_start_index, mask)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


def test_module_rejects_bad_configuration_and_shapes():
    with pytest.raises(ValueError, match=r"embed_dim \(100\) must be divisible by n_heads \(8\)"):
        MSDeformAttn(embed_dim=100, n_heads=8)
    module = MSDeformAttn(embed_dim=32, n_levels=2, n_heads=4, n_points=2)
    spatial_shapes, level_start_index = level_metadata([(2, 2), (1, 1)])
    query, value_input = torch.randn(1, 3, 32), torch.randn(1, 5, 32)
    with pytest.raises(ValueError, match=r"reference_points must be \(B, Q, L, 2\) or \(B, Q, L, 4\)"):
        module(query, torch.rand(1, 3, 2, 3), value_input, spatial_shapes, level_start_index)
    with pytest.raises(ValueError, match=r"padding_mask must be \(B, S\) = \(1, 5\)"):
        module(query, torch.rand(1, 3, 2, 2), value_input, spatial_shapes, level_start_index,
               torch.zeros(1, 4, dtype=torch.bool))


# ---------------------------------------------------------------- GPU


def cuda_case(dtype, **kwargs):
    inputs = random_case(2, 50, 8, 32, [(20, 30), (10, 15), (5, 8), (1, 1)], 4, **kwargs)
    value, spatial_shapes, level_start_index, locations, weights = inputs
    return [value.to(dtype), spatial_shapes, level_start_index, locations.to(dtype), weights.to(dtype)]


@needs_cuda_kernel
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 1e-5), (torch.float16, 2e-2),
                                       (torch.bfloat16, 1e-1)])
def test_cuda_kernel_matches_reference(dtype, tol):
    cpu_inputs = cuda_case(dtype)
    gpu_inputs = [t.cuda() for t in cpu_inputs]
    ours = [t.cpu() for t in grads(ms_deform_attn, gpu_inputs)]
    exact = grads(ms_deform_attn_reference, [t.double() if t.is_floating_point() else t for t in cpu_inputs])
    for name, a, b in zip(["output", "grad_value", "grad_locations", "grad_weights"], ours, exact):
        assert a.dtype == dtype, name
        scale = b.abs().max().clamp(min=1.0)
        torch.testing.assert_close(a.double() / scale, b / scale, rtol=0, atol=tol, msg=lambda m: f"{name}: {m}")


@needs_cuda_kernel
@needs_cpu_kernel
def test_cuda_kernel_matches_cpu_kernel_float32():
    cpu_inputs = cuda_case(torch.float32, seed=5)
    cpu = grads(ms_deform_attn, cpu_inputs)
    gpu = grads(ms_deform_attn, [t.cuda() for t in cpu_inputs])
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)


@needs_cuda_kernel
def test_cuda_edge_cases_and_odd_head_dims():
    for case in ("tiny_levels", "batch_odd_channels", "head_dim_64", "no_queries"):
        cpu_inputs = random_case(*CASES[case])
        ours = [t.cpu() for t in grads(ms_deform_attn, [t.cuda() for t in cpu_inputs])]
        for a, b in zip(ours, grads(ms_deform_attn_reference, cpu_inputs)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-8, msg=lambda m: f"{case}: {m}")


@needs_cuda_kernel
def test_cuda_autocast_keeps_locations_in_float32():
    value, spatial_shapes, level_start_index, locations, weights = [t.cuda() for t in cuda_case(torch.float32)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
    assert out.dtype == torch.bfloat16
    expected = ms_deform_attn_reference(value.bfloat16().double(), spatial_shapes, level_start_index,
                                        locations.double(), weights.double())
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=5e-2)


@needs_cuda_kernel
def test_cuda_gradcheck():
    inputs = [t.cuda() for t in random_case(1, 3, 2, 5, [(3, 4), (1, 2)], 2, seed=3)]
    value, spatial_shapes, level_start_index, locations, weights = inputs
    leaves = [t.clone().requires_grad_() for t in (value, locations.clamp(-0.2, 1.2), weights)]
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, spatial_shapes, level_start_index, loc, w), leaves, eps=1e-6, atol=1e-6
    )


@needs_cuda_kernel
def test_cuda_backward_reports_itself_non_deterministic():
    inputs = [t.cuda() for t in cuda_case(torch.float32)]
    value = inputs[0].requires_grad_()
    deterministic, warn_only = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        out = ms_deform_attn(value, *inputs[1:])
        with pytest.raises(RuntimeError, match="ms_deform_attn_backward_cuda"):
            out.sum().backward()
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="ms_deform_attn_backward_cuda"):
            ms_deform_attn(value, *inputs[1:]).sum().backward()
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def test_reference_is_grid_sample_convention():
    """The reference itself, on one pixel-exact case computed by hand (2x2 map, point at its centre)."""
    value = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1, 1)
    spatial_shapes, level_start_index = level_metadata([(2, 2)])
    locations = torch.tensor([[0.5, 0.5], [0.25, 0.25], [0.75, 0.25], [1.0, 0.5]], dtype=torch.float64)
    locations = locations.view(1, 4, 1, 1, 1, 2)
    weights = torch.full((1, 4, 1, 1, 1), 2.0, dtype=torch.float64)
    out = ms_deform_attn_reference(value, spatial_shapes, level_start_index, locations, weights)
    # centre: mean of the 4 pixels; (0.25, 0.25): pixel 0; (0.75, 0.25): pixel 1; right edge: half of (2 + 4) / 2
    expected = 2.0 * torch.tensor([2.5, 1.0, 2.0, 1.5], dtype=torch.float64).view(1, 4, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert not math.isnan(out.sum().item())

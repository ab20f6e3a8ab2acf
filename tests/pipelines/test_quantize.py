import pytest
import torch

from pipelines import quantize
from pipelines.errors import ConfigError
from pipelines.model import TwoTower


@pytest.fixture(autouse=True)
def seeded_torch():
    """Seed torch's global generator, so every random tensor of a test is the same on each run."""
    torch.manual_seed(0)


def small_model(n_items=300, n_users=40, dim=32, history_length=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    categories = torch.randint(0, 6, (n_items + 1, 3), generator=generator)
    years = torch.randint(1, 5, (n_items + 1,), generator=generator)
    torch.manual_seed(seed)
    model = TwoTower(n_items, n_users, categories, years, dim, history_length, 0.0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.3, generator=generator)
    return model.eval()


def inputs(model, users=30, seed=1):
    generator = torch.Generator().manual_seed(seed)
    history = torch.randint(0, model.n_items + 1, (users, model.history_length), generator=generator)
    return torch.arange(1, users + 1), history


def quantized(model, bits, fast):
    tensors, layers = quantize.quantize_model(model, bits)
    config = {"n_items": model.n_items, "n_users": model.user_embedding.num_embeddings - 1,
              "history_length": model.history_length, "bits": bits, "mlp_layers": layers}
    return quantize.QuantizedTwoTower(tensors, config, fast).eval()


def top_overlap(scores, reference, k=10):
    top, expected = scores.topk(k).indices, reference.topk(k).indices
    return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top, expected)) / (k * len(top))


@pytest.mark.parametrize("bits", [8, 4])
def test_rows_round_trip_within_half_step(bits):
    weight = torch.randn(50, 32, generator=torch.Generator().manual_seed(0))
    stored = quantize.quantize_rows(weight, bits)
    codes = quantize.unpack_codes(stored["codes"], bits).float()
    rows = codes * stored["scale"].float()[:, None] + stored["offset"].float()[:, None]
    low, high = quantize.CODE_RANGE[bits]
    assert int(codes.min()) >= low
    assert int(codes.max()) <= high
    if bits == 8:  # min-max range: every value within half a step
        assert torch.all((rows - weight).abs() <= stored["scale"].float()[:, None] / 2 + 1e-3)
    assert stored["codes"].dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert stored["codes"].shape == (50, 32 if bits == 8 else 16)


def test_clipping_search_beats_min_max():
    weight = torch.randn(200, 64, generator=torch.Generator().manual_seed(0))
    weight[:, 0] *= 8  # one outlier column stretches every row's min-max range
    low, high = weight.amin(dim=1), weight.amax(dim=1)
    min_max = quantize.reconstruction_error(weight, *quantize.encode_range(weight, low, high, 4))
    stored = quantize.quantize_rows(weight, 4)
    searched = quantize.reconstruction_error(weight, quantize.unpack_codes(stored["codes"], 4).float(),
                                             stored["scale"], stored["offset"])
    assert torch.all(searched <= min_max + 1e-6)
    assert searched.sum() < 0.9 * min_max.sum()


# Bounds hold for these random weights with room to spare: the fast int8 kernel also rounds the
# user vector to 7 bits, and 16 levels per row cost more than 256.
@pytest.mark.parametrize("bits, fast, max_error, min_overlap", [(8, True, 0.05, 0.9), (8, False, 0.02, 0.95),
                                                                (4, True, 0.2, 0.8), (4, False, 0.2, 0.8)])
def test_quantized_scores_close_to_fp32(bits, fast, max_error, min_overlap):
    model = small_model()
    users, history = inputs(model)
    with torch.no_grad():
        reference = model(users, history)
        scores = quantized(model, bits, fast)(users, history)
    assert torch.isinf(scores[:, 0]).all()
    finite = reference[:, 1:]
    relative = (scores[:, 1:] - finite).abs().mean() / finite.abs().mean()
    assert relative < max_error
    assert top_overlap(scores[:, 1:], finite) >= min_overlap


def test_folded_model_scores_like_teacher():
    model = small_model()
    users, history = inputs(model)
    with torch.no_grad():
        assert torch.allclose(quantize.FoldedTwoTower(model)(users, history), model(users, history), atol=1e-5)


def test_exact_kernel_matches_dequantized_math():
    model = small_model()
    table = quantized(model, 8, fast=False).item_table
    vectors = torch.randn(4, table.dim)
    rows = table(torch.arange(table.n_rows))
    assert torch.allclose(table.scores(vectors), vectors @ rows.T, atol=1e-4)


def test_int4_packing_in_chunks_matches_rows():
    weight = torch.randn(quantize.INT4_PACK_CHUNK + 100, 32)  # more rows than one packing chunk
    stored = quantize.quantize_rows(weight, 4)
    table = quantize.QuantizedTable(stored["codes"], stored["scale"], stored["offset"], 4, len(weight), fast=False)
    vectors = torch.randn(3, 32)
    rows = table(torch.arange(len(weight)))
    assert torch.allclose(table.scores(vectors), vectors @ rows.T, atol=1e-3)


@pytest.mark.parametrize("bits", [8, 4])
def test_scoring_keeps_tables_quantized(bits):
    model = quantized(small_model(n_items=2000), bits, fast=True)
    with torch.no_grad():
        model(*inputs(model))
    table_size = 2001 * 32
    floats = [name for name, tensor in model.state_dict().items()
              if tensor.is_floating_point() and tensor.numel() >= table_size]
    assert floats == []
    assert model.item_table.codes.dtype == (torch.int8 if bits == 8 else torch.uint8)


@pytest.mark.parametrize("bits", [3, 16, "8", True, None])
def test_unsupported_bits_rejected(bits):
    with pytest.raises(ConfigError, match=r"compress\.quantize\.bits\[0\] is .*expected one of \[4, 8\]"):
        quantize.check_bits(bits, "compress.quantize.bits[0]")


def test_four_bits_need_supported_dim():
    with pytest.raises(ConfigError, match=r"compress\.distill\.quantize_bits is 4, but 4-bit rows need"):
        quantize.check_bits(4, "compress.distill.quantize_bits", embedding_dim=16)

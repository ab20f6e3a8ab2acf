import numpy as np
import pytest
import torch

from pipelines import measure
from pipelines.errors import DataError
from pipelines.model import save_bundle
from tests.pipelines.test_quantize import small_model


def scoring_state(model, n_users):
    histories = np.random.default_rng(0).integers(1, model.n_items + 1, (n_users + 1, model.history_length))
    histories[0] = 0
    indptr = np.r_[0, np.arange(n_users + 1) * model.history_length]
    return {"histories": histories, "seen_indptr": indptr, "seen_indices": histories[1:].reshape(-1)}


def test_threads_restored_after_block():
    before = torch.get_num_threads()
    with measure.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_latency_and_throughput_measured():
    model = small_model(n_items=100, n_users=20)
    state = scoring_state(model, 20)
    users = np.arange(1, 21)
    timing = measure.latency(model, users, state, k=10)
    assert 0 < timing["latency_p50_ms"] <= timing["latency_p99_ms"]
    assert measure.throughput(model, users, state, k=10, batch_size=8)["throughput_users_per_s"] > 0


def test_latency_without_users_rejected():
    model = small_model(n_items=100, n_users=20)
    with pytest.raises(DataError, match="no users to measure"):
        measure.latency(model, np.array([], dtype=np.int64), scoring_state(model, 20), k=10)


def test_paired_comparison_against_teacher():
    teacher = np.array([1.0, 0.0, 0.5, 0.5])
    candidate = np.array([1.0, 0.0, 0.5, 0.3])
    paired = measure.paired_comparison(candidate, teacher, 10)
    assert paired["test_ndcg@10_ratio_to_teacher"] == pytest.approx(1.8 / 2.0)
    assert paired["test_ndcg@10_paired_difference"] == pytest.approx(-0.05)
    assert paired["test_ndcg@10_paired_difference_stderr"] == pytest.approx(0.05)


def test_memory_probe_counts_model_bytes(tmp_path):
    model = small_model(n_items=20000, n_users=20, dim=32)  # 2.6 MB of fp32 item rows
    path = tmp_path / "model.pt"
    config = {"n_items": 20000, "n_users": 20, "embedding_dim": 32, "history_length": 5, "dropout": 0.0}
    save_bundle(model, config, [str(i) for i in range(20000)], [str(u) for u in range(20)], path)
    memory = measure.peak_memory(path)
    assert memory["resident_memory_bytes"] >= 2_000_000
    assert memory["peak_memory_bytes"] >= memory["resident_memory_bytes"]


def test_memory_probe_reports_failure(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"model\.pt: memory probe failed: .*cannot load model"):
        measure.peak_memory(path)

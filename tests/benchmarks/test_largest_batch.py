"""benchmarks/largest_batch.py: the search against a brute-force scan, and a CPU smoke run end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.tiny_runs import ROOT, run_tiny

PUBLISHED = ROOT / "benchmarks" / "results" / "largest_batch.md"


def fits_up_to(threshold: int, tried: list[int]):
    """A stand-in for ``trial``: k pairs fit when k <= threshold (monotone, as memory is); each k noted in ``tried``."""

    def fake_trial(name, pairs, settings, model, work, budget):
        tried.append(pairs)
        return {"pairs": pairs, "fits": pairs <= threshold, "peak_gib": 0.0, "real_tokens": pairs,
                "padded_tokens": pairs}  # fmt: skip

    return fake_trial


@pytest.mark.parametrize("cap", [1, 8, 13])
def test_search_finds_the_largest_fitting_batch(monkeypatch, cap: int) -> None:
    """Doubling then bisection returns what a scan of every k finds (fitting is monotone in k), trying each k once."""
    import benchmarks.largest_batch as largest_batch

    for threshold in range(0, 20):
        tried: list[int] = []

        monkeypatch.setattr(largest_batch, "trial", fits_up_to(threshold, tried))
        found = largest_batch.largest("ours-dpo", None, {}, Path("."), 1.0, cap)
        scan = max((k for k in range(1, cap + 1) if k <= threshold), default=0)
        assert found["best"]["pairs"] == scan, (threshold, cap, tried)
        assert found["capped"] == (scan == cap)
        assert len(tried) == len(set(tried)) and all(1 <= k <= cap for k in tried)


@pytest.mark.parametrize("start, resolution", [(4, 0.125), (8, 0.25), (3, 0.0)])
def test_a_coarser_search_from_a_larger_start_stays_within_its_resolution(monkeypatch, start, resolution) -> None:
    """From ``start`` pairs and down to ``resolution``: the k found fits, and the largest fitting k (a scan) is less
    than max(1, resolution × k) above it; every k tried once."""
    import benchmarks.largest_batch as largest_batch

    for threshold in range(0, 70):
        tried: list[int] = []

        monkeypatch.setattr(largest_batch, "trial", fits_up_to(threshold, tried))
        found = largest_batch.largest("ours-dpo", None, {}, Path("."), 1.0, 64, start, resolution)["best"]["pairs"]
        scan = min(threshold, 64)
        assert found <= scan < found + max(1, int(resolution * found)), (threshold, found, tried)
        assert len(tried) == len(set(tried))


def test_tiny_run_searches_both_frameworks(tmp_path: Path) -> None:
    before = PUBLISHED.read_bytes() if PUBLISHED.exists() else None
    out = tmp_path / "largest.md"
    run = run_tiny("largest_batch", "--max-pairs", "2", "--output", str(out), cwd=tmp_path, timeout=600,
                   RDPO_CACHE=str(tmp_path / "cache"))  # fmt: skip
    rows = {}
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ours-dpo") or line.startswith("| trl-dpo"):
            rows[cells[0]] = cells
    assert set(rows) == {"ours-dpo", "trl-dpo"}
    for cells in rows.values():  # a tiny model fits 2 pairs in 2 GiB: the cap, said so
        assert cells[1] == "2 (the cap: more may fit)" and cells[5] == "1: yes, 2: yes"
        assert int(cells[2].replace(",", "")) > 0 and 0.1 < float(cells[4]) < 2
    assert "Ours / TRL: 1.00× the pairs, 1.00× the real tokens (target ≥ 2×: undecided" in run.stdout
    assert "not a published figure" in out.read_text()
    from benchmarks.largest_batch import TINY

    assert f"({llama_parameters(TINY):,} parameters)" in run.stdout  # counted from the model the run saved
    assert (PUBLISHED.read_bytes() if PUBLISHED.exists() else None) == before


def llama_parameters(settings, device: str = "cpu") -> int:
    """The parameter count of the Llama model ``settings`` describe, built here independently of the benchmark."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=settings.vocab, hidden_size=settings.hidden, intermediate_size=settings.mlp,
                         num_hidden_layers=settings.layers, num_attention_heads=settings.heads,
                         num_key_value_heads=settings.kv_heads, tie_word_embeddings=settings.tied)  # fmt: skip
    with torch.device(device):
        return sum(p.numel() for p in LlamaForCausalLM(config).parameters())


def test_the_gpu_model_has_llama_3_2_1b_size() -> None:
    from benchmarks.largest_batch import MODEL_1B

    assert round(llama_parameters(MODEL_1B, device="meta") / 1e9, 2) == 1.24

"""The weights digest hashes each storage once: a tied GPT-2's shared matrix is read once, the digest still tells
equal weights from different ones (any entry, any alias name), and digests recorded by the earlier rule (aliases
hashed twice) are still recognised. Expected values come from the test's own blake2b loops over the state."""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rdpo_lightning.models import digest as digest_module
from rdpo_lightning.models.digest import digest_matches, has_aliases, legacy_weights_digest, weights_digest

TIED = "lm_head.weight"  # GPT-2's output layer is the token embedding (transformer.wte.weight)


def tiny_gpt2(seed: int = 0, tied: bool = True) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0,
        tie_word_embeddings=tied,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def blake2b_of(entries) -> str:
    """blake2b over (header, payload) pairs, the payload a tensor (its bytes) or a string."""
    digest = hashlib.blake2b(digest_size=16)
    for header, payload in entries:
        digest.update(header.encode())
        if isinstance(payload, str):
            digest.update(payload.encode())
        else:
            digest.update(payload.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def header(name, tensor) -> str:
    return f"{name}:{tensor.dtype}:{tuple(tensor.shape)}"


def test_the_tied_matrix_is_read_once(monkeypatch):
    model = tiny_gpt2()
    state = model.state_dict()
    assert state[TIED].data_ptr() == state["transformer.wte.weight"].data_ptr()
    hashed = []
    blake2b = hashlib.blake2b

    class Counting:
        def __init__(self, **kwargs):
            self.inner = blake2b(**kwargs)

        def update(self, data):
            if not isinstance(data, bytes):  # tensor bytes (headers are str.encode()d)
                hashed.append(memoryview(data).nbytes)
            self.inner.update(data)

        def hexdigest(self):
            return self.inner.hexdigest()

    monkeypatch.setattr(digest_module.hashlib, "blake2b", Counting)
    weights_digest(model)
    distinct = [t for name, t in state.items() if name != TIED]
    assert len(hashed) == len(distinct) and sum(hashed) == sum(t.numel() * t.element_size() for t in distinct)
    hashed.clear()
    legacy_weights_digest(model)  # the earlier rule read it twice
    assert sum(hashed) == sum(t.numel() * t.element_size() for t in state.values())


def test_the_digest_is_of_every_entry_and_each_storage_once():
    model = tiny_gpt2()
    state = model.state_dict()
    entries = [(header(n, t), "=alias of transformer.wte.weight" if n == TIED else t) for n, t in state.items()]
    assert weights_digest(model) == weights_digest(state) == blake2b_of(entries)
    untied = tiny_gpt2(tied=False)
    assert not has_aliases(untied) and has_aliases(model)
    expected = blake2b_of((header(n, t), t) for n, t in untied.state_dict().items())
    assert weights_digest(untied) == legacy_weights_digest(untied) == expected  # no alias: the value of old


def test_equal_weights_digest_equal_and_any_difference_shows():
    model = tiny_gpt2()
    digest = weights_digest(model)
    assert weights_digest(tiny_gpt2()) == digest == weights_digest(copy.deepcopy(model))
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.ln_f.bias", TIED):
        changed = copy.deepcopy(model)
        with torch.no_grad():
            changed.state_dict()[name].view(-1)[3] += 1e-3
        assert weights_digest(changed) != digest, name
    renamed = {("lm_head.other" if n == TIED else n): t for n, t in model.state_dict().items()}
    assert weights_digest(renamed) != digest  # an alias's name is part of the state
    untied_copy = {n: t.clone() for n, t in model.state_dict().items()}
    assert weights_digest(untied_copy) != digest  # equal values, but no longer one storage


def test_digests_recorded_by_the_earlier_rule_still_match():
    model = tiny_gpt2()
    state = model.state_dict()
    old = blake2b_of((header(n, t), t) for n, t in state.items())  # every entry's bytes, the tie twice
    assert legacy_weights_digest(model) == old != weights_digest(model)
    current = weights_digest(model)
    assert digest_matches(old, current, lambda: model)
    assert not digest_matches(legacy_weights_digest(tiny_gpt2(seed=1)), current, lambda: model)
    assert not digest_matches(None, current, lambda: model)

    def unread():
        raise AssertionError("the weights are read only when the recorded digest is not the current one")

    assert digest_matches(current, current, unread)
    untied = tiny_gpt2(tied=False)
    with pytest.raises(AssertionError, match="read only"):
        digest_matches("0" * 32, weights_digest(untied), unread)

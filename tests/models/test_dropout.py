"""``model.disable_policy_dropout`` really turns dropout off, in each form models apply it: ``nn.Dropout`` modules,
a float on a module read at forward time (OPT's ``dropout``, GPTBigCode's ``attn_pdrop``, Llama's
``attention_dropout``, OPT's ``layerdrop``) and a config field read at forward time (Falcon's ``attention_dropout``
and ``hidden_dropout``). Checked on the model's own logits: two train-mode forwards equal each other and the
eval-mode forward; with the option off they differ, so the check can fail."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rdpo_lightning.errors import InputError
from rdpo_lightning.models.dropout import check_dropout_off, disable_dropout, recorded_config
from rdpo_lightning.models.loading import build_policy

RATES = {
    "opt": dict(
        hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32,
        max_position_embeddings=64, dropout=0.3, attention_dropout=0.3, activation_dropout=0.3, layerdrop=0.3,
    ),
    "gpt_bigcode": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, attn_pdrop=0.3, resid_pdrop=0, embd_pdrop=0),
    "llama": dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        attention_dropout=0.3,
    ),
    "falcon": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, attention_dropout=0.3, hidden_dropout=0.3,
    ),
}  # fmt: skip


def policy(model_type: str, disable: bool) -> nn.Module:
    torch.manual_seed(0)
    config = {"model_type": model_type, "vocab_size": 53, "bos_token_id": 1, "eos_token_id": 2, **RATES[model_type]}
    return build_policy(None, config, None, None, None, disable_policy_dropout=disable)[0]


def forwards(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 53, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.train()
        first, second = model(input_ids=ids).logits, model(input_ids=ids).logits
        model.eval()
        return first, second, model(input_ids=ids).logits


@pytest.mark.parametrize("model_type", sorted(RATES))
def test_train_mode_forwards_are_deterministic_and_equal_eval_mode(model_type):
    first, second, evaluated = forwards(policy(model_type, disable=False))
    assert (first - second).abs().max() > 1e-2 and (first - evaluated).abs().max() > 1e-2  # dropout is on here
    first, second, evaluated = forwards(policy(model_type, disable=True))
    assert torch.equal(first, second)
    torch.testing.assert_close(first, evaluated, rtol=0, atol=1e-6)


def test_a_checkpoint_records_the_users_dropout_not_the_zeroed_one():
    model = policy("falcon", disable=True)
    assert model.config.attention_dropout == 0.0 and model.config.hidden_dropout == 0.0  # what the forward reads
    record = recorded_config(model)
    assert record["attention_dropout"] == 0.3 and record["hidden_dropout"] == 0.3
    assert recorded_config(policy("falcon", disable=False))["attention_dropout"] == 0.3


class NoisyLlama(nn.Module):
    """A model with a train-time random source no dropout rate names: the probe must refuse it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, **inputs):
        output = self.inner(**inputs)
        if self.training:
            output.logits = output.logits + 0.1 * torch.randn_like(output.logits)
        return output


def test_the_probe_refuses_a_policy_whose_train_mode_stays_random_and_leaves_the_rng_alone():
    model = NoisyLlama(policy("llama", disable=True))
    disable_dropout(model)
    state = torch.random.get_rng_state()
    with pytest.raises(InputError, match="model.disable_policy_dropout"):
        check_dropout_off(model)
    assert torch.equal(torch.random.get_rng_state(), state)
    check_dropout_off(model.inner)  # the same model without the noise passes

"""LoRA adapters on the policy: what trains, what the reference is (no second model), the cache key, continued
adapters, every robust objective, and one-line errors for bad adapter input. Reference log-probs and WDPO gradients
are checked against independent computations (a separately loaded base model, explicit ``inputs_embeds`` leaves)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM

from rdpo_lightning.errors import InputError
from rdpo_lightning.models.adapters import attach_adapters, reference_state
from rdpo_lightning.models.digest import weights_digest
from rdpo_lightning.robust import DrDPO, GroupDRO, KLReweighter, WassersteinPenalty
from rdpo_lightning.robust.base import math_attention
from rdpo_lightning.training.module import RobustDPO
from tests.lora_fits import brute_logps, fit

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_fc"]}


def lora(**overrides) -> LoraConfig:
    return LoraConfig(**{**LORA, **overrides})


def first_batch(module: RobustDPO) -> dict[str, torch.Tensor]:
    return next(iter(module.trainer.datamodule.train_dataloader()))


def base_model(model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()


def test_only_adapter_weights_train_and_reach_the_optimizer(tiny_model_dir, tmp_path):
    module = fit(tiny_model_dir, tmp_path, peft=lora())
    optimized = {id(p) for group in module.trainer.optimizers[0].param_groups for p in group["params"]}
    named = dict(module.policy.named_parameters())
    assert optimized == {id(p) for n, p in named.items() if "lora_" in n}
    base = dict(base_model(tiny_model_dir).named_parameters())
    for name, param in named.items():
        if "lora_" not in name:
            plain = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param, base[plain]), name  # bitwise: the base never moved
    moved = [n for n, p in named.items() if "lora_B" in n and p.abs().max() > 0]
    assert moved  # lora_B starts at 0: a nonzero value is the step


def test_resident_reference_is_the_base_model_and_no_second_copy(tiny_model_dir, tmp_path):
    module = fit(tiny_model_dir, tmp_path, steps=2, peft=lora(), precompute_reference=False)
    assert module.reference is None
    held = sum(p.numel() for p in module.parameters())
    adapters = sum(p.numel() for n, p in module.named_parameters() if "lora_" in n)
    assert held == adapters + sum(p.numel() for p in base_model(tiny_model_dir).parameters())  # one base, no copy
    batch = first_batch(module)
    with torch.no_grad():
        reference = module.reference_logps(batch)
        want = brute_logps(base_model(tiny_model_dir), batch)
        policy = brute_logps(module.policy.eval(), batch)
    got = torch.cat([reference.chosen, reference.rejected])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert (policy - want).abs().max() > 1e-3  # the trained adapters do change the policy


def test_cache_key_covers_the_base_and_a_starting_adapter(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    base = base_model(tiny_model_dir)
    plain_digest = weights_digest(base)
    fresh = attach_adapters(base_model(tiny_model_dir), lora())
    assert weights_digest(reference_state(fresh)) == plain_digest  # fresh adapters: the reference is the base
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            if "lora_B" in name:
                param.normal_()
    fresh.save_pretrained(tmp_path / "adapter_a")
    continued = attach_adapters(base_model(tiny_model_dir), adapter=str(tmp_path / "adapter_a"))
    digest_a = weights_digest(reference_state(continued))
    assert digest_a != plain_digest
    with torch.no_grad():
        for name, param in continued.named_parameters():
            if "lora_B" in name and ".default." in name:
                param.add_(1.0)  # training the adapter does not change the reference
    assert weights_digest(reference_state(continued)) == digest_a
    with torch.no_grad():
        fresh.base_model.model.transformer.h[0].attn.c_attn.lora_B["default"].weight.add_(1.0)
    fresh.save_pretrained(tmp_path / "adapter_b")
    other = attach_adapters(base_model(tiny_model_dir), adapter=str(tmp_path / "adapter_b"))
    assert weights_digest(reference_state(other)) != digest_a  # another starting adapter, another reference


def test_lora_run_reuses_the_base_models_cache_and_a_continued_adapter_does_not(tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    fit(tiny_model_dir, cache)  # full fine-tuning: the reference is the base model
    files = set(cache.iterdir())
    module = fit(tiny_model_dir, cache, peft=lora())
    assert set(cache.iterdir()) == files  # same reference (the base), same data: loaded, not recomputed
    module.policy.save_pretrained(tmp_path / "adapter")
    fit(tiny_model_dir, cache, adapter=str(tmp_path / "adapter"))
    assert len(set(cache.iterdir()) - files) == len(files)  # base + starting adapter: its own file per split


@pytest.mark.parametrize("precompute", [False, True])
def test_continued_adapter_trains_and_its_reference_is_the_starting_adapter(tiny_model_dir, tmp_path, precompute):
    torch.manual_seed(0)
    start = attach_adapters(base_model(tiny_model_dir), lora())
    with torch.no_grad():
        for name, param in start.named_parameters():
            if "lora_" in name:
                param.normal_(std=0.3)
    start.save_pretrained(tmp_path / "start")
    module = fit(tiny_model_dir, tmp_path / "cache", adapter=str(tmp_path / "start"), precompute_reference=precompute)
    batch = first_batch(module)
    expected = PeftModel.from_pretrained(base_model(tiny_model_dir), tmp_path / "start").eval()
    with torch.no_grad():
        want = brute_logps(expected, batch)
        reference = module.reference_logps(batch)  # from the cache columns when precomputed
    torch.testing.assert_close(torch.cat([reference.chosen, reference.rejected]), want, rtol=0, atol=1e-9)
    trained = dict(module.policy.named_parameters())
    saved = dict(expected.named_parameters())
    for name, param in trained.items():
        if ".reference." in name:
            assert not param.requires_grad and torch.equal(param, saved[name.replace(".reference.", ".default.")])
    changed = [n for n, p in trained.items() if ".default." in n and not torch.equal(p, saved[n])]
    assert changed and all(trained[n].requires_grad for n in changed)


OBJECTIVES = {
    "kl": lambda: KLReweighter(tau=0.5),
    "wdpo_fd": lambda: WassersteinPenalty(rho=0.05, mode="finite_difference"),
    "wdpo_exact": lambda: WassersteinPenalty(rho=0.05, mode="exact"),
    "dr_dpo": lambda: DrDPO(beta_prime=0.5),
    "group_dro": lambda: GroupDRO(num_groups=2, eta=0.5),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_trains_the_adapters_only(tiny_model_dir, tmp_path, name):
    data = {"train_alpha": None, "train_mixtures": [0.1, 0.9]} if name == "group_dro" else None
    module = fit(tiny_model_dir, tmp_path, data=data, peft=lora(), robust=OBJECTIVES[name]())
    named = dict(module.policy.named_parameters())
    base = dict(base_model(tiny_model_dir).named_parameters())
    for param_name, param in named.items():
        if "lora_" not in param_name:
            assert torch.equal(param, base[param_name.replace("base_model.model.", "").replace(".base_layer", "")])
    assert any(p.abs().max() > 0 for n, p in named.items() if "lora_B" in n)
    if name.startswith("wdpo"):
        assert module.trainer.callback_metrics["train/robust/penalty"] > 0  # ∇_z ℓ was taken through frozen z


RHO = 0.3


def wdpo_module(world_tokenizer_dir, robust: WassersteinPenalty) -> tuple[RobustDPO, dict]:
    from rdpo_lightning.data.collate import PairCollator
    from rdpo_lightning.data.tokenize import tokenize_pair
    from rdpo_lightning.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(world_tokenizer_dir)
    pairs = [("the morning train", "rage fury the", "terror dread"), ("a city road", "happy laugh", "grief tears")]
    rows = [tokenize_pair({"prompt": p, "chosen": c, "rejected": r}, tokenizer, 32) for p, c, r in pairs]
    config = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 16, "n_positions": 32}
    torch.manual_seed(0)
    module = RobustDPO(model_config={**config, "vocab_size": len(tokenizer)}, peft=lora(), robust=robust)
    module.torch_dtype = "float64"
    module.configure_model()
    with torch.no_grad():  # nonzero adapters, so the policy is not the reference
        for name, param in module.policy.named_parameters():
            if "lora_" in name:
                param.normal_(std=0.2)
    return module, PairCollator(tokenizer.pad_token_id)(rows)


def independent_wdpo_gradient(module: RobustDPO, batch: dict) -> torch.Tensor:
    """J = mean_i ℓ_i + ρ·mean_i ‖∇_z ℓ_i‖², z an explicit ``inputs_embeds`` leaf per pair (no hook), by autograd."""
    policy = module.policy
    trainable = [p for p in policy.parameters() if p.requires_grad]
    embed = policy.get_input_embeddings()
    half = batch["input_ids"].shape[0] // 2
    with torch.no_grad(), module_reference(module):
        reference = brute_pairs(policy, batch, None)
    terms = []
    with math_attention():
        for i in range(half):
            rows = {k: v[[i, half + i]] for k, v in batch.items()}
            z = embed(rows["input_ids"]).detach().requires_grad_()
            logps = brute_pairs(policy, rows, z)
            ratio = (logps[0] - reference[i]) - (logps[1] - reference[half + i])
            loss = -torch.nn.functional.logsigmoid(module.beta * ratio)
            (g,) = torch.autograd.grad(loss, z, create_graph=True)
            terms.append(loss + RHO * g.pow(2).sum())
        objective = torch.stack(terms).mean()
        return torch.cat([g.flatten() for g in torch.autograd.grad(objective, trainable)])


def module_reference(module: RobustDPO):
    from rdpo_lightning.models.adapters import reference_mode

    return reference_mode(module.policy)


def brute_pairs(model, batch: dict, embeds: torch.Tensor | None) -> torch.Tensor:
    inputs = {"inputs_embeds": embeds} if embeds is not None else {"input_ids": batch["input_ids"]}
    logits = model(**inputs, attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logps * (labels != -100)).sum(-1)


@pytest.mark.parametrize("mode", ["exact", "finite_difference"])
def test_wdpo_gradient_of_the_adapters_matches_an_independent_computation(world_tokenizer_dir, mode):
    epsilon = 1e-5 if mode == "finite_difference" else None
    robust = WassersteinPenalty(rho=RHO, mode=mode, form="squared", epsilon=epsilon)
    module, batch = wdpo_module(world_tokenizer_dir, robust)
    want = independent_wdpo_gradient(module, batch)
    for p in module.policy.parameters():
        p.grad = None
    reference = module.reference_logps(batch)
    if mode == "exact":
        pairs = module.policy_forward(batch, reference, capture=True)
        with robust.forward_context():
            robust(pairs).loss.backward()
    else:
        robust.manual_step(
            lambda shift: module.policy_forward(batch, reference, capture=shift is None, shift=shift),
            lambda loss: loss.backward(),
        )
    got = torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.requires_grad])
    assert want.abs().max() > 1e-3
    tolerance = 1e-9 if mode == "exact" else 1e-4
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance * want.abs().max().item())


def test_bad_adapter_input_is_one_line_naming_the_key(tiny_model_dir, tmp_path):
    with pytest.raises(InputError, match=r"^model\.peft\.target_modules: .*q_proj.*c_attn"):
        attach_adapters(base_model(tiny_model_dir), lora(target_modules=["q_proj"]))
    with pytest.raises(InputError, match=r"^model\.adapter=.*: does not exist"):
        attach_adapters(base_model(tiny_model_dir), adapter=str(tmp_path / "missing"))
    with pytest.raises(InputError, match=r"^model\.adapter=.*: has no adapter_config\.json"):
        attach_adapters(base_model(tiny_model_dir), adapter=str(tmp_path))
    from transformers import LlamaConfig, LlamaForCausalLM

    attach_adapters(base_model(tiny_model_dir), lora()).save_pretrained(tmp_path / "gpt2_adapter")
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    )
    with pytest.raises(InputError, match=r"^model\.adapter=.* does not fit model\.model \(LlamaForCausalLM\)"):
        attach_adapters(llama, adapter=str(tmp_path / "gpt2_adapter"))
    with pytest.raises(InputError, match="give one of model.peft"):
        attach_adapters(base_model(tiny_model_dir), lora(), adapter=str(tmp_path / "gpt2_adapter"))


def test_adapted_models_go_through_the_log_prob_seams_with_their_adapters(tiny_model_dir, world_tokenizer_dir):
    """``models.token_logps`` and the fused output-layer path see the adapters, also on the output layer (LoRA on
    ``lm_head`` starts at B = 0, so a path that read the base weight would agree at first and drift later), and
    ``reference_mode`` switches them off in both."""
    from rdpo_lightning.data.collate import PairCollator
    from rdpo_lightning.data.tokenize import tokenize_pair
    from rdpo_lightning.data.tokenizer import load_tokenizer
    from rdpo_lightning.models.adapters import reference_mode
    from rdpo_lightning.models.fused_logprobs import fused_token_logps
    from rdpo_lightning.models.scoring import token_logps

    tokenizer = load_tokenizer(world_tokenizer_dir)
    rows = [tokenize_pair({"prompt": "the city", "chosen": "happy laugh", "rejected": "grief tears"}, tokenizer, 32)]
    batch = PairCollator(tokenizer.pad_token_id)(rows)
    model = attach_adapters(base_model(tiny_model_dir), lora(target_modules=["c_attn", "lm_head"])).eval()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def sums(pair):
        logps, mask = pair
        return (logps.double() * mask).sum(-1)

    with torch.no_grad():
        fused_token_logps(model, inputs, batch["labels"])  # the first call decides whether the fused path is used
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
        want = brute_logps(model, batch)
        assert (want - brute_logps(base_model(tiny_model_dir), batch)).abs().max() > 1e-2
        torch.testing.assert_close(sums(token_logps(model, batch)), want, rtol=1e-10, atol=1e-10)
        fused = fused_token_logps(model, inputs, batch["labels"])
        assert fused is not None  # the fused path is taken for an adapted GPT-2
        torch.testing.assert_close(sums(fused), want, rtol=1e-10, atol=1e-10)
        with reference_mode(model):
            base = brute_logps(base_model(tiny_model_dir), batch)
            torch.testing.assert_close(sums(token_logps(model, batch)), base, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(
                sums(fused_token_logps(model, inputs, batch["labels"])), base, rtol=1e-10, atol=1e-10
            )

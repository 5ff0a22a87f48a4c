"""The attribute-world DataModule: deterministic from its seed, Bradley–Terry labels at the right mixture, groups,
policy-sampled responses, and tokenised splits cached across runs."""

from __future__ import annotations

import numpy as np
import pytest

from rdpo_lightning.data import AttributeWorld, AttributeWorldDataModule, SamplingConfig
from rdpo_lightning.data import datamodule as datamodule_module
from rdpo_lightning.data.pairing import TIED
from rdpo_lightning.data.tokenize import NO_ROOM


def small(**kwargs) -> AttributeWorldDataModule:
    kwargs = {"num_train": 64, "num_val": 16, "batch_size": 8, **kwargs}
    return AttributeWorldDataModule(**kwargs)


def raw_splits(dm: AttributeWorldDataModule):
    dm.tokenizer = dm.build_tokenizer()
    return dm.build_splits()


def test_world_is_deterministic_from_its_seed():
    world = AttributeWorld()
    a = world.sample_responses(20, np.random.default_rng(3))
    assert a == world.sample_responses(20, np.random.default_rng(3))
    assert a != world.sample_responses(20, np.random.default_rng(4))
    np.testing.assert_array_equal(world.attribute_rewards(a), world.attribute_rewards(list(a)))


def test_datamodule_is_deterministic_from_its_seed():
    first, second, other = small(seed=5), small(seed=5), small(seed=6)
    for dm in (first, second, other):
        dm.setup("fit")
    assert first.train_dataset.to_dict() == second.train_dataset.to_dict()
    assert first.val_names == second.val_names
    for name in first.val_names:
        assert first.val_datasets[name].to_dict() == second.val_datasets[name].to_dict()
    assert first.train_dataset.to_dict() != other.train_dataset.to_dict()


def test_label_frequencies_match_bradley_terry():
    """Over the training pairs, how often the higher-r(α₀) response is chosen matches Σ σ(|Δr|/T)."""
    temperature = 0.05
    dm = small(num_train=3000, num_val=8, label_temperature=temperature, seed=11)
    train, _ = raw_splits(dm)
    alpha = np.array(dm.train_mixture.weights)
    world = dm.world
    gap = world.attribute_rewards(train["chosen"]) @ alpha - world.attribute_rewards(train["rejected"]) @ alpha
    p_higher_wins = 1 / (1 + np.exp(-np.abs(gap) / temperature))
    expected = p_higher_wins.sum()
    observed = (gap > 0).sum() + 0.5 * (gap == 0).sum()
    sd = np.sqrt((p_higher_wins * (1 - p_higher_wins)).sum())
    assert abs(observed - expected) < 4 * sd, (observed, expected, sd)
    assert 0.6 < p_higher_wins.mean() < 0.99  # the labels are neither coin flips nor deterministic


def test_validation_sets_share_pairs_and_differ_only_in_labels():
    dm = small(val_alphas=[0.0, 1.0])
    _, vals = raw_splits(dm)
    assert list(vals) == ["alpha=0.10", "alpha=0.00", "alpha=1.00"]
    pairs = [set(zip(v["chosen"], v["rejected"], strict=True)) for v in vals.values()]
    unordered = [{frozenset(x) for x in p} for p in pairs]
    assert unordered[0] == unordered[1] == unordered[2] and len(unordered[0]) == 16
    assert pairs[1] != pairs[2]  # anger-only and fear-only users disagree on some pairs


def test_deterministic_labels_prefer_the_higher_reward_and_count_ties():
    dm = small(label_temperature=None, val_alphas=[0.0, 1.0], num_val=64)
    _, vals = raw_splits(dm)
    for name, mixture in zip(vals, dm.val_mixtures, strict=True):
        rows = vals[name]
        alpha = np.array(mixture.weights)
        chosen = dm.world.attribute_rewards(rows["chosen"]) @ alpha
        rejected = dm.world.attribute_rewards(rows["rejected"]) @ alpha
        assert np.all(chosen > rejected)  # deterministic labels at this validation mixture
        assert len(rows) + dm.drop_reasons.get(name, {}).get(TIED, 0) == 64


def test_best_vs_worst_of_several_responses():
    dm = small(responses_per_prompt=4, pairing="best_vs_worst", num_train=40)
    train, _ = raw_splits(dm)
    rng = np.random.default_rng(dm.seed)  # the same draws the DataModule makes: prompts, then 4 response columns
    prompts = dm.world.sample_prompts(40 + 16, rng)
    columns = [dm.world.sample_responses(56, rng) for _ in range(4)]
    alpha = np.array(dm.train_mixture.weights)
    expected = []
    for i in range(40):
        rewards = [float(dm.world.attribute_rewards([c[i]])[0] @ alpha) for c in columns]
        best, worst = int(np.argmax(rewards)), int(np.argmin(rewards))
        if rewards[best] != rewards[worst]:
            expected.append((prompts[i], columns[best][i], columns[worst][i]))
    assert list(zip(train["prompt"], train["chosen"], train["rejected"], strict=True)) == expected


def test_training_mixtures_become_groups_with_their_own_labels():
    dm = small(train_mixtures=[0.0, {"joy": 1.0}], train_shares=[0.25, 0.75], label_temperature=None, num_train=80)
    train, vals = raw_splits(dm)
    groups = np.array(train["group"])
    counts = np.bincount(groups)  # 20 and 60 before ties at the component's mixture are skipped
    assert counts.sum() + dm.drop_reasons.get("train", {}).get(TIED, 0) == 80 and 15 <= counts[0] <= 20 <= counts[1]
    for g, mixture in enumerate(dm.train_mixtures):
        rows = train.select(np.flatnonzero(groups == g))
        alpha = np.array(mixture.weights)
        gap = dm.world.attribute_rewards(rows["chosen"]) @ alpha - dm.world.attribute_rewards(rows["rejected"]) @ alpha
        assert np.all(gap >= 0)
    assert list(vals)[:2] == ["alpha=0.00", "joy=1.00"]
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["columns"]["group"].shape == (8,)


def test_responses_sampled_from_a_policy(tiny_model_dir, world_tokenizer_dir, tmp_path, monkeypatch):
    sampling = SamplingConfig(max_new_tokens=6, batch_size=16)
    kwargs = {"response_policy": str(tiny_model_dir), "sampling": sampling, "tokenizer": str(world_tokenizer_dir)}
    dm = small(num_train=12, num_val=4, cache_dir=str(tmp_path), **kwargs)
    train, _ = raw_splits(dm)
    vocabulary = set(dm.world.vocabulary())
    texts = list(train["chosen"]) + list(train["rejected"])
    assert all(set(t.split()) <= vocabulary for t in texts)  # decoded from the model's own vocabulary
    assert any(len(t.split()) > 1 for t in texts)
    assert len(list((tmp_path / "generations").glob("*.json"))) == 1

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again instead of reading the cache")

    monkeypatch.setattr("rdpo_lightning.data.generate._generate", no_sampling)
    again = small(num_train=12, num_val=4, cache_dir=str(tmp_path), **kwargs)
    assert raw_splits(again)[0].to_dict() == train.to_dict()


def test_second_setup_reads_the_tokenised_cache(tmp_path, monkeypatch):
    first = small(cache_dir=str(tmp_path))
    first.prepare_data()
    first.setup("fit")
    files = [f["filename"] for f in first.train_dataset.cache_files]
    assert files and all(f.startswith(str(tmp_path)) for f in files)

    def no_tokenising(*args, **kwargs):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(datamodule_module, "check_and_tokenize", no_tokenising)
    second = small(cache_dir=str(tmp_path))
    second.setup("fit")
    assert [f["filename"] for f in second.train_dataset.cache_files] == files
    assert second.train_dataset.to_dict() == first.train_dataset.to_dict()
    changed = small(cache_dir=str(tmp_path), max_length=12)  # other settings: a different cache key
    with pytest.raises(AssertionError, match="tokenised again"):
        changed.setup("fit")


def test_a_prompt_that_leaves_no_room_is_an_error_when_nothing_is_left():
    dm = small(world=AttributeWorld(prompt_words=6), max_length=6, num_train=40, num_val=8)
    with pytest.raises(ValueError, match=f"train: no pair is left .*{NO_ROOM}.*: 40"):
        dm.setup()


def test_input_shifts_add_sets_of_other_inputs_labelled_by_the_same_reward():
    shifts = {"long": {"response_words": 16}, "neutral": {"neutral_share": [0.7, 0.9], "prompt_words": 6}}
    plain = small(label_temperature=None, val_alphas=[1.0], seed=3)
    shifted = small(label_temperature=None, val_alphas=[1.0], seed=3, input_shifts=shifts)
    train, vals = raw_splits(shifted)
    plain_train, plain_vals = raw_splits(plain)
    assert list(vals) == [*plain_vals, "inputs=long", "inputs=neutral"]
    assert train.to_dict() == plain_train.to_dict()  # the other sets are what they were
    for name in plain_vals:
        assert vals[name].to_dict() == plain_vals[name].to_dict()
    world = shifted.world
    neutral = set(world.neutral_words)
    long, more_neutral = vals["inputs=long"].to_dict(), vals["inputs=neutral"].to_dict()
    assert all(len(text.split()) == 16 for text in long["chosen"] + long["rejected"])
    assert all(len(text.split()) == 8 for text in more_neutral["chosen"])
    assert all(len(p.split()) == 6 for p in more_neutral["prompt"])
    share = np.mean(
        [np.mean([w in neutral for w in t.split()]) for t in more_neutral["chosen"] + more_neutral["rejected"]]
    )
    base_share = np.mean(
        [np.mean([w in neutral for w in t.split()]) for t in plain_vals["alpha=0.10"].to_dict()["chosen"]]
    )
    assert share > 0.7 and base_share < 0.5
    alpha = np.array(shifted.train_mixture.weights)
    for name, data in (("inputs=long", long), ("inputs=neutral", more_neutral)):
        assert len(data["chosen"]) + shifted.dropped.get(name, 0) == shifted.num_val  # only exact ties are dropped
        gap = world.attribute_rewards(data["chosen"]) @ alpha - world.attribute_rewards(data["rejected"]) @ alpha
        assert (gap > 0).all()  # labelled by the training reward, the higher reward chosen


def test_input_shift_errors_name_the_yaml_key():
    with pytest.raises(ValueError, match=r"data\.input_shifts\.long: cannot shift \['sharpness'\]"):
        small(input_shifts={"long": {"sharpness": 2.0}})
    with pytest.raises(ValueError, match=r"data\.input_shifts\.short: .*prompt_words"):
        small(input_shifts={"short": {"prompt_words": 0}})

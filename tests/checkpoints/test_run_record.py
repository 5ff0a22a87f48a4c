"""What a checkpoint records about its run loads back under ``torch.load(weights_only=True)``, the loader a resume
uses: a QLoRA base's config holds a ``str`` Enum (``quant_method``) that JSON accepts but that pickle keeps as its
class, and the first QLoRA resume on a GPU stopped on it."""

from __future__ import annotations

import enum

import numpy as np
import torch
from transformers.utils.quantization_config import QuantizationMethod

from rdpo_lightning.checkpoints.run_record import KEY, plain
from tests.lora_fits import fit


class Colour(str, enum.Enum):
    RED = "red"


def test_plain_keeps_built_in_types_and_turns_the_rest_into_them():
    value = {
        "enum": Colour.RED,
        "int_enum_key": {1: np.float64(0.5), None: True},
        "nested": [(Colour.RED, np.int64(3)), {"dtype": torch.float32}],
    }
    got = plain(value)
    assert got == {
        "enum": "red",
        "int_enum_key": {1: 0.5, None: True},
        "nested": [("red", 3), {"dtype": "torch.float32"}],
    }
    kinds = {type(got["enum"]), type(got["int_enum_key"][1]), type(got["nested"][0][0]), type(got["nested"][0][1])}
    assert kinds == {str, float, int}  # built-in types, not subclasses


def test_a_quantized_bases_config_is_recorded_in_types_a_resume_can_load(tiny_model_dir, tmp_path):
    module = fit(tiny_model_dir, tmp_path, steps=1, data={"num_train": 8})
    # what loading with BitsAndBytesConfig leaves on the config (QuantizationMethod is a str Enum)
    module.policy.config.quantization_config = {"quant_method": QuantizationMethod.BITS_AND_BYTES, "load_in_4bit": True}
    path = tmp_path / "qlora.ckpt"
    module.trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # Lightning's resume loader
    recorded = checkpoint[KEY]["model_config"]["quantization_config"]
    assert recorded == {"quant_method": "bitsandbytes", "load_in_4bit": True}
    assert type(recorded["quant_method"]) is str

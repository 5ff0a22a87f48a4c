"""Shared fixtures: a tiny tokenizer and model saved to disk and loaded the way users load theirs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

# One torch thread for the suite and for every process it starts (they inherit the variable), unless the caller set a
# count: its tensors are tiny, and on a shared 2-core machine a second OpenMP thread mostly spins while its partner
# waits for a core (tests/models took 72 s of CPU at 2 threads, 17 s at 1). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import lightning.pytorch  # noqa: E402, F401  (its log handler binds sys.stderr on import: at collection, not in a capsys test)
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the tests' tokenizers and caches out of the user's home."""
    os.environ["RDPO_CACHE"] = str(tmp_path_factory.mktemp("rdpo_cache"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _default_threads() -> int:
    import torch

    return torch.get_num_threads()


_DEFAULT_THREADS = _default_threads()  # read at collection, before any test runs


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test (or a benchmark run in-process) that changes torch's thread count must not change it for the tests
    after it: a different count reorders float reductions, and the bitwise resume tests compare an in-process fit
    with one from a subprocess that runs at the default count."""
    import torch

    yield
    torch.set_num_threads(_DEFAULT_THREADS)


@pytest.fixture(scope="session")
def world_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rdpo_lightning.data import AttributeWorld
    from rdpo_lightning.data.tokenizer import save_word_tokenizer

    return save_word_tokenizer(AttributeWorld().vocabulary(), tmp_path_factory.mktemp("world_tokenizer"))


def world_gpt2_config(tokenizer, **sizes):
    """A GPT-2 config for a tokenizer of the world's vocabulary: its size and special tokens, and ``sizes``."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **sizes,
    )


def spawn_retrying_port_clash(launch, attempts: int = 3):
    """``launch()`` of a Lightning ``ddp_spawn`` run, again on a fresh port when its rendezvous port was taken.

    Lightning picks a free port once per process (then keeps it in ``MASTER_PORT``); between that choice and its
    binding, another test worker's processes (gloo opens ports of its own for every pair of ranks) can take it, and the
    launch fails with ``EADDRINUSE``: no fault of the code under test. Any other failure is raised at once."""
    for attempt in range(attempts):
        os.environ.pop("MASTER_PORT", None)  # Lightning chooses a fresh free port
        try:
            return launch()
        except Exception as error:  # torch.multiprocessing's ProcessRaisedException carries the rank's message
            if attempt == attempts - 1 or not any(s in str(error) for s in ("EADDRINUSE", "address already in use")):
                raise
    return None


def save_reinitialised(model_dir: Path, seed: int, directory: Path) -> Path:
    """``model_dir``'s GPT-2 architecture with fresh weights drawn after ``torch.manual_seed(seed)``, saved."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config.from_pretrained(model_dir)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, world_tokenizer_dir: Path) -> Path:
    """A 2-layer GPT-2 for the world's vocabulary, written with ``save_pretrained``."""
    import torch
    from transformers import GPT2LMHeadModel

    from rdpo_lightning.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(world_tokenizer_dir)
    torch.manual_seed(0)
    config = world_gpt2_config(tokenizer, n_layer=2, n_head=2, n_embd=32, n_positions=64)
    directory = tmp_path_factory.mktemp("tiny_gpt2")
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


TINY_GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64}


@pytest.fixture()
def tiny_gpt2_config() -> dict:
    return dict(TINY_GPT2)


#: a minimal chat template over the world's vocabulary: role words are unknown tokens, <bos>/<eos> mark turns
CHAT_TEMPLATE = (
    "{% for m in messages %}<bos> {{ m['role'] }} {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<bos> assistant {% endif %}"
)


@pytest.fixture(scope="session")
def chat_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, world_tokenizer_dir: Path) -> Path:
    """The world tokenizer with a chat template, saved like any chat model's tokenizer."""
    from rdpo_lightning.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(world_tokenizer_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    directory = tmp_path_factory.mktemp("chat_tokenizer")
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``user_module(name, source)`` writes ``source`` as module ``name`` in a folder put on ``sys.path`` for the
    test, and returns ``name``: a user's own code that a config names by import path."""
    import importlib
    import sys
    import textwrap

    folder = tmp_path / "user_code"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))

    def write(name: str, source: str) -> str:
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, name, raising=False)  # a module of that name from an earlier test
        importlib.invalidate_caches()
        return name

    return write


@pytest.fixture(scope="session")
def tiny_reference_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """Another 2-layer GPT-2 like ``tiny_model_dir`` but initialised with another seed: a reference that differs
    from the policy, so validation losses and implicit rewards are not all log 2 and 0 before any training."""
    return save_reinitialised(tiny_model_dir, 1, tmp_path_factory.mktemp("tiny_gpt2_reference"))


def read_scalars(root: Path) -> dict[str, dict[int, float]]:
    """tag → {step: value} from every TensorBoard event file under ``root``."""
    from collections import defaultdict

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = defaultdict(dict)
    for event_file in sorted(root.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                out[tag][event.step] = event.value
    return dict(out)


@pytest.fixture()
def tensorboard_scalars():
    """The reader of logged scalars, ``tensorboard_scalars(root)`` → {tag: {step: value}} (real event files)."""
    return read_scalars


@pytest.fixture()
def lightning_messages():
    """Messages Lightning's rank-zero logger emits (where the reference cache reports hits and misses, and a resume
    what differs from its checkpoint)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler, level = Collect(level=logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)

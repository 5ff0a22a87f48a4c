"""README, "Bring your own model": every command of its block runs as written, from a directory holding tiny
stand-ins for the user's model (``path/to/my-model``, a saved GPT-2 with its tokenizer), pairs (``pairs.jsonl``) and a
shifted set (``other_users.jsonl``: pairs with the opposite preference); the block ends in ``rdpo validate``'s table of
both sets and their worst case. The commands run in-process, as the console script and the interpreter run them
(``rdpo`` is :func:`rdpo_lightning.cli.run`, ``python -c`` executes its code as ``__main__``): four fresh interpreters
would add only their start-up (a multi-process ``rdpo`` run is tests/distributed/test_cli_fsdp2.py's)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

from rdpo_lightning.cli import run
from tests.cli.test_input_errors import write_pairs
from tests.test_own_data_shifts import table_rows

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- byom-commands"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index(MARKER) :], re.S).group(1)
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_commands_run_on_tiny_stand_ins(tmp_path, tiny_model_dir, monkeypatch, capsys):
    shutil.copytree(tiny_model_dir, tmp_path / "path" / "to" / "my-model")
    write_pairs(tmp_path / "pairs.jsonl", count=24)
    flipped = [json.loads(line) for line in write_pairs(tmp_path / "other_users.jsonl", count=8, seed=1).open()]
    flipped = [{**row, "chosen": row["rejected"], "rejected": row["chosen"]} for row in flipped]  # a shifted set
    (tmp_path / "other_users.jsonl").write_text("".join(json.dumps(row) + "\n" for row in flipped))
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RDPO_CACHE", str(tmp_path / "cache"))
    commands = readme_commands()
    assert [c.split()[:2] for c in commands] == [
        ["rdpo", "fit"],
        ["rdpo", "export"],
        ["python", "-c"],
        ["rdpo", "validate"],
    ]
    outputs = []
    for command in commands:
        program, *args = shlex.split(command)
        capsys.readouterr()
        if program == "rdpo":
            run(args)  # the console script; a usage or configuration error would raise SystemExit(2)
        else:
            assert args[0] == "-c", command
            exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
        outputs.append(capsys.readouterr().out)
    assert (tmp_path / "my-model-rdpo" / "model.safetensors").is_file()
    assert "worst-case loss" in (tmp_path / "my-model-rdpo" / "README.md").read_text()
    generated = outputs[2].strip()
    assert generated.startswith("the morning train") and len(generated.split()) > 3  # it generated tokens
    rows = table_rows(outputs[3])  # the validate table: both sets, and the worst of them
    losses = {name: float(values[0]) for name, values in rows.items() if name not in ("worst", "at")}
    assert list(losses) == ["held_out", "other_users"]
    assert float(rows["worst"][1]) == max(losses.values()) and rows["at"][0] == max(losses, key=losses.get)

"""Every command of README.md's ```bash blocks runs as written.

The commands run in README order in one temporary working directory (copies of the entry scripts;
configs come from the installed package), so nothing is written into the repository. They are shrunk
only by overrides APPENDED to the command as written (``SHRINK``), and placeholders in angle brackets
are filled with real paths (``fill``): a tiny saved Qwen3 with its tokenizer, a generated corpus, or
the run folder of an earlier command. ``NOT_RUN`` lists the commands that cannot run here, with the
reason; a README command that is neither run nor listed cannot exist, and a listed command that left the
README fails ``test_not_run_list_matches_readme``.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# command as written -> why it is not run here
NOT_RUN = {
    "python3 -m venv .venv && . .venv/bin/activate": "the install itself: what CI (.ci/run) runs on a fresh machine",
    'python -m pip install -c constraints.txt -e ".[test]"': "the install itself: what CI (.ci/run) runs",
    "python -m pip install -c constraints.txt torch --index-url https://download.pytorch.org/whl/cpu":
        "install for a CPU-only machine with access to the PyTorch index; offline here",
    "python -m pytest -q": "the test suite this test belongs to",
    "wandb login": "needs a W&B account and network",
}
# appended overrides, by the start of the command; the first match applies
SHRINK = [
    ("python train.py experiment=longbench trainer.fast_dev_run=true", []),
    # as below, with NIAH during training on 2 samples of 8 new tokens (the callback's are 50 of RULER's 128)
    ("python train.py experiment=longbench callbacks=keep_best_niah",
     ["trainer.max_steps=1", "data.seq_len=4096", "trainer.val_check_interval=1", "trainer.limit_val_batches=1",
      "callbacks.task_eval.num_samples=2", "callbacks.task_eval.max_new_tokens=8"]),
    # one step on 4,096-token rows (the stand-in above runs the recipe's 16,384); the generated corpus
    # has fewer rows than the recipe's 1000-step validation interval
    ("python train.py experiment=longbench", ["trainer.max_steps=1", "data.seq_len=4096",
                                              "trainer.val_check_interval=1", "trainer.limit_val_batches=1"]),
    ("python train.py trainer.fast_dev_run=true", []),
    ("python train.py", ["trainer.max_steps=2"]),
    ("python generate.py", []),
    ("python eval.py run_dir=<run dir> tasks=smoke", []),
    # the published table's tasks on the shipped LongBench-format files: one record per dataset, NIAH at
    # 1k tokens with 2 samples (the table's is 32k with 500)
    ("python eval.py", ["data.limit=1", "tasks.niah=[1024]", "niah.num_samples=2"]),
    ("python -m rosa_lightning.evaluation.compare", []),
    ("wandb sync ", ["--dry-run"]),  # uploads: --dry-run checks its paths and options offline
    ("python -m rosa_lightning.data.export_corpus", []),
]
PLACEHOLDERS = ("tiny dir", "base checkpoint dir", "Qwen3-1.7B-Base dir", "long documents", "LongBench data dir",
                "run dir", "time")


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` outside quotes that starts a word)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands(text: str) -> list[str]:
    """The commands of every ```bash block, one per line after joining backslash continuations."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
            if strip_comment(line).strip():
                commands.append(strip_comment(line).strip())
    return commands


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))
TO_RUN = [c for c in COMMANDS if c not in NOT_RUN]


def shrink(command: str) -> list[str]:
    for start, extra in SHRINK:
        if command.startswith(start):
            return extra
    raise AssertionError(f"README command {command!r} matches no entry of SHRINK: add how the test runs it "
                         "(or, if it cannot run here, list it in NOT_RUN with the reason)")


def test_not_run_list_matches_readme():
    assert [c for c in NOT_RUN if c not in COMMANDS] == [], "NOT_RUN lists commands that left README.md"
    assert TO_RUN and all(any(c.startswith(s) for s, _ in SHRINK) for c in TO_RUN)


def test_every_placeholder_has_a_value():
    unknown = {p for c in TO_RUN for p in re.findall(r"<([^<>]+)>", c) if p not in PLACEHOLDERS}
    assert not unknown, f"README placeholders {sorted(unknown)} have no value in this test (PLACEHOLDERS, fill)"


def test_readme_parser_joins_continuations_and_keeps_quoted_hashes():
    text = "```bash\npython a.py x=1 \\\n    'p=\"#1 (n):\"'   # note\n# only a comment\n```\n```python\nno()\n```\n"
    assert readme_commands(text) == ["python a.py x=1 'p=\"#1 (n):\"'"]


class Workspace:
    """The working directory the commands share, the inputs the placeholders point at, and the run
    folders earlier commands made."""

    def __init__(self, root: Path) -> None:
        from tests.framework.conftest import save_tiny_backbone

        self.cwd = root / "work"
        self.cwd.mkdir()
        for script in ("train.py", "generate.py", "eval.py"):
            if (ROOT / script).exists():
                shutil.copy(ROOT / script, self.cwd / script)
        self.tiny = save_tiny_backbone(root / "tiny_qwen3")
        self.documents = write_documents(root / "documents.jsonl")

    def runs(self, task: str) -> list[Path]:
        return sorted((self.cwd / "logs" / task / "runs").glob("*"))

    def fill(self, command: str) -> str:
        from rosa_lightning.evaluation.cli import FIXTURE_DIR  # LongBench-format files shipped with the package

        def time_of(m: re.Match) -> str:
            runs = self.runs(m[1])
            assert runs, f"{command!r} needs a run of logs/{m[1]}/ made by an earlier README command"
            return f"logs/{m[1]}/runs/{runs[0].name}"

        command = re.sub(r"logs/(\w+)/runs/<time>", time_of, command)
        values = {"tiny dir": self.tiny, "base checkpoint dir": self.tiny, "Qwen3-1.7B-Base dir": self.tiny,
                  "long documents": self.documents, "LongBench data dir": FIXTURE_DIR}
        if "<run dir>" in command:
            # a stage-A run on the tiny base (the published recipe's): its adapter pairs with that base
            runs = self.runs("longbench")
            assert runs, f"{command!r} needs the longbench run of an earlier README command"
            values["run dir"] = runs[0]
        return re.sub(r"<([^<>]+)>", lambda m: str(values[m[1]]), command)


def write_documents(path: Path, words: int = 60_000) -> Path:
    """A jsonl corpus of the tiny tokenizer's words: enough 4,096-token rows for 8 held out for
    validation plus training rows."""
    from tests.framework.conftest import WORDS

    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(words // 2000):
            f.write(json.dumps({"text": " ".join(rng.choices(WORDS, k=2000))}) + "\n")
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("readme"))


def run(command: str, ws: Workspace) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "COLUMNS": "80"}
    line = " ".join([ws.fill(command), *shrink(command)])
    return subprocess.run(["bash", "-c", line], cwd=ws.cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=540)


@pytest.mark.slow
@pytest.mark.parametrize("command", TO_RUN, ids=[f"{i:02d} {c[:70]}" for i, c in enumerate(TO_RUN)])
def test_readme_command_runs_as_written(command, workspace):
    proc = run(command, workspace)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-4000:]}"
    assert "Traceback" not in proc.stdout, proc.stdout[-4000:]
    if command.startswith("python train.py"):
        assert "Run finished" in proc.stdout, proc.stdout[-2000:]

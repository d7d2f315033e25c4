"""The Dockerfile, read as text (images can be neither pulled nor built here, so it is untested as an image).

Checked: a CPU/CUDA build argument; the Python packages come only from the pinned requirements.txt,
through the README's set-up (`make setup`, whose rule installs ``-r requirements.txt``); the image
runs as a non-root user, sets the offline variables and downloads nothing in its commands; the
commands it documents are the README's; .dockerignore keeps the venv and generated files out.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def _dockerfile() -> tuple[str, list[tuple[str, str]]]:
    text = (REPO / "Dockerfile").read_text()
    return text, _instructions(text)


def test_one_dockerfile_with_a_cpu_or_cuda_build_argument():
    text, steps = _dockerfile()
    assert [p.name for p in REPO.glob("Dockerfile*")] == ["Dockerfile"]
    args = [rest for word, rest in steps if word == "ARG"]
    assert any(a.startswith("BASE_IMAGE=") for a in args) and "TORCH=cpu" in args
    assert [rest for word, rest in steps if word == "FROM"] == ["${BASE_IMAGE}"]
    assert steps[0] == ("ARG", next(a for a in args if a.startswith("BASE_IMAGE=")))  # an ARG before FROM sets the base
    setup = next(rest for word, rest in steps if word == "RUN" and "make setup" in rest)
    assert "cpu) export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" in setup and "cuda)" in setup
    assert "--build-arg TORCH=cuda" in text


def test_packages_come_only_from_the_pinned_requirements_through_make_setup():
    _, steps = _dockerfile()
    runs = [rest for word, rest in steps if word == "RUN"]
    assert not any(re.search(r"\bpip3? install\b", r) for r in runs), "packages are installed by make setup only"
    setup_index = next(i for i, (word, rest) in enumerate(steps) if word == "RUN" and "make setup" in rest)
    copies = [rest for word, rest in steps[:setup_index] if word == "COPY"]
    assert copies == ["--chown=mtu:mtu requirements.txt Makefile ./"]
    # the Makefile's setup rule installs the pinned file, and the README names that set-up
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^setup: \$\(STAMP\)$", makefile, re.M)
    assert "pip install --quiet --disable-pip-version-check -r requirements.txt" in makefile
    readme = (REPO / "README.md").read_text()
    assert "create `.venv/` from the pinned `requirements.txt`" in readme and "runs `make setup`" in readme
    pins = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][\w.+]*", p) for p in pins), pins
    assert any(p.startswith("mlflow==") for p in pins) and any(p.startswith("dvc==") for p in pins)


def test_the_image_runs_as_a_non_root_user_and_downloads_nothing_when_it_runs():
    _, steps = _dockerfile()
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    last_user = max(i for i, (word, _) in enumerate(steps) if word == "USER")
    assert all(word != "USER" for word, _ in steps[last_user + 1:])
    assert not any(word == "RUN" and re.search(r"\b(curl|wget)\b", rest) for word, rest in steps)
    env = " ".join(rest for word, rest in steps if word == "ENV")
    for setting in ("PIP_NO_INDEX=1", "HF_HUB_OFFLINE=1", "MLFLOW_DISABLE_TELEMETRY=true", "DVC_NO_ANALYTICS=1",
                    "GRADIO_ANALYTICS_ENABLED=False", "PATH=/app/.venv/bin:$PATH"):
        assert setting in env, setting
    cmd = [rest for word, rest in steps if word in ("CMD", "ENTRYPOINT")]
    assert cmd == ['["python", "-m", "scripts.infer", "--help"]']
    workdirs = [rest for word, rest in steps if word == "WORKDIR"]
    assert workdirs[-1] == "/app/monai_bundle"


def test_the_documented_entry_points_are_the_readme_commands():
    text, _ = _dockerfile()
    documented = [line.strip().lstrip("#").strip() for line in text.splitlines() if "python -m " in line]
    commands = [line[line.index("python -m "):] for line in documented]
    assert any(c.startswith("python -m monai.bundle run training") for c in commands)
    assert any(c.startswith("python -m monai.bundle run evaluating") for c in commands)
    assert any(c.startswith("python -m scripts.infer") for c in commands)
    # the README's commands, written for the bundle folder ($B = monai_bundle/configs, quotes of the shell dropped)
    readme = " ".join((REPO / "README.md").read_text().replace("$B/", "configs/").replace('"', "").split())
    for command in commands:
        words = shlex.split(command)
        head = words[:7] if "monai.bundle" in command else words[:3]  # the workflow and its config files
        assert " ".join(head) in readme, command
    assert "untested here" in readme
    assert "docker build -t multitaskunet ." in readme and "--build-arg TORCH=cuda" in readme


def test_dockerignore_keeps_the_venv_and_generated_files_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "monai_bundle/models", "monai_bundle/data", "monai_bundle/eval", "Testing/artifacts"):
        assert entry in ignored, entry

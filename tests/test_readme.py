"""The README's commands stay true: the start command runs the module that exists, .ci/run finds the test command it
is documented to run, and the service prints the README's curl. (The curl and openai-client examples themselves run
against a served app in tests/e2e/test_readme_http.py.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.DOTALL)


def test_start_and_test_commands():
    start, curl, tests = blocks("bash")[:3]
    assert start.strip().endswith("python -m serve_app") and "'.[cpu,build]'" in start
    assert tests.strip().endswith("python -m pytest -q") and "'.[cpu,build,test]'" in tests
    import serve_app.__main__ as entry
    assert entry.DEFAULT_CONFIG.is_file()


def test_ci_runs_the_readme_test_command():
    cmd = subprocess.run(["awk", r"/^## Run the tests/{f=1} f&&/^```bash/{getline; print; exit}", "README.md"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert cmd == blocks("bash")[2].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and 'bash -c "$cmd"' in ci


def test_printed_instructions_match_the_readme():
    import yaml

    import serve_app.__main__ as entry
    model, port = entry.served_model(yaml.safe_load(entry.DEFAULT_CONFIG.read_text()))
    printed = entry.usage(f"http://127.0.0.1:{port}", model, None)
    readme_body = blocks("bash")[1].split("-d '", 1)[1].strip()
    assert readme_body.replace("  ", "") in printed.replace("  ", "")
    assert "Authorization: Bearer k1" in entry.usage("http://h:1", model, "k1")

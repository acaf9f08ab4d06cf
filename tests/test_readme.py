"""The README's commands and examples stay true: the start command runs the module that exists, the curl body is a
valid request whose image the preprocess stage accepts, the Python example compiles, and .ci/run finds the test
command it is documented to run."""

from __future__ import annotations

import ast
import base64
import re
import subprocess
from pathlib import Path

from serve_app.api.chat import parse_request
from serve_app.imaging.pipeline import preprocess_image
from serve_app.stages.options import PreprocessOptions
from tests.fake_manifest import vision_spec

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


def test_curl_example_is_a_valid_request():
    curl = blocks("bash")[1]
    body = curl.split("-d '", 1)[1].rsplit("'", 1)[0]
    png = base64.b64encode((ROOT / "examples" / "shapes.png").read_bytes()).decode()  # the shipped example image
    body = body.replace("'\"$(base64 -w0 examples/shapes.png)\"'", png)
    req = parse_request(body.encode())
    assert req.stream and req.model == "mmserve-demo"
    (url,) = [p.image_url.url for p in req.messages[0].content if p.type == "image_url"]
    assert preprocess_image(url, vision_spec(48), PreprocessOptions()).pixels.shape == (3, 48, 48)


def test_python_example_compiles():
    (example,) = blocks("python")
    ast.parse(example)
    assert 'base_url="http://127.0.0.1:8000/v1"' in example


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

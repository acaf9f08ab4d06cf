"""vLLM's CPU build as benchmark peer (used by bench_vs_vllm.py; its docstring says how vLLM installs): the
checkpoint copy with vLLM's key layout, the torchvision guard, and the server started, measured and stopped as one
process group."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import time
from collections import Counter
from pathlib import Path

import psutil

VISION_PREFIX = "vision_tower."


# ---- the checkpoint and its vLLM copy ---------------------------------------------------------------------------

def vllm_key(key: str) -> str:
    """`[model.]vision_tower.X` -> `[model.]vision_tower.vision_model.X` unless already so; other keys unchanged."""
    head, found, tail = key.partition(VISION_PREFIX)
    if not found or head not in ("", "model.") or tail.startswith("vision_model."):
        return key
    return f"{head}{VISION_PREFIX}vision_model.{tail}"


def rename_safetensors(src: Path, dst: Path) -> int:
    """Copy `src` with its header's tensor names renamed by vllm_key; data bytes unchanged -> how many names changed.
    Offsets in the header are relative to the data, so only the header's length changes (padded to 8 bytes)."""
    with open(src, "rb") as fi:
        (n,) = struct.unpack("<Q", fi.read(8))
        header = json.loads(fi.read(n))
        renamed = {vllm_key(k): v for k, v in header.items()}
        raw = json.dumps(renamed, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(dst, "wb") as fo:
            fo.write(struct.pack("<Q", len(raw)))
            fo.write(raw)
            shutil.copyfileobj(fi, fo, 16 << 20)
    return sum(vllm_key(k) != k for k in header)


def vllm_copy(ckpt: Path, out: Path) -> Path:
    """`out`: the checkpoint with vLLM's key layout; remade when the source's safetensors changed."""
    stamp = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(ckpt.glob("*.safetensors"))}
    marker = out / "renamed-from.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"source": str(ckpt), "files": stamp}:
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    renamed = 0
    for f in sorted(ckpt.iterdir()):
        if f.suffix == ".safetensors":
            renamed += rename_safetensors(f, tmp / f.name)
        elif f.name.endswith(".safetensors.index.json"):
            index = json.loads(f.read_text())
            index["weight_map"] = {vllm_key(k): v for k, v in index["weight_map"].items()}
            (tmp / f.name).write_text(json.dumps(index, indent=2))
        elif f.is_file():
            shutil.copy2(f, tmp / f.name)
    (tmp / "renamed-from.json").write_text(json.dumps({"source": str(ckpt), "files": stamp}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"vLLM copy of {ckpt} -> {out}: {renamed} vision tower tensors renamed", flush=True)
    return out


# ---- vLLM's server ----------------------------------------------------------------------------------------------

GUARDED = ('torchvision::nms', 'torchvision::qnms')


def guard_torchvision(vllm_python: str) -> None:
    """Make the vLLM venv's torchvision importable without its compiled ops (see the module docstring)."""
    where = subprocess.run([vllm_python, "-c", "import importlib.util as u; print(u.find_spec('torchvision').origin)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    meta = Path(where).parent / "_meta_registrations.py"
    text = meta.read_text()
    patched = text
    for op in GUARDED:
        patched = patched.replace(f'@torch.library.register_fake("{op}")\n',
                                  f'@(torch.library.register_fake("{op}") if torchvision.extension._has_ops() '
                                  f'else (lambda fn: fn))  # guarded by mmserve bench_vs_vllm\n')
    if patched != text:
        meta.write_text(patched)
        print(f"guarded the torchvision::nms/qnms fake registrations in {meta}", flush=True)
    check = subprocess.run([vllm_python, "-c", "import torchvision.transforms"], capture_output=True, text=True)
    if check.returncode:
        raise SystemExit(f"{vllm_python}: torchvision still fails to import:\n{check.stderr[-2000:]}")


def check_vllm(vllm_python: str) -> None:
    probe = [vllm_python, "-c", "import importlib.util as u; assert u.find_spec('vllm')"]
    if not Path(vllm_python).is_file() or subprocess.run(probe, capture_output=True).returncode:
        raise SystemExit(f"{vllm_python} has no vllm: install vLLM's CPU build as the module docstring says "
                         "(python benchmarks/bench_vs_vllm.py --help)")
    guard_torchvision(vllm_python)


def start_vllm(args, ckpt: Path) -> tuple[subprocess.Popen, str]:
    cores = f"0-{os.cpu_count() - 1}"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(args.vllm_kv_gb), "VLLM_CPU_OMP_THREADS_BIND": cores,
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    tcmalloc = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    if tcmalloc.is_file():
        env["LD_PRELOAD"] = str(tcmalloc)
    else:
        print("note: libtcmalloc_minimal.so.4 not found (apt-get install libtcmalloc-minimal4): vLLM on glibc malloc")
    cmd = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(ckpt),
           "--served-model-name", ckpt.name.removesuffix("-vllm"), "--host", "127.0.0.1", "--port", str(args.vllm_port),
           "--dtype", args.vllm_dtype, "--max-model-len", "2048", "--max-num-seqs", "16",
           "--max-num-batched-tokens", "2048", "--limit-mm-per-prompt", '{"image": 1}',
           "--chat-template-content-format", "openai", "--generation-config", "vllm",
           "--no-enable-prefix-caching", "--mm-processor-cache-gb", "0"]
    log = open(Path(args.work) / "vllm.log", "w")
    print(f"starting vLLM (log {log.name}): {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # setsid
    return proc, f"http://127.0.0.1:{args.vllm_port}"


def stop_vllm(proc: subprocess.Popen) -> None:
    """The API server, engine core and worker are separate processes: stop the whole group."""
    for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            time.sleep(1)  # the group's other members exit just after the API server
        except subprocess.TimeoutExpired:
            continue
        if not [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == proc.pid]:
            return


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def vllm_processes(proc: subprocess.Popen) -> dict[str, psutil.Process]:
    root = psutil.Process(proc.pid)
    found = {"client (this process)": psutil.Process(), "vLLM API server": root}
    count: Counter = Counter()
    for child in root.children(recursive=True):
        try:
            name = child.name()  # vLLM titles its processes (VLLM::EngineCore, ...)
        except psutil.NoSuchProcess:
            continue
        count[name] += 1
        found[name if count[name] == 1 else f"{name}#{count[name]}"] = child
    return found

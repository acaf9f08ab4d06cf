"""What makes a build's bytes depend on the machine's load, pinned for the length of a build.

The artifacts hold numbers computed by float reductions at build time: the static KV cache scales of every `-kv8`
variant (absmax of the reference's K and V) and the parity figures in the manifest. A float reduction split over
N threads sums in another order than over M threads, so the result's last bits depend on the thread count, and
torch's default thread count follows the process's CPU affinity and OMP_NUM_THREADS (Ray sets it to a replica's
num_cpus; a loaded node's build ran with another count than an idle one's). Different last bits in one scale give a
different graph file, a different manifest sha256, hence a different model key: nodes that each build for
themselves then refuse each other's requests (ModelMismatch).

So a build computes everything it writes on one torch intra-op thread, and every ONNX Runtime session it opens
(parity, calibration) runs one intra-op thread too (graphs.verify / graphs.families.llava.parity open theirs with
threads=1). numpy's `@` and `np.linalg.norm` call BLAS, whose thread count is fixed at import from the environment
(OMP_NUM_THREADS, which Ray sets per replica) and splits a dot product's sum by it: figures and folded weights use
numpy's own reductions instead (`cosine` here, `sum(axis=...)`), whose order is fixed by the code.

What this does not pin: another CPU instruction set (AVX2 against AVX-512) may round a GEMM differently, so two
nodes with different CPUs can still compute other last bits; build once and share the artifacts
(`model.artifacts_uri`) across such a cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

BUILD_THREADS = 1  # any fixed count is deterministic; one is the count every node can give regardless of load


@contextmanager
def fixed_build_threads(threads: int = BUILD_THREADS) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` inside the block and restored after it (a build inside a
    serving replica or a test process must not leave its threads changed)."""
    import torch  # build time only: the caller is building, so torch is loaded anyway

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays (flattened) in float64, with numpy's pairwise sums rather than BLAS: the
    same bits whatever the BLAS thread count."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(np.sum(a * b) / (np.sqrt(np.sum(a * a)) * np.sqrt(np.sum(b * b))))

"""Execution-provider specs: what a stage asks ONNX Runtime for, in order, with each EP's options.

A stage's config holds an ordered list, best first (vision: TensorRT, CUDA, CPU; decoder and preprocess: CPU).
Which one actually loads is decided at session creation (see `ort_session.open_stage_session`); the specs here only
turn typed config into ORT's `(name, {option: str})` provider entries.

TensorRT builds one engine per optimization profile. The profile's min/opt/max shapes come from the stage's batch
sizes (`BatchProfile`), so every batch size the stage can form falls inside one engine: no rebuild when a new batch
size shows up, and the engine + timing caches make a restarted replica reuse the engine instead of rebuilding it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from mmcore.manifest import CPU_EP, CUDA_EP, TENSORRT_EP, TensorSpec

GIB = 1 << 30


@dataclass(frozen=True)
class BatchProfile:
    """The range of batch sizes a stage sends through one graph input, as TensorRT profile shapes."""
    input_name: str  # e.g. "pixels"
    sample_dims: tuple[int, ...]  # every dim but the batch, e.g. (3, H, W)
    opt_batch: int  # the configured batch size: TensorRT tunes kernels for this one
    max_batch: int  # the largest batch the stage may ever form

    def __post_init__(self):
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"batch profile for {self.input_name!r}: need 1 <= opt_batch ({self.opt_batch}) "
                             f"<= max_batch ({self.max_batch})")

    def shape(self, batch: int) -> str:
        """TensorRT's profile syntax: `name:1x3x224x224`."""
        return f"{self.input_name}:" + "x".join(str(d) for d in (batch, *self.sample_dims))

    @property
    def warmup_batches(self) -> list[int]:
        return sorted({1, self.opt_batch, self.max_batch})


def batch_profile(spec: TensorSpec, opt_batch: int, max_batch: int) -> BatchProfile:
    """Profile over `spec`'s leading (symbolic batch) dim; every other dim must be fixed in the manifest."""
    batch_dim, *rest = spec.shape
    if not isinstance(batch_dim, str):
        raise ValueError(f"input {spec.name!r}: first dim {batch_dim} is fixed; a batch profile needs a symbolic one")
    symbolic = [d for d in rest if not isinstance(d, int)]
    if symbolic:
        raise ValueError(f"input {spec.name!r}: dims {symbolic} are symbolic; only the batch dim may be")
    return BatchProfile(spec.name, tuple(rest), opt_batch, max_batch)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def ort_entry(self, profile: BatchProfile | None = None) -> tuple[str, dict[str, str]]:
        """ORT's `(provider name, options)` pair; option values are strings, as ORT's Python API passes them."""
        return self.name, {k: str(v) for k, v in self._options(profile).items()}

    def _options(self, profile: BatchProfile | None) -> dict:
        return {}


class CPUSpec(_Spec):
    name: Literal["CPUExecutionProvider"] = Field(CPU_EP, description="ONNX Runtime's CPU execution provider")


class CUDASpec(_Spec):
    name: Literal["CUDAExecutionProvider"] = Field(CUDA_EP, description="ONNX Runtime's CUDA execution provider")
    device_id: int = Field(0, ge=0, description="CUDA device index as the replica sees it (Ray sets "
                                                "CUDA_VISIBLE_DEVICES to the GPU it assigned, so 0 is that GPU)")
    gpu_mem_limit: int | None = Field(None, gt=0, description="bytes the CUDA arena may hold; None = no limit. "
                                                              "Set it when fractional GPUs put replicas on one card")
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = Field(
        "kSameAsRequested", description="kSameAsRequested grows the arena by what is asked, not by doubling, so "
                                        "replicas sharing a GPU do not reserve memory they never use")

    def _options(self, profile):
        opts = {"device_id": self.device_id, "arena_extend_strategy": self.arena_extend_strategy}
        if self.gpu_mem_limit is not None:
            opts["gpu_mem_limit"] = self.gpu_mem_limit
        return opts


class TensorRTSpec(_Spec):
    name: Literal["TensorrtExecutionProvider"] = Field(TENSORRT_EP,
                                                       description="ONNX Runtime's TensorRT execution provider")
    device_id: int = Field(0, ge=0, description="CUDA device index as the replica sees it")
    fp16: bool = Field(True, description="let TensorRT pick fp16 kernels (fp32 weights stay in the graph)")
    cache_dir: str = Field("/tmp/mmserve/trt-cache",
                           description="engine cache and timing cache directory: a restarted replica loads its "
                                       "engine instead of rebuilding it. Put it on a node-local disk")
    timing_cache: bool = Field(True, description="keep TensorRT's kernel timing cache, shared by engines of "
                                                 "different profiles on the same GPU model")
    workspace_bytes: int = Field(2 * GIB, gt=0, description="scratch memory TensorRT may use while building")
    builder_optimization_level: int = Field(3, ge=0, le=5, description="higher builds slower and may run faster")

    def _options(self, profile):
        opts = {
            "device_id": self.device_id,
            "trt_fp16_enable": int(self.fp16),
            "trt_engine_cache_enable": 1,
            "trt_engine_cache_path": self.cache_dir,
            "trt_timing_cache_enable": int(self.timing_cache),
            "trt_timing_cache_path": self.cache_dir,
            "trt_max_workspace_size": self.workspace_bytes,
            "trt_builder_optimization_level": self.builder_optimization_level,
        }
        if profile is not None:
            opts["trt_profile_min_shapes"] = profile.shape(1)
            opts["trt_profile_opt_shapes"] = profile.shape(profile.opt_batch)
            opts["trt_profile_max_shapes"] = profile.shape(profile.max_batch)
        return opts


ProviderSpec = Annotated[Union[TensorRTSpec, CUDASpec, CPUSpec], Field(discriminator="name")]
_PROVIDER_LIST = TypeAdapter(list[ProviderSpec])


def parse_providers(raw: list) -> list[ProviderSpec]:
    """Config form -> specs. A bare name is accepted for an EP whose defaults suffice: ["CPUExecutionProvider"]."""
    return _PROVIDER_LIST.validate_python([{"name": r} if isinstance(r, str) else r for r in raw])


def default_vision_providers() -> list[ProviderSpec]:
    return [TensorRTSpec(), CUDASpec(), CPUSpec()]


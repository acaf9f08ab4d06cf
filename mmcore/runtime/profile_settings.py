"""The `ort_profile` block of a stage's options: plain pydantic, apart from profiling.py (which imports ONNX
Runtime), so that validating an application's args never loads ONNX Runtime."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_PROFILE_DIR = "/tmp/mmserve/profiles"


class ProfileSettings(BaseModel):
    """The `profile` block of a stage's user_config. A changed block switches profiling on (again)."""

    model_config = ConfigDict(extra="forbid")

    calls: int = Field(0, ge=0, description="profile the next N session calls of each replica, then stop; 0 = off "
                                            "(also ends a profile in progress)")
    dir: str = Field(DEFAULT_PROFILE_DIR, description="directory for ORT's Chrome-trace JSON files, one per replica "
                                                      "and switch-on; created if missing")
    label: str = Field("", pattern=r"^[\w.-]*$", description="added to the trace file name; change it to profile "
                                                             "again with the same calls and dir")

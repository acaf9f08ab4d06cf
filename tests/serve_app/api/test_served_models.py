"""An ingress that followed a rollout forgets the models no stage serves any more, once the rollout is over."""

from __future__ import annotations

import asyncio
import dataclasses

from serve_app.api.served import ServedModels, load_served_model, rollout_settled
from serve_app.artifacts import ModelSource
from serve_app.contract import ModelMismatch

OLD = "a" * 64


def test_a_rollout_is_settled_when_no_deployment_is_updating():
    assert rollout_settled({"Decoder": {"status": "HEALTHY"}, "Ingress": {"status": "UPSCALING"}})
    assert not rollout_settled({"Decoder": {"status": "UPDATING"}, "Ingress": {"status": "HEALTHY"}})


def test_the_ingress_forgets_the_old_model_once_the_rollout_is_over(tiny_artifacts_dir):
    source = {"artifacts_dir": str(tiny_artifacts_dir)}
    new = load_served_model(ModelSource.model_validate(source), None, 2)
    old = dataclasses.replace(new, key=OLD, fingerprint="mmserve-old")
    models = ServedModels(old, None, 2)
    answers = iter([False, ConnectionError("controller restarting"), True])  # updating, unknown, settled
    asked = []

    def settled() -> bool:
        asked.append(True)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def main():
        assert await models.follow(ModelMismatch("decoder", new.key, OLD, source))
        assert models.loaded_keys == {OLD, new.key}  # old replicas may still answer during the rollout
        await models.forget_when_settled(settled, period_s=0.01)

    asyncio.run(main())
    assert len(asked) == 3 and models.loaded_keys == {new.key} and models.current.key == new.key


def test_a_manifest_template_that_does_not_parse_fails_the_replica_start_naming_the_file(tiny_artifacts_dir,
                                                                                        tmp_path):
    import json
    import shutil

    import pytest

    from mmcore.manifest import ManifestError

    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts_dir, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["prompt"]["chat_template"] = "{% for m in messages %}{{ m.content }"
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError) as e:
        load_served_model(ModelSource.model_validate({"artifacts_dir": str(art)}), None, 2)
    assert "\n" not in str(e.value) and "manifest.json: prompt.chat_template: line 1" in str(e.value)

"""Review of issue 5 (garbage collection): a push slower than gc.grace keeps what it sent."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.unit.test_gc import HOUR, World, blob, digest, image_manifest, run


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    instance = World(str(tmp_path / "data"))
    yield instance
    instance.metadata.close()


def test_a_push_still_uploading_keeps_the_layers_it_already_sent(world: World) -> None:
    """A big image over a slow link: config and a first layer are in, a second layer is still
    being uploaded (a PATCH every few minutes), the manifest comes last. Issue 5: 'blobs that no
    manifest references are swept after a grace period, with no race against a push in progress'."""
    repo = "team/big"
    config, first, second = blob("config", 100), blob("first"), blob("second")
    world.push_blob(repo, config)
    world.push_blob(repo, first)
    session = run(world.registry.start_upload(repo, None, None))
    sent = world.clock.seconds()
    for step in range(8):  # 80 minutes of a slow upload, in chunks
        run(world.registry.append_upload(repo, session.upload_id, second[step * 125 : (step + 1) * 125], None))
        world.later(600)
        for value in (digest(config), digest(first)):
            if world.stored(value):  # files written when they were sent (wall clock vs world clock)
                world.age_file(value, world.clock.seconds() - sent)
        world.gc(grace=HOUR)
    run(world.registry.finish_upload(repo, session.upload_id, digest(second), None))
    # The push ends with its manifest: every blob it sent must still be there.
    world.push_manifest(repo, "v1", image_manifest(config, [first, second]))
    assert world.servable(repo, digest(first))

"""A generated 20,000-file library: mount, full listing, remount from the stored catalog."""
import os

import pytest

from testkit.library import make_library
from tests.support.mounts import Daemon

pytestmark = [pytest.mark.mount, pytest.mark.slow]

FILES = 20_000


def test_mount_and_list_20000_files(tmp_path):
    origin = tmp_path / "library"
    paths = make_library(origin, FILES, size=256)
    d = Daemon(tmp_path, [("lib", origin)], level="info")
    try:
        d.mount()
        listed = [os.path.join(root, f) for root, _, files in os.walk(d.mountpoint) for f in files]
        assert len(listed) == FILES
        sample = paths[12345].relative_to(origin)
        assert d.path(str(sample)).read_bytes() == paths[12345].read_bytes()
        d.stop()
        # remount: served from the stored catalog (no initial scan), still complete
        d.mount()
        assert sum(len(files) for _, _, files in os.walk(d.mountpoint)) == FILES
        assert "scanned origin lib" in d.log()
    finally:
        d.stop()

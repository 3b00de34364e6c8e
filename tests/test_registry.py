import pytest

from imageextract.errors import BackendNotFoundError
from imageextract.registry import Registry
from imageextract.segment import SEGMENTERS, get_segmenter


def test_builtin_and_entry_point_names():
    names = SEGMENTERS.names()
    assert "classical" in names and "bpartis" in names


def test_unknown_name_lists_installed():
    with pytest.raises(BackendNotFoundError) as exc:
        get_segmenter("does-not-exist")
    msg = str(exc.value)
    assert "does-not-exist" in msg and "classical" in msg


def test_register_decorator_and_broken_plugin():
    reg = Registry("imageextract.tests-none", "widget")

    @reg.register("mine")
    class Mine:
        def __init__(self, *, x=1):
            self.x = x

    reg.register("broken", "imageextract.no_such_module:Thing")
    assert reg.names() == ["broken", "mine"]
    assert reg.create("mine", x=3).x == 3
    with pytest.raises(BackendNotFoundError, match="failed to load"):
        reg.get("broken")


def test_third_party_entry_point(monkeypatch):
    import imageextract.registry as registry_mod

    class EP:
        name, value = "thirdparty", "imageextract.segment.classical:ClassicalSegmenter"

    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [EP()])
    reg = Registry("imageextract.segmenters", "segmentation backend")
    assert reg.get("thirdparty").__name__ == "ClassicalSegmenter"

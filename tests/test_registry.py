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


def test_unknown_options_name_the_ones_the_plugin_takes(tmp_path):
    from imageextract.errors import ConfigError
    from imageextract.pipeline import analyze

    reg = Registry("imageextract.tests-none", "widget")

    @reg.register("mine")
    class Mine:
        def __init__(self, *, size=1, colour="red"):
            self.size = size

    @reg.register("open")
    class Open:
        def __init__(self, **options):
            self.options = options

    with pytest.raises(ConfigError, match=r"widget 'mine' has no option 'sise'; its options: "
                                          r"size, colour"):
        reg.create("mine", sise=3)
    assert reg.create("mine", size=3).size == 3
    assert reg.create("open", anything=1).options == {"anything": 1}  # **kwargs take any
    # a misspelt backend option stops a batch before its first image, not at each one
    with pytest.raises(ConfigError, match="'min_area'.*min_area_px"):
        analyze([tmp_path], out_dir=tmp_path / "out", backend="classical",
                backend_options={"min_area": 5})
    assert not (tmp_path / "out").exists()


def test_third_party_entry_point(monkeypatch):
    import imageextract.registry as registry_mod

    class EP:
        name, value = "thirdparty", "imageextract.segment.classical:ClassicalSegmenter"

    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [EP()])
    reg = Registry("imageextract.segmenters", "segmentation backend")
    assert reg.get("thirdparty").__name__ == "ClassicalSegmenter"

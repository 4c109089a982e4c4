"""The app's service layer (the UI itself is tested in the browser tests)."""

from app.catalog import describe_method


def test_describe_method_counts():
    text, info = describe_method("sam-vit-b", "parser")
    assert info["adapter"] == 38_144 and "38,144" in text


def test_describe_method_refuses_wrong_family():
    text, info = describe_method("clip-vit-b-16", "cobot-lora")
    assert info == {} and "cannot be used" in text


def test_ui_builds_with_named_api(tmp_path):
    from app.config import Paths
    from app.studio import Studio
    from app.ui import build

    demo = build(Studio(Paths(tmp_path / "studio")))
    names = {d.api_name for d in demo.fns.values() if getattr(d, "api_visibility", "public") == "public"}
    assert {"train", "status", "cancel", "predict", "download", "load_adapter", "check_data", "jobs"} <= names
